"""tune.space validation and conditional sampling: no Ray, no trial ever starts."""

from __future__ import annotations

import optuna
import pytest

from raw_rm.config import Config, ConfigError, load_config
from raw_rm.tune.space import DefineByRunSpace, ParamSpec, baseline_point, parse_space, trial_config

KNOWN_LOSSES = (
    "bt, margin, contrastive, focal, triplet, label_smoothing, kwise_adjacent, kwise_all_pairs, plackett_luce"
)


@pytest.fixture()
def base() -> Config:
    return load_config(None, ["train.lr=1.0e-4"])


def test_unknown_loss_name_fails_listing_the_known_ones(base: Config) -> None:
    space = {"loss.name": {"choice": ["bt", "hinge"]}, "train.lr": {"loguniform": [1.0e-5, 1.0e-3]}}
    with pytest.raises(ConfigError) as info:
        parse_space(space, base)
    assert str(info.value) == f'tune.space: loss.name: unknown loss "hinge"; valid: {KNOWN_LOSSES}'


def test_every_problem_is_reported_at_once_with_the_closest_path(base: Config) -> None:
    space = {
        "loss.contrastive_ta": {"loguniform": [0.05, 5]},
        "train.lr": {"loguniform": [0, 1.0e-3]},
        "train.weight_decay": {"normal": [0, 1]},
        "train.batch_size": {"choice": [8, "big"]},
        "train.epochs": 3,
    }
    with pytest.raises(ConfigError) as info:
        parse_space(space, base)
    assert str(info.value).splitlines() == [
        'tune.space: loss.contrastive_ta: unknown config path (did you mean "loss.contrastive_tau"?)',
        "tune.space: train.lr: loguniform expects low > 0, got 0",
        'tune.space: train.weight_decay: unknown distribution "normal"; valid: choice, grid, uniform, loguniform, '
        "randint (plus an optional when)",
        # only checked once the specs parse: the value errors come on a second pass
        'tune.space: train.epochs: expected a distribution spec such as {"loguniform": [0.05, 5]} or '
        '{"choice": [bt, focal]}, got 3',
    ]


def test_values_are_checked_against_the_config_rules(base: Config) -> None:
    with pytest.raises(ConfigError) as info:
        parse_space({"train.batch_size": {"choice": [8, "big"]}, "loss.contrastive_tau": {"uniform": [-1, 2]}}, base)
    assert str(info.value).splitlines() == [
        "tune.space: train.batch_size: value 'big' is not valid here: train.batch_size: expected an integer, got 'big'",
        "tune.space: loss.contrastive_tau: value -1 is not valid here: loss.contrastive_tau: expected > 0, got -1.0",
    ]


def test_group_loss_on_pairs_and_a_condition_on_a_loss_that_ignores_the_parameter(base: Config) -> None:
    space = {
        "loss.name": {"choice": ["bt", "focal", "plackett_luce"]},
        "loss.contrastive_tau": {"uniform": [0.1, 2], "when": {"loss.name": "focal"}},
    }
    with pytest.raises(ConfigError) as info:
        parse_space(space, base)
    assert str(info.value).splitlines() == [
        'tune.space: loss.name: loss "plackett_luce" is a ranking loss for k-wise groups (data.kind=groups); '
        "pairwise losses: bt, margin, contrastive, focal, triplet, label_smoothing",
        'tune.space: loss.contrastive_tau: when: loss "focal" does not read contrastive_tau (losses that do: contrastive)',
    ]
    with pytest.raises(ConfigError) as info:
        parse_space({**space, "loss.name": {"choice": ["bt", "focal"]}}, base)
    assert (
        str(info.value)
        == 'tune.space: loss.contrastive_tau: when: loss "focal" does not read contrastive_tau (losses that do: contrastive)'
    )


def test_loss_parameters_are_conditioned_on_the_losses_that_read_them(base: Config) -> None:
    space = {
        "loss.contrastive_tau": {"loguniform": [0.05, 5]},  # listed first: sampling order still puts loss.name first
        "loss.name": {"choice": ["bt", "contrastive", "focal"]},
        "loss.gamma": {"uniform": [0.5, 4]},
        "train.lr": {"loguniform": [1.0e-5, 1.0e-3]},
    }
    specs = parse_space(space, base)
    assert [s.path for s in specs] == ["loss.name", "train.lr", "loss.contrastive_tau", "loss.gamma"]
    assert specs[2] == ParamSpec("loss.contrastive_tau", "loguniform", (0.05, 5), (("loss.name", ("contrastive",)),))
    assert specs[3].when == (("loss.name", ("focal",)),)
    assert baseline_point(specs, base) == {
        "loss.name": "bt",
        "train.lr": 1.0e-4,
        "loss.contrastive_tau": None,
        "loss.gamma": None,
    }


@pytest.mark.parametrize(
    ("fixed", "asked"),
    [
        ({"loss.name": "bt", "train.lr": 2.0e-4}, {"loss.name", "train.lr"}),
        (
            {"loss.name": "contrastive", "train.lr": 2.0e-4, "loss.contrastive_tau": 0.3},
            {"loss.name", "train.lr", "loss.contrastive_tau"},
        ),
        ({"loss.name": "focal", "train.lr": 2.0e-4, "loss.gamma": 3.0}, {"loss.name", "train.lr", "loss.gamma"}),
    ],
)
def test_define_by_run_asks_optuna_only_for_the_active_parameters(base: Config, fixed: dict, asked: set) -> None:
    specs = parse_space(
        {
            "loss.name": {"choice": ["bt", "contrastive", "focal"]},
            "loss.contrastive_tau": {"loguniform": [0.05, 5]},
            "loss.gamma": {"uniform": [0.5, 4]},
            "train.lr": {"loguniform": [1.0e-5, 1.0e-3]},
        },
        base,
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(fixed)
    trial = study.ask()
    DefineByRunSpace(specs)(trial)
    assert set(trial.params) == asked
    assert trial.params == fixed


def test_randint_high_is_exclusive_for_optuna_too(base: Config) -> None:
    specs = parse_space({"train.batch_size": {"randint": [4, 6]}}, base)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        DefineByRunSpace(specs)(trial)
        seen.add(trial.params["train.batch_size"])
    assert seen == {4, 5}


def test_trial_config_skips_unsampled_parameters(base: Config) -> None:
    cfg = trial_config(base, {"loss.name": "contrastive", "loss.contrastive_tau": 0.25, "loss.gamma": None})
    assert (cfg.loss.name, cfg.loss.contrastive_tau, cfg.loss.gamma, cfg.train.lr) == ("contrastive", 0.25, 2.0, 1.0e-4)


def test_run_tune_rejects_an_unknown_loss_before_any_trial_starts(tmp_path) -> None:
    import sys

    from raw_rm.config import apply_overrides
    from raw_rm.tune.driver import run_tune

    cfg = apply_overrides(
        load_config(None, [f"train.output_dir={tmp_path}", "tune.name=bad"]),
        {"tune.space": {"loss.name": {"choice": ["bt", "hinge"]}}},
    )
    ray_was_imported = "ray" in sys.modules
    with pytest.raises(ConfigError) as info:
        run_tune(cfg)
    assert str(info.value) == f'tune.space: loss.name: unknown loss "hinge"; valid: {KNOWN_LOSSES}'
    assert not (tmp_path / "tune").exists()  # no experiment folder: nothing was started
    assert ray_was_imported or "ray" not in sys.modules  # validated before Ray is even imported


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tune.metric": "val_nll", "tune.mode": "max"}, "tune.metric=val_nll is better when lower: set tune.mode=min"),
        (
            {"tune.metric": "accuracy"},
            "tune.metric='accuracy': trials report validation metrics, e.g. val_accuracy, val_nll, val_ece, val_loss",
        ),
        ({"tune.resume": True, "tune.name": None}, "tune.resume=true needs tune.name: the experiment to continue"),
    ],
)
def test_run_tune_rejects_a_bad_selection_metric_or_resume(tmp_path, overrides: dict, message: str) -> None:
    from raw_rm.config import apply_overrides
    from raw_rm.tune.driver import run_tune

    cfg = load_config(None, [f"train.output_dir={tmp_path}", "tune.name=bad"])
    cfg = apply_overrides(cfg, {"tune.space": {"train.lr": {"loguniform": [1.0e-5, 1.0e-3]}}, **overrides})
    with pytest.raises(ConfigError) as info:
        run_tune(cfg)
    assert str(info.value) == message


def test_architecture_search_conditions_arch_parameters_on_the_architectures_that_read_them(base: Config) -> None:
    space = {
        "model.arch": {"choice": ["concat", "cross_attention", "separate"]},
        "model.cross_attention_layers": {"randint": [1, 3]},
        "model.fusion": {"choice": ["concat", "product"]},
        "model.pooling": {"choice": ["cls", "mean"]},
        "model.train_layers": {"choice": [None, 2]},
    }
    specs = {s.path: s for s in parse_space(space, base)}
    assert specs["model.cross_attention_layers"].when == (("model.arch", ("cross_attention",)),)
    assert specs["model.fusion"].when == (("model.arch", ("separate",)),)
    assert specs["model.pooling"].when == () and specs["model.train_layers"].when == ()
    point = baseline_point(list(specs.values()), base)
    assert point["model.arch"] == "concat" and point["model.cross_attention_layers"] is None


def test_an_architecture_parameter_without_its_architecture_fails_before_any_trial(base: Config) -> None:
    with pytest.raises(ConfigError) as info:
        parse_space({"model.cross_attention_layers": {"randint": [1, 3]}}, base)
    assert str(info.value) == (
        "tune.space: model.cross_attention_layers: only model.arch cross_attention reads it, but the base config has "
        "model.arch=concat and model.arch is not searched: search model.arch with cross_attention among its choices, "
        "or set model.arch=cross_attention"
    )
    with pytest.raises(ConfigError) as info:
        parse_space({"model.arch": {"choice": ["concat", "separate"]}, "model.num_heads": {"randint": [2, 6]}}, base)
    assert str(info.value) == (
        "tune.space: model.num_heads: none of the searched architectures ['concat', 'separate'] "
        "reads it (architectures that do: multihead)"
    )
    space = {
        "model.arch": {"choice": ["concat", "separate"]},
        "model.fusion": {"choice": ["concat", "product"], "when": {"model.arch": ["concat", "separate"]}},
    }
    with pytest.raises(ConfigError) as info:
        parse_space(space, base)
    assert str(info.value) == (
        "tune.space: model.fusion: when: model.arch 'concat' does not read it (architectures that do: separate)"
    )
