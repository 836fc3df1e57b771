"""int8 dynamic quantisation of a reward model for CPU inference, and loading any saved model for scoring.

``quantize_int8(model)`` replaces every ``nn.Linear`` by a dynamically quantised one (int8 weights, activations
quantised per batch); no extra package is needed. A quantised model is stored as the fp32 model directory plus
``quantization.json``: quantisation is a deterministic function of the fp32 weights, so :func:`load_for_inference`
re-applies it on load instead of pickling quantised modules.

    write_quantized("runs/latest/model", "runs/latest/model_int8")
    report = compare_quantized("runs/latest/model", val_pairs)
    report["accuracy_fp32"], report["accuracy_int8"], report["speedup"]
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raw_rm.data.records import PreferencePair
from raw_rm.inference import Resolver, RewardModelInference, resolve_model_uri
from raw_rm.models import load_model

logger = logging.getLogger(__name__)

QUANTIZATION_FILE = "quantization.json"


def quantize_int8(model: nn.Module) -> nn.Module:
    """A CPU copy of ``model`` with every ``nn.Linear`` dynamically quantised to int8 (the input is untouched).

    ``torch.ao.quantization.quantize_dynamic`` is deprecated in favour of the torchao package but still works
    in this torch and needs nothing extra; its deprecation warnings are silenced here, once, on purpose.
    """
    clone = copy.deepcopy(model).to("cpu").eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, message=".*quantiz.*")
        # torch.ao.quantization is imported here, under the filter above: it is deprecated (it warns) and only int8
        # export and int8 loading use it
        from torch.ao.quantization import quantize_dynamic

        quantized = quantize_dynamic(clone, {nn.Linear}, dtype=torch.qint8)
    n_linear = sum(isinstance(m, nn.Linear) for m in model.modules())
    logger.info("int8: quantised %d Linear layers", n_linear)
    return quantized


def write_quantized(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Copy the fp32 model directory to ``out_dir`` and mark it for int8 dynamic quantisation on load."""

    src, out = Path(resolve_model_uri(model_dir)), Path(out_dir)
    if out.resolve() != src.resolve():
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(src, out)
    (out / QUANTIZATION_FILE).write_text(
        json.dumps({"method": "dynamic", "dtype": "qint8", "modules": ["Linear"]}, indent=1)
    )
    return out


def load_for_inference(
    model_dir: str | Path, *, resolver: Resolver | None = None, **kwargs: Any
) -> RewardModelInference:
    """``RewardModelInference`` for a directory (or a URI that ``resolver`` resolves to one), quantised when it
    carries ``quantization.json``."""
    path = Path(resolve_model_uri(model_dir, resolver))
    if not (path / QUANTIZATION_FILE).exists():
        return RewardModelInference(path, **kwargs)
    model, tokenizer = load_model(path)
    quantized = quantize_int8(model)
    if kwargs.get("precision", "fp32") not in ("fp32", "auto"):
        logger.warning(
            "%s: precision=%s ignored: an int8 model runs its Linear layers in int8", path, kwargs["precision"]
        )
    # int8 Linear layers take fp32 activations: no autocast around them
    inference = RewardModelInference(quantized, tokenizer=tokenizer, **{**kwargs, "device": "cpu", "precision": "fp32"})
    inference.source = str(path)
    inference.precision, inference.precision_reason = "int8", f"the model folder holds {QUANTIZATION_FILE}"
    return inference


def _pair_accuracy_and_speed(
    rm: RewardModelInference, pairs: Sequence[PreferencePair]
) -> tuple[float, float, np.ndarray]:
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    rm.batch_predict(prompts[: min(len(prompts), rm.batch_size)], responses[: rm.batch_size])  # warm-up
    rm.clear_cache()
    t0 = time.perf_counter()
    rewards = rm.batch_predict(prompts, responses)
    dt = time.perf_counter() - t0
    delta = rewards[: len(pairs)] - rewards[len(pairs) :]
    return float((delta > 0).mean()), len(responses) / dt, delta


def compare_quantized(
    model: str | Path | nn.Module,
    pairs: Sequence[PreferencePair],
    *,
    tokenizer: Any = None,
    batch_size: int = 32,
    max_len_tokens: int | None = None,
) -> dict[str, float]:
    """Accuracy and CPU scoring speed of the fp32 model and its int8 copy on the same pairs.

    Returns:
        accuracy_fp32, accuracy_int8, accuracy_change (int8 - fp32), texts_per_s_fp32, texts_per_s_int8,
        speedup (int8 / fp32 texts/s), agreement (share of pairs both order the same way), n_pairs.
    """
    if not pairs:
        raise ValueError("compare_quantized: no evaluation pairs")
    if not isinstance(model, nn.Module):
        model, tokenizer = load_model(resolve_model_uri(model))
    elif tokenizer is None:
        raise ValueError("compare_quantized(model): pass tokenizer= with a model object")
    kwargs = {"tokenizer": tokenizer, "batch_size": batch_size, "max_len_tokens": max_len_tokens, "cache_size": 0}
    fp32 = RewardModelInference(model.to("cpu"), **kwargs)
    int8 = RewardModelInference(quantize_int8(model), **kwargs)
    acc32, speed32, delta32 = _pair_accuracy_and_speed(fp32, pairs)
    acc8, speed8, delta8 = _pair_accuracy_and_speed(int8, pairs)
    return {
        "accuracy_fp32": acc32,
        "accuracy_int8": acc8,
        "accuracy_change": acc8 - acc32,
        "texts_per_s_fp32": speed32,
        "texts_per_s_int8": speed8,
        "speedup": speed8 / speed32,
        "agreement": float(((delta32 > 0) == (delta8 > 0)).mean()),
        "n_pairs": float(len(pairs)),
    }
