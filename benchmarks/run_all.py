"""Run every benchmark in benchmarks/ and print one summary table of ratios against their peers.

    python benchmarks/run_all.py                       # full settings (each script's defaults): an hour or more on 2 cores
    python benchmarks/run_all.py --quick               # small settings: a smoke run of every script, numbers NOT meaningful
    python benchmarks/run_all.py --only serve_load     # one benchmark (repeat --only for several)
    python benchmarks/run_all.py --dry-run             # list the commands, run nothing
    python benchmarks/run_all.py --summary-only        # rebuild the table from the JSON files of an earlier run

Each benchmark runs as its own subprocess from the repository root, one after another (they would compete for
the CPUs otherwise); its output is echoed and kept in ``OUT/NAME.log``, its numbers in ``OUT/NAME.json`` (or
``OUT/NAME/results.json`` for the scripts that write their own). The summary (machine facts, then one row per
measure with its target from the issues) is printed and written to ``OUT/summary.md`` and ``OUT/summary.json``.

Peers: TRL's RewardTrainer for training (train_throughput.py), a plain per-request FastAPI server and the
one-process model ceiling for serving (serve_load.py), random selection for active learning
(active_learning.py), the best single member for the ensemble's calibration on ../shared/data
(ensemble_vs_single.py). confidence_weighting.py has no peer ratio; its table stays in its log.

Numbers depend on what else runs on the machine: the load average is recorded before and after. Run on a quiet
machine; ``--quick`` numbers only show that every script still runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_machine.py
from _machine import load_average, machine_facts  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


@dataclass
class Benchmark:
    """One script: its arguments for a full and a quick run, and where its JSON lands (given the output folder)."""

    name: str
    script: str
    full: list[str]
    quick: list[str] | None  # None: no quick setting, skipped by --quick
    what: str
    result_args: Callable[[Path], list[str]] = field(default=lambda out: [])  # arguments that point its JSON into out
    result_path: Callable[[Path], Path | None] = field(default=lambda out: None)


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "train_throughput",
            "train_throughput.py",
            full=[],
            quick=["--contenders", "trl", "raw_rm", "--limit", "100", "--batch-size", "8"],
            what="raw_rm's training loop vs TRL RewardTrainer (MiniLM, HH harmless): pairs/s, peak RSS, held-out accuracy",
            result_args=lambda out: ["--json", str(out / "train_throughput.json")],
            result_path=lambda out: out / "train_throughput.json",
        ),
        Benchmark(
            "serve_load",
            "serve_load.py",
            full=[],
            quick=["--backbone", "tiny-bert", "--requests", "16", "64", "128", "--ceiling-texts", "128"],
            what="raw_rm on Ray Serve vs a plain per-request FastAPI server and the one-process ceiling; 5-head vs single p50",
            result_args=lambda out: ["--json", str(out / "serve_load.json")],
            result_path=lambda out: out / "serve_load.json",
        ),
        Benchmark(
            "active_learning",
            "active_learning.py",
            full=[],
            quick=[
                "--n-prompts",
                "200",
                "--repeats",
                "1",
                "--max-labels",
                "40",
                "--steps",
                "100",
                "--max-len-tokens",
                "64",
            ],
            what="labels needed to reach a target accuracy: uncertainty selection vs random (synthetic default)",
            result_args=lambda out: ["--out", str(out / "active_learning")],
            result_path=lambda out: out / "active_learning" / "results.json",
        ),
        Benchmark(
            "ensemble_vs_single",
            "ensemble_vs_single.py",
            full=[],
            quick=[
                "--members",
                "2",
                "--train-limit",
                "48",
                "--ood-limit",
                "32",
                "--calib-limit",
                "32",
                "--test-limit",
                "32",
                "--max-len-tokens",
                "64",
            ],
            what="ensemble vs its best member: NLL / ECE on HH harmless held-out and HH helpful (OOD); spread in vs out",
            result_args=lambda out: ["--out", str(out / "ensemble_vs_single")],
            result_path=lambda out: out / "ensemble_vs_single" / "results.json",
        ),
        Benchmark(
            "confidence_weighting",
            "confidence_weighting.py",
            full=[],
            quick=None,  # it embeds the 1,200-prompt pool unless active_learning's full-size cache exists
            what="plain vs annotator-weighted vs uncertainty-weighted training (accuracy table in its log; no peer ratio)",
            result_args=lambda out: ["--cache", str(out / "active_learning")],
        ),
    )
}


# ------------------------------------------------------------------------------------------ machine


# ------------------------------------------------------------------------------------------ running
def command(bench: Benchmark, out: Path, quick: bool) -> list[str]:
    args = bench.quick if quick else bench.full
    assert args is not None
    return [sys.executable, str(HERE / bench.script), *args, *bench.result_args(out)]


def run_one(bench: Benchmark, cmd: list[str], log_path: Path, timeout_s: float | None) -> dict[str, Any]:
    """Run one benchmark, echoing and logging its output; returns exit code, wall time and whether it timed out."""
    start = time.perf_counter()
    with log_path.open("w") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )

        def copy() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                print(f"  [{bench.name}] {line}", end="", flush=True)

        reader = threading.Thread(target=copy, daemon=True)
        reader.start()
        timed_out = False
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
            raise
        if timed_out:
            os.killpg(proc.pid, signal.SIGTERM)  # the benchmark's own process group (its servers, Ray, workers)
            try:
                rc = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
        reader.join(timeout=10)
    return {"returncode": rc, "wall_s": time.perf_counter() - start, "timed_out": timed_out}


# ------------------------------------------------------------------------------------------ summary
Row = dict[str, str]


def _status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def _row(bench: str, measure: str, value: str, target: str = "", ok: bool | None = None) -> Row:
    return {
        "benchmark": bench,
        "measure": measure,
        "value": value,
        "target": target or "-",
        "status": _status(ok) if target else "-",
    }


def rows_train(data: dict[str, Any]) -> list[Row]:
    res = data["results"]
    trl, raw = res.get("trl", {}), res.get("raw_rm", {})
    if "pairs_per_s" not in trl or "pairs_per_s" not in raw:
        err = trl.get("error") or raw.get("error") or "trl and raw_rm not both run"
        return [_row("train_throughput", "raw_rm vs TRL", f"no comparison: {str(err).splitlines()[0][:80]}")]
    speed = raw["pairs_per_s"] / trl["pairs_per_s"]
    memory = raw["peak_rss_mb"] / trl["peak_rss_mb"]
    delta = 100.0 * (raw["accuracy"] - trl["accuracy"])
    rows = [
        _row(
            "train_throughput",
            "pairs/s, raw_rm / TRL",
            f"{speed:.2f}x ({raw['pairs_per_s']:.2f} vs {trl['pairs_per_s']:.2f})",
            ">= 1.5x",
            speed >= 1.5,
        ),
        _row(
            "train_throughput",
            "peak RSS, raw_rm / TRL",
            f"{memory:.2f}x ({raw['peak_rss_mb']:.0f} vs {trl['peak_rss_mb']:.0f} MB)",
            "<= 1.00x",
            memory <= 1.0,
        ),
        _row(
            "train_throughput",
            "held-out accuracy, raw_rm - TRL",
            f"{delta:+.1f} points ({raw['accuracy']:.3f} vs {trl['accuracy']:.3f})",
            ">= -1.0 point",
            delta >= -1.0,
        ),
    ]
    for name, what in (
        ("raw_rm_ray1", "Ray Train layer"),
        ("raw_rm_ray2", "Ray Train layer"),
        ("raw_rm_top2", "top 2 layers trained"),
    ):
        r = res.get(name, {})
        if "pairs_per_s" in r:
            rows.append(
                _row(
                    "train_throughput",
                    f"pairs/s, {name} / raw_rm ({what})",
                    f"{r['pairs_per_s'] / raw['pairs_per_s']:.2f}x",
                )
            )
    return rows


def rows_serve(data: dict[str, Any]) -> list[Row]:
    levels = [str(c) for c in data["levels"]]
    top = levels[-1]
    plain, served, ens, ceiling = (
        data["plain"][top],
        data["raw_rm"][top],
        data["ensemble5"],
        data["ceiling_texts_per_s"],
    )
    ratio, share = served["rps"] / plain["rps"], served["rps"] / ceiling
    rows = [
        _row(
            "serve_load",
            f"req/s at concurrency {top}, raw_rm / plain server",
            f"{ratio:.2f}x ({served['rps']:.1f} vs {plain['rps']:.1f})",
            ">= 3x",
            ratio >= 3.0,
        ),
        _row(
            "serve_load",
            f"req/s at concurrency {top} / model ceiling",
            f"{100 * share:.0f}% ({served['rps']:.1f} of {ceiling:.1f} texts/s)",
            ">= 50%",
            share >= 0.5,
        ),
    ]
    if "defaults" in data:  # the Serve defaults, as a first run gets them
        d, prec = data["defaults"][top], data["choices"]["defaults"]["precision"]
        d_ratio, d_share = d["rps"] / plain["rps"], d["rps"] / data["ceilings"][prec]
        rows += [
            _row(
                "serve_load",
                f"req/s at concurrency {top}, defaults / plain server",
                f"{d_ratio:.2f}x ({d['rps']:.1f} vs {plain['rps']:.1f})",
                ">= 1.3x",
                d_ratio >= 1.3,
            ),
            _row(
                "serve_load",
                f"req/s at concurrency {top}, defaults / {prec} ceiling",
                f"{100 * d_share:.0f}%",
                ">= 90%",
                d_share >= 0.9,
            ),
            _row(
                "serve_load",
                f"p99 at concurrency {top}, defaults vs plain server",
                f"{d['p99']:.0f} vs {plain['p99']:.0f} ms",
                "<=",
                d["p99"] <= plain["p99"],
            ),
        ]
    if "int8" in data:
        i_ratio = data["int8"][top]["rps"] / plain["rps"]
        rows.append(
            _row(
                "serve_load",
                f"req/s at concurrency {top}, int8 defaults / plain server",
                f"{i_ratio:.2f}x",
                ">= 1.6x",
                i_ratio >= 1.6,
            )
        )
    if data.get("accuracy"):
        change = 100 * (data["accuracy"]["accuracy_int8"] - data["accuracy"]["accuracy_fp32"])
        rows.append(
            _row(
                "serve_load", "held-out accuracy, int8 - fp32", f"{change:+.1f} points", ">= -1.0 point", change >= -1.0
            )
        )
    for c, e in ens.items():
        p50 = e["p50"] / data["raw_rm"][c]["p50"]
        rows.append(
            _row(
                "serve_load",
                f"p50 at concurrency {c}, 5-head / single",
                f"{p50:.2f}x ({e['p50']:.1f} vs {data['raw_rm'][c]['p50']:.1f} ms)",
                "<= 1.3x",
                p50 <= 1.3,
            )
        )
    errors = sum(
        int(r["errors"])
        for side in ("plain", "raw_rm", "ensemble5", "defaults", "int8")
        if side in data
        for r in data[side].values()
    )
    rows.append(_row("serve_load", "non-200 answers, all runs", str(errors), "0", errors == 0))
    rows.append(_row("serve_load", "mean Serve batch size (texts)", f"{data['mean_batch_size']:.1f}"))
    return rows


def rows_active(data: dict[str, Any]) -> list[Row]:
    summary, target = data["summary"], data["target"]
    base = summary.get("random", {}).get("labels_needed")
    max_labels = data["args"]["max_labels"]
    rows = [
        _row(
            "active_learning",
            "labels for random to reach the target",
            f"{base if base is not None else f'> {max_labels}'} (target accuracy {target:.3f})",
        )
    ]
    for strategy, s in summary.items():
        if strategy == "random":
            continue
        n = s["labels_needed"]
        if n is None:
            rows.append(
                _row(
                    "active_learning",
                    f"labels saved vs random: {strategy}",
                    f"not reached within {max_labels}",
                    "> 0",
                    False,
                )
            )
        elif base is None:
            rows.append(
                _row(
                    "active_learning",
                    f"labels saved vs random: {strategy}",
                    f">= {max_labels + data['args']['k'] - n} ({n} labels; random did not reach it)",
                    "> 0",
                    True,
                )
            )
        else:
            rows.append(
                _row(
                    "active_learning",
                    f"labels saved vs random: {strategy}",
                    f"{base - n:+d} ({n} vs {base}, "
                    + (f"{(base - n) / base:.0%} fewer)" if n <= base else f"{(n - base) / base:.0%} more)"),
                    "> 0",
                    base - n > 0,
                )
            )
    return rows


def rows_ensemble(data: dict[str, Any]) -> list[Row]:
    res, best = data["results"], data["best_member"]
    e, b = res["ensemble"], res[best]
    comparison = data.get("comparison", {})  # paired-bootstrap intervals of ensemble − member (newer results files)
    rows = []
    for key, label in (
        ("test_nll", "held-out NLL"),
        ("test_ece", "held-out ECE"),
        ("test_ece_mass", "held-out ECE equal-mass"),
        ("ood_nll", "OOD NLL"),
        ("ood_ece", "OOD ECE"),
        ("ood_ece_mass", "OOD ECE equal-mass"),
    ):
        if key not in e:
            continue
        split, metric = key.split("_", 1)
        c = comparison.get(f"ensemble_{split}", {}).get({"ece_mass": "ece_equal_mass"}.get(metric, metric))
        ci = (
            ""
            if c is None
            else f", 95% CI [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]"
            + ("" if c["ci_high"] < 0 or c["ci_low"] > 0 else " spans 0")
        )
        rows.append(
            _row(
                "ensemble_vs_single",
                f"{label}, ensemble vs best member ({best})",
                f"{e[key]:.4f} vs {b[key]:.4f} ({e[key] - b[key]:+.4f}{ci})",
                "lower",
                e[key] < b[key],
            )
        )
    rows.append(
        _row(
            "ensemble_vs_single",
            "held-out accuracy, ensemble vs best member",
            f"{e['test_accuracy']:.3f} vs {b['test_accuracy']:.3f}",
        )
    )
    spread = data["spread"]
    ratio = spread["ood"]["mean"] / spread["test"]["mean"] if spread["test"]["mean"] else float("nan")
    rows.append(
        _row(
            "ensemble_vs_single",
            "member spread, OOD / in-distribution",
            f"{ratio:.2f}x ({spread['ood']['mean']:.4f} vs {spread['test']['mean']:.4f})",
            "> 1x",
            ratio > 1.0,
        )
    )
    return rows


SUMMARIZERS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "train_throughput": rows_train,
    "serve_load": rows_serve,
    "active_learning": rows_active,
    "ensemble_vs_single": rows_ensemble,
}


def summarize(name: str, out: Path, outcome: dict[str, Any] | None) -> list[Row]:
    bench = BENCHMARKS[name]
    log = out / f"{name}.log"
    if outcome is not None and (outcome["returncode"] != 0 or outcome["timed_out"]):
        why = "timed out" if outcome["timed_out"] else f"exit {outcome['returncode']}"
        return [_row(name, "run", f"FAILED ({why}); see {log}")]
    if name not in SUMMARIZERS:
        return [_row(name, "run", f"no peer ratio; its table is in {log}")]
    path = bench.result_path(out)
    if path is None or not path.exists():
        return [_row(name, "run", f"no results file {path}")]
    try:
        return SUMMARIZERS[name](json.loads(path.read_text()))
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        return [_row(name, "run", f"results file {path} unreadable: {type(exc).__name__}: {exc}")]


def render(rows: list[Row]) -> str:
    cols = ["benchmark", "measure", "value", "target", "status"]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    lines = [
        "| " + " | ".join(c.ljust(widths[c]) for c in cols) + " |",
        "|" + "|".join("-" * (widths[c] + 2) for c in cols) + "|",
    ]
    lines += ["| " + " | ".join(r[c].ljust(widths[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="benchmarks: " + ", ".join(BENCHMARKS),
    )
    parser.add_argument(
        "--quick", action="store_true", help="small settings (a smoke run: the numbers are not meaningful)"
    )
    parser.add_argument(
        "--only", action="append", choices=list(BENCHMARKS), metavar="NAME", help="run only NAME (repeatable)"
    )
    parser.add_argument(
        "--out", default=None, help="output folder (default benchmarks/results/run_all, or run_all_quick with --quick)"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, metavar="S", help="stop a benchmark that runs longer than S seconds"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument(
        "--summary-only", action="store_true", help="run nothing; summarise the JSON files already in --out"
    )
    args = parser.parse_args(argv)
    out = Path(args.out or REPO / "benchmarks" / "results" / ("run_all_quick" if args.quick else "run_all")).resolve()
    names = args.only or list(BENCHMARKS)
    plan = [(n, BENCHMARKS[n]) for n in names]
    skipped = [n for n, b in plan if args.quick and b.quick is None]
    plan = [(n, b) for n, b in plan if n not in skipped]

    if args.dry_run:
        for name, bench in plan:
            print(f"{name}: {bench.what}\n    {shlex.join(command(bench, out, args.quick))}")
        for name in skipped:
            print(f"{name}: skipped with --quick (no quick setting)")
        return 0

    out.mkdir(parents=True, exist_ok=True)
    facts = machine_facts()
    facts["load average before"] = load_average()
    outcomes: dict[str, dict[str, Any] | None] = {}
    if not args.summary_only:
        print("machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()), flush=True)
        for name, bench in plan:
            cmd = command(bench, out, args.quick)
            print(f"\n=== {name}: {bench.what}\n$ {shlex.join(cmd)}", flush=True)
            outcomes[name] = run_one(bench, cmd, out / f"{name}.log", args.timeout)
            print(f"=== {name}: exit {outcomes[name]['returncode']} in {outcomes[name]['wall_s']:.0f}s", flush=True)
        facts["load average after"] = load_average()
    rows = [row for name, _ in plan for row in summarize(name, out, outcomes.get(name))]
    rows += [_row(name, "run", "skipped with --quick (no quick setting)") for name in skipped]
    mode = "QUICK smoke settings: not the benchmark results" if args.quick else "full settings"
    header = [
        f"raw_rm benchmark summary ({mode}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        "machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()),
        "",
    ]
    if args.summary_only:
        header.insert(
            2, f"(summarised from {out}; machine facts are this machine's now, the runs' own are in their logs)"
        )
    table = render(rows)
    text = "\n".join(header) + "\n" + table + "\n"
    print("\n" + text)
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(
        json.dumps(
            {"mode": "quick" if args.quick else "full", "machine": facts, "rows": rows, "runs": outcomes}, indent=1
        )
    )
    print(f"wrote {out / 'summary.md'} and {out / 'summary.json'}")
    failed = [n for n, o in outcomes.items() if o is not None and (o["returncode"] != 0 or o["timed_out"])]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
