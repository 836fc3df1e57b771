"""`raw-rm` command line: one subcommand per module in this package (edge).

Only the chosen subcommand's module is imported, so `raw-rm --help` and light commands start fast
and never import Ray or MLflow unless they need them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# name -> (module, one-line help). Each module defines `configure(parser)` and `run(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": (
        "raw_rm.cli.quickstart",
        "end to end on the embedded default: tune, ensemble, eval, register, serve",
    ),
    "train": ("raw_rm.cli.train", "train a reward model (one process, or --ray for Ray Train)"),
    "tune": ("raw_rm.cli.tune", "Ray Tune search over losses, temperatures and training settings"),
    "eval": ("raw_rm.cli.eval", "evaluate accuracy, calibration and robustness; write a report"),
    "score": ("raw_rm.cli.score", "score prompt/response pairs from JSONL into JSONL"),
    "rank": ("raw_rm.cli.rank", "rank k responses per prompt"),
    "export": ("raw_rm.cli.export", "export a model (optionally int8-quantised)"),
    "distill": ("raw_rm.cli.distill", "distil a reward model or ensemble into a smaller student"),
    "registry": ("raw_rm.cli.registry", "MLflow registry: list, show, promote, rollback"),
    "serve": ("raw_rm.cli.serve", "serve an ensemble of reward models on Ray Serve"),
    "ensemble": ("raw_rm.cli.ensemble", "train an ensemble of reward models"),
    "select": ("raw_rm.cli.select", "pick the most informative unlabelled pairs by ensemble uncertainty"),
    "drift": ("raw_rm.cli.drift", "compare new data's reward/length distributions with the model's reference"),
    "plan": ("raw_rm.cli.plan", "per-GPU memory of full/LoRA, DDP/FSDP2, checkpointing from a model config alone"),
    "data": ("raw_rm.cli.data", "inspect a data file: format, counts, dropped records, lengths"),
    "label": ("raw_rm.cli.label", "people judge pairs in a web app; annotator agreement; export to training data"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: raw-rm COMMAND [options]   (raw-rm COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items() if _available(name)]
    return "\n".join(lines)


def _available(name: str) -> bool:
    return importlib.util.find_spec(COMMANDS[name][0]) is not None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name = argv[0]
    if name not in COMMANDS or not _available(name):
        known = [n for n in COMMANDS if _available(n)]
        print(f"raw-rm: unknown command {name!r}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=os.environ.get("RAW_RM_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"raw-rm {name}", description=COMMANDS[name][1])
    module.configure(parser)
    args = parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
