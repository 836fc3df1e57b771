"""Pure helpers of the reward server: validation, prompt splitting, aggregation, auth policy (no Ray, no HTTP)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from raw_rm.config import ConfigError, ServeConfig, config_from_dict
from raw_rm.serve import scoring, security
from raw_rm.serve.scoring import MemberInfo, RequestError

CFG = ServeConfig(max_items=4, max_text_chars=20)


def _error(fn, body, cfg=CFG) -> RequestError:
    with pytest.raises(RequestError) as info:
        fn(body, cfg)
    return info.value


# ----------------------------------------------------------------------------------- splitting
@pytest.mark.parametrize(
    ("query", "prompt", "expected"),
    [
        ("Q: hi A: yo", "Q: hi A:", ("Q: hi A:", " yo", "prefix")),
        ("<s>Q: hi A: yo</s>", "Q: hi A:", ("<s>Q: hi A:", " yo</s>", "contains")),
        ("Q: hi A: Q: hi A:", "Q: hi A:", ("Q: hi A:", " Q: hi A:", "prefix")),
        ("[CLS] Q: hi A: Q: hi A:", "Q: hi A:", ("[CLS] Q: hi A:", " Q: hi A:", "contains")),
        ("Q: hello A:  fine", "Q: hello A:\n", ("Q: hello A:", "  fine", "common_prefix")),
        (
            "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d",
            "zzz",
            ("\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:", "d", "hh_marker"),
        ),
        ("\n\nHuman: a\n\nAssistant:  b", "", ("\n\nHuman: a\n\nAssistant:", "b", "hh_marker")),
        ("just text", "other", ("", "just text", "whole")),
        ("just text", "", ("", "just text", "whole")),
        ("", "", ("", "", "whole")),
    ],
)
def test_split_query_methods(query: str, prompt: str, expected: tuple[str, str, str]) -> None:
    assert scoring.split_query(query, prompt) == expected


def test_split_query_short_common_prefix_is_not_trusted() -> None:
    # "Q: x" shares only "Q: " (3 of 9 characters) with the prompt: fall through to the whole query.
    assert scoring.split_query("Q: xyz", "Q: abcdef") == ("", "Q: xyz", "whole")


@given(st.text(max_size=40), st.text(max_size=20))
def test_split_query_pieces_rebuild_the_query(query: str, prompt: str) -> None:
    head, tail, method = scoring.split_query(query, prompt)
    assert method in ("prefix", "contains", "common_prefix", "hh_marker", "whole")
    if method == "hh_marker":  # the training split drops the whitespace between the tag and the response
        assert query.startswith(head) and query[len(head) :].lstrip() == tail
    else:
        assert head + tail == query


# ---------------------------------------------------------------------------------- /get_reward
def test_get_reward_splits_and_accepts_any_label_types() -> None:
    body = {"query": ["P1 R1", "xx P2 R2", "R3"], "prompts": ["P1", "P2", None], "labels": ["", 3, {"a": [1]}]}
    items = scoring.parse_get_reward(body, CFG)
    assert items.prompts == ["P1", "xx P2", ""]
    assert items.responses == [" R1", " R2", "R3"]
    assert dict(items.split_methods) == {"prefix": 1, "contains": 1, "whole": 1}
    assert items.clipped == [False, False, False]


def test_get_reward_prompts_and_labels_are_optional_and_extra_keys_ignored() -> None:
    items = scoring.parse_get_reward({"query": ["a b"], "something_new": 1}, CFG)
    assert (items.prompts, items.responses) == ([""], ["a b"])


def test_get_reward_empty_lists_are_valid() -> None:
    items = scoring.parse_get_reward({"query": [], "prompts": [], "labels": []}, CFG)
    assert len(items) == 0


def test_get_reward_overlong_text_keeps_its_end_instead_of_refusing() -> None:
    query = "P" * 5 + "0123456789" * 3  # 35 characters, response part 30 > max_text_chars 20
    items = scoring.parse_get_reward({"query": [query], "prompts": ["PPPPP"]}, CFG)
    assert items.responses == ["0123456789" * 2]
    assert items.prompts == ["PPPPP"]
    assert (items.n_clipped, items.clipped) == (1, [True])


def test_unpaired_surrogates_are_repaired_for_get_reward_and_refused_elsewhere() -> None:
    items = scoring.parse_get_reward({"query": ["ok \ud800 \U0001f600"], "prompts": ["ok"]}, CFG)
    assert items.responses == [" \ufffd \U0001f600"]
    err = _error(scoring.parse_score, {"items": [{"response": "x\udfff"}]})
    assert str(err) == "items[0].response: contains an unpaired surrogate (\\ud800-\\udfff): not valid Unicode"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([1], "body: expected a JSON object, got list"),
        ({}, "query: missing required field"),
        ({"query": "text"}, "query: expected a list, got string"),
        ({"query": ["a", 1]}, "query[1]: expected a string, got integer"),
        ({"query": ["a"], "prompts": ["a", "b"]}, "prompts: expected 1 items (one per query), got 2"),
        ({"query": ["a"], "prompts": "a"}, "prompts: expected a list, got string"),
        ({"query": ["a"], "prompts": [3]}, "prompts[0]: expected a string or null, got integer"),
        ({"query": ["a"], "labels": [1, 2]}, "labels: expected 1 items (one per query), got 2"),
        ({"query": ["a"] * 5}, "query: too many items: 5 > max_items 4"),
    ],
)
def test_get_reward_errors_name_the_field(body, message: str) -> None:
    err = _error(scoring.parse_get_reward, body)
    assert str(err) == message
    assert err.to_json() == {"error": message, "field": message.split(":")[0]}


# ------------------------------------------------------------------------- /score /compare /rank
def test_score_compare_rank_parse() -> None:
    items = scoring.parse_score({"items": [{"prompt": "p", "response": "r"}, {"response": "s"}]}, CFG)
    assert (items.prompts, items.responses) == (["p", ""], ["r", "s"])
    a, b = scoring.parse_compare({"pairs": [{"prompt": "p", "response_a": "x", "response_b": "y"}]}, CFG)
    assert (a.prompts, a.responses, b.prompts, b.responses) == (["p"], ["x"], ["p"], ["y"])
    ranked = scoring.parse_rank({"prompt": "p", "responses": ["x", "y", "z"]}, CFG)
    assert (ranked.prompts, ranked.responses) == (["p"] * 3, ["x", "y", "z"])


@pytest.mark.parametrize(
    ("fn", "body", "message", "status"),
    [
        (scoring.parse_score, {"itemz": []}, 'itemz: unknown field (did you mean "items"?)', 422),
        (scoring.parse_score, {"items": []}, "items: expected at least 1 item(s), got 0", 422),
        (scoring.parse_score, {"items": [{"prompt": "p"}]}, "items[0].response: missing required field", 422),
        (scoring.parse_score, {"items": [{"response": "  "}]}, "items[0].response: must not be empty", 422),
        (
            scoring.parse_score,
            {"items": [{"response": "x" * 21}]},
            "items[0].response: too long: 21 characters > max_text_chars 20",
            413,
        ),
        (
            scoring.parse_score,
            {"items": [{"response": "r", "respons": "r"}]},
            'items[0].respons: unknown field (did you mean "response"?)',
            422,
        ),
        (scoring.parse_score, {"items": ["r"]}, "items[0]: expected a JSON object, got string", 422),
        (scoring.parse_score, {"items": [{"response": "r"}] * 5}, "items: too many items: 5 > max_items 4", 413),
        (scoring.parse_compare, {"pairs": [{"response_a": "x"}]}, "pairs[0].response_b: missing required field", 422),
        (
            scoring.parse_compare,
            {"pairs": [{"response_a": "x", "response_b": 2}]},
            "pairs[0].response_b: expected a string, got integer",
            422,
        ),
        (scoring.parse_rank, {"responses": ["x"]}, "prompt: missing required field", 422),
        (scoring.parse_rank, {"prompt": None, "responses": ["x"]}, "prompt: expected a string, got null", 422),
        (scoring.parse_rank, {"prompt": "p", "responses": ["x", ""]}, "responses[1]: must not be empty", 422),
    ],
)
def test_strict_endpoints_refuse_with_field(fn, body, message: str, status: int) -> None:
    err = _error(fn, body)
    assert (str(err), err.status) == (message, status)


# ---------------------------------------------------------------------------------- aggregation
def test_normalise_uses_each_models_own_training_stats() -> None:
    infos = [
        MemberInfo("a", heads=1, reward_mean=1.0, reward_std=2.0),
        MemberInfo("b", heads=2, reward_mean=-1.0, reward_std=0.5),
    ]
    raw = torch.tensor([[3.0, 0.0, -1.5]], dtype=torch.float64)
    out = scoring.normalise_members(raw, infos, normalize=True)
    assert out.tolist() == [[1.0, 2.0, -1.0]]
    assert scoring.normalise_members(raw, infos, normalize=False).tolist() == raw.tolist()


def test_ensemble_folder_members_are_already_normalised() -> None:
    infos = [
        MemberInfo("ens", heads=2, reward_mean=3.0, reward_std=0.5, members_normalised=True),
        MemberInfo("b", 1, 1.0, 2.0),
    ]
    out = scoring.normalise_members(torch.tensor([[0.2, -0.4, 5.0]], dtype=torch.float64), infos, normalize=True)
    assert out.tolist() == [[0.2, -0.4, 2.0]]


def test_untrained_model_with_zero_std_is_only_centred() -> None:
    out = scoring.normalise_members(
        torch.tensor([[3.0]]), [MemberInfo("a", 1, reward_mean=1.0, reward_std=0.0)], normalize=True
    )
    assert out.tolist() == [[2.0]]


@pytest.mark.parametrize(
    ("reward", "expected"), [("mean", 2.0), ("min", 1.0), ("lcb", 2.0 - 0.5), ("mean_minus_lambda_var", 2.0 - 3.0)]
)
def test_aggregates_and_the_configured_reward(reward: str, expected: float) -> None:
    cfg = ServeConfig(reward=reward, lam=3.0, k=0.5)
    agg = scoring.aggregate_scores(torch.tensor([[1.0, 3.0]], dtype=torch.float64), cfg)
    assert {k: float(v[0]) for k, v in agg.items() if k != "reward"} == {
        "mean": 2.0,
        "std": 1.0,
        "min": 1.0,
        "mean_minus_lambda_var": -1.0,
        "lcb": 1.5,
    }
    assert float(agg["reward"][0]) == expected


def test_single_member_has_zero_std_and_empty_input_gives_empty_lists() -> None:
    agg = scoring.aggregate_scores(torch.tensor([[0.7]], dtype=torch.float64), ServeConfig(reward="lcb"))
    assert (float(agg["std"][0]), float(agg["reward"][0])) == (0.0, 0.7)
    empty = scoring.aggregate_scores(torch.zeros(0, 3), ServeConfig())
    body = scoring.get_reward_response(empty, scoring.ScoreItems([], []))
    assert body == {
        "rewards": [],
        "scores": [],
        "extra_logs": {
            "reward_mean": [],
            "reward_std": [],
            "reward_min": [],
            "reward_lcb": [],
            "reward_mean_minus_lambda_var": [],
            "reward_truncated": [],
        },
    }


def test_pair_probability_uses_each_models_temperature_on_raw_rewards() -> None:
    infos = [MemberInfo("a", 1, temperature=2.0), MemberInfo("b", 1, reward_mean=100.0, temperature=1.0)]
    a = torch.tensor([[2.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    out = scoring.pair_probabilities(a, b, infos)
    sig1 = 1 / (1 + math.exp(-1.0))
    assert out["members"][0].tolist() == pytest.approx([sig1, sig1])
    assert float(out["prob"][0]) == pytest.approx(sig1)  # sigmoid(mean(2/2, 1/1))
    assert float(out["prob_std"][0]) == pytest.approx(0.0)
    assert float(out["vote_split"][0]) == 0.0  # both members prefer a
    body = scoring.compare_response(*(scoring.aggregate_scores(x, ServeConfig()) for x in (a, b)), out)
    assert body["results"][0]["vote_split"] == 0.0 and body["results"][0]["prob_std"] == pytest.approx(0.0)


def test_response_bodies() -> None:
    cfg = ServeConfig(reward="min")
    raw = torch.tensor([[1.0, 3.0], [5.0, 5.0]], dtype=torch.float64)
    agg = scoring.aggregate_scores(raw, cfg)
    items = scoring.ScoreItems(["p", "p"], ["r", "s"], clipped=[False, True])
    body = scoring.get_reward_response(agg, items)
    assert body["rewards"] == [1.0, 5.0] and body["scores"] == [1.0, 5.0]
    assert body["extra_logs"]["reward_std"] == [1.0, 0.0]
    assert body["extra_logs"]["reward_truncated"] == [0.0, 1.0]
    scored = scoring.score_response(agg, raw, raw, cfg)
    assert scored["reward_aggregate"] == "min"
    assert scored["results"][0] == {
        "reward": 1.0,
        "mean": 2.0,
        "std": 1.0,
        "min": 1.0,
        "mean_minus_lambda_var": 1.0,
        "lcb": 1.0,
        "members": [1.0, 3.0],
        "raw_members": [1.0, 3.0],
    }
    ranked = scoring.rank_response(scoring.aggregate_scores(torch.tensor([[1.0], [3.0], [3.0], [2.0]]), cfg), cfg)
    assert ranked["order"] == [1, 2, 3, 0]


# ------------------------------------------------------------------------------------ config
def test_serve_config_validates_fields() -> None:
    with pytest.raises(ConfigError, match="max_batch_size: expected >= 1, got 0"):
        config_from_dict({"max_batch_size": 0}, root=ServeConfig)
    with pytest.raises(ConfigError, match="reward: expected one of"):
        config_from_dict({"reward": "median"}, root=ServeConfig)
    with pytest.raises(ConfigError, match="device: cuda needs member_num_gpus > 0"):
        config_from_dict({"device": "cuda"}, root=ServeConfig)
    with pytest.raises(ConfigError, match="ingress_max_concurrent_batches: expected >= 0, got -1"):
        config_from_dict({"ingress_max_concurrent_batches": -1}, root=ServeConfig)
    with pytest.raises(ConfigError, match="max_concurrent_batches: expected >= 1, got 0"):
        config_from_dict({"max_concurrent_batches": 0}, root=ServeConfig)
    gpu = config_from_dict(
        {"device": "cuda", "member_num_gpus": 0.25, "ingress_max_concurrent_batches": 0}, root=ServeConfig
    )
    assert (gpu.device, gpu.member_num_gpus, gpu.ingress_max_concurrent_batches) == ("cuda", 0.25, 0)


# ---------------------------------------------------------------------------------- security
@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert security.is_loopback(host) is loopback


def test_non_loopback_without_key_refuses_to_start() -> None:
    with pytest.raises(security.ServeSecurityError) as info:
        security.check_bind_security("0.0.0.0", None, allow_unauthenticated_network=False)
    assert str(info.value).startswith("host '0.0.0.0' is not a loopback address and no API key is configured")
    assert security.check_bind_security("0.0.0.0", "k" * 20, allow_unauthenticated_network=False) == "key"
    assert security.check_bind_security("127.0.0.1", None, allow_unauthenticated_network=False) == "loopback"
    assert security.check_bind_security("127.0.0.1", "k", allow_unauthenticated_network=False) == "key"


def test_unauthenticated_opt_out_is_logged_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="raw_rm.serve.security"):
        mode = security.check_bind_security("10.0.0.5", None, allow_unauthenticated_network=True)
    assert mode == "unauthenticated"
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert caplog.records[0].getMessage().startswith("SERVING WITHOUT AUTHENTICATION on 10.0.0.5")


def test_resolve_api_key_env_then_file(tmp_path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("file-key\nignored\n")
    cfg = ServeConfig(api_key_file=str(key_file))
    assert security.resolve_api_key(cfg, {"RAW_RM_API_KEY": "env-key"}) == "env-key"
    assert security.resolve_api_key(cfg, {}) == "file-key"
    assert security.resolve_api_key(ServeConfig(), {}) is None
    key_file.write_text("\n")
    with pytest.raises(security.ServeSecurityError, match="is empty; put the key on its first line"):
        security.resolve_api_key(cfg, {})
    with pytest.raises(security.ServeSecurityError, match="api_key_file: cannot read"):
        security.resolve_api_key(ServeConfig(api_key_file=str(tmp_path / "absent")), {})


def test_key_extraction_and_constant_time_match() -> None:
    assert security.split_path_key("/k/secret/get_reward") == ("secret", "/get_reward")
    assert security.split_path_key("/k/secret") == ("secret", "/")
    assert security.split_path_key("/get_reward") == (None, "/get_reward")
    assert security.header_key({"authorization": "Bearer abc"}) == "abc"
    assert security.header_key({"authorization": "Basic abc", "x-api-key": "xyz"}) == "xyz"
    assert security.header_key({}) is None
    assert security.key_matches("abc", "abc") is True
    assert security.key_matches("abd", "abc") is False
    assert security.key_matches(None, "abc") is False
    assert security.key_matches("ключ", "ключ") is True


# ---------------------------------------------------------------------------- serve config files
REPO = Path(__file__).resolve().parents[2]


def _serve_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    return path


def test_serve_config_from_a_serve_config_file(tmp_path: Path) -> None:
    path = _serve_yaml(
        tmp_path,
        "http_options: {host: 127.0.0.1, port: 8123}\n"
        "applications:\n"
        "  - {name: other, import_path: some.module:app}\n"
        "  - name: rm\n    route_prefix: /rm\n    import_path: raw_rm.serve.app:build_app\n"
        "    args: {models: [a, b], reward: lcb}\n",
    )
    cfg = scoring.load_serve_config(path, ["k=2"])
    assert (cfg.models, cfg.reward, cfg.k, cfg.port, cfg.route_prefix, cfg.app_name) == (
        ["a", "b"],
        "lcb",
        2.0,
        8123,
        "/rm",
        "rm",
    )


def test_serve_config_file_errors_name_file_and_key(tmp_path: Path) -> None:
    path = _serve_yaml(
        tmp_path,
        "http_options: {host: 0.0.0.0}\napplications:\n  - import_path: raw_rm.serve.app:build_app\n    args: {host: 127.0.0.1}\n",
    )
    with pytest.raises(ConfigError) as info:
        scoring.load_serve_config(path)
    assert str(info.value) == (
        f"{path}: applications[0].args.host is '127.0.0.1' but http_options.host is '0.0.0.0': make them equal"
    )
    path = _serve_yaml(
        tmp_path, "applications:\n  - import_path: raw_rm.serve.app:build_app\n    args: {modles: [a]}\n"
    )
    with pytest.raises(ConfigError, match=r'applications\[0\]\.args: modles: unknown key \(did you mean "models"\?\)'):
        scoring.load_serve_config(path)
    path = _serve_yaml(tmp_path, "applications:\n  - import_path: x:y\n")
    with pytest.raises(ConfigError, match="no application with import_path raw_rm.serve.app:build_app"):
        scoring.load_serve_config(path)


def test_serve_run_command_line_args_arrive_as_strings_and_are_parsed() -> None:
    cfg = scoring.serve_config_from_args(
        {"models": '["a", "b"]', "port": "9000", "reward": "lcb", "host": "127.0.0.1", "k": 2}
    )
    assert (cfg.models, cfg.port, cfg.reward, cfg.host, cfg.k) == (["a", "b"], 9000, "lcb", "127.0.0.1", 2.0)
    with pytest.raises(ConfigError, match="port: expected an integer, got 'x'"):
        scoring.serve_config_from_args({"port": "x"})


def test_plain_serve_config_yaml_and_cli_shorthands(tmp_path: Path) -> None:
    import argparse

    from raw_rm.cli import serve as serve_cli

    path = _serve_yaml(tmp_path, "models: [a]\nport: 9000\n")
    parser = argparse.ArgumentParser()
    serve_cli.configure(parser)
    args = parser.parse_args(["--config", str(path), "--model", "x", "--model", "y", "--host", "::1", "reward=min"])
    cfg = serve_cli.resolve_config(args)
    assert (cfg.models, cfg.port, cfg.host, cfg.reward) == (["x", "y"], 9000, "::1", "min")


@pytest.mark.parametrize("path", sorted((REPO / "serve_configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_serve_configs_load_and_bind_loopback(path: Path) -> None:
    cfg = scoring.load_serve_config(path)
    assert cfg.models and security.is_loopback(cfg.host)
