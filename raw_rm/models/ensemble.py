"""An ensemble of saved reward models that loads, scores, saves and registers as ONE model.

On disk an ensemble is a folder::

    ensemble.json        format version, members (relative folder, training run id, seed, config summary)
                         and the ensemble's own RewardMetadata (an "aggregate" key older raw_rm wrote is ignored)
    member_0/ ...        each member a folder written by ``save_model`` (any arch, one shared tokenizer)

``raw_rm.models.load_model(folder)`` returns an :class:`EnsembleRewardModel` for such a folder, so everything that takes a
model folder (``RewardModelInference``, ``raw-rm score``/``eval``, the registry, Serve) takes an ensemble.

Scale: reward models trained with a Bradley-Terry loss are only defined up to a shift (and their scales differ
between runs), so members are compared on their own training statistics: member k's reward becomes
``z_k = (r_k − reward_mean_k) / reward_std_k``. ``forward`` returns ``members`` (N, K) = those z-scores (a
multi-head member contributes one column per head, each normalised with its model's statistics) and
``rewards`` (N,) = their mean. The ensemble's metadata (normalisation, temperature, reference histograms for
drift) describes that mean and lives in ``ensemble.json``; ``save_model`` on a loaded ensemble rewrites it.

    save_ensemble("runs/ens", ["runs/m0/model", "runs/m1/model"], {"members": [{"seed": 0}, {"seed": 1}]})
    model, tokenizer = load_model("runs/ens")      # EnsembleRewardModel
    out = model(**features)                        # out.rewards (N,), out.members (N, 2)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raw_rm.config import ModelConfig
from raw_rm.models.backbones import load_saved_tokenizer
from raw_rm.models.base import RewardMetadata, RewardModelBase, RewardOutput, model_class
from raw_rm.models.persistence import RAW_RM_FILE, RAW_RM_KEY, load_single_model, save_single_model

logger = logging.getLogger(__name__)

ENSEMBLE_FILE = "ensemble.json"
ENSEMBLE_FORMAT_VERSION = 1


def is_ensemble_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :func:`save_ensemble` (it holds ``ensemble.json``)."""
    return (Path(path) / ENSEMBLE_FILE).is_file()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A content id of what a tokenizer produces: class, vocabulary, special tokens and truncation/padding sides."""
    digest = hashlib.sha256()
    digest.update(type(tokenizer).__name__.encode())
    digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    specials = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    digest.update(json.dumps(specials).encode())
    digest.update(f"{tokenizer.padding_side}/{tokenizer.truncation_side}".encode())
    return digest.hexdigest()[:16]


class EnsembleRewardModel(RewardModelBase):
    """K loaded reward models scored as one: ``members`` (N, K) z-scores, ``rewards`` (N,) their mean.

    Args:
        members: the loaded member models; they must share ``input_kind`` (the features they take).
        metadata: the ensemble's own metadata (normalisation/temperature of the mean, drift references).
        member_info: one dict per member for ``ensemble.json`` (``dir``, ``run_id``, ``seed``, ``config``, ...).
        directory: the folder the ensemble was loaded from, if any.

    Raises:
        ValueError: no members, or members that take different features (naming both).
    """

    arch = "ensemble"  # not buildable from a ModelConfig: an ensemble is assembled from trained models
    is_ensemble = True

    def __init__(
        self,
        members: Sequence[RewardModelBase],
        *,
        metadata: RewardMetadata | None = None,
        member_info: Sequence[dict[str, Any]] | None = None,
        directory: str | Path | None = None,
    ) -> None:
        if not members:
            raise ValueError("EnsembleRewardModel: no members")
        kinds = {type(m).__name__ + f"({m.input_kind})": m.input_kind for m in members}
        if len(set(kinds.values())) > 1:
            raise ValueError(
                "EnsembleRewardModel: members take different inputs "
                f"({', '.join(kinds)}); every member must have the same input_kind"
            )
        first = members[0]
        super().__init__(
            ModelConfig(**{**first.model_cfg.__dict__}),
            metadata or RewardMetadata(base_model=first.metadata.base_model),
        )
        self.input_kind = first.input_kind  # instance attribute: the members' shared features
        self.members = nn.ModuleList(members)
        self.member_info = [dict(i) for i in member_info] if member_info is not None else [{} for _ in members]
        if len(self.member_info) != len(members):
            raise ValueError(f"member_info has {len(self.member_info)} entries for {len(members)} members")
        self.directory = Path(directory) if directory is not None else None
        for i, m in enumerate(members):
            std = float(m.metadata.reward_std or 1.0)
            if not (std > 0 and math.isfinite(std)):
                raise ValueError(f"member {i}: reward_std must be a finite number > 0, got {m.metadata.reward_std}")

    @property
    def num_members(self) -> int:
        """Columns of ``members`` (a multi-head member counts its heads)."""
        return sum(int(getattr(m, "num_members", 1)) for m in self.members)

    @property
    def backbone_config(self):
        return self.members[0].backbone_config

    def forward(self, **features: torch.Tensor) -> RewardOutput:
        """The members' features (all take the same) -> rewards (N,), members (N, K) in normalised units."""
        columns = []
        for m in self.members:
            out = m(**features)
            raw = out.members if out.members is not None else out.rewards[:, None]  # (N, heads)
            std = float(m.metadata.reward_std or 1.0)
            columns.append((raw - float(m.metadata.reward_mean)) / std)
        members = torch.cat(columns, dim=-1)  # (N, K)
        return RewardOutput(rewards=members.mean(-1), members=members)

    def record(self) -> dict[str, Any]:
        """The ``ensemble.json`` content (member folders as recorded in ``member_info``)."""
        return {
            "format_version": ENSEMBLE_FORMAT_VERSION,
            "members": self.member_info,
            "metadata": self.metadata.to_dict(),
        }


# ----------------------------------------------------------------------------------------- saving
def save_ensemble(
    directory: str | Path,
    member_dirs: Sequence[str | Path],
    info: dict[str, Any] | None = None,
    *,
    metadata: RewardMetadata | None = None,
) -> Path:
    """Write an ensemble folder: copy each member folder to ``directory/member_i`` and write ``ensemble.json``.

    Args:
        directory: the ensemble folder (created; an existing ``ensemble.json`` and ``member_*`` are replaced).
        member_dirs: folders written by ``save_model``. A folder already inside ``directory`` stays where it is.
        info: optional ``{"members": [one dict per member: run_id, seed, config, metrics, ...]}``.
        metadata: the ensemble's metadata (default: reward_mean 0, reward_std 1, temperature 1: the mean of
            normalised members, uncalibrated, no drift reference).

    Returns:
        ``directory`` as a Path.

    Raises:
        ValueError: no members, a member folder that is not a saved model, an ``info["members"]`` of the wrong
            length, or members that do not share a tokenizer / input kind (checked by loading them).
    """
    out = Path(directory)
    info = dict(info or {})
    if not member_dirs:
        raise ValueError(f"save_ensemble({out}): no member folders")
    member_meta = list(info.get("members") or [{} for _ in member_dirs])
    if len(member_meta) != len(member_dirs):
        raise ValueError(
            f"save_ensemble: info['members'] has {len(member_meta)} entries for {len(member_dirs)} member folders"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / ENSEMBLE_FILE).unlink(missing_ok=True)  # never leave an old record beside new members
    placed: list[str] = []
    for i, src in enumerate(member_dirs):
        src = Path(src)
        if not ((src / "raw_rm_model.json").is_file() or (src / "config.json").is_file()):
            raise ValueError(f"save_ensemble: member {i}: {src} is not a saved reward model folder")
        try:
            rel = src.resolve().relative_to(out.resolve())
            placed.append(str(rel))
            continue
        except ValueError:
            pass
        target = out / f"member_{i}"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(src, target)
        placed.append(target.name)
    members = [{**meta, "dir": rel} for meta, rel in zip(member_meta, placed, strict=True)]
    record = {
        "format_version": ENSEMBLE_FORMAT_VERSION,
        "members": members,
        "metadata": (metadata or RewardMetadata()).to_dict(),
    }
    facts = [_member_facts(out / m["dir"]) for m in members]  # validate now: shared tokenizer and input kind
    _check_members(out / ENSEMBLE_FILE, [m["dir"] for m in members], [f[0] for f in facts], [f[1] for f in facts])
    if metadata is None:
        record["metadata"]["base_model"] = facts[0][2]
    json.dumps(record)  # fail before writing if anything is not JSON
    (out / ENSEMBLE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    logger.info("saved an ensemble of %d members to %s", len(members), out)
    return out


def _member_facts(member_dir: Path) -> tuple[str, str, str]:
    """(input_kind, tokenizer fingerprint, base_model) of a saved model folder, without loading its weights."""
    raw = member_dir / RAW_RM_FILE
    if raw.is_file():
        record = json.loads(raw.read_text())
    else:
        record = json.loads((member_dir / "config.json").read_text()).get(RAW_RM_KEY) or {
            "arch": "concat",
            "metadata": {},
        }
    kind = model_class(record["arch"]).input_kind
    tokenizer = load_saved_tokenizer(member_dir)
    return kind, tokenizer_fingerprint(tokenizer), str(record.get("metadata", {}).get("base_model", ""))


def _check_members(source: Path, names: Sequence[str], kinds: Sequence[str], prints: Sequence[str]) -> None:
    if len(set(kinds)) > 1:
        detail = ", ".join(f"{n}={k}" for n, k in zip(names, kinds, strict=True))
        raise ValueError(
            f"{source}: members take different inputs ({detail}); every member must have the same input_kind"
        )
    if len(set(prints)) > 1:
        detail = ", ".join(f"{n}={p}" for n, p in zip(names, prints, strict=True))
        raise ValueError(
            f"{source}: members use different tokenizers ({detail}); an ensemble needs one shared tokenizer"
        )


def save_ensemble_model(model: EnsembleRewardModel, tokenizer: Any, directory: str | Path) -> Path:
    """``save_model`` for an ensemble: into its own folder only ``ensemble.json`` is rewritten (metadata, e.g. a
    fitted temperature); into another folder every member is saved and the record written."""
    out = Path(directory)
    if model.directory is not None and out.resolve() == model.directory.resolve():
        (out / ENSEMBLE_FILE).write_text(json.dumps(model.record(), indent=2) + "\n")
        return out
    out.mkdir(parents=True, exist_ok=True)
    info = []
    for i, (member, meta) in enumerate(zip(model.members, model.member_info, strict=True)):
        save_single_model(member, tokenizer, out / f"member_{i}")
        info.append({**meta, "dir": f"member_{i}"})
    model.member_info = info
    model.directory = out
    (out / ENSEMBLE_FILE).write_text(json.dumps(model.record(), indent=2) + "\n")
    tokenizer.save_pretrained(out)  # convenient for tools that look for a tokenizer beside the model
    return out


# ---------------------------------------------------------------------------------------- loading
def load_ensemble(directory: str | Path) -> tuple[EnsembleRewardModel, Any]:
    """Load an ensemble folder in evaluation mode with the members' (shared) tokenizer.

    Raises:
        FileNotFoundError: no ``ensemble.json``, or a member folder it names is missing.
        ValueError: a malformed record (file and key named), or members whose tokenizers differ.
    """
    path = Path(directory)
    source = path / ENSEMBLE_FILE
    if not source.is_file():
        raise FileNotFoundError(f"{path}: not an ensemble folder (no {ENSEMBLE_FILE})")
    try:
        record = json.loads(source.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: not valid JSON: {exc}") from exc
    missing = [k for k in ("format_version", "members", "metadata") if k not in record]
    if missing:
        raise ValueError(f"{source}: missing key(s) {missing}")
    if record["format_version"] != ENSEMBLE_FORMAT_VERSION:
        raise ValueError(
            f"{source}: format_version {record['format_version']!r} is not supported (this raw_rm reads {ENSEMBLE_FORMAT_VERSION})"
        )
    if not isinstance(record["members"], list) or not record["members"]:
        raise ValueError(f"{source}: members: expected a non-empty list")
    models, tokenizers = [], []
    for i, member in enumerate(record["members"]):
        if not isinstance(member, dict) or not isinstance(member.get("dir"), str):
            raise ValueError(f'{source}: members[{i}]: expected a mapping with a string "dir"')
        member_dir = path / member["dir"]
        if not member_dir.is_dir():
            raise FileNotFoundError(f"{source}: members[{i}]: folder {member_dir} does not exist")
        model, tokenizer = load_single_model(member_dir)
        models.append(model)
        tokenizers.append(tokenizer)
    _check_members(
        source,
        [m["dir"] for m in record["members"]],
        [m.input_kind for m in models],
        [tokenizer_fingerprint(t) for t in tokenizers],
    )
    metadata = RewardMetadata.from_dict(record["metadata"], source=f"{source}: metadata")
    model = EnsembleRewardModel(models, metadata=metadata, member_info=record["members"], directory=path)
    model.eval()
    return model, tokenizers[0]
