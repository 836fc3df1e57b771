"""A Tune experiment's results, read from its folder without Ray: trials, best, tables, plots, summaries.

    outcome = collect_results("runs/latest/tune/hh1")
    print(format_summary(outcome))
    top_k_configs("runs/latest/tune/hh1", 3)        # ensemble members from the search

The experiment folder ``<tune.storage_path>/<tune.name>`` holds Tune's state, ``raw_rm_tune.json`` (base config,
space, metric; written by ``raw_rm.tune.driver``), ``results.csv``, ``plots/*.png`` and ``best_model/``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from raw_rm.config import Config, config_from_dict
from raw_rm.tune.space import ParamSpec, is_number, trial_config

logger = logging.getLogger(__name__)

STATE_FILE = "raw_rm_tune.json"
ROUND_KEY = "eval_round"  # ASHA's time attribute: evaluations so far (the final-model report repeats the last one)
DONE_KEY = "fit_complete"  # 1.0 on the report that carries the trial's finished model
SUMMARY_METRICS = ("val_accuracy", "val_nll", "val_ece", "val_loss")


@dataclass
class TrialSummary:
    """One trial as the results table shows it."""

    trial_id: str
    status: Literal["completed", "stopped_early", "error", "interrupted", "pending"]
    params: dict[str, Any]  # the searched paths (None: conditional parameter not sampled)
    value: float | None  # selection metric: the final (restored-best) value if completed, else the best reported
    metrics: dict[str, float]  # last report
    evaluations: int
    is_baseline: bool = False
    checkpoint: str | None = None  # latest checkpoint folder (holds model/ when completed)
    error: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per report


@dataclass
class TuneOutcome:
    """What ``run_tune`` returns."""

    experiment_path: str
    metric: str
    mode: str
    trials: list[TrialSummary]
    best: TrialSummary | None  # best completed trial
    baseline: TrialSummary | None  # the trial with the base config's values (tune.baseline)
    interrupted: bool  # some trials did not finish: run again with tune.resume=true
    results_csv: str | None = None
    plots: list[str] = field(default_factory=list)
    best_model_dir: str | None = None
    registered_version: str | None = None
    mlflow_run_id: str | None = None

    @property
    def num_errors(self) -> int:
        return sum(t.status == "error" for t in self.trials)

    def gain(self) -> dict[str, float]:
        """Best minus baseline on the summary metrics (empty without a baseline). A baseline that ASHA stopped
        early is compared at its last evaluation (``format_summary`` says so)."""
        if self.best is None or self.baseline is None or not self.baseline.metrics:
            return {}
        keys = [k for k in (self.metric, *SUMMARY_METRICS) if k in self.best.metrics and k in self.baseline.metrics]
        return {k: self.best.metrics[k] - self.baseline.metrics[k] for k in dict.fromkeys(keys)}


def collect_results(exp: str | Path) -> TuneOutcome:
    """Read an experiment folder (no Ray needed): every trial's status, params, reports and latest checkpoint."""
    exp = Path(exp)
    state_file = exp / STATE_FILE
    if not state_file.exists():
        raise FileNotFoundError(f"{exp}: not a raw_rm Tune experiment (no {STATE_FILE})")
    state = json.loads(state_file.read_text())
    metric, mode = state["metric"], state["mode"]
    baseline = {k: v for k, v in (state.get("baseline") or {}).items() if v is not None}
    trials: list[TrialSummary] = []
    for saved in _saved_trials(exp):
        trial_dir = exp / saved["relative_logdir"]
        history = _read_jsonl(trial_dir / "result.json")
        last = history[-1] if history else {}
        status = _status(saved["status"], history)
        values = [h[metric] for h in history if is_number(h.get(metric))]
        if status == "completed" and is_number(last.get(metric)):
            value: float | None = float(last[metric])
        else:
            value = (max(values) if mode == "max" else min(values)) if values else None
        params = dict(saved["config"])
        checkpoints = sorted(trial_dir.glob("checkpoint_*"))
        error = None
        if saved.get("error_filename"):
            error_file = trial_dir / saved["error_filename"]
            error = error_file.read_text()[-4000:] if error_file.exists() else "error (no error file)"
        trials.append(
            TrialSummary(
                trial_id=saved["trial_id"],
                status=status,
                params=params,
                value=value,
                metrics={k: float(v) for k, v in last.items() if is_number(v)},
                evaluations=int(max((h.get(ROUND_KEY, 0) for h in history), default=0)),
                is_baseline=bool(baseline) and {k: v for k, v in params.items() if v is not None} == baseline,
                checkpoint=str(checkpoints[-1]) if checkpoints else None,
                error=error,
                history=[{k: float(v) for k, v in h.items() if is_number(v)} for h in history],
            )
        )
    seen_baseline = False
    for t in trials:  # only the first trial with the baseline's values is the baseline
        t.is_baseline, seen_baseline = t.is_baseline and not seen_baseline, seen_baseline or t.is_baseline
    completed = [t for t in trials if t.status == "completed" and t.value is not None and not math.isnan(t.value)]
    best = (max if mode == "max" else min)(completed, key=lambda t: t.value) if completed else None
    expected = state.get("expected_trials") or 0
    interrupted = len(trials) < expected or any(t.status in ("interrupted", "pending") for t in trials)
    return TuneOutcome(
        experiment_path=str(exp),
        metric=metric,
        mode=mode,
        trials=trials,
        best=best,
        baseline=next((t for t in trials if t.is_baseline), None),
        interrupted=interrupted,
    )


def _saved_trials(exp: Path) -> list[dict[str, Any]]:
    """Trials as Tune's newest experiment state saved them (statuses included; no Ray needed)."""
    # Each (re)start writes experiment_state-<start time>.json; names sort by time (mtimes do not: a restore
    # syncs the older files again).
    states = sorted(exp.glob("experiment_state-*.json"))
    if not states:
        return []
    out = []
    for trial_json, runtime_json in json.loads(states[-1].read_text())["trial_data"]:
        trial = json.loads(trial_json)
        runtime = json.loads(runtime_json)
        out.append(
            {
                "trial_id": trial["trial_id"],
                "status": trial["status"],
                "relative_logdir": trial["relative_logdir"],
                "config": trial["config"],
                "error_filename": runtime.get("error_filename"),
            }
        )
    return sorted(out, key=lambda t: t["trial_id"])


def _status(saved: str, history: list[dict[str, Any]]) -> str:
    if saved == "ERROR":
        return "error"
    if saved != "TERMINATED":
        return "interrupted" if history else "pending"
    if history and history[-1].get(DONE_KEY) == 1.0:
        return "completed"
    return "stopped_early" if history else "pending"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def top_k_configs(experiment_path: str | Path, k: int) -> list[Config]:
    """The configs of the ``k`` best completed trials, best first (ensemble members from a search).

    Raises:
        ValueError: fewer than ``k`` trials completed.
    """
    outcome = collect_results(experiment_path)
    state = json.loads((Path(experiment_path) / STATE_FILE).read_text())
    completed = [
        t for t in outcome.trials if t.status == "completed" and t.value is not None and not math.isnan(t.value)
    ]
    completed.sort(key=lambda t: t.value, reverse=outcome.mode == "max")
    if len(completed) < k:
        raise ValueError(f"{experiment_path}: asked for the top {k} configs but only {len(completed)} trials completed")
    base = config_from_dict(state["base"], source=str(Path(experiment_path) / STATE_FILE))
    return [trial_config(base, t.params) for t in completed[:k]]


def results_rows(outcome: TuneOutcome, specs: list[ParamSpec]) -> list[dict[str, Any]]:
    """One row per trial, best first: id, status, the searched values, the selection metric, final metrics."""
    paths = [s.path for s in specs]
    sign = -1 if outcome.mode == "max" else 1
    order = sorted(outcome.trials, key=lambda t: (t.value is None, sign * (t.value or 0.0)))
    rows = []
    for t in order:
        row: dict[str, Any] = {"trial_id": t.trial_id, "status": t.status, "baseline": t.is_baseline}
        row.update({p: t.params.get(p) for p in paths})
        row[outcome.metric] = t.value
        row.update({f"last_{m}": t.metrics.get(m) for m in SUMMARY_METRICS})  # completed: the final model
        row["evaluations"] = t.evaluations
        row["steps"] = t.metrics.get("steps", t.metrics.get("step"))
        rows.append(row)
    return rows


def write_results(outcome: TuneOutcome, specs: list[ParamSpec]) -> None:
    """``results.csv`` and ``plots/*.png`` in the experiment folder (paths recorded on ``outcome``)."""
    exp = Path(outcome.experiment_path)
    rows = results_rows(outcome, specs)
    if not rows:
        return
    csv_path = exp / "results.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    outcome.results_csv = str(csv_path)
    outcome.plots = plot_results(outcome, specs, exp / "plots")


def plot_results(outcome: TuneOutcome, specs: list[ParamSpec], out_dir: Path) -> list[str]:
    """Selection metric against τ and against the learning rate, and a parallel-coordinates view of all trials."""
    # matplotlib (heavy, optional) is imported only to draw the plots
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    scored = [t for t in outcome.trials if t.value is not None and not math.isnan(t.value)]
    written = []
    for path, name in (("loss.contrastive_tau", "metric_vs_contrastive_tau.png"), ("train.lr", "metric_vs_lr.png")):
        points = [(t.params.get(path), t.value, t.status) for t in scored if is_number(t.params.get(path))]
        if not points:
            logger.info("plot %s skipped: %s was not searched (or never sampled)", name, path)
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for status, marker in (("completed", "o"), ("stopped_early", "x"), ("interrupted", "s")):
            xs = [p[0] for p in points if p[2] == status]
            ys = [p[1] for p in points if p[2] == status]
            if xs:
                ax.scatter(xs, ys, marker=marker, label=status.replace("_", " "))
        base = outcome.baseline
        if base is not None and base.value is not None and is_number(base.params.get(path)):
            ax.annotate(
                "baseline", (base.params[path], base.value), xytext=(4, 4), textcoords="offset points", fontsize=8
            )
        spec = next((s for s in specs if s.path == path), None)
        if spec is not None and spec.kind == "loguniform":
            ax.set_xscale("log")
        ax.set_xlabel("τ (loss.contrastive_tau)" if path == "loss.contrastive_tau" else "learning rate (train.lr)")
        ax.set_ylabel(f"{outcome.metric} ({outcome.mode} is better)")
        ax.set_title(f"{outcome.metric} against {path}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written.append(str(out_dir / name))
    if scored:
        written.append(_parallel_coordinates(plt, outcome, specs, scored, out_dir / "parallel_coordinates.png"))
    return written


NOT_SAMPLED_Y = -0.12  # where a conditional parameter that was not sampled sits on its axis ("n/a")


def _parallel_coordinates(
    plt: Any, outcome: TuneOutcome, specs: list[ParamSpec], trials: list[TrialSummary], path: Path
) -> str:
    axes = [s.path for s in specs] + [outcome.metric]
    columns: list[list[float]] = []
    ticks: list[tuple[list[float], list[str]]] = []
    for spec_path in axes:
        raw = [t.value if spec_path == outcome.metric else t.params.get(spec_path) for t in trials]
        spec = next((s for s in specs if s.path == spec_path), None)
        if spec is not None and spec.kind in ("choice", "grid"):
            levels = list(dict.fromkeys(spec.args))
            pos = [levels.index(v) / max(1, len(levels) - 1) if v in levels else NOT_SAMPLED_Y for v in raw]
            ticks.append(([i / max(1, len(levels) - 1) for i in range(len(levels))], [str(v) for v in levels]))
        else:
            log = spec is not None and spec.kind == "loguniform"
            nums = [
                (math.log10(v) if log else float(v)) if is_number(v) and (v > 0 or not log) else math.nan for v in raw
            ]
            finite = [v for v in nums if not math.isnan(v)]
            lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
            span = hi - lo or 1.0
            pos = [(v - lo) / span if not math.isnan(v) else NOT_SAMPLED_Y for v in nums]
            labels = [10**lo, 10**hi] if log else [lo, hi]
            ticks.append(([0.0, 1.0], [f"{v:.3g}" for v in labels]) if finite else ([], []))
        if any(p == NOT_SAMPLED_Y for p in pos):
            ticks[-1] = (ticks[-1][0] + [NOT_SAMPLED_Y], ticks[-1][1] + ["n/a"])
        columns.append(pos)
    fig, ax = plt.subplots(figsize=(1.8 * len(axes) + 2, 4.5))
    values = [t.value for t in trials]
    lo, hi = min(values), max(values)
    cmap = plt.get_cmap("viridis" if outcome.mode == "max" else "viridis_r")
    for i, t in enumerate(trials):
        ys = [col[i] for col in columns]
        colour = cmap((t.value - lo) / ((hi - lo) or 1.0))
        style = "-" if t.status == "completed" else ":"
        ax.plot(range(len(axes)), ys, style, color=colour, lw=3 if t is outcome.best else 1.2, marker="o", ms=3)
    for x, (positions, labels) in enumerate(ticks):
        ax.axvline(x, color="grey", lw=0.5)
        for p, label in zip(positions, labels, strict=True):
            ax.annotate(label, (x, p), xytext=(3, 0), textcoords="offset points", fontsize=7, va="center")
    ax.axhline(NOT_SAMPLED_Y / 2, color="lightgrey", lw=0.5, ls="--")
    ax.set_xticks(range(len(axes)), axes, rotation=20, fontsize=8)
    ax.set_yticks([])
    better = "higher" if outcome.mode == "max" else "lower"
    ax.set_title(f"trials (colour: {outcome.metric}, yellow = better ({better}); dotted: not completed; bold: best)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def export_best(best: TrialSummary, exp: Path) -> Path:
    """Copy the best trial's finished model out of its checkpoint into ``<experiment>/best_model``."""
    if best.checkpoint is None or not (Path(best.checkpoint) / "model").is_dir():
        raise FileNotFoundError(f"trial {best.trial_id}: its final checkpoint {best.checkpoint} holds no model/ folder")
    target = exp / "best_model"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(Path(best.checkpoint) / "model", target)
    return target


def format_summary(outcome: TuneOutcome, specs: list[ParamSpec] | None = None) -> str:
    """The final summary table (best first), the best configuration and its gain over the baseline."""
    paths = [s.path for s in specs] if specs else sorted({k for t in outcome.trials for k in t.params})
    rows = results_rows(outcome, [ParamSpec(p, "choice", ()) for p in paths])
    # "selected": the final model's value for completed trials, the best evaluation for the others
    head = ["trial", "status", *paths, f"selected {outcome.metric}", "last val_accuracy", "last val_nll", "evals"]
    body = []
    for r in rows:
        mark = " *" if outcome.best is not None and r["trial_id"] == outcome.best.trial_id else ""
        mark += " (baseline)" if r["baseline"] else ""
        body.append(
            [
                r["trial_id"] + mark,
                r["status"],
                *(_fmt(r[p]) for p in paths),
                _fmt(r[outcome.metric]),
                _fmt(r["last_val_accuracy"]),
                _fmt(r["last_val_nll"]),
                str(r["evaluations"]),
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)) for row in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    stopped = sum(t.status == "stopped_early" for t in outcome.trials)
    lines.append(
        f"\n{len(outcome.trials)} trials: {stopped} stopped early by ASHA, {outcome.num_errors} failed"
        + ("; INTERRUPTED: resume with tune.resume=true" if outcome.interrupted else "")
    )
    if outcome.best is not None:
        best = {k: v for k, v in outcome.best.params.items() if v is not None}
        lines.append(f"best trial {outcome.best.trial_id}: {outcome.metric}={_fmt(outcome.best.value)}  {best}")
        gain = outcome.gain()
        if gain and outcome.baseline is not None:
            base = outcome.baseline
            note = (
                ""
                if base.status == "completed"
                else f" (the baseline was {base.status.replace('_', ' ')} after {base.evaluations} evaluations)"
            )
            lines.append(
                f"baseline trial {base.trial_id}: " + ", ".join(f"{k}={_fmt(base.metrics.get(k))}" for k in gain)
            )
            lines.append(
                "gain over the baseline (best - baseline): "
                + ", ".join(f"{k} {v:+.4f}" for k, v in gain.items())
                + note
            )
    if outcome.results_csv:
        lines.append(f"results: {outcome.results_csv}; plots: {Path(outcome.results_csv).parent / 'plots'}")
    if outcome.best_model_dir:
        lines.append(f"best model: {outcome.best_model_dir}")
    if outcome.registered_version:
        lines.append(
            f"registered: version {outcome.registered_version} (alias candidate, tag tune_experiment={outcome.experiment_path})"
        )
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
