"""Ray Tune search end to end: real local Ray, real MLflow, the tiny BERT on a small synthetic set."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from mlflow import MlflowClient
from ray import tune

from raw_rm.config import DEFAULT_CONFIG, Config, apply_overrides, load_config
from raw_rm.models import load_model
from raw_rm.tune.driver import run_tune
from raw_rm.tune.results import ROUND_KEY, top_k_configs

pytestmark = pytest.mark.integration

TINY = DEFAULT_CONFIG.parent / "tune_tiny.yaml"
# 300 synthetic prompts -> 274 training pairs -> ceil(274 / 16) = 18 steps; an evaluation every 3 steps -> 6.
EVALS_PER_TRIAL = 6


def tiny_config(tmp_path: Path, mlflow_uri: str, name: str, **overrides: object) -> Config:
    cfg = load_config(
        TINY, [f"train.output_dir={tmp_path / 'runs'}", f"mlflow.tracking_uri={mlflow_uri}", f"tune.name={name}"]
    )
    return apply_overrides(cfg, overrides)


def read_reports(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


def test_asha_stops_trials_that_do_not_learn_and_the_best_is_registered(
    ray_session, mlflow_uri: str, tmp_path: Path
) -> None:
    # Two learning rates that learn and two so small the model never moves. Two trials run at a time, so
    # each non-learner starts only after a learner has finished and recorded every ASHA rung (1, 2, 4
    # evaluations): at the latest at rung 4 it is far below the learners (val_nll ~0.693 vs ~0.66) and stopped.
    space = {"train.lr": {"grid": [5.0e-3, 2.0e-3, 1.0e-8, 1.0e-9]}}
    cfg = tiny_config(tmp_path, mlflow_uri, "search", **{"tune.space": space, "tune.num_samples": 1})

    outcome = run_tune(cfg)

    assert not outcome.interrupted and outcome.num_errors == 0
    by_lr = {t.params["train.lr"]: t for t in outcome.trials}
    assert sorted(by_lr) == [1.0e-9, 1.0e-8, 2.0e-3, 5.0e-3]
    stopped = [t for t in outcome.trials if t.status == "stopped_early"]
    assert {t.params["train.lr"] for t in stopped} & {1.0e-8, 1.0e-9}
    assert all(t.evaluations < EVALS_PER_TRIAL for t in stopped)
    assert all(t.evaluations == EVALS_PER_TRIAL for t in outcome.trials if t.status == "completed")
    # 5e-3 is ahead of every other trial at every rung, so it always completes and is the best.
    assert outcome.best is by_lr[5.0e-3] and outcome.best.status == "completed"
    assert outcome.best.value == pytest.approx(outcome.best.metrics["val_nll"])
    assert outcome.best.value < 0.69  # it learned: a reward model that never moves sits at log 2 = 0.693

    exp = Path(outcome.experiment_path)
    assert exp == (tmp_path / "runs" / "tune" / "search").resolve()
    rows = (exp / "results.csv").read_text().splitlines()
    assert rows[0].split(",")[:5] == ["trial_id", "status", "baseline", "train.lr", "val_nll"]
    assert len(rows) == 5 and rows[1].startswith(outcome.best.trial_id + ",completed,False,0.005,")
    assert sorted(p.name for p in (exp / "plots").iterdir()) == ["metric_vs_lr.png", "parallel_coordinates.png"]
    model, _ = load_model(exp / "best_model")  # the finished model, with the loop's reward normalisation
    assert model.metadata.base_model and model.metadata.data_fingerprint and model.metadata.reward_std > 0

    client = MlflowClient(mlflow_uri)
    version = client.get_model_version_by_alias(cfg.mlflow.registered_model, "candidate")
    assert str(version.version) == outcome.registered_version == "1"
    assert version.tags["tune_experiment"] == str(exp)
    assert version.tags["tune_trial"] == outcome.best.trial_id
    trial_run = client.get_run(version.run_id)
    # the gate evaluation (raw_rm.eval.gate) of the best model: its accuracy is what the promotion gate reads
    assert float(version.tags["accuracy"]) == pytest.approx(trial_run.data.metrics["eval.accuracy"])
    assert model.metadata.temperature == pytest.approx(trial_run.data.metrics["eval.temperature"])
    assert trial_run.data.tags["mlflow.parentRunId"] == outcome.mlflow_run_id
    assert trial_run.data.params["train.lr"] == "0.005"
    assert [a.path for a in client.list_artifacts(version.run_id)] == ["eval_report", "model"]
    children = client.search_runs(
        [trial_run.info.experiment_id], f"tags.mlflow.parentRunId = '{outcome.mlflow_run_id}'"
    )
    assert sorted(r.data.tags["tune_status"] for r in children) == sorted(t.status for t in outcome.trials)
    history = client.get_metric_history(version.run_id, "val_nll")
    assert len(history) == EVALS_PER_TRIAL  # one point per evaluation (the final model logs final_val_nll)
    parent = client.get_run(outcome.mlflow_run_id)
    assert parent.data.tags["registered_version"] == f"{cfg.mlflow.registered_model}/1"
    assert sorted(a.path for a in client.list_artifacts(outcome.mlflow_run_id)) == ["plots", "results.csv"]

    best_cfg = top_k_configs(exp, 1)[0]
    assert (best_cfg.train.lr, best_cfg.model.backbone) == (5.0e-3, "tiny-bert")
    completed = sum(t.status == "completed" for t in outcome.trials)
    with pytest.raises(ValueError, match=rf"asked for the top 5 configs but only {completed} trials completed"):
        top_k_configs(exp, 5)


class InterruptOnce(tune.Callback):
    """Sends the driver SIGUSR1 (Tune's graceful stop, like Ctrl+C) once: when a trial's 2nd checkpoint is
    registered after another trial has finished. The marker file keeps it from firing again after the
    restore (Tune restores the callbacks of the original run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        finished = [t for t in trials if t.status == "TERMINATED"]
        if trial.last_result.get(ROUND_KEY) == 2 and finished and not self.marker.exists():
            self.marker.write_text(trial.trial_id)
            os.kill(os.getpid(), signal.SIGUSR1)


def test_an_interrupted_search_resumes_without_redoing_finished_trials(
    ray_session, mlflow_uri: str, tmp_path: Path
) -> None:
    space = {"train.lr": {"grid": [5.0e-3, 2.0e-3]}}
    cfg = tiny_config(
        tmp_path,
        mlflow_uri,
        "resume",
        # No ASHA here: run one at a time, it would stop the second trial at its first evaluation.
        **{
            "tune.space": space,
            "tune.num_samples": 1,
            "tune.max_concurrent": 1,
            "tune.scheduler": "none",
            "mlflow.enabled": False,
        },
    )
    marker = tmp_path / "interrupted"

    first = run_tune(cfg, callbacks=[InterruptOnce(marker)])

    assert first.interrupted and first.best_model_dir is None
    assert sorted(t.status for t in first.trials) == ["completed", "interrupted"]
    done = next(t for t in first.trials if t.status == "completed")
    cut = next(t for t in first.trials if t.status == "interrupted")
    assert cut.trial_id == marker.read_text() and cut.evaluations == 2
    exp = Path(first.experiment_path)
    done_reports = read_reports(exp / f"trial_{done.trial_id}")

    second = run_tune(apply_overrides(cfg, {"tune.resume": True}))

    assert not second.interrupted
    assert sorted(t.status for t in second.trials) == ["completed", "completed"]
    assert read_reports(exp / f"trial_{done.trial_id}") == done_reports  # not run again
    rounds = [r[ROUND_KEY] for r in read_reports(exp / f"trial_{cut.trial_id}")]
    # Continued from its checkpoint at evaluation 2 (a restart would repeat 1, 2), then the final-model report.
    assert rounds == [1, 2, 3, 4, 5, 6, 6]
    assert Path(second.best_model_dir).is_dir()


SPACE = {
    "loss.name": {"choice": ["bt", "contrastive", "focal"]},
    "loss.contrastive_tau": {"loguniform": [0.05, 5]},
    "loss.gamma": {"uniform": [0.5, 4]},
    "train.lr": {"loguniform": [1.0e-5, 1.0e-3]},
}


def test_random_search_samples_loss_parameters_only_for_their_loss() -> None:
    from ray.tune.search.variant_generator import generate_variants

    from raw_rm.tune.driver import build_search
    from raw_rm.tune.space import parse_space

    cfg = apply_overrides(load_config(TINY), {"tune.space": SPACE})
    space, _ = build_search(parse_space(SPACE, cfg), cfg, None)
    points = [spec for _ in range(40) for _, spec in generate_variants(space)]
    assert {p["loss.name"] for p in points} == {"bt", "contrastive", "focal"}
    for p in points:
        assert (p["loss.contrastive_tau"] is not None) == (p["loss.name"] == "contrastive")
        assert (p["loss.gamma"] is not None) == (p["loss.name"] == "focal")
    temperatures = [p["loss.contrastive_tau"] for p in points if p["loss.contrastive_tau"] is not None]
    assert all(0.05 <= t <= 5 for t in temperatures) and len(set(temperatures)) == len(temperatures)


def test_optuna_starts_with_the_baseline_and_asks_only_for_active_parameters() -> None:
    from raw_rm.tune.driver import build_search
    from raw_rm.tune.space import baseline_point, parse_space

    cfg = apply_overrides(load_config(TINY), {"tune.space": SPACE, "tune.searcher": "optuna"})
    specs = parse_space(SPACE, cfg)
    _, search = build_search(specs, cfg, baseline_point(specs, cfg))
    suggestions = [search.suggest(f"t{i}") for i in range(12)]
    assert suggestions[0] == {"loss.name": "bt", "train.lr": 5.0e-3}  # tune_tiny.yaml's own values
    for s in suggestions:
        expected = {"loss.name", "train.lr"} | {"contrastive": {"loss.contrastive_tau"}, "focal": {"loss.gamma"}}.get(
            s["loss.name"], set()
        )
        assert set(s) == expected


def test_asha_records_the_baseline_but_never_stops_it() -> None:
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from raw_rm.tune.scheduler import BaselineKeepingASHA

    scheduler = BaselineKeepingASHA(
        baseline={"train.lr": 1.0e-4}, time_attr=ROUND_KEY, grace_period=1, reduction_factor=2, max_t=100
    )
    scheduler.set_search_properties("val_nll", "min")
    good = SimpleNamespace(trial_id="good", config={"train.lr": 1.0e-3})
    baseline = SimpleNamespace(trial_id="base", config={"train.lr": 1.0e-4, "loss.contrastive_tau": None})
    worse = SimpleNamespace(trial_id="worse", config={"train.lr": 1.0e-5})
    for trial in (good, baseline, worse):
        scheduler.on_trial_add(None, trial)
    result = {ROUND_KEY: 1, "training_iteration": 1}
    assert scheduler.on_trial_result(None, good, {**result, "val_nll": 0.60}) == TrialScheduler.CONTINUE
    # Plain ASHA stops a trial that reaches a rung below the cutoff (here 0.60): the baseline goes on.
    assert scheduler.on_trial_result(None, baseline, {**result, "val_nll": 0.69}) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, worse, {**result, "val_nll": 0.70}) == TrialScheduler.STOP
