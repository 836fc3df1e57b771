"""Tokenisation and batching for pairs, groups and ratings (the training hot path).

Texts are tokenised once per batch without special tokens by the fast tokenizer in batch mode (each distinct
prompt once), truncated, then assembled with the tokenizer's own special tokens (``[CLS] prompt [SEP] response
[SEP]`` for BERT-like tokenizers, ``prompt response <eos>`` for GPT-2-like ones) into right-padded tensors.

Truncation never drops an example: when prompt + response exceed the budget, the response keeps its END and the
prompt its most recent tokens (it is cut from the left), with at least ``min(len(prompt), budget // 4)`` prompt
tokens kept so the reply never loses all of its context. ``Encoded.n_truncated`` counts truncated rows.

A pair batch runs as one forward: rows ``0..B-1`` are the chosen responses and ``B..2B-1`` the rejected ones::

    batch = PairCollator(tok, max_len_tokens=256, input_kind="concat")(pairs)   # B pairs
    batch["features"]["input_ids"].shape   # (2B, T): chosen rows, then rejected rows
    batch["margin"]                        # (B,) float, nan where a pair has no margin
    batch["weight"]                        # (B,) float, 1.0 where a pair has no weight
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from raw_rm.data.records import PreferencePair, RankedGroup, RatedResponse
from raw_rm.data.splits import prompt_bucket

logger = logging.getLogger(__name__)

InputKind = Literal["concat", "split", "segments"]
INPUT_KINDS = ("concat", "split", "segments")
_SENTENCE_BREAK = re.compile(r"[.!?]+[\"')\]]*\s+|\n+")


@dataclass
class Encoded:
    features: dict[str, torch.Tensor]
    n_truncated: int  # rows cut to fit max_len_tokens (never dropped)
    n_tokens: int  # real (non-pad) tokens
    n_padded: int  # pad positions
    response_tokens: list[int] | None = None  # each row's response length in tokens before truncation


@dataclass(frozen=True)
class _Template:
    """Special tokens around one sequence (``single``) or a pair (``pair``), learnt from the tokenizer itself."""

    single: tuple[list[int], list[int]]  # (before, after)
    pair: tuple[list[int], list[int], list[int]]  # (before, between, after)
    has_token_types: bool
    pad_id: int

    @property
    def n_pair_special(self) -> int:
        return sum(len(x) for x in self.pair)

    @property
    def n_single_special(self) -> int:
        return sum(len(x) for x in self.single)


def _find(seq: list[int], sub: list[int], start: int = 0) -> int:
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i : i + len(sub)] == sub:
            return i
    return -1


_TEMPLATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (special-token ids, _Template)


def special_template(tokenizer: Any) -> _Template:
    """``_special_template`` cached per tokenizer object (it costs four tokenizer calls)."""
    # special tokens set after the first call (e.g. ``tok.pad_token = tok.eos_token``) must invalidate the cache
    key = tuple(getattr(tokenizer, f"{n}_token_id", None) for n in ("pad", "eos", "bos", "cls", "sep"))
    try:
        cached = _TEMPLATES.get(tokenizer)
    except TypeError:  # an object that cannot be weakly referenced: no cache
        return _special_template(tokenizer)
    if cached is None or cached[0] != key:
        cached = _TEMPLATES[tokenizer] = (key, _special_template(tokenizer))
    return cached[1]


def _special_template(tokenizer: Any) -> _Template:
    """The special-token layout of ``tokenizer``, read off how it encodes two marker words.

    BERT-like: single ``([CLS], [SEP])``, pair ``([CLS], [SEP], [SEP])``. A tokenizer that adds no special tokens
    (GPT-2) gets its eos appended (the last-token pooler reads it), or nothing if it has no eos.
    """
    a = tokenizer("hello", add_special_tokens=False)["input_ids"]
    b = tokenizer("world", add_special_tokens=False)["input_ids"]
    full_pair = tokenizer("hello", "world")["input_ids"]
    full_single = tokenizer("hello")["input_ids"]
    i = _find(full_pair, a)
    j = _find(full_pair, b, i + len(a)) if i >= 0 else -1
    k = _find(full_single, a)
    if i < 0 or j < 0 or k < 0:
        raise ValueError(f"cannot read the special-token layout of {type(tokenizer).__name__}: markers not found")
    pair = (full_pair[:i], full_pair[i + len(a) : j], full_pair[j + len(b) :])
    single = (full_single[:k], full_single[k + len(a) :])
    eos = getattr(tokenizer, "eos_token_id", None)
    if not any(pair) and not any(single) and eos is not None:
        pair, single = ([], [], [eos]), ([], [eos])
    names = getattr(tokenizer, "model_input_names", ["input_ids", "attention_mask"])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
    return _Template(single, pair, "token_type_ids" in names, int(pad))


def truncate_pair(n_prompt: int, n_response: int, budget: int) -> tuple[int, int]:
    """(prompt tokens kept, response tokens kept) within ``budget``.

    The prompt keeps at least ``min(n_prompt, budget // 4)`` tokens; the response gets the rest of the budget;
    a short response hands its unused budget back to the prompt. ``truncate_pair(300, 100, 200) == (100, 100)``,
    ``truncate_pair(300, 500, 200) == (50, 150)``.
    """
    if n_prompt + n_response <= budget:
        return n_prompt, n_response
    floor = min(n_prompt, budget // 4)
    keep_response = min(n_response, budget - floor)
    return min(n_prompt, budget - keep_response), keep_response


def _sentence_ids(text: str, offsets: list[tuple[int, int]]) -> np.ndarray:
    """Sentence index (0-based) of each token of ``text`` from its character offsets."""
    starts = [0] + [m.end() for m in _SENTENCE_BREAK.finditer(text) if m.end() < len(text)]
    token_starts = np.fromiter((s for s, _ in offsets), dtype=np.int64, count=len(offsets))
    return np.searchsorted(np.asarray(starts), token_starts, side="right") - 1


def _tokenize(tokenizer: Any, texts: Sequence[str], *, offsets: bool = False) -> dict[str, list]:
    if not texts:
        return {"input_ids": [], "offset_mapping": []}
    return tokenizer(
        list(texts),
        add_special_tokens=False,
        return_attention_mask=False,
        return_token_type_ids=False,
        return_offsets_mapping=offsets,
        verbose=False,  # long texts are expected: truncation happens below
    )


def encode(
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    max_len_tokens: int,
    input_kind: InputKind,
) -> Encoded:
    """Tokenise (prompt, response) rows into right-padded tensors.

    Args:
        tokenizer: a fast Hugging Face tokenizer.
        prompts, responses: N texts each (row i = prompts[i] answered by responses[i]).
        max_len_tokens: the longest sequence produced, special tokens included.
        input_kind: ``"concat"`` -> ``input_ids``, ``attention_mask`` (+ ``token_type_ids`` where the tokenizer
            uses them), each (N, T); ``"split"`` -> ``prompt_input_ids``, ``prompt_attention_mask``,
            ``response_input_ids``, ``response_attention_mask``; ``"segments"`` -> concat + ``segment_ids`` (N, T)
            long: -1 on prompt, special and pad tokens, 0..S-1 for the response's sentences.

    Example (BERT-like tokenizer, concat): row ``[CLS] p1 p2 [SEP] r1 r2 [SEP] [PAD]`` with token_type_ids
    ``0 0 0 0 1 1 1 0`` and attention_mask ``1 1 1 1 1 1 1 0``.
    """
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind: expected one of {INPUT_KINDS}, got {input_kind!r}")
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    template = special_template(tokenizer)
    unique = list(dict.fromkeys(prompts))  # pairs and groups repeat each prompt: tokenise it once
    prompt_ids = dict(zip(unique, _tokenize(tokenizer, unique)["input_ids"]))
    if not template.pair[1]:  # no separator token (GPT-2-like): a space keeps BPE word starts as in running text
        responses = [r if not r or r[0].isspace() else " " + r for r in responses]
    enc = _tokenize(tokenizer, responses, offsets=input_kind == "segments")
    p_ids = [prompt_ids[p] for p in prompts]
    r_ids = enc["input_ids"]
    if input_kind == "split":
        encoded = _encode_split(p_ids, r_ids, template, max_len_tokens)
    else:
        segments = None
        if input_kind == "segments":
            segments = [_sentence_ids(text, off) for text, off in zip(responses, enc["offset_mapping"])]
        encoded = _encode_concat(p_ids, r_ids, template, max_len_tokens, segments)
    encoded.response_tokens = [len(r) for r in r_ids]
    return encoded


def _encode_concat(
    p_ids: list[list[int]], r_ids: list[list[int]], template: _Template, max_len: int, segments: list[np.ndarray] | None
) -> Encoded:
    before, between, after = template.pair
    budget = max_len - template.n_pair_special
    if budget < 2:
        raise ValueError(f"max_len_tokens={max_len} leaves no room beside {template.n_pair_special} special tokens")
    rows, types, segs = [], [], []
    n_truncated = 0
    for i, (p, r) in enumerate(zip(p_ids, r_ids)):
        keep_p, keep_r = truncate_pair(len(p), len(r), budget)
        n_truncated += keep_p < len(p) or keep_r < len(r)
        head = before + p[len(p) - keep_p :] + between
        tail = r[len(r) - keep_r :] + after
        rows.append(head + tail)
        types.append(len(head))
        if segments is not None:
            seg = segments[i][len(r) - keep_r :]
            seg = seg - seg[0] if len(seg) else seg  # renumber from the first sentence kept
            segs.append(np.concatenate([np.full(len(head), -1), seg, np.full(len(after), -1)]))
    input_ids, attention_mask = _pad(rows, template.pad_id)
    features = {"input_ids": input_ids, "attention_mask": attention_mask}
    if template.has_token_types:
        positions = torch.arange(input_ids.shape[1]).unsqueeze(0)  # (1, T)
        heads = torch.as_tensor(types).unsqueeze(1)  # (N, 1)
        features["token_type_ids"] = ((positions >= heads) & attention_mask.bool()).long()  # 1 on response + its sep
    if segments is not None:
        seg_ids = torch.full(input_ids.shape, -1, dtype=torch.long)
        for i, seg in enumerate(segs):
            seg_ids[i, : len(seg)] = torch.from_numpy(seg)
        features["segment_ids"] = seg_ids
    n_tokens = int(attention_mask.sum())
    return Encoded(features, n_truncated, n_tokens, attention_mask.numel() - n_tokens)


def _encode_split(p_ids: list[list[int]], r_ids: list[list[int]], template: _Template, max_len: int) -> Encoded:
    before, after = template.single
    budget = max_len - template.n_single_special
    if budget < 1:
        raise ValueError(f"max_len_tokens={max_len} leaves no room beside {template.n_single_special} special tokens")
    prompts, responses = [], []
    n_truncated = 0
    for p, r in zip(p_ids, r_ids):
        n_truncated += len(p) > budget or len(r) > budget
        prompts.append(before + p[max(0, len(p) - budget) :] + after)  # most recent prompt tokens
        responses.append(before + r[max(0, len(r) - budget) :] + after)  # the response's end
    p_input, p_mask = _pad(prompts, template.pad_id)
    r_input, r_mask = _pad(responses, template.pad_id)
    features = {
        "prompt_input_ids": p_input,
        "prompt_attention_mask": p_mask,
        "response_input_ids": r_input,
        "response_attention_mask": r_mask,
    }
    n_tokens = int(p_mask.sum() + r_mask.sum())
    return Encoded(features, n_truncated, n_tokens, p_mask.numel() + r_mask.numel() - n_tokens)


def _pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ragged id lists: (N, T) input ids and (N, T) attention mask."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    width = int(lengths.max()) if len(rows) else 0
    mask = np.arange(width)[None, :] < lengths[:, None]  # (N, T)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    ids[mask] = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))


# -------------------------------------------------------------------------------------- collators
def _totals(encoded: Encoded) -> dict[str, int]:
    return {"n_truncated": encoded.n_truncated, "n_tokens": encoded.n_tokens, "n_padded": encoded.n_padded}


class PairCollator:
    """list[PreferencePair] -> one batch for one forward (see the module docstring for the layout).

    Returns ``features`` (2B rows: chosen 0..B-1, rejected B..2B-1), ``margin`` (B,) float (nan where absent),
    ``weight`` (B,) float (1.0 where absent), ``response_tokens`` (2B,) float (each response's length in tokens
    before truncation, for length-bias terms), ``n_pairs``, ``n_truncated``, ``n_tokens``, ``n_padded``; with
    ``calibration_fraction`` > 0 also ``calibration`` (B,) bool: the pairs whose prompt hash
    (``prompt_bucket(prompt, calibration_salt)``) falls below that share, held out to fit a learned temperature.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        max_len_tokens: int,
        input_kind: InputKind = "concat",
        calibration_fraction: float = 0.0,
        calibration_salt: str = "raw_rm-calibration",
    ) -> None:
        self.tokenizer = tokenizer
        self.max_len_tokens = max_len_tokens
        self.input_kind = input_kind
        self.calibration_fraction = calibration_fraction
        self.calibration_salt = calibration_salt

    def __call__(self, pairs: Sequence[PreferencePair]) -> dict[str, Any]:
        prompts = [p.prompt for p in pairs] * 2
        responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        encoded = encode(
            self.tokenizer, prompts, responses, max_len_tokens=self.max_len_tokens, input_kind=self.input_kind
        )
        margin = torch.tensor([math.nan if p.margin is None else p.margin for p in pairs], dtype=torch.float32)
        weight = torch.tensor([1.0 if p.weight is None else p.weight for p in pairs], dtype=torch.float32)
        batch = {
            "features": encoded.features,
            "margin": margin,
            "weight": weight,
            "n_pairs": len(pairs),
            "response_tokens": torch.tensor(encoded.response_tokens, dtype=torch.float32),
            **_totals(encoded),
        }
        if self.calibration_fraction > 0:
            batch["calibration"] = torch.tensor(
                [prompt_bucket(p.prompt, self.calibration_salt) < self.calibration_fraction for p in pairs]
            )
        return batch


class GroupCollator:
    """list[RankedGroup] -> all responses flattened (N rows, group by group) plus indices into them.

    ``group_rewards_index`` (G, Kmax) long: row of each response in the flattened batch (0 where masked);
    ``ranks`` (G, Kmax) long (0 = best; -1 where masked); ``mask`` (G, Kmax) bool; ``scores`` (G, Kmax) float
    (nan where absent); ``n_groups``, ``n_truncated``, ``n_tokens``, ``n_padded``. Example: groups of 3 and 2
    responses give ``group_rewards_index = [[0, 1, 2], [3, 4, 0]]`` and ``mask = [[1, 1, 1], [1, 1, 0]]``.
    """

    def __init__(self, tokenizer: Any, *, max_len_tokens: int, input_kind: InputKind = "concat") -> None:
        self.tokenizer = tokenizer
        self.max_len_tokens = max_len_tokens
        self.input_kind = input_kind

    def __call__(self, groups: Sequence[RankedGroup]) -> dict[str, Any]:
        prompts = [g.prompt for g in groups for _ in g.responses]
        responses = [r for g in groups for r in g.responses]
        encoded = encode(
            self.tokenizer, prompts, responses, max_len_tokens=self.max_len_tokens, input_kind=self.input_kind
        )
        k_max = max(len(g.responses) for g in groups)
        index = torch.zeros(len(groups), k_max, dtype=torch.long)
        ranks = torch.full((len(groups), k_max), -1, dtype=torch.long)
        mask = torch.zeros(len(groups), k_max, dtype=torch.bool)
        scores = torch.full((len(groups), k_max), math.nan, dtype=torch.float32)
        row = 0
        for g, group in enumerate(groups):
            k = len(group.responses)
            index[g, :k] = torch.arange(row, row + k)
            ranks[g, :k] = torch.as_tensor(group.ranks)
            mask[g, :k] = True
            if group.scores is not None:
                scores[g, :k] = torch.as_tensor(group.scores, dtype=torch.float32)
            row += k
        return {
            "features": encoded.features,
            "group_rewards_index": index,
            "ranks": ranks,
            "mask": mask,
            "scores": scores,
            "n_groups": len(groups),
            **_totals(encoded),
        }


class RatingCollator:
    """list[RatedResponse] -> features (N rows), ``ratings`` (N, A) float (0 where absent) and ``ratings_mask``
    (N, A) bool for the aspect list given; plus ``n_items``, ``n_truncated``, ``n_tokens``, ``n_padded``."""

    def __init__(
        self, tokenizer: Any, *, aspects: Sequence[str], max_len_tokens: int, input_kind: InputKind = "concat"
    ) -> None:
        if not aspects:
            raise ValueError("RatingCollator: aspects must name at least one aspect")
        self.tokenizer = tokenizer
        self.aspects = list(aspects)
        self.max_len_tokens = max_len_tokens
        self.input_kind = input_kind

    def __call__(self, items: Sequence[RatedResponse]) -> dict[str, Any]:
        encoded = encode(
            self.tokenizer,
            [r.prompt for r in items],
            [r.response for r in items],
            max_len_tokens=self.max_len_tokens,
            input_kind=self.input_kind,
        )
        ratings = torch.zeros(len(items), len(self.aspects), dtype=torch.float32)
        mask = torch.zeros(len(items), len(self.aspects), dtype=torch.bool)
        for i, item in enumerate(items):
            for a, aspect in enumerate(self.aspects):
                value = item.ratings.get(aspect)
                if value is not None:
                    ratings[i, a] = float(value)
                    mask[i, a] = True
        return {
            "features": encoded.features,
            "ratings": ratings,
            "ratings_mask": mask,
            "n_items": len(items),
            **_totals(encoded),
        }


# ----------------------------------------------------------------------------------------- sampler
class LengthGroupedSampler:
    """Batches of similar length, seeded and deterministic, disjoint across ranks, resumable mid-epoch.

    Each epoch: a seeded permutation of all indices is cut into megabatches of ``50 * batch_size * world_size``;
    each megabatch is sorted by length and cut into batches, so batches pad little while their content still
    changes every epoch. If the number of batches is not a multiple of ``world_size``, the largest batches are
    halved until it is, so every rank gets the same number of batches and no index is dropped or repeated
    (only with nothing left to halve, all batches of one example, is one example repeated, with a warning).
    Consecutive (length-adjacent) batches form a step of ``world_size`` batches, one per rank; the order of
    steps is shuffled. Iterating yields this rank's batches (lists of indices) from the saved position.
    """

    MEGABATCH_FACTOR = 50

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: expected 0 <= rank < world_size={world_size}, got {rank}")
        if len(lengths) < world_size:
            raise ValueError(f"{len(lengths)} examples cannot give every one of {world_size} ranks a batch")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.position = 0  # batches of this epoch already handed out on this rank

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (its permutation); the position restarts at 0 unless the epoch is unchanged."""
        if epoch != self.epoch:
            self.position = 0
        self.epoch = epoch

    def _global_steps(self) -> list[list[list[int]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.lengths)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        mega = self.MEGABATCH_FACTOR * self.batch_size * self.world_size
        batches: list[list[int]] = []
        for start in range(0, n, mega):
            chunk = order[start : start + mega]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]  # longest first within a megabatch
            batches += [chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
        while len(batches) % self.world_size:
            largest = max(range(len(batches)), key=lambda i: len(batches[i]))
            if len(batches[largest]) < 2:  # only single-example batches left: the one case that must repeat
                logger.warning(
                    "%d examples in batches of 1 cannot be shared equally by %d ranks: example %d is repeated",
                    n,
                    self.world_size,
                    batches[0][0],
                )
                batches.append([batches[0][0]])
                continue
            half = (len(batches[largest]) + 1) // 2
            batches[largest : largest + 1] = [batches[largest][:half], batches[largest][half:]]
        steps = [batches[i : i + self.world_size] for i in range(0, len(batches), self.world_size)]
        if self.shuffle:
            steps = [steps[i] for i in rng.permutation(len(steps))]
        return steps

    def __len__(self) -> int:
        mega = self.MEGABATCH_FACTOR * self.batch_size * self.world_size
        # counted as _global_steps cuts them: per megabatch, then halving up to a multiple of world_size
        n_batches = sum(
            math.ceil(min(mega, len(self.lengths) - s) / self.batch_size) for s in range(0, len(self.lengths), mega)
        )
        return math.ceil(n_batches / self.world_size)

    def __iter__(self) -> Iterator[list[int]]:
        steps = self._global_steps()
        for i in range(self.position, len(steps)):
            self.position = i + 1
            yield steps[i][self.rank]
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        """Where this rank stands: resume with ``load_state_dict`` and iterate to get exactly the remaining batches."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed or state.get("world_size", self.world_size) != self.world_size:
            raise ValueError(
                f"sampler state is for seed={state.get('seed')}, world_size={state.get('world_size')}; "
                f"this sampler has seed={self.seed}, world_size={self.world_size}"
            )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
