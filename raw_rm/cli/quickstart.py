"""`raw-rm quickstart`: from nothing to a served, uncertainty-aware reward model in one command (edge).

    raw-rm quickstart                                   # synthetic default, packaged MiniLM, local Ray + SQLite MLflow
    raw-rm quickstart --data harmless.jsonl.gz
    raw-rm quickstart --address auto --tracking-uri http://mlflow:5000 --gpu   # the same on a cluster

Stages, each timed: data -> Tune search -> ensemble of the best config (members trained side by side on Ray)
-> evaluation with calibration and the report -> MLflow registration and promotion to champion -> Ray Serve
deployment of the champion by URI -> example requests scored with uncertainty -> where to look next.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raw_rm.cli.common import add_config_args, config_from_args
from raw_rm.config import DEFAULT_CONFIG, Config, ServeConfig, SyntheticConfig, apply_overrides
from raw_rm.data import load_train_val
from raw_rm.data.synthetic import generate
from raw_rm.serve.client import RewardClient
from raw_rm.serve.launch import deploy

QUICKSTART_CONFIG = DEFAULT_CONFIG.with_name("quickstart.yaml")
STAGES = 7


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser, flags=("data", "model", "address", "tracking_uri", "output", "workers"))
    parser.set_defaults(config=str(QUICKSTART_CONFIG))
    parser.add_argument("--trials", type=int, default=None, help="Tune trials (shorthand for tune.num_samples)")
    parser.add_argument("--members", type=int, default=None, help="ensemble members (shorthand for ensemble.members)")
    parser.add_argument(
        "--tune-epochs",
        type=int,
        default=1,
        help="epochs per Tune trial: the search ranks configs on a shorter budget than the ensemble trains on",
    )
    parser.add_argument("--port", type=int, default=8000, help="Serve HTTP port on 127.0.0.1")
    parser.add_argument("--keep-serving", action="store_true", help="leave the endpoint up until Ctrl-C")


@dataclass
class Timeline:
    """Stage timings, printed as they happen and once more in the summary."""

    started: float = field(default_factory=time.perf_counter)
    rows: list[tuple[str, float, str]] = field(default_factory=list)
    _t: float = 0.0
    _name: str = ""

    def begin(self, index: int, name: str) -> None:
        self._t, self._name = time.perf_counter(), name
        print(f"\n[{index}/{STAGES}] {name} ...", flush=True)

    def end(self, detail: str) -> None:
        took = time.perf_counter() - self._t
        self.rows.append((self._name, took, detail))
        print(f"      done in {took:.0f} s: {detail}", flush=True)

    @property
    def total_s(self) -> float:
        return time.perf_counter() - self.started


def _quickstart_config(args: argparse.Namespace) -> Config:
    if args.trials is not None:
        args.overrides = [f"tune.num_samples={args.trials}", *args.overrides]
    if args.members is not None:
        args.overrides = [f"ensemble.members={args.members}", *args.overrides]
    cfg = config_from_args(args)
    out = Path(cfg.train.output_dir).resolve()
    return apply_overrides(
        cfg,
        {
            "train.output_dir": str(out),
            "tune.name": f"quickstart-{time.strftime('%Y%m%d-%H%M%S')}",
            "tune.storage_path": str(out / "tune"),
        },
    )


def run(args: argparse.Namespace) -> int:
    for key, value in (
        ("RAY_USAGE_STATS_ENABLED", "0"),
        ("MLFLOW_DISABLE_TELEMETRY", "true"),
        ("HF_HUB_OFFLINE", "1"),
        ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
        ("TOKENIZERS_PARALLELISM", "false"),
    ):
        os.environ.setdefault(key, value)
    cfg = _quickstart_config(args)
    timeline = Timeline()
    print(
        f"raw_rm quickstart -> {cfg.train.output_dir}  (MLflow {cfg.mlflow.tracking_uri}, "
        f"Ray {cfg.ray.address or 'local, in-process'}, {'GPU' if cfg.ray.use_gpu else 'CPU'})"
    )

    timeline.begin(1, "data")
    data_detail, bayes = _describe_data(cfg)
    timeline.end(data_detail)

    timeline.begin(
        2, f"Ray Tune search ({cfg.tune.num_samples} trials of {args.tune_epochs} epoch(s), ASHA on {cfg.tune.metric})"
    )
    # torch, Ray and MLflow (and the raw_rm modules that import them) are imported inside functions: `raw-rm quickstart
    # --help` loads this module
    from raw_rm.tune.driver import run_tune

    outcome = run_tune(apply_overrides(cfg, {"mlflow.register": False, "train.epochs": args.tune_epochs}))
    if outcome.best is None:
        print("no Tune trial completed; see the errors above", file=sys.stderr)
        return 1
    best_params = {k: v for k, v in outcome.best.params.items() if v is not None}
    timeline.end(f"best {outcome.metric}={outcome.best.value:.4f} with {best_params}")

    timeline.begin(3, f"ensemble of {cfg.ensemble.members} members of the best config, trained side by side on Ray")
    from raw_rm.tracking.ensemble import register_ensemble
    from raw_rm.train.ensemble import train_ensemble

    ens_cfg = apply_overrides(cfg, {**best_params, "mlflow.register": True})
    ensemble = train_ensemble(ens_cfg, parallel=True)
    if ens_cfg.mlflow.enabled:
        ensemble = register_ensemble(ens_cfg, ensemble)
    member_acc = [m.get("metrics", {}).get("val_accuracy") for m in ensemble.members]
    timeline.end(
        f"{ensemble.ensemble_dir}; member val accuracy {', '.join(f'{a:.3f}' for a in member_acc if a is not None)}"
    )

    timeline.begin(4, "evaluation with calibration (report) and registration in MLflow")
    metrics = getattr(ensemble, "metrics", {}) or {}
    version = getattr(ensemble, "model_version", None)
    report_dir = _write_report(cfg, getattr(ensemble, "mlflow_run_id", None), Path(ensemble.ensemble_dir))
    acc_text = f"accuracy {metrics.get('accuracy', float('nan')):.3f}"
    if bayes is not None:
        acc_text += f" (Bayes {bayes:.3f}: {metrics.get('accuracy', 0.0) / bayes:.0%} of the best achievable)"
    timeline.end(
        f"{acc_text}, ECE after temperature {metrics.get('ece', float('nan')):.3f}; "
        f"registered {cfg.mlflow.registered_model} v{version} as candidate; report {report_dir}/index.html"
    )

    timeline.begin(5, "promotion to champion through the gate")
    promotion, alias = _promote(cfg, version)
    timeline.end(promotion)

    model_uri = f"models:/{cfg.mlflow.registered_model}@{alias}"
    timeline.begin(6, f"Ray Serve deployment of {model_uri}")
    serve_cfg = ServeConfig(models=[model_uri], tracking_uri=cfg.mlflow.tracking_uri, port=args.port, reward="lcb")
    url = _deploy(serve_cfg)
    timeline.end(f"listening on {url}")

    timeline.begin(7, "example requests scored with uncertainty")
    examples = _example_requests(url, cfg)
    timeline.end(f"{len(examples)} items scored")

    _print_summary(timeline, cfg, url, report_dir, model_uri, metrics, bayes, examples)
    if args.keep_serving:
        print(f"\nserving at {url} until Ctrl-C")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    from ray import serve

    serve.shutdown()
    return 0


def _describe_data(cfg: Config) -> tuple[str, float | None]:
    train, val, report = load_train_val(cfg)
    detail = f"{len(train)} training / {len(val)} validation records"
    bayes = None
    if cfg.data.train_path is None:
        bayes = generate(cfg.data.synthetic).bayes_accuracy
        detail += f" (synthetic, known latent reward; Bayes accuracy {bayes:.3f})"
    else:
        detail += f" from {cfg.data.train_path}; {report.summary()}"
    return detail, bayes


def _write_report(cfg: Config, run_id: str | None, model_dir: Path) -> Path:
    """The eval report (plots, HTML) that the ensemble's MLflow run logged, copied into the run folder."""
    from raw_rm.eval.gate import evaluate_for_gate
    from raw_rm.tracking.runs import REPORT_ARTIFACT, client_for

    report_dir = Path(cfg.train.output_dir) / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    if run_id is not None:
        client_for(cfg.mlflow.tracking_uri).download_artifacts(run_id, REPORT_ARTIFACT, str(report_dir))
        nested = report_dir / REPORT_ARTIFACT  # download_artifacts keeps the artifact folder's name
        return nested if nested.exists() else report_dir
    evaluate_for_gate(cfg, model_dir, report_dir=report_dir)  # MLflow disabled: evaluate here instead
    return report_dir


def _promote(cfg: Config, version: str | None) -> tuple[str, str]:
    """Try to make ``version`` the champion; returns (what happened, the alias to serve)."""
    from raw_rm.tracking.registry import PromotionRefused, RegistryError, promote

    if version is None:
        return "nothing registered (mlflow.register is off)", "candidate"
    try:
        decision = promote(
            cfg.mlflow.registered_model, version, cfg.gate, reason="quickstart", tracking_uri=cfg.mlflow.tracking_uri
        )
    except PromotionRefused as exc:
        if exc.decision.champion is not None:
            return (
                f"gate refused v{version}: {'; '.join(exc.decision.reasons)}; champion stays v{exc.decision.champion}"
            ), "champion"
        return (
            f"gate refused v{version}: {'; '.join(exc.decision.reasons)}; there is no champion yet, "
            "so the candidate is served (promote it with `raw-rm registry promote` once it passes)"
        ), "candidate"
    except RegistryError as exc:
        return str(exc), "champion"
    previous = (
        f" (previous champion v{decision.champion}, kept for `raw-rm registry rollback`)" if decision.champion else ""
    )
    return f"v{version} is champion{previous}", "champion"


def _deploy(serve_cfg: ServeConfig) -> str:
    url = deploy(serve_cfg).url
    RewardClient(url).score([("ping", "pong")])  # the first request waits until every member is up
    return url


def _example_requests(url: str, cfg: Config) -> list[dict[str, Any]]:
    client = RewardClient(url)
    pairs = generate(SyntheticConfig(n_prompts=4, seed=cfg.data.synthetic.seed + 999)).pairs[:3]
    items = [(p.prompt, r) for p in pairs for r in (p.chosen, p.rejected)]
    results = client.score(items)
    openrlhf = client.get_reward([p + " " + r for p, r in items[:2]], [p for p, _ in items[:2]])
    rows = []
    for (prompt, response), result in zip(items, results):
        rows.append(
            {"prompt": prompt, "response": response, **{k: result[k] for k in ("reward", "mean", "std", "lcb")}}
        )
    rows.append({"openrlhf_get_reward": openrlhf})
    return rows


def _print_summary(
    timeline: Timeline,
    cfg: Config,
    url: str,
    report_dir: Path,
    model_uri: str,
    metrics: dict[str, Any],
    bayes: float | None,
    examples: list[dict[str, Any]],
) -> None:
    print("\n" + "=" * 100)
    print(f"raw_rm quickstart finished in {timeline.total_s / 60:.1f} min")
    for name, took, _ in timeline.rows:
        print(f"  {took:6.0f} s  {name}")
    print("\nexample requests (POST /score; reward = mean - k*std, the uncertainty-penalised lower bound):")
    print(f"  {'prompt':<44} {'response':<36} {'reward':>7} {'mean':>7} {'std':>6}")
    for row in examples[:-1]:
        print(
            f"  {_clip(row['prompt'], 44):<44} {_clip(row['response'], 36):<36} "
            f"{row['reward']:7.3f} {row['mean']:7.3f} {row['std']:6.3f}"
        )
    print(f"  POST /get_reward (OpenRLHF) -> {json.dumps(examples[-1]['openrlhf_get_reward'])[:160]}...")
    print("\nwhere to look next:")
    print(f"  report:    {report_dir / 'index.html'}")
    print(f"  MLflow:    mlflow ui --backend-store-uri {cfg.mlflow.tracking_uri}")
    print(
        f"  registry:  raw-rm registry show {cfg.mlflow.registered_model} mlflow.tracking_uri={cfg.mlflow.tracking_uri}"
    )
    print(
        f"  endpoint:  {url}/get_reward (stopped now; --keep-serving leaves it up, or raw-rm serve --model {model_uri})"
    )
    if bayes is not None and "accuracy" in metrics:
        print(f"  accuracy:  {metrics['accuracy']:.3f} vs Bayes {bayes:.3f}")


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
