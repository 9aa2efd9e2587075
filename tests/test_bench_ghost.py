"""The benchmark's ghost-batch and renormalization part (``--ghost``):
options, verification of its rows, ratios and the report."""
import json

import numpy as np
import pytest

import fastbn
from fastbn.bench import cli, ghost, report
from fastbn.bench.timing import Result


def _res(name, samples, status="ok"):
    return Result(name, "fastbn", status, samples=list(samples), threads=2)


def _fake():
    rows = [ghost.GhostRow("ghost train, k=N/8", (256, 64, 28, 28),
                           _res("variant", [1.2, 1.0, 3.0]),
                           _res("ordinary", [1.0, 1.0, 1.0]), 1.15),
            ghost.GhostRow("ghost train TabNet, k=128", (16384, 64),
                           _res("variant", [1.0, 1.0, 1.0]),
                           _res("ordinary", [1.0, 1.0, 1.0]), None,
                           _res("loop", [4.0, 5.0, 6.0])),
            ghost.GhostRow("renorm layer train", (32, 64, 56, 56),
                           _res("variant", [1.0, 1.01, 1.02], "FAILED: error 1"),
                           _res("ordinary", [1.0, 1.0, 1.0]), 1.05)]
    return report.Report([("CPU", "fake")], "fake", 2, True,
                         ghost=ghost.GhostResult(2, rows, 1.0))


def test_ratios_are_paired_per_round_and_targets_checked():
    rep = _fake()
    a, b, c = rep.ghost.rows
    assert a.ratio == pytest.approx(1.2)   # median of 1.2, 1.0, 3.0
    assert a.met is False and b.met is None
    assert b.loop_ratio == pytest.approx(0.2)
    assert c.failed and rep.failures() == ["ghost/renorm layer train"]


def test_report_shows_the_part():
    rep = _fake()
    text = report.render(rep)
    assert "Ghost batches and batch renormalization" in text
    assert "1.200x" in text and "<= 1.15x" in text and "NO" in text
    assert "0.20x" in text  # against the loop of slices
    assert "VERIFICATION FAILED: ghost/renorm layer train" in text
    assert "virtual_batch_size=k" in text  # the note defines the ratio
    md = report.render(rep, markdown=True)
    assert "| ghost train, k=N/8 |" in md
    data = json.loads(json.dumps(report.to_json(rep)))
    assert data["ghost"]["rows"][0]["ratio"] == pytest.approx(1.2)
    assert data["ghost"]["rows"][1]["loop_ratio"] == pytest.approx(0.2)


def test_options():
    assert "ghost" in cli.parse_args(["--full"]).parts
    assert "ghost" not in cli.parse_args([]).parts   # not in the headline
    assert cli.parse_args(["--ghost"]).parts == ["ghost"]
    assert cli.parse_args(["--network", "--ghost"]).parts == ["network", "ghost"]


def test_list_names_the_rows(capsys):
    assert cli.main(["--list", "--ghost", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "ghost train, k=N/8 (64, 64, 28, 28)" in out
    assert "renorm layer train" in out


def test_rows_verify_and_time_on_small_shapes():
    row = ghost._ghost_row(fastbn, "g", (16, 4, 5, 5), 1, 4, "train", 1.15, 2, 2,
                           0.0, lambda s: None)
    assert row.variant.ok and len(row.variant.samples) == 2 and row.ratio > 0
    row = ghost._ghost_row(fastbn, "l", (64, 8), 1, 8, "train", None, 2, 2, 0.0,
                           lambda s: None)
    assert row.loop is not None and row.loop_ratio > 0
    row = ghost._ghost_row(fastbn, "b", (8, 4, 5, 5), 1, 2, "backward", None, 2,
                           1, 0.0, lambda s: None)
    assert row.variant.ok and row.ratio > 0
    row = ghost._renorm_row(fastbn, "r", (8, 4, 5, 5), 1, 1.05, 2, 2, 0.0,
                            lambda s: None)
    assert row.variant.ok and row.variant.error < 1e-4 and row.ratio > 0


def test_a_wrong_ghost_kernel_fails_verification(monkeypatch):
    real = fastbn.batch_norm_train

    def wrong(x, *a, virtual_batch_size=None, **kw):
        y, m, s = real(x, *a, virtual_batch_size=virtual_batch_size, **kw)
        if virtual_batch_size is not None:
            y = y + np.float32(1e-3)
        return y, m, s
    monkeypatch.setattr(fastbn, "batch_norm_train", wrong)
    row = ghost._ghost_row(fastbn, "g", (16, 4, 5, 5), 1, 4, "train", None, 1, 1,
                           0.0, lambda s: None)
    assert row.variant.failed and row.failed
