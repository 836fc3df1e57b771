"""`raw-rm plan`: per-GPU memory of full fine-tuning, LoRA, DDP/FSDP2 and checkpointing, from a config alone.

    raw-rm plan --model qwen2.5-7b --gpus 8 --gpu-mem 80 --max-len 2048 --batch 4
    raw-rm plan --model path/to/folder/with/config.json --gpus 1 --gpu-mem 141 --json
    raw-rm plan --config raw_rm/configs/scale_8b.yaml --gpu-mem 80     # a training config: exit 2 if it won't fit

No weights are read: parameters are counted on PyTorch's meta device (see raw_rm/plan.py for what each column
holds). With --config the combination the config chooses is checked, and the error lists the ones that fit.
"""

from __future__ import annotations

import argparse
import sys

from raw_rm.cli.common import add_config_args


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser, flags=("model", "workers"))
    parser.add_argument(
        "--gpus", type=int, default=None, help="GPUs in the job, all nodes together (default: ray.num_workers)"
    )
    parser.add_argument("--gpu-mem", type=float, required=True, help="memory of one GPU in GiB (H100 80, H200 141)")
    parser.add_argument("--max-len", type=int, default=None, help="tokens per sequence (default: data.max_len_tokens)")
    parser.add_argument("--batch", type=int, default=None, help="pairs per GPU micro-batch (default: train.batch_size)")
    parser.add_argument(
        "--reserve", type=float, default=2.0, help="GiB per GPU for CUDA context, workspaces, fragmentation"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from raw_rm.cli.common import config_from_args
    from raw_rm.config import ConfigError

    overrides = []
    if args.max_len is not None:
        overrides.append(f"data.max_len_tokens={args.max_len}")
    if args.batch is not None:
        overrides.append(f"train.batch_size={args.batch}")
    args.overrides = overrides + list(args.overrides)
    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        print(f"raw-rm plan: error: {exc}", file=sys.stderr)
        return 2
    return print_plan(
        cfg,
        gpu_mem_gib=args.gpu_mem,
        gpus=args.gpus,
        reserve_gib=args.reserve,
        as_json=args.json,
        check=args.config is not None,
    )


def print_plan(
    cfg,
    *,
    gpu_mem_gib: float,
    gpus: int | None = None,
    reserve_gib: float = 2.0,
    as_json: bool = False,
    check: bool = True,
) -> int:
    """Print ``cfg``'s memory plan; with ``check``, exit status 2 and the error when its combination does not fit.
    Also what ``jobs/train.py --gpu-mem`` prints at submission."""
    from raw_rm.plan import GIB, PlanError, format_plan, plan_as_json, plan_for_config, require_fit

    try:
        shape, plans, chosen = plan_for_config(cfg, gpu_mem_gib=gpu_mem_gib, gpus=gpus, reserve_gib=reserve_gib)
    except (PlanError, OSError) as exc:
        print(f"raw-rm plan: error: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(plan_as_json(shape, plans, gpu_mem_gib=gpu_mem_gib))
    else:
        world = gpus if gpus is not None else cfg.ray.num_workers
        print(
            f"{shape.name}: {shape.params:,} parameters ({shape.params / 1e9:.2f} B), {shape.num_layers} layers; "
            f"{world} GPU(s) of {gpu_mem_gib:g} GiB; {cfg.train.batch_size} pairs x {cfg.data.max_len_tokens} "
            f"tokens per GPU micro-batch; LoRA rank {cfg.model.lora_rank or 16} on {', '.join(shape.lora_targets)}"
        )
        print(format_plan(plans, gpu_mem_gib=gpu_mem_gib))
        print(f"config: {chosen.keys()} -> {chosen.total / GIB:.2f} GiB per GPU")
    if check:
        try:
            require_fit(plans, chosen, gpu_mem_gib=gpu_mem_gib)
        except PlanError as exc:
            print(f"raw-rm plan: error: {exc}", file=sys.stderr)
            return 2
    return 0
