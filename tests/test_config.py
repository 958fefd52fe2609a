"""Config loading: ${ENV} expansion and validation errors that name the problem."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from router_service.config import ConfigError, expand_env, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]


def _default() -> dict:
    return yaml.safe_load((ROOT / "config" / "router.yaml").read_text())


def test_embedded_default_config_is_valid() -> None:
    config = load_config(ROOT / "config" / "router.yaml", environ={})
    assert config.default_policy == "default"
    policy = config.policy("default")
    assert {policy.weak, policy.strong} <= {t.name for t in config.targets}
    assert config.triton.grpc_url == "127.0.0.1:8001"


def test_env_expansion_with_defaults_and_values() -> None:
    raw = {"a": "${X}", "b": ["pre-${Y:-fallback}-post"], "c": {"d": "${Z:-}"}, "n": 3}
    assert expand_env(raw, {"X": "1"}) == {"a": "1", "b": ["pre-fallback-post"], "c": {"d": ""}, "n": 3}
    assert expand_env("${Y:-x}", {"Y": "set"}) == "set"


def test_missing_env_var_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="NOPE_NOT_SET"):
        expand_env({"k": "${NOPE_NOT_SET}"}, {})


def test_env_expansion_reaches_validated_fields() -> None:
    raw = _default()
    raw["triton"]["grpc_url"] = "${GRPC}"
    assert parse_config(raw, {"GRPC": "10.0.0.1:9001"}).triton.grpc_url == "10.0.0.1:9001"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c["policies"][0].update(weak="nope"), "unknown weak target 'nope'"),
        (lambda c: c["policies"][0].update(classifier="nope"), "unknown classifier"),
        (lambda c: c.update(default_policy="nope"), "default_policy"),
        (lambda c: c["policies"][0].update(threshold=1.5), "threshold"),
        (lambda c: c["targets"].append(dict(c["targets"][0])), "duplicate names"),
        (lambda c: c["targets"][0].update(kind="grpc"), "kind"),
        (lambda c: c["targets"][0].update(unknown_field=1), "unknown_field"),
        (lambda c: c["targets"].append({"name": "ext", "kind": "openai", "model": "m", "context_window": 8}),
         "needs a url"),
        (lambda c: c["targets"][0].update(usd_per_1m_input_tokens=-1), "usd_per_1m_input_tokens"),
        (lambda c: c["policies"][0].update(quality=0.95), "one of threshold, strong_share and quality"),
        (lambda c: c["policies"][0].update(strong_share=None, quality=1.2), "quality"),
        (lambda c: c.update(decision_log={"path": "x.sqlite", "prompts": ["nope"]}), "decision_log.prompts"),
    ],
)
def test_invalid_configs_are_rejected(mutate, message: str) -> None:
    raw = _default()
    mutate(raw)
    with pytest.raises(ConfigError, match=message):
        parse_config(raw, {})


def test_unreadable_and_non_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_chart_default_config_is_the_embedded_default() -> None:
    """config/router.yaml (make run) and the chart's router.config describe the same router; the
    chart leaves the Triton URLs out (it points them at its own Triton Service)."""
    chart = yaml.safe_load((ROOT / "helm" / "llm-router" / "values.yaml").read_text())["router"]["config"]
    embedded = _default()
    for key in ("http_url", "grpc_url"):
        embedded["triton"].pop(key)
    assert chart == embedded


def test_local_llms_default_budget_is_the_routers() -> None:
    """The completion budget the router assumes for a request without max_tokens (its context
    check, and what it sends) is the one a Triton LLM applies to direct callers."""
    config = load_config(ROOT / "config" / "router.yaml", environ={})
    for target in config.targets:
        if target.kind == "triton":
            pbtxt = (ROOT / "model_repository" / target.model / "config.pbtxt").read_text()
            assert f'key: "default_max_tokens", value: {{ string_value: "{target.default_max_tokens}" }}' in pbtxt


@pytest.mark.parametrize("name, value", [("ROUTER_WORKER_CLASS", "eventlet"), ("WEB_CONCURRENCY", "two"),
                                         ("ROUTER_THREADS", "0"), ("ROUTER_WORKER_TIMEOUT", "-5")])
def test_a_wrong_server_setting_names_itself(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    """gunicorn_conf.py reads the server settings from the environment (the chart sets them); a
    wrong one stops the start with its name and value instead of a bare KeyError or int() error."""
    import runpy

    conf = Path(__file__).resolve().parents[1] / "router_service" / "gunicorn_conf.py"
    monkeypatch.setenv("WEB_CONCURRENCY", "1")
    assert runpy.run_path(str(conf))["timeout"] == 600
    monkeypatch.setenv("ROUTER_WORKER_TIMEOUT", "0")  # gunicorn's "no timeout" stays allowed
    assert runpy.run_path(str(conf))["timeout"] == 0
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name}='{value}'"):
        runpy.run_path(str(conf))
