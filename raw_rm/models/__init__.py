"""Reward model architectures, their registry and persistence (see docs/architecture.md, "Models").

model, tokenizer = build_model(ModelConfig(arch="concat", backbone="tiny-bert"))
out = model(**features)          # RewardOutput; features from raw_rm.data.batching.encode
save_model(model, tokenizer, "out/model")
model, tokenizer = load_model("out/model")
"""

from raw_rm.models.base import (
    MODEL_CLASSES,
    RewardMetadata,
    RewardModelBase,
    RewardOutput,
    TrunkRewardModel,
    model_class,
    register_model,
)
from raw_rm.models.concat import RewardModel
from raw_rm.models.cross_attention import CrossAttentionRewardModel
from raw_rm.models.hierarchical import HierarchicalRewardModel
from raw_rm.models.io import load_model, save_model
from raw_rm.models.multi_objective import MultiObjectiveRewardModel
from raw_rm.models.multihead import MultiHeadRewardModel
from raw_rm.models.predict import predict_reward
from raw_rm.models.registry import build_model
from raw_rm.models.separate import SeparateEncoderRewardModel

__all__ = [
    "MODEL_CLASSES",
    "CrossAttentionRewardModel",
    "HierarchicalRewardModel",
    "MultiHeadRewardModel",
    "MultiObjectiveRewardModel",
    "RewardMetadata",
    "RewardModel",
    "RewardModelBase",
    "RewardOutput",
    "SeparateEncoderRewardModel",
    "TrunkRewardModel",
    "build_model",
    "load_model",
    "model_class",
    "predict_reward",
    "register_model",
    "save_model",
]
