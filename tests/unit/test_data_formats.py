"""Format helpers: HH splitting, implicit prompts, message rendering, group/rating expansion."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raw_rm.data.formats import (
    ASSISTANT_TAG,
    DataError,
    common_prefix_length,
    detect_format,
    group_to_pairs,
    ranks_from_scores,
    ratings_to_groups,
    ratings_to_pairs,
    render_messages,
    split_hh_dialogue,
    split_hh_pair,
    split_shared_prefix,
)
from raw_rm.data.records import PreferencePair, RankedGroup, RatedResponse

# Text of one turn: no "\n\n" so it cannot create or end a turn by itself.
turn_text = st.text(alphabet=st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), max_size=30)


def test_split_hh_dialogue_by_hand() -> None:
    text = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant:  Fine, thanks."
    assert split_hh_dialogue(text) == (
        "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant:",
        "Fine, thanks.",
    )


def test_split_hh_dialogue_without_assistant_turn_raises() -> None:
    with pytest.raises(ValueError, match='no "\\\\n\\\\nAssistant:" turn'):
        split_hh_dialogue("\n\nHuman: only a question")


@settings(max_examples=100, deadline=None)
@given(turns=st.lists(st.tuples(turn_text, turn_text), min_size=1, max_size=4), last=turn_text)
def test_split_hh_dialogue_property(turns: list[tuple[str, str]], last: str) -> None:
    prompt = (
        "".join(f"\n\nHuman: {h}\n\nAssistant: {a}" for h, a in turns[:-1])
        + f"\n\nHuman: {turns[-1][0]}{ASSISTANT_TAG}"
    )
    got_prompt, got_response = split_hh_dialogue(prompt + " " + last)
    assert got_prompt == prompt
    assert got_response == last.lstrip()


def test_split_hh_pair_when_a_response_holds_extra_turns() -> None:
    # shaped like hh-rlhf harmless line 832: the chosen reply runs on into an inline "Human:" turn
    shared = "\n\nHuman: Q1\n\nAssistant: A1\n\nHuman: Q2\n\nAssistant:"
    chosen = shared + " No.  Human: more?\n\nAssistant:  I think so"
    rejected = shared + " A drag king is the opposite."
    assert split_hh_pair(chosen, rejected) == (
        shared,
        "No.  Human: more?\n\nAssistant:  I think so",
        "A drag king is the opposite.",
        True,
    )
    assert split_hh_pair(shared + " x", shared + " y") == (shared, "x", "y", False)


def test_split_shared_prefix_by_hand() -> None:
    assert split_shared_prefix("Q: 2+2? A: 4", "Q: 2+2? A: 5") == ("Q: 2+2? A:", "4", "5")
    assert split_shared_prefix("The cat sat", "The car sat") == ("The", "cat sat", "car sat")
    assert split_shared_prefix("same", "same") == ("same", "", "")
    assert split_shared_prefix("\n\nHuman: x\n\nAssistant: Sure", "\n\nHuman: x\n\nAssistant: Sorry") == (
        "\n\nHuman: x\n\nAssistant:",
        "Sure",
        "Sorry",
    )


words = st.text(alphabet="abcdefgh", min_size=1, max_size=6)


@settings(max_examples=100, deadline=None)
@given(
    prompt=st.lists(words, min_size=1, max_size=6),
    a=st.lists(words, min_size=1, max_size=4),
    b=st.lists(words, min_size=1, max_size=4),
)
def test_split_shared_prefix_property(prompt: list[str], a: list[str], b: list[str]) -> None:
    """The prompt is whole words shared by both; prompt + response rebuilds each text; no word is cut."""
    chosen, rejected = " ".join(prompt + a), " ".join(prompt + b)
    if chosen == rejected:
        return
    p, rc, rr = split_shared_prefix(chosen, rejected)
    assert chosen.startswith(p) and rejected.startswith(p)
    assert (p + " " + rc).strip() == chosen and (p + " " + rr).strip() == rejected
    assert p == "" or chosen[len(p)] == " "  # cut at a word boundary
    assert len(p) <= common_prefix_length(chosen, rejected)


def test_render_messages_plain_template() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "tool", "content": "42"},
    ]
    assert (
        render_messages(messages) == "\n\nSystem: Be brief.\n\nHuman: Hi\n\nAssistant: Hello\n\nTool: 42\n\nAssistant:"
    )
    assert render_messages(messages[:2], add_generation_prompt=False) == "\n\nSystem: Be brief.\n\nHuman: Hi"


def test_render_messages_uses_the_tokenizers_chat_template() -> None:
    class Chatty:
        chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert tokenize is False and add_generation_prompt is True
            return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    assert render_messages([{"role": "user", "content": "Hi"}], Chatty()) == "<user>Hi<assistant>"


def test_group_to_pairs_ties_give_no_pair_and_margin_is_the_rank_gap() -> None:
    group = RankedGroup("p", ["a", "b", "c", "d"], [0, 1, 1, 3], source="g.jsonl:1")
    got = [(x.chosen, x.rejected, x.margin) for x in group_to_pairs(group)]
    assert got == [("a", "b", 1.0), ("a", "c", 1.0), ("a", "d", 3.0), ("b", "d", 2.0), ("c", "d", 2.0)]
    assert {x.source for x in group_to_pairs(group)} == {"g.jsonl:1"}


def test_group_to_pairs_uses_score_gaps_and_any_order() -> None:
    group = RankedGroup("p", ["worst", "best"], [1, 0], scores=[0.25, 2.0])
    assert group_to_pairs(group) == [PreferencePair("p", "best", "worst", margin=1.75)]


def test_ranks_from_scores() -> None:
    assert ranks_from_scores([0.2, 0.9, 0.2, 0.5]) == [2, 0, 2, 1]


def test_ratings_to_pairs_by_aspect_and_mean() -> None:
    rows = [
        RatedResponse("p", "r1", {"helpfulness": 4, "honesty": 0}, "f:1"),
        RatedResponse("p", "r2", {"helpfulness": 2, "honesty": 4}, "f:2"),
        RatedResponse("p", "r3", {"helpfulness": 2, "honesty": 1}, "f:3"),
        RatedResponse("q", "alone", {"helpfulness": 1, "honesty": 1}, "f:4"),
    ]
    got = [(x.chosen, x.rejected, x.margin, x.aspect) for x in ratings_to_pairs(rows, "helpfulness")]
    assert got == [("r1", "r2", 2.0, "helpfulness"), ("r1", "r3", 2.0, "helpfulness")]
    mean = [(x.chosen, x.rejected, x.margin) for x in ratings_to_pairs(rows)]  # means 2.0, 3.0, 1.5
    assert mean == [("r2", "r1", 1.0), ("r1", "r3", 0.5), ("r2", "r3", 1.5)]
    groups = ratings_to_groups(rows, "honesty")
    assert [(g.responses, g.ranks) for g in groups] == [(["r1", "r2", "r3"], [2, 0, 1])]


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        ({"prompt": "p", "chosen": "a", "rejected": "b"}, "standard"),
        ({"chosen": "x a", "rejected": "x b"}, "standard"),
        ({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}, "hh"),
        ({"chosen": [{"role": "user", "content": "q"}], "rejected": []}, "conversational"),
        ({"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"}, "conversational"),
        ({"messages": [], "responses": ["a", "b"], "ranks": [0, 1]}, "ranked"),
        ({"prompt": "p", "response": "a", "helpfulness": 3}, "rated"),
    ],
)
def test_detect_format(row: dict, fmt: str) -> None:
    assert detect_format(row, "x.jsonl:1") == fmt


def test_detect_format_unknown_fields() -> None:
    with pytest.raises(DataError) as err:
        detect_format({"question": "q", "answer": "a"}, "x.jsonl:4")
    assert str(err.value).startswith("x.jsonl:4: cannot detect the format from fields ['answer', 'question']")
