"""`raw-rm registry list|show|promote|rollback`: the MLflow model registry of trained reward models."""

from __future__ import annotations

import argparse
import sys
import time

from raw_rm.cli.common import add_config_args, config_from_args

EPILOG = """examples:
  raw-rm registry list                                   # versions of mlflow.registered_model
  raw-rm registry show raw_rm-reward                     # aliases, metrics, lineage, rollback history
  raw-rm registry promote raw_rm-reward 3 gate.min_accuracy=0.7 gate.max_ece=0.05
  raw-rm registry rollback raw_rm-reward --reason "accuracy drop in production"
  raw-rm registry list --tracking-uri http://mlflow.internal:5000

The store is mlflow.tracking_uri (default sqlite:///mlruns/mlflow.db); the gate is the config's gate.* section.
Any command that takes a model path also takes models:/NAME@champion or models:/NAME/3."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    sub = parser.add_subparsers(dest="action", required=True, metavar="{list,show,promote,rollback}")
    p = sub.add_parser("list", help="versions with aliases, gate metrics and lineage")
    p.add_argument("name", nargs="?", default=None, help="registered model (default: mlflow.registered_model)")
    p = sub.add_parser("show", help="one registered model: aliases, tags and every version in detail")
    p.add_argument("name", nargs="?", default=None, help="registered model (default: mlflow.registered_model)")
    p = sub.add_parser("promote", help="move alias 'champion' to VERSION if the evaluation gate (gate.*) passes")
    p.add_argument("name", help="registered model")
    p.add_argument("version", help="version number to promote")
    p.add_argument("--who", default=None, help="recorded as promoted_by (default: the OS user)")
    p.add_argument("--reason", default="", help="recorded as promotion_reason")
    p = sub.add_parser("rollback", help="move 'champion' back to the previous champion, recording who and why")
    p.add_argument("name", help="registered model")
    p.add_argument("--reason", required=True, help="why (recorded in the registry)")
    p.add_argument("--who", default=None, help="recorded as rolled_back_by (default: the OS user)")
    for action in sub.choices.values():
        add_config_args(action, flags=("tracking_uri",))


def run(args: argparse.Namespace) -> int:
    # raw_rm.tracking.registry (MLflow) is imported inside run(): `raw-rm registry --help` loads this module
    from raw_rm.tracking import registry

    cfg = config_from_args(args)
    uri = cfg.mlflow.tracking_uri
    name = getattr(args, "name", None) or cfg.mlflow.registered_model
    try:
        if args.action == "list":
            print(_versions_table(registry.list_versions(name, tracking_uri=uri)))
        elif args.action == "show":
            _print_show(registry.show(name, tracking_uri=uri))
        elif args.action == "promote":
            decision = registry.promote(
                name, args.version, cfg.gate, who=args.who, reason=args.reason, tracking_uri=uri
            )
            was = f"v{decision.champion}" if decision.champion else "none"
            print(f"{name}: champion -> v{decision.version} (was {was}); gate passed: {_metrics(decision.metrics)}")
        elif args.action == "rollback":
            res = registry.rollback(name, args.reason, args.who, tracking_uri=uri)
            print(f"{name}: champion rolled back v{res.from_version} -> v{res.to_version} by {res.who}: {res.reason}")
    except registry.PromotionRefused as exc:
        d = exc.decision
        print(f"raw-rm registry: {exc}", file=sys.stderr)
        champ = f"v{d.champion} {_metrics(d.champion_metrics)}" if d.champion else "none"
        print(f"  candidate v{d.version}: {_metrics(d.metrics)}; current champion: {champ}", file=sys.stderr)
        return 1
    except registry.RegistryError as exc:
        print(f"raw-rm registry: {exc}", file=sys.stderr)
        return 1
    return 0


def _metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())) or "no metrics"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _versions_table(versions: list) -> str:
    rows = [
        [
            v.version,
            ",".join(v.aliases) or "-",
            _fmt(v.metrics.get("accuracy")),
            _fmt(v.metrics.get("ece")),
            time.strftime("%Y-%m-%d %H:%M", time.gmtime(v.created_ms / 1000)),
            (v.run_id or "-")[:12],
            _short(v.data_fingerprint),
            v.experiment,
            v.base_model,
        ]
        for v in versions
    ]
    header = ["version", "aliases", "accuracy", "ece", "created (UTC)", "run", "data", "experiment", "base model"]
    return f"{versions[0].name}: {len(versions)} version(s)\n" + _table(header, rows)


def _short(fingerprint: str) -> str:
    kind, _, digest = fingerprint.partition(":")
    return f"{kind}:{digest[:12]}" if digest else fingerprint


def _print_show(info) -> None:  # noqa: ANN001 - registry.ModelInfo
    aliases = ", ".join(f"{a} -> v{v}" for a, v in info.aliases.items()) or "none"
    print(f"{info.name}\n  aliases: {aliases}")
    for key in ("last_rollback",):
        if key in info.tags:
            print(f"  {key}: {info.tags[key]}")
    print()
    print(_versions_table(info.versions))
    for v in info.versions:
        print(f"\nv{v.version} ({', '.join(v.aliases) or 'no alias'})")
        print(f"  run:               {v.run_id}")
        print(f"  experiment:        {v.experiment}")
        print(f"  data fingerprint:  {v.data_fingerprint}")
        print(f"  base model:        {v.base_model}   git commit: {v.git_commit}")
        print(f"  metrics:           {_metrics(v.metrics)}")
        print(f"  source:            {v.source}")
        history = [
            f"{k}={v.tags[k]}"
            for k in (
                "promoted_by",
                "promoted_at",
                "previous_champion",
                "rolled_back_by",
                "rolled_back_at",
                "rollback_reason",
            )
            if k in v.tags
        ]
        if history:
            print(f"  history:           {'; '.join(history)}")
