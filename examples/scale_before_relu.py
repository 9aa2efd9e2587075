"""Does a batch-norm layer need its scale (gamma) before the activation?

A small NumPy MLP (64-128-128-10, each hidden layer: linear -> BatchNorm ->
activation) is trained on scikit-learn's digits data (8x8 images, shipped
with scikit-learn, no download) with fastbn's BatchNorm layers doing the
forward and backward passes, and plain SGD with momentum.  Each case is
trained with the BatchNorm scale on (``scale=True``) and off
(``scale=False``, TensorFlow's advice before a ReLU) over several seeds,
and the test accuracy and test loss (cross-entropy) are printed as
mean +- std.  The cases:

- relu, tanh, sigmoid: the BN output goes through the activation into a
  trainable linear layer, which can absorb the scale (for ReLU exactly:
  ``relu(g*t + b) = g*relu(t + b/g)`` for ``g > 0``).  The ReLU is fused
  into fastbn's kernels; tanh and sigmoid are applied in NumPy.
- relu6: a bounded activation, ``min(max(0, t), 6)``.  Its cap does not
  scale with gamma and a negative gamma selects the other side of ``t``, so
  the identity does not hold: with scale off the cap sits 6 standard
  deviations out, where almost nothing reaches it.
- clamp: ``min(max(0, t), 1)``, a bounded activation whose cap the data
  reaches (one standard deviation out with scale off).
- readout: ReLU hidden layers, then the last linear layer's output goes
  through a BatchNorm straight into the softmax (a fixed readout: nothing
  after the BN can absorb its scale), so with scale off every logit has
  unit variance over the batch.
- input clamp: a BatchNorm on the input pixels themselves, then the clamp,
  then the ReLU network: no trainable layer before that BN can flip the
  sign of its input, so only its gamma can (a negative gamma makes the
  clamp select dark pixels instead of bright ones).
- residual: ReLU hidden layers, the second one a residual block
  ``relu(BN(W a) + a)`` (fastbn's fused residual add): gamma sets the
  branch's weight against the identity, which the sum cannot absorb.

Finally ``fastbn.absorb_scale`` turns a trained *scaled* ReLU network into
a scale-free one (gamma moves into the next layer's weights) and the two
are shown to compute the same logits up to float32 rounding; the same
transformation applied to the trained ReLU6 network (where the identity
does not hold) changes its logits and predictions.

Usage:  python scale_before_relu.py [--quick] [--seeds N] [--epochs N]
(--quick: 3 epochs, 2 seeds, a few seconds; default: 30 epochs, 10 seeds,
about two minutes on 2 cores.)
"""
import argparse
import sys
import time

import numpy as np

import fastbn

DT = np.float32
HIDDEN = (128, 128)
#: bounded activations: min(max(0, t), cap)
BOUNDS = {"relu6": 6.0, "clamp": 1.0}
#: case -> (hidden activation, head, block): head "linear" is a trainable
#: linear readout, "bn" a BatchNorm on the logits (a fixed readout after
#: it); block "residual" makes the second hidden layer relu(BN(W a) + a).
CASES = {
    "relu": ("relu", "linear", "plain"),
    "tanh": ("tanh", "linear", "plain"),
    "sigmoid": ("sigmoid", "linear", "plain"),
    "relu6": ("relu6", "linear", "plain"),
    "clamp": ("clamp", "linear", "plain"),
    "readout": ("relu", "bn", "plain"),
    "residual": ("relu", "linear", "residual"),
    "input clamp": ("relu", "linear", "input"),
}


def load_data(split_seed=0):
    """Digits, pixels scaled to [0, 1], a fixed stratified 70/30 split."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        sys.exit("this example needs scikit-learn: pip install scikit-learn "
                 "(or pip install 'fastbn[test]')")
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(DT)
    return train_test_split(X, y, test_size=0.3, random_state=split_seed, stratify=y)


class MLP:
    """in -> [Linear (no bias: the BN's beta is the bias) -> BatchNorm ->
    activation] x len(hidden) -> Linear (with bias) -> logits.

    head="bn": the last Linear has no bias and its output goes through a
    BatchNorm (no activation) into the softmax.  block="residual": the
    second hidden layer is relu(BN(W a) + a) (fastbn's fused residual).
    block="input": the input goes through BatchNorm -> clamp first."""

    def __init__(self, sizes, activation, scale, rng, head="linear", block="plain"):
        self.act = activation
        self.head = head
        self.block = block
        self.W = []
        self.bns = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            std = np.sqrt((2.0 if activation.startswith("relu") else 1.0) / fan_in)
            self.W.append((rng.standard_normal((fan_out, fan_in)) * std).astype(DT))
        for width in sizes[1:-1]:
            self.bns.append(fastbn.BatchNorm(width, axis=1, scale=scale,
                                             relu=activation == "relu", dtype=DT))
        self.bn_out = (fastbn.BatchNorm(sizes[-1], axis=1, scale=scale, dtype=DT)
                       if head == "bn" else None)
        self.bn_in = (fastbn.BatchNorm(sizes[0], axis=1, scale=scale, dtype=DT)
                      if block == "input" else None)
        self.b_out = np.zeros(sizes[-1], DT)

    def _layers(self):
        return self.bns + [bn for bn in (self.bn_out, self.bn_in) if bn is not None]

    # parameters and their gradients, in the same order
    def params(self):
        ps = list(self.W) + ([self.b_out] if self.bn_out is None else [])
        for bn in self._layers():
            ps += [p for p in (bn.gamma, bn.beta) if p is not None]
        return ps

    def grads(self):
        gs = list(self.dW) + ([self.db_out] if self.bn_out is None else [])
        for bn in self._layers():
            gs += [g for g in (bn.dgamma, bn.dbeta) if g is not None]
        return gs

    def train(self, mode=True):
        for bn in self._layers():
            bn.train(mode)
        return self

    def _residual(self, i):
        return self.block == "residual" and i == 1

    def forward(self, x):
        self.inputs = []
        self.outs = []
        a = x
        if self.bn_in is not None:
            a = self.x_in = np.clip(self.bn_in(x), 0.0, 1.0)
        for i, (W, bn) in enumerate(zip(self.W[:-1], self.bns)):
            self.inputs.append(a)
            h = a @ W.T
            if self._residual(i):
                a = bn(h, residual=a)           # relu(BN(h) + a), one pass
            else:
                a = bn(h)                       # BN (+ fused ReLU)
            if self.act == "tanh":
                a = np.tanh(a)
            elif self.act == "sigmoid":
                a = 1.0 / (1.0 + np.exp(-a))
            elif self.act in BOUNDS:
                a = np.clip(a, 0.0, BOUNDS[self.act])
            self.outs.append(a)
        self.inputs.append(a)
        if self.bn_out is not None:
            return self.bn_out(a @ self.W[-1].T)   # a fixed readout after the BN
        return a @ self.W[-1].T + self.b_out

    def backward(self, dlogits):
        self.dW = [None] * len(self.W)
        if self.bn_out is not None:
            dlogits = self.bn_out.backward(dlogits)
        self.db_out = dlogits.sum(axis=0)
        self.dW[-1] = dlogits.T @ self.inputs[-1]
        da = dlogits @ self.W[-1]
        for i in reversed(range(len(self.bns))):
            a = self.outs[i]
            if self.act == "tanh":
                da = da * (1.0 - a * a)
            elif self.act == "sigmoid":
                da = da * a * (1.0 - a)
            elif self.act in BOUNDS:
                da = da * ((a > 0) & (a < BOUNDS[self.act]))
            if self._residual(i):               # fastbn backward (ReLU mask too)
                dh, dres = self.bns[i].backward(da)
            else:
                dh, dres = self.bns[i].backward(da), None
            self.dW[i] = dh.T @ self.inputs[i]
            da = dh @ self.W[i]
            if dres is not None:
                da = da + dres
        if self.bn_in is not None:
            self.bn_in.backward(da * ((self.x_in > 0) & (self.x_in < 1)))


def softmax_xent_grad(logits, labels):
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1.0
    return (p / len(labels)).astype(DT)


def xent(logits, labels):
    """Mean cross-entropy of softmax(logits), in float64."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def train(case, scale, seed, data, epochs, batch=64, lr=0.05, mu=0.9):
    Xtr, Xte, ytr, yte = data
    rng = np.random.default_rng(seed)
    act, head, block = CASES[case]
    net = MLP((Xtr.shape[1],) + HIDDEN + (10,), act, scale, rng, head, block)
    vel = [np.zeros_like(p) for p in net.params()]
    n = len(Xtr)
    for _ in range(epochs):
        order = rng.permutation(n)
        for s in range(0, n - batch + 1, batch):   # full batches only
            idx = order[s:s + batch]
            logits = net.forward(Xtr[idx])
            net.backward(softmax_xent_grad(logits, ytr[idx]))
            for p, g, v in zip(net.params(), net.grads(), vel):
                v *= mu
                v -= lr * g
                p += v                              # in place: the layers see it
    net.train(False)
    logits = net.forward(Xte)
    acc = float(np.mean(logits.argmax(axis=1) == yte))
    return net, acc, xent(logits, yte)


def absorb_demo(net, X):
    """Replace every scaled BN (+ReLU) by a scale-free one, moving gamma
    into the next layer's weights; return the logits before and after (or
    the (layer, channels) whose gamma <= 0, where it does not apply)."""
    net.train(False)
    before = net.forward(X)
    bad = [(i, np.flatnonzero(bn.gamma <= 0).tolist())
           for i, bn in enumerate(net.bns) if np.any(bn.gamma <= 0)]
    if bad:
        return before, None, bad
    for i, bn in enumerate(net.bns):
        net.bns[i], net.W[i + 1] = fastbn.absorb_scale(bn, net.W[i + 1])
    after = net.forward(X)
    return before, after, None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="3 epochs and 2 seeds (a few seconds)")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (10)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (30)")
    args = ap.parse_args(argv)
    seeds = args.seeds or (2 if args.quick else 10)
    epochs = args.epochs or (3 if args.quick else 30)
    data = load_data()
    try:  # the matrices are tiny: one BLAS thread avoids thread contention
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(1, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl comes with sklearn
        limits = None
    t0 = time.perf_counter()
    print(f"digits: {len(data[0])} train / {len(data[1])} test images; MLP "
          f"64-{'-'.join(map(str, HIDDEN))}-10 with fastbn.BatchNorm, SGD "
          f"(lr 0.05, momentum 0.9, batch 64), {epochs} epochs, {seeds} seeds")
    print()
    print("test accuracy (%) and test loss (cross-entropy), mean +- std over seeds")
    print(f"{'case':<12}{'acc, scale on':>16}{'acc, scale off':>16}"
          f"{'loss, scale on':>18}{'loss, scale off':>18}")
    keep = {}
    for case in CASES:
        row = []
        for scale in (True, False):
            accs, losses = [], []
            for seed in range(seeds):
                net, acc, loss = train(case, scale, seed, data, epochs)
                accs.append(100 * acc)
                losses.append(loss)
                if case in ("relu", "relu6", "clamp", "input clamp") and scale \
                        and seed == 0:
                    keep[case] = net
            row.append((f"{np.mean(accs):6.2f} +- {np.std(accs):4.2f}",
                        f"{np.mean(losses):5.3f} +- {np.std(losses):5.3f}"))
        print(f"{case:<12}{row[0][0]:>16}{row[1][0]:>16}{row[0][1]:>18}"
              f"{row[1][1]:>18}", flush=True)
    print()
    before, after, bad = absorb_demo(keep["relu"], data[1])
    if bad:
        print(f"absorb_scale: not applicable, gamma <= 0 in (layer, channels) {bad}")
    else:
        diff = float(np.max(np.abs(after.astype(np.float64) - before)))
        same = int(np.sum(after.argmax(1) == before.argmax(1)))
        print("absorb_scale on the trained scaled ReLU network (seed 0): "
              "scale-free copy with gamma moved into the next layer")
        print(f"  max |logit difference| = {diff:.2e} (logits up to "
              f"{np.abs(before).max():.1f}); same prediction on {same}/{len(before)} "
              f"test images")
    for case in BOUNDS:   # the same transformation where it does not hold
        net = keep[case]
        neg = sum(int(np.sum(bn.gamma <= 0)) for bn in net.bns)
        for bn in net.bns:
            bn.gamma[:] = np.maximum(bn.gamma, np.float32(1e-3))
        before, after, _ = absorb_demo(net, data[1])
        diff = float(np.max(np.abs(after.astype(np.float64) - before)))
        same = int(np.sum(after.argmax(1) == before.argmax(1)))
        print(f"{case} (seed 0, scaled): {neg} of "
              f"{sum(bn.num_features for bn in net.bns)} channels learned gamma "
              f"<= 0; absorb_scale (gamma >= 1e-3 first): max |logit "
              f"difference| = {diff:.2e}, same prediction on {same}/{len(before)}")
    bn_in = keep["input clamp"].bn_in
    print(f"input clamp (seed 0, scaled): {int(np.sum(bn_in.gamma < 0))} of "
          f"{bn_in.num_features} input channels learned gamma < 0")
    print(f"\n({time.perf_counter() - t0:.1f} s, fastbn {fastbn.__version__}, "
          f"{fastbn.get_num_threads()} threads)")
    if limits is not None:
        limits.restore_original_limits()


if __name__ == "__main__":
    main()
