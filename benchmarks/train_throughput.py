"""Training throughput: raw_rm's loop vs TRL's RewardTrainer on the same model, data and settings.

Same model (the packaged all-MiniLM-L6-v2 with a fresh 1-output head), same pairs (HH-RLHF harmless, split
held-out by prompt hash), same max length, batch size, learning rate, schedule and epochs, same threads. Each
contender runs in its own subprocess so that peak RSS is its own (for Ray Train rows: the largest worker's, with
the driver's in its own column). Prints machine facts and a side-by-side table
with ratios against TRL; the lever variants show what length grouping and bf16 each give.

    python benchmarks/train_throughput.py                       # all contenders, 1 epoch
    python benchmarks/train_throughput.py --contenders raw_rm trl --limit 600

Contenders are plain functions in CONTENDERS (name -> fn(setup) -> result dict); Ray Train variants plug in the
same way (``CONTENDERS["raw_rm_ray2"] = fn``), e.g. from benchmarks written by the Ray Train code.

TRL notes: TRL drops pairs whose chosen or rejected side is longer than max_length (counted and printed);
it is given pre-tokenised ids (``prompt + response`` as one string with the tokenizer's special tokens, exactly
its own tokenisation, minus an EOS the BERT tokenizer does not have). TRL runs with gradient checkpointing off
(its default is on, which only slows a model this small) and fp32 unless --trl-bf16. Held-out accuracy of both
is measured on all held-out pairs; TRL's model scores ``prompt + response`` keeping the last max_length tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_machine.py
from _machine import machine_facts  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hh-rlhf-harmless" / "pairs.jsonl.gz"


@dataclass
class Setup:
    data: str = str(DEFAULT_DATA)
    max_len_tokens: int = 256
    batch_size: int = 16
    lr: float = 5e-5
    epochs: int = 1
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    threads: int = 2
    seed: int = 0
    val_fraction: float = 0.2
    limit: int | None = None
    trl_bf16: bool = False
    workdir: str = "/tmp/raw_rm_bench"


def load_split(setup: Setup) -> tuple[list, list]:
    from raw_rm.data.readers import read_records
    from raw_rm.data.splits import split_by_prompt

    loaded = read_records(setup.data, limit=setup.limit)
    return split_by_prompt(loaded.records, setup.val_fraction, "raw_rm")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# ------------------------------------------------------------------------------------------ raw_rm
def _raw_rm(
    setup: Setup,
    *,
    precision: str,
    group_by_length: bool,
    pin_malloc_threshold: bool = True,
    train_layers: int | None = None,
) -> dict[str, Any]:
    import torch

    from raw_rm.config import Config, DataConfig, ModelConfig, TrainConfig
    from raw_rm.inference import RewardModelInference
    from raw_rm.models import build_model
    from raw_rm.runtime import seed_everything
    from raw_rm.train.loop import RewardModelTrainer

    torch.set_num_threads(setup.threads)
    train, val = load_split(setup)
    cfg = Config(
        data=DataConfig(max_len_tokens=setup.max_len_tokens),
        model=ModelConfig(
            arch="concat", backbone="minilm", backbone_dropout=0.0, train_layers=train_layers
        ),  # TRL disables dropout too
        train=TrainConfig(
            epochs=setup.epochs,
            batch_size=setup.batch_size,
            lr=setup.lr,
            warmup_ratio=setup.warmup_ratio,
            weight_decay=setup.weight_decay,
            schedule="linear",
            precision=precision,
            seed=setup.seed,
            progress=False,
            output_dir=f"{setup.workdir}/raw_rm",
            log_every_steps=20,
            num_threads=setup.threads,
            checkpoint_every_steps=10**9,
            pin_malloc_threshold=pin_malloc_threshold,
        ),
    )
    seed_everything(setup.seed)
    model, tokenizer = build_model(cfg.model)
    trainer = RewardModelTrainer(cfg, model, tokenizer, train, [])  # no validation inside the timed fit
    if not group_by_length:
        trainer.sampler = RandomBatches(len(train), setup.batch_size, seed=setup.seed)
    result = trainer.fit()
    rm = RewardModelInference(
        model, tokenizer=tokenizer, max_len_tokens=setup.max_len_tokens, batch_size=32, cache_size=0
    )
    accuracy = _accuracy(rm.batch_predict, val)
    return {
        "pairs_per_s": result.pairs_per_s,
        "tokens_per_s": result.tokens_per_s,
        "train_time_s": result.train_time_s,
        "n_train_pairs": len(train),
        "n_dropped": 0,
        "n_truncated_seqs": result.n_truncated,
        "padding_fraction": result.padding_fraction,
        "accuracy": accuracy,
        "n_val": len(val),
        "precision": trainer.precision,
        "peak_rss_mb": peak_rss_mb(),
        "cpu_s": result.train_cpu_s,
        "pairs_per_cpu_s": len(train) * setup.epochs / result.train_cpu_s,
    }


class RandomBatches:
    """Plain shuffled batches (no length grouping): the lever-off baseline for raw_rm."""

    def __init__(self, n: int, batch_size: int, *, seed: int) -> None:
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        order = list(range(self.n))
        random.Random(self.seed * 1000 + self.epoch).shuffle(order)
        return iter([order[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)])

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch}


def _accuracy(score: Callable[[list[str], list[str]], Any], pairs: list) -> float:
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    rewards = score(prompts, responses)
    n = len(pairs)
    return float(sum(rewards[i] > rewards[n + i] for i in range(n)) / n)


# --------------------------------------------------------------------------------------------- TRL
def run_trl(setup: Setup) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from raw_rm.models.backbones import packaged_minilm_path
    from raw_rm.runtime import seed_everything

    torch.set_num_threads(setup.threads)
    train, val = load_split(setup)
    path = packaged_minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    seed_everything(setup.seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    rows = {
        "chosen_ids": [tokenizer(p.prompt + p.chosen)["input_ids"] for p in train],
        "rejected_ids": [tokenizer(p.prompt + p.rejected)["input_ids"] for p in train],
    }
    kept = [
        i
        for i in range(len(train))
        if max(len(rows["chosen_ids"][i]), len(rows["rejected_ids"][i])) <= setup.max_len_tokens
    ]
    n_tokens = sum(len(rows["chosen_ids"][i]) + len(rows["rejected_ids"][i]) for i in kept) * setup.epochs
    args = RewardConfig(
        output_dir=f"{setup.workdir}/trl",
        per_device_train_batch_size=setup.batch_size,
        learning_rate=setup.lr,
        num_train_epochs=setup.epochs,
        warmup_steps=setup.warmup_ratio,
        weight_decay=setup.weight_decay,
        lr_scheduler_type="linear",
        max_length=setup.max_len_tokens,
        gradient_checkpointing=False,
        bf16=setup.trl_bf16,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=50,
        disable_tqdm=True,
        seed=setup.seed,
        dataloader_num_workers=0,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_dict(rows), processing_class=tokenizer)
    n_kept = len(trainer.train_dataset)
    t0, c0 = time.perf_counter(), time.process_time()
    output = trainer.train()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    train_time = float(output.metrics.get("train_runtime", wall))
    model.eval()

    @torch.no_grad()
    def score(prompts: list[str], responses: list[str]) -> list[float]:
        out = []
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(responses[i]))
        result = [0.0] * len(prompts)
        for start in range(0, len(order), 32):
            idx = order[start : start + 32]
            ids = []
            for i in idx:  # TRL's own format, keeping the end (never ties from a cut-off last turn)
                body = tokenizer(prompts[i] + responses[i], add_special_tokens=False)["input_ids"]
                ids.append([tokenizer.cls_token_id] + body[-(setup.max_len_tokens - 2) :] + [tokenizer.sep_token_id])
            width = max(len(x) for x in ids)
            input_ids = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x in ids])
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
            logits = model(input_ids=input_ids, attention_mask=mask).logits.squeeze(-1).tolist()
            for j, i in enumerate(idx):
                result[i] = logits[j]
        out = result
        return out

    accuracy = _accuracy(score, val)
    return {
        "pairs_per_s": n_kept * setup.epochs / train_time,
        "tokens_per_s": n_tokens / train_time,
        "train_time_s": train_time,
        "n_train_pairs": n_kept,
        "n_dropped": len(train) - n_kept,
        "n_truncated_seqs": 0,
        "padding_fraction": float("nan"),
        "accuracy": accuracy,
        "n_val": len(val),
        "precision": "bf16" if setup.trl_bf16 else "fp32",
        "peak_rss_mb": peak_rss_mb(),
        "cpu_s": cpu,
        "pairs_per_cpu_s": n_kept * setup.epochs / cpu,
    }


# ---------------------------------------------------------------------------------------- Ray Train
def _raw_rm_ray(setup: Setup, *, workers: int) -> dict[str, Any]:
    """The same loop under Ray Train (local Ray, gloo DDP) at the same global batch: batch_size / workers each.

    ``train_time_s`` and pairs/s are the loop's own step time (rank 0, all ranks' pairs); ``wall_s`` adds Ray's
    start, the worker group, data loading in every worker and the final model's trip through a checkpoint.
    """
    import ray

    from raw_rm.config import Config, apply_overrides
    from raw_rm.inference import RewardModelInference
    from raw_rm.runtime import resolve_precision
    from raw_rm.train.ray_train import train_ray

    if setup.batch_size % workers:
        raise ValueError(f"batch_size {setup.batch_size} does not split over {workers} workers")
    # Ray's defaults, as a first run gets them: 1 CPU reserved per worker, torch threads left to raw_rm
    # (raw_rm.cpu_threads sizes them from the usable CPUs; Ray alone would set OMP_NUM_THREADS=1)
    overrides = {
        "data.train_path": setup.data,
        "data.max_len_tokens": setup.max_len_tokens,
        "data.limit": setup.limit,
        "data.val_fraction": setup.val_fraction,
        "data.split_seed": "raw_rm",
        "model.arch": "concat",
        "model.backbone": "minilm",
        "train.epochs": setup.epochs,
        "train.batch_size": setup.batch_size // workers,
        "train.lr": setup.lr,
        "train.warmup_ratio": setup.warmup_ratio,
        "train.weight_decay": setup.weight_decay,
        "train.schedule": "linear",
        "train.precision": "auto",
        "train.seed": setup.seed,
        "train.progress": False,
        "train.log_every_steps": 20,
        "train.checkpoint_every_steps": 10**9,
        "train.output_dir": f"{setup.workdir}/raw_rm_ray{workers}",
        "mlflow.enabled": False,
        "ray.num_workers": workers,
    }
    cfg = apply_overrides(Config(), overrides)
    t0 = time.perf_counter()
    ray.init(num_cpus=setup.threads, include_dashboard=False, log_to_driver=False)
    with WorkerMemory() as workers_mem:
        result = train_ray(cfg)
    wall = time.perf_counter() - t0
    ray.shutdown()
    train, val = load_split(setup)
    rm = RewardModelInference(result.model_dir, max_len_tokens=setup.max_len_tokens, batch_size=32, cache_size=0)
    fit = result.fit
    return {
        "pairs_per_s": fit.pairs_per_s,
        "tokens_per_s": fit.tokens_per_s,
        "train_time_s": fit.train_time_s,
        "wall_s": wall,
        "n_train_pairs": len(train),
        "n_dropped": 0,
        "n_truncated_seqs": fit.n_truncated,
        "padding_fraction": fit.padding_fraction,
        "accuracy": _accuracy(rm.batch_predict, val),
        "n_val": len(val),
        "precision": resolve_precision("auto", "cpu"),
        "peak_rss_mb": max(workers_mem.peaks_mb.values(), default=0.0),
        "driver_peak_rss_mb": peak_rss_mb(),
        "worker_peak_rss_mb": sorted(workers_mem.peaks_mb.values()),
    }


class WorkerMemory:
    """Peak resident memory (VmHWM) of each Ray Train worker process, read from /proc while a run lasts (Linux).

    VmHWM is the kernel's own high-water mark, so sampling every ``interval_s`` misses only growth in a worker's
    last interval. ``peaks_mb``: pid -> MB.
    """

    def __init__(self, interval_s: float = 0.5, marker: str = "TrainWorker") -> None:
        import threading

        self.interval_s, self.marker = interval_s, marker
        self.peaks_mb: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval_s):
                return

    def sample(self) -> None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if self.marker.encode() not in (entry / "cmdline").read_bytes():
                    continue
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        mb = int(line.split()[1]) / 1024.0
                        self.peaks_mb[int(entry.name)] = max(mb, self.peaks_mb.get(int(entry.name), 0.0))
            except (OSError, ValueError):  # the process ended meanwhile
                continue


CONTENDERS: dict[str, Callable[[Setup], dict[str, Any]]] = {
    "trl": run_trl,
    "raw_rm": lambda s: _raw_rm(s, precision="auto", group_by_length=True),  # every lever
    "raw_rm_fp32": lambda s: _raw_rm(s, precision="fp32", group_by_length=True),  # bf16 off
    "raw_rm_fp32_nogroup": lambda s: _raw_rm(s, precision="fp32", group_by_length=False),  # bf16 and grouping off
    "raw_rm_nopin": lambda s: _raw_rm(
        s, precision="auto", group_by_length=True, pin_malloc_threshold=False
    ),  # glibc heap left alone
    "raw_rm_top2": lambda s: _raw_rm(
        s, precision="auto", group_by_length=True, train_layers=2
    ),  # last-layers-only (ensemble members)
    "raw_rm_ray1": lambda s: _raw_rm_ray(s, workers=1),  # the Ray Train layer's cost: compare with raw_rm
    "raw_rm_ray2": lambda s: _raw_rm_ray(s, workers=2),  # 2 DDP workers, same global batch
}


# ------------------------------------------------------------------------------------------ driver
def run_one(name: str, setup: Setup) -> dict[str, Any]:
    """Run one contender in a fresh subprocess (own peak RSS); returns its result dict."""
    cmd = [sys.executable, __file__, "--child", name, "--setup", json.dumps(asdict(setup))]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.splitlines()[-15:])
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1][len("RESULT ") :])


def print_table(results: dict[str, dict[str, Any]], baseline: str = "trl") -> None:
    cols = [
        ("pairs/s", "pairs_per_s", "{:.2f}"),
        ("pairs/cpu-s", "pairs_per_cpu_s", "{:.2f}"),
        ("tokens/s", "tokens_per_s", "{:.0f}"),
        ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
        ("driver RSS MB", "driver_peak_rss_mb", "{:.0f}"),
        ("held-out acc", "accuracy", "{:.4f}"),
        ("train s", "train_time_s", "{:.1f}"),
        ("pairs", "n_train_pairs", "{}"),
        ("dropped", "n_dropped", "{}"),
        ("truncated seqs", "n_truncated_seqs", "{}"),
        ("padding", "padding_fraction", "{:.3f}"),
        ("dtype", "precision", "{}"),
    ]
    width = max(len(n) for n in results) + 2
    print("".ljust(width) + "".join(f"{c:>15}" for c, _, _ in cols))
    for name, r in results.items():
        if "error" in r:
            print(name.ljust(width) + "  ERROR " + r["error"].replace("\n", "\n    "))
            continue
        print(name.ljust(width) + "".join(f"{fmt.format(r[k]) if k in r else '-':>15}" for _, k, fmt in cols))
    base = results.get(baseline)
    if not base or "error" in base:
        return
    print(f"\nratios vs {baseline} (pairs/s, tokens/s: higher is better; RSS: lower is better; accuracy: points):")
    for name, r in results.items():
        if name == baseline or "error" in r:
            continue
        print(
            f"  {name:<{width}} pairs/s x{r['pairs_per_s'] / base['pairs_per_s']:.2f}  "
            + (
                f"pairs/cpu-s x{r['pairs_per_cpu_s'] / base['pairs_per_cpu_s']:.2f}  "
                if "pairs_per_cpu_s" in r and "pairs_per_cpu_s" in base
                else ""
            )
            + f"tokens/s x{r['tokens_per_s'] / base['tokens_per_s']:.2f}  RSS x{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}  "
            f"accuracy {100 * (r['accuracy'] - base['accuracy']):+.1f} points"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), help=f"any of {', '.join(CONTENDERS)}")
    for field_name, default in asdict(Setup()).items():
        flag = "--" + field_name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true")
        elif field_name == "limit":
            parser.add_argument(flag, type=int, default=None)
        else:
            parser.add_argument(flag, type=type(default), default=default)
    parser.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="also write machine facts, setup and results here (run_all.py reads it)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        setup = Setup(**json.loads(args.setup))
        result = CONTENDERS[args.child](setup)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    setup = Setup(**{k: getattr(args, k) for k in asdict(Setup())})
    unknown = [c for c in args.contenders if c not in CONTENDERS]
    if unknown:
        parser.error(f"unknown contenders {unknown}; known: {', '.join(CONTENDERS)}")
    if not Path(setup.data).exists():
        parser.error(f"--data {setup.data}: no such file")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine_facts(threads=setup.threads).items()))
    print("setup: " + ", ".join(f"{k}={v}" for k, v in asdict(setup).items()))
    results = {}
    for name in args.contenders:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = run_one(name, setup)
        print(f"  {name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
    print()
    print_table(results, baseline="trl" if "trl" in results else args.contenders[0])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {"machine": machine_facts(threads=setup.threads), "setup": asdict(setup), "results": results}, indent=1
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
