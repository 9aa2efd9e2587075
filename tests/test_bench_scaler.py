"""The scikit-learn part of ``python -m fastbn.bench`` (fastbn/bench/scaler.py):
its option, its checks against scikit-learn, its table, JSON and targets,
and a small real run."""
import json
import os

import numpy as np
import pytest

import fastbn
from fastbn.bench import cli, report, scaler

if os.environ.get("FASTBN_REQUIRE_SKLEARN") == "1":
    import sklearn  # noqa: F401
else:
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")


def test_option_selects_the_part_and_the_full_report_includes_it():
    assert cli.parse_args(["--sklearn"]).parts == ["sklearn"]
    assert "sklearn" in cli.parse_args(["--full"]).parts
    assert cli.ROUNDS["sklearn"][1] < cli.ROUNDS["sklearn"][0]
    text = cli.list_selection(cli.parse_args(["--sklearn", "--quick"]))
    assert "StandardScaler" in text and str(scaler.QUICK_SHAPE) in text


def test_targets_of_the_issue():
    assert scaler.target("float32", False, "fit_transform") == 10
    assert scaler.target("float32", False, "fit") == 10
    assert scaler.target("float32", False, "transform") == 4
    assert scaler.target("float32", True, "fit_transform") == 5
    assert scaler.target("float64", False, "fit_transform") == 5
    assert scaler.target("float64", True, "partial_fit x10") == 5


def test_verify_catches_wrong_statistics_and_data():
    from sklearn.preprocessing import StandardScaler as SkScaler
    from fastbn.sklearn import StandardScaler
    x = scaler.make_data((500, 6), "float64", True)
    ref, ours = SkScaler().fit(x), StandardScaler().fit(x)
    R, Y = ref.transform(x), ours.transform(x)
    assert scaler.verify(ours, ref, Y, R, "float64")[0] == "ok"
    bad = Y.copy()
    bad[3, 2] *= 1 + 1e-8
    assert scaler.verify(ours, ref, bad, R, "float64")[0].startswith("FAILED")
    nan_moved = Y.copy()
    nan_moved[np.isnan(nan_moved)] = 0
    assert "FAILED" in scaler.verify(ours, ref, nan_moved, R, "float64")[0]
    ours.var_ = ours.var_ * (1 + 1e-6)
    status, err = scaler.verify(ours, ref, None, None, "float64")
    assert status.startswith("FAILED: var_") and err > 1e-10


def _fake():
    rows = [scaler.ScalerRow("float32", False, "fit_transform", 0.040, 0.430, "ok",
                             1e-7, copy=0.019, bn=0.032, ratios=[10.5, 11.0, 10.0]),
            scaler.ScalerRow("float64", True, "transform", 0.100, 0.300,
                             "FAILED: transformed data relative error 1 > 1e-10",
                             1.0, ratios=[3.0])]
    return scaler.ScalerResult((1000, 64), 2, rows, seconds=12.0,
                               versions="scikit-learn 9.9")


def test_table_json_and_failures():
    res = _fake()
    assert res.rows[0].speedup == pytest.approx(10.5) and res.rows[0].met
    assert res.rows[1].met is False
    rep = report.Report([("CPU", "fake")], "fake", 2, True, sklearn=res)
    text = report.render(rep)
    assert "scikit-learn StandardScaler (1000 x 64)" in text
    assert "10.5x" in text and "3.0x" in text and "NO" in text
    assert "430.0 ms" in text and "19.0 ms" in text
    assert "VERIFICATION FAILED" in text
    assert rep.failures() == ["sklearn/float64 nan/transform"]
    md = report.render(rep, markdown=True)
    assert "| float32 | finite | fit_transform |" in md
    data = json.loads(json.dumps(report.to_json(rep)))
    assert data["sklearn"]["rows"][0]["speedup"] == pytest.approx(10.5)
    assert data["sklearn"]["rows"][1]["met"] is False
    skipped = scaler.ScalerResult((1, 1), 1, [], skipped="no scikit-learn")
    text = report.render(report.Report([("CPU", "fake")], "fake", 1, None,
                                       sklearn=skipped))
    assert "Skipped: no scikit-learn" in text


def test_a_small_real_run(monkeypatch):
    monkeypatch.setattr(scaler, "QUICK_SHAPE", (3000, 8))
    res = scaler.run_scaler(fastbn, 2, 1, quick=True, pause=0)
    assert res.shape == (3000, 8) and not res.skipped
    assert len(res.rows) == 16
    assert {r.op for r in res.rows} == set(scaler.OPS)
    for r in res.rows:
        assert r.status.startswith("ok"), (r.dtype, r.nan, r.op, r.status)
        assert r.fastbn > 0 and r.sklearn > 0 and r.speedup > 0
        assert (r.copy is not None) == (r.op in ("transform", "fit_transform"))
        assert (r.bn is not None) == (r.op == "fit_transform")
