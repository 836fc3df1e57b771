"""Decoder reward-model training speed and memory per lever: padded vs packed, checkpointing, LoRA (and TRL).

    python benchmarks/gpu_scale.py                          # on a GPU: ~0.5B and ~1.5B Qwen2.5 shapes, bf16
    python benchmarks/gpu_scale.py --sizes qwen2.5-7b --combos lora+ckpt+packed     # the 7B-on-one-GPU check
    python benchmarks/gpu_scale.py --cpu-smoke              # on CPU: a tiny Qwen2 shape, fp32 (checks it runs)

Models are random-initialised from the shapes in ``raw_rm.plan.KNOWN_SHAPES`` (speed needs no weights). Batches
are pairs whose token lengths are real: HH-RLHF harmless dialogues (``--data``) and QA-Feedback's long prompts
(question + passages, ``--long-data``), tokenised with the packaged tokenizer, filled with random ids. Each lever
combination trains ``--steps`` optimiser steps after ``--warmup``; printed per combination: real tokens/s, model
FLOPs utilisation (6 x trainable-path parameters x tokens, plus attention 12 x layers x width x sequence length
per token, against the GPU's dense bf16 peak), peak GPU memory and what ``raw-rm plan`` predicted for it. With TRL
installed (``pip install -e .[bench]``) its ``RewardTrainer`` trains the same model, batches and steps beside it.

Targets (issue: one H200): raw_rm >= 1.5x TRL tokens/s at <= TRL's peak memory; MFU >= 40% at 1.5B; packing
>= 1.3x padded at the HH lengths; a 7B shape trains on one GPU with LoRA + checkpointing. Read them from the
printout; nothing here asserts.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_facts  # noqa: E402

from raw_rm.config import ModelConfig
from raw_rm.data.packing import pack_sequences
from raw_rm.data.readers import read_records
from raw_rm.models.backbones import load_tokenizer
from raw_rm.models.concat import RewardModel
from raw_rm.models.levers import apply_levers
from raw_rm.plan import GIB, KNOWN_SHAPES, model_shape, plan_one

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# Dense bf16 peak FLOP/s by GPU name (vendor data sheets, without sparsity).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
FIRST_WORD_ID = 1000  # ids below are the packaged (BERT) vocabulary's special and unused tokens
COMBOS = ["padded", "packed", "ckpt+packed", "lora+packed", "lora+ckpt+packed", "ckpt+padded"]


def text_lengths(tokenizer, *, hh: Path, long: Path, n: int, seed: int) -> list[tuple[int, int]]:
    """(chosen, rejected) token lengths of ``n`` pairs: HH-RLHF pairs and, for every fourth, a QA-Feedback prompt
    (question + passages) with two of its answers."""
    rng = random.Random(seed)
    pairs = read_records(str(hh), limit=4 * n).records
    rng.shuffle(pairs)
    items = []
    if long.is_file():
        with gzip.open(long) as f:
            items = json.load(f)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=True)["input_ids"])

    out = []
    for i, pair in enumerate(pairs[:n]):
        if items and i % 4 == 3:
            item = items[i % len(items)]
            prompt = item["question"] + "\n" + "\n".join(" ".join(p) for p in item["passages"])
            out.append((count(prompt + item["prediction 1"]), count(prompt + item["prediction 2"])))
        else:
            out.append((count(pair.prompt + pair.chosen), count(pair.prompt + pair.rejected)))
    return out


def make_batches(lengths, *, batch: int, max_len: int, vocab: int, pad_id: int, seed: int):
    """Padded batches (2B rows: chosen then rejected) of random ids with the given lengths, cut at ``max_len``."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for start in range(0, len(lengths) - batch + 1, batch):
        rows = [min(c, max_len) for c, _ in lengths[start : start + batch]]
        rows += [min(r, max_len) for _, r in lengths[start : start + batch]]
        width = max(rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, length in enumerate(rows):
            ids[i, :length] = torch.randint(FIRST_WORD_ID, vocab, (length,), generator=gen)
            mask[i, :length] = 1
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def build(shape_name: str, combo: str, *, vocab: int, pad_id: int, attn: str, device):
    config = KNOWN_SHAPES[shape_name] if shape_name in KNOWN_SHAPES else tiny_config()
    fields = {k: v for k, v in config.to_dict().items() if k not in ("id2label", "label2id")}
    config = config.__class__(**{**fields, "vocab_size": vocab, "pad_token_id": pad_id, "num_labels": 1})
    cfg = ModelConfig(
        backbone=shape_name,
        dropout=0.0,
        attn_implementation=attn,
        lora_rank=16 if "lora" in combo else 0,
        gradient_checkpointing="ckpt" in combo,
    )
    from transformers import AutoModelForSequenceClassification

    with torch.device(device):
        torch.manual_seed(0)
        hf = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    model = apply_levers(RewardModel(cfg, hf), cfg)
    return model.train(), config


def tiny_config():
    from transformers import Qwen2Config

    return Qwen2Config(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
    )


def train_flops_per_token(shape, seq_len: float, *, lora: bool) -> float:
    """6 N per token (2 forward + 4 backward); LoRA skips the frozen weights' gradient (4 N) but still
    back-propagates through them (2 N); attention scores and mixing: 12 x layers x width x length."""
    dense = (4 if lora else 6) * shape.params
    return dense + 12 * shape.num_layers * shape.q_dim * seq_len


def run_combo(shape_name, combo, batches, *, args, vocab, pad_id, device, dtype):
    model, config = build(shape_name, combo, vocab=vocab, pad_id=pad_id, attn=args.attn, device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
    packed = "packed" in combo
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, tokens, seq = [], [], []
    for step, batch in enumerate(batches[: args.warmup + args.steps]):
        if packed:
            feats = pack_sequences(batch["input_ids"], batch["attention_mask"], pad_id=pad_id, row_tokens=args.max_len)
        else:
            feats = dict(batch)
        feats = {k: v.to(device, non_blocking=True) for k, v in feats.items()}
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            rewards = model(**feats).rewards.float()
        half = rewards.shape[0] // 2
        loss = -F.logsigmoid(rewards[:half] - rewards[half:]).mean()
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
            real = int(batch["attention_mask"].sum())
            tokens.append(real)
            seq.append(real / batch["attention_mask"].shape[0])
    peak = torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else float("nan")
    shape = model_shape(config, lora_targets=ModelConfig().lora_targets)
    tok_s = sum(tokens) / sum(times)
    flops = train_flops_per_token(shape, statistics.mean(seq), lora="lora" in combo) * tok_s
    gpu_name = torch.cuda.get_device_name(0) if device.type == "cuda" else ""
    peak_flops = next((v for k, v in PEAK_BF16.items() if k in gpu_name), None)
    planned = plan_one(
        shape,
        strategy="ddp",
        tuning="lora" if "lora" in combo else "full",
        checkpointing="ckpt" in combo,
        gpus=1,
        max_len_tokens=args.max_len,
        batch_size=args.batch,
        reserve_gib=0.0,
    )
    del model, optim
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "size": shape_name,
        "combo": combo,
        "params": shape.params,
        "tokens_per_s": tok_s,
        "median_step_s": statistics.median(times),
        "mfu": flops / peak_flops if peak_flops else None,
        "peak_gib": peak,
        "planned_gib": planned.total / GIB,
    }


def step_timer(device, *, warmup: int):
    """A ``transformers`` callback timing each optimiser step (GPU synchronised) after ``warmup`` steps."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            if state.global_step > warmup:
                self.times.append(time.perf_counter() - self.start)

    return StepTimer()


def run_trl(shape_name, batches, *, args, vocab, pad_id, device):
    """TRL's RewardTrainer on the same model shape, batches (as pre-tokenised pairs) and steps; None without TRL."""
    try:
        from datasets import Dataset
        from trl import RewardConfig, RewardTrainer
    except ImportError:
        return None
    from transformers import AutoModelForSequenceClassification

    model, config = build(shape_name, "padded", vocab=vocab, pad_id=pad_id, attn=args.attn, device=device)
    rows = []
    for batch in batches[: args.warmup + args.steps]:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        half = ids.shape[0] // 2
        for i in range(half):
            rows.append(
                {
                    "chosen_input_ids": ids[i][mask[i].bool()].tolist(),
                    "rejected_input_ids": ids[half + i][mask[half + i].bool()].tolist(),
                }
            )
    hf = AutoModelForSequenceClassification.from_config(config).to(device)
    hf.load_state_dict(model.hf.state_dict())
    tokenizer = load_tokenizer("tiny-gpt2")
    trl_cfg = RewardConfig(
        output_dir="/tmp/trl_gpu_scale",
        per_device_train_batch_size=args.batch,
        max_steps=args.warmup + args.steps,
        bf16=device.type == "cuda",
        logging_steps=10**6,
        save_strategy="no",
        report_to=[],
        max_length=args.max_len,
        gradient_checkpointing=False,
        disable_dropout=True,
    )
    timer = step_timer(device, warmup=args.warmup)
    trainer = RewardTrainer(
        model=hf,
        args=trl_cfg,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[timer],
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    # TRL shuffles rows into its batches: tokens per timed step are the mean over all steps' rows
    tokens_per_step = sum(len(r["chosen_input_ids"]) + len(r["rejected_input_ids"]) for r in rows) / (
        args.warmup + args.steps
    )
    peak = torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else float("nan")
    return {
        "size": shape_name,
        "combo": "TRL RewardTrainer (padded)",
        "tokens_per_s": tokens_per_step * len(timer.times) / sum(timer.times),
        "median_step_s": statistics.median(timer.times),
        "peak_gib": peak,
        "note": "timed like raw_rm's rows: optimiser steps after the warm-up, TRL's collation included",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shape on CPU, fp32, few steps")
    parser.add_argument("--sizes", nargs="*", default=["qwen2.5-0.5b", "qwen2.5-1.5b"])
    parser.add_argument("--combos", nargs="*", default=COMBOS)
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8, help="pairs per step")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    parser.add_argument("--data", type=Path, default=DATA / "hh-rlhf-harmless" / "pairs.jsonl.gz")
    parser.add_argument("--long-data", type=Path, default=DATA / "qa-feedback" / "dev_feedback.json.gz")
    parser.add_argument(
        "--lengths",
        type=Path,
        default=None,
        help="read the (chosen, rejected) token lengths from this JSON instead of the data (a GPU machine without it)",
    )
    parser.add_argument("--save-lengths", type=Path, default=None, help="write the measured lengths here and exit")
    parser.add_argument("--no-trl", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    tokenizer = load_tokenizer("tiny-gpt2")
    vocab, pad_id = len(tokenizer), tokenizer.pad_token_id
    if args.save_lengths:  # before the CPU trim below: the lengths are for the GPU run's batch x steps
        lengths = text_lengths(
            tokenizer, hh=args.data, long=args.long_data, n=args.batch * (args.warmup + args.steps), seed=0
        )
        args.save_lengths.write_text(json.dumps(lengths))
        print(f"wrote {len(lengths)} (chosen, rejected) token lengths to {args.save_lengths}")
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu_smoke else "cpu")
    if device.type == "cpu":
        args.sizes, args.max_len, args.batch = ["tiny"], min(args.max_len, 512), min(args.batch, 4)
        args.steps, args.warmup = min(args.steps, 3), min(args.warmup, 1)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n_pairs = args.batch * (args.warmup + args.steps)
    if args.lengths:
        lengths = [tuple(pair) for pair in json.loads(args.lengths.read_text())][:n_pairs]
        if len(lengths) < n_pairs:
            raise SystemExit(f"--lengths {args.lengths}: {len(lengths)} pairs, {n_pairs} needed (batch x steps)")
    else:
        lengths = text_lengths(tokenizer, hh=args.data, long=args.long_data, n=n_pairs, seed=0)
    batches = make_batches(lengths, batch=args.batch, max_len=args.max_len, vocab=vocab, pad_id=pad_id, seed=0)
    facts = machine_facts(
        device=device.type,
        dtype=str(dtype).removeprefix("torch."),
        max_len=args.max_len,
        batch_pairs=args.batch,
        steps=args.steps,
        attn=args.attn,
    )
    print("\n".join(f"{k}: {v}" for k, v in facts.items()))
    all_lengths = [min(x, args.max_len) for pair in lengths for x in pair]
    print(
        f"token lengths (cut at {args.max_len}): mean {statistics.mean(all_lengths):.0f}, "
        f"max {max(all_lengths)}; padding share of a padded batch: "
        f"{1 - sum(all_lengths) / sum(b['attention_mask'].numel() for b in batches):.0%}"
    )
    results = []
    for size in args.sizes:
        for combo in args.combos:
            try:
                results.append(
                    run_combo(size, combo, batches, args=args, vocab=vocab, pad_id=pad_id, device=device, dtype=dtype)
                )
            except torch.OutOfMemoryError:
                results.append({"size": size, "combo": combo, "error": "out of memory"})
                torch.cuda.empty_cache()
            print(json.dumps(results[-1]), flush=True)
        if not args.no_trl:
            trl = run_trl(size, batches, args=args, vocab=vocab, pad_id=pad_id, device=device)
            print(json.dumps(trl) if trl else "TRL not installed: pip install -e .[bench] for the side-by-side")
            if trl:
                results.append(trl)
    print(f"\n{'size':<14} {'combo':<28} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>9} {'plan GiB':>9}")
    for r in results:
        if "error" in r:
            print(f"{r['size']:<14} {r['combo']:<28} {r['error']}")
            continue
        mfu = f"{r['mfu']:.0%}" if r.get("mfu") else "-"
        print(
            f"{r['size']:<14} {r['combo']:<28} {r['tokens_per_s']:>10.0f} {mfu:>6} {r['peak_gib']:>9.2f} "
            f"{r.get('planned_gib', float('nan')):>9.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": facts, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
