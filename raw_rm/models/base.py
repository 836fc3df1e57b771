"""What every raw_rm reward model shares: the output record, the metadata record and the base class.

Every architecture subclasses :class:`RewardModelBase` and maps tokenised features (see
``raw_rm/data/batching.py``; which features depends on the class attribute ``input_kind``) to a
:class:`RewardOutput` whose ``rewards`` is the one reward preference losses use.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from raw_rm import __version__
from raw_rm.config import ModelConfig
from raw_rm.models.backbones import hidden_size, is_decoder, pool, pooled_hidden, resolve_pooling, trunk_hidden

InputKind = Literal["concat", "split", "segments"]


@dataclass
class RewardOutput:
    """The result of one forward pass over N sequences.

    Attributes:
        rewards: (N,) the reward used by preference losses (mean of ``members`` for the multi-head
            ensemble, the weighted combination of ``aspects`` for the multi-objective model).
        members: (N, K) one reward per ensemble head, or None.
        aspects: (N, A) one reward per named aspect, or None.
        segments: (N, S) per-segment (sentence) rewards, 0 where ``segment_mask`` is False, or None.
        segment_mask: (N, S) bool, True where row n has a segment s, or None.
        length_rewards: (N,) the output of a length head (ODIN: ``model.length_head``) or None. Training adds it
            to ``rewards`` for the preference loss; ``rewards`` itself never includes it, so scores at
            inference are the length-free ones.
    """

    rewards: torch.Tensor
    members: torch.Tensor | None = None
    aspects: torch.Tensor | None = None
    segments: torch.Tensor | None = None
    segment_mask: torch.Tensor | None = None
    length_rewards: torch.Tensor | None = None


@dataclass
class RewardMetadata:
    """Facts about a trained reward model that travel with its weights (saved config, registry, server)."""

    reward_mean: float = 0.0  # normalisation: served score = (reward - reward_mean) / reward_std
    reward_std: float = 1.0
    temperature: float = 1.0  # calibration: P(chosen > rejected) = sigmoid(delta / temperature); 1.0 until fitted
    aspects: list[str] = field(default_factory=list)  # multi-objective aspect names, in head order
    aspect_weights: list[float] = field(default_factory=list)  # multi-objective combination weights
    data_fingerprint: str | None = None  # content hash of the training data
    base_model: str = ""  # the backbone the model was built from ("minilm", "tiny-bert", an HF name/path)
    raw_rm_version: str = __version__  # raw_rm version that produced the model
    reference: dict[str, Any] = field(default_factory=dict)  # reward and length histograms for drift checks
    version: str | None = None  # an id of these weights (content hash or registry version)
    max_len_tokens: int | None = (
        None  # prompt+response token budget the model was trained at (data.max_len_tokens); scoring, serving and eval use it unless told otherwise; None = not recorded (older models)
    )
    truncation_side: str | None = (
        None  # how training cut longer inputs: "left" = the prompt loses its oldest tokens, the response keeps its end (raw_rm.data.batching); None = not recorded
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "metadata") -> RewardMetadata:
        """Rebuild from :meth:`to_dict`; unknown keys are an error naming ``source`` and the known keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown metadata key(s) {unknown} (known: {', '.join(sorted(known))})")
        return cls(**data)

    def record_training_input(self, max_len_tokens: int) -> None:
        """Note the token budget and truncation the model is being trained with (scoring uses the same)."""
        self.max_len_tokens = int(max_len_tokens)
        self.truncation_side = TRUNCATION_SIDE


TRUNCATION_SIDE = "left"  # the one truncation raw_rm.data.batching.encode applies (see RewardMetadata.truncation_side)
DEFAULT_MAX_LEN_TOKENS = 512  # scoring budget for a model that does not record its training length


def effective_max_len(model: nn.Module, tokenizer: Any, explicit: int | None = None) -> tuple[int, str]:
    """The token budget to score ``model`` at, and why: THE rule every scorer (serve, ``raw-rm score``, eval) uses.

    ``explicit`` (a command's ``--max-len-tokens``, ``ServeConfig.max_len_tokens``, an explicit
    ``data.max_len_tokens``) > the length the model was trained at (``metadata.max_len_tokens``; for an ensemble
    without its own, its members' longest) > 512; never above the tokenizer's ``model_max_length`` (the position
    embeddings end there). Scoring at another length than training gives other rewards on long texts.

    Raises:
        ValueError: the metadata records a truncation side that this raw_rm does not apply.
    """
    recorded, where = _training_max_len(model)
    limit = int(getattr(tokenizer, "model_max_length", DEFAULT_MAX_LEN_TOKENS) or DEFAULT_MAX_LEN_TOKENS)
    if explicit is not None:
        value, reason = int(explicit), "set explicitly"
        if recorded is not None and value != recorded:
            reason += f"; the model was trained at {recorded}"
    elif recorded is not None:
        value, reason = recorded, f"the model's training length ({where})"
    else:
        value, reason = DEFAULT_MAX_LEN_TOKENS, f"default: the model does not record its training length ({where})"
    if value > limit:
        value, reason = limit, f"{reason}; capped at the tokenizer's limit {limit}"
    return value, reason


def _training_max_len(model: nn.Module) -> tuple[int | None, str]:
    """(recorded training length or None, where it came from), checking the recorded truncation side."""
    metas = [("metadata", getattr(model, "metadata", None))]
    if getattr(metas[0][1], "max_len_tokens", None) is None:
        members = getattr(model, "members", None)
        if isinstance(members, nn.ModuleList):
            metas = [(f"member {i} metadata", getattr(m, "metadata", None)) for i, m in enumerate(members)]
    lengths = []
    for where, meta in metas:
        side = getattr(meta, "truncation_side", None)
        if side is not None and side != TRUNCATION_SIDE:
            raise ValueError(
                f"{where}.truncation_side: {side!r}; this raw_rm truncates {TRUNCATION_SIDE!r} only (the prompt loses "
                "its oldest tokens, the response keeps its end): scores would not match training"
            )
        if getattr(meta, "max_len_tokens", None) is not None:
            lengths.append(int(meta.max_len_tokens))
    if not lengths:
        return None, "metadata.max_len_tokens not set"
    if len(metas) == 1:
        return lengths[0], "metadata.max_len_tokens"
    return max(lengths), f"longest of the members' metadata.max_len_tokens {sorted(set(lengths))}"


class RewardModelBase(nn.Module):
    """Base of every reward model: ``forward(**features) -> RewardOutput``.

    Subclasses set ``arch`` (the registry name, equal to ``ModelConfig.arch``) and ``input_kind``
    (which features ``forward`` takes: "concat", "split" or "segments", as produced by
    ``raw_rm.data.batching.encode``).
    """

    arch: ClassVar[str] = ""
    input_kind: ClassVar[InputKind] = "concat"

    def __init__(self, model_cfg: ModelConfig, metadata: RewardMetadata | None = None) -> None:
        super().__init__()
        self.model_cfg = model_cfg
        self.metadata = metadata if metadata is not None else RewardMetadata(base_model=model_cfg.backbone)

    @classmethod
    def wants_hf_head(cls, model_cfg: ModelConfig, *, decoder: bool) -> bool:
        """Whether the builder passes an ``AutoModelForSequenceClassification`` instead of a bare trunk."""
        return False

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class TrunkRewardModel(RewardModelBase):
    """A reward model on a bare Hugging Face trunk (``AutoModel``, no pooler): every arch but HF-native concat.

    Sets ``trunk``, ``decoder`` (causal backbone: pooled at the last real token), ``pooling`` (resolved from
    ``model_cfg.pooling``), ``width`` (hidden size) and ``dropout`` (``model_cfg.dropout``, before the heads).
    """

    def __init__(self, model_cfg: ModelConfig, backbone: nn.Module, metadata: RewardMetadata | None = None):
        super().__init__(model_cfg, metadata)
        if backbone.base_model is not backbone:
            raise ValueError(f"{type(self).__name__} needs a bare AutoModel trunk, got {type(backbone).__name__}")
        self.trunk = backbone
        self.decoder = is_decoder(backbone.config)
        self.pooling = resolve_pooling(model_cfg.pooling, decoder=self.decoder)
        self.width = hidden_size(backbone.config)
        self.dropout = nn.Dropout(model_cfg.dropout)

    @property
    def backbone_config(self):
        return self.trunk.config

    def hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        *,
        trunk: nn.Module | None = None,
    ) -> torch.Tensor:
        """(N, T, H) last hidden states of ``trunk`` (default: ``self.trunk``)."""
        trunk = trunk if trunk is not None else self.trunk
        return trunk_hidden(trunk, input_ids, attention_mask, token_type_ids, decoder=self.decoder)

    def pooled(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, T, H) -> (N, H) by ``self.pooling``."""
        return pool(hidden, attention_mask, self.pooling)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        *,
        trunk: nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared forward prelude: (N, T) ids -> (hidden (N, T, H), pooled (N, H)) of ``trunk`` (default:
        ``self.trunk``), pooled by ``self.pooling``. Dropout is left to each head (multihead draws one per head)."""
        trunk = trunk if trunk is not None else self.trunk
        return pooled_hidden(
            trunk, input_ids, attention_mask, token_type_ids, decoder=self.decoder, pooling=self.pooling
        )


MODEL_CLASSES: dict[str, type[RewardModelBase]] = {}  # ModelConfig.arch -> class, filled by @register_model


def register_model(name: str):
    """Class decorator: make ``name`` a valid ``ModelConfig.arch`` building this class."""

    def decorate(cls: type[RewardModelBase]) -> type[RewardModelBase]:
        if name in MODEL_CLASSES:
            raise ValueError(f"model arch {name!r} registered twice ({MODEL_CLASSES[name].__name__}, {cls.__name__})")
        cls.arch = name
        MODEL_CLASSES[name] = cls
        return cls

    return decorate


def model_class(arch: str) -> type[RewardModelBase]:
    """The class registered for ``arch``; an unknown name lists the known ones."""
    try:
        return MODEL_CLASSES[arch]
    except KeyError:
        known = ", ".join(sorted(MODEL_CLASSES))
        raise ValueError(f'model.arch: unknown architecture "{arch}" (known: {known})') from None
