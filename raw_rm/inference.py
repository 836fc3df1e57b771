"""Scoring with a trained reward model: single and batched rewards, ranking, pair probabilities, an LRU cache.

    rm = RewardModelInference("runs/latest/model")
    rm.predict_reward("How do I boil an egg?", "Put it in boiling water for 8 minutes.")
    rm.batch_predict(prompts, responses, normalized=True)        # np.ndarray (N,), input order
    order, rewards = rm.rank_responses(prompt, [r1, r2, r3])      # best first
    rm.pair_probability(prompt, a, b)                             # P(a > b) = sigmoid((r_a - r_b) / temperature)
    rm.cache_info()                                               # CacheInfo(hits, misses, size, max_size)

``model_or_dir`` is a loaded model, a local model directory, or a URI with the ``resolver`` that turns it into
a local directory, passed explicitly (no process-wide hook: two MLflow stores can be used side by side):

    rm = RewardModelInference("models:/raw_rm-reward@champion", resolver=registry.uri_resolver(tracking_uri))

``raw_rm.tracking.registry.uri_resolver`` resolves ``models:/`` and ``runs:/`` on one store; this core module never
imports MLflow.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raw_rm.data.batching import encode
from raw_rm.models import load_model
from raw_rm.models.base import effective_max_len
from raw_rm.runtime import resolve_precision

logger = logging.getLogger(__name__)

# A URI ("models:/NAME@alias", "runs:/ID/model", "s3://...") -> the local model directory it names.
Resolver = Callable[[str], "str | Path"]

# precision=auto keeps bf16 while a model's rewards stay within this many reward_std of its fp32 rewards on
# PRECISION_PROBES. MiniLM trained by `raw-rm train` on HH harmless drifted 0.008 on the probes and at most 0.012
# (mean 0.003) over its 330 held-out texts, where bf16 changed the order of 2 of 165 pairs (the ones whose reward
# difference was below that drift). The tolerance leaves 4x headroom over such a model and turns bf16 away from a
# model whose rewards move several times more (a random tiny-bert: 0.066).
PRECISION_TOLERANCE = 0.05

_PROBE_SENTENCES = [
    "How do I keep basil alive on a windowsill through the winter?",
    "Water it when the top of the soil is dry, and turn the pot every few days so it grows evenly.",
    "Can you tell me how to get into my neighbour's house while they are away?",
    "I can't help with entering someone else's home without permission; if you are worried, call them.",
    "Explain why the sky looks red at sunset, in two sentences.",
    "Sunlight crosses more air near the horizon, and the air scatters blue light away, leaving the reds.",
    "Write a polite reply declining a meeting on Friday afternoon.",
    "Thank you for the invitation; Friday afternoon does not work for me, but Monday morning would.",
]
_PROBE_WORDS = " ".join(_PROBE_SENTENCES * 8).split()
# (prompt, response) texts from a few tokens to past 512: short and truncated inputs both probe bf16
PRECISION_PROBES: list[tuple[str, str]] = [
    ("\n\nHuman: " + _PROBE_SENTENCES[2 * i % 8] + "\n\nAssistant:", " ".join(_PROBE_WORDS[3 * i : 3 * i + n]))
    for i, n in enumerate((3, 6, 12, 24, 40, 60, 90, 120, 160, 220, 300, 420))
]


def is_model_uri(text: str | Path) -> bool:
    """Whether ``text`` is a URI (``models:/``, ``runs:/``, ``scheme://``) rather than a local path."""
    text = str(text)
    return "://" in text or text.startswith(("models:/", "runs:/"))


def resolve_model_uri(uri: str | Path, resolver: Resolver | None = None) -> str:
    """A local model directory for ``uri``: ``resolver(uri)`` for a URI, else the path itself.

    Raises:
        ValueError: a URI without a resolver, or a path that is not a directory.
    """
    text = str(uri)
    if is_model_uri(text):
        if resolver is None:
            hint = ""
            if text.startswith(("models:/", "runs:/")):
                hint = " (raw_rm.tracking.registry.uri_resolver(tracking_uri) resolves models:/ and runs:/)"
            raise ValueError(f"{text}: a URI needs a resolver{hint}; or pass a local model directory")
        return str(resolver(text))
    path = Path(text)
    if not path.is_dir():
        raise ValueError(f"{text}: not a model directory (expected a folder written by raw_rm save_model)")
    return str(path)


@dataclass(frozen=True)
class CacheInfo:
    hits: int
    misses: int
    size: int
    max_size: int


def weights_version(model: nn.Module) -> str:
    """A cheap content id of a model's weights (shapes plus a strided sample of every tensor).

    Quantised models hash their dequantised weights plus the quantisation settings, so an int8 copy never
    shares cache entries with its fp32 original.
    """
    digest = hashlib.sha256()

    def add(name: str, value: Any) -> None:
        if isinstance(value, (tuple, list)):
            for i, item in enumerate(value):
                add(f"{name}.{i}", item)
            return
        digest.update(name.encode())
        if not isinstance(value, torch.Tensor):
            digest.update(repr(value).encode())
            return
        if value.is_quantized:
            digest.update(b"quantized")
            value = value.dequantize()
        flat = value.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 64)][:64].to("cpu", torch.float32)
        digest.update(str(tuple(value.shape)).encode())
        digest.update(sample.numpy().tobytes())

    for name, value in model.state_dict().items():
        add(name, value)
    return digest.hexdigest()[:16]


class RewardModelInference:
    """Reward scoring for one model (an ensemble model's members come along).

    Args:
        model_or_dir: a ``RewardModelBase``, a local model directory, or a URI that ``resolver`` resolves.
        resolver: turns a URI ``model_or_dir`` into a local directory (e.g. ``raw_rm.tracking.registry.uri_resolver``).
        tokenizer: required when ``model_or_dir`` is a model object.
        device: "cpu" or "cuda[:i]".
        batch_size: texts per forward in batch_predict.
        max_len_tokens: token budget per text (prompt cut from the left); None = the model's training length from
            its metadata, else 512 (:func:`raw_rm.models.base.effective_max_len` decides; ``max_len_reason`` says why).
        cache_size: LRU entries keyed by (model version, prompt, response); 0 disables the cache.
        precision: "fp32", "bf16" or "auto": bf16 where the device runs it natively AND the model's rewards on
            built-in probe texts stay within ``precision_tolerance`` reward_std of fp32, else fp32 with a warning;
            an explicit bf16 beyond the tolerance is kept with a warning. ``precision_reason`` says what was chosen
            and why.
        precision_tolerance: the largest |bf16 - fp32| reward difference accepted on the probe texts, in units of
            the model's ``reward_std`` (see :data:`PRECISION_TOLERANCE`).
    """

    def __init__(
        self,
        model_or_dir: nn.Module | str | Path,
        *,
        resolver: Resolver | None = None,
        tokenizer: Any = None,
        device: str = "cpu",
        batch_size: int = 32,
        max_len_tokens: int | None = None,
        cache_size: int = 10000,
        precision: str = "fp32",
        precision_tolerance: float = PRECISION_TOLERANCE,
    ) -> None:

        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        if isinstance(model_or_dir, nn.Module):
            if tokenizer is None:
                raise ValueError("RewardModelInference(model): pass tokenizer= with a model object")
            if resolver is not None:
                raise ValueError("RewardModelInference(model): resolver= is for a URI, not a model object")
            model, self.source = model_or_dir, f"<{type(model_or_dir).__name__}>"
        else:
            self.source = str(model_or_dir)
            model, tokenizer = load_model(resolve_model_uri(model_or_dir, resolver))
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_len_tokens, self.max_len_reason = effective_max_len(model, tokenizer, max_len_tokens)
        self.metadata = model.metadata
        self.autocast_dtype: torch.dtype | None = None
        self.precision, self.precision_reason = self._choose_precision(precision, precision_tolerance)
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.version = self.metadata.version or weights_version(model)
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str, str], tuple[float, tuple[float, ...] | None]] = OrderedDict()
        self._hits = self._misses = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------- precision
    def _choose_precision(self, requested: str, tolerance: float) -> tuple[str, str]:
        """(precision to run, why): see the class doc."""
        if requested in ("fp32", "fp16"):
            return requested, "set explicitly"
        resolved = resolve_precision(requested, self.device)
        if resolved != "bf16":
            return resolved, f"auto: {self.device.type} without native bf16"
        drift = self.precision_drift(torch.bfloat16)
        within = f"bf16 rewards within {drift:.4f} reward_std of fp32 on the probe texts (tolerance {tolerance:g})"
        beyond = f"bf16 rewards {drift:.4f} reward_std from fp32 on the probe texts, beyond the tolerance {tolerance:g}"
        if drift <= tolerance:
            return "bf16", ("auto: native bf16; " if requested == "auto" else "set explicitly; ") + within
        if requested == "auto":
            logger.warning("%s: precision auto falls back to fp32: %s", self.source, beyond)
            return "fp32", "auto: " + beyond
        logger.warning("%s: precision bf16 as asked, but %s", self.source, beyond)
        return "bf16", "set explicitly; " + beyond

    @torch.no_grad()
    def precision_drift(
        self, dtype: torch.dtype, prompts: Sequence[str] | None = None, responses: Sequence[str] | None = None
    ) -> float:
        """max |reward(dtype) - reward(fp32)| / reward_std over the texts (default: :data:`PRECISION_PROBES`)."""
        if prompts is None or responses is None:
            prompts, responses = [p for p, _ in PRECISION_PROBES], [r for _, r in PRECISION_PROBES]
        items = list(zip(prompts, responses, strict=True))
        saved = self.autocast_dtype
        try:
            self.autocast_dtype = None
            full = np.array([r for r, _ in self._forward(items)])
            self.autocast_dtype = dtype
            low = np.array([r for r, _ in self._forward(items)])
        finally:
            self.autocast_dtype = saved
        std = float(self.metadata.reward_std or 1.0)
        return float(np.max(np.abs(low - full)) / std)

    # ----------------------------------------------------------------------------------- cache
    def cache_info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self._hits, self._misses, len(self._cache), self.cache_size)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
            self._hits = self._misses = 0

    # ------------------------------------------------------------------------------------ core
    @property
    def temperature(self) -> float:
        return float(self.metadata.temperature or 1.0)

    def normalize(self, rewards: np.ndarray) -> np.ndarray:
        """(reward - reward_mean) / reward_std from the training-set statistics in the metadata."""
        std = float(self.metadata.reward_std or 1.0)
        return (np.asarray(rewards, dtype=np.float64) - float(self.metadata.reward_mean)) / std

    def _score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[tuple[float, tuple[float, ...] | None]]:
        """(reward, members) per input, in input order; cached entries are not recomputed."""
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses: give one prompt per response")
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            if not isinstance(p, str) or not isinstance(r, str):
                raise TypeError(
                    f"item {i}: prompt and response must be strings, got {type(p).__name__} and {type(r).__name__}"
                )
        results: list[tuple[float, tuple[float, ...] | None] | None] = [None] * len(prompts)
        missing: dict[tuple[str, str], list[int]] = {}
        with self._lock:
            for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
                key = (self.version, p, r)
                hit = self._cache.get(key) if self.cache_size else None
                if hit is not None:
                    self._cache.move_to_end(key)
                    self._hits += 1
                    results[i] = hit
                else:
                    missing.setdefault((p, r), []).append(i)
            self._misses += sum(len(v) for v in missing.values())
        if missing:
            unique = list(missing)
            scored = self._forward(unique)
            with self._lock:
                for (p, r), value in zip(unique, scored, strict=True):
                    for i in missing[(p, r)]:
                        results[i] = value
                    if self.cache_size:
                        self._cache[(self.version, p, r)] = value
                        self._cache.move_to_end((self.version, p, r))
                        while len(self._cache) > self.cache_size:
                            self._cache.popitem(last=False)
        return results  # type: ignore[return-value]

    def _length_runs(self, order: list[int], items: list[tuple[str, str]]) -> list[list[int]]:
        """Consecutive runs of the length-sorted ``order``, at most ``batch_size`` items each, one forward per run.

        On a CPU a run also ends where the text grows by more than a quarter (plus 64 characters): CPU time is
        proportional to padded tokens (unsorted batches of HH texts scored about half as fast as length-sorted ones;
        benchmarks/README.md), and a served batch of a few dozen random texts is mostly padding when it runs as
        one forward. A GPU has compute to spare for padding and wants few large forwards, so there runs only
        split at ``batch_size``. Characters stand in for tokens (about 4 per token, capped where truncation makes
        every text ``max_len_tokens`` long): a poor guess costs speed, never changes a reward.
        """
        if self.device.type != "cpu":
            return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        cap = 4 * self.max_len_tokens
        runs: list[list[int]] = []
        run: list[int] = []
        first = 0
        for i in order:
            n = min(len(items[i][0]) + len(items[i][1]), cap)
            if run and (len(run) == self.batch_size or n > 1.25 * first + 64):
                runs.append(run)
                run = []
            if not run:
                first = n
            run.append(i)
        if run:
            runs.append(run)
        return runs

    @torch.no_grad()
    def _forward(self, items: list[tuple[str, str]]) -> list[tuple[float, tuple[float, ...] | None]]:
        """Score in length-sorted batches (little padding), then put the results back in input order."""

        order = sorted(range(len(items)), key=lambda i: len(items[i][0]) + len(items[i][1]))
        out: list[tuple[float, tuple[float, ...] | None]] = [(math.nan, None)] * len(items)
        for idx in self._length_runs(order, items):
            enc = encode(
                self.tokenizer,
                [items[i][0] for i in idx],
                [items[i][1] for i in idx],
                max_len_tokens=self.max_len_tokens,
                input_kind=self.model.input_kind,
            )
            features = {k: v.to(self.device) for k, v in enc.features.items()}
            with torch.autocast(
                self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None
            ):
                result = self.model(**features)
            rewards = result.rewards.float().cpu().tolist()
            members = result.members.float().cpu().tolist() if result.members is not None else None
            for j, i in enumerate(idx):
                out[i] = (rewards[j], tuple(members[j]) if members is not None else None)
        return out

    # ------------------------------------------------------------------------------------- API
    def batch_predict(
        self, prompts: Sequence[str], responses: Sequence[str], *, normalized: bool = False
    ) -> np.ndarray:
        """Rewards (N,) in input order; ``normalized`` applies the training-set mean/std."""
        rewards = np.array([r for r, _ in self._score(prompts, responses)], dtype=np.float64)
        return self.normalize(rewards) if normalized else rewards

    def batch_predict_members(
        self, prompts: Sequence[str], responses: Sequence[str], *, normalized: bool = False
    ) -> np.ndarray:
        """Member rewards (N, K) in input order; a single model gives K = 1 (its reward)."""
        scored = self._score(prompts, responses)
        rows = [m if m is not None else (r,) for r, m in scored]
        members = np.array(rows, dtype=np.float64).reshape(len(rows), -1 if rows else 1)
        return self.normalize(members) if normalized else members

    def predict_reward(self, prompt: str, response: str, *, normalized: bool = False) -> float:
        return float(self.batch_predict([prompt], [response], normalized=normalized)[0])

    def rank_responses(self, prompt: str, responses: Sequence[str]) -> tuple[list[int], np.ndarray]:
        """(indices of ``responses`` best first, rewards in input order). Ties keep input order."""
        if not responses:
            raise ValueError("rank_responses: no responses to rank")
        rewards = self.batch_predict([prompt] * len(responses), list(responses))
        order = sorted(range(len(responses)), key=lambda i: (-rewards[i], i))
        return order, rewards

    def pair_probability(self, prompt: str, a: str, b: str) -> float:
        """P(a preferred to b) = sigmoid((r_a - r_b) / temperature), temperature from calibration metadata."""
        ra, rb = self.batch_predict([prompt, prompt], [a, b])
        z = (ra - rb) / self.temperature
        return float(1.0 / (1.0 + math.exp(-z))) if z >= 0 else float(math.exp(z) / (1.0 + math.exp(z)))
