"""The report folder holds every promised file; every PNG opens as an image; the pages link them."""

from __future__ import annotations

import json
import re
import zlib

import matplotlib.image
import numpy as np
import pytest

from raw_rm.data.records import PreferencePair
from raw_rm.eval import RewardModelEvaluator
from raw_rm.eval.report import PLOT_FILES, EvalReport, headline_rows

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Fake:
    """Deterministic scorer: +1 for responses starting with "good", a little length bias, seeded noise;
    with ``members`` five noisy member rewards."""

    def __init__(self, members: bool):
        self.members = members
        self.metadata = type("Meta", (), {"temperature": 1.0})()

    def _members(self, p, r):
        rng = np.random.default_rng(zlib.crc32(f"{p}|{r}".encode()))
        base = (1.0 if r.startswith("good") else 0.0) + len(r) / 300 + rng.normal(0, 1.5)
        return base + rng.normal(0, 0.5, size=5 if self.members else 1)

    def batch_predict(self, prompts, responses):
        return np.array([self._members(p, r).mean() for p, r in zip(prompts, responses)])

    def batch_predict_members(self, prompts, responses):
        return np.array([self._members(p, r) for p, r in zip(prompts, responses)])


def make_pairs(n, tag):
    rng = np.random.default_rng(len(tag) + n)
    return [
        PreferencePair(
            prompt=f"{tag} {i}?",
            chosen="good " + "x" * int(rng.integers(5, 300)) + ".",
            rejected="bad " + "y" * int(rng.integers(5, 300)) + ".",
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def ensemble_report(tmp_path_factory):
    ev = RewardModelEvaluator(Fake(members=True), n_boot=50)
    report = ev.run(make_pairs(60, "t"), val_pairs=make_pairs(30, "v"), ood={"shifted": make_pairs(40, "o")})
    out = report.write(tmp_path_factory.mktemp("report") / "r")
    return report, out


def test_report_folder_has_every_promised_file(ensemble_report):
    report, out = ensemble_report
    assert report.out_dir == out
    expected = {"metrics.json", "index.html", "summary.md", *PLOT_FILES.values()}
    assert {p.name for p in out.iterdir()} == expected


def test_every_png_opens_as_an_image(ensemble_report):
    _, out = ensemble_report
    for name in PLOT_FILES.values():
        path = out / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE, name
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] >= 300 and image.shape[1] >= 500, (name, image.shape)
        assert image[..., :3].std() > 0.05, f"{name} looks blank"


def test_metrics_json_and_pages_agree(ensemble_report):
    report, out = ensemble_report
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["main"] == "test"
    assert metrics["sets"]["test"]["accuracy"] == report.metrics["sets"]["test"]["accuracy"]
    assert set(metrics["probes"]["probes"]) == {"verbosity", "sycophancy", "markdown", "typos", "injection", "swap"}
    assert metrics["uncertainty"]["n_members"] == 5
    page = (out / "index.html").read_text()
    assert sorted(re.findall(r'<img src="([^"]+)"', page)) == sorted(PLOT_FILES.values())  # relative links
    assert page.startswith("<!DOCTYPE html>") and "raw_rm evaluation report" in page
    md = (out / "summary.md").read_text()
    assert sorted(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)) == sorted(PLOT_FILES.values())
    for label, value in headline_rows(report.metrics):  # the headline table is on both pages
        assert f"| {label} | {value} |" in md
        assert value.replace("&", "&amp;") in page


def test_headline_rows_format_the_numbers():
    metrics = {
        "main": "test",
        "sets": {
            "test": {
                "n_pairs": 10,
                "accuracy": 0.7,
                "ci_low": 0.4,
                "ci_high": 0.9,
                "tie_rate": 0.1,
                "calibration": {
                    "temperature": 2.0,
                    "temperature_source": "5 validation pairs",
                    "before": {"ece": 0.2, "nll": 0.9, "brier": 0.3},
                    "after": {"ece": 0.05, "nll": 0.6, "brier": 0.2},
                },
            }
        },
        "robustness": {"ood": {"shift": {"accuracy": 0.55, "gap": 0.15}}},
        "probes": {
            "probes": {"verbosity": {"delta": -0.2}, "swap": {"delta": 0.0, "consistency": 0.9}},
            "worst": "verbosity",
            "length_correlation": 0.31,
        },
    }
    assert headline_rows(metrics) == [
        ("accuracy on 'test' (10 pairs, 95% CI)", "70.0% [40.0%, 90.0%]"),
        ("tie rate", "10.0%"),
        ("temperature T (5 validation pairs)", "2.000"),
        ("ECE before → after T", "0.2000 → 0.0500"),
        ("NLL before → after T", "0.9000 → 0.6000"),
        ("Brier before → after T", "0.3000 → 0.2000"),
        ("robustness gap 'shift' (OOD accuracy)", "+15.0 pp (55.0%)"),
        ("probe verbosity: accuracy change", "-20.0 pp"),
        ("probe swap: accuracy change", "+0.0 pp (consistency 90.0%)"),
        ("worst probe (largest change either way)", "verbosity (-20.0 pp)"),
        ("Spearman(reward, response length)", "+0.310"),
    ]
    # A gain is a bias too: the largest |change| is the worst probe. The cross-fitted temperature and the
    # length-matched accuracy get their rows when present.
    metrics["probes"]["probes"]["verbosity"]["delta"] = 0.357
    metrics["probes"]["probes"]["typos"] = {"delta": -0.016}
    metrics["probes"]["worst"] = "verbosity"
    metrics["model"] = {
        "calibration_fit": {
            "temperature": 0.5,
            "ci_low": 0.2,
            "ci_high": 3.0,
            "n": 39,
            "folds": 5,
            "nll_cross_fitted": 0.71,
            "nll_current": 0.69,
            "current": 1.0,
            "improves": False,
            "stored": False,
        }
    }
    metrics["sets"]["test"]["length_bias"] = {
        "matched_n": 12,
        "matched_accuracy": 0.75,
        "matched_ci_low": 0.5,
        "matched_ci_high": 1.0,
    }
    rows = dict(headline_rows(metrics))
    assert rows["worst probe (largest change either way)"] == "verbosity (+35.7 pp)"
    assert rows["fitted T on 39 calibration pairs (95% CI; held-out NLL, 5-fold cross-fit)"] == (
        "0.500 [0.200, 3.000]; NLL 0.7100 vs 0.6900 at T = 1: NOT adopted (it does not improve held-out NLL)"
    )
    assert rows["length bias: accuracy on length-matched pairs (12, 95% CI)"] == "75.0% [50.0%, 100.0%]"


def test_single_model_report_has_no_coverage_plot(tmp_path):
    ev = RewardModelEvaluator(Fake(members=False), n_boot=20, probe_names=["verbosity"])
    report = ev.run(make_pairs(30, "s"))
    out = report.write(tmp_path / "r")
    names = {p.name for p in out.iterdir()}
    assert "accuracy_coverage.png" not in names
    assert {"reliability.png", "robustness.png", "metrics.json", "index.html", "summary.md"} <= names
    assert "accuracy_coverage.png" not in (out / "index.html").read_text()
    assert report.metrics["sets"]["test"]["calibration"]["temperature_source"] == "none (T = 1)"


def test_flat_metrics_skip_lists_and_nan():
    report = EvalReport({"extra": {"a": 1, "b": float("nan"), "c": [1, 2], "d": "text", "e": True}})
    assert report.flat_metrics() == {"extra.a": 1.0}
