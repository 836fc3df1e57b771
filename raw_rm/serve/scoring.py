"""Pure helpers of the reward server: request validation, prompt splitting, aggregation (no Ray, no HTTP).

Everything here is plain Python/torch so it is unit-tested without a server; ``raw_rm/serve/app.py``
(the edge) only moves JSON bodies through these functions and member rewards between deployments.

Request shapes (all JSON objects; unknown keys of our own endpoints are refused, naming the key):

    POST /get_reward  {"query": [str], "prompts": [str] (optional), "labels": [any] (optional)}
    POST /score       {"items": [{"prompt": str, "response": str}]}
    POST /compare     {"pairs": [{"prompt": str, "response_a": str, "response_b": str}]}
    POST /rank        {"prompt": str, "responses": [str]}

``/get_reward`` is OpenRLHF's remote reward-model contract, and OpenRLHF retries any 4xx and then fails
the training step, so it is deliberately tolerant: extra keys are ignored, labels may be any JSON value,
empty texts are scored, unpaired surrogates become U+FFFD, and texts longer than ``max_text_chars`` keep
their end instead of being refused (the model's token limit then truncates again, keeping the response
end). The other endpoints are strict: an empty response, an over-long text or invalid Unicode is a 4xx
naming the field.
"""

from __future__ import annotations

import difflib
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from raw_rm.config import ConfigError, ServeConfig, apply_overrides, config_from_dict, load_config
from raw_rm.data.formats import ASSISTANT_TAG, common_prefix_length, split_hh_dialogue
from raw_rm.uncertainty import aggregate, compare_pairs, normalise

AGGREGATES = ("mean", "std", "min", "mean_minus_lambda_var", "lcb")
IMPORT_PATH = "raw_rm.serve.app:build_app"


class RequestError(ValueError):
    """A client mistake: ``status`` is the HTTP code, ``field`` the JSON path of the offending value."""

    def __init__(self, field: str, message: str, *, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status

    def to_json(self) -> dict[str, Any]:
        return {"error": f"{self.field}: {self.message}", "field": self.field}


# -------------------------------------------------------------------------------- config files
def load_serve_config(path: str | Path, overrides: list[str] | None = None) -> ServeConfig:
    """A ServeConfig from a Serve config file (``applications: [{import_path, args}]``) or a plain ServeConfig YAML.

    In a Serve config file the application whose ``import_path`` is ``raw_rm.serve.app:build_app`` supplies
    ``args``; the file's ``http_options.host`` / ``port`` and the application's ``route_prefix`` / ``name``
    fill ``host`` / ``port`` / ``route_prefix`` / ``app_name`` when ``args`` leaves them out, and must agree
    with them otherwise (Serve binds what ``http_options`` says; the security check reads ``host``).
    ``overrides`` are ``key=value`` strings applied last.

    Raises:
        ConfigError: naming the file and key.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or "applications" not in raw:
        return load_config(path, overrides, root=ServeConfig)
    apps = raw["applications"] or []
    index = next((i for i, a in enumerate(apps) if isinstance(a, dict) and a.get("import_path") == IMPORT_PATH), None)
    if index is None:
        raise ConfigError(f"{path}: applications: no application with import_path {IMPORT_PATH}")
    app = apps[index]
    args = dict(app.get("args") or {})
    given = [(f"http_options.{k}", k, v) for k, v in (raw.get("http_options") or {}).items() if k in ("host", "port")]
    given += [
        (f"applications[{index}].{k}", k2, app[k])
        for k, k2 in (("route_prefix", "route_prefix"), ("name", "app_name"))
        if k in app
    ]
    for where, key, value in given:
        if key in args and args[key] != value:
            raise ConfigError(
                f"{path}: applications[{index}].args.{key} is {args[key]!r} but {where} is {value!r}: make them equal"
            )
        args[key] = value
    cfg = config_from_dict(args, root=ServeConfig, source=f"{path}: applications[{index}].args")
    return apply_overrides(cfg, overrides) if overrides else cfg


def serve_config_from_args(args: dict[str, Any] | None) -> ServeConfig:
    """A ServeConfig from application ``args``, typed (a config file) or all strings (the command line).

    ``serve run raw_rm.serve.app:build_app models='["runs/a/model"]' reward=lcb`` passes every value as a
    string; those are parsed as YAML, exactly as ``key=value`` overrides are.

    Raises:
        ConfigError: naming the key.
    """
    args = dict(args or {})
    typed = {k: v for k, v in args.items() if not isinstance(v, str)}
    overrides = [f"{k}={v}" for k, v in args.items() if isinstance(v, str)]
    cfg = config_from_dict(typed, root=ServeConfig, source="serve args")
    return apply_overrides(cfg, overrides) if overrides else cfg


# ------------------------------------------------------------------------------------ validation
def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _mapping(body: Any, where: str = "body") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RequestError(where, f"expected a JSON object, got {_type_name(body)}")
    return body


def _check_keys(obj: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    for key in obj:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else f" (known: {', '.join(known)})"
            raise RequestError(f"{where}{key}", f"unknown field{hint}")


def _list(obj: dict[str, Any], key: str, cfg: ServeConfig, *, where: str = "", min_items: int = 0) -> list[Any]:
    name = f"{where}{key}"
    if key not in obj:
        raise RequestError(name, "missing required field")
    value = obj[key]
    if not isinstance(value, list):
        raise RequestError(name, f"expected a list, got {_type_name(value)}")
    if len(value) > cfg.max_items:
        raise RequestError(name, f"too many items: {len(value)} > max_items {cfg.max_items}", status=413)
    if len(value) < min_items:
        raise RequestError(name, f"expected at least {min_items} item(s), got {len(value)}")
    return value


def _text(value: Any, name: str, cfg: ServeConfig, *, allow_empty: bool) -> str:
    """A strict text field: a string, non-empty unless allowed, at most ``max_text_chars`` characters."""
    if not isinstance(value, str):
        raise RequestError(name, f"expected a string, got {_type_name(value)}")
    if not allow_empty and not value.strip():
        raise RequestError(name, "must not be empty")
    if len(value) > cfg.max_text_chars:
        raise RequestError(name, f"too long: {len(value)} characters > max_text_chars {cfg.max_text_chars}", status=413)
    if not _is_valid_unicode(value):
        raise RequestError(name, "contains an unpaired surrogate (\\ud800-\\udfff): not valid Unicode")
    return value


def _is_valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def repair_unicode(text: str) -> str:
    """JSON ``\\ud83d\\ude00`` escapes pair up into one character; unpaired surrogates become U+FFFD.

    Tokenizers reject strings holding surrogates, so /get_reward repairs them instead of refusing.
    """
    if _is_valid_unicode(text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def clip_end(text: str, max_chars: int) -> tuple[str, bool]:
    """Keep the last ``max_chars`` characters (the end of a rollout is what the reward judges)."""
    if len(text) <= max_chars:
        return text, False
    return text[-max_chars:], True


@dataclass
class ScoreItems:
    """Validated texts to score: row i is (prompts[i], responses[i])."""

    prompts: list[str]
    responses: list[str]
    n_clipped: int = 0  # texts whose start was dropped to fit max_text_chars (/get_reward only)
    clipped: list[bool] = field(default_factory=list)  # per row: was anything clipped
    split_methods: Counter = field(default_factory=Counter)  # /get_reward: how each query was split

    def __len__(self) -> int:
        return len(self.responses)


def parse_get_reward(body: Any, cfg: ServeConfig) -> ScoreItems:
    """Validate an OpenRLHF ``/get_reward`` body and split each query into (prompt, response).

    ``prompts`` and ``labels`` are optional (early OpenRLHF sent only ``query``); when present they
    must be lists as long as ``query``. Labels are opaque: any JSON value, never inspected.
    """
    obj = _mapping(body)
    queries = _list(obj, "query", cfg)
    prompts: list[Any] = [None] * len(queries)
    if "prompts" in obj and obj["prompts"] is not None:
        prompts = _list(obj, "prompts", cfg)
        if len(prompts) != len(queries):
            raise RequestError("prompts", f"expected {len(queries)} items (one per query), got {len(prompts)}")
    if "labels" in obj and obj["labels"] is not None:
        labels = _list(obj, "labels", cfg)
        if len(labels) != len(queries):
            raise RequestError("labels", f"expected {len(queries)} items (one per query), got {len(labels)}")
    items = ScoreItems([], [])
    for i, (query, prompt) in enumerate(zip(queries, prompts)):
        if not isinstance(query, str):
            raise RequestError(f"query[{i}]", f"expected a string, got {_type_name(query)}")
        if prompt is not None and not isinstance(prompt, str):
            raise RequestError(f"prompts[{i}]", f"expected a string or null, got {_type_name(prompt)}")
        head, tail, method = split_query(repair_unicode(query), repair_unicode(prompt or ""))
        head, clipped_head = clip_end(head, cfg.max_text_chars)
        tail, clipped_tail = clip_end(tail, cfg.max_text_chars)
        items.prompts.append(head)
        items.responses.append(tail)
        items.clipped.append(clipped_head or clipped_tail)
        items.n_clipped += int(clipped_head) + int(clipped_tail)
        items.split_methods[method] += 1
    return items


def parse_score(body: Any, cfg: ServeConfig) -> ScoreItems:
    """Validate ``{"items": [{"prompt": str, "response": str}]}``."""
    obj = _mapping(body)
    _check_keys(obj, ("items",), "")
    rows = _list(obj, "items", cfg, min_items=1)
    items = ScoreItems([], [])
    for i, row in enumerate(rows):
        where = f"items[{i}]"
        row = _mapping(row, where)
        _check_keys(row, ("prompt", "response"), f"{where}.")
        if "response" not in row:
            raise RequestError(f"{where}.response", "missing required field")
        items.prompts.append(_text(row.get("prompt", ""), f"{where}.prompt", cfg, allow_empty=True))
        items.responses.append(_text(row["response"], f"{where}.response", cfg, allow_empty=False))
    return items


def parse_compare(body: Any, cfg: ServeConfig) -> tuple[ScoreItems, ScoreItems]:
    """Validate ``{"pairs": [{"prompt", "response_a", "response_b"}]}`` -> (side a items, side b items)."""
    obj = _mapping(body)
    _check_keys(obj, ("pairs",), "")
    rows = _list(obj, "pairs", cfg, min_items=1)
    side_a, side_b = ScoreItems([], []), ScoreItems([], [])
    for i, row in enumerate(rows):
        where = f"pairs[{i}]"
        row = _mapping(row, where)
        _check_keys(row, ("prompt", "response_a", "response_b"), f"{where}.")
        prompt = _text(row.get("prompt", ""), f"{where}.prompt", cfg, allow_empty=True)
        for key, side in (("response_a", side_a), ("response_b", side_b)):
            if key not in row:
                raise RequestError(f"{where}.{key}", "missing required field")
            side.prompts.append(prompt)
            side.responses.append(_text(row[key], f"{where}.{key}", cfg, allow_empty=False))
    return side_a, side_b


def parse_rank(body: Any, cfg: ServeConfig) -> ScoreItems:
    """Validate ``{"prompt": str, "responses": [str]}`` (one prompt, k >= 1 candidates)."""
    obj = _mapping(body)
    _check_keys(obj, ("prompt", "responses"), "")
    if "prompt" not in obj:
        raise RequestError("prompt", "missing required field")
    prompt = _text(obj["prompt"], "prompt", cfg, allow_empty=True)
    responses = _list(obj, "responses", cfg, min_items=1)
    texts = [_text(r, f"responses[{i}]", cfg, allow_empty=False) for i, r in enumerate(responses)]
    return ScoreItems([prompt] * len(texts), texts)


# ------------------------------------------------------------------------------------ splitting
def split_query(query: str, prompt: str) -> tuple[str, str, str]:
    """Split an OpenRLHF query (prompt + response, decoded from token ids) into (prompt, response, method).

    OpenRLHF decodes queries with special tokens, so ``prompt`` is not always an exact prefix. Tried in order:

    1. ``"prefix"``: ``query`` starts with ``prompt``.
    2. ``"contains"``: ``prompt`` occurs in ``query`` (e.g. after a BOS token); the split is after its
       *first* occurrence, because the prompt precedes the response and a response may quote its prompt.
    3. ``"common_prefix"``: ``query`` and ``prompt`` share a prefix of at least half the prompt (the
       decoded text differs near the end, e.g. whitespace around special tokens); split where they diverge.
    4. ``"hh_marker"``: ``raw_rm.data.formats.split_hh_dialogue``, the split used for training on HH-RLHF:
       after the last ``"\n\nAssistant:"``, the response without its leading whitespace.
    5. ``"whole"``: the whole query is the response, with an empty prompt.

    Only where the split falls matters for a concat model (prompt and response are encoded as one
    sequence): it decides which end truncation keeps.

    >>> split_query("<s>Q: hi A: yo", "Q: hi A:")
    ('<s>Q: hi A:', ' yo', 'contains')
    """
    if prompt:
        if query.startswith(prompt):
            return prompt, query[len(prompt) :], "prefix"
        at = query.find(prompt)
        if at >= 0:
            cut = at + len(prompt)
            return query[:cut], query[cut:], "contains"
        common = common_prefix_length(query, prompt)
        if common * 2 >= len(prompt):
            return query[:common], query[common:], "common_prefix"
    if ASSISTANT_TAG in query:
        head, tail = split_hh_dialogue(query)
        return head, tail, "hh_marker"
    return "", query, "whole"


# ----------------------------------------------------------------------------------- aggregation
@dataclass
class MemberInfo:
    """What the ingress needs of one served model (a multi-head model contributes ``heads`` members)."""

    name: str
    heads: int
    reward_mean: float = 0.0
    reward_std: float = 1.0
    temperature: float = 1.0
    members_normalised: bool = False  # an ensemble folder: its members are already z-scores (models/ensemble.py)


def normalise_members(raw: torch.Tensor, infos: list[MemberInfo], *, normalize: bool) -> torch.Tensor:
    """(N, K) raw member rewards -> (N, K) rewards in training-standardised units, each model with its own stats.

    Column order is ``infos`` order, each model's heads side by side. A model whose stored std is not a
    positive finite number (an untrained model) is only centred. An ensemble folder's members arrive
    already normalised with each member's own statistics and are kept as they are.
    """
    k_total = sum(m.heads for m in infos)
    assert raw.shape[1] == k_total, f"members: got {raw.shape[1]} columns, infos describe {k_total}"
    if not normalize:
        return raw
    columns, start = [], 0
    for m in infos:
        block = raw[:, start : start + m.heads]
        start += m.heads
        if m.members_normalised:
            columns.append(block)
            continue
        std = m.reward_std if m.reward_std > 0 and math.isfinite(m.reward_std) else 1.0
        columns.append(normalise(block, m.reward_mean, std))
    return torch.cat(columns, dim=1).to(raw.dtype)  # (N, K)


def aggregate_scores(members: torch.Tensor, cfg: ServeConfig) -> dict[str, torch.Tensor]:
    """(N, K) member rewards -> each aggregate (N,) plus ``"reward"``, the one ``cfg.reward`` names.

    With a single member the (population) standard deviation is 0, so every aggregate equals its reward.
    """
    if members.shape[0] == 0:
        empty = torch.zeros(0, dtype=members.dtype)
        return {name: empty for name in (*AGGREGATES, "reward")}
    out = dict(aggregate(members, lam=cfg.lam, k=cfg.k))
    out["reward"] = out[cfg.reward]
    return out


def pair_probabilities(raw_a: torch.Tensor, raw_b: torch.Tensor, infos: list[MemberInfo]) -> dict[str, torch.Tensor]:
    """P(a > b) from (N, K) raw member rewards of both sides, each model with its calibration temperature.

    Temperatures are fitted on raw reward differences, so the normalisation is not applied here. Each
    member's rewards are divided by its model's temperature, then ``raw_rm.uncertainty.compare_pairs``
    gives ``prob`` = sigmoid(mean_k delta_k / T_k) and ``prob_std``; ``members`` (N, K) holds each member's
    own sigmoid(delta_k / T_k).
    """
    temps = torch.tensor([m.temperature for m in infos for _ in range(m.heads)], dtype=raw_a.dtype)
    a, b = raw_a / temps, raw_b / temps
    out = dict(compare_pairs(a, b, temperature=1.0))
    out["members"] = torch.sigmoid(a - b)  # (N, K)
    return out


def _floats(t: torch.Tensor) -> list[float]:
    return [float(x) if math.isfinite(float(x)) else 0.0 for x in t.tolist()]


def get_reward_response(agg: dict[str, torch.Tensor], items: ScoreItems) -> dict[str, Any]:
    """The OpenRLHF body: ``rewards``, ``scores`` and ``extra_logs`` (numeric lists, one value per query)."""
    rewards = _floats(agg["reward"])
    return {
        "rewards": rewards,
        "scores": list(rewards),
        "extra_logs": {
            "reward_mean": _floats(agg["mean"]),
            "reward_std": _floats(agg["std"]),
            "reward_min": _floats(agg["min"]),
            "reward_lcb": _floats(agg["lcb"]),
            "reward_mean_minus_lambda_var": _floats(agg["mean_minus_lambda_var"]),
            "reward_truncated": [float(c) for c in items.clipped],
        },
    }


def score_response(
    agg: dict[str, torch.Tensor], members: torch.Tensor, raw: torch.Tensor, cfg: ServeConfig
) -> dict[str, Any]:
    """``/score`` body: per item every aggregate, the chosen ``reward``, and each member's reward (normalised and raw)."""
    columns = {name: _floats(agg[name]) for name in (*AGGREGATES, "reward")}
    results = []
    for i in range(members.shape[0]):
        row = {name: columns[name][i] for name in ("reward", *AGGREGATES)}
        row["members"] = _floats(members[i])
        row["raw_members"] = _floats(raw[i])
        results.append(row)
    return {"reward_aggregate": cfg.reward, "results": results}


def compare_response(
    agg_a: dict[str, torch.Tensor], agg_b: dict[str, torch.Tensor], probs: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """``/compare`` body: per pair P(a > b), its spread over members (probability std, vote split), both sides' reward and std."""
    prob, spread = _floats(probs["prob"]), _floats(probs["prob_std"])
    ra, rb, sa, sb = _floats(agg_a["reward"]), _floats(agg_b["reward"]), _floats(agg_a["std"]), _floats(agg_b["std"])
    results = []
    for i in range(len(prob)):
        results.append(
            {
                "prob_a": prob[i],
                "prob_std": spread[i],
                "vote_split": float(probs["vote_split"][i]),
                "member_probs": _floats(probs["members"][i]),
                "reward_a": ra[i],
                "reward_b": rb[i],
                "std_a": sa[i],
                "std_b": sb[i],
                "preferred": "a" if prob[i] >= 0.5 else "b",
            }
        )
    return {"results": results}


def rank_response(agg: dict[str, torch.Tensor], cfg: ServeConfig) -> dict[str, Any]:
    """``/rank`` body: ``order`` (response indices, best first by the configured reward; ties keep input order)."""
    reward = _floats(agg["reward"])
    order = sorted(range(len(reward)), key=lambda i: (-reward[i], i))
    return {
        "reward_aggregate": cfg.reward,
        "order": order,
        "rewards": reward,
        "std": _floats(agg["std"]),
        "lcb": _floats(agg["lcb"]),
    }
