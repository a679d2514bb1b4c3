"""Rate limits in real ``phigate run`` processes: two gateways sharing one real redis-server
enforce one limit together; Redis stopped mid-test gives each gateway its configured behaviour
(fail open with an alert event, fail closed with 451); a locked account's AUTH is refused
until `user unlock`."""

from __future__ import annotations

import smtplib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.users import UserDB
from tests.conftest import ROOT, GatewayProc, Sink, message
from tests.redis_server import (  # noqa: F401  (fixtures)
    RedisServer,
    redis_module_fixture,
    redis_server_fixture,
)

from .smtp_raw import no_verify_context

GROUPS = ('ratelimit.groups={"staff": {"limits": {"sender": {"messages": {"minute": 6}}}}}')


def send(gw: GatewayProc, sender: str) -> tuple[int, str]:
    """(code, reply) of one message through the relay listener."""
    with smtplib.SMTP("127.0.0.1", gw.relay, timeout=20) as c:
        try:
            c.sendmail(sender, ["bob@dest.test"], message(frm="alice@example.org"))
        except smtplib.SMTPSenderRefused as exc:
            return exc.smtp_code, exc.smtp_error.decode()
        except smtplib.SMTPResponseException as exc:
            return exc.smtp_code, exc.smtp_error.decode()
    return 250, ""


def test_two_gateways_share_one_limit_and_survive_redis_outage(
        gateway_factory: Callable[..., GatewayProc], sink: Sink,
        redis_server: RedisServer) -> None:
    common = ["ratelimit.enabled=true", f"ratelimit.redis={redis_server.url}", GROUPS]
    gw_open = gateway_factory(*common, "ratelimit.on_redis_error=open",
                              transport={"dest.test": sink.port}, name="gw-open")
    gw_closed = gateway_factory(*common, "ratelimit.on_redis_error=closed",
                                transport={"dest.test": sink.port}, name="gw-closed")
    results = [send(gw_open if i % 2 else gw_closed, f"Alice+{i}@example.org")
               for i in range(9)]
    assert [code for code, _ in results[:6]] == [250] * 6
    for code, text in results[6:]:
        assert code == 451 and text.startswith("4.7.1 Too many messages from "
                                               "<alice@example.org>"), text
    ev = gw_open.events() + gw_closed.events()
    refused = [e for e in ev if e["event.action"] == "ratelimit.deferred"]
    assert len(refused) == 3 and all(e["smtp.stage"] == "mail" for e in refused)
    sink.wait_for(6)

    redis_server.stop()
    code, _ = send(gw_open, "carol@example.org")
    assert code == 250
    gw_open.wait_event(lambda e: e["event.action"] == "ratelimit.alert"
                       and e.get("event.reason") == "backend_unavailable")
    code, text = send(gw_closed, "carol@example.org")
    assert code == 451 and text.startswith("4.3.0"), text
    sink.wait_for(7)
    assert gw_open.proc is not None and gw_open.proc.poll() is None
    assert gw_closed.proc is not None and gw_closed.proc.poll() is None


def test_locked_account_refused_until_unlocked(gateway_factory: Callable[..., GatewayProc],
                                               sink: Sink, tmp_path: Path) -> None:
    users = tmp_path / "users.yaml"
    db = UserDB.load(users)
    db.set_user("alice", password="alice-Synthetic-Pass-1", senders=["alice@example.org"])
    db.set_user("alice", locked=True)
    db.save()
    gw = gateway_factory(f"auth.users_file={users}", "ratelimit.enabled=true",
                         transport={"dest.test": sink.port})

    def login() -> tuple[int, Any]:
        with smtplib.SMTP("127.0.0.1", gw.submission, timeout=20) as c:
            c.starttls(context=no_verify_context())
            try:
                c.login("alice", "alice-Synthetic-Pass-1")
            except smtplib.SMTPAuthenticationError as exc:
                return exc.smtp_code, exc.smtp_error
            return 235, b""

    code, text = login()
    assert code == 535 and b"locked" in text
    gw.wait_event(lambda e: e["event.action"] == "auth.refused"
                  and e.get("event.reason") == "account_locked")
    r = subprocess.run([sys.executable, "-m", "gateway.ratelimitcli", "user", "unlock",
                        "alice", *gw.args()], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert login()[0] == 235
