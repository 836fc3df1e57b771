"""The one config loader: precedence, typed errors naming file and key, every shipped YAML loads."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from raw_rm.config import Config, ConfigError, apply_overrides, config_from_dict, load_config

REPO = Path(__file__).resolve().parents[2]


def test_precedence_defaults_yaml_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  name: focal\n  gamma: 3\ntrain:\n  lr: 0.001\n")
    cfg = load_config(path, ["train.lr=0.5", "loss.contrastive_tau=2"])
    assert cfg.loss.name == "focal"
    assert cfg.loss.gamma == 3.0 and isinstance(cfg.loss.gamma, float)
    assert cfg.train.lr == 0.5
    assert cfg.loss.contrastive_tau == 2.0
    assert cfg.train.batch_size == Config().train.batch_size


def test_all_problems_in_one_error_with_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("loss:\n  contrastive_ta: 0.5\ntrain:\n  lr: fast\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["model.arch=transformer"])
    text = str(info.value)
    assert f'{path}: loss.contrastive_ta: unknown key (did you mean "contrastive_tau"?)' in text
    assert f"{path}: train.lr: expected a number, got 'fast'" in text
    assert "model.arch: expected one of 'concat'" in text


def test_cross_field_rule_names_both_fields() -> None:
    with pytest.raises(ConfigError, match="model.aspect_weights has 2 values but model.aspects has 3"):
        load_config(None, ["model.aspect_weights=[1, 2]"])


def test_round_trip_through_dict_and_overrides() -> None:
    cfg = load_config(None, ["loss.name=contrastive", "loss.contrastive_tau=0.25"])
    again = config_from_dict(asdict(cfg))
    assert again == cfg
    moved = apply_overrides(cfg, {"loss.contrastive_tau": 4.0, "train.seed": 7})
    assert moved.loss.contrastive_tau == 4.0 and moved.train.seed == 7
    assert cfg.loss.contrastive_tau == 0.25  # the original is untouched


def test_override_without_equals_is_an_error() -> None:
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config(None, ["train.lr"])


def _shipped_yaml() -> list[Path]:
    # Recursive, unlike torchtune's own check that skipped subfolders.
    return sorted((REPO / "raw_rm" / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", _shipped_yaml(), ids=lambda p: p.name)
def test_every_shipped_training_config_loads(path: Path) -> None:
    from raw_rm.tune.space import check_space

    assert isinstance(load_config(path, checks=[check_space]), Config)


def test_exponent_without_dot_is_a_number_where_a_number_is_expected() -> None:
    # YAML 1.1 reads "1e-3" as a string; a float field accepts it, a string field keeps the text.
    cfg = load_config(None, ["train.lr=1e-3", "mlflow.experiment=1e-3"])
    assert cfg.train.lr == 0.001
    assert cfg.mlflow.experiment == "1e-3"


def test_the_tune_section_and_its_space_are_checked_by_the_same_loader(tmp_path: Path) -> None:
    from raw_rm.tune.space import check_space

    path = tmp_path / "tune.yaml"
    space = "  space:\n    loss.contrastive_ta: {loguniform: [0.05, 5]}\n    train.lr: {uniform: [0.1]}\n"

    def load_errors(text: str) -> list[str]:
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(path, checks=[check_space])
        return str(info.value).splitlines()

    assert load_errors("tune:\n  serch: optuna\n  num_samples: many\n" + space) == [
        f'{path}: tune.serch: unknown key (did you mean "searcher"?)',
        f"{path}: tune.num_samples: expected an integer, got 'many'",
    ]
    # with the section's own keys right, the space is checked too, naming the file and every bad path
    assert load_errors("tune:\n  searcher: optuna\n" + space) == [
        f'{path}: tune.space: loss.contrastive_ta: unknown config path (did you mean "loss.contrastive_tau"?)',
        f"{path}: tune.space: train.lr: uniform expects [low, high] numbers, got [0.1]",
    ]
    space = "tune.space={train.lr: {loguniform: [1.0e-5, 1.0e-3]}}"
    assert load_config(None, [space], checks=[check_space]).tune.space == {"train.lr": {"loguniform": [1.0e-5, 1.0e-3]}}


def test_a_renamed_key_is_refused_naming_its_new_name(tmp_path: Path) -> None:
    from raw_rm.tune.space import check_space

    path = tmp_path / "old.yaml"
    path.write_text("loss:\n  name: contrastive\n  temperature: 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: loss.temperature: renamed to loss.contrastive_tau (the contrastive loss's tau; the calibration "
        "temperature is fitted by raw-rm eval and stored in the model)"
    )
    with pytest.raises(ConfigError, match=r"^<defaults>: loss.temperature: renamed to loss.contrastive_tau \("):
        load_config(None, ["loss.temperature=0.5"])
    with pytest.raises(ConfigError, match=r"tune.space: loss.temperature: renamed to loss.contrastive_tau \("):
        load_config(None, ["tune.space={loss.temperature: {loguniform: [0.1, 1]}}"], checks=[check_space])
