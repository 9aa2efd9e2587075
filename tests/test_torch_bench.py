"""python -m fastbn.bench --torch: its pieces on tiny inputs (skipped
without torch)."""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("fastbn.torch")
from fastbn.bench import cli, torch_models as tm  # noqa: E402

pytestmark = pytest.mark.torch


def test_call_overhead_rows():
    rows = tm.call_overhead(rounds=1, inner=2)
    assert len(rows) == 7
    assert all(isinstance(k, str) and us > 0 for k, us in rows)


def test_operator_times_rows():
    rows = tm.operator_times(((2, 4, 4, 4),), rounds=1)
    assert [(r[1], r[2]) for r in rows] == [
        ("nchw", "forward"), ("nchw", "backward"),
        ("channels_last", "forward"), ("channels_last", "backward")]
    assert all(r[3] > 0 and r[4] > 0 for r in rows)


def test_models_have_torchvision_shapes():
    """Parameter counts of torchvision's ResNet-18/50 and MobileNetV2."""
    count = {name: sum(p.numel() for p in make().parameters())
             for name, (make, _, _) in tm.MODELS.items()}
    assert count == {"resnet18": 11689512, "resnet50": 25557032,
                     "mobilenet_v2": 3504872}


def test_cli_flag():
    assert cli.parse_args(["--torch", "--quick"]).torch


def test_variants_on_own_threads():
    """At 2 threads the report adds the converted model on fastbn's own
    threads next to the default (PyTorch's threads); the setting is
    restored after each step."""
    from fastbn.torch import _team
    v = tm._variants("resnet18", "nchw", compiled=False, team=True)
    assert list(v) == ["stock eager", "fastbn eager", "fastbn eager, own threads"]
    assert list(tm._variants("resnet18", "nchw", compiled=False)) == [
        "stock eager", "fastbn eager"]
    before = _team.torch_threads_on()
    seen = []
    for flag in (True, False):
        tm._on_threads(lambda: seen.append(_team.torch_threads_on()), flag)()
        assert _team.torch_threads_on() == before
    from fastbn import _kernels
    # a build without OpenMP has no pool to hand over: fastbn's threads only
    possible = _team.torch_openmp_runtime() is not None and _kernels.openmp_version() > 0
    assert seen == [possible, False]


def test_sync_cost_two_ranks():
    local, sync, share, coll = tm.sync_cost((4, 3, 5, 5), 2, rounds=2)
    assert local > 0 and sync > 0 and share > 0
    assert 0 < coll < 60e3  # ms: measured, and not a rank's timeout


def test_model_times_compiles_only_the_named_models():
    rows = tm.model_times(names=("resnet18",), formats=("nchw",), threads=(1,),
                          compiled=("mobilenet_v2",), rounds=1, progress=lambda s: None)
    assert sorted({(r[3], r[4]) for r in rows}) == [
        ("eval", "fastbn eager"), ("eval", "stock eager"),
        ("train", "fastbn eager"), ("train", "stock eager")]
    assert all(r[5] > 0 for r in rows)
