"""``/metrics`` of a real ``phigate run``: real mail through the gateway, then a scrape over
HTTP; the counters moved by what was sent, summed over worker processes."""

from __future__ import annotations

import smtplib
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port, message, wait_port

PHI_BODY = ("Referral for Patient: Jane Testperson, DOB 03/04/1971, MRN 00123456.\r\n"
            "Diagnosis: type 2 diabetes (E11.9), HbA1c 9.1%.\r\n")


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    wait_port(port)  # worker 0 opens it once it runs (the SMTP ports are the parent's)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


def send(port: int, to: str, subject: str, body: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.ehlo("client.test")
        c.mail("alice@example.org")
        c.rcpt(to)
        return c.data(message(subject=subject, body=body, to=to))


def test_counters_move_with_real_mail_over_two_workers(gateway_factory, sink):
    mport = free_port()
    gw = gateway_factory("rules.enabled=true", "workers=2", "rules.processes=1",
                         f"metrics.listen=127.0.0.1:{mport}",
                         transport={"plain.test": sink.port})
    sink.handler.rcpt_script["gone@plain.test"] = ["550 5.1.1 no such user"]
    before = scrape(mport)
    assert value(before, "phigate_messages_accepted_total") == 0
    clean = 6
    for i in range(clean):  # one connection each: the kernel spreads them over the workers
        assert send(gw.relay, "bob@plain.test", f"lunch {i}", "The cafeteria is open.\r\n")[0] \
            == 250
    assert send(gw.relay, "carol@plain.test", "referral", PHI_BODY)[0] == 250
    assert send(gw.relay, "gone@plain.test", "lunch", "The cafeteria is open.\r\n")[0] == 250
    # the clean mail and the PHI message's portal notification (the sink offers no TLS);
    # alice's bounce for gone@ is created (it goes by MX, not to the sink)
    sink.wait_for(clean + 1)
    gw.wait_event(lambda e: e["event.action"] == "bounce.created")
    gw.wait_event(lambda e: e["event.action"] == "portal.stored")
    after = scrape(mport)

    assert value(after, "phigate_messages_accepted_total", listener="relay",
                 state="incoming") == clean + 2
    assert value(after, "phigate_deliveries_total", outcome="delivered") >= clean + 1
    assert value(after, "phigate_deliveries_total", outcome="bounced") >= 1  # + the DSN: no MX
    assert value(after, "phigate_bounces_total", kind="bounce") == 1
    assert value(after, "phigate_delivery_tls_total", version="none") >= clean + 1
    assert value(after, "phigate_delivery_duration_seconds_count", outcome="delivered") \
        >= clean + 1
    assert value(after, "phigate_portal_rewrites_total", outcome="success") == 1
    assert value(after, "phigate_phi_messages_total") == 1
    for kind in ("dob", "mrn", "name"):
        assert value(after, "phigate_phi_detections_total", type=kind) == 1, kind
    assert value(after, "phigate_verdicts_total", mode="enforce") == clean + 2
    assert value(after, "phigate_verdicts_total", action="require_tls", mode="enforce") >= 1
    assert value(after, "phigate_audit_events_total", action="message.verdict") == clean + 2
    # gauges from the spool, and no address in any label
    assert ("phigate_queue_messages", frozenset({("state", "hold")})) in after
    assert not any("@" in v for _, lab in after for _, v in lab)
    # both workers count, into their own files that worker 0 sums
    run_dirs = list((gw.var / "metrics").iterdir())
    assert len(run_dirs) == 1
    pids = {p.stem.rpartition("_")[2] for p in run_dirs[0].glob("counter_*.db")}
    assert len(pids) == 2


def test_single_worker_and_a_busy_port(gateway_factory, sink):
    mport = free_port()
    gw = gateway_factory(f"metrics.listen=127.0.0.1:{mport}", transport={"plain.test": sink.port})
    assert send(gw.relay, "bob@plain.test", "hello", "synthetic\r\n")[0] == 250
    sink.wait_for(1)
    gw.wait_event(lambda e: e["event.action"] == "delivery.delivered")
    got = scrape(mport)
    assert value(got, "phigate_messages_accepted_total") == 1
    assert value(got, "phigate_deliveries_total", outcome="delivered") == 1
    assert not (gw.var / "metrics").exists()  # one process: no multiprocess files
    # a second gateway whose metrics port is taken still relays mail, and says why it has
    # no metrics
    other = gateway_factory(f"metrics.listen=127.0.0.1:{mport}", name="gw2",
                            transport={"plain.test": sink.port})
    ev = other.wait_event(lambda e: e["event.action"] == "service.listen_failed")
    assert ev["listener"] == "metrics" and ev["error.type"]
    assert send(other.relay, "bob@plain.test", "hello", "synthetic\r\n")[0] == 250
    sink.wait_for(2)
