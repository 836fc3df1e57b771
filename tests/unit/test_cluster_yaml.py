"""cluster.yaml passes Ray's own cluster-launcher validation (the same steps `ray up` runs before any cloud call)."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


def _prepared(config: dict) -> dict:
    # `ray up` runs prepare_config (merge the provider's defaults.yaml) then validate_config (ray-schema.json
    # plus the node-type rules); neither touches the cloud. Imported here: unit tests import no Ray at collection.
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_is_valid_ray_cluster_config() -> None:
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    prepared = _prepared(config)
    assert prepared["head_node_type"] == "head"
    workers = prepared["available_node_types"]["gpu_worker"]
    assert workers["resources"]["GPU"] == 1
    assert (workers["min_workers"], workers["max_workers"]) == (0, 4)
    setup = "\n".join(prepared["setup_commands"])
    assert "download.pytorch.org/whl/cu" in setup  # a CUDA torch, not the CPU/PyPI default
    assert 'pip install -q -e "/home/ubuntu/raw_rm[scale]"' in setup  # peft for model.lora_rank
    big = prepared["available_node_types"]["gpu8_worker"]
    assert big["resources"]["GPU"] == 8 and big["max_workers"] * 8 >= 16  # scale_8b.yaml's 16 FSDP workers


def test_validation_rejects_a_broken_variant() -> None:
    # The check can fail: an unknown top-level key violates ray-schema.json ("additionalProperties": false).
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    config["max_wrokers"] = 3
    with pytest.raises(jsonschema.ValidationError, match="max_wrokers"):
        _prepared(config)


def test_validation_rejects_head_type_not_declared() -> None:
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    config["head_node_type"] = "gpu_head"
    with pytest.raises(ValueError, match="`head_node_type` must be one of `available_node_types`."):
        _prepared(config)
