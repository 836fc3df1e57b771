"""Ray Tune search over losses, temperatures and training settings (edge): trials, Tuner, schedulers, restore.

    outcome = run_tune(load_config("raw_rm/configs/tune_default.yaml"))
    outcome.best.params, outcome.best.metrics["val_accuracy"], outcome.registered_version

The space (``raw_rm.tune.space``) is checked before Ray is imported; every trial runs THE recipe
(``raw_rm.train.recipe.run_recipe``) on its copy of the config; the results are read back from the experiment
folder by ``raw_rm.tune.results``; with ``mlflow.enabled`` the experiment is logged and its best model evaluated
for the gate and registered by ``raw_rm.tracking.tune``. Ray (also through ``raw_rm.train.ray_train`` and
``raw_rm.tune.scheduler``) and MLflow (``raw_rm.tracking.tune``) are imported inside the functions that need them,
so a bad search space fails in seconds, before Ray loads.

Resuming (``tune.resume=true``, same ``tune.name``) keeps finished trials and continues running ones from their
last reported checkpoint (one per evaluation). ASHA's rung records are not part of Tune's saved state in ray
2.60 (the searcher's are), so early-stopping cutoffs start afresh after a restore.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from raw_rm.config import Config, ConfigError, TuneConfig, apply_overrides, config_from_dict
from raw_rm.train.recipe import run_recipe
from raw_rm.tune.results import (
    DONE_KEY,
    ROUND_KEY,
    STATE_FILE,
    TuneOutcome,
    collect_results,
    export_best,
    write_results,
)
from raw_rm.tune.space import DefineByRunSpace, ParamSpec, baseline_point, is_number, parse_space, trial_config

logger = logging.getLogger(__name__)

METRIC_MODES = {"val_accuracy": "max", "val_nll": "min", "val_ece": "min", "val_loss": "min"}  # selection metrics


# ------------------------------------------------------------------------- Tune search algorithms
class ConditionalSample:
    """``tune.sample_from`` function: draw ``domain`` when the spec's conditions hold, else None (random search).

    Tune passes no random state to ``sample_from`` and copies the space for every trial, so the draw is seeded
    from ``seed`` and the trial's other resolved values: reproducible, and different from trial to trial.
    """

    def __init__(self, spec: ParamSpec, seed: int) -> None:
        self.spec = spec
        self.seed = seed

    def __call__(self, config: dict[str, Any]) -> Any:
        if not self.spec.active(config):
            return None
        resolved = sorted((k, v) for k, v in config.items() if isinstance(v, (str, int, float, bool)))
        digest = hashlib.sha256(repr((self.seed, self.spec.path, resolved)).encode()).digest()
        rng = np.random.RandomState(int.from_bytes(digest[:4], "little"))
        return _tune_domain(self.spec).sample(random_state=rng)


def _tune_domain(spec: ParamSpec) -> Any:
    from ray import tune

    low, high = (spec.args + (None, None))[:2]
    return {
        "choice": lambda: tune.choice(list(spec.args)),
        "grid": lambda: tune.grid_search(list(spec.args)),
        "uniform": lambda: tune.uniform(low, high),
        "loguniform": lambda: tune.loguniform(low, high),
        "randint": lambda: tune.randint(low, high),
    }[spec.kind]()


def build_search(specs: list[ParamSpec], cfg: Config, baseline: dict[str, Any] | None) -> tuple[dict[str, Any], Any]:
    """(param_space, search_alg) for ``cfg.tune.searcher``.

    Random: Tune domains, conditionals through ``tune.sample_from``. Optuna: a define-by-run function passed as
    OptunaSearch's ``space`` (supported by ray 2.60's OptunaSearch; a dict space cannot express conditions).
    """
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # Unsampled conditional parameters are left out: the searchers skip them by the same conditions.
    points = [{k: v for k, v in baseline.items() if v is not None}] if baseline is not None else None
    if cfg.tune.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        grids = [s.path for s in specs if s.kind == "grid"]
        if grids:
            raise ConfigError(
                f"tune.space: {grids[0]}: grid needs tune.searcher=random (Optuna samples, it does not enumerate)"
            )
        bad = [
            s.path
            for s in specs
            if s.kind == "choice" and not all(isinstance(v, (str, int, float, bool, type(None))) for v in s.args)
        ]
        if bad:
            raise ConfigError(f"tune.space: {bad[0]}: Optuna choices must be strings, numbers, booleans or null")
        search = OptunaSearch(
            space=DefineByRunSpace(specs),
            metric=cfg.tune.metric,
            mode=cfg.tune.mode,
            points_to_evaluate=points,
            seed=cfg.train.seed,
        )
        return {}, search
    space: dict[str, Any] = {}
    for i, spec in enumerate(specs):
        space[spec.path] = (
            tune.sample_from(ConditionalSample(spec, cfg.train.seed + i)) if spec.when else _tune_domain(spec)
        )
    # Tune applies max_concurrent_trials only to a Searcher, so the variant generator gets its own bound.
    search = BasicVariantGenerator(
        points_to_evaluate=points, max_concurrent=cfg.tune.max_concurrent, random_state=cfg.train.seed
    )
    return space, search


# ----------------------------------------------------------------------------------------- trials
# Why a function trainable: under Ray Train V2 (the default in ray 2.60) `Tuner(TorchTrainer(...))` fails, and
# Ray's recommended Tune integration is a function trainable that reports with `ray.tune.report` and saves
# `tune.Checkpoint`s (docs/development.md, "Ray Train"). Each trial therefore runs THE loop
# (RewardModelTrainer) in one process with `tune.with_resources` (CPU/GPU fractions per trial) and Tune bounds the
# concurrency. A multi-worker trial would instead call `raw_rm.train.ray_train.train_ray` from this function
# with the trial's config: its TorchTrainer gets the workers' resources, the trial itself only ~0.1 CPU
# (`tune.with_resources` on a placement group), and its reports are forwarded with Ray's Tune callback.
def runtime_config(cfg: Config, scratch: Path, tune_cfg: Any) -> Config:
    """What every trial changes in its config: its own folder, Tune's metric as the loop's best-model metric,
    a checkpoint at every evaluation (so each report can be resumed), no own MLflow run, no progress bar."""
    overrides: dict[str, Any] = {
        "train.output_dir": str(scratch / "train"),
        "train.resume": False,
        "train.progress": False,
        "train.early_stopping_metric": tune_cfg.metric,
        "train.early_stopping_mode": tune_cfg.mode,
        "train.restore_best": True,
        "train.checkpoint_every_steps": cfg.train.eval_every_steps,
        "mlflow.enabled": False,
    }
    if cfg.train.num_threads is None:
        overrides["train.num_threads"] = max(1, int(tune_cfg.cpus_per_trial))
    return apply_overrides(cfg, overrides)


class TuneReporter:
    """Loop callback: one ``tune.report`` per evaluation, carrying the checkpoint the loop saved at that step.

    The loop evaluates before it checkpoints at the same step, so ``on_eval`` holds the metrics until
    ``on_checkpoint`` hands over the folder. Tune copies the folder into the experiment's storage inside
    ``report``; the local copy is then removed (a MiniLM checkpoint with optimiser state is ~350 MB).
    """

    def __init__(self, rounds: int = 0) -> None:
        self.rounds = rounds  # evaluations reported so far (restored from the checkpoint on resume)
        self.pending: tuple[int, dict[str, float]] | None = None

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.pending = (step, dict(metrics))

    def on_checkpoint(self, step: int, path: str, metrics: dict[str, float]) -> None:
        if self.pending is not None and self.pending[0] == step:
            self.report(self.pending[1], path)

    def report(self, metrics: dict[str, Any], path: str | Path | None, *, done: bool = False) -> None:
        from ray import tune

        if not done:
            self.rounds += 1
        out = {k: float(v) for k, v in metrics.items() if is_number(v)}
        out[ROUND_KEY] = self.rounds
        out[DONE_KEY] = 1.0 if done else 0.0
        checkpoint = tune.Checkpoint.from_directory(str(path)) if path is not None else None
        self.pending = None
        tune.report(out, checkpoint=checkpoint)
        if path is not None and not done:
            shutil.rmtree(path, ignore_errors=True)


def run_trial(params: dict[str, Any], *, base: dict[str, Any], tune_cfg: dict[str, Any]) -> None:
    """Tune's function trainable: build the trial's config, train with the loop, report each evaluation.

    A trial that finishes reports once more with ``fit_complete=1``: the final checkpoint then also holds
    ``model/`` (``save_model``: restored-best weights with reward normalisation), which the driver registers.
    That report repeats ``eval_round``, so ASHA (whose time attribute it is) does not count it as progress.
    """
    from ray import tune

    if not logging.getLogger().handlers:  # a fresh Ray worker: show the loop's progress lines in the driver's log
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
        )
    # Scratch outside Tune's trial folder: Tune syncs that folder to storage with every experiment snapshot,
    # which would copy (and race with the removal of) the loop's checkpoints. What must last goes via report().
    scratch = Path(tempfile.mkdtemp(prefix=f"raw_rm_{tune.get_context().get_trial_id()}_"))
    try:
        _train_and_report(params, base, TuneConfig(**tune_cfg), scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _train_and_report(params: dict[str, Any], base: dict[str, Any], tune_cfg: Any, scratch: Path) -> None:
    """THE recipe with the trial's config and reporter, resumed from Tune's checkpoint; then the final report."""
    from ray import tune

    cfg = runtime_config(trial_config(base, params), scratch, tune_cfg)
    checkpoint = tune.get_checkpoint()
    with checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext() as resume_dir:
        rounds = 0
        if resume_dir is not None:
            state = json.loads((Path(resume_dir) / "trainer_state.json").read_text())
            rounds = len(state.get("history", []))
        reporter = TuneReporter(rounds)
        run = run_recipe(cfg, callbacks=[reporter], resume_from=resume_dir, model_dir=scratch / "model")
    final_dir = scratch / "final"
    run.trainer.save_checkpoint(final_dir)  # replaces the folder: the model moves in after it
    shutil.move(str(run.model_dir), str(final_dir / "model"))
    (final_dir / "metrics.json").write_text(json.dumps(run.metrics, indent=1, sort_keys=True))
    reporter.report(run.metrics, final_dir, done=True)


# ----------------------------------------------------------------------------------------- driver
def experiment_path(cfg: Config) -> Path:
    """``<tune.storage_path or train.output_dir/tune>/<tune.name>`` (absolute)."""
    storage = Path(cfg.tune.storage_path or Path(cfg.train.output_dir) / "tune").resolve()
    if cfg.tune.name is None:
        raise ConfigError("tune.name is unset: run_tune names the experiment; pass tune.name=... to locate one")
    return storage / cfg.tune.name


def run_tune(cfg: Config, *, callbacks: list[Any] | tuple[Any, ...] = ()) -> TuneOutcome:
    """Search ``cfg.tune.space`` with ASHA, log every trial to MLflow, register the best model as ``candidate``.

    Args:
        cfg: the base config; ``cfg.tune`` holds the space, searcher, metric, scheduler and resources.
        callbacks: extra ``ray.tune.Callback``s (kept in the experiment, so they also run after a restore).

    Raises:
        ConfigError: a bad space, metric or experiment name, found before any trial starts.
        RuntimeError: every trial failed (the message holds the first trial's error).
    """
    if cfg.tune.resume and cfg.tune.name is None:
        raise ConfigError("tune.resume=true needs tune.name: the experiment to continue")
    if cfg.tune.name is None:
        cfg = apply_overrides(cfg, {"tune.name": f"tune-{time.strftime('%Y%m%d-%H%M%S')}"})
    exp = experiment_path(cfg)
    if cfg.tune.resume:  # trials rebuild from the saved base config, so a restored trial trains exactly as before
        state_file = exp / STATE_FILE
        if not state_file.exists():
            raise ConfigError(
                f"tune.resume=true but {exp} holds no raw_rm Tune experiment to restore (no {STATE_FILE})"
            )
        base = config_from_dict(json.loads(state_file.read_text())["base"], source=str(state_file))
        specs = parse_space(base.tune.space, base)
    else:
        base = cfg
        specs = parse_space(cfg.tune.space, cfg)  # the whole space is checked before Ray is even imported
        _check_new_experiment(cfg, specs, exp)

    from ray import tune

    from raw_rm.train.ray_train import init_ray

    init_ray(cfg.ray.address)
    trainable = _trainable(base)
    if cfg.tune.resume:
        logger.info("restoring %s: finished trials are kept, unfinished ones resume from their last checkpoint", exp)
        tuner = tune.Tuner.restore(str(exp), trainable=trainable, resume_errored=True)
    else:
        tuner = _new_tuner(base, specs, exp, trainable, callbacks)
    started = time.perf_counter()
    tuner.fit()
    logger.info("search finished in %.0f s", time.perf_counter() - started)
    outcome = collect_results(exp)
    write_results(outcome, specs)
    if outcome.interrupted:
        logger.warning("experiment %s was interrupted: resume with tune.resume=true tune.name=%s", exp, base.tune.name)
        return outcome
    if outcome.trials and outcome.num_errors == len(outcome.trials):
        raise RuntimeError(f"all {len(outcome.trials)} trials failed; first error:\n{outcome.trials[0].error}")
    if outcome.best is not None:
        outcome.best_model_dir = str(export_best(outcome.best, exp))
    if cfg.mlflow.enabled:  # the experiment's own config, with this invocation's MLflow settings
        from raw_rm.tracking.tune import log_tune_experiment

        log_tune_experiment(dataclasses.replace(base, mlflow=cfg.mlflow), outcome, specs)
    return outcome


def _check_new_experiment(cfg: Config, specs: list[ParamSpec], exp: Path) -> None:
    if not specs:
        raise ConfigError("tune.space is empty: give at least one path, e.g. train.lr: {loguniform: [1.0e-5, 1.0e-3]}")
    if cfg.ray.num_workers > 1:
        raise ConfigError(
            f"ray.num_workers={cfg.ray.num_workers}: each Tune trial trains in one process here; set ray.num_workers=1 "
            "and use tune.cpus_per_trial / tune.gpus_per_trial for its resources"
        )
    metric, mode = cfg.tune.metric, cfg.tune.mode
    if not metric.startswith("val_"):
        raise ConfigError(f"tune.metric={metric!r}: trials report validation metrics, e.g. {', '.join(METRIC_MODES)}")
    if METRIC_MODES.get(metric, mode) != mode:
        raise ConfigError(
            f"tune.metric={metric} is better when {'higher' if mode == 'min' else 'lower'}: set tune.mode={METRIC_MODES[metric]}"
        )
    if exp.exists():
        raise ConfigError(f"{exp} already exists: set tune.resume=true to continue it, or choose another tune.name")


def _trainable(base: Config) -> Any:
    from ray import tune

    resources = {"cpu": base.tune.cpus_per_trial}
    if base.tune.gpus_per_trial:
        resources["gpu"] = base.tune.gpus_per_trial
    fn = tune.with_parameters(run_trial, base=asdict(base), tune_cfg=asdict(base.tune))
    return tune.with_resources(fn, resources)


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _new_tuner(base: Config, specs: list[ParamSpec], exp: Path, trainable: Any, callbacks: Any) -> Any:
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    tc = base.tune
    with_grid = any(s.kind == "grid" for s in specs)
    baseline = baseline_point(specs, base) if tc.baseline and not with_grid else None
    if tc.baseline and with_grid:
        logger.info("tune.baseline ignored: a grid already enumerates its values")
    param_space, search_alg = build_search(specs, base, baseline)
    points = [{k: v for k, v in baseline.items() if v is not None}] if baseline is not None else None
    if tc.scheduler == "asha":
        # max_t only places the rungs (grace_period * reduction_factor^k evaluations); trials end by themselves.
        from raw_rm.tune.scheduler import BaselineKeepingASHA

        scheduler: Any = BaselineKeepingASHA(
            baseline=points[0] if points else None,
            time_attr=ROUND_KEY,
            grace_period=tc.grace_period,
            reduction_factor=tc.reduction_factor,
            max_t=10_000,
        )
    else:
        scheduler = FIFOScheduler()
    exp.mkdir(parents=True, exist_ok=True)
    expected = tc.num_samples * math.prod(len(s.args) for s in specs if s.kind == "grid")
    state = {
        "base": asdict(base),
        "metric": tc.metric,
        "mode": tc.mode,
        "baseline": baseline,
        "expected_trials": expected,
        "created": time.time(),
    }
    (exp / STATE_FILE).write_text(json.dumps(state, indent=1))
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=tc.metric,
            mode=tc.mode,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=tc.num_samples,
            max_concurrent_trials=tc.max_concurrent
            if tc.searcher == "optuna"
            else None,  # random: bounded by its generator
            trial_dirname_creator=trial_dirname,
            reuse_actors=True,  # a new trial in a warm process skips ~10-20 s of torch/transformers imports
        ),
        run_config=tune.RunConfig(
            name=exp.name,
            storage_path=str(exp.parent),
            callbacks=list(callbacks),
            # The latest checkpoint resumes a trial; keeping 2 halves the experiment snapshots Tune forces.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=base.ray.max_failures),
        ),
    )
