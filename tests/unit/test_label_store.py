"""Labelling core: pool reading, assignment, judgement validation, the SQLite store and the export to training data."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raw_rm.data.formats import DataError
from raw_rm.data.readers import read_records
from raw_rm.label.assignment import Slots, display_order, pick_item
from raw_rm.label.export import as_groups, as_pairs, comparison_table
from raw_rm.label.judgement import (
    Judgement,
    JudgementError,
    comparison_values,
    parse_judgement,
)
from raw_rm.label.pool import read_pool
from raw_rm.label.store import LabelStore, StoreError, db_path


# ------------------------------------------------------------------------------------------- assignment
def test_pick_item_prefers_items_closest_to_complete_then_pool_order() -> None:
    slots = [Slots(1, 0, 0), Slots(2, 1, 0), Slots(3, 1, 1), Slots(4, 0, 1)]
    # Item 3 is full (1 judged + 1 leased = per_item 2); item 2 has one judgement: first.
    assert pick_item(slots, answered=set(), own_lease=None, per_item=2) == 2
    # Once answered, never again; then item 4 (a lease by someone else) before item 1, then pool order.
    assert pick_item(slots, answered={2}, own_lease=None, per_item=2) == 4
    assert pick_item(slots, answered={2, 4}, own_lease=None, per_item=2) == 1
    assert pick_item(slots, answered={1, 2, 4}, own_lease=None, per_item=2) is None
    # An unexpired lease of one's own comes back (a reload shows the same item), unless answered already.
    assert pick_item(slots, answered=set(), own_lease=3, per_item=2) == 3
    assert pick_item(slots, answered={3}, own_lease=3, per_item=2) == 2
    with pytest.raises(ValueError, match=r"^per_item: expected >= 1, got 0$"):
        pick_item(slots, answered=set(), own_lease=None, per_item=0)


def test_display_order_is_a_stable_per_annotator_permutation() -> None:
    orders = {display_order(7, name, 4) == [0, 1, 2, 3] for name in ("a", "b", "c", "d", "e", "f", "g", "h")}
    assert orders == {True, False}  # some annotators see the pool order, others a shuffle
    assert display_order(7, "ann", 4) == display_order(7, "ann", 4)
    assert sorted(display_order(7, "ann", 4)) == [0, 1, 2, 3]


# -------------------------------------------------------------------------------------------- judgements
def test_parse_judgement_accepts_and_names_the_bad_field() -> None:
    ok = parse_judgement(
        {
            "item_id": 3,
            "decision": "ranked",
            "ranks": [1, 0],
            "strength": "clear",
            "aspects": {"helpfulness": 1},
            "note": "b is kinder",
        },
        k=2,
        aspects=["helpfulness"],
    )
    assert ok == Judgement(3, "ranked", [1, 0], "clear", {"helpfulness": 1}, "b is kinder")
    cases = [
        ({"item_id": "3", "decision": "tie"}, "item_id: expected an integer, got '3'"),
        ({"item_id": 3, "decision": "maybe"}, "decision: expected one of ranked, tie, skip, got 'maybe'"),
        (
            {"item_id": 3, "decision": "ranked", "ranks": [0]},
            "ranks: expected a list of 2 integers (0 = best), got [0]",
        ),
        ({"item_id": 3, "decision": "ranked", "ranks": [0, 2]}, "ranks[1]: expected an integer in 0..1, got 2"),
        (
            {"item_id": 3, "decision": "ranked", "ranks": [0, 0]},
            'ranks: all responses ranked equal: send decision "tie" instead',
        ),
        ({"item_id": 3, "decision": "tie", "strength": "clear"}, "strength: only for a ranked pair of two responses"),
        (
            {"item_id": 3, "decision": "tie", "aspects": {"honesty": 0}},
            "aspects.honesty: unknown aspect; known: helpfulness",
        ),
        (
            {"item_id": 3, "decision": "tie", "aspects": {"helpfulness": 5}},
            'aspects.helpfulness: expected a response index in 0..1 or "tie", got 5',
        ),
        ({"item_id": 3, "decision": "skip", "note": "x" * 2001}, "note: 2001 characters; at most 2000"),
        (
            {"item_id": 3, "decision": "skip", "token": "t"},
            "token: unknown field; expected item_id, decision, ranks, strength, aspects, note",
        ),
    ]
    for body, message in cases:
        with pytest.raises(JudgementError) as info:
            parse_judgement(body, k=2, aspects=["helpfulness"])
        assert str(info.value) == message


def test_comparison_values_scale() -> None:
    assert comparison_values(Judgement(1, "ranked", [0, 1], "clear"), 2) == {(0, 1): 2}
    assert comparison_values(Judgement(1, "ranked", [1, 0], "slight"), 2) == {(0, 1): -1}
    assert comparison_values(Judgement(1, "ranked", [2, 0, 1]), 3) == {(0, 1): -1, (0, 2): -1, (1, 2): 1}
    assert comparison_values(Judgement(1, "tie"), 3) == {(0, 1): 0, (0, 2): 0, (1, 2): 0}
    assert comparison_values(Judgement(1, "skip"), 2) == {}


# ------------------------------------------------------------------------------------------------- pool
def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_read_pool_takes_select_output_pairs_and_groups(tmp_path: Path) -> None:
    pool = _write(
        tmp_path / "pool.jsonl",
        [
            {"prompt": "2+2?", "response_a": "4", "response_b": "5", "selection_score": 0.3, "selection_rank": 0},
            {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"},
            {
                "messages": [{"role": "user", "content": "Name a prime."}],
                "responses": ["7", "9", "12"],
                "ranks": [0, 1, 1],
            },
            {"prompt": "same", "response_a": "x", "response_b": "x"},
            {"prompt": "2+2?", "response_a": "4", "response_b": "5"},
        ],
    )
    items, dropped = read_pool(pool)
    assert [(i.prompt, i.responses) for i in items] == [
        ("2+2?", ["4", "5"]),
        ("\n\nHuman: hi\n\nAssistant:", ["hello", "go away"]),
        ("\n\nHuman: Name a prime.\n\nAssistant:", ["7", "9", "12"]),
    ]
    assert items[0].extra == {"selection_score": 0.3, "selection_rank": 0}
    assert items[0].source == f"{pool}:1"
    assert dropped == {"chosen_equals_rejected": 1, "duplicate": 1}


def test_read_pool_errors_name_line_and_field(tmp_path: Path) -> None:
    pool = _write(tmp_path / "bad.jsonl", [{"prompt": "p", "response_a": "a"}])
    with pytest.raises(DataError, match=r'bad\.jsonl:1: field "response_b": missing; expected the response_b response'):
        read_pool(pool)
    rated = _write(tmp_path / "rated.jsonl", [{"prompt": "p", "response": "r", "helpfulness": 3}])
    with pytest.raises(DataError, match=r"rated\.jsonl:1: a rated row; expected a pair"):
        read_pool(rated)


# ------------------------------------------------------------------------------------------------ store
@pytest.fixture()
def store(tmp_path: Path) -> LabelStore:
    pool = _write(
        tmp_path / "pool.jsonl", [{"prompt": f"q{i}", "response_a": f"a{i}", "response_b": f"b{i}"} for i in range(4)]
    )
    s = LabelStore(f"sqlite:///{tmp_path}/labels.db")
    s.configure(per_item=2)
    assert s.add_items(read_pool(pool)[0]) == 4
    return s


def _answer(store: LabelStore, name: str, ranks: list[int] | None = (0, 1), decision: str = "ranked") -> int | None:
    annotator = next(a for a in store.annotators() if a.name == name)
    view = store.next_item(annotator)
    if view is None:
        return None
    store.submit(annotator, Judgement(view[0].id, decision, None if ranks is None else list(ranks)))
    return view[0].id


def test_db_url_forms(tmp_path: Path) -> None:
    assert db_path("sqlite:///labels.db") == Path("labels.db")
    assert db_path(f"sqlite:///{tmp_path}/x.db") == tmp_path / "x.db"
    assert db_path("labels.db") == Path("labels.db")
    for bad in ("postgresql://h/db", "sqlite:///:memory:", "sqlite://"):
        with pytest.raises(ValueError, match=r"expected sqlite:///FILE\.db"):
            db_path(bad)


def test_each_item_goes_to_per_item_annotators_and_nobody_twice(store: LabelStore) -> None:
    for name in ("ann", "bob", "cat"):
        store.add_annotator(name)
    seen = {name: [] for name in ("ann", "bob", "cat")}
    for name in ("ann", "bob", "cat"):
        while (item := _answer(store, name)) is not None:
            seen[name].append(item)
    assert sorted(seen["ann"]) == [1, 2, 3, 4] and sorted(seen["bob"]) == [1, 2, 3, 4] and seen["cat"] == []
    progress = store.progress()
    assert progress["items_complete"] == 4 and progress["judgements"] == 8
    assert [r.annotator for r in store.judgements()[1]] == ["ann", "bob"]


def test_skip_frees_the_slot_for_another_annotator(store: LabelStore) -> None:
    for name in ("ann", "bob", "cat"):
        store.add_annotator(name)
    assert _answer(store, "ann", None, "skip") == 1
    while _answer(store, "ann") is not None:
        pass
    while _answer(store, "bob") is not None:
        pass
    assert _answer(store, "cat") == 1  # item 1 had one judgement (bob's) and a skip: one free slot, only there
    assert _answer(store, "cat") is None
    assert store.progress()["annotators"][0] == {"name": "ann", "judged": 3, "skipped": 1, "open_leases": 0}


def test_submit_refuses_unknown_unassigned_and_repeated(store: LabelStore) -> None:
    store.add_annotator("ann")
    ann = store.annotators()[0]
    with pytest.raises(StoreError, match=r"^item_id: no item 99$") as info:
        store.submit(ann, Judgement(99, "tie"))
    assert info.value.status == 404
    with pytest.raises(StoreError, match=r"^item_id: item 1 was not given to ann \(GET /api/next\)$"):
        store.submit(ann, Judgement(1, "tie"))
    item = store.next_item(ann)[0]
    store.submit(ann, Judgement(item.id, "tie"))
    with pytest.raises(StoreError, match=rf"^item_id: item {item.id} is answered already by ann$") as info:
        store.submit(ann, Judgement(item.id, "tie"))
    assert info.value.status == 409
    with pytest.raises(StoreError, match=r"^name: annotator 'ann' exists already$"):
        store.add_annotator("ann")


def test_tokens_are_stored_hashed(store: LabelStore) -> None:
    token = store.add_annotator("ann")
    assert store.annotator_by_token(token).name == "ann"
    assert store.annotator_by_token(token + "x") is None and store.annotator_by_token("") is None
    assert token.encode() not in store.path.read_bytes()


def test_restart_keeps_judgements_and_gives_back_the_open_item(store: LabelStore) -> None:
    store.add_annotator("ann")
    first = _answer(store, "ann")
    ann = store.annotators()[0]
    shown = store.next_item(ann)[0].id  # on screen when the server dies
    reopened = LabelStore(f"sqlite:///{store.path}")
    assert reopened.next_item(ann)[0].id == shown
    assert [r.judgement.item_id for rows in reopened.judgements().values() for r in rows] == [first]
    assert reopened.settings().per_item == 2


def test_concurrent_submissions_lose_nothing(store: LabelStore) -> None:
    names = [f"a{i}" for i in range(8)]
    for name in names:
        store.add_annotator(name)
    store.configure(per_item=8)
    barrier = threading.Barrier(len(names))
    errors = []

    def work(name: str) -> None:
        try:
            annotator = next(a for a in store.annotators() if a.name == name)
            for _ in range(4):
                item = store.next_item(annotator)[0]
                barrier.wait()  # every thread submits at the same moment
                store.submit(annotator, Judgement(item.id, "ranked", [0, 1]))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    judged = store.judgements()
    assert sorted(judged) == [1, 2, 3, 4] and all(len(rows) == 8 for rows in judged.values())


# ----------------------------------------------------------------------------------------------- export
def _session(tmp_path: Path) -> LabelStore:
    pool = _write(
        tmp_path / "pool.jsonl",
        [
            {"prompt": "p1", "response_a": "x1", "response_b": "y1"},
            {"prompt": "p2", "response_a": "x2", "response_b": "y2"},
            {"prompt": "p3", "responses": ["r0", "r1", "r2"]},
        ],
    )
    s = LabelStore(str(tmp_path / "s.db"))
    s.configure(per_item=3)
    s.add_items(read_pool(pool)[0])
    answers = {  # annotator -> item -> (decision, ranks)
        "ann": {1: ("ranked", [1, 0]), 2: ("tie", None), 3: ("ranked", [0, 1, 2])},
        "bob": {1: ("ranked", [1, 0]), 2: ("ranked", [0, 1]), 3: ("ranked", [0, 2, 1])},
        "cat": {1: ("ranked", [0, 1]), 2: ("skip", None), 3: ("tie", None)},
    }
    for name, per_item in answers.items():
        s.add_annotator(name)
        annotator = s.annotators()[-1]
        while (view := s.next_item(annotator)) is not None:
            decision, ranks = per_item[view[0].id]
            s.submit(annotator, Judgement(view[0].id, decision, ranks))
    return s


def test_export_pairs_majority_and_agreement_weights(tmp_path: Path) -> None:
    s = _session(tmp_path)
    rows, skipped = as_pairs(s.items(), s.judgements())
    by_key = {(r["item_id"], r["chosen"], r["rejected"]): r["weight"] for r in rows}
    # Item 1: ann, bob prefer y1, cat x1 -> y1 over x1, weight 2/3. Item 2: ann tie, bob x2 (cat skipped) -> 1 vs 1:
    # no strict majority. Item 3: (0,1): ann +, bob +, cat tie -> r0 > r1, 2/3; (0,2): ann +, bob +, cat tie ->
    # r0 > r2, 2/3; (1,2): ann +, bob -, cat tie -> no majority.
    assert by_key == {(1, "y1", "x1"): 0.6667, (3, "r0", "r1"): 0.6667, (3, "r0", "r2"): 0.6667}
    assert skipped == {"no_majority": 2}
    assert as_pairs(s.items(), s.judgements(), min_judgements=3)[1] == {"too_few_judgements": 1, "no_majority": 1}
    # raw_rm reads the rows back as weighted pairs.
    loaded = read_records([{k: v for k, v in r.items()} for r in rows])
    assert loaded.kind == "pairs" and [p.weight for p in loaded.records] == [0.6667] * 3


def test_export_groups_mean_ranks(tmp_path: Path) -> None:
    s = _session(tmp_path)
    rows, skipped = as_groups(s.items(), s.judgements())
    by_item = {r["item_id"]: r for r in rows}
    # Item 1 mean ranks: x1 (1 + 1 + 0) / 3, y1 (0 + 0 + 1) / 3 -> y1 best. Item 2: ann tie [0, 0], bob [0, 1] ->
    # means [0, 0.5] -> [0, 1]. Item 3: ann [0,1,2], bob [0,2,1], cat tie [0,0,0] -> means [0, 1, 1]: ranks [0, 1, 1].
    assert by_item[1]["ranks"] == [1, 0] and by_item[2]["ranks"] == [0, 1] and by_item[3]["ranks"] == [0, 1, 1]
    assert by_item[3]["n_judgements"] == 3 and skipped == {}
    # Agreement of item 3: comparisons (0,1) and (0,2) 1 of 3 annotator pairs agree, (1,2) 0 of 3 -> mean 2/9.
    assert by_item[3]["agreement"] == round(2 / 9, 4)
    assert read_records(rows).kind == "groups"
    assert comparison_table(s.items(), s.judgements())[(3, 1, 2)] == {"ann": 1, "bob": -1, "cat": 0}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 5) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
bodies = (
    st.fixed_dictionaries(
        {},
        optional={
            "item_id": json_values,
            "decision": st.sampled_from(["ranked", "tie", "skip", "x"]) | json_values,
            "ranks": st.lists(st.integers(-1, 3), max_size=4) | json_values,
            "strength": st.sampled_from(["slight", "clear"]) | json_values,
            "aspects": st.dictionaries(
                st.sampled_from(["helpfulness", "other"]), st.integers(-1, 3) | json_values, max_size=2
            )
            | json_values,
            "note": json_values,
        },
    )
    | json_values
)


@settings(max_examples=40, deadline=None)
@given(bodies, st.integers(2, 4))
def test_any_json_body_is_either_a_judgement_or_a_named_field_error(body, k: int) -> None:
    try:
        judgement = parse_judgement(body, k=k, aspects=["helpfulness"])
    except JudgementError as exc:
        assert str(exc).startswith(f"{exc.field}: ")
        return
    values = comparison_values(judgement, k)  # a valid judgement always has a meaning
    assert judgement.decision == "skip" or len(values) == k * (k - 1) // 2
