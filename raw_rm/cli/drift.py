"""`raw-rm drift`: compare a batch of new data with the reference distributions stored in the model.

The model's metadata holds quantile histograms of its training rewards and input lengths (``reference``,
written at the end of training). This command scores the new data, bins rewards and lengths on the same
edges and prints the population stability index (PSI) and Kolmogorov-Smirnov statistic of each, as the
serving layer's rolling monitor does, and with ``--out`` writes ``drift.json`` and ``drift.png`` (reference vs
new share per bin). PSI rules of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large shift.

Data: JSONL rows with "prompt" + "response" (each row one text), or any preference file ``raw-rm train`` reads
(pairs: both responses are scored; a pair's length is its longer side, as the trainer counts it).
Lengths are tokens of prompt + " " + response plus 2 special tokens, capped at ``--max-len-tokens`` (default:
``data.max_len_tokens`` of the ``config.yaml`` beside the model folder, else 256).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from raw_rm.cli._io import InputError, read_jsonl, require_str
from raw_rm.cli.common import local_model_dir
from raw_rm.data import read_records
from raw_rm.data.records import PreferencePair, RankedGroup

STATS = ("reward", "length")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model or ensemble folder, or a models:/ URI")
    parser.add_argument("--data", required=True, help="new data: JSONL of prompt/response rows, or a preference file")
    parser.add_argument("--out", default=None, help="folder for drift.json and drift.png")
    parser.add_argument("--max-len-tokens", type=int, default=None, help="length cap (see above)")
    parser.add_argument("--limit", type=int, default=None, help="read at most this many rows/records")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")


def verdict(psi: float) -> str:
    return "stable" if psi < 0.1 else ("moderate shift" if psi <= 0.25 else "large shift")


def read_texts(path: str, limit: int | None) -> tuple[list[str], list[str], list[list[int]]]:
    """(prompts, responses, groups): ``groups[i]`` indexes the texts of record i (one text, or a pair's two)."""

    first = next(iter(read_jsonl(path)), None) if not path.endswith(".parquet") and not Path(path).is_dir() else None
    prompts, responses, groups = [], [], []
    if first is not None and "prompt" in first[1] and "response" in first[1]:
        for n, (where, row) in enumerate(read_jsonl(path)):
            if limit is not None and n >= limit:
                break
            groups.append([len(prompts)])
            prompts.append(require_str(row, "prompt", where))
            responses.append(require_str(row, "response", where))
        return prompts, responses, groups

    for rec in read_records(path, limit=limit).records:
        texts = (
            [rec.chosen, rec.rejected]
            if isinstance(rec, PreferencePair)
            else (rec.responses if isinstance(rec, RankedGroup) else [rec.response])
        )
        groups.append(list(range(len(prompts), len(prompts) + len(texts))))
        prompts += [rec.prompt] * len(texts)
        responses += list(texts)
    return prompts, responses, groups


def default_max_len(model_dir: Path) -> int:
    cfg_file = model_dir.parent / "config.yaml"
    if cfg_file.is_file():
        try:
            return int(yaml.safe_load(cfg_file.read_text())["data"]["max_len_tokens"])
        except (KeyError, TypeError, ValueError, yaml.YAMLError):
            pass
    return 256


def drift_report(
    rm: Any, prompts: list[str], responses: list[str], groups: list[list[int]], *, max_len_tokens: int
) -> dict[str, Any]:
    """PSI / KS of rewards (per text) and lengths (per record) of the new data against ``rm.metadata.reference``.

    Raises:
        ValueError: the model stores no reference distributions, or no data.
    """
    # torch-backed modules and matplotlib are imported inside functions: `raw-rm drift --help` loads this module
    from raw_rm.uncertainty import ReferenceDistribution, ks_statistic, psi

    reference = getattr(rm.metadata, "reference", None) or {}
    missing = [s for s in STATS if s not in reference]
    if missing:
        raise ValueError(
            f"{rm.source}: the model stores no reference {' / '.join(missing)} distribution "
            "(metadata.reference is written at the end of training; retrain or re-save the model)"
        )
    if not prompts:
        raise ValueError("no data to compare")
    rewards = rm.batch_predict(prompts, responses)
    ids = rm.tokenizer(
        [p + " " + r for p, r in zip(prompts, responses, strict=True)], add_special_tokens=False, truncation=False
    )["input_ids"]
    text_len = [min(max_len_tokens, len(s) + 2) for s in ids]
    lengths = np.asarray([max(text_len[i] for i in g) for g in groups], dtype=np.float64)
    report: dict[str, Any] = {"n_texts": len(prompts), "n_records": len(groups), "max_len_tokens": max_len_tokens}
    for name, values in (("reward", rewards), ("length", lengths)):
        ref = ReferenceDistribution.from_dict(reference[name])
        new_props = np.bincount(ref.bin_index(values), minlength=len(ref.proportions)) / len(values)
        p = psi(ref, values)
        report[name] = {
            "psi": p,
            "ks": ks_statistic(ref, values),
            "verdict": verdict(p),
            "reference_mean": ref.mean,
            "reference_std": ref.std,
            "reference_n": ref.n,
            "new_mean": float(np.mean(values)),
            "new_std": float(np.std(values)),
            "edges": ref.edges,
            "reference_proportions": ref.proportions,
            "new_proportions": new_props.tolist(),
        }
    return report


def format_table(report: dict[str, Any]) -> str:
    lines = [
        f"{'statistic':<10} {'ref mean':>9} {'ref std':>8} {'new mean':>9} {'new std':>8} {'PSI':>7} {'KS':>6}  verdict"
    ]
    for name in STATS:
        r = report[name]
        lines.append(
            f"{name:<10} {r['reference_mean']:>9.3f} {r['reference_std']:>8.3f} {r['new_mean']:>9.3f} {r['new_std']:>8.3f} "
            f"{r['psi']:>7.3f} {r['ks']:>6.3f}  {r['verdict']}"
        )
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Reference vs new share per reference bin, one panel per statistic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(STATS), figsize=(6 * len(STATS), 4))
    for ax, name in zip(axes, STATS, strict=True):
        r = report[name]
        edges = r["edges"]
        labels = (
            [f"≤{edges[0]:.3g}"] + [f"{a:.3g}–{b:.3g}" for a, b in zip(edges, edges[1:])] + [f">{edges[-1]:.3g}"]
            if edges
            else ["all"]
        )
        x = np.arange(len(labels))
        ax.bar(x - 0.2, r["reference_proportions"], width=0.4, label=f"reference (n={r['reference_n']})", alpha=0.8)
        ax.bar(
            x + 0.2,
            r["new_proportions"],
            width=0.4,
            label=f"new (n={report['n_texts'] if name == 'reward' else report['n_records']})",
            alpha=0.8,
        )
        ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("share")
        ax.set_title(f"{name}: PSI {r['psi']:.3f}, KS {r['ks']:.3f} ({r['verdict']})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    try:
        from raw_rm.inference import resolve_model_uri
        from raw_rm.quantization import load_for_inference

        model_dir = Path(resolve_model_uri(local_model_dir(args.model)))
        max_len = args.max_len_tokens or default_max_len(model_dir)
        prompts, responses, groups = read_texts(args.data, args.limit)
        rm = load_for_inference(str(model_dir), batch_size=args.batch_size, max_len_tokens=max_len)
        report = drift_report(rm, prompts, responses, groups, max_len_tokens=max_len)
    except (InputError, ValueError, OSError) as exc:
        print(f"raw-rm drift: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"drift of {args.data} ({report['n_texts']} texts, {report['n_records']} records) vs the reference of {args.model}:"
    )
    print(format_table(report))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "drift.json").write_text(json.dumps(report, indent=1))
        plot(report, out / "drift.png")
        print(f"wrote {out / 'drift.json'} and {out / 'drift.png'}")
    return 0
