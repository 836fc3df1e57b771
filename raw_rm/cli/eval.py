"""`raw-rm eval`: accuracy, calibration, robustness and probes of a reward model; prints a table, writes a report.

    raw-rm eval --model runs/latest/model --data test.jsonl.gz --ood helpful=helpful.jsonl.gz --out report/

Temperature scaling: T is fitted on ``--calibrate-on FILE`` or on a prompt-hash split of ``--data``
(``--val-fraction``, default 0.2; those pairs are then left out of the evaluation). ``--val-fraction 0`` fits
nothing and uses the T stored in the model. ``--save-temperature`` writes the fitted T into the model folder's
metadata, so inference and serving use it from then on. Data options (``data.format``, ``data.max_len_tokens``,
``data.limit``, ``data.strict``, ``data.split_seed``) come from the config and ``key.sub=value`` overrides; texts are
scored at the length the model was trained at (its metadata) unless ``data.max_len_tokens`` is set explicitly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def configure(parser: argparse.ArgumentParser) -> None:
    from raw_rm.cli.common import add_config_args

    parser.add_argument("--model", required=True, help="model folder, or a registry URI such as models:/NAME@champion")
    parser.add_argument("--data", required=True, help="evaluation data: pairs, ranked groups or rated responses "
                        "(.jsonl, .jsonl.gz, .parquet, a datasets folder)")
    parser.add_argument("--ood", action="append", default=[], metavar="NAME=FILE",
                        help="an out-of-distribution set (repeatable); its robustness gap is reported")
    cal = parser.add_mutually_exclusive_group()
    cal.add_argument("--calibrate-on", default=None, metavar="FILE", help="pairs to fit the temperature T on")
    cal.add_argument("--val-fraction", type=float, default=None,
                     help="share of --data prompts (by hash) held out to fit T (default 0.2; 0 = use the stored T)")
    parser.add_argument("--out", default=None, help="report folder (default: eval_report/ beside the model folder, "
                        "or ./eval_report for a URI)")
    parser.add_argument("--heldout", action="store_true", help="evaluate only the validation split training held "
                        "out from --data (prompt hash with data.val_fraction and data.split_seed, as `raw-rm train`)")
    parser.add_argument("--name", default="test", help="name of the --data set in the report")
    parser.add_argument("--save-temperature", action="store_true", help="write the fitted T into the model folder")
    parser.add_argument("--no-probes", action="store_true", help="skip the adversarial probes")
    parser.add_argument("--max-pairs", type=int, default=None, metavar="N",
                        help="evaluate a seeded random sample of at most N pairs of each file (a quicker look)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for confidence intervals")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    parser.add_argument("--device", default="cpu", help='"cpu" or "cuda[:i]"')
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the typo probe")
    add_config_args(parser, flags=("tracking_uri",))


def _read_pairs(path: str, cfg: Any, tokenizer: Any, *, heldout: bool = False, max_pairs: int | None = None,
                seed: int = 0) -> dict[str, list[Any]]:
    from raw_rm.data.readers import read_records
    from raw_rm.eval import as_eval_sets

    loaded = read_records(path, format=cfg.data.format, strict=cfg.data.strict, limit=cfg.data.limit,
                          tokenizer=tokenizer)
    records = loaded.records
    if heldout:
        from raw_rm.data.splits import split_by_prompt

        _, records = split_by_prompt(records, cfg.data.val_fraction, cfg.data.split_seed)
        if not records:
            raise ValueError(f"{path}: --heldout: no record falls in the validation split "
                             f"(data.val_fraction={cfg.data.val_fraction})")
    sets = as_eval_sets(records)
    if not sets["pairs"]:
        raise ValueError(f"{path}: no preference pairs in the data ({loaded.report.summary()})")
    if max_pairs is not None and len(sets["pairs"]) > max_pairs:
        import random

        keep = sorted(random.Random(seed).sample(range(len(sets["pairs"])), max_pairs))
        print(f"raw-rm eval: {path}: evaluating a random sample of {max_pairs} of {len(sets['pairs'])} pairs "
              f"(--max-pairs, seed {seed})", file=sys.stderr)
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
    from raw_rm.cli.common import config_from_args

    cfg = config_from_args(args)
    is_uri = args.model.startswith(("models:/", "runs:/"))
    try:
        if args.save_temperature and is_uri:
            raise ValueError("--save-temperature needs a local model folder, not a registry URI: evaluate the "
                             "folder, then register it (the registry keeps versions immutable)")
        if args.val_fraction is not None and not 0.0 <= args.val_fraction < 1.0:
            raise ValueError(f"--val-fraction: expected 0 <= value < 1, got {args.val_fraction}")
        if args.n_boot < 1 or args.batch_size < 1 or (args.max_pairs is not None and args.max_pairs < 2):
            raise ValueError("--n-boot and --batch-size must be >= 1, --max-pairs >= 2")
        ood_paths = _parse_ood(args.ood)
        if args.name in ood_paths:
            raise ValueError(f"--ood {args.name}=...: '{args.name}' is the name of --data (see --name)")
        from raw_rm.cli.common import explicitly_set, local_model_dir
        from raw_rm.compression import load_for_inference

        # the model's training length unless data.max_len_tokens is given (raw_rm.models.base.effective_max_len)
        max_len = cfg.data.max_len_tokens if explicitly_set(args, "data.max_len_tokens") else None
        rm = load_for_inference(local_model_dir(args.model, tracking_uri=cfg.mlflow.tracking_uri), device=args.device, batch_size=args.batch_size,
                                max_len_tokens=max_len)
        sample = {"max_pairs": args.max_pairs, "seed": args.seed}
        sets = _read_pairs(args.data, cfg, rm.tokenizer, heldout=args.heldout, **sample)
        val_pairs = None
        if args.calibrate_on:
            val_pairs = _read_pairs(args.calibrate_on, cfg, rm.tokenizer, **sample)["pairs"]
        else:
            fraction = 0.2 if args.val_fraction is None else args.val_fraction
            if fraction > 0:
                from raw_rm.data.splits import split_by_prompt
                from raw_rm.eval import CALIBRATION_SALT

                test, val_pairs = split_by_prompt(sets["pairs"], fraction, cfg.data.split_seed + CALIBRATION_SALT)
                if not val_pairs or not test:
                    raise ValueError(f"--val-fraction {fraction}: the split of {len(sets['pairs'])} pairs left one "
                                     "side empty; give more data, another fraction or --calibrate-on FILE")
                held_out = {p.prompt for p in val_pairs}
                sets["pairs"] = test
                sets["groups"] = [g for g in sets["groups"] if g.prompt not in held_out]
                sets["ratings"] = [r for r in sets["ratings"] if r.prompt not in held_out]
        ood = {name: _read_pairs(path, cfg, rm.tokenizer, **sample)["pairs"] for name, path in ood_paths.items()}
    except (ValueError, OSError, TypeError) as exc:
        print(f"raw-rm eval: error: {exc}", file=sys.stderr)
        return 2

    from raw_rm.eval import RewardModelEvaluator, model_info
    from raw_rm.eval.report import headline_rows

    evaluator = RewardModelEvaluator(rm, n_boot=args.n_boot, progress=sys.stderr.isatty(), seed=args.seed)
    info = {**model_info(rm), "source": args.model, "data": args.data, "heldout": args.heldout,
            "max_pairs": args.max_pairs}
    report = evaluator.run(
        sets["pairs"], name=args.name, val_pairs=val_pairs, ood=ood,
        groups=sets["groups"] or None, ratings=sets["ratings"] or None, run_probes=not args.no_probes,
        save_temperature=args.save_temperature, model_info=info,
    )
    if args.out:
        out_dir = Path(args.out)
    elif is_uri:
        out_dir = Path("eval_report")
    else:
        out_dir = Path(args.model).resolve().parent / "eval_report"
    report.write(out_dir)
    _print_table(headline_rows(report.metrics), out_dir)
    return 0
