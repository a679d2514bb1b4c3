"""Signals and process lifecycle: SIGHUP reload (bad file kept out), SIGTERM exit, workers,
a full spool disk."""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import subprocess
import time

import pytest

from tests.conftest import PHIGATE, ROOT, make_gateway, message, start_sink


def _send(port: int, to: str = "bob@dest.test") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c.ehlo("client.test")
        c.mail("alice@example.org")
        c.rcpt(to)
        return c.data(message(to=to))


def test_sighup_reloads_and_keeps_last_good_config(tmp_path, sink):
    other = start_sink()
    conf = tmp_path / "gateway.yaml"
    base = (ROOT / "conf" / "gateway.yaml").read_text()

    def route_to(port: int) -> str:
        return base.replace("transport: {}", f'transport: {{"dest.test": "127.0.0.1:{port}"}}')

    conf.write_text(route_to(sink.port))
    gw = make_gateway(tmp_path / "var")
    gw.config = conf
    gw.start()
    try:
        assert _send(gw.relay)[0] == 250
        sink.wait_for(1)
        # A broken file: refused, the running configuration stays.
        conf.write_text(route_to(other.port) + "\nsmtp:\n  max_recipients: many\n")
        gw.signal(signal.SIGHUP)
        ev = gw.wait_event(lambda e: e["event.action"] == "config.reload_failed")
        assert any("max_recipients" in p for p in ev["config.problems"])
        assert _send(gw.relay)[0] == 250
        sink.wait_for(2)
        assert other.messages == []
        # A good change takes effect without a restart and without dropping a session.
        with smtplib.SMTP("127.0.0.1", gw.relay, timeout=10) as open_session:
            open_session.ehlo("client.test")
            conf.write_text(route_to(other.port))
            gw.signal(signal.SIGHUP)
            gw.wait_event(lambda e: e["event.action"] == "config.reloaded")
            open_session.mail("alice@example.org")
            open_session.rcpt("bob@dest.test")
            assert open_session.data(message())[0] == 250
        other.wait_for(1)
        assert len(sink.messages) == 2
    finally:
        assert gw.stop() == 0
        other.stop()


def test_sigterm_exits_cleanly(tmp_path, sink):
    gw = make_gateway(tmp_path / "var", transport={"dest.test": sink.port})
    gw.start()
    assert _send(gw.relay)[0] == 250
    sink.wait_for(1)
    assert gw.stop() == 0
    ev = [e for e in gw.events() if e["event.action"] == "service.stopped"]
    assert len(ev) == 1


def test_two_workers_share_the_listeners(tmp_path, sink):
    gw = make_gateway(tmp_path / "var", "workers=2", transport={"dest.test": sink.port})
    gw.start()
    try:
        for i in range(20):
            assert _send(gw.relay, f"r{i}@dest.test")[0] == 250
        got = sink.wait_for(20)
        assert sorted(r.rcpt_tos[0] for r in got) == sorted(f"r{i}@dest.test" for i in range(20))
        started = {e["process.pid"] for e in gw.events()
                   if e["event.action"] == "service.started"}
        assert len(started) == 2
    finally:
        assert gw.stop() == 0
    assert len([e for e in gw.events() if e["event.action"] == "service.stopped"]) == 2


def test_killed_worker_is_replaced_and_its_end_logged(tmp_path, sink):
    gw = make_gateway(tmp_path / "var", "workers=2", transport={"dest.test": sink.port})
    gw.start()
    try:
        def started() -> list[int]:
            return [e["process.pid"] for e in gw.events()
                    if e["event.action"] == "service.started"]

        def wait_started(n: int) -> list[int]:
            deadline = time.monotonic() + 60
            while len(started()) < n and time.monotonic() < deadline:
                time.sleep(0.2)
            return started()

        first = wait_started(2)
        os.kill(first[0], signal.SIGKILL)
        now = wait_started(3)
        restarted = [e for e in gw.events() if e["event.action"] == "service.worker_restarted"]
        assert len(restarted) == 1 and restarted[0]["process.pid"] == first[0]
        assert restarted[0]["process.exit_signal"] == "SIGKILL"
        assert len(now) == 3  # a new worker took its place
        for i in range(6):
            assert _send(gw.relay, f"k{i}@dest.test")[0] == 250
        assert len(sink.wait_for(6)) == 6
        # a worker that keeps dying soon after its start is restarted ever more slowly
        os.kill(now[-1], signal.SIGKILL)
        wait_started(4)
        os.kill(started()[-1], signal.SIGKILL)
        wait_started(5)
        delays = [e["process.restart_delay"] for e in gw.events()
                  if e["event.action"] == "service.worker_restarted"]
        assert len(delays) == 3 and delays[0] < delays[1] < delays[2], delays
    finally:
        assert gw.stop() == 0


def test_a_worker_failure_is_named_without_its_text() -> None:
    from gateway.app import _failure_fields

    try:
        raise ValueError("Subject: Testpatient Quux")  # an exception may quote content
    except ValueError as exc:
        fields = _failure_fields(exc)
    assert fields["error.type"] == "ValueError"
    assert fields["error.location"].startswith("test_lifecycle.py:")
    assert "Quux" not in str(fields)


def test_bad_config_refuses_to_start(tmp_path):
    r = subprocess.run([*PHIGATE, "run", "--set",
                        "listen.relay=nowhere"], cwd=ROOT, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1
    assert "listen.relay: expected HOST:PORT" in r.stderr


@pytest.mark.skipif(shutil.which("mount") is None, reason="needs mount(8) for a tiny tmpfs")
def test_full_spool_disk_answers_452(tmp_path, sink):
    var = tmp_path / "var"
    spool = var / "spool"
    spool.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(spool)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        # dest.test routes to a closed port: mail stays queued and fills the disk.
        gw = make_gateway(var, 'delivery.transport={"dest.test": "127.0.0.1:9"}')
        gw.start()
        try:
            codes = []
            big = "x" * 70 + "\r\n"
            for _ in range(12):
                with smtplib.SMTP("127.0.0.1", gw.relay, timeout=10) as c:
                    c.ehlo("client.test")
                    c.mail("alice@example.org")
                    c.rcpt("bob@dest.test")
                    try:
                        code, _ = c.data(message(body=big * 500))
                    except smtplib.SMTPDataError as exc:
                        code = exc.smtp_code
                    codes.append(code)
            assert 250 in codes and 452 in codes
            ev = gw.wait_event(lambda e: e.get("event.reason") == "spool_full")
            assert ev["event.outcome"] == "failure"
            # Every 250 is a whole queue file; no half-written file anywhere.
            accepted = codes.count(250)
            files = [p for s in ("incoming", "active", "deferred") for p in
                     (spool / s).iterdir()]
            assert len(files) == accepted
            assert list((spool / "tmp").iterdir()) == []
        finally:
            gw.stop()
    finally:
        time.sleep(0.2)
        subprocess.run(["umount", "-l", str(spool)], capture_output=True)
