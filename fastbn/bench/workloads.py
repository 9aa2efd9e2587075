"""What is measured: the kernel workloads and the shape sweep.

A :class:`Workload` is one case: a mode (training forward + ReLU, inference
+ ReLU, or backward through the ReLU), a shape, a channel axis and a dtype.

- :data:`WORKLOADS` are the kernel benchmarks: a few standard shapes, each
  timed against NumPy, PyTorch and the floor, with the targets of issue 9.
- :func:`sweep_workloads` is the shape sweep: the batch-norm shapes of real
  networks (ResNet-50, MobileNetV2, dense layers, 1-D and 5-D data, 1 and 3
  channels) in every mode, without duplicates, every array at most
  :data:`MAX_ARRAY_BYTES`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

MODES = ("train", "infer", "backward")

MODE_TITLES = {
    "train": "training forward + ReLU",
    "infer": "inference forward + ReLU",
    "backward": "backward + ReLU",
}

#: No array of the sweep is larger than this (x, y, dy and dx all have x's
#: size).
MAX_ARRAY_BYTES = 120 * 2 ** 20

#: The sweep's targets (issue 9) apply to arrays larger than this.
TARGET_MIN_BYTES = 4 * 2 ** 20

#: Sweep targets: fastbn's time / floor, per mode, for arrays over 4 MB.
SWEEP_TARGETS = {"train": 3.0, "infer": 1.6, "backward": 5.0}


def fmt_bytes(n: float) -> str:
    """Bytes in binary units: '24.5 MB', '32 KB', '100 B'."""
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return ("%d %s" if unit == "B" else "%.3g %s") % (n, unit)
        n /= 1024
    return "%.3g GB" % n


#: Short names of the kernels' strategies (fastbn._kernels.plan).
PLAN_NAMES = {"fused tiles": "fused", "two-phase tiles": "two-phase",
              "channel-last": "channel-last",
              "elementwise blocks": "blocks", "statistics tiles": "stats"}


@dataclasses.dataclass(frozen=True)
class Workload:
    """One benchmark case: a mode, a shape, a channel axis and a dtype.

    ``target_ratio`` is the goal for fastbn's time / floor and ``target_us``
    a goal in microseconds per call (tiny workloads).  ``family`` names
    where a sweep shape comes from (e.g. "ResNet-50 layer3") and
    ``compile`` marks the sweep's representative rows, where torch.compile
    is timed by default.  ``aliases`` names the other sweep arrays that are
    the same problem (same (outer, C, inner) view and dtype) as (family,
    shape) pairs, e.g. ("ResNet-50 layer1", (32, 56, 56, 64)) for a
    channels-last (8,112,112,64).
    """

    key: str
    mode: str  # "train", "infer" or "backward"
    shape: Tuple[int, ...]
    axis: int = 1
    dtype: str = "float32"
    tiny: bool = False  # per-call timing, reported in microseconds
    main: bool = False  # also time fastbn without out=
    quick: bool = True  # part of --quick
    target_ratio: Optional[float] = None
    target_us: Optional[float] = None
    family: str = ""
    compile: bool = False
    aliases: Tuple[Tuple[str, Tuple[int, ...]], ...] = ()

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def channel_axis(self) -> int:
        """The channel axis as a non-negative number."""
        return self.axis % self.ndim

    @property
    def reduce_axes(self) -> Tuple[int, ...]:
        """The axes statistics are taken over (all but the channel axis)."""
        return tuple(i for i in range(self.ndim) if i != self.channel_axis)

    @property
    def channels(self) -> int:
        return self.shape[self.channel_axis]

    @property
    def view(self) -> Tuple[int, int, int]:
        """fastbn's (outer, C, inner) view of the array."""
        c = self.channel_axis
        return (math.prod(self.shape[:c]), self.channels,
                math.prod(self.shape[c + 1:]))

    @property
    def layout(self) -> str:
        """NC, NCL, NCHW, NCDHW, NLC, NHWC, NDHWC or 'axis=k'."""
        spatial = {0: "", 1: "L", 2: "HW", 3: "DHW"}.get(self.ndim - 2)
        if spatial is not None and self.channel_axis == 1:
            return "NC" + spatial
        if spatial is not None and self.channel_axis == self.ndim - 1:
            return "N" + spatial + "C"
        return "%dD axis=%d" % (self.ndim, self.axis)

    def plan(self, threads: int) -> str:
        """The plan fastbn's kernel makes for this workload on `threads`
        threads with this machine's caches (the kernels' own description,
        shortened: fused, two-phase, channel-last, blocks); the backward's
        is that of its mask from x (dy and x read, not y)."""
        from .. import _kernels
        op = {"train": "train", "infer": "infer",
              "backward": "backward_relu_x"}[self.mode]
        outer, c, inner = self.view
        p = _kernels.plan(op, outer, c, inner, np.dtype(self.dtype).itemsize,
                          threads)
        return PLAN_NAMES.get(p["strategy"], p["strategy"])

    @property
    def count(self) -> int:
        """Values per channel."""
        return math.prod(self.shape) // self.channels

    @property
    def nbytes(self) -> int:
        """Bytes of x (and of every other full-size array)."""
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    @property
    def floor_bytes(self) -> int:
        """Bytes moved by the floor, a copy of x: one read and one write."""
        return 2 * self.nbytes

    @property
    def min_bytes(self) -> int:
        """Bytes the operation itself must move at least.

        Forward: read x, write y.  Backward: read dy and x, write dx (the
        ReLU's mask recomputed from x; from y it reads one array more).
        """
        return (3 if self.mode == "backward" else 2) * self.nbytes

    @property
    def shape_text(self) -> str:
        return "(%s)" % ",".join(map(str, self.shape))

    @property
    def group(self) -> str:
        """A short unique name: mode, layout, shape and dtype."""
        return "%s-%s-%s-%s" % (self.mode, self.layout,
                                "x".join(map(str, self.shape)), self.dtype)

    @property
    def label(self) -> str:
        """Family, layout, shape, dtype and mode, e.g. 'ResNet-50 layer3
        NCHW (128,256,14,14) float32 train'."""
        return " ".join(p for p in (self.family, self.layout, self.shape_text,
                                    self.dtype, self.mode) if p)

    @property
    def alias_text(self) -> str:
        """'= (32,56,56,64)' for the shapes of the aliases ('' if none)."""
        return " ".join("= (%s)" % ",".join(map(str, s))
                        for _, s in self.aliases)

    @property
    def match_text(self) -> str:
        """What the sweep's filter matches: the label and the aliases."""
        return " ".join([self.label] + ["%s (%s)" % (f, ",".join(map(str, s)))
                                        for f, s in self.aliases])

    @property
    def title(self) -> str:
        kind = "tiny " if self.tiny else ""
        axis = "" if self.axis == 1 else ", axis=%d" % self.axis
        return "%s%s, %s %s%s %s (%s)" % (
            kind, MODE_TITLES[self.mode], self.layout, self.shape, axis,
            self.dtype, fmt_bytes(self.nbytes))

    @property
    def sweep_target(self) -> Optional[float]:
        """The sweep's time / floor target, or None below 4 MB."""
        if self.nbytes <= TARGET_MIN_BYTES:
            return None
        return SWEEP_TARGETS[self.mode]

    @property
    def target_text(self) -> str:
        if self.target_ratio is not None:
            return "<= %.2gx floor" % self.target_ratio
        if self.target_us is not None:
            return "<= %g us/call" % self.target_us
        return ""


# --------------------------------------------------------------------------
# The kernel benchmarks
# --------------------------------------------------------------------------

#: Standard shapes with the targets of issue 9 (time / the honest floor at
#: 2 threads; the tiny call in microseconds).
WORKLOADS: Tuple[Workload, ...] = (
    Workload("train-nchw", "train", (32, 64, 56, 56), main=True,
             target_ratio=1.5),
    Workload("train-nhwc", "train", (32, 56, 56, 64), axis=-1,
             target_ratio=1.8),
    Workload("train-mlp", "train", (4096, 1024), target_ratio=1.6),
    Workload("train-large", "train", (16, 64, 112, 112), target_ratio=1.4),
    Workload("train-nchw-f64", "train", (32, 64, 56, 56), dtype="float64",
             quick=False),
    Workload("infer-nchw", "infer", (32, 64, 56, 56), target_ratio=1.0),
    Workload("backward-nchw", "backward", (32, 64, 56, 56),
             target_ratio=3.0),
    Workload("backward-nhwc", "backward", (32, 56, 56, 64), axis=-1,
             target_ratio=4.0),
    Workload("backward-mlp", "backward", (4096, 1024), target_ratio=4.0,
             quick=False),
    Workload("tiny", "train", (8, 16, 8, 8), tiny=True, main=True,
             target_us=4.0),
    # in-cache sizes (3 MB): where the 1-vs-N-thread table shows the
    # second core rather than the memory bus
    Workload("train-incache", "train", (16, 64, 28, 28)),
    Workload("train-incache-nhwc", "train", (8, 28, 28, 128), axis=-1),
)


def select_workloads(quick: bool = False, only: Optional[Sequence[str]] = None
                     ) -> List[Workload]:
    """The kernel workloads to run: all, the --quick subset, or the named
    ones (in the order of WORKLOADS)."""
    if only:
        return [w for w in WORKLOADS if w.key in only]
    return [w for w in WORKLOADS if w.quick or not quick]


# --------------------------------------------------------------------------
# The shape sweep
# --------------------------------------------------------------------------

#: ResNet-50 (torchvision, v1.5): every distinct batch-norm shape per
#: sample, (stage, C, H = W).
RESNET50 = (
    ("stem", 64, 112),
    ("layer1", 64, 56), ("layer1", 256, 56),
    ("layer2", 128, 56), ("layer2", 128, 28), ("layer2", 512, 28),
    ("layer3", 256, 28), ("layer3", 256, 14), ("layer3", 1024, 14),
    ("layer4", 512, 14), ("layer4", 512, 7), ("layer4", 2048, 7),
)
RESNET50_BATCHES = (1, 8, 32, 64, 128, 256)

#: MobileNetV2 (224x224 input): stem, expand (1x1), depthwise and project
#: layers, (part, C, H = W): small planes with many channels.
MOBILENETV2 = (
    ("stem/dw", 32, 112), ("project", 16, 112),
    ("expand", 96, 112), ("dw", 96, 56), ("project", 24, 56),
    ("expand/dw", 144, 56), ("dw", 144, 28), ("project", 32, 28),
    ("expand/dw", 192, 28), ("dw", 192, 14), ("project", 64, 14),
    ("expand/dw", 384, 14), ("project", 96, 14), ("expand/dw", 576, 14),
    ("dw", 576, 7), ("project", 160, 7), ("expand/dw", 960, 7),
    ("project", 320, 7), ("head", 1280, 7),
)
MOBILENETV2_BATCHES = (1, 32, 128)

#: Dense layers (N, C): from (256, 4096) to (65536, 64), and a small one.
DENSE = ((64, 256), (256, 4096), (1024, 4096), (4096, 1024), (4096, 4096),
         (8192, 512), (16384, 256), (32768, 128), (65536, 64))

#: 1-D data: (N, C, L) (axis 1) and channels-last (N, L, C) (axis -1).
CONV1D = (((128, 32, 128), 1), ((32, 64, 1024), 1), ((4, 64, 16000), 1),
          ((64, 256, 256), 1), ((16, 512, 1000), 1), ((256, 1024, 32), 1),
          ((32, 1024, 64), -1), ((64, 500, 128), -1))

#: 5-D data: (N, C, D, H, W) (axis 1) and (N, D, H, W, C) (axis -1).
CONV3D = (((2, 32, 64, 64, 64), 1), ((1, 16, 96, 96, 96), 1),
          ((4, 64, 16, 56, 56), 1), ((8, 128, 8, 28, 28), 1),
          ((8, 256, 4, 14, 14), 1), ((4, 16, 56, 56, 64), -1))

#: One and three channels (image inputs, grayscale planes).
FEW_CHANNELS = (((64, 1, 28, 28), 1), ((16, 1, 256, 256), 1),
                ((128, 1, 128, 128), 1), ((64, 28, 28, 1), -1),
                ((65536, 1), 1), ((128, 3, 32, 32), 1), ((1, 3, 224, 224), 1),
                ((32, 3, 224, 224), 1), ((128, 3, 224, 224), 1),
                ((32, 224, 224, 3), -1), ((256, 32, 32, 3), -1))

#: A few float64 rows (float64 must be as fast as float32 per byte).
FLOAT64 = (("ResNet-50 layer1", (32, 64, 56, 56), 1),
           ("ResNet-50 layer3", (64, 256, 14, 14), 1),
           ("ResNet-50 layer4", (256, 512, 7, 7), 1),
           ("ResNet-50 layer1", (32, 56, 56, 64), -1),
           ("dense", (4096, 1024), 1))

#: The representative rows: torch.compile is timed on these by default
#: (compiling every row of the sweep takes hours).
COMPILE_SUBSET = frozenset([
    ((32, 64, 56, 56), 1, "float32"), ((128, 256, 14, 14), 1, "float32"),
    ((256, 512, 7, 7), 1, "float32"), ((32, 56, 56, 64), -1, "float32"),
    ((128, 14, 14, 256), -1, "float32"), ((128, 960, 7, 7), 1, "float32"),
    ((256, 4096), 1, "float32"), ((4096, 1024), 1, "float32"),
    ((65536, 64), 1, "float32"), ((32, 64, 1024), 1, "float32"),
    ((8, 128, 8, 28, 28), 1, "float32"), ((32, 3, 224, 224), 1, "float32"),
    ((64, 256, 14, 14), 1, "float64"),
])

#: The --quick subset of the sweep: one small and one large shape of each
#: kind (every mode).
QUICK_SWEEP = frozenset([
    ((32, 64, 56, 56), 1, "float32"), ((256, 512, 7, 7), 1, "float32"),
    ((32, 56, 56, 64), -1, "float32"), ((8, 7, 7, 2048), -1, "float32"),
    ((4096, 1024), 1, "float32"), ((32, 64, 1024), 1, "float32"),
    ((32, 3, 224, 224), 1, "float32"), ((64, 256, 14, 14), 1, "float64"),
])


def _batches(per_sample_bytes: int, batches: Iterable[int]) -> List[int]:
    """The batch sizes that keep an array within MAX_ARRAY_BYTES; when the
    largest listed batch does not fit, also the largest power of two that
    does."""
    fit = [n for n in batches if n * per_sample_bytes <= MAX_ARRAY_BYTES]
    largest = max(batches)
    if largest not in fit:
        n = 1
        while 2 * n * per_sample_bytes <= MAX_ARRAY_BYTES and 2 * n < largest:
            n *= 2
        if n not in fit:
            fit.append(n)
    return sorted(fit)


def _nchw_nhwc(family: str, n: int, c: int, h: int, w: int):
    yield family, (n, c, h, w), 1
    yield family, (n, h, w, c), -1


def _sweep_arrays() -> List[Tuple[str, Tuple[int, ...], int, str]]:
    """Every (family, shape, axis, dtype) of the sweep, duplicates included."""
    arrays = []
    for stage, c, hw in RESNET50:
        for n in _batches(c * hw * hw * 4, RESNET50_BATCHES):
            for fam, shape, axis in _nchw_nhwc("ResNet-50 " + stage, n, c, hw,
                                               hw):
                arrays.append((fam, shape, axis, "float32"))
    for part, c, hw in MOBILENETV2:
        for n in _batches(c * hw * hw * 4, MOBILENETV2_BATCHES):
            for fam, shape, axis in _nchw_nhwc("MobileNetV2 " + part, n, c,
                                               hw, hw):
                arrays.append((fam, shape, axis, "float32"))
    arrays += [("dense", shape, 1, "float32") for shape in DENSE]
    arrays += [("1-D", shape, axis, "float32") for shape, axis in CONV1D]
    arrays += [("5-D", shape, axis, "float32") for shape, axis in CONV3D]
    arrays += [("C=%d" % shape[axis], shape, axis, "float32")
               for shape, axis in FEW_CHANNELS]
    arrays += [(fam, shape, axis, "float64") for fam, shape, axis in FLOAT64]
    return arrays


def sweep_workloads(modes: Sequence[str] = MODES, quick: bool = False
                    ) -> List[Workload]:
    """The sweep: every array of :func:`_sweep_arrays` in every mode.

    Duplicates are removed: arrays that fastbn sees as the same
    (outer, C, inner) block of the same dtype are one problem (e.g. the
    channels-last (8,112,112,64) and (32,56,56,64)); the first one listed
    is timed and names the others in ``aliases``.  Workloads of one array
    are adjacent (so that its inputs can be shared), in the order of
    `modes`.  ``quick`` keeps the arrays of QUICK_SWEEP only.
    """
    groups: Dict[tuple, list] = {}
    for family, shape, axis, dtype in _sweep_arrays():
        ident = (Workload("", "train", shape, axis, dtype).view, dtype)
        groups.setdefault(ident, []).append((family, shape, axis))
    out = []
    for (_, dtype), members in groups.items():
        family, shape, axis = members[0]
        names = {(s, a, dtype) for _, s, a in members}
        if quick and not names & QUICK_SWEEP:
            continue
        aliases = tuple((f, s) for f, s, _ in members[1:])
        for mode in modes:
            w = Workload("", mode, shape, axis, dtype, family=family,
                         compile=bool(names & COMPILE_SUBSET),
                         aliases=aliases)
            out.append(dataclasses.replace(w, key=w.group))
    return out


def filter_sweep(workloads: Sequence[Workload], terms: Sequence[str]
                 ) -> List[Workload]:
    """Sweep workloads whose label (or an alias) contains every term
    (case-insensitive).

    A term ``mode=M`` keeps mode M only (e.g. ``mode=train``); a term
    ``max=SIZE`` keeps arrays of at most SIZE megabytes; the term
    ``compile`` keeps the representative rows (where torch.compile runs by
    default).  Other terms are
    substrings of the label: family, layout, shape (spelled ``(32,64,56,56)``
    or ``32,64``), dtype and mode.
    """
    kept = []
    for w in workloads:
        label = w.match_text.lower()
        ok = True
        for term in terms:
            t = term.strip().lower()
            if t.startswith("mode="):
                ok = w.mode == t[5:]
            elif t.startswith("max="):
                ok = w.nbytes <= float(t[4:]) * 2 ** 20
            elif t == "compile":
                ok = w.compile
            else:
                ok = t in label
            if not ok:
                break
        if ok:
            kept.append(w)
    return kept


def split_terms(text: str) -> List[str]:
    """Split a --sweep-filter value at commas outside parentheses, so that
    a shape such as (256,512,7,7) stays one term; empty terms dropped."""
    terms, depth, cur = [], 0, []
    for ch in text:
        if ch == "," and depth == 0:
            terms.append("".join(cur))
            cur = []
            continue
        depth += {"(": 1, ")": -1}.get(ch, 0)
        cur.append(ch)
    terms.append("".join(cur))
    return [t.strip() for t in terms if t.strip()]


def check_sweep_terms(terms: Sequence[str]) -> Optional[str]:
    """An error message for a malformed filter term, or None."""
    for term in terms:
        t = term.strip().lower()
        if t.startswith("mode=") and t[5:] not in MODES:
            return "unknown mode in %r (modes: %s)" % (term, ", ".join(MODES))
        if t.startswith("max="):
            try:
                float(t[4:])
            except ValueError:
                return "max= needs a size in MB, got %r" % term
    return None


def family_counts(workloads: Sequence[Workload]) -> Dict[str, int]:
    """Number of distinct arrays per family (for --list and the tests)."""
    counts: Dict[str, int] = {}
    seen = set()
    for w in workloads:
        key = (w.shape, w.axis, w.dtype)
        if key in seen:
            continue
        seen.add(key)
        fam = w.family.split(" ")[0] if w.family.startswith(
            ("ResNet", "MobileNet")) else w.family
        counts[fam] = counts.get(fam, 0) + 1
    return counts
