"""The report writer of ``pydiff bench`` (benchmarks/report.py): the comparison against an earlier run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

report = pytest.importorskip("benchmarks.report")

ROOT = Path(__file__).resolve().parents[1]


def _row(name, shape, peer, ours_ms, speedup):
    return {"area": "attention", "name": name, "shape": shape, "peer": peer,
            "ours_ms": {"median": ours_ms, "min": ours_ms, "max": ours_ms, "n": 5}, "speedup": speedup}


def _results(gpu, rows):
    return {"machine": {"gpu": gpu, "torch": "2.11", "triton": "3.6", "date": "2026-11-26T00:00:00"},
            "areas": {"attention": {"title": "Attention", "rows": rows}}}


def test_baseline_comparison_matches_figures_and_reports_the_change():
    then = _results("NVIDIA H200", [_row("Flux", "B1 H24", "sdpa (flash)", 0.5, 1.5),
                                    _row("SD3", "B2 H24", "sdpa (flash)", 0.4, 1.3),
                                    {"area": "attention", "name": "bf16_matmul_TFLOPs", "value": 676.0}])
    now = _results("NVIDIA H100", [_row("SD3", "B2 H24", "sdpa (flash)", 0.32, 1.6),
                                   _row("Flux", "B1 H24", "sdpa (cudnn)", 0.45, 0.7),
                                   _row("Flux", "B1 H24", "sdpa (flash)", 0.55, 1.4)])
    table = report.baseline_comparison(now, then)
    lines = table.splitlines()
    assert "Baseline: NVIDIA H200" in lines[0] and "Now: NVIDIA H100" in lines[0]
    assert "| SD3 | B2 H24 | sdpa (flash) | 0.400 | 0.320 | 1.25x | 1.30x | 1.60x |" in lines
    assert "| Flux | B1 H24 | sdpa (flash) | 0.500 | 0.550 | 0.91x | 1.50x | 1.40x |" in lines
    assert not [line for line in lines if "cudnn" in line]  # no counterpart in the baseline: counted, not shown
    assert lines[-1] == "1 figure(s) of this run have no counterpart in the baseline."


def test_bad_baselines_are_refused_before_anything_runs(tmp_path):
    missing = tmp_path / "missing.json"
    with pytest.raises(ValueError, match="missing.json: cannot read"):
        report.load_baseline(missing)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: cannot read it as JSON"):
        report.load_baseline(broken)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="no 'areas'"):
        report.load_baseline(other)
    args = argparse.Namespace(suite="quick", device="cpu", out=str(tmp_path / "out"), only=["attention"],
                              baseline=str(other))
    assert report.main(args) == 2
    assert not (tmp_path / "out" / "results.json").exists()


def test_bench_against_a_committed_gpu_run(tmp_path, capsys):
    """End to end on CPU: the attention area against the H200 results committed in benchmarks/results (other shapes:
    nothing in common, and the report says so)."""
    baseline = ROOT / "benchmarks" / "results" / "2026-11-26-h200-session3" / "attention.json"
    out = tmp_path / "out"
    args = argparse.Namespace(suite="quick", device="cpu", out=str(out), only=["attention"], baseline=str(baseline))
    assert report.main(args) == 0
    printed = capsys.readouterr().out
    assert "Baseline: NVIDIA H200, torch 2.11.0+cu130, triton 3.6.0, 2026-11-26" in printed
    figures = sum("speedup" in r for r in json.loads((out / "results.json").read_text())["areas"]["attention"]["rows"])
    assert f"{figures} figure(s) of this run have no counterpart in the baseline." in printed
    assert "## Against the baseline" in (out / "report.md").read_text()
