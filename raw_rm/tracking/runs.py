"""MLflow tracking for raw_rm (edge): stores, runs, params, metrics, artifacts and lineage.

One MLflow run per training with the flattened config as params, per-step metrics from rank 0
(``MlflowCallback``, a loop callback that also travels to Ray Train workers), lineage tags (data fingerprint,
git commit, base model) and the eval report and trained model as artifacts:

    with tracking(cfg) as run:
        result = train_local(cfg, callbacks=[run.callback()])
        run.log_model(result.model_dir)

The model registry (versions, aliases, promotion, ``models:/`` URIs) builds on this in
``raw_rm.tracking.registry``; this module never imports it. Only the MlflowClient API is used, never the fluent
``mlflow.start_run``/``set_tracking_uri`` globals, so tests and several stores can live in one process.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import math
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Silence per-file download bars before mlflow is imported; setdefault leaves a user's choice.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param  # noqa: E402

from raw_rm.config import Config, DataConfig, MlflowConfig  # noqa: E402

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"  # a run's artifact folder holding the saved model
REPORT_ARTIFACT = "eval_report"  # a run's artifact folder holding the eval report


# ----------------------------------------------------------------------------------------- stores
def client_for(tracking_uri: str | None = None) -> MlflowClient:
    """A client on ``tracking_uri`` (None: $MLFLOW_TRACKING_URI, else the config default).

    A SQLite store's folder is created first: SQLAlchemy does not create it and fails with an unclear error.
    """
    uri = store_uri(tracking_uri)
    db = _sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def store_uri(tracking_uri: str | None = None) -> str:
    """``tracking_uri`` itself, or for None: $MLFLOW_TRACKING_URI, else ``mlflow.tracking_uri``'s default."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or MlflowConfig().tracking_uri


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def absolute_uri(uri: str) -> str:
    """``sqlite:///mlruns/mlflow.db`` (relative to the working directory) -> ``sqlite:////abs/mlruns/mlflow.db``.

    Ray Train workers and Ray jobs may run in another working directory: they must reach the same file.
    """
    db = _sqlite_path(uri)
    return f"sqlite:///{db.resolve()}" if db is not None and not db.is_absolute() else uri


def artifact_location(cfg: MlflowConfig) -> str | None:
    """The experiment's artifact root: explicit, or ``<folder of the SQLite file>/artifacts`` (absolute).

    Set explicitly because MLflow's default is relative to the working directory at creation time, which
    differs between the CLI, Ray workers and `ray job submit` (docs/development.md). A server URI keeps its own default.
    """
    if cfg.artifact_location:
        loc = cfg.artifact_location
        return Path(loc).resolve().as_uri() if "://" not in loc else loc
    db = _sqlite_path(cfg.tracking_uri)
    return (db.parent.resolve() / "artifacts").as_uri() if db is not None else None


def ensure_experiment(client: MlflowClient, cfg: MlflowConfig) -> str:
    """The id of experiment ``cfg.experiment``, created with an explicit artifact location if absent."""
    exp = client.get_experiment_by_name(cfg.experiment)
    location = artifact_location(cfg)
    if exp is None:
        return client.create_experiment(cfg.experiment, artifact_location=location)
    if location is not None and exp.artifact_location != location:
        log.warning(
            "experiment %r keeps its artifact location %s (mlflow.artifact_location asks for %s; an experiment's "
            "location cannot change: use a new mlflow.experiment name to move it)",
            cfg.experiment,
            exp.artifact_location,
            location,
        )
    return exp.experiment_id


# ---------------------------------------------------------------------------------------- lineage
def source_fingerprint(data: DataConfig) -> str:
    """A stable id of the training data's source (the MLflow tag ``data_fingerprint``): sha256 of the input files, the dataset name, or the synthetic config.

    Files and ``datasets`` folders hash their bytes (a folder: every file, in path order, with its relative path).
    A name that is not a local path is a Hub dataset, fingerprinted by name (no revision is pinned in the config).
    The synthetic default hashes its generator config, which determines the data exactly. With a separate
    eval file the two fingerprints are joined by "+".
    """
    if data.train_path is None:
        blob = json.dumps(asdict(data.synthetic), sort_keys=True)
        return "synthetic:" + hashlib.sha256(blob.encode()).hexdigest()
    sources = [s for s in (data.train_path, data.eval_path) if s is not None]
    return "+".join(_path_fingerprint(s) for s in sources)


def _path_fingerprint(source: str) -> str:
    path = Path(source)
    if not path.exists():
        return f"hub:{source}"
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def git_commit() -> str:
    """The commit of the code that runs: $RAW_RM_GIT_COMMIT, else `git rev-parse HEAD` (+ "-dirty"), else "unknown".

    A Ray job's working directory has no .git: set RAW_RM_GIT_COMMIT in the job's env to keep the lineage.
    """
    if os.environ.get("RAW_RM_GIT_COMMIT"):
        return os.environ["RAW_RM_GIT_COMMIT"]
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        # --no-optional-locks: a read-only status that never rewrites the index.
        status = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": "0.0001"}``; lists and None as JSON."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, prefix=f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, dict, type(None), bool)) else str(value)
    return out


# --------------------------------------------------------------------------------------- tracking
def log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    """Log ``params`` on run ``run_id``: keys cut to 250 characters and values to 6000 (MLflow's limits)."""
    batch = [Param(k[:250], v[:6000]) for k, v in params.items()]
    for start in range(0, len(batch), 100):  # log_batch takes at most 100 params per call
        client.log_batch(run_id, params=batch[start : start + 100], synchronous=True)


class MlflowCallback:
    """Loop callback sending rank-0 step and eval metrics to one MLflow run.

    Holds only strings until first use, so it pickles into Ray Train workers (the client is built lazily).
    Metrics are buffered and sent in batches of ``flush_every`` steps, on every evaluation and at the end.
    """

    def __init__(self, tracking_uri: str, run_id: str, *, flush_every: int = 20) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.flush_every = flush_every
        self._client: MlflowClient | None = None
        self._buffer: list[Metric] = []

    def __getstate__(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id, "flush_every": self.flush_every}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["tracking_uri"], state["run_id"], flush_every=state["flush_every"])

    def on_step(self, step: int, metrics: dict[str, Any]) -> None:
        self._add(step, metrics, prefix="")
        if len({m.step for m in self._buffer}) >= self.flush_every:
            self.flush()

    def on_eval(self, step: int, metrics: dict[str, Any]) -> None:
        self._add(step, metrics, prefix="")
        self.flush()

    def on_checkpoint(self, step: int, path: Any, metrics: dict[str, Any]) -> None:
        self.flush()

    def on_fit_end(self, result: Any) -> None:
        self.flush()

    def _add(self, step: int, metrics: dict[str, Any], *, prefix: str) -> None:
        now = int(time.time() * 1000)
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            self._buffer.append(Metric(_metric_key(prefix + key), float(value), now, int(step)))

    def flush(self) -> None:
        if not self._buffer:
            return
        if self._client is None:
            self._client = client_for(self.tracking_uri)
        # log_batch takes at most 1000 metrics per call.
        for start in range(0, len(self._buffer), 1000):
            self._client.log_batch(self.run_id, metrics=self._buffer[start : start + 1000], synchronous=True)
        self._buffer = []


def _metric_key(key: str) -> str:
    # MLflow accepts letters, digits, "_-./ " in names; anything else becomes "_".
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


@dataclass
class TrackedRun:
    """An open MLflow run (what ``tracking`` yields)."""

    client: MlflowClient
    run_id: str
    experiment_id: str
    tracking_uri: str
    tags: dict[str, str]

    def callback(self) -> MlflowCallback:
        return MlflowCallback(self.tracking_uri, self.run_id)

    def log_metrics(self, metrics: dict[str, Any], *, prefix: str = "", step: int = 0) -> None:
        cb = self.callback()
        cb._add(step, metrics, prefix=prefix)
        cb.flush()

    def log_model(self, model_dir: str | Path) -> str:
        """Upload a saved model folder as artifact ``model``; returns its artifact URI."""
        self.client.log_artifacts(self.run_id, str(model_dir), MODEL_ARTIFACT)
        return f"{self.client.get_run(self.run_id).info.artifact_uri}/{MODEL_ARTIFACT}"

    def log_report(self, report_dir: str | Path, metrics: dict[str, Any]) -> None:
        """Upload an eval report folder as artifact ``eval_report`` and its flat metrics as ``eval.*``."""
        self.client.log_artifacts(self.run_id, str(report_dir), REPORT_ARTIFACT)
        self.log_metrics(metrics, prefix="eval.")


@contextlib.contextmanager
def tracking(cfg: Config, *, run_name: str | None = None) -> Iterator[TrackedRun]:
    """Open one MLflow run for a training: config as params, lineage tags; FINISHED or FAILED on exit."""
    client = client_for(cfg.mlflow.tracking_uri)
    experiment_id = ensure_experiment(client, cfg.mlflow)
    tags = {
        "data_fingerprint": source_fingerprint(cfg.data),
        "data_source": cfg.data.train_path or "synthetic",
        "git_commit": git_commit(),
        "base_model": cfg.model.backbone,
        "arch": cfg.model.arch,
        "loss": cfg.loss.name,
        "mlflow.user": user_name(),
    }
    run = client.create_run(experiment_id, tags=tags, run_name=run_name or cfg.ray.run_name)
    run_id = run.info.run_id
    log_params(client, run_id, flatten(cfg.to_dict()))
    client.log_dict(run_id, cfg.to_dict(), "config.json")
    log.info("MLflow run %s in experiment %s (%s)", run_id, cfg.mlflow.experiment, cfg.mlflow.tracking_uri)
    try:
        yield TrackedRun(client, run_id, experiment_id, absolute_uri(cfg.mlflow.tracking_uri), tags)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


def user_name(who: str | None = None) -> str:
    """``who`` when given, else the login name of this process ("unknown" where there is none)."""
    if who:
        return who
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
