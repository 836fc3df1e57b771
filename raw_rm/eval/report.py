"""The evaluation report: metrics as JSON, PNG plots, one HTML page and a Markdown summary.

``EvalReport`` is what :meth:`RewardModelEvaluator.run` returns; :meth:`EvalReport.write` lays out

    OUT/metrics.json            every number of the evaluation (nested, JSON)
    OUT/reliability.png         reliability diagram before and after temperature scaling
    OUT/reward_hist.png         reward histograms of chosen and rejected responses
    OUT/accuracy_by_length.png  accuracy per response-length bin
    OUT/accuracy_by_margin.png  accuracy per predicted-margin bin
    OUT/robustness.png          OOD robustness gaps and probe accuracy changes
    OUT/accuracy_coverage.png   accuracy versus coverage (only for models with several members)
    OUT/index.html              one self-contained page: headline table, plots (relative links), tables
    OUT/summary.md              the same headline table and plots in Markdown

An MLflow edge logs ``report.out_dir`` as artifacts and ``report.flat_metrics()`` as metrics.
"""

from __future__ import annotations

import html
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: the report is written on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from raw_rm import metrics as M  # noqa: E402

logger = logging.getLogger(__name__)

PLOT_FILES = {
    "reliability": "reliability.png",
    "reward_hist": "reward_hist.png",
    "accuracy_by_length": "accuracy_by_length.png",
    "accuracy_by_margin": "accuracy_by_margin.png",
    "robustness": "robustness.png",
    "accuracy_coverage": "accuracy_coverage.png",
}
_CAPTIONS = {
    "reliability": "Reliability diagram of P(A preferred to B) = sigmoid(delta / T), before (T = 1) and after "
    "temperature scaling. Bars on the diagonal are perfectly calibrated.",
    "reward_hist": "Rewards of the chosen and rejected responses: the more the two separate, the better.",
    "accuracy_by_length": "Preference accuracy per bin of mean response length (equal-count bins).",
    "accuracy_by_margin": "Preference accuracy per bin of the predicted reward margin |r_chosen - r_rejected| "
    "(equal-count bins): a useful model is more accurate where it is more confident.",
    "robustness": "Left: accuracy lost out of distribution (in-distribution minus OOD accuracy). Right: accuracy "
    "change under each adversarial probe. A robust model moves by about 0; a change in EITHER direction is a bias "
    "(red where the paired bootstrap interval excludes 0): e.g. a verbosity gain means the model penalises length.",
    "accuracy_coverage": "Accuracy on the share of pairs the ensemble is most certain about (lowest member spread).",
}


@dataclass
class EvalReport:
    """Everything one evaluation produced.

    Attributes:
        metrics: nested, JSON-serialisable numbers (``metrics.json``). Top-level keys: ``model``, ``main``
            (the name of the main set), ``sets`` (per evaluation set: accuracy, calibration, bins, rewards),
            ``robustness``, ``probes``, and when computed ``uncertainty``, ``groups``, ``ratings``.
        arrays: per set name, the raw arrays the plots need: ``chosen``, ``rejected`` (rewards, (N,)),
            ``length`` (mean response length of each pair in characters) and for models with members
            ``spread`` (N,) and ``correct`` (N,) bool.
        out_dir: the folder the report was written to (None until :meth:`write`).
    """

    metrics: dict[str, Any]
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    out_dir: Path | None = None

    def flat_metrics(self) -> dict[str, float]:
        """Finite scalar metrics flattened to dotted names, for MLflow and the promotion gate.

        First the headline under short names (``accuracy``, ``ci_low``, ``ci_high``, ``tie_rate``, ``ece`` and
        ``nll`` / ``brier`` after temperature scaling, ``ece_before``, ``nll_before``, ``brier_before``,
        ``temperature``, ``gap.<ood set>``, ``probe.<name>``, ``worst_probe_delta``, ``length_correlation``),
        then every nested number as ``sets.test.accuracy``, ``probes.probes.typos.delta``, ... Lists (the
        bins) and non-numbers are left out; so are NaN and infinities.
        """
        out: dict[str, float] = {}
        h = self.headline() if "sets" in self.metrics and self.metrics.get("main") in self.metrics["sets"] else {}
        for key in (
            "accuracy",
            "ci_low",
            "ci_high",
            "tie_rate",
            "temperature",
            "ece_before",
            "nll_before",
            "brier_before",
            "length_correlation",
        ):
            if h.get(key) is not None:
                out[key] = h[key]
        for key in ("ece", "nll", "brier"):
            if h.get(f"{key}_after") is not None:
                out[key] = h[f"{key}_after"]
        for name, gap in h.get("ood_gaps", {}).items():
            out[f"gap.{name}"] = gap
        for name, delta in h.get("probe_deltas", {}).items():
            out[f"probe.{name}"] = delta
        if h.get("worst_probe") is not None:
            out["worst_probe_delta"] = h["probe_deltas"][h["worst_probe"]]

        def walk(prefix: str, node: Any) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    walk(f"{prefix}.{key}" if prefix else str(key), value)
            elif isinstance(node, (int, float)) and not isinstance(node, bool):
                if math.isfinite(node):
                    out[prefix] = float(node)

        walk("", self.metrics)
        return {k: v for k, v in out.items() if math.isfinite(v)}

    def headline(self) -> dict[str, Any]:
        """The numbers a person looks at first (see :func:`headline`)."""
        return headline(self.metrics)

    def write(self, out_dir: str | Path) -> Path:
        """Write the report folder (see the module docstring); returns it and sets ``self.out_dir``."""
        return write_report(self, out_dir)


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """Accuracy with CI, tie rate, calibration before/after T, OOD gaps, probe deltas and the worst probe."""
    main = metrics["sets"][metrics["main"]]
    cal = main["calibration"]
    out: dict[str, Any] = {
        "set": metrics["main"],
        "n_pairs": main["n_pairs"],
        "accuracy": main["accuracy"],
        "ci_low": main["ci_low"],
        "ci_high": main["ci_high"],
        "tie_rate": main["tie_rate"],
        "temperature": cal["temperature"],
        "temperature_source": cal["temperature_source"],
        "ece_before": cal["before"]["ece"],
        "ece_after": cal["after"]["ece"],
        "nll_before": cal["before"]["nll"],
        "nll_after": cal["after"]["nll"],
        "brier_before": cal["before"]["brier"],
        "brier_after": cal["after"]["brier"],
        "ood_gaps": {k: v["gap"] for k, v in metrics.get("robustness", {}).get("ood", {}).items()},
        "probe_deltas": {k: v["delta"] for k, v in metrics.get("probes", {}).get("probes", {}).items()},
        "swap_consistency": metrics.get("probes", {}).get("probes", {}).get("swap", {}).get("consistency"),
        "worst_probe": metrics.get("probes", {}).get("worst"),
        "length_correlation": metrics.get("probes", {}).get("length_correlation"),
        "length_bias": main.get("length_bias"),
        "calibration_fit": metrics.get("model", {}).get("calibration_fit"),
    }
    return out


# ------------------------------------------------------------------------------------------- writing
def write_report(report: EvalReport, out_dir: str | Path) -> Path:
    """Write metrics.json, the PNG plots, index.html and summary.md into ``out_dir`` (created if needed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(_jsonable(report.metrics), indent=2, sort_keys=False) + "\n")
    plots = _write_plots(report, out)
    (out / "index.html").write_text(_html(report, plots))
    (out / "summary.md").write_text(_markdown(report, plots))
    report.out_dir = out
    logger.info("wrote the evaluation report to %s (%d plots)", out, len(plots))
    return out


MARGIN_LABEL = "predicted margin |r_chosen - r_rejected| (reward units)"


def _write_plots(report: EvalReport, out: Path) -> list[str]:
    """Draw every plot the data allows; returns the plot keys written, in display order."""
    m = report.metrics
    main = m["main"]
    arrays = report.arrays.get(main, {})
    written = []
    jobs = [
        ("reliability", lambda: _plot_reliability(m, arrays)),
        ("reward_hist", lambda: _plot_reward_hist(m, report.arrays)),
        ("accuracy_by_length", lambda: _plot_bins(m, "by_length", "mean response length (characters)")),
        ("accuracy_by_margin", lambda: _plot_bins(m, "by_margin", MARGIN_LABEL)),
        ("robustness", lambda: _plot_robustness(m)),
    ]
    if m.get("uncertainty", {}).get("accuracy_coverage"):
        jobs.append(("accuracy_coverage", lambda: _plot_coverage(m)))
    for key, draw in jobs:
        fig = draw()
        fig.savefig(out / PLOT_FILES[key], dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(key)
    return written


def _plot_reliability(m: dict, arrays: dict) -> plt.Figure:
    cal = m["sets"][m["main"]]["calibration"]
    n_bins = int(cal["n_bins"])
    delta = np.asarray(arrays["chosen"]) - np.asarray(arrays["rejected"])
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = 1.0 / n_bins
    for col, stage, temp in ((0, "before", 1.0), (1, "after", float(cal["temperature"]))):
        ax, axc = axes[0, col], axes[1, col]
        b = M.reliability_bins(M.pair_probabilities(delta, temp), n_bins=n_bins)
        centres = (b["lower"] + b["upper"]) / 2
        ok = b["count"] > 0
        ax.bar(
            centres[ok],
            b["accuracy"][ok],
            width=width * 0.92,
            color="#4c72b0",
            edgecolor="black",
            linewidth=0.5,
            label="observed frequency",
        )
        ax.bar(
            centres[ok],
            (b["confidence"] - b["accuracy"])[ok],
            bottom=b["accuracy"][ok],
            width=width * 0.92,
            fill=False,
            hatch="///",
            edgecolor="#c44e52",
            linewidth=0.8,
            label="gap to mean predicted P",
        )
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        s = cal[stage]
        ax.set_title(
            f"{'Before' if stage == 'before' else 'After'} temperature scaling (T = {temp:.3g})\n"
            f"ECE {s['ece']:.3f} · NLL {s['nll']:.3f} · Brier {s['brier']:.3f}",
            fontsize=10,
        )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
        axc.bar(centres, b["count"], width=width * 0.92, color="grey")
        axc.set_xlabel("predicted probability P(A preferred to B)")
        axc.grid(alpha=0.3)
    axes[0, 0].set_ylabel("observed frequency\nthat A was preferred")
    axes[1, 0].set_ylabel("count\n(both orientations)")
    fig.suptitle(
        f"Calibration on '{m['main']}' ({m['sets'][m['main']]['n_pairs']} pairs; T from {cal['temperature_source']})",
        fontsize=11,
    )
    fig.tight_layout()
    return fig


def _plot_reward_hist(m: dict, all_arrays: dict) -> plt.Figure:
    names = [m["main"]] + [n for n in all_arrays if n != m["main"]]
    ncols = min(3, len(names))
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 4.2 * nrows), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        chosen, rejected = np.asarray(all_arrays[name]["chosen"]), np.asarray(all_arrays[name]["rejected"])
        both = np.concatenate([chosen, rejected])
        bins = np.linspace(both.min(), both.max(), 31) if both.size and np.ptp(both) > 0 else 30
        ax.hist(chosen, bins=bins, alpha=0.55, color="#55a868", label=f"chosen (mean {_num(chosen.mean())})")
        ax.hist(rejected, bins=bins, alpha=0.55, color="#c44e52", label=f"rejected (mean {_num(rejected.mean())})")
        acc = m["sets"][name]["accuracy"]
        ax.set_title(f"'{name}': {len(chosen)} pairs, accuracy {acc:.1%}", fontsize=10)
        ax.set_xlabel("reward (raw model output)")
        ax.set_ylabel("responses")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Reward distributions of chosen and rejected responses", fontsize=11)
    fig.tight_layout()
    return fig


def _plot_bins(m: dict, key: str, xlabel: str) -> plt.Figure:
    s = m["sets"][m["main"]]
    bins = s[key]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    labels = [f"{_num(b['lo'])}–{_num(b['hi'])}" for b in bins]
    acc = [b["accuracy"] for b in bins]
    x = np.arange(len(bins))
    bars = ax.bar(x, acc, color="#4c72b0", edgecolor="black", linewidth=0.5, label="accuracy in bin")
    for bar, b in zip(bars, bins):
        ax.annotate(
            f"{b['accuracy']:.0%}\nn={b['n']}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 2),
            textcoords="offset points",
        )
    ax.axhline(s["accuracy"], color="#dd8452", linestyle="-", linewidth=1.2, label=f"overall {s['accuracy']:.1%}")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance (50%)")
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("preference accuracy")
    ax.set_ylim(0, 1.12)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    title = "length" if key == "by_length" else "predicted margin"
    ax.set_title(f"Accuracy by {title} on '{m['main']}'", fontsize=11)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=3, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _plot_robustness(m: dict) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    ood = m.get("robustness", {}).get("ood", {})
    ax = axes[0]
    if ood:
        names = list(ood)
        gaps = [100 * ood[n]["gap"] for n in names]
        ax.bar(names, gaps, color=["#c44e52" if g > 0 else "#55a868" for g in gaps], edgecolor="black", linewidth=0.5)
        for i, n in enumerate(names):
            ax.annotate(
                f"{gaps[i]:+.1f} pp\n(OOD acc {ood[n]['accuracy']:.1%})",
                (i, gaps[i]),
                ha="center",
                va="bottom" if gaps[i] >= 0 else "top",
                fontsize=8,
                xytext=(0, 2 if gaps[i] >= 0 else -2),
                textcoords="offset points",
            )
        _pad_ylim(ax, gaps)
    else:
        ax.text(
            0.5,
            0.5,
            "no out-of-distribution set given\n(--ood NAME=FILE)",
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontsize=10,
            color="grey",
        )
        ax.set_xticks([])
    ax.axhline(0, color="black", linewidth=0.8)
    in_acc = m.get("robustness", {}).get("in_distribution", {}).get("accuracy")
    ax.set_title(
        "Robustness gap: in-distribution − OOD accuracy"
        + (f"\n(in-distribution accuracy {in_acc:.1%})" if in_acc is not None else ""),
        fontsize=10,
    )
    ax.set_ylabel("accuracy lost (percentage points)")
    ax.set_xlabel("out-of-distribution set")
    ax.grid(axis="y", alpha=0.3)

    ax = axes[1]
    probes = m.get("probes", {}).get("probes", {})
    if probes:
        names = list(probes)
        deltas = [100 * probes[n]["delta"] for n in names]
        # A robust model moves by ~0 either way: red = a change beyond the bootstrap interval, in either direction.
        colors = ["#c44e52" if probes[n].get("significant") else "#55a868" for n in names]
        ax.bar(names, deltas, color=colors, edgecolor="black", linewidth=0.5)
        for i, d in enumerate(deltas):
            ax.annotate(
                f"{d:+.1f}",
                (i, d),
                ha="center",
                va="bottom" if d >= 0 else "top",
                fontsize=8,
                xytext=(0, 2 if d >= 0 else -2),
                textcoords="offset points",
            )
        _pad_ylim(ax, deltas)
        worst = m["probes"].get("worst")
        clean = m["probes"].get("clean_accuracy")
        ax.set_title(f"Probe accuracy change vs clean ({clean:.1%})\nworst: {worst}", fontsize=10)
    else:
        ax.text(0.5, 0.5, "probes not run", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_title("Probe accuracy change vs clean", fontsize=10)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("accuracy change (percentage points)")
    ax.set_xlabel("adversarial probe")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _num(value: float) -> str:
    """A bin edge or mean for people: no scientific notation, about three significant digits.

    >>> [_num(v) for v in (1123.4, 12.345, 0.04791, 1.94e-05, -0.0004, 0.5)]
    ['1,123', '12.3', '0.048', '0', '0', '0.5']
    """
    a = abs(value)
    if a >= 100:
        return f"{value:,.0f}"
    if a >= 1:
        return f"{value:.3g}"
    if a < 5e-4:
        return "0"
    decimals = max(3, -int(np.floor(np.log10(a))) + 1)
    return f"{value:.{decimals}f}".rstrip("0").rstrip(".")


def _pad_ylim(ax: plt.Axes, values: list[float]) -> None:
    lo, hi = min(0.0, *values), max(0.0, *values)
    pad = max(1.0, 0.25 * (hi - lo))
    ax.set_ylim(lo - pad, hi + pad)


def _plot_coverage(m: dict) -> plt.Figure:
    u = m["uncertainty"]
    curve = u["accuracy_coverage"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    cov = [c["coverage"] for c in curve]
    acc = [c["accuracy"] for c in curve]
    ax.plot(cov, acc, "o-", color="#4c72b0", label="ensemble, most certain first")
    ax.axhline(curve[-1]["accuracy"], color="grey", linestyle=":", label=f"all pairs ({curve[-1]['accuracy']:.1%})")
    ax.set_xlabel("coverage (share of pairs kept, lowest member spread first)")
    ax.set_ylabel("preference accuracy on kept pairs")
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_xlim(0, 1.02)
    ax.set_title(f"Accuracy vs coverage on '{m['main']}' (AUROC of spread for errors {u['auroc']:.3f})", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------- pages
def headline_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """The headline as (label, formatted value) rows: shared by the CLI table, HTML and Markdown."""
    h = headline(metrics)
    rows = [
        (
            f"accuracy on '{h['set']}' ({h['n_pairs']} pairs, 95% CI)",
            f"{h['accuracy']:.1%} [{h['ci_low']:.1%}, {h['ci_high']:.1%}]",
        ),
        ("tie rate", f"{h['tie_rate']:.1%}"),
        (f"temperature T ({h['temperature_source']})", f"{h['temperature']:.3f}"),
        ("ECE before → after T", f"{h['ece_before']:.4f} → {h['ece_after']:.4f}"),
        ("NLL before → after T", f"{h['nll_before']:.4f} → {h['nll_after']:.4f}"),
        ("Brier before → after T", f"{h['brier_before']:.4f} → {h['brier_after']:.4f}"),
    ]
    for name, gap in h["ood_gaps"].items():
        acc = metrics["robustness"]["ood"][name]["accuracy"]
        rows.append((f"robustness gap '{name}' (OOD accuracy)", f"{100 * gap:+.1f} pp ({acc:.1%})"))
    for name, delta in h["probe_deltas"].items():
        extra = ""
        if name == "swap" and h["swap_consistency"] is not None:
            extra = f" (consistency {h['swap_consistency']:.1%})"
        rows.append((f"probe {name}: accuracy change", f"{100 * delta:+.1f} pp{extra}"))
    if h["worst_probe"] is not None:
        rows.append(
            (
                "worst probe (largest change either way)",
                f"{h['worst_probe']} ({100 * h['probe_deltas'][h['worst_probe']]:+.1f} pp)",
            )
        )
    rows += calibration_fit_rows(h["calibration_fit"])
    if h["length_correlation"] is not None:
        rows.append(("Spearman(reward, response length)", f"{h['length_correlation']:+.3f}"))
    lb = h["length_bias"]
    if lb and lb["matched_n"]:
        rows.append(
            (
                f"length bias: accuracy on length-matched pairs ({lb['matched_n']}, 95% CI)",
                f"{lb['matched_accuracy']:.1%} [{lb['matched_ci_low']:.1%}, {lb['matched_ci_high']:.1%}]",
            )
        )
    u = metrics.get("uncertainty")
    if u:
        rows.append(("uncertainty: AUROC of spread for errors", f"{u['auroc']:.3f}"))
        rows.append(("uncertainty: Spearman(spread, error)", f"{u['spread_error_spearman']:+.3f}"))
    rob = metrics.get("robustness") or {}
    base = (rob.get("in_distribution") or {}).get("spread")
    for name, o in (rob.get("ood") or {}).items():
        if base and o.get("spread"):
            a, b = base["vote_split"], o["spread"]["vote_split"]
            rows.append(
                (
                    f"uncertainty: vote split, in-distribution vs OOD '{name}'",
                    f"{a:.3f} vs {b:.3f} ({'larger' if b > a else 'not larger'} OOD; response std "
                    f"{base['response_std']:.3f} vs {o['spread']['response_std']:.3f})",
                )
            )
    for name, c in (metrics.get("ensemble_vs_members") or {}).items():
        ens, best = c["ensemble"], c["members"][c["best_member"]]
        floor = c["ece_floor"]
        rows.append(
            (
                f"ensemble vs best member on '{name}' (member {c['best_member']}, each at its own T)",
                f"NLL {ens['nll']:.4f} vs {best['nll']:.4f} ({_lower(ens['nll'], best['nll'])}); ECE "
                f"{ens['ece']:.4f} vs {best['ece']:.4f} ({_lower(ens['ece'], best['ece'])}; noise floor "
                f"{floor['mean']:.3f} ± {floor['std']:.3f})",
            )
        )
    g = metrics.get("groups")
    if g:
        rows.append(
            (
                "ranking: mean Spearman / Kendall per group",
                f"{g['spearman_mean']:+.3f} / {g['kendall_mean']:+.3f} ({g['n_groups']} groups)",
            )
        )
    r = metrics.get("ratings")
    if r:
        for aspect, v in r["aspects"].items():
            rows.append((f"ratings: Spearman '{aspect}'", f"{v['spearman']:+.3f} (n={v['n']})"))
    return rows


def _lower(a: float, b: float) -> str:
    return "lower" if a < b else "not lower"


def _table_rows(metrics: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """Detail tables (title, header, rows) shown under the plots."""
    tables = []
    sets = metrics["sets"]
    tables.append(
        (
            "Evaluation sets",
            ["set", "pairs", "accuracy", "95% CI", "tie rate", "ECE before", "ECE after"],
            [
                [
                    n,
                    str(s["n_pairs"]),
                    f"{s['accuracy']:.1%}",
                    f"[{s['ci_low']:.1%}, {s['ci_high']:.1%}]",
                    f"{s['tie_rate']:.1%}",
                    f"{s['calibration']['before']['ece']:.4f}",
                    f"{s['calibration']['after']['ece']:.4f}",
                ]
                for n, s in sets.items()
            ],
        )
    )
    probes = metrics.get("probes", {}).get("probes", {})
    if probes:
        tables.append(
            (
                "Adversarial probes",
                ["probe", "accuracy", "change", "flipped to wrong", "consistency"],
                [
                    [
                        n,
                        f"{p['accuracy']:.1%}",
                        f"{100 * p['delta']:+.1f} pp",
                        f"{p['flip_rate']:.1%}",
                        f"{p['consistency']:.1%}" if p.get("consistency") is not None else "",
                    ]
                    for n, p in probes.items()
                ],
            )
        )
    versus = metrics.get("ensemble_vs_members") or {}
    if versus:
        rows = []
        for name, c in versus.items():
            named = [
                (f"member {k}" + (" (best)" if k == c["best_member"] else ""), m) for k, m in enumerate(c["members"])
            ]
            for label, m in [*named, ("ensemble", c["ensemble"])]:
                rows.append(
                    [
                        name,
                        label,
                        f"{m['temperature']:.3f}",
                        f"{m['nll']:.4f}",
                        f"{m['ece']:.4f}",
                        f"{m['accuracy']:.1%}",
                    ]
                )
        n_fit = next(iter(versus.values()))["n_fit"]
        tables.append(
            (
                f"Ensemble vs its members (each at its own T fitted on {n_fit} calibration pairs)",
                ["set", "model", "T", "NLL", "ECE", "accuracy"],
                rows,
            )
        )
    main = sets[metrics["main"]]
    for key, title in (
        ("by_length", "Accuracy by mean response length (characters)"),
        ("by_margin", "Accuracy by predicted margin"),
    ):
        rows = [[f"{_num(b['lo'])} – {_num(b['hi'])}", str(b["n"]), f"{b['accuracy']:.1%}"] for b in main[key]]
        tables.append((title, ["bin", "pairs", "accuracy"], rows))
    diff = main.get("by_length_difference")
    if diff:
        labels = {
            "chosen_longer": "chosen is longer",
            "chosen_shorter": "chosen is shorter",
            "same_length": "same length",
        }
        tables.append(
            (
                "Accuracy by which response is longer (verbosity bias)",
                ["pairs where", "pairs", "accuracy"],
                [
                    [labels[k], str(v["n"]), "" if v["accuracy"] is None else f"{v['accuracy']:.1%}"]
                    for k, v in diff.items()
                ],
            )
        )
    return tables


def _html(report: EvalReport, plots: list[str]) -> str:
    m = report.metrics
    esc = html.escape
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in headline_rows(m))
    figs = "".join(
        f'<figure><img src="{PLOT_FILES[k]}" alt="{esc(k)}"><figcaption>{esc(_CAPTIONS[k])}</figcaption></figure>'
        for k in plots
    )
    tables = ""
    for title, header, body in _table_rows(m):
        head = "".join(f"<th>{esc(h)}</th>" for h in header)
        trs = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in body)
        tables += f"<h2>{esc(title)}</h2><table><tr>{head}</tr>{trs}</table>"
    model = m.get("model", {})
    model_line = esc(_model_line(model))
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:4px 10px;"
        "text-align:left}th{background:#f4f4f4}figure{margin:1.5em 0}img{max-width:100%;border:1px solid #eee}"
        "figcaption{color:#555;font-size:0.9em}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>raw_rm evaluation report</title>'
        f"<style>{style}</style></head><body><h1>raw_rm evaluation report</h1><p>{model_line}</p>"
        f"<h2>Headline</h2><table>{rows}</table>{figs}{tables}"
        '<p>All numbers: <a href="metrics.json">metrics.json</a>.</p></body></html>\n'
    )


def _markdown(report: EvalReport, plots: list[str]) -> str:
    m = report.metrics
    lines = ["# raw_rm evaluation report", ""]
    model = m.get("model", {})
    if model:
        lines += [_model_line(model), ""]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in headline_rows(m)]
    lines.append("")
    for key in plots:
        lines += [f"![{key}]({PLOT_FILES[key]})", "", f"*{_CAPTIONS[key]}*", ""]
    for title, header, body in _table_rows(m):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        lines.append("")
    lines.append("All numbers: [metrics.json](metrics.json).")
    return "\n".join(lines) + "\n"


def _model_line(model: dict[str, Any]) -> str:
    shown = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in model.items() if v not in (None, "", [], {})}
    return ", ".join(f"{k}: {v}" for k, v in shown.items())


def _jsonable(node: Any) -> Any:
    """numpy scalars/arrays to Python; NaN/inf to None (JSON has no NaN)."""
    if isinstance(node, dict):
        return {str(k): _jsonable(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_jsonable(v) for v in node]
    if isinstance(node, np.ndarray):
        return _jsonable(node.tolist())
    if isinstance(node, np.generic):
        node = node.item()
    if isinstance(node, float) and not math.isfinite(node):
        return None
    if isinstance(node, Path):
        return str(node)
    return node


def calibration_fit_rows(fit: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Headline rows for the cross-fitted temperature: its interval and whether it was adopted (and stored)."""
    if not fit or "temperature" not in fit:
        return []
    verdict = "adopted" if fit["improves"] else "NOT adopted (it does not improve held-out NLL)"
    if fit["improves"]:
        verdict += ", stored in the model" if fit.get("stored") else ", not stored"
    return [
        (
            f"fitted T on {fit['n']} calibration pairs (95% CI; held-out NLL, {fit['folds']}-fold cross-fit)",
            f"{fit['temperature']:.3f} [{fit['ci_low']:.3f}, {fit['ci_high']:.3f}]; NLL {fit['nll_cross_fitted']:.4f}"
            f" vs {fit['nll_current']:.4f} at T = {fit['current']:.3g}: {verdict}",
        )
    ]
