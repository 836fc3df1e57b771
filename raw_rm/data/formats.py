"""Preference-data formats: detection from the fields, parsing of one row into a record, conversions.

Formats (``DataConfig.format``):

- ``standard``: ``{"prompt": str, "chosen": str, "rejected": str}`` (TRL standard). Without ``prompt`` the
  prompt is implicit: the shared prefix of ``chosen`` and ``rejected``, cut back to its last whitespace so
  that no word is split (``split_shared_prefix``).
- ``conversational``: the same fields holding lists of ``{"role", "content"}`` messages (TRL conversational),
  with or without an explicit ``prompt`` list. The prompt is rendered by ``render_messages``; the response is
  the content of the reply message.
- ``hh``: Anthropic HH-RLHF dialogues ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` in ``chosen``/``rejected``. The
  prompt is everything up to and including the last ``"\\n\\nAssistant:"``; the response is that last turn
  without its leading whitespace (``split_hh_dialogue``).
- ``ranked``: k-wise groups ``{"messages" | "prompt", "responses": [...], "ranks": [...]}`` (0 = best, equal
  ranks are ties), optional ``"scores"`` (larger = better; ranks are derived from them when ``ranks`` is absent).
- ``rated``: per-aspect ratings, HelpSteer style: ``{"prompt", "response", "<aspect>": number, ...}`` or
  ``{"prompt", "response", "ratings": {"<aspect>": number}}``.

Optional pair fields: ``margin`` (number), ``weight`` or ``agreement`` (number in [0, 1]), ``aspect`` (string).

The plain chat template (used when the tokenizer has no chat template of its own) is HH-style so that
conversational data and HH dialogues look the same to the model::

    render_messages([{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Hi"}])
    == "\\n\\nSystem: Be brief.\\n\\nHuman: Hi\\n\\nAssistant:"

Roles map ``user`` -> ``Human``, ``assistant`` -> ``Assistant``, ``system`` -> ``System``, any other role to its
capitalised name; the rendering of a prompt ends with the generation cue ``"\\n\\nAssistant:"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

from raw_rm.data.records import PreferencePair, RankedGroup, RatedResponse

FormatName = Literal["standard", "conversational", "hh", "ranked", "rated"]
FORMATS: tuple[str, ...] = ("standard", "conversational", "hh", "ranked", "rated")
KIND_OF_FORMAT = {"standard": "pairs", "conversational": "pairs", "hh": "pairs", "ranked": "groups", "rated": "ratings"}

# Field names a data set may call something else (``read_records(keys=...)``, ``data.<field>_key``).
FIELD_KEYS: tuple[str, ...] = ("prompt", "chosen", "rejected", "responses", "ranks", "scores", "response", "ratings")

HUMAN_TAG = "\n\nHuman:"
ASSISTANT_TAG = "\n\nAssistant:"
PLAIN_ROLES = {"user": "Human", "assistant": "Assistant", "system": "System"}
# Fields of a rated row that are never aspects (numbers in them are ids or metadata, not ratings).
NON_ASPECT_FIELDS = {"prompt", "response", "messages", "ratings", "source", "id", "idx", "index"}


class DataError(ValueError):
    """Bad input data; the message names ``file:line``, the field, what was expected and what was found."""


class Degenerate(Exception):
    """A well-formed record that carries no preference signal; ``reason`` is the LoadReport key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ------------------------------------------------------------------------------------------ helpers
def type_name(value: Any) -> str:
    """The JSON-ish name of a value's type for error messages ("int", "list", "null", ...)."""
    if value is None:
        return "null"
    return type(value).__name__


def field_error(where: str, field: str, expected: str, value: Any) -> DataError:
    """``DataError('x.jsonl:3: field "chosen": expected a string, got int')``."""
    return DataError(f'{where}: field "{field}": expected {expected}, got {type_name(value)}')


def is_messages(value: Any) -> bool:
    """True for a non-empty list of ``{"role", "content"}`` dicts."""
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
    )


def _check_messages(value: Any, where: str, field: str) -> list[dict[str, str]]:
    if not is_messages(value):
        raise field_error(where, field, "a list of {role, content} messages", value)
    for i, m in enumerate(value):
        if not isinstance(m["role"], str) or not isinstance(m["content"], str):
            bad = m["content"] if isinstance(m["role"], str) else m["role"]
            raise field_error(where, f"{field}[{i}]", "string role and content", bad)
    return value


def _number(row: dict[str, Any], field: str, where: str) -> float | None:
    value = row.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise field_error(where, field, "a finite number", value)
    return float(value)


def split_hh_dialogue(text: str) -> tuple[str, str]:
    """Split an HH dialogue into (prompt, response) at the last ``"\\n\\nAssistant:"``.

    The prompt keeps the tag; the response is the text after it without leading whitespace::

        split_hh_dialogue("\\n\\nHuman: Hi\\n\\nAssistant: Hello!") == ("\\n\\nHuman: Hi\\n\\nAssistant:", "Hello!")

    Raises:
        ValueError: the text has no ``"\\n\\nAssistant:"`` turn.
    """
    cut = text.rfind(ASSISTANT_TAG)
    if cut < 0:
        raise ValueError('no "\\n\\nAssistant:" turn')
    end = cut + len(ASSISTANT_TAG)
    return text[:end], text[end:].lstrip()


def common_prefix_length(a: str, b: str) -> int:
    """Length of the longest common prefix of two strings."""
    n = min(len(a), len(b))
    lo, hi = 0, n
    while lo < hi:  # binary search on slices: C-speed comparisons, O(n log n) chars at worst
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def split_hh_pair(chosen: str, rejected: str) -> tuple[str, str, str, bool]:
    """(prompt, chosen_response, rejected_response, turns_differ) for an HH pair.

    Both sides normally share everything up to their last ``"\\n\\nAssistant:"``. In a few real records a
    response itself contains further turns, so the two last tags sit at different places; then the prompt is
    the shared prefix up to the last ``"\\n\\nAssistant:"`` inside it, and ``turns_differ`` is True (counted in
    the load report).
    """
    prompt_c, resp_c = split_hh_dialogue(chosen)
    prompt_r, resp_r = split_hh_dialogue(rejected)
    if prompt_c == prompt_r:
        return prompt_c, resp_c, resp_r, False
    shared = chosen[: common_prefix_length(chosen, rejected)]
    cut = shared.rfind(ASSISTANT_TAG)
    if cut < 0:
        raise ValueError('chosen and rejected share no "\\n\\nAssistant:" turn')
    end = cut + len(ASSISTANT_TAG)
    return chosen[:end], chosen[end:].lstrip(), rejected[end:].lstrip(), True


def split_shared_prefix(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Implicit prompt: the shared prefix of both texts, cut back to its last whitespace.

    ``split_shared_prefix("Q: 2+2? A: 4", "Q: 2+2? A: 5") == ("Q: 2+2? A:", "4", "5")``. If the shared prefix
    ends in an HH ``"\\n\\nAssistant:"`` turn it is cut there instead. Identical texts give an empty response.
    """
    n = common_prefix_length(chosen, rejected)
    if n == len(chosen) == len(rejected):
        return chosen, "", ""
    shared = chosen[:n]
    tag = shared.rfind(ASSISTANT_TAG)
    if tag >= 0:
        cut = tag + len(ASSISTANT_TAG)
    else:
        cut = max(shared.rfind(c) for c in (" ", "\n", "\t"))
        cut = max(cut, 0)
    return chosen[:cut].rstrip(), chosen[cut:].lstrip(), rejected[cut:].lstrip()


def render_messages(
    messages: Sequence[dict[str, str]], tokenizer: Any = None, *, add_generation_prompt: bool = True
) -> str:
    """Render a conversation as prompt text.

    With a tokenizer that has a chat template, its ``apply_chat_template`` renders the text (with the generation
    prompt). Otherwise the plain HH-style template of this module's docstring is used.
    """
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
    parts = [f"\n\n{PLAIN_ROLES.get(m['role'], m['role'].capitalize())}: {m['content']}" for m in messages]
    if add_generation_prompt:
        parts.append(ASSISTANT_TAG)
    return "".join(parts)


def _reply_text(messages: list[dict[str, str]]) -> str:
    """The response text of the reply messages: one message gives its content, several the plain rendering."""
    if len(messages) == 1:
        return messages[0]["content"].strip()
    return render_messages(messages, None, add_generation_prompt=False).strip()


# ---------------------------------------------------------------------------------------- detection
def detect_format(row: dict[str, Any], where: str) -> str:
    """The format of one row from its fields (see the module docstring)."""
    if "responses" in row:
        return "ranked"
    if "chosen" in row or "rejected" in row:
        chosen = row.get("chosen")
        if isinstance(chosen, list) or isinstance(row.get("prompt"), list):
            return "conversational"
        if isinstance(chosen, str) and "prompt" not in row and ASSISTANT_TAG in chosen:
            return "hh"
        return "standard"
    if "response" in row:
        return "rated"
    raise DataError(
        f"{where}: cannot detect the format from fields {sorted(row)}: expected prompt/chosen/rejected "
        "(pairs), responses/ranks (groups) or prompt/response/<aspect ratings> (ratings)"
    )


# ------------------------------------------------------------------------------------------ parsers
def _pair_extras(row: dict[str, Any], where: str) -> dict[str, Any]:
    weight_field = "weight" if "weight" in row else "agreement"
    weight = _number(row, weight_field, where)
    if weight is not None and not 0.0 <= weight <= 1.0:
        raise DataError(f'{where}: field "{weight_field}": expected a number in [0, 1], got {weight}')
    aspect = row.get("aspect")
    if aspect is not None and not isinstance(aspect, str):
        raise field_error(where, "aspect", "a string", aspect)
    return {"margin": _number(row, "margin", where), "weight": weight, "aspect": aspect}


def _require(row: dict[str, Any], field: str, where: str, expected: str) -> Any:
    if field not in row:
        raise DataError(f'{where}: field "{field}": missing; expected {expected}')
    return row[field]


def _check_pair(pair: PreferencePair) -> PreferencePair:
    if not pair.chosen.strip() or not pair.rejected.strip():
        raise Degenerate("empty_response")
    if pair.chosen == pair.rejected:
        raise Degenerate("chosen_equals_rejected")
    return pair


def parse_standard(
    row: dict[str, Any], where: str, tokenizer: Any = None, notes: dict[str, int] | None = None
) -> PreferencePair:
    """A TRL standard row (explicit or implicit prompt) -> PreferencePair."""
    expected = "a string or a list of messages"
    chosen = _require(row, "chosen", where, expected)
    rejected = _require(row, "rejected", where, expected)
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str):
            raise field_error(where, name, expected, value)
    extras = _pair_extras(row, where)
    if "prompt" in row:
        prompt = row["prompt"]
        if not isinstance(prompt, str):
            raise field_error(where, "prompt", expected, prompt)
        pair = PreferencePair(prompt, chosen.strip(), rejected.strip(), source=where, **extras)
    else:
        prompt, resp_c, resp_r = split_shared_prefix(chosen, rejected)
        pair = PreferencePair(prompt, resp_c, resp_r, source=where, **extras)
    return _check_pair(pair)


def parse_hh(
    row: dict[str, Any], where: str, tokenizer: Any = None, notes: dict[str, int] | None = None
) -> PreferencePair:
    """An HH-RLHF row ``{"chosen": dialogue, "rejected": dialogue}`` -> PreferencePair."""
    expected = 'an HH dialogue string ("\\n\\nHuman: ... \\n\\nAssistant: ...")'
    texts = {}
    for name in ("chosen", "rejected"):
        value = _require(row, name, where, expected)
        if not isinstance(value, str):
            raise field_error(where, name, expected, value)
        if ASSISTANT_TAG not in value:
            raise DataError(f'{where}: field "{name}": expected {expected}, got text without "\\n\\nAssistant:"')
        texts[name] = value
    try:
        prompt, resp_c, resp_r, differ = split_hh_pair(texts["chosen"], texts["rejected"])
    except ValueError as exc:
        raise DataError(f'{where}: fields "chosen"/"rejected": {exc}') from exc
    if differ and notes is not None:
        notes["hh_last_turns_differ"] = notes.get("hh_last_turns_differ", 0) + 1
    return _check_pair(PreferencePair(prompt, resp_c, resp_r, source=where, **_pair_extras(row, where)))


def parse_conversational(
    row: dict[str, Any], where: str, tokenizer: Any = None, notes: dict[str, int] | None = None
) -> PreferencePair:
    """A TRL conversational row (lists of messages, explicit or implicit prompt) -> PreferencePair."""
    expected = "a string or a list of messages"
    chosen = _check_messages(_require(row, "chosen", where, expected), where, "chosen")
    rejected = _check_messages(_require(row, "rejected", where, expected), where, "rejected")
    if "prompt" in row and isinstance(row["prompt"], str):
        prompt_msgs, reply_c, reply_r = None, chosen, rejected
        prompt = row["prompt"]
    elif "prompt" in row:
        prompt_msgs = _check_messages(row["prompt"], where, "prompt")
        reply_c, reply_r = chosen, rejected
    else:
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        if n == 0:
            raise DataError(
                f'{where}: fields "chosen"/"rejected": expected conversations sharing their first message(s) '
                "(the implicit prompt), got conversations that differ from the first message"
            )
        prompt_msgs, reply_c, reply_r = chosen[:n], chosen[n:], rejected[n:]
    if prompt_msgs is not None:
        prompt = render_messages(prompt_msgs, tokenizer)
    pair = PreferencePair(prompt, _reply_text(reply_c), _reply_text(reply_r), source=where, **_pair_extras(row, where))
    return _check_pair(pair)


def ranks_from_scores(scores: Sequence[float]) -> list[int]:
    """Dense ranks from scores, larger = better: ``[0.2, 0.9, 0.2] -> [1, 0, 1]``."""
    levels = sorted(set(scores), reverse=True)
    return [levels.index(s) for s in scores]


def parse_ranked(
    row: dict[str, Any], where: str, tokenizer: Any = None, notes: dict[str, int] | None = None
) -> RankedGroup:
    """A k-wise row ``{"messages"|"prompt", "responses", "ranks"[, "scores"]}`` -> RankedGroup."""
    if "messages" in row:
        prompt = render_messages(_check_messages(row["messages"], where, "messages"), tokenizer)
    elif "prompt" in row:
        value = row["prompt"]
        if isinstance(value, str):
            prompt = value
        elif is_messages(value):
            prompt = render_messages(_check_messages(value, where, "prompt"), tokenizer)
        else:
            raise field_error(where, "prompt", "a string or a list of messages", value)
    else:
        raise DataError(f'{where}: field "messages": missing; expected the conversation (or a "prompt" string)')
    raw = row["responses"]
    if not isinstance(raw, list):
        raise field_error(where, "responses", "a list of strings", raw)
    responses = []
    for i, r in enumerate(raw):
        if isinstance(r, str):
            responses.append(r.strip())
        elif is_messages(r):
            responses.append(_reply_text(_check_messages(r, where, f"responses[{i}]")))
        else:
            raise field_error(where, f"responses[{i}]", "a string", r)
    scores = None
    if row.get("scores") is not None:
        scores = _number_list(row["scores"], where, "scores", len(responses))
    if row.get("ranks") is not None:
        ranks_f = _number_list(row["ranks"], where, "ranks", len(responses), integers=True)
        ranks = [int(r) for r in ranks_f]
    elif scores is not None:
        ranks = ranks_from_scores(scores)
    else:
        raise DataError(
            f'{where}: field "ranks": missing; expected a list of {len(responses)} integers (0 = best) or "scores"'
        )
    group = RankedGroup(prompt, responses, ranks, scores, source=where)
    if len(responses) < 2:
        raise Degenerate("group_too_small")
    if any(not r for r in responses):
        raise Degenerate("empty_response")
    if len(set(ranks)) < 2:
        raise Degenerate("all_tied")
    return group


def _number_list(value: Any, where: str, field: str, n: int, *, integers: bool = False) -> list[float]:
    what = "integers" if integers else "numbers"
    if not isinstance(value, list):
        raise field_error(where, field, f"a list of {n} {what} (one per response)", value)
    for i, v in enumerate(value):
        ok = isinstance(v, int) if integers else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok:
            raise field_error(where, f"{field}[{i}]", "an integer" if integers else "a number", v)
    if len(value) != n:
        raise DataError(
            f'{where}: field "{field}": expected a list of {n} {what} (one per response), got a list of {len(value)}'
        )
    return [float(v) for v in value]


def parse_rated(
    row: dict[str, Any], where: str, tokenizer: Any = None, notes: dict[str, int] | None = None
) -> RatedResponse:
    """A HelpSteer-style row -> RatedResponse (every numeric column but ids is an aspect)."""
    if "messages" in row and "prompt" not in row:
        prompt = render_messages(_check_messages(row["messages"], where, "messages"), tokenizer)
    else:
        prompt = _require(row, "prompt", where, "a string")
        if not isinstance(prompt, str):
            raise field_error(where, "prompt", "a string", prompt)
    response = _require(row, "response", where, "a string")
    if not isinstance(response, str):
        raise field_error(where, "response", "a string", response)
    if "ratings" in row:
        table = row["ratings"]
        if not isinstance(table, dict):
            raise field_error(where, "ratings", "a mapping of aspect -> number", table)
        ratings = {str(k): _number(table, k, where) for k in table}
        ratings = {k: v for k, v in ratings.items() if v is not None}
    else:
        ratings = {
            k: float(v)
            for k, v in row.items()
            if k not in NON_ASPECT_FIELDS and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    if not ratings:
        raise DataError(
            f'{where}: field "ratings": expected at least one numeric aspect column (e.g. "helpfulness"), '
            f"got fields {sorted(row)}"
        )
    if not response.strip():
        raise Degenerate("empty_response")
    return RatedResponse(prompt, response.strip(), ratings, source=where)


PARSERS: dict[str, Callable[..., Any]] = {
    "standard": parse_standard,
    "conversational": parse_conversational,
    "hh": parse_hh,
    "ranked": parse_ranked,
    "rated": parse_rated,
}


# -------------------------------------------------------------------------------------- conversions
def group_to_pairs(group: RankedGroup) -> list[PreferencePair]:
    """All strictly ordered pairs of a group (ties give no pair), best-ranked response as ``chosen``.

    ``margin`` is the score gap when the group has scores, else the rank gap::

        group_to_pairs(RankedGroup("p", ["a", "b", "c"], [0, 1, 1]))
        == [PreferencePair("p", "a", "b", margin=1.0), PreferencePair("p", "a", "c", margin=1.0)]
    """
    pairs = []
    k = len(group.responses)
    for i in range(k):
        for j in range(i + 1, k):
            if group.ranks[i] == group.ranks[j]:
                continue
            a, b = (i, j) if group.ranks[i] < group.ranks[j] else (j, i)
            if group.scores is not None:
                margin = float(group.scores[a] - group.scores[b])
            else:
                margin = float(group.ranks[b] - group.ranks[a])
            pairs.append(
                PreferencePair(group.prompt, group.responses[a], group.responses[b], margin=margin, source=group.source)
            )
    return pairs


def rating_value(record: RatedResponse, aspect: str | None) -> float | None:
    """The rating of ``aspect`` (None = the mean over the record's aspects); None if the aspect is absent."""
    if aspect is None:
        return sum(record.ratings.values()) / len(record.ratings) if record.ratings else None
    return record.ratings.get(aspect)


def ratings_to_pairs(ratings: Sequence[RatedResponse], aspect: str | None = None) -> list[PreferencePair]:
    """Pair responses to the same prompt by one aspect's rating (None = mean of aspects); equal ratings give no pair.

    ``margin`` is the rating gap and ``aspect`` is set on every pair. Prompts keep their first-seen order.
    """
    by_prompt: dict[str, list[tuple[float, RatedResponse]]] = {}
    for rec in ratings:
        value = rating_value(rec, aspect)
        if value is not None:
            by_prompt.setdefault(rec.prompt, []).append((value, rec))
    pairs = []
    for prompt, items in by_prompt.items():
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                (vi, ri), (vj, rj) = items[i], items[j]
                if vi == vj or ri.response == rj.response:
                    continue
                (va, ra), (vb, rb) = ((vi, ri), (vj, rj)) if vi > vj else ((vj, rj), (vi, ri))
                pairs.append(
                    PreferencePair(prompt, ra.response, rb.response, margin=va - vb, aspect=aspect, source=ra.source)
                )
    return pairs


def ratings_to_groups(ratings: Sequence[RatedResponse], aspect: str | None = None) -> list[RankedGroup]:
    """Group responses to the same prompt, ranked by an aspect's rating (ties share a rank); groups of < 2 are left out."""
    by_prompt: dict[str, list[tuple[float, RatedResponse]]] = {}
    for rec in ratings:
        value = rating_value(rec, aspect)
        if value is not None:
            by_prompt.setdefault(rec.prompt, []).append((value, rec))
    groups = []
    for prompt, items in by_prompt.items():
        if len(items) < 2:
            continue
        scores = [v for v, _ in items]
        groups.append(
            RankedGroup(
                prompt, [r.response for _, r in items], ranks_from_scores(scores), scores, source=items[0][1].source
            )
        )
    return groups


def pairs_to_groups(pairs: Sequence[PreferencePair]) -> list[RankedGroup]:
    """Each pair as a group of two (chosen rank 0, rejected rank 1)."""
    return [RankedGroup(p.prompt, [p.chosen, p.rejected], [0, 1], source=p.source) for p in pairs]
