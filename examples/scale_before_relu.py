"""Does a batch-norm layer need its scale (gamma) before the activation?

A small NumPy MLP (64-128-128-10, each hidden layer: linear -> BatchNorm ->
activation) is trained on scikit-learn's digits data (8x8 images, shipped
with scikit-learn, no download) with fastbn's BatchNorm layers doing the
forward and backward passes, and plain SGD with momentum.  For ReLU, tanh
and sigmoid it is trained with the BatchNorm scale on (``scale=True``) and
off (``scale=False``, TensorFlow's advice before a ReLU) over several seeds,
and the test accuracy is printed as mean +- std.  The ReLU is fused into
fastbn's kernels; tanh and sigmoid are applied in NumPy after the BN.

Finally ``fastbn.absorb_scale`` turns a trained *scaled* ReLU network into
a scale-free one (gamma moves into the next layer's weights,
``relu(g*t + b) = g*relu(t + b/g)`` for ``g > 0``) and the two are shown to
compute the same logits up to float32 rounding.

Usage:  python scale_before_relu.py [--quick] [--seeds N] [--epochs N]
(--quick: 3 epochs, 2 seeds, a few seconds; default: 30 epochs, 10 seeds,
about a minute on 2 cores.)
"""
import argparse
import sys
import time

import numpy as np

import fastbn

DT = np.float32
HIDDEN = (128, 128)
ACTIVATIONS = ("relu", "tanh", "sigmoid")


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
    activation] x len(hidden) -> Linear (with bias) -> logits."""

    def __init__(self, sizes, activation, scale, rng):
        self.act = activation
        self.W = []
        self.bns = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            std = np.sqrt((2.0 if activation == "relu" else 1.0) / fan_in)
            self.W.append((rng.standard_normal((fan_out, fan_in)) * std).astype(DT))
        for width in sizes[1:-1]:
            self.bns.append(fastbn.BatchNorm(width, axis=1, scale=scale,
                                             relu=activation == "relu", dtype=DT))
        self.b_out = np.zeros(sizes[-1], DT)

    # parameters and their gradients, in the same order
    def params(self):
        ps = list(self.W) + [self.b_out]
        for bn in self.bns:
            ps += [p for p in (bn.gamma, bn.beta) if p is not None]
        return ps

    def grads(self):
        gs = list(self.dW) + [self.db_out]
        for bn in self.bns:
            gs += [g for g in (bn.dgamma, bn.dbeta) if g is not None]
        return gs

    def train(self, mode=True):
        for bn in self.bns:
            bn.train(mode)
        return self

    def forward(self, x):
        self.inputs = []
        self.outs = []
        a = x
        for W, bn in zip(self.W[:-1], self.bns):
            self.inputs.append(a)
            h = a @ W.T
            a = bn(h)                           # BN (+ fused ReLU)
            if self.act == "tanh":
                a = np.tanh(a)
            elif self.act == "sigmoid":
                a = 1.0 / (1.0 + np.exp(-a))
            self.outs.append(a)
        self.inputs.append(a)
        return a @ self.W[-1].T + self.b_out

    def backward(self, dlogits):
        self.dW = [None] * len(self.W)
        self.db_out = dlogits.sum(axis=0)
        self.dW[-1] = dlogits.T @ self.inputs[-1]
        da = dlogits @ self.W[-1]
        for i in reversed(range(len(self.bns))):
            a = self.outs[i]
            if self.act == "tanh":
                da = da * (1.0 - a * a)
            elif self.act == "sigmoid":
                da = da * a * (1.0 - a)
            dh = self.bns[i].backward(da)       # fastbn backward (ReLU mask too)
            self.dW[i] = dh.T @ self.inputs[i]
            da = dh @ self.W[i]


def softmax_xent_grad(logits, labels):
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1.0
    return (p / len(labels)).astype(DT)


def train(act, scale, seed, data, epochs, batch=64, lr=0.05, mu=0.9):
    Xtr, Xte, ytr, yte = data
    rng = np.random.default_rng(seed)
    net = MLP((Xtr.shape[1],) + HIDDEN + (10,), act, scale, rng)
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
    acc = float(np.mean(net.forward(Xte).argmax(axis=1) == yte))
    return net, acc


def absorb_demo(net, X):
    """Replace every scaled BN (+ReLU) by a scale-free one, moving gamma
    into the next layer's weights; return the max |logit difference|."""
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
    print("test accuracy (%), mean +- std over seeds")
    print(f"{'activation':<12}{'scale on':>16}{'scale off':>16}")
    keep = None
    for act in ACTIVATIONS:
        row = []
        for scale in (True, False):
            accs = []
            for seed in range(seeds):
                net, acc = train(act, scale, seed, data, epochs)
                accs.append(100 * acc)
                if act == "relu" and scale and seed == 0:
                    keep = net
            row.append(f"{np.mean(accs):6.2f} +- {np.std(accs):4.2f}")
        print(f"{act:<12}{row[0]:>16}{row[1]:>16}", flush=True)
    print()
    before, after, bad = absorb_demo(keep, data[1])
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
    print(f"\n({time.perf_counter() - t0:.1f} s, fastbn {fastbn.__version__}, "
          f"{fastbn.get_num_threads()} threads)")
    if limits is not None:
        limits.restore_original_limits()


if __name__ == "__main__":
    main()
