"""`raw-rm eval`: accuracy, calibration, robustness and probes of a reward model; prints a table, writes a report.

    raw-rm eval --model runs/latest/model --data test.jsonl.gz --ood helpful=helpful.jsonl.gz --out report/

Temperature scaling: T is fitted on ``--calibrate-on FILE`` or on the calibration split of ``--data``
(``raw_rm.eval.gate.calibration_split``: ``eval.calibration_fraction`` of the prompts by hash with
``eval.calibration_salt``, the same split the promotion gate uses; those pairs are then left out of the
evaluation). ``--val-fraction`` is a shorthand for ``eval.calibration_fraction``; 0 fits nothing and uses the T
stored in the model. ``--save-temperature`` writes the fitted T into the model folder's metadata, so inference and
serving use it from then on. ``--ood`` sets come beside ``eval.ood``'s, ``--n-boot`` is ``eval.n_boot``. Data
options (``data.format``, ``data.max_len_tokens``, ``data.limit``, ``data.strict``, ``data.split_seed``) come from
the config and ``key.sub=value`` overrides; texts
are scored at the length the model was trained at (its metadata) unless ``data.max_len_tokens`` is set explicitly.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

from raw_rm.cli.common import add_config_args, config_from_args, explicitly_set, local_model_dir


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder, or a registry URI such as models:/NAME@champion")
    parser.add_argument(
        "--data",
        required=True,
        help="evaluation data: pairs, ranked groups or rated responses "
        "(.jsonl, .jsonl.gz, .parquet, a datasets folder)",
    )
    parser.add_argument(
        "--ood",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="an out-of-distribution set (repeatable); its robustness gap is reported",
    )
    cal = parser.add_mutually_exclusive_group()
    cal.add_argument("--calibrate-on", default=None, metavar="FILE", help="pairs to fit the temperature T on")
    cal.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="shorthand for eval.calibration_fraction: share of --data prompts (by hash) held out to fit "
        "T (0 = use the stored T)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="report folder (default: eval_report/ beside the model folder, or ./eval_report for a URI)",
    )
    parser.add_argument(
        "--heldout",
        action="store_true",
        help="evaluate only the validation split training held "
        "out from --data (prompt hash with data.val_fraction and data.split_seed, as `raw-rm train`)",
    )
    parser.add_argument("--name", default="test", help="name of the --data set in the report")
    parser.add_argument("--save-temperature", action="store_true", help="write the fitted T into the model folder")
    parser.add_argument("--no-probes", action="store_true", help="skip the adversarial probes")
    parser.add_argument(
        "--max-pairs",
        type=int,
        default=None,
        metavar="N",
        help="evaluate a seeded random sample of at most N pairs of each file (a quicker look)",
    )
    parser.add_argument("--n-boot", type=int, default=None, help="shorthand for eval.n_boot (bootstrap resamples)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    parser.add_argument("--device", default="cpu", help='"cpu" or "cuda[:i]"')
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the typo probe")
    add_config_args(parser, flags=("tracking_uri",))


def _read_pairs(
    path: str, cfg: Any, tokenizer: Any, *, heldout: bool = False, max_pairs: int | None = None, seed: int = 0
) -> dict[str, list[Any]]:
    # torch-backed modules (eval, quantization) are imported inside functions: `raw-rm eval --help` loads this module
    from raw_rm.eval.gate import load_eval_sets

    sets = load_eval_sets(path, cfg, tokenizer, heldout=heldout)
    if max_pairs is not None and len(sets["pairs"]) > max_pairs:
        keep = sorted(random.Random(seed).sample(range(len(sets["pairs"])), max_pairs))
        print(
            f"raw-rm eval: {path}: evaluating a random sample of {max_pairs} of {len(sets['pairs'])} pairs "
            f"(--max-pairs, seed {seed})",
            file=sys.stderr,
        )
        sets["pairs"] = [sets["pairs"][i] for i in keep]
    return sets


def _parse_ood(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"--ood {item!r}: expected NAME=FILE")
        if name in out:
            raise ValueError(f"--ood {item!r}: the name '{name}' is used twice")
        out[name.strip()] = path.strip()
    return out


def _print_table(rows: list[tuple[str, str]], out_dir: Path) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"{'metric':<{width}}  value")
    print(f"{'-' * width}  {'-' * 30}")
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(f"\nreport: {out_dir / 'index.html'}  (metrics: {out_dir / 'metrics.json'})")


def run(args: argparse.Namespace) -> int:
    is_uri = args.model.startswith(("models:/", "runs:/"))
    try:
        if args.save_temperature and is_uri:
            raise ValueError(
                "--save-temperature needs a local model folder, not a registry URI: evaluate the "
                "folder, then register it (the registry keeps versions immutable)"
            )
        if args.val_fraction is not None and not 0.0 <= args.val_fraction < 1.0:
            raise ValueError(f"--val-fraction: expected 0 <= value < 1, got {args.val_fraction}")
        if (
            (args.n_boot is not None and args.n_boot < 1)
            or args.batch_size < 1
            or (args.max_pairs is not None and args.max_pairs < 2)
        ):
            raise ValueError("--n-boot and --batch-size must be >= 1, --max-pairs >= 2")
        # the flags are shorthands for eval.* overrides, applied before the command line's own key=value ones
        shorthands = [f"eval.calibration_fraction={args.val_fraction}"] if args.val_fraction is not None else []
        shorthands += [f"eval.n_boot={args.n_boot}"] if args.n_boot is not None else []
        args.overrides = shorthands + list(args.overrides or [])
        cfg = config_from_args(args)
        ood_paths = _parse_ood(args.ood)
        both = sorted(set(ood_paths) & set(cfg.eval.ood))
        if both:
            raise ValueError(f"--ood {both[0]}=...: '{both[0]}' is already an eval.ood set of the config")
        ood_paths = {**cfg.eval.ood, **ood_paths}
        if args.name in ood_paths:
            raise ValueError(f"--ood {args.name}=...: '{args.name}' is the name of --data (see --name)")
        from raw_rm.quantization import load_for_inference

        # the model's training length unless data.max_len_tokens is given (raw_rm.models.base.effective_max_len)
        max_len = cfg.data.max_len_tokens if explicitly_set(args, "data.max_len_tokens") else None
        rm = load_for_inference(
            local_model_dir(args.model, tracking_uri=cfg.mlflow.tracking_uri),
            device=args.device,
            batch_size=args.batch_size,
            max_len_tokens=max_len,
        )
        sample = {"max_pairs": args.max_pairs, "seed": args.seed}
        sets = _read_pairs(args.data, cfg, rm.tokenizer, heldout=args.heldout, **sample)
        calibration = None
        if args.calibrate_on:
            calibration = _read_pairs(args.calibrate_on, cfg, rm.tokenizer, **sample)["pairs"]
        ood = {name: _read_pairs(path, cfg, rm.tokenizer, **sample)["pairs"] for name, path in ood_paths.items()}
        from raw_rm.eval import model_info
        from raw_rm.eval.gate import evaluate_sets

        info = {
            **model_info(rm),
            "source": args.model,
            "data": args.data,
            "heldout": args.heldout,
            "max_pairs": args.max_pairs,
        }
        report = evaluate_sets(
            rm,
            sets,
            cfg.eval,
            name=args.name,
            calibration=calibration,
            ood=ood,
            seed=args.seed,
            progress=sys.stderr.isatty(),
            run_probes=not args.no_probes,
            save_temperature=args.save_temperature,
            model_info=info,
        )
    except (ValueError, OSError, TypeError) as exc:
        print(f"raw-rm eval: error: {exc}", file=sys.stderr)
        return 2

    from raw_rm.eval.report import headline_rows

    if args.out:
        out_dir = Path(args.out)
    elif is_uri:
        out_dir = Path("eval_report")
    else:
        out_dir = Path(args.model).resolve().parent / "eval_report"
    report.write(out_dir)
    _print_table(headline_rows(report.metrics), out_dir)
    return 0
