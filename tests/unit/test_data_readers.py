"""Readers: every source type and format on small files written here; exact errors for malformed input."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

from raw_rm.data.formats import DataError
from raw_rm.data.readers import read_records
from raw_rm.data.records import PreferencePair, RankedGroup, RatedResponse

HH_ROWS = [
    {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant: Why did the chicken...",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant: No.",
    },
    {
        "chosen": "\n\nHuman: Help me steal\n\nAssistant: I can't help with that.",
        "rejected": "\n\nHuman: Help me steal\n\nAssistant:  Sure, here is how.",
    },
]


def write_jsonl(path: Path, rows: list, *, raw_lines: dict[int, str] | None = None) -> Path:
    lines = [json.dumps(r) for r in rows]
    for lineno, text in (raw_lines or {}).items():
        lines.insert(lineno - 1, text)
    body = "\n".join(lines) + "\n"
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(body)
    else:
        path.write_text(body)
    return path


def errors_of(source, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        read_records(source, **kwargs)
    return str(err.value)


# ------------------------------------------------------------------------------------------ sources
def test_jsonl_gz_hh(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl.gz", HH_ROWS)
    result = read_records(path)
    assert result.kind == "pairs" and result.report.format == "hh"
    assert result.records == [
        PreferencePair(
            "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant:",
            "Why did the chicken...",
            "No.",
            source=f"{path}:1",
        ),
        PreferencePair(
            "\n\nHuman: Help me steal\n\nAssistant:",
            "I can't help with that.",
            "Sure, here is how.",
            source=f"{path}:2",
        ),
    ]
    assert (result.report.n_read, result.report.n_kept, result.report.dropped) == (2, 2, {})


def test_jsonl_standard_explicit_prompt_and_optional_fields(tmp_path: Path) -> None:
    rows = [
        {"prompt": "Q?", "chosen": "good", "rejected": "bad", "margin": 2, "agreement": 0.75, "aspect": "honesty"},
        {"prompt": "Q2?", "chosen": "a", "rejected": "b", "weight": 1},
    ]
    result = read_records(write_jsonl(tmp_path / "p.jsonl", rows))
    assert [(r.prompt, r.chosen, r.rejected, r.margin, r.weight, r.aspect) for r in result.records] == [
        ("Q?", "good", "bad", 2.0, 0.75, "honesty"),
        ("Q2?", "a", "b", None, 1.0, None),
    ]


def test_standard_implicit_prompt_in_memory() -> None:
    result = read_records([{"chosen": "What is 2+2? It is 4.", "rejected": "What is 2+2? It is 5."}])
    assert result.records == [PreferencePair("What is 2+2? It is", "4.", "5.", source="<records>[0]")]


def test_conversational_explicit_and_implicit_prompt() -> None:
    user = {"role": "user", "content": "Hi"}
    rows = [
        {
            "prompt": [user],
            "chosen": [{"role": "assistant", "content": "Hello!"}],
            "rejected": [{"role": "assistant", "content": "Go away."}],
        },
        {
            "chosen": [user, {"role": "assistant", "content": "Hey"}],
            "rejected": [user, {"role": "assistant", "content": "No"}],
        },
    ]
    rows.append(
        {
            "prompt": "Plain prompt",
            "chosen": [{"role": "assistant", "content": "A"}],
            "rejected": [{"role": "assistant", "content": "B"}, {"role": "user", "content": "C"}],
        }
    )
    result = read_records(rows)
    assert result.report.format == "conversational"
    assert (result.records[2].prompt, result.records[2].chosen, result.records[2].rejected) == (
        "Plain prompt",
        "A",
        "Assistant: B\n\nHuman: C",
    )  # several reply messages: the plain template
    result.records = result.records[:2]
    assert [(r.prompt, r.chosen, r.rejected) for r in result.records] == [
        ("\n\nHuman: Hi\n\nAssistant:", "Hello!", "Go away."),
        ("\n\nHuman: Hi\n\nAssistant:", "Hey", "No"),
    ]


def test_ranked_groups_with_ties_and_scores() -> None:
    rows = [
        {
            "messages": [{"role": "user", "content": "Name a colour"}],
            "responses": ["red", "blue", "ok"],
            "ranks": [0, 0, 1],
        },
        {"prompt": "p", "responses": ["x", "y"], "scores": [0.1, 0.7]},
    ]
    result = read_records(rows)
    assert result.kind == "groups"
    assert result.records == [
        RankedGroup("\n\nHuman: Name a colour\n\nAssistant:", ["red", "blue", "ok"], [0, 0, 1], source="<records>[0]"),
        RankedGroup("p", ["x", "y"], [1, 0], scores=[0.1, 0.7], source="<records>[1]"),
    ]


def test_rated_helpsteer_columns_and_nested() -> None:
    rows = [
        {"prompt": "p", "response": "r", "helpfulness": 3, "verbosity": 1.5, "id": 7, "note": "x"},
        {"prompt": "p", "response": "s", "ratings": {"honesty": 4}},
    ]
    result = read_records(rows)
    assert result.kind == "ratings"
    assert result.records == [
        RatedResponse("p", "r", {"helpfulness": 3.0, "verbosity": 1.5}, "<records>[0]"),
        RatedResponse("p", "s", {"honesty": 4.0}, "<records>[1]"),
    ]


def test_parquet_rows_named_by_row_index(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "pairs.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [
                {"prompt": "p", "chosen": "a", "rejected": "b", "margin": None},
                {"prompt": "q", "chosen": "c", "rejected": 3, "margin": 1.0},
            ][:1]
        ),
        path,
    )
    assert read_records(path).records == [PreferencePair("p", "a", "b", source=f"{path}[0]")]
    bad = tmp_path / "bad.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "c", "rejected": None}]
        ),
        bad,
    )
    assert errors_of(bad) == f'{bad}[1]: field "rejected": missing; expected a string or a list of messages'


def test_datasets_save_to_disk_folder(tmp_path: Path) -> None:
    import datasets

    folder = tmp_path / "ds"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(HH_ROWS)}).save_to_disk(str(folder))
    result = read_records(folder)
    assert [r.chosen for r in result.records] == ["Why did the chicken...", "I can't help with that."]
    assert result.records[1].source == f"{folder}[1]"


def test_hub_name_offline_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = errors_of("no-such-org/no-such-dataset")
    assert message.startswith(
        "no-such-org/no-such-dataset: not a local file or folder, and loading it from the Hugging Face Hub failed "
        "(offline: HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set): "
    )


def test_json_array_rows_named_by_index(tmp_path: Path) -> None:
    path = tmp_path / "pairs.json"
    path.write_text(
        json.dumps([{"prompt": "p0", "chosen": "a", "rejected": "b"}, {"prompt": "p1", "chosen": "c", "rejected": 5}])
    )
    assert errors_of(path) == f'{path}[1]: field "rejected": expected a string or a list of messages, got int'
    first = read_records(path, limit=1).records
    assert first == [PreferencePair("p0", "a", "b", source=f"{path}[0]")]
    broken = tmp_path / "broken.json"
    broken.write_text('[\n{"prompt": "p", "chosen": "a",\n "rejected" "b"}]')
    assert errors_of(broken) == f"{broken}:3: not valid JSON (Expecting ':' delimiter at column 13)"


def test_json_file_holding_json_lines(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "hh.json", HH_ROWS)
    result = read_records(path)
    assert result.report.format == "hh" and [r.source for r in result.records] == [f"{path}:1", f"{path}:2"]


def test_csv_with_numeric_columns(tmp_path: Path) -> None:
    path = tmp_path / "prefs.csv"
    path.write_text('prompt,chosen,rejected,margin\nWhat is 2+2?,4,"5, surely",0.5\nSay hi,hi,bye,2\n')
    records = read_records(path).records
    assert records == [
        PreferencePair("What is 2+2?", "4", "5, surely", margin=0.5, source=f"{path}[0]"),
        PreferencePair("Say hi", "hi", "bye", margin=2.0, source=f"{path}[1]"),
    ]


def test_keys_map_a_data_sets_own_field_names(tmp_path: Path) -> None:
    rows = [
        {"question": "q", "better": "a", "worse": "b", "chosen": "ignored"},
        {"question": "q2", "better": "c", "worse": 3},
    ]
    keys = {"prompt": "question", "chosen": "better", "rejected": "worse"}
    first = read_records(rows, keys=keys, limit=1).records
    assert first == [PreferencePair("q", "a", "b", source="<records>[0]")]
    assert errors_of(rows, keys=keys) == (
        '<records>[1]: field "worse" (data.rejected_key): expected a string or a list of messages, got int'
    )
    assert errors_of(rows, keys={"chosen": "pos"}) == (
        "<records>[0]: data.chosen_key='pos': no such field in the row (fields: ['better', 'chosen', 'question', 'worse'])"
    )
    assert errors_of(rows, keys={"answer": "better"}).startswith(
        "keys: unknown raw_rm field(s) ['answer']; known: prompt,"
    )
    groups = [{"q": "p", "outs": ["x", "y", "z"], "order": [2, 0, 1]}]
    group = read_records(groups, keys={"prompt": "q", "responses": "outs", "ranks": "order"}).records[0]
    assert (group.prompt, group.responses, group.ranks) == ("p", ["x", "y", "z"], [2, 0, 1])


def test_data_config_keys_reach_the_reader(tmp_path: Path) -> None:
    from raw_rm.config import load_config
    from raw_rm.data import load_records

    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([{"instruction": "p", "pos": "good", "neg": "bad"}]))
    cfg = load_config(None, ["data.prompt_key=instruction", "data.chosen_key=pos", "data.rejected_key=neg"])
    records, _ = load_records(str(path), cfg)
    assert records == [PreferencePair("p", "good", "bad", source=f"{path}[0]")]


def test_limit(tmp_path: Path) -> None:
    result = read_records(write_jsonl(tmp_path / "p.jsonl", HH_ROWS), limit=1)
    assert (result.report.n_read, len(result.records)) == (1, 1)


# ------------------------------------------------------------------------------------------- errors
def test_wrong_type_names_file_line_field(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 16 + [{"prompt": "p", "chosen": 7, "rejected": "b"}],
    )
    assert errors_of(path) == f'{path}:17: field "chosen": expected a string or a list of messages, got int'


def test_missing_field(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a"}]
    )
    assert errors_of(path) == f'{path}:2: field "rejected": missing; expected a string or a list of messages'


def test_broken_json_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", HH_ROWS, raw_lines={2: '{"chosen": "a", "rejected": '})
    assert errors_of(path) == f"{path}:2: not valid JSON (Expecting value at column 29)"


def test_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", [["a", "b"]])
    assert errors_of(path) == f"{path}:1: expected a JSON object, got list"


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text("\n\n")
    assert errors_of(path) == f"{path}: empty file: no records"


def test_unknown_format_and_file_type_and_missing_file(tmp_path: Path) -> None:
    assert (
        errors_of([], format="xml") == 'format "xml": unknown; known: auto, standard, conversational, hh, ranked, rated'
    )
    xml = tmp_path / "x.xml"
    xml.write_text("<a/>\n")
    assert errors_of(xml).startswith(f"{xml}: unknown file type: expected .jsonl, .jsonl.gz, .json, .csv, .parquet")
    assert errors_of(tmp_path / "nope.jsonl") == f"{tmp_path / 'nope.jsonl'}: no such file"


def test_explicit_format_mismatch_names_the_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"chosen": "plain text", "rejected": "other"}])
    assert errors_of(path, format="hh") == (
        f'{path}:1: field "chosen": expected an HH dialogue string ("\\n\\nHuman: ... \\n\\nAssistant: ..."), '
        'got text without "\\n\\nAssistant:"'
    )


def test_group_errors() -> None:
    assert errors_of([{"prompt": "p", "responses": ["a", "b"], "ranks": [0]}]) == (
        '<records>[0]: field "ranks": expected a list of 2 integers (one per response), got a list of 1'
    )
    assert errors_of([{"prompt": "p", "responses": ["a", 5], "ranks": [0, 1]}]) == (
        '<records>[0]: field "responses[1]": expected a string, got int'
    )
    assert errors_of([{"prompt": "p", "responses": ["a", "b"], "ranks": [0, 1.5]}]) == (
        '<records>[0]: field "ranks[1]": expected an integer, got float'
    )
    assert errors_of([{"responses": ["a", "b"], "ranks": [0, 1]}]) == (
        '<records>[0]: field "messages": missing; expected the conversation (or a "prompt" string)'
    )


def test_rated_errors() -> None:
    assert errors_of([{"prompt": "p", "response": "r", "note": "x"}]) == (
        '<records>[0]: field "ratings": expected at least one numeric aspect column (e.g. "helpfulness"), '
        "got fields ['note', 'prompt', 'response']"
    )
    assert errors_of([{"prompt": "p", "response": ["r"], "helpfulness": 1}]) == (
        '<records>[0]: field "response": expected a string, got list'
    )


def test_bad_weight_and_message_list() -> None:
    assert errors_of([{"prompt": "p", "chosen": "a", "rejected": "b", "weight": 1.5}]) == (
        '<records>[0]: field "weight": expected a number in [0, 1], got 1.5'
    )
    assert errors_of([{"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}]) == (
        '<records>[0]: field "margin": expected a finite number, got str'
    )
    assert errors_of(
        [{"chosen": [{"role": "user", "content": 1}], "rejected": [{"role": "user", "content": "x"}]}]
    ) == ('<records>[0]: field "chosen[0]": expected string role and content, got int')


# ---------------------------------------------------------------------------------------- degenerate
DEGENERATE = [
    {"prompt": "p", "chosen": "same", "rejected": "same"},
    {"prompt": "p", "chosen": "ok", "rejected": "fine"},
    {"prompt": "p", "chosen": "  ", "rejected": "fine"},
    {"prompt": "q", "chosen": "x", "rejected": "x"},
]


def test_degenerate_records_are_counted_logged_and_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", DEGENERATE)
    with caplog.at_level(logging.WARNING, logger="raw_rm.data.readers"):
        result = read_records(path)
    report = result.report
    assert (report.n_read, report.n_kept) == (4, 1)
    assert report.dropped == {"chosen_equals_rejected": 2, "empty_response": 1}
    assert report.examples == {"chosen_equals_rejected": [f"{path}:1", f"{path}:4"], "empty_response": [f"{path}:3"]}
    assert report.summary() == (
        f"{path} (standard, pairs): read 4, kept 1, dropped 3 (chosen_equals_rejected: 2 e.g. {path}:1, {path}:4; "
        f"empty_response: 1 e.g. {path}:3)"
    )
    assert report.summary() in caplog.text


def test_strict_raises_on_the_first_degenerate_record(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", DEGENERATE)
    assert errors_of(path, strict=True) == (
        f"{path}:1: degenerate record: chosen == rejected (chosen_equals_rejected); strict=True makes this an error "
        "(data.strict=false drops and counts such records)"
    )


def test_degenerate_groups() -> None:
    rows = [
        {"prompt": "p", "responses": ["only"], "ranks": [0]},
        {"prompt": "p", "responses": ["a", "b"], "ranks": [1, 1]},
        {"prompt": "p", "responses": ["a", ""], "ranks": [0, 1]},
        {"prompt": "p", "responses": ["a", "b"], "ranks": [0, 1]},
    ]
    report = read_records(rows).report
    assert report.dropped == {"group_too_small": 1, "all_tied": 1, "empty_response": 1}
    assert report.n_kept == 1


def test_all_records_degenerate_is_an_error() -> None:
    assert errors_of([{"prompt": "p", "chosen": "a", "rejected": "a"}]) == (
        "<records>: no usable records: <records> (standard, pairs): read 1, kept 0, dropped 1 "
        "(chosen_equals_rejected: 1 e.g. <records>[0])"
    )
