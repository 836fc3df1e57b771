"""Ray job entry point for a Tune search: the same calls as `raw-rm tune`.

    ray job submit --working-dir . -- python jobs/tune.py --config raw_rm/configs/tune_default.yaml \
        tune.name=hh1 data.train_path=/data/pairs.jsonl.gz
    # interrupted? submit again with tune.resume=true and the same tune.name

Inside a Ray job RAY_ADDRESS is set, so the search runs on the job's cluster (raw_rm.train.ray_train.init_ray).
"""

from __future__ import annotations

import argparse
import logging
import sys

from raw_rm.config import ConfigError, load_config
from raw_rm.tune.driver import run_tune
from raw_rm.tune.results import format_summary
from raw_rm.tune.space import check_space


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="raw_rm/configs/tune_default.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        outcome = run_tune(load_config(args.config, args.overrides, checks=[check_space]))
    except ConfigError as exc:
        print(f"config error:\n{exc}", file=sys.stderr)
        return 2
    print(f"experiment: {outcome.experiment_path}")
    print(format_summary(outcome))
    return 3 if outcome.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
