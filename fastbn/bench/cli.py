"""``python -m fastbn.bench``: options, the run of the chosen parts, output.

Without a part option the headline report runs (about two minutes): the
kernel workloads against NumPy, the floor and PyTorch where installed, a
slice of the shape sweep and the between-calls scenarios.  ``--full`` runs
the full report: every kernel workload, the whole shape sweep, the
between-calls scenarios, the NumPy network step, ghost batches and batch
renormalization against ordinary batch norm, the scikit-learn
StandardScaler comparison and half precision.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import ghost, half, kernels, network, scaler, scenarios, sweep
from .floor import copyto_releases_gil
from .machine import OtherLoad, blas_info, machine_info
from .progress import Progress
from .report import Report, render, to_json
from .workloads import (WORKLOADS, check_sweep_terms, family_counts,
                        filter_sweep, fmt_bytes, select_workloads,
                        split_terms, sweep_workloads)

#: The report's parts, in its order, and their options' help.
PART_HELP = {
    "kernels": "the kernel workloads (standard shapes, every implementation, "
               "issue-9 targets)",
    "sweep": "the shape sweep: real networks' shapes, fastbn against torch eager "
             "and the floor at 1 and N threads, every loss shown",
    "scenarios": "between calls: back-to-back, after a NumPy matmul, after 2 ms "
                 "idle; 1 thread vs default",
    "network": "a ResNet basic block step in NumPy with fastbn and with NumPy "
               "batch norm",
    "ghost": "ghost batches (virtual_batch_size) and batch renormalization "
             "against ordinary batch norm",
    "sklearn": "fastbn.sklearn.StandardScaler against scikit-learn's: fit, "
               "transform, fit_transform, partial_fit in 10 chunks (needs "
               "scikit-learn)",
    "half": "half precision: fastbn on float16 and bfloat16 beside its float32, "
            "and torch eager on half tensors (bfloat16 needs ml_dtypes)",
}
PARTS = tuple(PART_HELP)
#: The parts of the default (headline) report; ``--full`` runs all PARTS.
#: The headline runs every kernel workload (HEADLINE_KERNEL_ROUNDS rounds),
#: the sweep and the scenarios at their --quick sizes and rounds.
HEADLINE = ("kernels", "sweep", "scenarios")
HEADLINE_KERNEL_ROUNDS = 11

#: Timing rounds per part: (full, --quick).
ROUNDS = {"kernels": (25, 7), "sweep": (5, 3), "scenarios": (5, 2),
          "network": (21, 5), "ghost": (41, 11), "sklearn": (3, 2),
          "half": (11, 5)}
#: Timed calls per block in the between-calls scenarios: (full, --quick).
SCENARIO_CALLS = (20, 10)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastbn.bench",
        description="Time fastbn against NumPy, PyTorch and the floor (a "
                    "copy of the same bytes on the same number of threads). "
                    "Without a part option, the headline report (about two "
                    "minutes): the kernel workloads, a slice of the shape "
                    "sweep and the between-calls scenarios, with fewer "
                    "rounds and no torch.compile.  --full runs the full "
                    "report: every part (the network step, ghost batches "
                    "and renormalization, the scikit-learn StandardScaler "
                    "and half precision too), the whole sweep, full rounds.")
    parts = p.add_argument_group(
        "parts (default: the headline: kernels, a sweep slice, scenarios)")
    for part, text in PART_HELP.items():
        parts.add_argument("--" + part, action="store_true", help=text)
    p.add_argument("--full", action="store_true",
                   help="the full report: every part, every sweep row, full "
                        "rounds, torch.compile where installed (about 10 "
                        "minutes without PyTorch, 20 with it, on 2 cores)")
    parts.add_argument("--torch", action="store_true",
                       help="only fastbn.torch (needs torch; --full includes "
                            "it where torch is installed): model training "
                            "and eval steps stock/converted, eager/compiled, "
                            "per-operator times and the call overhead")
    p.add_argument("--quick", action="store_true",
                   help="a small subset of every part, fewer rounds, no "
                        "torch.compile (about 2 minutes)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads for fastbn and torch (default: "
                        "fastbn.get_num_threads()); fastbn is also timed at "
                        "1 thread")
    p.add_argument("--markdown", metavar="FILE", help="write a Markdown report")
    p.add_argument("--plot", metavar="FILE",
                   help="write a PNG chart (needs matplotlib)")
    p.add_argument("--json", metavar="FILE",
                   help="write all results (every sample) as JSON")
    p.add_argument("--no-torch", action="store_true",
                   help="do not time PyTorch even if it is installed")
    p.add_argument("--no-compile", action="store_true",
                   help="no torch.compile anywhere (always off with --quick)")
    p.add_argument("--repeats", type=int, default=None, metavar="R",
                   help="timing rounds of every part (defaults: kernels "
                        "25/7 with --quick, tiny workloads 4x; sweep 5/3; "
                        "scenarios 5/2; network 21/5; ghost 41/11; sklearn 3/2; "
                        "half 11/5)")
    p.add_argument("--only", metavar="KEYS",
                   help="kernel workloads to run, comma-separated (implies "
                        "--kernels when no part is named): " +
                        ", ".join(w.key for w in WORKLOADS))
    p.add_argument("--sweep-filter", metavar="TERMS",
                   help="sweep rows to run (implies --sweep when no part is "
                        "named): terms separated by commas (outside "
                        "parentheses) that must all match a row: a "
                        "substring of 'family layout (shape) dtype mode' "
                        "(e.g. 'ResNet-50 layer4', NHWC, '(256,512,7,7)', "
                        "float64, backward), mode=MODE, max=MB (arrays "
                        "of at most MB megabytes), or compile (the rows "
                        "where torch.compile runs by default)")
    p.add_argument("--sweep-compile", choices=("none", "subset", "all"),
                   default=None,
                   help="torch.compile in the sweep: none, the "
                        "representative subset (default; none with --quick "
                        "or --no-compile) or every row (hours)")
    p.add_argument("--l2", type=size_arg, default=None, metavar="BYTES",
                   help="plan fastbn's kernels as on a CPU with this L2 per "
                        "core (e.g. 512K, 1M, 1.25M; fastbn._kernels."
                        "set_cache_sizes): how the kernels do on other CPUs' "
                        "caches; results are the same bits, only the plans "
                        "change")
    p.add_argument("--l3", type=size_arg, default=None, metavar="BYTES",
                   help="the same for the L3 a core sees (e.g. 8M)")
    p.add_argument("--list", action="store_true",
                   help="list the kernel workloads and sweep rows that "
                        "would run, and exit")
    p.add_argument("--pause", type=float, default=0.01, metavar="S",
                   help="seconds of sleep between samples (default 0.01; "
                        "libgomp's idle threads spin for milliseconds after "
                        "a parallel region and would steal a core from the "
                        "next implementation)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and check the options; resolve the parts to run."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.only:
        args.only = [k.strip() for k in args.only.split(",") if k.strip()]
        unknown = set(args.only) - {w.key for w in WORKLOADS}
        if unknown:
            p.error("unknown workload(s): %s (choose from %s)" % (
                ", ".join(sorted(unknown)),
                ", ".join(w.key for w in WORKLOADS)))
    if args.sweep_filter is not None:
        args.sweep_filter = split_terms(args.sweep_filter)
        if not args.sweep_filter:
            p.error("--sweep-filter needs at least one term")
        msg = check_sweep_terms(args.sweep_filter)
        if msg:
            p.error("--sweep-filter: " + msg)
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.pause < 0:
        p.error("--pause must be >= 0")
    if args.no_compile and args.sweep_compile not in (None, "none"):
        p.error("--no-compile contradicts --sweep-compile %s" %
                args.sweep_compile)
    chosen = [part for part in PARTS if getattr(args, part)]
    if not chosen:
        if args.only:
            chosen.append("kernels")
        if args.sweep_filter:
            chosen.append("sweep")
    if args.full and (chosen or args.quick):
        p.error("--full runs every part at full size: leave out --quick "
                "and the part options")
    # the headline: no part named and no --full (quick sizes, headline parts)
    args.headline = not (chosen or args.full or args.quick or args.torch)
    if args.headline:
        args.quick = True
        chosen = list(HEADLINE)
    args.parts = chosen or list(PARTS)
    if args.sweep_compile is None:
        args.sweep_compile = ("none" if args.quick or args.no_compile
                              else "subset")
    if args.only and "kernels" not in args.parts:
        p.error("--only selects kernel workloads, but --kernels is not "
                "among the parts")
    if args.sweep_filter and "sweep" not in args.parts:
        p.error("--sweep-filter selects sweep rows, but --sweep is not "
                "among the parts")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            p.error("--plot needs matplotlib: pip install matplotlib "
                    "(or fastbn[plot])")
    return args


def import_torch(threads: int):
    """torch with `threads` intra-op threads, or None if not importable."""
    try:
        import torch
    except Exception:
        return None
    torch.set_num_threads(threads)
    return torch


def chosen_sweep(args) -> list:
    """The sweep workloads the options select."""
    ws = sweep_workloads(quick=args.quick)
    if args.sweep_filter:
        ws = filter_sweep(ws, args.sweep_filter)
    return ws


def list_selection(args) -> str:
    """--list: what would run."""
    lines = []
    if "kernels" in args.parts:
        ws = select_workloads(args.quick and not args.headline, args.only)
        lines.append("kernel workloads (%d):" % len(ws))
        lines += ["  %-20s %s" % (w.key, w.title) for w in ws]
    if "sweep" in args.parts:
        ws = chosen_sweep(args)
        lines.append("sweep rows (%d; arrays per family: %s):" % (
            len(ws), ", ".join("%s %d" % kv
                               for kv in family_counts(ws).items())))
        lines += ["  %-9s %s%s%s" % (fmt_bytes(w.nbytes), w.label,
                                     " " + w.alias_text if w.aliases else "",
                                     " [compile]" if w.compile else "")
                  for w in ws]
    if "scenarios" in args.parts:
        lines.append("between calls: %s x %s" % (
            scenarios.QUICK_SHAPES if args.quick else scenarios.SHAPES,
            scenarios.SCENARIOS))
    if "network" in args.parts:
        lines.append("network step: ResNet basic block %s" % (
            network.QUICK_SHAPE if args.quick else network.SHAPE,))
    if "ghost" in args.parts:
        rows = (ghost.QUICK_GHOST_ROWS + ghost.QUICK_RENORM_ROWS if args.quick
                else ghost.GHOST_ROWS + ghost.RENORM_ROWS)
        lines.append("ghost batches and renormalization (%d rows):" % len(rows))
        lines += ["  %s %s" % (r[0], r[1]) for r in rows]
    if "sklearn" in args.parts:
        lines.append("scikit-learn StandardScaler: %s x %s" % (
            scaler.QUICK_SHAPE if args.quick else scaler.SHAPE, scaler.OPS))
    if "half" in args.parts:
        lines.append("half precision: %s x %s" % (
            [s for _, s, _ in (half.QUICK_SHAPES if args.quick
                               else half.SHAPES)], half.MODES))
    return "\n".join(lines) + "\n"


def settings_text(args, rounds: dict, compile_kernels: bool,
                  sweep_compile: str) -> str:
    parts = []
    for part in args.parts:
        extra = ""
        if part == "kernels":
            extra = ", tiny 4x%s" % (", torch.compile" if compile_kernels
                                     else "")
        elif part == "sweep":
            extra = ", torch.compile: %s" % sweep_compile
        elif part == "scenarios":
            extra = ", %d calls per block" % (
                SCENARIO_CALLS[1] if args.quick else SCENARIO_CALLS[0])
        parts.append("%s %d rounds%s" % (part, rounds[part], extra))
    mode = ("headline (--full for the full report)" if args.headline
            else "--quick" if args.quick else "full")
    return "%s; %s" % (mode, "; ".join(parts))


def size_arg(text: str) -> int:
    """Bytes from '524288', '512K', '1M' or '1.25M' (for --l2, --l3)."""
    t = text.strip().upper().rstrip("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    try:
        n = float(t[:-1] if scale > 1 else t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected a size in bytes such as 524288, 512K or 1.25M, got %r" % text)
    if not n >= 1:
        raise argparse.ArgumentTypeError("a cache size must be >= 1 byte, got %r" % text)
    return int(n)


def main(argv=None) -> int:
    """Run the report; 0 if every verification passed, else 1."""
    args = parse_args(argv)
    if args.list:
        sys.stdout.write(list_selection(args))
        return 0
    import fastbn

    if args.l2 is not None or args.l3 is not None:
        from .. import _kernels
        _kernels.set_cache_sizes(l2=args.l2, l3=args.l3)
    if args.torch:  # its own report (fastbn.bench.torch_models)
        from .torch_models import run as run_torch
        text = run_torch(quick=args.quick, threads=args.threads,
                         progress=lambda m: print(m, file=sys.stderr))
        sys.stdout.write(text + "\n")
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(text + "\n")
        return 0
    threads = args.threads or fastbn.get_num_threads()
    torch = None if args.no_torch else import_torch(threads)
    compile_kernels = torch is not None and not args.quick and \
        not args.no_compile
    sweep_compile = args.sweep_compile if torch is not None else "none"
    rounds = {part: args.repeats or ROUNDS[part][args.quick]
              for part in PARTS}
    if args.headline and not args.repeats:
        rounds["kernels"] = HEADLINE_KERNEL_ROUNDS
    progress = Progress()
    gil = copyto_releases_gil() if threads > 1 else None
    if gil is False:
        progress.note("WARNING: np.copyto does not release the GIL here: "
                      "the N-thread copy is serialised")
    rep = Report(machine_info(fastbn, torch, threads),
                 settings_text(args, rounds, compile_kernels, sweep_compile),
                 threads, gil)
    quick = args.quick
    run = {  # each part's run; its result is the report's attribute of its name
        "kernels": lambda: kernels.run_kernels(
            select_workloads(quick and not args.headline, args.only), fastbn,
            threads, rounds["kernels"], torch=torch, compile_torch=compile_kernels,
            pause=args.pause, progress=progress),
        "sweep": lambda: sweep.run_sweep(
            chosen_sweep(args), fastbn, sorted({1, threads}), rounds["sweep"],
            torch=torch, compile_mode=sweep_compile, pause=args.pause,
            progress=progress),
        "scenarios": lambda: scenarios.run_scenarios(
            fastbn, threads, rounds["scenarios"], SCENARIO_CALLS[1 if quick else 0],
            torch=torch, shapes=scenarios.QUICK_SHAPES if quick else scenarios.SHAPES,
            blas=blas_info(), progress=progress),
        "network": lambda: network.run_network(
            fastbn, threads, rounds["network"],
            shape=network.QUICK_SHAPE if quick else network.SHAPE, pause=args.pause,
            progress=progress),
        "ghost": lambda: ghost.run_ghost(fastbn, threads, rounds["ghost"], quick=quick,
                                         pause=args.pause, progress=progress),
        "sklearn": lambda: scaler.run_scaler(fastbn, threads, rounds["sklearn"],
                                             quick=quick, pause=args.pause,
                                             progress=progress),
        "half": lambda: half.run_half(fastbn, threads, rounds["half"], quick=quick,
                                      torch=torch, pause=args.pause, progress=progress),
    }
    for part in args.parts:
        load = OtherLoad()
        setattr(rep, part, run[part]())
        rep.other_load[part] = load.share()
    progress.done()
    # the full report ends with fastbn.torch's part (--torch) where torch is
    # installed
    torch_text = ""
    if args.full and torch is not None:
        from .torch_models import run as run_torch
        torch_text = "\n" + run_torch(
            threads=threads, progress=lambda m: print(m, file=sys.stderr)) + "\n"
    sys.stdout.write(render(rep) + torch_text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(render(rep, markdown=True) + torch_text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(to_json(rep), f, indent=1)
    if args.plot:
        from .plot import plot
        plot(rep, args.plot, "fastbn, %d threads: %s" % (
            threads, rep.info[0][1].split(" RAM")[0][:100]))
    return 1 if rep.failures() else 0
