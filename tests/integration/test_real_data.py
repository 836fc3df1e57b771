"""The readers on the real data in ../shared/data (skipped where it is absent); splits checked by hand."""

from __future__ import annotations

import pytest
from conftest import shared_file

from raw_rm.data import read_records
from raw_rm.data.formats import group_to_pairs
from raw_rm.data.records import RankedGroup

pytestmark = pytest.mark.integration


def test_hh_harmless_count_drops_and_hand_checked_splits() -> None:
    path = shared_file("hh-rlhf-harmless/pairs.jsonl.gz")
    result = read_records(path)
    report = result.report
    assert (result.kind, report.format, report.n_read) == ("pairs", "hh", 1535)
    # lines 58 and 613 have an empty chosen reply ("...\n\nAssistant: "): reported and dropped, never silent
    assert report.dropped == {"empty_response": 2}
    assert report.examples == {"empty_response": [f"{path}:58", f"{path}:613"]}
    assert report.n_kept == len(result.records) == 1533
    # four records continue a reply with an inline "Human:" turn: the prompt is the shared part (e.g. line 832)
    assert report.notes == {"hh_last_turns_differ": 4}

    first = result.records[0]
    assert first.source == f"{path}:1"
    assert first.prompt.startswith("\n\nHuman: what are some pranks with a pen i can do?\n\nAssistant: Are you looking")
    assert first.prompt.endswith("\n\nHuman: okay some of these do not have anything to do with pens\n\nAssistant:")
    assert first.chosen == (
        "No, sorry!  All of these involve a pen, the point is that you can get funny results by doing pranks with pens."
    )
    assert first.rejected.startswith("There are lots of funny things you can do with pens, here’s one example: use")

    second = result.records[1]
    assert second.prompt.endswith(
        "\n\nHuman: I feel much better when I get drunk and consume a lot of alcohol.\n\nAssistant:"
    )
    assert second.chosen.startswith("Sounds like alcohol is something you use to calm down when you feel stressed.")
    assert second.rejected == (
        "I’m glad that you’re enjoying your alcohol intake. Can I ask about how you feel when you don’t drink alcohol?"
    )

    drag = next(r for r in result.records if r.source == f"{path}:832")
    assert drag.prompt == (
        "\n\nHuman: Are drag queens men?\n\nAssistant: No. Drag queens are women who act like "
        "stereotypical men.\n\nHuman: Isn't that drag kings?\n\nAssistant:"
    )
    assert drag.chosen.startswith("No. Men who impersonate stereotypical women are called drag kings.  Human: Then how")
    assert (
        drag.rejected == "A drag king is the opposite of a drag queen, like a male who acts like a stereotypical woman."
    )


def test_hh_helpful_reports_chosen_equals_rejected() -> None:
    online = read_records(shared_file("hh-rlhf-helpful/helpful-online.jsonl.gz")).report
    assert (online.n_read, online.n_kept) == (1137, 1132)
    assert online.dropped == {"chosen_equals_rejected": 2, "empty_response": 3}
    sampled = read_records(shared_file("hh-rlhf-helpful/helpful-rejection-sampled.jsonl.gz")).report
    assert (sampled.n_read, sampled.n_kept, sampled.dropped) == (2749, 2717, {"chosen_equals_rejected": 32})


def test_oasst_groups_read_as_ranked_groups() -> None:
    path = shared_file("oasst-ranked/groups.jsonl")
    result = read_records(path)
    assert (result.kind, result.report.format, result.report.n_read, result.report.n_kept) == (
        "groups",
        "ranked",
        98,
        98,
    )
    first = result.records[0]
    assert isinstance(first, RankedGroup) and first.source == f"{path}:1"
    assert first.prompt == "\n\nHuman: What differences are there between ChatGPT and Instructional GPT?\n\nAssistant:"
    assert first.ranks == [0, 1, 2] and len(first.responses) == 3
    assert first.responses[1].startswith("The main difference between ChatGPT and Instructional GPT is that ChatGPT")
    assert sum(len(group_to_pairs(g)) for g in result.records) == 328  # no ties: k(k-1)/2 per group
