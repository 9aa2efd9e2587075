"""The benchmark package's logic (``fastbn.bench``), without timing anything.

What the report claims rests on these: the sweep covers the shapes it says
and no array is too large, the floor is the faster copy at the row's thread
count, losses and target misses are counted right, every part renders (text,
Markdown, JSON) from a fake result set, the N-thread copy copies, the
network step's convolution is right, and the options fail clearly.
"""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from fastbn.bench import cli, floor, network, report, scenarios, sweep
from fastbn.bench.results import WorkloadResult
from fastbn.bench.scenarios import ScenarioResult, ScenarioRow
from fastbn.bench.timing import Result, percentile
from fastbn.bench.workloads import (COMPILE_SUBSET, MAX_ARRAY_BYTES, MODES,
                                    PLAN_NAMES,
                                    QUICK_SWEEP, WORKLOADS, Workload,
                                    filter_sweep, select_workloads,
                                    split_terms, sweep_workloads)
from fastbn.bench.progress import eta, fmt_duration

SWEEP = sweep_workloads()


# --------------------------------------------------------------------------
# Workloads and the sweep's shape list
# --------------------------------------------------------------------------

def _arrays(ws):
    return {(w.shape, w.axis, w.dtype) for w in ws}


def _all_shapes(ws):
    """Every shape of the sweep, aliases included, with its axis sign."""
    out = set()
    for w in ws:
        out.add((w.shape, w.channel_axis == w.ndim - 1 and w.ndim > 2))
        out |= {(s, w.channel_axis == w.ndim - 1 and w.ndim > 2)
                for _, s in w.aliases}
    return out


def test_sweep_has_no_duplicate_problem():
    seen = set()
    for w in SWEEP:
        key = (w.mode, w.view, w.dtype)
        assert key not in seen, w.label
        seen.add(key)


def test_sweep_arrays_fit_the_size_limit():
    assert MAX_ARRAY_BYTES <= 126 * 10 ** 6
    for w in SWEEP:
        assert w.nbytes <= MAX_ARRAY_BYTES, w.label
    # the limit is used: the largest arrays are close to it
    assert max(w.nbytes for w in SWEEP) > 0.75 * MAX_ARRAY_BYTES


def test_sweep_every_array_in_every_mode():
    by_array = {}
    for w in SWEEP:
        by_array.setdefault((w.shape, w.axis, w.dtype), []).append(w.mode)
    for arr, modes in by_array.items():
        assert sorted(modes) == sorted(MODES), arr
    # one array's workloads are adjacent (they share inputs)
    keys = [(w.shape, w.axis, w.dtype) for w in SWEEP]
    changes = sum(a != b for a, b in zip(keys, keys[1:]))
    assert changes == len(by_array) - 1


def test_sweep_covers_resnet50_every_stage_batch_and_layout():
    fams = {w.family for w in SWEEP}
    fams |= {f for w in SWEEP for f, _ in w.aliases}
    for stage in ("stem", "layer1", "layer2", "layer3", "layer4"):
        assert "ResNet-50 " + stage in fams
    shapes = _all_shapes(SWEEP)
    # every stage's BN shapes at batch 1, NCHW and NHWC
    for c, hw in ((64, 112), (64, 56), (256, 56), (128, 28), (512, 28),
                  (256, 14), (1024, 14), (512, 7), (2048, 7)):
        assert ((1, c, hw, hw), False) in shapes
        assert ((1, hw, hw, c), True) in shapes
    # batch 256 where it fits, the big layer4/layer3 shapes
    for shape in ((256, 512, 7, 7), (256, 2048, 7, 7), (128, 256, 14, 14),
                  (64, 1024, 14, 14)):
        assert (shape, False) in shapes, shape
    assert ((256, 7, 7, 2048), True) in shapes
    assert ((128, 14, 14, 256), True) in shapes


def test_sweep_covers_the_other_families():
    shapes = _all_shapes(SWEEP)
    # MobileNetV2 expand layers: small planes, many channels
    assert ((128, 960, 7, 7), False) in shapes
    assert ((32, 7, 7, 1280), True) in shapes
    # dense from (256, 4096) to (65536, 64)
    for shape in ((256, 4096), (4096, 1024), (8192, 512), (65536, 64)):
        assert (shape, False) in shapes
    assert any(w.ndim == 3 and w.channel_axis == 1 for w in SWEEP)
    assert any(w.ndim == 3 and w.channel_axis == 2 for w in SWEEP)
    assert any(w.ndim == 5 and w.channel_axis == 1 for w in SWEEP)
    assert {1, 3} <= {w.channels for w in SWEEP}
    assert {"float32", "float64"} == {w.dtype for w in SWEEP}
    assert 3 <= len({w.shape for w in SWEEP if w.dtype == "float64"}) <= 10
    assert any(w.nbytes <= 64 * 1024 for w in SWEEP)  # small ones too


def test_sweep_subsets_name_real_rows():
    """A typo in the compile or quick subset would silently drop a row."""
    listed = set()
    for w in SWEEP:
        listed.add((w.shape, w.axis, w.dtype))
        listed |= {(s, w.axis, w.dtype) for _, s in w.aliases}
    assert COMPILE_SUBSET <= listed
    assert QUICK_SWEEP <= listed
    quick = sweep_workloads(quick=True)
    assert 0 < len(quick) < len(SWEEP) / 10
    assert _arrays(quick) <= _arrays(SWEEP)
    assert {w.mode for w in quick} == set(MODES)
    assert sum(w.compile for w in SWEEP) == 3 * len(
        {(w.shape, w.axis, w.dtype) for w in SWEEP if w.compile})


def test_filter_sweep():
    assert {w.mode for w in filter_sweep(SWEEP, ["mode=infer"])} == {"infer"}
    nhwc = filter_sweep(SWEEP, ["nhwc"])
    assert nhwc and all(w.layout == "NHWC" for w in nhwc)
    one = filter_sweep(SWEEP, ["(256,512,7,7)", "float32", "backward"])
    assert [w.shape for w in one] == [(256, 512, 7, 7)]
    small = filter_sweep(SWEEP, ["max=1"])
    assert small and all(w.nbytes <= 2 ** 20 for w in small)
    # an alias's shape finds the row that stands for it
    alias = filter_sweep(SWEEP, ["(32,56,56,64)", "float32", "mode=train"])
    assert len(alias) == 1 and alias[0].view == (32 * 56 * 56, 64, 1)
    assert filter_sweep(SWEEP, ["no such row"]) == []
    assert filter_sweep(SWEEP, ["compile"]) == [w for w in SWEEP
                                                if w.compile]


def test_filter_terms_keep_shapes_whole():
    assert split_terms("(1,56,56,64), NHWC,mode=train,") == [
        "(1,56,56,64)", "NHWC", "mode=train"]
    a = cli.parse_args(["--sweep-filter", "(1,56,56,64),mode=infer"])
    rows = filter_sweep(SWEEP, a.sweep_filter)
    assert [(w.shape, w.dtype) for w in rows] == [((1, 56, 56, 64),
                                                   "float32")]


def test_kernel_workloads():
    keys = [w.key for w in WORKLOADS]
    assert len(keys) == len(set(keys))
    quick = select_workloads(quick=True)
    assert quick and len(quick) < len(WORKLOADS)
    assert [w.key for w in select_workloads(only=["tiny", "train-nchw"])] \
        == ["train-nchw", "tiny"]
    # issue 9's targets against the honest floor
    targets = {w.key: w.target_ratio for w in WORKLOADS}
    assert targets["train-nchw"] == 1.5 and targets["infer-nchw"] == 1.0
    assert targets["backward-mlp"] == 4.0


def test_workload_geometry():
    w = Workload("k", "backward", (8, 7, 7, 2048), axis=-1)
    assert w.view == (8 * 49, 2048, 1) and w.layout == "NHWC"
    assert w.min_bytes == 3 * w.nbytes and w.sweep_target is None  # dy, x; dx
    big = Workload("k", "infer", (64, 256, 14, 14), dtype="float64")
    assert big.layout == "NCHW" and big.sweep_target == 1.6
    assert Workload("k", "train", (4, 5, 6), axis=-1).layout == "NLC"
    assert Workload("k", "train", (2, 3, 4, 5, 6)).layout == "NCDHW"


# --------------------------------------------------------------------------
# The floor
# --------------------------------------------------------------------------

def test_select_floor():
    assert floor.select_floor(2.0, 1.5) == (1.5, "N threads")
    assert floor.select_floor(1.0, 1.5) == (1.0, "1 thread")
    assert floor.select_floor(1.0, None) == (1.0, "1 thread")
    assert floor.select_floor(None, 1.5) == (1.5, "N threads")
    assert floor.select_floor(None, None) == (None, "")


@pytest.mark.parametrize("size,n", [(0, 2), (5, 2), (1000, 3),
                                    (1 << 20, 2), ((1 << 20) + 7, 4)])
def test_split_bounds(size, n):
    b = floor.split_bounds(size, 4, n)
    assert len(b) == n + 1 and b[0] == 0 and b[-1] == size
    assert all(x <= y for x, y in zip(b, b[1:]))
    assert all(x % (floor.SLICE_ALIGN // 4) == 0 for x in b[:-1])
    if size >= n * floor.SLICE_ALIGN:  # large arrays: nearly equal slices
        sizes = [y - x for x, y in zip(b, b[1:])]
        assert max(sizes) - min(sizes) <= floor.SLICE_ALIGN // 4 + n


@pytest.mark.parametrize("shape,dtype", [((3,), np.float32),
                                         ((33, 1000), np.float64),
                                         ((4, 64, 57), np.float32)])
def test_copy_team_copies(shape, dtype):
    team = floor.CopyTeam(3)
    try:
        src = np.arange(np.prod(shape), dtype=dtype).reshape(shape)
        dst = np.full_like(src, -1)
        team.copy(team.slices(dst, src))
        np.testing.assert_array_equal(dst, src)
    finally:
        team.close()
    assert not any(t.is_alive() for t in team._threads)


def test_copy_impls_check_their_copy():
    x = np.random.default_rng(0).standard_normal((16, 300)).astype(np.float32)
    impls = floor.copy_impls(x, 2)
    assert [(i.name, i.threads) for i in impls] == [
        ("np.copyto (1 thread)", 1), ("np.copyto (2 threads)", 2)]
    for imp in impls:
        ok, err, _ = imp.check(imp.fn())
        assert ok and err == 0.0
        assert not imp.check(np.zeros_like(x))[0]
    assert len(floor.copy_impls(x, 1)) == 1


def _res(name, role, threads, med, best=None, status="ok"):
    best = med if best is None else best
    # three samples: median `med`, minimum `best`
    return Result(name, role, status, 1e-7, [best, med, med * 1.5], threads)


def _wr(w, fb, eager, copy1, copyn, threads=2, compiled=None):
    """A fake sweep row: fastbn/eager medians per thread count (dicts),
    copies' medians."""
    rs = [_res("np.copyto (1 thread)", "floor", 1, copy1),
          _res("np.copyto (2 threads)", "floor", 2, copyn)]
    for t in sorted(fb):
        rs.append(_res("fastbn (%d)" % t, "fastbn", t, fb[t]))
        rs.append(_res("torch eager (%d)" % t, "eager", t, eager[t]))
    for t, v in (compiled or {}).items():
        rs.append(_res("torch.compile (%d)" % t, "compile", t, v))
    return WorkloadResult(w, rs, threads)


def test_ratios_use_the_floor_of_the_row_threads():
    w = Workload("k", "train", (32, 64, 56, 56))
    wr = _wr(w, {1: 3.0, 2: 1.8}, {1: 6.0, 2: 4.0}, copy1=2.0, copyn=1.2)
    assert wr.floor(1) == (2.0, "1 thread")
    assert wr.floor(2) == (1.2, "N threads")
    assert wr.fastbn_over_floor(1) == pytest.approx(1.5)
    assert wr.fastbn_over_floor(2) == pytest.approx(1.5)
    assert wr.fastbn_vs("eager", 2) == pytest.approx(0.45)
    # a NumPy row (threads None) is compared with the run's N-thread floor
    wr.results.append(_res("numpy", "numpy", None, 12.0))
    assert wr.ratio(wr.find("numpy")) == pytest.approx(10.0)
    # small arrays: the split copy is slower, the single copy is the floor
    small = _wr(w, {1: 3.0, 2: 2.5}, {1: 6.0, 2: 4.0}, copy1=1.0, copyn=1.4)
    assert small.floor(2) == (1.0, "1 thread")
    assert small.fastbn_over_floor(2) == pytest.approx(2.5)
    assert small.ratio_min(small.find("fastbn", 2)) == pytest.approx(2.5)


# --------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------

def _fake_sweep():
    big = Workload("a", "train", (256, 512, 7, 7), family="ResNet-50 layer4")
    inf = Workload("b", "infer", (256, 512, 7, 7), family="ResNet-50 layer4")
    small = Workload("c", "train", (8, 16, 8, 8), family="tiny")
    rows = [
        # loses at 2 threads by 2x, and is over the 3x target at 2 threads
        _wr(big, {1: 4.0, 2: 4.0}, {1: 5.0, 2: 2.0}, copy1=1.0, copyn=1.0,
            compiled={1: 3.0, 2: 5.0}),
        # wins everywhere, inference exactly at its target
        _wr(inf, {1: 1.6, 2: 1.6}, {1: 9.0, 2: 9.0}, copy1=1.0, copyn=1.1),
        # loses at 1 thread by its median only (its minimum wins)
        small,
    ]
    rows[2] = WorkloadResult(small, [
        _res("np.copyto (1 thread)", "floor", 1, 1.0),
        _res("np.copyto (2 threads)", "floor", 2, 1.0),
        _res("fastbn (1)", "fastbn", 1, 1.2, best=0.5),
        _res("torch eager (1)", "eager", 1, 1.1, best=1.0),
        _res("fastbn (2)", "fastbn", 2, 1.0),
        _res("torch eager (2)", "eager", 2, 3.0)], 2)
    return sweep.SweepResult(rows, (1, 2), "subset", 12.0)


def test_row_flags_and_loss_counts():
    sw = _fake_sweep()
    assert sweep.row_flags(sw.rows[0], (1, 2)) == [
        "LOSS@2", "LOSS-compile@1", "TARGET@1", "TARGET@2"]
    assert sweep.row_flags(sw.rows[1], (1, 2)) == []
    assert sweep.row_flags(sw.rows[2], (1, 2)) == ["LOSS@1"]
    counts = {(c.mode, c.threads): c for c in
              sweep.loss_counts(sw.rows, (1, 2), MODES)}
    t1, t2 = counts[("train", 1)], counts[("train", 2)]
    assert (t1.rows, t1.losses, t1.losses_min) == (2, 1, 0)
    assert (t2.rows, t2.losses, t2.losses_min) == (2, 1, 1)
    assert t2.worst == pytest.approx(2.0) and "(256,512,7,7)" in t2.worst_row
    assert (t1.compiled, t1.compile_losses) == (1, 1)
    assert (t2.compiled, t2.compile_losses) == (1, 0)
    assert (t1.targeted, t1.over_target) == (1, 1)  # the tiny row: no target
    i2 = counts[("infer", 2)]
    assert (i2.losses, i2.targeted, i2.over_target) == (0, 1, 0)
    assert counts[("backward", 1)].rows == 0
    worst = sweep.worst_rows(sw.rows, (1, 2), n=2)
    assert [(round(v, 3), t) for v, t, _ in worst] == [(2.0, 2), (1.091, 1)]
    over = sweep.worst_floor_rows(sw.rows, (1, 2))
    assert [(v, t) for v, t, _ in over] == [(4.0, 1), (4.0, 2)]


# --------------------------------------------------------------------------
# Rendering a fake result set
# --------------------------------------------------------------------------

def _fake_report():
    w = WORKLOADS[0]
    kern = _wr(w, {2: 1.0}, {2: 3.0}, copy1=1.0, copyn=0.8)
    for r in kern.results:
        if r.role == "fastbn":
            r.impl = "fastbn (out=)"
    kern.results.append(_res("fastbn (out=, 1 thread)", "fastbn", 1, 1.6))
    kern.results.append(_res("numpy", "numpy", None, 9.0))
    rows = []
    for shape in scenarios.SHAPES:
        for sc in scenarios.SCENARIOS:
            rows.append(ScenarioRow(shape, sc, 2, [
                _res("fastbn (1 thread)", "fastbn", 1, 1e-4),
                _res("fastbn (2 threads)", "fastbn", 2, 3e-4),
                _res("torch eager (2 threads)", "eager", 2, 5e-4,
                     status="FAILED: output 0: relative error 1 > 0.002")]))
    net = network.NetworkResult((8, 28, 28, 64), 2, [
        network.NetworkVariant(name, t, _res(name, "step", t, s),
                               _res(name, "bn", t, b))
        for name, t, s, b in (("fastbn (2 threads)", 2, 0.3, 0.1),
                              ("fastbn (1 thread)", 1, 0.2, 0.004),
                              ("NumPy batch norm", None, 0.25, 0.03))])
    return report.Report([("CPU", "fake")], "fake settings", 2, True,
                         kernels=[kern], sweep=_fake_sweep(),
                         scenarios=ScenarioResult(rows, 2, "openblas"),
                         network=net, other_load={"kernels": 0.02,
                                                  "sweep": 0.4,
                                                  "scenarios": None})


def test_render_text_shows_losses_targets_and_the_floor():
    rep = _fake_report()
    text = report.render(rep)
    assert "2.00x LOSS" in text  # the losing sweep row
    assert "OVER" in text  # a miss of the time/floor target
    assert "LOSS@2" in text and "TARGET@2" in text
    assert "losses per mode and thread count" in text
    assert "furthest behind torch eager" in text
    assert "np.copyto of N equal slices" in text  # the floor is defined
    assert "checked in this run: yes" in text
    assert "kernels 2%, sweep 40% (busy), scenarios n/a" in text
    # the between-calls table: 3x slower at 2 threads, target missed
    assert "3.00x" in text and "NO" in text
    # the failed torch row is reported, and the run counts as failed
    assert "VERIFICATION FAILED" in text
    assert any(f.startswith("scenarios/") for f in rep.failures())
    # the network step: 2 threads 1.5x slower than 1 thread
    assert "1.50x" in text
    # the kernel table: fastbn 1.0 against the 2-thread copy's 0.8
    head, rows = report.kernel_rows(rep.kernels[0])
    row = dict(zip(head, next(r for r in rows if r[0] == "fastbn (out=)")))
    assert row["time/floor"] == "1.25x"
    one = dict(zip(head, next(r for r in rows if "1 thread" in r[0] and
                              r[0].startswith("fastbn"))))
    assert one["time/floor"] == "1.60x"  # against the 1-thread copy


def test_render_markdown_tables_are_well_formed():
    md = report.render(_fake_report(), markdown=True)
    assert md.startswith("# fastbn benchmark")
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---"):
            ncol = lines[i - 1].count(" | ") + 1
            j = i + 1
            while j < len(lines) and lines[j].startswith("| "):
                assert lines[j].replace("\\|", "").count(" | ") + 1 == ncol
                j += 1


def test_json_holds_every_part():
    data = json.loads(json.dumps(report.to_json(_fake_report())))
    assert {"kernels", "sweep", "scenarios", "network", "floor"} <= set(data)
    row = data["sweep"]["rows"][0]
    assert row["per_threads"]["2"]["fastbn_vs_eager"] == pytest.approx(2.0)
    assert row["per_threads"]["2"]["floor_from"] in ("1 thread",
                                                     "N threads")
    assert row["flags"][0] == "LOSS@2"
    assert len(data["sweep"]["loss_counts"]) == 4  # 2 modes x 2 threads
    assert data["scenarios"]["rows"][0]["results"][0]["samples_s"]
    assert data["network"]["targets"][0]["met"] is False


def test_rows_record_the_kernels_plan():
    """Every sweep and kernel row names the plan fastbn's kernel made for it
    (with this machine's caches), in the JSON and the tables."""
    from fastbn import _kernels
    data = json.loads(json.dumps(report.to_json(_fake_report())))
    for row in data["sweep"]["rows"] + data["kernels"]:
        w = Workload(row["key"], row["mode"], tuple(row["shape"]),
                     row["axis"], row["dtype"])
        for t, name in row["plans"].items():
            outer, c, inner = w.view
            op = {"train": "train", "infer": "infer",
                  "backward": "backward_relu"}[w.mode]
            want = _kernels.plan(op, outer, c, inner,
                                 np.dtype(w.dtype).itemsize, int(t))["strategy"]
            assert PLAN_NAMES[want] == name
    head, rows = report.sweep_rows(_fake_sweep(), "train")
    col = [i for i, h in enumerate(head) if h.startswith("plan")][0]
    assert all(r[col] in set(PLAN_NAMES.values()) | {
        "/".join((a, b)) for a in PLAN_NAMES.values()
        for b in PLAN_NAMES.values()} for r in rows)
    w = [x for x in sweep_workloads() if x.mode == "backward"
         and x.shape == (32, 64, 56, 56) and x.dtype == "float32"][0]
    old = _kernels.set_cache_sizes(l2=1 << 20)
    try:  # a (32,64,56,56) backward: fused on a 2 MB L2, two-phase on 1 MB
        assert w.plan(2) == "two-phase"
        _kernels.set_cache_sizes(l2=2 << 20)
        assert w.plan(2) == "fused"
    finally:
        _kernels.set_cache_sizes(**old)
    assert "fastbn's plan: 1 thread" in report.kernel_floor_line(
        _fake_report().kernels[0])


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from fastbn.bench.plot import plot
    path = tmp_path / "r.png"
    plot(_fake_report(), str(path), "fake")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scenario_targets():
    assert scenarios.target((8, 16, 8, 8), "after matmul") == ("max", 1.1)
    assert scenarios.target((8, 16, 8, 8), "back-to-back") is None
    row = ScenarioRow((16, 64, 28, 28), "back-to-back", 2, [
        _res("a", "fastbn", 1, 2.0), _res("b", "fastbn", 2, 1.0)])
    assert row.ratio == 0.5 and row.met is True  # speed-up 2 >= 1.7
    row.results[1] = _res("b", "fastbn", 2, 1.25)
    assert row.met is False  # speed-up 1.6
    one = ScenarioRow((16, 64, 28, 28), "back-to-back", 1, [
        _res("a", "fastbn", 1, 2.0)])
    assert one.ratio is None and one.met is None  # nothing to compare
    head, rows = report.scenario_rows(ScenarioResult([one], 1, "blas"))
    assert len(head) == len(rows[0]) and "met" not in head


def test_other_load_share_is_a_fraction():
    from fastbn.bench.machine import OtherLoad
    load = OtherLoad()
    sum(i * i for i in range(200000))  # some CPU time of our own
    share = load.share()
    assert share is None or 0.0 <= share <= 1.0


def test_percentile_and_eta():
    assert percentile([], 90) is None
    assert percentile([5.0], 90) == 5.0
    assert percentile(list(range(11)), 90) == pytest.approx(9.0)
    assert percentile([1.0, 2.0], 50) == pytest.approx(1.5)
    assert eta(10.0, 0.0, 5.0) is None
    assert eta(10.0, 2.0, 3.0) == pytest.approx(15.0)
    assert fmt_duration(65) == "1:05" and fmt_duration(3725) == "1:02:05"


# --------------------------------------------------------------------------
# The network step's building blocks
# --------------------------------------------------------------------------

def test_im2col_is_a_3x3_convolution_and_col2im_its_adjoint():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 4, 3))
    w = rng.standard_normal((3, 3, 3, 2))  # kh, kw, cin, cout
    got = (network.im2col(x) @ w.reshape(27, 2)).reshape(2, 5, 4, 2)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = sum(np.einsum("nhwc,co->nhwo", xp[:, i:i + 5, j:j + 4, :],
                         w[i, j]) for i in range(3) for j in range(3))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    c = rng.standard_normal((40, 27))
    assert np.sum(network.im2col(x) * c) == pytest.approx(
        np.sum(x * network.col2im(c, x.shape)))


def test_network_step_fastbn_matches_float64():
    import fastbn
    shape = (2, 5, 5, 4)
    ref = network.block_step(network.make_block(shape, np.float64),
                             network.NumpyBN())
    got = network.block_step(network.make_block(shape, np.float32),
                             network.FastbnBN(fastbn))
    ok, err, msg = network.compare_step(got, ref)
    assert ok, msg
    bad = dict(got, dw1=got["dw1"] * 1.1)
    assert not network.compare_step(bad, ref)[0]


# --------------------------------------------------------------------------
# Options and imports
# --------------------------------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    (["--only", "nope"], "unknown workload"),
    (["--sweep-filter", "mode=fwd"], "unknown mode"),
    (["--sweep-filter", "max=big"], "max= needs a size"),
    (["--sweep-filter", ","], "at least one term"),
    (["--no-compile", "--sweep-compile", "all"], "contradicts"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--sweep", "--only", "tiny"], "--only selects kernel workloads"),
    (["--full", "--quick"], "--full runs every part"),
    (["--full", "--sweep"], "--full runs every part"),
])
def test_bad_options_fail_clearly(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_option_defaults_and_implied_parts():
    assert cli.parse_args(["--full"]).parts == list(cli.PARTS)
    assert cli.parse_args(["--only", "tiny"]).parts == ["kernels"]
    a = cli.parse_args(["--sweep-filter", "NHWC,mode=train"])
    assert a.parts == ["sweep"] and a.sweep_filter == ["NHWC", "mode=train"]
    assert cli.parse_args(["--quick"]).sweep_compile == "none"
    assert cli.parse_args(["--full"]).sweep_compile == "subset"
    assert cli.parse_args(["--scenarios", "--network"]).parts == [
        "scenarios", "network"]


def test_default_is_the_headline_and_full_is_one_flag_away(capsys):
    """No option: the headline report (kernels, a sweep slice, scenarios at
    --quick sizes, no torch.compile); --full: every part at full size."""
    head = cli.parse_args([])
    assert head.headline and head.parts == list(cli.HEADLINE)
    assert head.quick and head.sweep_compile == "none"
    assert set(cli.HEADLINE) < set(cli.PARTS)
    full = cli.parse_args(["--full"])
    assert not full.headline and not full.quick
    assert full.parts == list(cli.PARTS)
    # part options keep their full sizes, as before
    part = cli.parse_args(["--sweep"])
    assert not part.headline and not part.quick and part.parts == ["sweep"]
    assert cli.parse_args(["--quick"]).parts == list(cli.PARTS)
    # what the headline runs: a slice of the sweep, not all of it
    assert cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "kernel workloads (%d):" % len(WORKLOADS) in out
    assert "between calls:" in out
    n_rows = int(re.search(r"sweep rows \((\d+);", out).group(1))
    assert 0 < n_rows < len(SWEEP) / 10
    assert "network step" not in out and "half precision" not in out
    assert cli.main(["--list", "--full"]) == 0
    out = capsys.readouterr().out
    assert int(re.search(r"sweep rows \((\d+);", out).group(1)) == len(SWEEP)
    assert "network step" in out and "half precision" in out


def test_list_runs_nothing(capsys):
    assert cli.main(["--list", "--sweep-filter", "ResNet-50 layer4,NCHW"]) \
        == 0
    out = capsys.readouterr().out
    assert "sweep rows (" in out and "(256,2048,7,7)" in out
    assert "kernel workloads" not in out


def test_import_needs_only_numpy():
    code = ("import sys, fastbn.bench, fastbn.bench.cli, fastbn.bench.report;"
            "bad = [m for m in ('torch', 'matplotlib', 'threadpoolctl') "
            "if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cache_size_options():
    """--l2/--l3 take sizes with K/M suffixes and refuse nonsense; the
    report's header says which sizes the plans were forced to."""
    assert cli.size_arg("524288") == 524288
    assert cli.size_arg("512K") == 512 << 10
    assert cli.size_arg("1.25M") == 1310720
    assert cli.size_arg("8mb") == 8 << 20
    for bad in ("abc", "0", "-1M", ""):
        with pytest.raises(Exception, match="size"):
            cli.size_arg(bad)
    args = cli.parse_args(["--kernels", "--l2", "1M"])
    assert args.l2 == 1 << 20 and args.l3 is None
    from fastbn import _kernels
    from fastbn.bench.machine import planned_caches
    import fastbn
    assert planned_caches(fastbn) == ""
    old = _kernels.set_cache_sizes(l2=1 << 20)
    try:
        text = planned_caches(fastbn)
        assert "L2 1024K" in text and "L2 forced" in text
    finally:
        _kernels.set_cache_sizes(**old)


def test_torch_report_is_not_the_quick_headline():
    """``--torch`` alone runs the full PyTorch report (it used to fall into
    the headline's --quick sizes); ``--torch --quick`` the small one."""
    args = cli.parse_args(["--torch"])
    assert args.torch and not args.quick and not args.headline
    assert cli.parse_args(["--torch", "--quick"]).quick
