"""The PNG chart (``--plot FILE``, needs matplotlib): one panel per part that
ran, every ratio against the honest floor of its thread count.

- kernel workloads: time / floor per workload and implementation (bars);
- sweep: fastbn / torch eager per row against the array size, and fastbn's
  time / floor against the size with the targets (one marker per mode and
  thread count);
- between calls: fastbn's default-thread / 1-thread ratio per shape and
  scenario, with the targets;
- network step: median step time per batch-norm variant.
"""

from __future__ import annotations

from typing import List

from .report import Report
from .workloads import MODES, SWEEP_TARGETS, TARGET_MIN_BYTES


def _kernels(ax, rep: Report) -> None:
    wrs = [wr for wr in rep.kernels if not wr.note]
    names: List[str] = []
    for wr in wrs:
        for r in wr.results:
            if r.median is not None and r.impl not in names:
                names.append(r.impl)
    height = 0.8 / max(1, len(names))
    import matplotlib.pyplot as plt
    cmap = plt.get_cmap("tab10")
    for j, name in enumerate(names):
        ys, vals = [], []
        for i, wr in enumerate(wrs):
            r = wr.get(name)
            if r is not None and wr.ratio(r) is not None:
                ys.append(i + (j - (len(names) - 1) / 2) * height)
                vals.append(wr.ratio(r))
        bars = ax.barh(ys, vals, height=height, color=cmap(j % 10),
                       label=name)
        for b, v in zip(bars, vals):
            ax.text(b.get_width() * 1.03, b.get_y() + b.get_height() / 2,
                    "%.2g" % v, va="center", fontsize=5)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    _plain_ticks(ax)
    ax.set_yticks(range(len(wrs)))
    ax.set_yticklabels([wr.workload.key for wr in wrs], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("time / floor (copy on the row's thread count; lower is "
                  "better)")
    ax.set_title("Kernel workloads", fontsize=9)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _plain_ticks(ax) -> None:
    """Tick labels of log axes as plain numbers (0.5, 2, 10), not 2x10^0;
    minor ticks labelled only when the axis spans less than two decades."""
    import math
    from matplotlib.ticker import FormatStrFormatter, NullFormatter
    for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if axis.get_scale() != "log":
            continue
        axis.set_major_formatter(FormatStrFormatter("%g"))
        span = math.log10(max(lim) / max(min(lim), 1e-300))
        axis.set_minor_formatter(FormatStrFormatter("%g") if span < 2
                                 else NullFormatter())


_COLORS = {"train": "tab:blue", "infer": "tab:green", "backward": "tab:red"}


def _sweep_points(rep: Report, value):
    """{(mode, threads): (sizes in MB, values)} of the sweep."""
    pts = {}
    for wr in rep.sweep.rows:
        for t in rep.sweep.thread_counts:
            v = value(wr, t)
            if v is not None:
                xs, ys = pts.setdefault((wr.workload.mode, t), ([], []))
                xs.append(wr.workload.nbytes / 2 ** 20)
                ys.append(v)
    return pts


def _sweep(ax_eager, ax_floor, rep: Report) -> None:
    markers = ["o", "^", "s", "D"]
    for ax, value, title in (
            (ax_eager, lambda wr, t: wr.fastbn_vs("eager", t),
             "Sweep: fastbn / torch eager (above 1 = LOSS)"),
            (ax_floor, lambda wr, t: wr.fastbn_over_floor(t),
             "Sweep: fastbn time / floor (lines: targets above 4 MB)")):
        for (mode, t), (xs, ys) in sorted(_sweep_points(rep, value).items()):
            ax.scatter(xs, ys, s=9, alpha=0.7, color=_COLORS[mode],
                       marker=markers[rep.sweep.thread_counts.index(t) % 4],
                       label="%s, %d thread%s" % (mode, t, "s" * (t > 1)))
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_ticks(ax)
        ax.set_xlabel("size of x (MB)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=6)
    ax_eager.axhline(1.0, color="black", linewidth=0.8)
    largest = max(wr.workload.nbytes for wr in rep.sweep.rows) / 2 ** 20
    for mode in MODES:
        ax_floor.hlines(SWEEP_TARGETS[mode], TARGET_MIN_BYTES / 2 ** 20,
                        largest, colors=_COLORS[mode], linestyles="dashed",
                        linewidth=0.8)


def _scenarios(ax, rep: Report) -> None:
    rows = [r for r in rep.scenarios.rows if r.ratio is not None]
    labels = ["%s\n%s" % ("x".join(map(str, r.shape)), r.scenario)
              for r in rows]
    colors = ["tab:gray" if r.met is None else "tab:green" if r.met
              else "tab:red" for r in rows]
    ax.bar(range(len(rows)), [r.ratio for r in rows], color=colors)
    for i, r in enumerate(rows):
        if r.target is not None and r.target[0] == "max":
            ax.hlines(r.target[1], i - 0.4, i + 0.4, colors="black")
        elif r.target is not None:
            ax.hlines(1.0 / r.target[1], i - 0.4, i + 0.4, colors="black")
    ax.axhline(1.0, color="black", linewidth=0.5, linestyle="dotted")
    ax.set_yscale("log")
    _plain_ticks(ax)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, fontsize=5, rotation=60, ha="right")
    ax.set_ylabel("default threads / 1 thread")
    ax.set_title("Between calls: fastbn's median at %d threads / at 1 thread "
                 "(bars: green met, red missed; lines: targets)"
                 % rep.scenarios.threads, fontsize=9)


def _network(ax, rep: Report) -> None:
    vs = [v for v in rep.network.variants if v.step.median is not None]
    ax.barh(range(len(vs)), [v.step.median * 1e3 for v in vs],
            color="tab:blue", label="whole step")
    ax.barh(range(len(vs)), [(v.bn.median or 0) * 1e3 for v in vs],
            color="tab:orange", label="batch-norm calls")
    ax.set_yticks(range(len(vs)))
    ax.set_yticklabels([v.name for v in vs], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms per step (median)")
    ax.set_title("NumPy network step: ResNet basic block %s" %
                 (rep.network.shape,), fontsize=9)
    ax.legend(fontsize=6)


def plot(rep: Report, path: str, title: str) -> None:
    """Write the chart of every part of `rep` that ran to `path` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    if rep.kernels:
        panels.append(("kernels", 1.5 + 0.25 * len(rep.kernels) * 2))
    if rep.sweep is not None and rep.sweep.rows:
        panels += [("sweep-eager", 4.0), ("sweep-floor", 4.0)]
    if rep.scenarios is not None and rep.scenarios.rows:
        panels.append(("scenarios", 4.0))
    if rep.network is not None:
        panels.append(("network", 2.0))
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, sum(
        h for _, h in panels)), gridspec_kw={"height_ratios": [
            h for _, h in panels]}, squeeze=False)
    axes = {name: ax for (name, _), ax in zip(panels, axes[:, 0])}
    if "kernels" in axes:
        _kernels(axes["kernels"], rep)
    if "sweep-eager" in axes:
        _sweep(axes["sweep-eager"], axes["sweep-floor"], rep)
    if "scenarios" in axes:
        _scenarios(axes["scenarios"], rep)
    if "network" in axes:
        _network(axes["network"], rep)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    plt.close(fig)
