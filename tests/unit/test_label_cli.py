"""`raw-rm label annotators | report | export` in-process on a database filled through the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raw_rm.cli import main
from raw_rm.label.judgement import Judgement
from raw_rm.label.pool import PoolItem
from raw_rm.label.store import LabelStore


def _filled(tmp_path: Path) -> str:
    """Eight pairs judged by ann, bob and cat (who always disagrees), plus one k-wise item judged by ann and bob."""
    url = f"sqlite:///{tmp_path}/cli.db"
    store = LabelStore(url)
    store.configure(per_item=3, aspects=["helpfulness"])
    store.add_items(
        [PoolItem(f"q{i}", [f"good{i}", f"bad{i}"], f"pool.jsonl:{i + 1}") for i in range(8)]
        + [PoolItem("k", ["x", "y", "z"], "pool.jsonl:9")]
    )
    for name in ("ann", "bob", "cat"):
        store.add_annotator(name)
        who = store.annotators()[-1]
        while (view := store.next_item(who)) is not None:
            item = view[0]
            if len(item.responses) == 3:
                ranks = [0, 1, 2] if name != "cat" else [2, 1, 0]
                store.submit(who, Judgement(item.id, "ranked", ranks))
            else:
                ranks = [1, 0] if name == "cat" else [0, 1]
                store.submit(who, Judgement(item.id, "ranked", ranks, aspects={"helpfulness": ranks.index(0)}))
    return url


def test_annotators_add_and_list(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path}/a.db"
    assert main(["label", "annotators", "--db", url, "--add", "ann", "--add", "bob"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["ann", "bob"] and out[2] == "links (shown once):"
    assert out[3].startswith("  ann: http://127.0.0.1:8100/annotate#token=")
    token = out[3].rsplit("=", 1)[1]
    assert LabelStore(url).annotator_by_token(token).name == "ann"
    assert main(["label", "annotators", "--db", url, "--add", "ann"]) == 2
    assert capsys.readouterr().err == "raw-rm label: error: name: annotator 'ann' exists already\n"


def test_report_flags_the_annotator_far_below_the_rest(tmp_path: Path, capsys) -> None:
    url = _filled(tmp_path)
    assert main(["label", "report", "--db", url, "--out", str(tmp_path / "rep"), "--n-boot", "50"]) == 0
    out = capsys.readouterr().out
    # cat disagrees with ann and with bob on all 11 comparisons (8 pairs, 3 of the k-wise item): 0/22, Wilson upper
    # bound 3.8416/22 / (1 + 3.8416/22) = 0.149 (15%), below ann/bob's 11/11 = 100%. ann: 11/22 (upper 70%) vs
    # bob/cat 0/11: not flagged. With the majority: ann vs {bob, cat} never has one (1 vs 1), cat vs {ann, bob} 0/11.
    assert (
        "  cat: judged 9, skipped 0, with the majority 0/11 = 0.0%  FLAGGED: agrees with the others on 0/22 = 0% "
        "of shared comparisons (95% upper bound 15%) vs 100% among the other annotators"
    ) in out
    assert "  ann: judged 9, skipped 0\n" in out and "  ann / bob: same direction on 11/11 shared comparisons" in out
    assert "aspect helpfulness: raw agreement 33.3%" in out  # per pair: ann-bob agree, cat disagrees with both
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == [
        "agreement.png",
        "kappa.png",
        "progress.png",
        "report.html",
        "report.json",
    ]


def test_export_groups_and_an_aspect(tmp_path: Path, capsys) -> None:
    url = _filled(tmp_path)
    groups = tmp_path / "groups.jsonl"
    assert main(["label", "export", "--db", url, "--out", str(groups), "--as", "groups"]) == 0
    rows = [json.loads(line) for line in groups.read_text().splitlines()]
    # Mean ranks over ann, bob, cat: pairs [1/3, 2/3] -> good first; the k-wise item [2/3, 1, 4/3] -> x, y, z.
    assert [r["ranks"] for r in rows] == [[0, 1]] * 8 + [[0, 1, 2]]
    aspect = tmp_path / "helpfulness.jsonl"
    assert main(["label", "export", "--db", url, "--out", str(aspect), "--aspect", "helpfulness"]) == 0
    rows = [json.loads(line) for line in aspect.read_text().splitlines()]
    assert len(rows) == 8 and {(r["aspect"], r["weight"]) for r in rows} == {("helpfulness", 0.6667)}
    capsys.readouterr()
    assert main(["label", "export", "--db", url, "--out", str(aspect), "--aspect", "humour"]) == 2
    assert capsys.readouterr().err == (
        "raw-rm label: error: aspect: 'humour': expected one of the session's aspects (helpfulness) with pairs\n"
    )


def test_report_and_export_of_an_empty_session(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path}/e.db"
    assert main(["label", "report", "--db", url, "--out", str(tmp_path / "rep"), "--n-boot", "10", "--pool", "p"]) == 0
    captured = capsys.readouterr()
    assert "raw n/a, Krippendorff's alpha nominal n/a, ordinal n/a" in captured.out
    assert captured.err == "raw-rm label report: --pool is ignored (it is for serve)\n"
    assert main(["label", "export", "--db", url, "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "nothing to export yet" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["label", "report"])  # --db is required
