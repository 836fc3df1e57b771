"""benchmarks/run_all.py: the summary rows it derives from each benchmark's JSON, and its dry run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_all():
    spec = importlib.util.spec_from_file_location("run_all", REPO / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    del sys.modules["run_all"]


def _by_measure(rows: list[dict[str, str]]) -> dict[str, tuple[str, str, str]]:
    return {r["measure"]: (r["value"], r["target"], r["status"]) for r in rows}


def test_train_rows_ratios_against_trl(run_all) -> None:
    data = {
        "results": {
            "trl": {"pairs_per_s": 2.0, "peak_rss_mb": 1000.0, "accuracy": 0.715},
            "raw_rm": {"pairs_per_s": 3.2, "peak_rss_mb": 900.0, "accuracy": 0.70},
            "raw_rm_ray2": {"pairs_per_s": 2.4},
            "raw_rm_top2": {"pairs_per_s": 6.4},
        }
    }
    rows = _by_measure(run_all.rows_train(data))
    assert rows["pairs/s, raw_rm / TRL"] == ("1.60x (3.20 vs 2.00)", ">= 1.5x", "met")
    assert rows["peak RSS, raw_rm / TRL"] == ("0.90x (900 vs 1000 MB)", "<= 1.00x", "met")
    assert rows["held-out accuracy, raw_rm - TRL"] == ("-1.5 points (0.700 vs 0.715)", ">= -1.0 point", "MISSED")
    assert rows["pairs/s, raw_rm_ray2 / raw_rm (Ray Train layer)"] == ("0.75x", "-", "-")
    assert rows["pairs/s, raw_rm_top2 / raw_rm (top 2 layers trained)"] == ("2.00x", "-", "-")


def test_train_rows_when_a_contender_failed(run_all) -> None:
    data = {"results": {"trl": {"error": "exit 1: boom\nmore"}, "raw_rm": {"pairs_per_s": 3.0}}}
    assert _by_measure(run_all.rows_train(data)) == {"raw_rm vs TRL": ("no comparison: exit 1: boom", "-", "-")}


def test_serve_rows_ratio_ceiling_and_ensemble(run_all) -> None:
    level = {"rps": 10.0, "p50": 100.0, "p99": 200.0, "errors": 0.0}
    data = {
        "levels": [1, 64],
        "ceiling_texts_per_s": 200.0,
        "mean_batch_size": 12.5,
        "plain": {"1": level, "64": dict(level, rps=20.0)},
        "raw_rm": {"1": level, "64": dict(level, rps=70.0, p50=40.0)},
        "ensemble5": {"1": dict(level, p50=120.0), "64": dict(level, p50=60.0, errors=2.0)},
    }
    rows = _by_measure(run_all.rows_serve(data))
    assert rows["req/s at concurrency 64, raw_rm / plain server"] == ("3.50x (70.0 vs 20.0)", ">= 3x", "met")
    assert rows["req/s at concurrency 64 / model ceiling"] == ("35% (70.0 of 200.0 texts/s)", ">= 50%", "MISSED")
    assert rows["p50 at concurrency 1, 5-head / single"] == ("1.20x (120.0 vs 100.0 ms)", "<= 1.3x", "met")
    assert rows["p50 at concurrency 64, 5-head / single"] == ("1.50x (60.0 vs 40.0 ms)", "<= 1.3x", "MISSED")
    assert rows["non-200 answers, all runs"] == ("2", "0", "MISSED")
    assert rows["mean Serve batch size (texts)"] == ("12.5", "-", "-")


def test_active_learning_rows_labels_saved(run_all) -> None:
    data = {
        "target": 0.9,
        "args": {"max_labels": 200, "k": 10},
        "summary": {
            "random": {"labels_needed": 150},
            "std": {"labels_needed": 90},
            "margin": {"labels_needed": None},
            "disagreement": {"labels_needed": 160},
        },
    }
    rows = _by_measure(run_all.rows_active(data))
    assert rows["labels for random to reach the target"] == ("150 (target accuracy 0.900)", "-", "-")
    assert rows["labels saved vs random: std"] == ("+60 (90 vs 150, 40% fewer)", "> 0", "met")
    assert rows["labels saved vs random: margin"] == ("not reached within 200", "> 0", "MISSED")
    assert rows["labels saved vs random: disagreement"] == ("-10 (160 vs 150, 7% more)", "> 0", "MISSED")


def test_ensemble_rows_against_best_member(run_all) -> None:
    member = {"test_nll": 0.60, "test_ece": 0.05, "ood_nll": 0.70, "ood_ece": 0.08, "test_accuracy": 0.65}
    ensemble = {"test_nll": 0.55, "test_ece": 0.06, "ood_nll": 0.65, "ood_ece": 0.04, "test_accuracy": 0.67}
    data = {
        "results": {"member_0": member, "ensemble": ensemble},
        "best_member": "member_0",
        "spread": {"test": {"mean": 0.2}, "ood": {"mean": 0.3}},
    }
    rows = _by_measure(run_all.rows_ensemble(data))
    assert rows["held-out NLL, ensemble vs best member (member_0)"] == ("0.5500 vs 0.6000 (-0.0500)", "lower", "met")
    assert rows["held-out ECE, ensemble vs best member (member_0)"] == ("0.0600 vs 0.0500 (+0.0100)", "lower", "MISSED")
    assert rows["member spread, OOD / in-distribution"] == ("1.50x (0.3000 vs 0.2000)", "> 1x", "met")
    assert "held-out ECE equal-mass, ensemble vs best member (member_0)" not in rows  # older results files


def test_ensemble_rows_show_the_paired_bootstrap_interval(run_all) -> None:
    member = {
        "test_nll": 0.60,
        "test_ece": 0.05,
        "test_ece_mass": 0.07,
        "ood_nll": 0.70,
        "ood_ece": 0.08,
        "ood_ece_mass": 0.09,
        "test_accuracy": 0.65,
    }
    ensemble = {
        "test_nll": 0.55,
        "test_ece": 0.06,
        "test_ece_mass": 0.05,
        "ood_nll": 0.65,
        "ood_ece": 0.04,
        "ood_ece_mass": 0.08,
        "test_accuracy": 0.67,
    }
    ci = {
        "nll": {"ci_low": -0.08, "ci_high": -0.02},
        "ece": {"ci_low": -0.01, "ci_high": 0.03},
        "ece_equal_mass": {"ci_low": -0.05, "ci_high": 0.01},
    }
    data = {
        "results": {"member_0": member, "ensemble": ensemble},
        "best_member": "member_0",
        "spread": {"test": {"mean": 0.2}, "ood": {"mean": 0.3}},
        "comparison": {"ensemble_test": ci, "ensemble_ood": ci},
    }
    rows = _by_measure(run_all.rows_ensemble(data))
    assert rows["held-out NLL, ensemble vs best member (member_0)"] == (
        "0.5500 vs 0.6000 (-0.0500, 95% CI [-0.0800, -0.0200])",
        "lower",
        "met",
    )
    assert rows["held-out ECE, ensemble vs best member (member_0)"] == (
        "0.0600 vs 0.0500 (+0.0100, 95% CI [-0.0100, +0.0300] spans 0)",
        "lower",
        "MISSED",
    )
    assert rows["held-out ECE equal-mass, ensemble vs best member (member_0)"] == (
        "0.0500 vs 0.0700 (-0.0200, 95% CI [-0.0500, +0.0100] spans 0)",
        "lower",
        "met",
    )


def test_summarize_reports_failures_and_missing_files(run_all, tmp_path: Path) -> None:
    failed = run_all.summarize("serve_load", tmp_path, {"returncode": 3, "timed_out": False, "wall_s": 1.0})
    assert failed[0]["value"] == f"FAILED (exit 3); see {tmp_path / 'serve_load.log'}"
    missing = run_all.summarize("serve_load", tmp_path, {"returncode": 0, "timed_out": False, "wall_s": 1.0})
    assert missing[0]["value"] == f"no results file {tmp_path / 'serve_load.json'}"
    (tmp_path / "serve_load.json").write_text(json.dumps({"levels": [64]}))
    broken = run_all.summarize("serve_load", tmp_path, None)
    assert broken[0]["value"].startswith(f"results file {tmp_path / 'serve_load.json'} unreadable: KeyError")


def test_dry_run_lists_quick_commands_with_their_json_paths(run_all, tmp_path: Path, capsys) -> None:
    assert run_all.main(["--quick", "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"--backbone tiny-bert --requests 16 64 128 --ceiling-texts 128 --json {tmp_path / 'serve_load.json'}" in out
    assert f"--json {tmp_path / 'train_throughput.json'}" in out
    assert f"--out {tmp_path / 'active_learning'}" in out
    assert "confidence_weighting: skipped with --quick (no quick setting)" in out
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing
