"""An ensemble in MLflow (edge): one run, a child run per member, ONE registered version.

    result = train_ensemble(cfg)            # raw_rm.train.ensemble: trains and saves the ensemble folder
    if cfg.mlflow.enabled:
        result = register_ensemble(cfg, result)   # what `raw-rm ensemble` and quickstart do

The ensemble folder is evaluated for the gate (``raw_rm.eval.gate``: temperature fitted on the calibration split of
the validation prompts, saved into ``ensemble.json``), logged as artifact ``model`` and registered with alias
``candidate``; tag ``ensemble_members`` (folders, seeds, child run ids) says what it is made of. ``promote`` and
``rollback`` then move the whole ensemble.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raw_rm.config import Config
from raw_rm.tracking.registry import log_evaluate_register
from raw_rm.tracking.runs import TrackedRun, tracking
from raw_rm.train.ensemble import EnsembleResult, edit_ensemble_json


def register_ensemble(cfg: Config, result: EnsembleResult) -> EnsembleResult:
    """Track the ensemble in MLflow (a run + one child run per member), evaluate it, register ONE version.

    Sets ``result.mlflow_run_id``, ``result.model_version`` (None with ``mlflow.register=false``) and
    ``result.metrics`` (the gate evaluation: accuracy, ece after temperature scaling, ...).
    """
    ens_dir = Path(result.ensemble_dir)
    with tracking(cfg, run_name=f"ensemble-{len(result.members)}") as run:
        member_runs = []
        for i, member in enumerate(result.members):
            child = run.client.create_run(
                run.experiment_id,
                run_name=f"member_{i}",
                tags={
                    "mlflow.parentRunId": run.run_id,
                    "ensemble_member": str(i),
                    "seed": str(member.get("seed")),
                    **{f"config.{k}": str(v) for k, v in (member.get("config") or {}).items()},
                },
            )
            child_run = TrackedRun(run.client, child.info.run_id, run.experiment_id, run.tracking_uri, {})
            child_run.log_metrics(member.get("metrics") or {})
            run.client.set_terminated(child.info.run_id, "FINISHED")
            member_runs.append(child.info.run_id)
            member["run_id"] = child.info.run_id
        _write_member_runs(ens_dir, member_runs)
        members = [{"dir": m["dir"], "seed": m.get("seed"), "run_id": m["run_id"]} for m in result.members]
        tags = {
            "ensemble": "true",
            "ensemble_size": str(len(result.members)),
            "ensemble_members": json.dumps(members),
            "arch": "ensemble" if cfg.model.arch != "multihead" else "multihead",
        }
        cmp = result.validation_comparison
        if cmp is not None:
            best = cmp["members"][cmp["best_member"]]
            run.log_metrics(
                {
                    "val_cmp_ensemble_nll": cmp["ensemble"]["nll"],
                    "val_cmp_ensemble_ece": cmp["ensemble"]["ece"],
                    "val_cmp_best_member_nll": best["nll"],
                    "val_cmp_best_member_ece": best["ece"],
                    "val_cmp_mean_member_nll": sum(m["nll"] for m in cmp["members"]) / len(cmp["members"]),
                }
            )
        result.metrics, result.model_version = log_evaluate_register(cfg, run, ens_dir, tags=tags)
        result.mlflow_run_id = run.run_id
    return result


def _write_member_runs(ens_dir: Path, run_ids: list[str]) -> None:
    """Record each member's MLflow run id in ensemble.json (before the folder is logged)."""

    def edit(record: dict[str, Any]) -> None:
        for member, run_id in zip(record["members"], run_ids, strict=True):
            member["run_id"] = run_id

    edit_ensemble_json(ens_dir, edit)
