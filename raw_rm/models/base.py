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
