"""`raw-rm label`: people judge pairs in a web app; agreement report; export to training data (edge).

    raw-rm label --pool selected.jsonl --db sqlite:///labels.db --annotator alice --annotator bob   # serve
    raw-rm label annotators --db sqlite:///labels.db [--add NAME ...]        # list, or add and print their links
    raw-rm label report --db sqlite:///labels.db --out reports/labels      # agreement: text, report.html, plots
    raw-rm label export --db sqlite:///labels.db --out labels.jsonl [--as pairs|groups] [--aspect NAME]

Serving: items come from ``--pool`` (``raw-rm select`` output, chosen/rejected pairs or k-wise groups; loading a
pool again adds only new items) into the SQLite database, which keeps settings, annotators, leases and judgements
across restarts. ``--model DIR_OR_URI`` scores every item with a reward model so that the report puts the model's
agreement with people next to the annotators' own (human validation). The app binds 127.0.0.1; any other
``--host`` needs the admin key (``RAW_RM_API_KEY`` or ``--api-key-file``), as ``raw-rm serve`` does.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from raw_rm.cli._io import write_jsonl
from raw_rm.cli.common import local_model_dir
from raw_rm.config import ServeConfig
from raw_rm.data.formats import DataError
from raw_rm.label.export import export_rows
from raw_rm.label.pool import read_pool
from raw_rm.label.store import LabelStore, StoreError
from raw_rm.serve.security import ServeSecurityError, check_bind_security, resolve_api_key

log = logging.getLogger(__name__)

ACTIONS = ("serve", "annotators", "report", "export")
# option dest -> (its flag, the actions that use it); any other action warns that it ignores the option
OPTION_ACTIONS = {
    "pool": ("--pool", ("serve",)),
    "per_item": ("--per-item", ("serve",)),
    "aspects": ("--aspects", ("serve",)),
    "model": ("--model", ("serve",)),
    "tracking_uri": ("--tracking-uri", ("serve",)),
    "annotator": ("--annotator", ("serve",)),
    "api_key_file": ("--api-key-file", ("serve",)),
    "lease_s": ("--lease-s", ("serve",)),
    "add": ("--add", ("annotators",)),
    "out": ("--out", ("report", "export")),
    "kind": ("--as", ("export",)),
    "min_judgements": ("--min-judgements", ("export",)),
    "aspect": ("--aspect", ("export",)),
    "n_boot": ("--n-boot", ("serve", "report")),
    "seed": ("--seed", ("report",)),
}
DEFAULT_PORT = 8100  # beside the scoring API's 8000


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "examples:\n" + "\n".join(line for line in __doc__.splitlines() if line.startswith("    raw-rm"))
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("action", nargs="?", default="serve", choices=ACTIONS, help="what to do (default: serve)")
    parser.add_argument("--db", required=True, help="sqlite:///FILE.db (or a path): the labelling database")
    serve = parser.add_argument_group("serve")
    serve.add_argument("--pool", default=None, help="items to label (JSONL/Parquet); optional once the db has items")
    serve.add_argument("--per-item", type=int, default=None, help="annotators per item (stored; default 2)")
    serve.add_argument("--aspects", default=None, help="comma-separated per-aspect questions (default: the model's)")
    serve.add_argument("--model", default=None, help="reward model folder or models:/ URI to validate against people")
    serve.add_argument("--tracking-uri", default=None, help="MLflow store that resolves a models:/ URI")
    serve.add_argument("--annotator", action="append", default=[], help="add this annotator (repeatable)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address; non-loopback needs the admin key")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="HTTP port")
    serve.add_argument("--api-key-file", default=None, help="file holding the admin key (else $RAW_RM_API_KEY)")
    serve.add_argument("--lease-s", type=float, default=None, help="seconds an item stays reserved for its annotator")
    serve.add_argument("--a-field", default="response_a", help="pool field of the first response")
    serve.add_argument("--b-field", default="response_b", help="pool field of the second response")
    serve.add_argument("--add", action="append", default=[], help="annotators: add this annotator (repeatable)")
    out = parser.add_argument_group("report / export")
    out.add_argument("--out", default=None, help="report: output folder; export: JSONL file ('-' = stdout)")
    out.add_argument("--as", dest="kind", choices=("pairs", "groups"), default="pairs", help="export: row kind")
    out.add_argument("--min-judgements", type=int, default=1, help="export: judgements a comparison/item needs")
    out.add_argument("--aspect", default=None, help="export: that aspect's answers instead of the overall ones")
    out.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the intervals")
    out.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def _defaults() -> dict[str, object]:
    parser = argparse.ArgumentParser()
    configure(parser)
    return {dest: parser.get_default(dest) for dest in OPTION_ACTIONS}


def _links(host: str, port: int, named: dict[str, str]) -> list[str]:
    base = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    return [f"  {name}: {base}/annotate#token={token}" for name, token in named.items()]


def _score_items(store, model: str, tracking_uri: str | None) -> list[str]:
    """Score every item's responses with ``model``; returns the model's aspects."""
    # torch-backed modules, FastAPI and matplotlib are imported inside functions: `raw-rm label --help` loads this
    # module
    from raw_rm.quantization import load_for_inference

    rm = load_for_inference(local_model_dir(model, tracking_uri=tracking_uri))
    items = store.items()
    prompts = [item.prompt for item in items for _ in item.responses]
    responses = [r for item in items for r in item.responses]
    t0 = time.perf_counter()
    rewards = rm.batch_predict(prompts, responses).tolist()
    log.info("scored %d responses with %s in %.1f s", len(responses), model, time.perf_counter() - t0)
    out, start = {}, 0
    for item in items:
        out[item.id] = rewards[start : start + len(item.responses)]
        start += len(item.responses)
    store.set_model_rewards(model, out)
    return list(rm.metadata.aspects or [])


def _serve(args: argparse.Namespace, store) -> int:
    try:
        key = resolve_api_key(ServeConfig(api_key_file=args.api_key_file))
        check_bind_security(args.host, key, allow_unauthenticated_network=False)
    except ServeSecurityError as exc:
        print(f"raw-rm label: error: {exc}", file=sys.stderr)
        return 2
    if args.pool:
        items, dropped = read_pool(args.pool, a_field=args.a_field, b_field=args.b_field)
        added = store.add_items(items)
        print(f"{args.pool}: {len(items)} items, {added} new" + (f"; not loaded: {dropped}" if dropped else ""))
    if not store.items():
        raise DataError(f"{store.path}: no items to label: pass --pool FILE")
    model_aspects = _score_items(store, args.model, args.tracking_uri) if args.model else []
    aspects = [a.strip() for a in args.aspects.split(",") if a.strip()] if args.aspects is not None else None
    if aspects is None and model_aspects:
        aspects = model_aspects
    settings = store.configure(per_item=args.per_item, aspects=aspects, lease_s=args.lease_s)
    tokens = {name: store.add_annotator(name) for name in args.annotator}
    from raw_rm.label.app import build_app, serve_app

    print(
        f"labelling {len(store.items())} items, {settings.per_item} annotators each"
        + (f", aspects: {', '.join(settings.aspects)}" if settings.aspects else "")
        + (f", model: {settings.model}" if settings.model else "")
    )
    if tokens:
        print(
            "annotator links (shown once; the token is the secret):\n" + "\n".join(_links(args.host, args.port, tokens))
        )
    print(f"admin: http://{args.host}:{args.port}/admin" + ("#key=<the admin key>" if key else ""))
    serve_app(build_app(store, admin_key=key, n_boot=args.n_boot), host=args.host, port=args.port)
    return 0


def run(args: argparse.Namespace) -> int:
    defaults = _defaults()
    for dest, (flag, actions) in OPTION_ACTIONS.items():
        if args.action not in actions and getattr(args, dest) != defaults[dest]:
            print(f"raw-rm label {args.action}: {flag} is ignored (it is for {' / '.join(actions)})", file=sys.stderr)
    try:
        store = LabelStore(args.db)
        if args.action == "serve":
            return _serve(args, store)
        if args.action == "annotators":
            tokens = {name: store.add_annotator(name) for name in args.add}
            for a in store.annotators():
                print(a.name)
            if tokens:
                print("links (shown once):\n" + "\n".join(_links(args.host, args.port, tokens)))
            return 0
        if args.out is None:
            raise ValueError(f"--out: required for {args.action}")
        if args.action == "report":
            return _report(args, store)
        return _export(args, store)
    except (DataError, StoreError, ValueError, OSError) as exc:
        print(f"raw-rm label: error: {exc}", file=sys.stderr)
        return 2


def _report(args: argparse.Namespace, store) -> int:
    from raw_rm.label.report import session_summary, summary_lines, write_report

    summary = session_summary(store, n_boot=args.n_boot, seed=args.seed)
    print("\n".join(summary_lines(summary)))
    for path in write_report(summary, args.out):
        print(f"wrote {path}")
    return 0


def _export(args: argparse.Namespace, store) -> int:
    rows, skipped = export_rows(
        store.items(),
        store.judgements(),
        kind=args.kind,
        min_judgements=args.min_judgements,
        aspect=args.aspect,
        session_aspects=store.settings().aspects,
    )
    if not rows:
        raise ValueError(f"{store.path}: nothing to export yet (not written: {skipped or 'no judgements'})")
    n = write_jsonl(args.out, rows)
    what = "comparisons" if args.kind == "pairs" else "items"
    print(
        f"exported {n} {args.kind} -> {args.out}" + (f"; {what} not written: {skipped}" if skipped else ""),
        file=sys.stderr,
    )
    return 0
