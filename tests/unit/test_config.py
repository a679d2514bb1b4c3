"""Configuration loading: defaults, --set overrides, and file:line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, HostPort, load_config

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf" / "gateway.yaml"


def test_shipped_config_is_valid_and_matches_defaults_table():
    cfg = load_config(CONF)
    assert cfg.listen.relay == HostPort("127.0.0.1", 2525)
    assert cfg.listen.submission == HostPort("127.0.0.1", 2587)
    assert cfg.listen.submissions == HostPort("127.0.0.1", 2465)
    assert cfg.portal.listen == HostPort("127.0.0.1", 8080)
    assert cfg.metrics.listen == HostPort("127.0.0.1", 9325)
    assert cfg.smtp.max_message_size == 35 * 1024 * 1024
    assert cfg.delivery.mode == "mx"
    assert cfg.delivery.retry.first == 300 and cfg.delivery.retry.expire == 5 * 86400
    assert cfg.log.audit_file == cfg.paths.var / "log" / "audit.jsonl"
    assert cfg.auth.users_file == CONF.parent / "users.yaml"


def test_set_overrides_every_contract_key(tmp_path):
    cfg = load_config(CONF, [
        "listen.relay=127.0.0.1:3525", "listen.submission=[::1]:3587",
        "listen.submissions=127.0.0.1:3465", "portal.listen=127.0.0.1:9080",
        "portal.base_url=https://portal.example.org", "metrics.listen=127.0.0.1:9999",
        "delivery.mode=smarthost", "delivery.smarthost=127.0.0.1:2626",
        'delivery.transport={"a.test": "127.0.0.1:2627", ".sub.test": "[::1]:2628"}',
        "dns.nameservers=[127.0.0.1]", f"paths.var={tmp_path}",
        "trusted_networks=[10.0.0.0/8, 192.0.2.7]", "domains=[Example.ORG., b.example]",
    ])
    assert cfg.listen.relay == HostPort("127.0.0.1", 3525)
    assert cfg.listen.submission == HostPort("::1", 3587)
    assert cfg.portal.base_url == "https://portal.example.org"
    assert cfg.delivery.smarthost == HostPort("127.0.0.1", 2626)
    assert cfg.delivery.transport == {"a.test": HostPort("127.0.0.1", 2627),
                                      ".sub.test": HostPort("::1", 2628)}
    assert cfg.dns.nameservers == ("127.0.0.1",)
    assert cfg.paths.var == tmp_path and cfg.paths.spool == tmp_path / "spool"
    assert cfg.is_trusted("10.1.2.3") and cfg.is_trusted("192.0.2.7")
    assert not cfg.is_trusted("127.0.0.1")
    assert cfg.domains == ("example.org", "b.example")
    assert cfg.is_own_domain("mail.example.org") and not cfg.is_own_domain("example.org.evil")


def test_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "gateway.yaml"
    bad.write_text("hostname: gw.example.org\nlisten:\n  relay: nonsense\n"
                   "delivery:\n  retry:\n    frist: 5m\n  mode: carrier-pigeon\n")
    with pytest.raises(ConfigError) as exc:
        load_config(bad)
    problems = exc.value.problems
    assert f"{bad}:3: listen.relay: expected HOST:PORT" in problems[0]
    assert any(p.startswith(f"{bad}:6: delivery.retry.frist: unknown key 'frist'")
               for p in problems)
    assert any(p.startswith(f"{bad}:7: delivery.mode: 'carrier-pigeon' is not one of: mx")
               for p in problems)


def test_yaml_syntax_error_has_line(tmp_path):
    bad = tmp_path / "gateway.yaml"
    bad.write_text("hostname: a\nlisten: [unclosed\n")
    with pytest.raises(ConfigError) as exc:
        load_config(bad)
    assert exc.value.problems[0].startswith(f"{bad}:3: YAML syntax error") or \
        exc.value.problems[0].startswith(f"{bad}:2: YAML syntax error")


def test_bad_set_override_is_reported_as_such():
    with pytest.raises(ConfigError) as exc:
        load_config(CONF, ["smtp.max_message_size=-5", "nokey"])
    assert "--set nokey" in exc.value.problems[0]
    with pytest.raises(ConfigError) as exc:
        load_config(CONF, ["smtp.max_message_size=lots"])
    assert exc.value.problems == [
        "--set smtp.max_message_size: smtp.max_message_size: expected a size such as 35MB "
        "or 1048576, got 'lots'"]


def test_smarthost_mode_requires_smarthost():
    with pytest.raises(ConfigError) as exc:
        load_config(CONF, ["delivery.mode=smarthost"])
    assert "needs delivery.smarthost" in exc.value.problems[0]


def test_missing_file():
    with pytest.raises(ConfigError) as exc:
        load_config("/nonexistent/gateway.yaml")
    assert exc.value.problems == ["/nonexistent/gateway.yaml:1: configuration file not found"]


def test_check_config_cli(tmp_path, capsys):
    from gateway.cli import main

    assert main(["check-config", "--config", str(CONF)]) == 0
    bad = tmp_path / "g.yaml"
    bad.write_text("workers: many\n")
    assert main(["check-config", "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:1: workers: expected 'auto' or a number" in err


def test_tls_capability_cache_shares_the_ratelimit_redis_unless_told():
    conf = ROOT / "conf" / "gateway.yaml"
    assert load_config(conf).tls.capability_redis is None
    shared = load_config(conf, ["ratelimit.redis=redis://127.0.0.1:6390/0"])
    assert shared.tls.capability_redis == "redis://127.0.0.1:6390/0"
    own = load_config(conf, ["ratelimit.redis=redis://127.0.0.1:6390/0",
                             "tls.capability_redis=redis://127.0.0.1:6391/1"])
    assert own.tls.capability_redis == "redis://127.0.0.1:6391/1"
    off = load_config(conf, ["ratelimit.redis=redis://127.0.0.1:6390/0",
                             "tls.capability_redis=false"])
    assert off.tls.capability_redis is None
    with pytest.raises(ConfigError, match="capability_redis"):
        load_config(conf, ["tls.capability_redis=localhost:6379"])
