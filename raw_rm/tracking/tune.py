"""A Tune experiment in MLflow (edge): a parent run, a run per trial, the best model evaluated and registered.

outcome = run_tune(cfg)                       # raw_rm.tune.driver calls this when mlflow.enabled:
log_tune_experiment(cfg, outcome, specs)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raw_rm.config import Config
from raw_rm.tracking.registry import log_evaluate_register
from raw_rm.tracking.runs import (
    MlflowCallback,
    TrackedRun,
    client_for,
    ensure_experiment,
    flatten,
    git_commit,
    log_params,
    source_fingerprint,
)
from raw_rm.tune.results import DONE_KEY, ROUND_KEY, TrialSummary, TuneOutcome
from raw_rm.tune.space import ParamSpec


def log_tune_experiment(cfg: Config, outcome: TuneOutcome, specs: list[ParamSpec]) -> None:
    """One parent run per experiment, a nested run per trial (params + per-evaluation metrics); the best
    trial's model is evaluated for the gate (``raw_rm.eval.gate``), logged on its run with the report and
    registered as a new version with alias ``candidate``.

    Idempotent: a resumed experiment finds its parent run and the trial runs already logged by their tags.
    """
    client = client_for(cfg.mlflow.tracking_uri)
    experiment_id = ensure_experiment(client, cfg.mlflow)
    exp_path = outcome.experiment_path
    lineage = {
        "tune_experiment": exp_path,
        "data_fingerprint": source_fingerprint(cfg.data),
        "data_source": cfg.data.train_path or "synthetic",
        "git_commit": git_commit(),
        "base_model": cfg.model.backbone,
        "arch": cfg.model.arch,
    }
    parent = _find_run(client, experiment_id, exp_path, "parent")
    if parent is None:
        run = client.create_run(experiment_id, tags={**lineage, "tune_role": "parent"}, run_name=Path(exp_path).name)
        parent = run.info.run_id
        params = flatten(cfg.to_dict())
        params["tune.space"] = json.dumps(cfg.tune.space)
        log_params(client, parent, params)
    outcome.mlflow_run_id = parent
    trial_runs = {}
    for trial in outcome.trials:
        trial_runs[trial.trial_id] = _log_trial(client, experiment_id, parent, trial, lineage)
    summary = (
        {f"best_{outcome.metric}": outcome.best.value}
        if outcome.best is not None and outcome.best.value is not None
        else {}
    )
    summary.update({f"gain_{k}": v for k, v in outcome.gain().items()})
    summary.update(
        {
            "trials": len(outcome.trials),
            "trials_stopped_early": sum(t.status == "stopped_early" for t in outcome.trials),
        }
    )
    TrackedRun(client, parent, experiment_id, cfg.mlflow.tracking_uri, lineage).log_metrics(summary)
    if outcome.results_csv:
        client.log_artifact(parent, outcome.results_csv)
    for plot in outcome.plots:
        client.log_artifact(parent, plot, "plots")
    if outcome.best is not None:
        client.set_tag(parent, "best_trial", outcome.best.trial_id)
        if cfg.mlflow.register and outcome.best_model_dir:
            outcome.registered_version = _register_best(
                cfg, client, outcome, trial_runs[outcome.best.trial_id], lineage
            )
            client.set_tag(parent, "registered_version", f"{cfg.mlflow.registered_model}/{outcome.registered_version}")
    client.set_terminated(parent, "FINISHED")


def _find_run(client: Any, experiment_id: str, exp_path: str, role: str, trial_id: str | None = None) -> str | None:
    query = f"tags.tune_experiment = '{exp_path}' and tags.tune_role = '{role}'"
    if trial_id is not None:
        query += f" and tags.tune_trial_id = '{trial_id}'"
    runs = client.search_runs([experiment_id], filter_string=query, max_results=1)
    return runs[0].info.run_id if runs else None


def _log_trial(client: Any, experiment_id: str, parent: str, trial: TrialSummary, lineage: dict[str, str]) -> str:
    existing = _find_run(client, experiment_id, lineage["tune_experiment"], "trial", trial.trial_id)
    if existing is not None:
        return existing
    tags = {
        **lineage,
        "tune_role": "trial",
        "tune_trial_id": trial.trial_id,
        "tune_status": trial.status,
        "tune_baseline": str(trial.is_baseline).lower(),
        "mlflow.parentRunId": parent,
    }
    run_id = client.create_run(experiment_id, tags=tags, run_name=trial.trial_id).info.run_id
    log_params(client, run_id, flatten(trial.params))  # dotted names already; lists, None and booleans as JSON
    callback = MlflowCallback(client.tracking_uri, run_id)
    for report in trial.history:  # one point per evaluation, at its training step
        if report.get(DONE_KEY) == 1.0:
            continue
        callback.on_eval(
            int(report.get("step", report.get(ROUND_KEY, 0))), {k: v for k, v in report.items() if k.startswith("val_")}
        )
    final = {
        f"final_{k}": v
        for k, v in trial.metrics.items()
        if k.startswith("val_") or k in ("steps", "pairs_per_s", "tokens_per_s")
    }
    callback.on_eval(
        int(trial.metrics.get("steps", trial.metrics.get("step", 0))), {**final, "evaluations": trial.evaluations}
    )
    status = {"completed": "FINISHED", "error": "FAILED"}.get(trial.status, "KILLED")
    if trial.error:
        client.set_tag(run_id, "tune_error", trial.error[-4000:])
    client.set_terminated(run_id, status)
    return run_id


def _register_best(cfg: Config, client: Any, outcome: TuneOutcome, run_id: str, lineage: dict[str, str]) -> str:
    """Evaluate the best model for the gate on its trial's run, log it there and register it (``candidate``)."""
    best = outcome.best
    assert best is not None and outcome.best_model_dir is not None, "registration needs a completed best trial"
    run = TrackedRun(client, run_id, client.get_run(run_id).info.experiment_id, cfg.mlflow.tracking_uri, lineage)
    tags = {"tune_trial": best.trial_id, "tune_metric": outcome.metric, f"tune_{outcome.metric}": str(best.value)}
    _, version = log_evaluate_register(cfg, run, Path(outcome.best_model_dir), tags=tags)
    assert version is not None, "mlflow.register is on here"
    return version
