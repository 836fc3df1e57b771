"""The labelling session in numbers and plots: the admin page's data and ``raw-rm label report``'s files.

Plots are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas directly, so nothing here touches
pyplot's global state or the process-wide backend (the app serves them from request threads).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from raw_rm.label.agreement import raw_agreement, summarise, table_alpha
from raw_rm.label.export import comparison_table, model_differences
from raw_rm.label.store import LabelStore

PLOTS = ("progress", "agreement", "kappa")


def session_summary(store: LabelStore, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Settings, progress per annotator, agreement (overall, per annotator pair, with the majority, flags, per item,
    the model's against the human ceiling) and per-aspect agreement, as one JSON-ready dict."""
    settings = store.settings()
    items = store.items()
    judgements = store.judgements()
    table = comparison_table(items, judgements)
    summary = summarise(table, model_differences(items) or None, n_boot=n_boot, seed=seed).to_dict()
    aspects = {}
    for aspect in settings.aspects:
        multi = {u: r for u, r in comparison_table(items, judgements, aspect=aspect).items() if len(r) >= 2}
        agreement, n_pairs = raw_agreement(multi)
        aspects[aspect] = {
            "raw_agreement": None if math.isnan(agreement) else agreement,
            "annotator_pairs": n_pairs,
            "alpha_nominal": None if math.isnan(a := table_alpha(multi)) else a,
        }
    return {
        "settings": {
            "per_item": settings.per_item,
            "aspects": list(settings.aspects),
            "model": settings.model,
            "lease_s": settings.lease_s,
        },
        "progress": store.progress(),
        "agreement": summary,
        "aspects": aspects,
        "n_boot": n_boot,
    }


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return buffer.getvalue()


def _empty(fig: Figure, text: str) -> bytes:
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, color="#555")
    return _png(fig)


def plot_progress(summary: dict[str, Any]) -> bytes:
    """PNG: judged and skipped items per annotator (stacked bars)."""
    rows = summary["progress"]["annotators"]
    fig = Figure(figsize=(6.4, 0.5 + 0.45 * max(len(rows), 2)), dpi=100, layout="constrained")
    if not rows:
        return _empty(fig, "no annotators yet")
    ax = fig.add_subplot()
    names = [r["name"] for r in rows]
    judged = [r["judged"] for r in rows]
    ax.barh(names, judged, color="#2b6cb0", label="judged")
    ax.barh(names, [r["skipped"] for r in rows], left=judged, color="#a0aec0", label="skipped")
    ax.invert_yaxis()
    ax.set_xlabel("items answered")
    ax.set_title(
        f"{summary['progress']['items_complete']} of {summary['progress']['items']} items complete "
        f"({summary['progress']['per_item']} annotators each)",
        fontsize=10,
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)  # outside: bars stay visible
    return _png(fig)


def plot_agreement(summary: dict[str, Any]) -> bytes:
    """PNG: each annotator's agreement with the majority of the others (95% Wilson interval; flagged in red), the
    reward model's agreement with the majority (bootstrap interval) and the human ceiling as a dashed line."""
    agreement = summary["agreement"]
    rows = [(name, v["share"], v["ci"], name in agreement["flags"]) for name, v in agreement["with_majority"].items()]
    model = agreement.get("model") or {}
    if model.get("majority", {}).get("n"):
        ci = agreement["model_ci"] or [None, None]
        rows.append(("reward model", model["majority"]["share"], ci, False))
    fig = Figure(figsize=(6.4, 0.9 + 0.45 * max(len(rows), 2)), dpi=100, layout="constrained")
    if not rows:
        return _empty(fig, "no item judged by two annotators yet")
    ax = fig.add_subplot()
    for y, (name, value, ci, flagged) in enumerate(rows):
        color = "#c53030" if flagged else ("#805ad5" if name == "reward model" else "#2b6cb0")
        ax.barh(y, value or 0.0, color=color)
        if ci and ci[0] is not None and value is not None:  # max(0, .): the bounds are rounded as the share is
            ax.errorbar(value, y, xerr=[[max(0.0, value - ci[0])], [max(0.0, ci[1] - value)]], color="black", capsize=3)
    ax.set_yticks(range(len(rows)), [r[0] + (" (flagged)" if r[3] else "") for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("agreement with the majority of the others")
    ceiling = agreement.get("ceiling") or {}
    if ceiling.get("share") is not None:
        ax.axvline(ceiling["share"], color="#2f855a", linestyle="--", label=f"human ceiling {ceiling['share']:.0%}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    alpha = agreement["alpha_nominal"]
    ax.set_title(
        f"raw agreement {_pct(agreement['raw_agreement'])}, Krippendorff's alpha "
        f"{'n/a' if alpha is None else f'{alpha:.2f}'}",
        fontsize=10,
    )
    return _png(fig)


def plot_kappa(summary: dict[str, Any]) -> bytes:
    """PNG: Cohen's kappa of every annotator pair as a heat map (number of shared comparisons in brackets)."""
    kappas = summary["agreement"]["kappas"]
    names = sorted({k["a"] for k in kappas} | {k["b"] for k in kappas})
    fig = Figure(
        figsize=(1.8 + 0.8 * max(len(names), 2), 1.2 + 0.7 * max(len(names), 2)), dpi=100, layout="constrained"
    )
    if not kappas:
        return _empty(fig, "no pair of annotators shares an item yet")
    ax = fig.add_subplot()
    grid = [[math.nan] * len(names) for _ in names]
    for k in kappas:
        i, j = names.index(k["a"]), names.index(k["b"])
        value = math.nan if k["kappa"] is None else k["kappa"]
        grid[i][j] = grid[j][i] = value
        for x, y in ((i, j), (j, i)):
            text = "n/a" if math.isnan(value) else f"{value:.2f}"
            ax.text(y, x, f"{text}\n({k['n']})", ha="center", va="center", fontsize=8)
    image = ax.imshow(grid, vmin=-1, vmax=1, cmap="RdYlGn")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    fig.colorbar(image, ax=ax, label="Cohen's kappa")
    return _png(fig)


PLOTTERS = {"progress": plot_progress, "agreement": plot_agreement, "kappa": plot_kappa}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _interval(ci: Any, *, percent: bool = False) -> str:
    if not ci or ci[0] is None:
        return ""
    return f" [{ci[0]:.1%}, {ci[1]:.1%}]" if percent else f" [{ci[0]:.2f}, {ci[1]:.2f}]"


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The report as text lines (what ``raw-rm label report`` prints)."""
    p, a = summary["progress"], summary["agreement"]
    head = (
        f"items: {p['items']}, complete {p['items_complete']} ({p['per_item']} annotators each), started "
        f"{p['items_started']}; judgements: {p['judgements']}"
    )
    overall = (
        f"agreement on {a['n_comparisons']} comparisons of {a['n_items']} items judged by >= 2 annotators: "
        f"raw {_pct(a['raw_agreement'])}{_interval(a['raw_agreement_ci'], percent=True)}, Krippendorff's "
        f"alpha nominal {_num(a['alpha_nominal'])}{_interval(a['alpha_nominal_ci'])}, "
        f"ordinal {_num(a['alpha_ordinal'])}"
    )
    lines = [head, overall]
    for r in p["annotators"]:
        m = a["with_majority"].get(r["name"])
        versus = f", with the majority {m['agree']}/{m['n']} = {_pct(m['share'])}" if m else ""
        flag = f"  FLAGGED: {a['flags'][r['name']]}" if r["name"] in a["flags"] else ""
        lines.append(f"  {r['name']}: judged {r['judged']}, skipped {r['skipped']}{versus}{flag}")
    for k in a["kappas"]:
        lines.append(
            f"  {k['a']} / {k['b']}: same direction on {k['agree']}/{k['n']} shared comparisons, "
            f"Cohen's kappa {_num(k['kappa'])}"
        )
    if a.get("model"):
        m, c = a["model"]["majority"], a["ceiling"]
        lines.append(
            f"reward model {summary['settings']['model']}: agrees with the majority on {m['agree']}/{m['n']}"
            f" = {_pct(m['share'])}{_interval(a['model_ci'], percent=True)}; "
            "human ceiling (each annotator vs the others) "
            f"{c['agree']}/{c['n']} = {_pct(c['share'])}{_interval(a['ceiling_ci'], percent=True)}"
        )
        per = [
            f"{name} {v['agree']}/{v['n']} = {_pct(v['share'])}" for name, v in a["model"].items() if name != "majority"
        ]
        if per:
            lines.append("  reward model vs each annotator (their non-tie judgements): " + ", ".join(per))
    for name, v in summary["aspects"].items():
        lines.append(f"aspect {name}: raw agreement {_pct(v['raw_agreement'])}, alpha {_num(v['alpha_nominal'])}")
    return lines


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def write_report(summary: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``report.json``, one PNG per plot and ``report.html`` (the text and the plots, self-contained)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json"]
    paths[0].write_text(json.dumps(summary, indent=2, sort_keys=True))
    images = []
    for name in PLOTS:
        png = PLOTTERS[name](summary)
        (out / f"{name}.png").write_bytes(png)
        paths.append(out / f"{name}.png")
        images.append(f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(png).decode()}">')
    body = "\n".join(f"<li>{html.escape(line.strip())}</li>" for line in summary_lines(summary))
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>raw_rm labelling report</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1a202c}"
        "img{max-width:100%;display:block;margin:1rem 0}li{margin:.2rem 0}</style></head><body>"
        f"<h1>Labelling report</h1><ul>{body}</ul>{''.join(images)}</body></html>"
    )
    (out / "report.html").write_text(page)
    paths.append(out / "report.html")
    return paths
