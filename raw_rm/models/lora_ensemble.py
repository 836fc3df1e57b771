"""An ensemble of K LoRA members over one frozen base, stored and served with one copy of the base.

K members trained with ``model.lora_rank=R`` from the same backbone differ from it only by a rank-R update of each
adapted Linear weight and by their reward heads. :func:`save_lora_ensemble` takes their saved (merged) folders and
the backbone, recovers each member's update as factors ``B @ A`` (a truncated SVD of ``W_member - W_base``; exact up
to float rounding, since the update has rank R) and writes::

    lora_ensemble.json      format version, members (rank, source folder, RewardMetadata), the ensemble's metadata
    base/                   the base model (save_model layout; its head is unused)
    adapters.safetensors    member_<k>.<module>.lora_A / .lora_B per adapted Linear, member_<k>.head.weight/.bias

so K members cost one base plus K x (adapters + head). :func:`load_lora_ensemble` injects the K adapter sets into
the one base (peft adapters ``member_<k>``) and returns an :class:`~raw_rm.models.ensemble.EnsembleRewardModel`
whose members are :class:`LoraMember` views of that base: ``members`` (N, K) z-scores and ``rewards`` their mean,
as for any ensemble, each member scoring as its own saved folder does (tested to 1e-5).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from raw_rm.config import ModelConfig
from raw_rm.models.backbones import load_backbone, pooled_hidden
from raw_rm.models.base import RewardMetadata, RewardModelBase, RewardOutput
from raw_rm.models.concat import RewardModel
from raw_rm.models.ensemble import EnsembleRewardModel
from raw_rm.models.levers import lora_layers, lora_target_linears
from raw_rm.models.persistence import load_single_model, save_single_model

logger = logging.getLogger(__name__)

LORA_ENSEMBLE_FILE = "lora_ensemble.json"
ADAPTERS_FILE = "adapters.safetensors"
FORMAT_VERSION = 1
RESIDUAL_TOLERANCE = 1e-5  # largest |W_member - W_base - B @ A| accepted as float rounding of a rank-R update


def is_lora_ensemble_dir(path: str | Path) -> bool:
    return (Path(path) / LORA_ENSEMBLE_FILE).is_file()


class LoraMember(RewardModelBase):
    """Member ``name`` of a LoRA ensemble: the shared adapted ``base`` with adapter ``name`` active, and its head."""

    input_kind = "concat"

    def __init__(self, base: RewardModel, name: str, head: nn.Linear, metadata: RewardMetadata) -> None:
        super().__init__(base.model_cfg, metadata)
        self.base = base  # shared by every member: registered in each, stored once (parameters() deduplicates)
        self.name = name
        self.head = head

    @property
    def backbone_config(self):
        return self.base.backbone_config

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> RewardOutput:
        for layer in lora_layers(self.base).values():
            layer.set_adapter(self.name)
        trunk = self.base.hf.base_model
        _, pooled = pooled_hidden(
            trunk, input_ids, attention_mask, token_type_ids, decoder=self.base.decoder, pooling=self.base.pooling
        )  # (N, H)
        return RewardOutput(rewards=self.head(pooled)[:, 0])


def _low_rank(delta: torch.Tensor, rank: int, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (rank, in), B (out, rank)) with B @ A = ``delta`` (out, in), or a ValueError naming ``where``."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    b, a = u[:, :rank] * s[:rank], vh[:rank]
    residual = float((delta.double() - b @ a).abs().max())
    if residual > RESIDUAL_TOLERANCE:
        raise ValueError(
            f"{where}: differs from the base by more than a rank-{rank} update (residual {residual:.2e}):"
            " not a LoRA member of this base"
        )
    return a.float().contiguous(), b.float().contiguous()


def save_lora_ensemble(
    directory: str | Path, member_dirs: list[str | Path], *, backbone: str, metadata: RewardMetadata | None = None
) -> Path:
    """Write the LoRA ensemble of ``member_dirs`` (saved LoRA members of ``backbone``) to ``directory``.

    Raises:
        ValueError: a member that is not a LoRA concat model with a Hugging Face head, or whose weights differ from
            ``backbone``'s by more than its adapters (naming the member and the tensor).
    """
    out = Path(directory)
    base_cfg = ModelConfig(arch="concat", backbone=backbone, dropout=0.0)
    hf, tokenizer = load_backbone(backbone, with_head=True, dropout=0.0)
    base = RewardModel(base_cfg, hf, RewardMetadata(base_model=backbone))
    base_state = base.hf.base_model.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    members = []
    for k, member_dir in enumerate(member_dirs):
        member, _ = load_single_model(member_dir)
        cfg = member.model_cfg
        if not isinstance(member, RewardModel) or member.hf is None or not member.decoder or not cfg.lora_rank:
            raise ValueError(
                f"{member_dir}: member {k} is not a LoRA concat decoder (model.arch=concat, "
                "model.lora_rank > 0, model.pooling=auto)"
            )
        targets = lora_target_linears(member.hf.base_model, cfg.lora_targets)
        for key, value in member.hf.base_model.state_dict().items():
            module = key.rsplit(".", 1)[0]
            delta = value - base_state[key]
            if key.endswith(".weight") and module in targets:
                a, b = _low_rank(delta, cfg.lora_rank, f"{member_dir}: {key}")
                tensors[f"member_{k}.{module}.lora_A"], tensors[f"member_{k}.{module}.lora_B"] = a, b
            elif delta.abs().max() > 0:
                raise ValueError(
                    f"{member_dir}: {key} differs from {backbone}'s and is not a LoRA target: "
                    "not a LoRA member of this base"
                )
        tensors[f"member_{k}.head.weight"] = member.hf.score.weight.detach().clone()
        members.append(
            {
                "source": str(member_dir),
                "rank": cfg.lora_rank,
                "targets": sorted(targets),
                "metadata": member.metadata.to_dict(),
            }
        )
    out.mkdir(parents=True, exist_ok=True)
    save_single_model(base, tokenizer, out / "base")
    safetensors.torch.save_file(tensors, str(out / ADAPTERS_FILE))
    record = {
        "format_version": FORMAT_VERSION,
        "backbone": backbone,
        "members": members,
        "metadata": (metadata or RewardMetadata(base_model=backbone)).to_dict(),
    }
    (out / LORA_ENSEMBLE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    logger.info("saved a LoRA ensemble of %d members over one %s base to %s", len(members), backbone, out)
    return out


def load_lora_ensemble(directory: str | Path) -> tuple[EnsembleRewardModel, Any]:
    """Load a :func:`save_lora_ensemble` folder: one base, K adapter sets, an ``EnsembleRewardModel`` of views."""
    from peft import LoraConfig, inject_adapter_in_model

    path = Path(directory)
    record = json.loads((path / LORA_ENSEMBLE_FILE).read_text())
    if record.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path / LORA_ENSEMBLE_FILE}: format_version {record.get('format_version')!r} is not "
            f"supported (this raw_rm reads {FORMAT_VERSION})"
        )
    base, tokenizer = load_single_model(path / "base")
    tensors = safetensors.torch.load_file(str(path / ADAPTERS_FILE))
    trunk = base.hf.base_model
    views = []
    for k, info in enumerate(record["members"]):
        name = f"member_{k}"
        config = LoraConfig(r=info["rank"], lora_alpha=info["rank"], target_modules=info["targets"], bias="none")
        inject_adapter_in_model(config, trunk, adapter_name=name)  # scale alpha / rank = 1: B @ A is the update
        layers = lora_layers(trunk)
        with torch.no_grad():
            for module in info["targets"]:
                layers[module].lora_A[name].weight.copy_(tensors[f"{name}.{module}.lora_A"])
                layers[module].lora_B[name].weight.copy_(tensors[f"{name}.{module}.lora_B"])
        head = nn.Linear(base.hf.score.in_features, 1, bias=False)
        head.weight.data.copy_(tensors[f"{name}.head.weight"])
        member_metadata = RewardMetadata.from_dict(info["metadata"], source=f"{path / LORA_ENSEMBLE_FILE}: {name}")
        views.append(LoraMember(base, name, head, member_metadata))
    metadata = RewardMetadata.from_dict(record["metadata"], source=f"{path / LORA_ENSEMBLE_FILE}: metadata")
    info = [{"dir": m["source"], "rank": m["rank"]} for m in record["members"]]
    return EnsembleRewardModel(views, metadata=metadata, member_info=info, directory=path).eval(), tokenizer


def is_lora_ensemble(model: nn.Module) -> bool:
    return isinstance(model, EnsembleRewardModel) and all(isinstance(m, LoraMember) for m in model.members)


def save_lora_ensemble_model(model: EnsembleRewardModel, directory: str | Path) -> Path:
    """``save_model`` for a loaded LoRA ensemble: its folder (copied first if ``directory`` is another one) with
    ``lora_ensemble.json`` carrying the model's current metadata (e.g. a fitted temperature)."""
    out = Path(directory)
    if model.directory is None:
        raise ValueError("save_model: a LoRA ensemble is written by save_lora_ensemble from its members' folders")
    if out.resolve() != model.directory.resolve():
        shutil.copytree(model.directory, out, dirs_exist_ok=True)
    record = json.loads((out / LORA_ENSEMBLE_FILE).read_text())
    record["metadata"] = model.metadata.to_dict()
    (out / LORA_ENSEMBLE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return out
