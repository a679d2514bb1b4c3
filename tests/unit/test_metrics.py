"""Metrics from audit events (the observer), the spool gauges, the exposition, and what the
observer costs per event (a ratio against the same log without it, printed, not asserted)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.audit import AuditLog, SchemaError
from gateway.metrics import GatewayMetrics, SpoolCollector, exposition
from gateway.model import Envelope, RecipientVerdict, Verdict
from gateway.spool import Spool


def _val(m: GatewayMetrics, name: str, **labels: str) -> float:
    v = m.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


def _log(tmp_path: Path) -> tuple[AuditLog, GatewayMetrics]:
    audit = AuditLog(tmp_path / "log" / "audit.jsonl", stdout=False)
    metrics = GatewayMetrics(CollectorRegistry())
    audit.observers.append(metrics.observe)
    return audit, metrics


def test_events_become_counters(tmp_path: Path) -> None:
    audit, m = _log(tmp_path)
    audit.emit("message.accepted", {"listener": "relay", "queue.state": "incoming",
                                    "email.from.address": "alice@example.org"})
    audit.emit("message.accepted", {"listener": "submission", "queue.state": "hold"})
    audit.emit("message.rejected", {"event.reason": "policy_reject"})
    audit.emit("message.deferred", {"event.reason": "rate_limited"})
    audit.emit("message.deferred", {"queue.state": "deferred", "queue.attempt": 1})
    audit.emit("message.verdict", {
        "phi.detected": True,
        "phi.findings": [{"type": "mrn", "rule": "mrn-labelled", "count": 3, "score": 3.0},
                         {"type": "mrn", "rule": "mrn-bare", "count": 1, "score": 0.5},
                         {"type": "dob", "rule": "dob", "count": 1, "score": 1.0}],
        "verdict.recipients": [{"recipient": "a@x.test", "action": "require_tls",
                                "rule": "phi-require-tls"},
                               {"recipient": "b@x.test", "action": "quarantine",
                                "rule": "hold-mbi"}],
        "verdict.monitor": [{"recipient": "a@x.test", "action": "reject", "rule": "pilot"}]})
    audit.emit("delivery.delivered", {"delivery.duration": 0.2, "tls.established": True,
                                      "tls.version": "TLSv1.3", "tls.required": "encrypt"})
    audit.emit("delivery.delivered", {"delivery.duration": 0.1, "tls.established": False,
                                      "tls.required": "may"})
    audit.emit("delivery.bounced", {"delivery.duration": 7.0, "tls.established": False})
    audit.emit("bounce.created", {"count": 1})
    audit.emit("portal.stored", {"event.outcome": "success", "portal.id": "p1"})
    audit.emit("portal.view", {"event.outcome": "success", "portal.id": "p1"})
    audit.emit("portal.verified", {"event.outcome": "success"})
    audit.emit("tls.fallback", {"event.reason": "no STARTTLS"})
    audit.emit("ratelimit.refused", {"ratelimit.scope": "sender", "ratelimit.metric": "messages"})
    audit.emit("ratelimit.held", {"event.reason": "anomaly"})
    audit.emit("message.encrypt", {"encrypt.method": "pgp", "event.outcome": "success"})

    assert _val(m, "phigate_messages_accepted_total", listener="relay", state="incoming") == 1
    assert _val(m, "phigate_messages_accepted_total", listener="submission", state="hold") == 1
    assert _val(m, "phigate_messages_rejected_total", reason="policy_reject") == 1
    assert _val(m, "phigate_messages_deferred_total", stage="intake", reason="rate_limited") == 1
    assert _val(m, "phigate_messages_deferred_total", stage="delivery", reason="retry") == 1
    assert _val(m, "phigate_verdicts_total", action="require_tls", rule="phi-require-tls",
                mode="enforce") == 1
    assert _val(m, "phigate_verdicts_total", action="quarantine", rule="hold-mbi",
                mode="enforce") == 1
    assert _val(m, "phigate_verdicts_total", action="reject", rule="pilot", mode="monitor") == 1
    assert _val(m, "phigate_phi_messages_total") == 1
    assert _val(m, "phigate_phi_findings_total", type="mrn") == 4
    assert _val(m, "phigate_phi_detections_total", type="mrn") == 1  # one message
    assert _val(m, "phigate_phi_detections_total", type="dob") == 1
    assert _val(m, "phigate_delivery_tls_total", version="TLSv1.3", required="encrypt") == 1
    assert _val(m, "phigate_delivery_tls_total", version="none", required="may") == 1
    assert _val(m, "phigate_deliveries_total", outcome="bounced") == 1
    assert _val(m, "phigate_delivery_duration_seconds_count", outcome="delivered") == 2
    assert _val(m, "phigate_delivery_duration_seconds_bucket", outcome="bounced", le="5.0") == 0
    assert _val(m, "phigate_delivery_duration_seconds_bucket", outcome="bounced", le="10.0") == 1
    assert _val(m, "phigate_bounces_total", kind="bounce") == 1
    assert _val(m, "phigate_portal_rewrites_total", outcome="success") == 1
    assert _val(m, "phigate_portal_opens_total") == 1
    assert _val(m, "phigate_portal_events_total", event="verified", outcome="success") == 1
    assert _val(m, "phigate_tls_fallbacks_total") == 1
    assert _val(m, "phigate_ratelimit_events_total", event="refused", scope="sender") == 1
    assert _val(m, "phigate_ratelimit_events_total", event="held", scope="none") == 1
    assert _val(m, "phigate_encryptions_total", method="pgp", outcome="success") == 1
    assert _val(m, "phigate_audit_events_total", action="message.accepted") == 2
    # no label carries an address
    text = exposition(m, None, None).decode()
    assert "@" not in text and "alice" not in text


def test_observer_never_raises_and_schema_errors_are_not_counted(tmp_path: Path) -> None:
    audit, m = _log(tmp_path)
    audit.emit("message.verdict", {"verdict.recipients": ["not a mapping"],
                                   "phi.findings": [{"type": 5, "count": "x"}]})
    with pytest.raises(SchemaError):
        audit.emit("message.accepted", {"no.such.field": 1})
    assert _val(m, "phigate_audit_events_total", action="message.verdict") == 1
    assert _val(m, "phigate_audit_events_total", action="message.accepted") == 0


def _store(spool: Spool, state: str, arrived: float) -> str:
    qid = f"{int(arrived * 1e6):014X}ABCDEF"
    env = Envelope("alice@example.org", ("bob@x.test",), received_at=arrived)
    return spool.store(env, Verdict((RecipientVerdict("bob@x.test", "deliver", "default"),)),
                       b"Subject: x\r\n\r\nbody\r\n", state=state, queue_id=qid)


def test_spool_gauges_count_states_and_age_the_oldest(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.ensure()
    now = 1_750_000_000.0
    _store(spool, "hold", now - 3600)
    _store(spool, "hold", now - 60)
    _store(spool, "deferred", now - 120)
    (spool.root / "incoming" / "stray-file").write_bytes(b"")  # not a queue id: its mtime
    clock = [now]
    coll = SpoolCollector(spool.root, clock=lambda: clock[0], min_interval=5.0)
    got = coll.scan()
    assert got["hold"] == (2, 3600.0)
    assert got["deferred"] == (1, 120.0)
    assert got["incoming"][0] == 1
    assert got["active"] == (0, 0.0)
    # reused within min_interval, rescanned after
    _store(spool, "hold", now - 10)
    assert coll.scan()["hold"][0] == 2
    clock[0] += 6
    assert coll.scan()["hold"] == (3, 3606.0)
    text = exposition(GatewayMetrics(CollectorRegistry()), coll, None).decode()
    assert 'phigate_queue_messages{state="hold"} 3.0' in text
    assert 'phigate_queue_oldest_age_seconds{state="hold"} 3606.0' in text


def test_observer_cost_per_event(tmp_path: Path) -> None:
    """Not a timing assertion: prints the observer's cost next to the cost of the event itself
    (schema check, JSON, HMAC chain, write), measured interleaved in this process."""
    plain = AuditLog(tmp_path / "a" / "audit.jsonl", stdout=False)
    observed, m = _log(tmp_path / "b")
    fields = {"email.local_id": "X", "listener": "relay", "queue.state": "incoming",
              "event.outcome": "success", "email.size": 1234}
    verdict = {"phi.detected": True,
               "phi.findings": [{"type": "mrn", "rule": "mrn", "count": 1, "score": 1.0}],
               "verdict.recipients": [{"recipient": "a@x.test", "action": "deliver",
                                       "rule": "default"}]}
    n = 2000

    def run(log: AuditLog) -> float:
        t = time.perf_counter()
        for _ in range(n):
            log.emit("message.accepted", fields)
            log.emit("message.verdict", verdict)
        return (time.perf_counter() - t) / (2 * n)

    def observe_only() -> float:
        t = time.perf_counter()
        for _ in range(n):
            m.observe("message.accepted", fields)
            m.observe("message.verdict", verdict)
        return (time.perf_counter() - t) / (2 * n)

    base, with_obs, alone = [], [], []
    for _ in range(3):
        base.append(run(plain))
        with_obs.append(run(observed))
        alone.append(observe_only())
    b, w, a = min(base), min(with_obs), min(alone)
    print(f"\naudit event {b * 1e6:.1f} us; with the metrics observer {w * 1e6:.1f} us "
          f"(x{w / b:.2f}); the observer alone {a * 1e6:.1f} us per event")
    assert _val(m, "phigate_audit_events_total", action="message.accepted") >= n


def test_dashboard_uses_only_metrics_we_export(tmp_path: Path) -> None:
    import json
    import re

    root = Path(__file__).resolve().parents[2]
    dash = json.loads((root / "conf" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(phigate_[a-z_]+)", e)}
    spool = Spool(tmp_path / "spool")
    spool.ensure()
    m = GatewayMetrics(CollectorRegistry())
    for action in ("delivery.delivered", "portal.stored", "ratelimit.refused", "bounce.created",
                   "message.accepted", "message.rejected", "message.deferred", "portal.verified"):
        m.observe(action, {"delivery.duration": 1.0})
    m.observe("message.verdict", {"phi.findings": [{"type": "mrn", "count": 1}],
                                  "verdict.recipients": [{"action": "deliver", "rule": "r"}]})
    text = exposition(m, SpoolCollector(spool.root), None).decode()
    exported = set(re.findall(r"^(phigate_[a-z_]+)", text, re.M))
    assert used and used <= exported, used - exported
