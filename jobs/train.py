"""Ray job entry point: `ray job submit --working-dir . -- python jobs/train.py --config FILE [key.sub=value ...]`.

Same calls as `raw-rm train --ray`, after the memory plan (`raw-rm plan`) when --gpu-mem is given (a misfit stops
here). Inside `ray job submit` $RAY_ADDRESS points at the cluster; run directly, Ray finds a local cluster or starts one.
"""

from __future__ import annotations

import argparse
import logging
import sys

from raw_rm.cli.common import add_config_args, config_from_args
from raw_rm.cli.plan import print_plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs/train.py", description=__doc__.splitlines()[0])
    add_config_args(parser)
    parser.add_argument("--gpu-mem", type=float, default=None, help="GiB per GPU: print the plan, refuse a misfit")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    if args.gpu_mem is not None and print_plan(cfg, gpu_mem_gib=args.gpu_mem) != 0:
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from raw_rm.tracking.registry import tracked_training
    from raw_rm.train.ray_train import init_ray, train_ray

    init_ray(cfg.ray.address)
    result = tracked_training(cfg, train_ray)
    print(f"model: {result.model_dir}")
    print("metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.metrics.items()) if k.startswith("val_")))
    if getattr(result, "model_version", None):
        print(f"registered: {cfg.mlflow.registered_model} v{result.model_version} (alias candidate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
