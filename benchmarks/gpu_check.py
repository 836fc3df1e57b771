"""GPU check: the local loop, Ray Train DDP and Ray Train FSDP2 on one device, bf16, one JSON line each.

    python benchmarks/gpu_check.py --backbone /models/some-hf-dir --data ../shared/data/hh-rlhf-harmless
    python benchmarks/gpu_check.py --backbone /tmp/tiny_bert --data pairs.jsonl --device cpu --pairs 64   # CPU smoke

Stages (each prints one JSON line; a failed stage prints ``"ok": false`` with the error and the next one runs):
  1. ``local``: ``RewardModelTrainer`` in this process on ``--device``, ``--precision`` (default bf16).
  2. ``ray_ddp``: ``train_ray`` with 1 worker (``ray.use_gpu=true`` on CUDA), ``ray.strategy=ddp``.
  3. ``ray_fsdp``: the same with ``ray.strategy=fsdp``: FSDP2 ``fully_shard`` at world size 1 (NCCL cannot put two
     ranks on one GPU), bf16 blocks through ``MixedPrecisionPolicy``; a smoke test that the sharded path, its
     gathered checkpoint and the exported model work on CUDA. Its pairs/s is not a scaling figure.

``pairs_per_s`` is the loop's own measure (training steps only, the first CUDA steps included); ``wall_s`` adds
model build, data loading, Ray start, evaluation and saving. MLflow is off (``mlflow.enabled=false``): neither
the loop nor ``train_ray`` imports mlflow then, so it runs where mlflow is not installed (the first line says
whether it is importable). Everything is written to a temporary folder, removed at the end unless ``--keep``.
Sized for well under 4 minutes on an H200 with a MiniLM-sized backbone at the defaults (2,000 pairs); scale
``--pairs`` down for multi-billion-parameter backbones.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# Ray workers inherit the environment: let them import this checkout's raw_rm, offline, without telemetry.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
for key, value in {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    "RAY_DEDUP_LOGS": "0",
}.items():
    os.environ.setdefault(key, value)

STAGES = ("local", "ray_ddp", "ray_fsdp")
DATA_FILES = ("pairs.jsonl.gz", "pairs.jsonl", "*.jsonl.gz", "*.jsonl", "*.parquet")


def data_file(path: str) -> str:
    """A data file: ``path`` itself, or inside a folder like ../shared/data/hh-rlhf-harmless its pairs file."""
    p = Path(path).resolve()
    if not p.exists():
        raise SystemExit(f"--data {path}: no such file or folder")
    if p.is_file():
        return str(p)
    for pattern in DATA_FILES:
        found = sorted(p.glob(pattern))
        if found:
            return str(found[0])
    return str(p)  # a `datasets.save_to_disk` folder: read_records opens it


def build_config(args: argparse.Namespace, stage: str, workdir: Path) -> Any:
    from raw_rm.config import Config, apply_overrides

    backbone = str(Path(args.backbone).resolve()) if Path(args.backbone).exists() else args.backbone
    return apply_overrides(
        Config(),
        {
            "data.train_path": data_file(args.data),
            "data.limit": args.pairs,
            "data.val_fraction": args.val_fraction,
            "data.max_len_tokens": args.max_len_tokens,
            "model.arch": "concat",
            "model.backbone": backbone,
            "train.epochs": 1,
            "train.batch_size": args.batch_size,
            "train.lr": 2e-5,
            "train.warmup_ratio": 0.05,
            "train.precision": args.precision,
            "train.seed": 0,
            "train.progress": False,
            "train.log_every_steps": 20,
            "train.checkpoint_every_steps": 10**9,
            "train.output_dir": str(workdir / stage),
            "mlflow.enabled": False,
            "ray.num_workers": 1,
            "ray.use_gpu": args.device == "cuda",
            "ray.cpus_per_worker": args.cpus_per_worker,
            "ray.strategy": "fsdp" if stage == "ray_fsdp" else "ddp",
        },
    )


def run_local(cfg: Any, device: str) -> dict[str, Any]:
    from raw_rm.data import load_train_val
    from raw_rm.models import build_model
    from raw_rm.runtime import seed_everything
    from raw_rm.train.loop import RewardModelTrainer

    seed_everything(cfg.train.seed)
    model, tokenizer = build_model(cfg.model)
    train, val, _ = load_train_val(cfg, tokenizer=tokenizer)
    trainer = RewardModelTrainer(cfg, model, tokenizer, train, val, device=device)
    fit = trainer.fit()
    return {"precision": trainer.precision, "device": str(trainer.device), "n_train": len(train), "fit": fit}


def run_ray(cfg: Any) -> dict[str, Any]:
    from raw_rm.train.ray_train import train_ray

    result = train_ray(cfg)
    return {"fit": result.fit}


def run_stage(args: argparse.Namespace, stage: str, workdir: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    line: dict[str, Any] = {"stage": stage}
    try:
        cfg = build_config(args, stage, workdir)
        out = run_local(cfg, args.device) if stage == "local" else run_ray(cfg)
        fit = out.pop("fit")
        line.update(ok=True, **{k: v for k, v in out.items() if v is not None})
        line.update(
            pairs_per_s=round(fit.pairs_per_s, 2),
            tokens_per_s=round(fit.tokens_per_s, 1),
            steps=fit.steps,
            train_time_s=round(fit.train_time_s, 2),
            val_accuracy=fit.final_metrics.get("val_accuracy"),
            val_loss=fit.final_metrics.get("val_loss"),
            precision=line.get("precision", cfg.train.precision),
            strategy=None if stage == "local" else cfg.ray.strategy,
        )
    except Exception as exc:  # noqa: BLE001 - one stage failing must not hide the others' results
        line.update(ok=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=8))
    line["wall_s"] = round(time.perf_counter() - t0, 1)
    line["mlflow_imported"] = "mlflow" in sys.modules
    return line


def machine_line(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    facts: dict[str, Any] = {
        "stage": "machine",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "device": args.device,
        "mlflow_installed": importlib.util.find_spec("mlflow") is not None,
    }
    if torch.cuda.is_available():
        facts.update(
            gpu=torch.cuda.get_device_name(0),
            gpus=torch.cuda.device_count(),
            bf16_supported=torch.cuda.is_bf16_supported(),
            cuda=torch.version.cuda,
        )
    try:
        import ray

        facts["ray"] = ray.__version__
    except ImportError:
        facts["ray"] = None
    return facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backbone", required=True, help="a local Hugging Face model folder (or a raw_rm backbone name)"
    )
    parser.add_argument(
        "--data", required=True, help="a pairs file (.jsonl, .jsonl.gz, .parquet) or a folder holding one"
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--precision", choices=("bf16", "fp32", "auto"), default="bf16")
    parser.add_argument("--pairs", type=int, default=2000, help="records read (validation split off by prompt hash)")
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-len-tokens", type=int, default=256)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--workdir", default=None, help="where runs are written (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"--device cuda: torch sees no CUDA device (torch {torch.__version__}); use --device cpu for a smoke run"
        )
    print(json.dumps(machine_line(args)), flush=True)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="raw_rm_gpu_check_"))
    workdir.mkdir(parents=True, exist_ok=True)
    failed = 0
    try:
        for stage in args.stages:
            if stage.startswith("ray"):
                _start_ray(args)
            line = run_stage(args, stage, workdir)
            failed += not line["ok"]
            print(json.dumps(line), flush=True)
    finally:
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except ImportError:
            pass
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


def _start_ray(args: argparse.Namespace) -> None:
    """A local Ray sized for one worker (GPUs are detected), or the cluster $RAY_ADDRESS names."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(num_cpus=max(2, int(args.cpus_per_worker) + 1), include_dashboard=False, log_to_driver=False)


if __name__ == "__main__":
    sys.exit(main())
