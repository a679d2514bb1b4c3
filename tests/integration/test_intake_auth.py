"""Submission intake end to end: STARTTLS before AUTH, AUTH PLAIN/LOGIN against the users file,
per-user senders, implicit TLS, the TLS 1.2 floor, no open relay, AUTH failure lockout, disabled
users. Real clients (smtplib, swaks, raw sockets) against a real ``phigate run`` subprocess."""

from __future__ import annotations

import base64
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GatewayProc, Received, Sink, make_gateway, message, start_sink

from .smtp_raw import RawSMTP, no_verify_context

ALICE_PW = "alice-Secr3t-Horse-4891"
BILLING_PW = "billing-Secr3t-Staple-5172"
WRONG_PWS = ["wrong-Guess-one-7731", "wrong-Guess-two-8842", "wrong-Guess-three-9953"]

# name -> (password, allowed sender entries)
USERS = {
    "alice": (ALICE_PW, ["alice@example.org"]),
    "billing": (BILLING_PW, ["@billing.example.org"]),
}


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def users_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A users file written once per module by the real ``phigate user add`` (argon2 hashing
    in a subprocess is slow); each test gets its own copy."""
    gw = make_gateway(tmp_path_factory.mktemp("users-template"))
    for name, (pw, senders) in USERS.items():
        args = [a for s in senders for a in ("--sender", s)]
        r = gw.cli("user", "add", name, *args, "--password-stdin", input=f"{pw}\n".encode())
        assert r.returncode == 0, r.stderr
    path = gw.var / "users.yaml"
    assert path.exists()
    return path


@pytest.fixture
def auth_gw(gateway_factory: Callable[..., GatewayProc], sink: Any, users_template: Path,
            tmp_path: Path) -> Callable[..., GatewayProc]:
    """Start a gateway whose users file is a fresh copy of the template."""

    def make(*extra: str, start: bool = True) -> GatewayProc:
        users = tmp_path / "users.yaml"
        shutil.copy(users_template, users)
        return gateway_factory(f"auth.users_file={users}", *extra,
                               transport={"dest.test": sink.port}, start=start)

    return make


@dataclass
class SharedView:
    """One test's window on the module's shared gateway: only the events since it started,
    and only the sink messages for a recipient of its own."""

    gw: GatewayProc
    sink: Sink
    events_from: int

    def __getattr__(self, name: str) -> Any:  # relay, submission, submissions, proc, out, var
        return getattr(self.gw, name)

    def events(self) -> list[dict[str, Any]]:
        return self.gw.events()[self.events_from:]

    def wait_event(self, pred: Callable[[dict[str, Any]], bool],
                   timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.events():
                if pred(ev):
                    return ev
            time.sleep(0.05)
        raise AssertionError("expected audit event not seen")

    def messages_to(self, rcpt: str, n: int = 1, timeout: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [m for m in list(self.sink.messages) if rcpt in m.rcpt_tos]
            if len(got) >= n:
                return got
            time.sleep(0.02)
        raise AssertionError(f"no message for {rcpt} reached the sink")


@pytest.fixture(scope="module")
def _shared_auth_gateway(users_template: Path, tmp_path_factory: pytest.TempPathFactory
                         ) -> Iterator[tuple[GatewayProc, Sink]]:
    """One gateway for the tests that change nothing in it (a gateway start costs about a
    second). Failures are allowed generously here; the lockout test has its own gateway."""
    var = tmp_path_factory.mktemp("shared-auth")
    users = var.parent / f"{var.name}-users.yaml"
    shutil.copy(users_template, users)
    sink = start_sink()
    gw = make_gateway(var, f"auth.users_file={users}", "auth.max_failures=100",
                      transport={"dest.test": sink.port})
    gw.start()
    yield gw, sink
    gw.stop()
    sink.stop()


@pytest.fixture
def shared_gw(_shared_auth_gateway: tuple[GatewayProc, Sink]) -> SharedView:
    gw, sink = _shared_auth_gateway
    return SharedView(gw, sink, len(gw.events()))


def login(c: smtplib.SMTP, mechanism: str, user: str, password: str,
          initial_response: bool = True) -> tuple[int, bytes]:
    """AUTH with exactly the given mechanism (smtplib.login() would pick one itself)."""
    c.user, c.password = user, password
    auth_object = getattr(c, "auth_" + mechanism.lower())
    return c.auth(mechanism, auth_object, initial_response_ok=initial_response)


def submission(gw: GatewayProc | SharedView, source: str | None = None) -> smtplib.SMTP:
    """smtplib session on the STARTTLS port, after STARTTLS and the second EHLO."""
    c = smtplib.SMTP("127.0.0.1", gw.submission, timeout=10,
                     source_address=(source, 0) if source else None)
    c.ehlo("client.test")
    code, _ = c.starttls(context=no_verify_context())
    assert code == 220
    c.ehlo("client.test")
    return c


def plain_blob(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def count_events(gw: GatewayProc | SharedView, action: str) -> int:
    return sum(1 for e in gw.events() if e["event.action"] == action)


def wait_count(gw: GatewayProc, action: str, n: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count_events(gw, action) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"expected {n} '{action}' event(s), saw {count_events(gw, action)}")


def reload_gateway(gw: GatewayProc) -> None:
    before = count_events(gw, "config.reloaded")
    gw.signal(signal.SIGHUP)
    wait_count(gw, "config.reloaded", before + 1)


def assert_no_traceback(gw: GatewayProc | SharedView) -> None:
    assert gw.proc is not None and gw.proc.poll() is None, "gateway process died"
    assert "Traceback" not in gw.out.read_text(errors="replace")


# --------------------------------------------------------------------------- STARTTLS / AUTH


def test_submission_offers_auth_only_after_starttls(shared_gw):
    gw = shared_gw
    with smtplib.SMTP("127.0.0.1", gw.submission, timeout=10) as c:
        code, _ = c.ehlo("client.test")
        assert code == 250
        assert c.has_extn("starttls")
        assert not c.has_extn("auth"), "AUTH must not be offered before STARTTLS"

        code, reply = c.docmd("AUTH", "PLAIN " + plain_blob("alice", ALICE_PW))
        assert code == 538 and reply.startswith(b"5.7.11"), (code, reply)
        code, reply = c.docmd("AUTH", "LOGIN")
        assert code == 538, (code, reply)

        code, reply = c.mail("alice@example.org")
        assert code == 530, (code, reply)
        code, reply = c.rcpt("bob@dest.test")
        assert code >= 500, (code, reply)

        code, _ = c.starttls(context=no_verify_context())
        assert code == 220
        c.ehlo("client.test")
        assert c.has_extn("auth")
        mechanisms = c.esmtp_features["auth"].upper().split()
        assert "PLAIN" in mechanisms and "LOGIN" in mechanisms
        assert not c.has_extn("starttls"), "STARTTLS offered again inside TLS"

        # encrypted but not authenticated: still no mail
        code, reply = c.mail("alice@example.org")
        assert code == 530 and reply.startswith(b"5.7.0"), (code, reply)

    # the relay listener (trusted networks, port 25) never offers AUTH, even inside TLS:
    # AUTH there would only invite password guessing
    with smtplib.SMTP("127.0.0.1", gw.relay, timeout=10) as c:
        c.ehlo("client.test")
        assert not c.has_extn("auth")
        c.starttls(context=no_verify_context())
        c.ehlo("client.test")
        mechanisms = (c.esmtp_features.get("auth") or "").split()
        assert mechanisms == [], f"relay offers AUTH {mechanisms} after STARTTLS"
        code, _ = c.docmd("AUTH", "PLAIN " + plain_blob("alice", ALICE_PW))
        assert code >= 500
    assert not any(e["event.action"] == "auth.success" for e in gw.events())


def test_auth_plain_and_login(shared_gw):
    gw = shared_gw
    # wrong password, then right password, for both mechanisms, with the credentials in the
    # AUTH command (initial response) and interactively after 334 challenges
    cases = [("PLAIN", True, True), ("LOGIN", False, True), ("PLAIN", False, False),
             ("LOGIN", True, False)]
    for mechanism, initial_response, try_wrong_first in cases:
        with submission(gw) as c:
            if try_wrong_first:
                with pytest.raises(smtplib.SMTPAuthenticationError) as bad:
                    login(c, mechanism, "alice", WRONG_PWS[0], initial_response)
                assert bad.value.smtp_code == 535
                assert bad.value.smtp_error.startswith(b"5.7.8")
            code, reply = login(c, mechanism, "alice", ALICE_PW, initial_response)
            assert code == 235 and reply.startswith(b"2.7.0"), (code, reply)
            code, _ = c.docmd("AUTH", "PLAIN " + plain_blob("alice", ALICE_PW))
            assert code == 503  # once is enough
    with submission(gw) as c, pytest.raises(smtplib.SMTPAuthenticationError) as bad:
        login(c, "PLAIN", "nosuchuser", ALICE_PW)
    assert bad.value.smtp_code == 535  # same answer as a wrong password
    ok = [e for e in gw.events() if e["event.action"] == "auth.success"]
    assert sorted(e["auth.mechanism"] for e in ok) == ["LOGIN", "LOGIN", "PLAIN", "PLAIN"]
    assert all(e["user.name"] == "alice" and e["listener"] == "submission" for e in ok)
    assert count_events(gw, "auth.failure") == 3


def test_authenticated_user_sends_only_as_own_address(shared_gw):
    gw = shared_gw
    with submission(gw) as c:
        login(c, "PLAIN", "alice", ALICE_PW)
        code, reply = c.mail("mallory@example.org")
        assert code == 553 and reply.startswith(b"5.7.1"), (code, reply)
        code, reply = c.mail("alice@billing.example.org")
        assert code == 553, (code, reply)
        c.rset()
        code, _ = c.mail("Alice@Example.ORG")  # addresses compare case-insensitively
        assert code == 250
        c.rset()
        refused = c.sendmail("alice@example.org", ["own@dest.test"],
                             message(subject="from alice", frm="alice@example.org"))
        assert refused == {}
    got = gw.messages_to("own@dest.test")
    assert len(got) == 1
    assert got[0].mail_from == "alice@example.org" and got[0].rcpt_tos == ["own@dest.test"]
    assert b"with ESMTPSA" in got[0].data  # TLS and AUTH recorded in Received
    acc = gw.wait_event(lambda e: e["event.action"] == "message.accepted")
    assert acc["user.name"] == "alice" and acc["listener"] == "submission"
    refusals = [e for e in gw.events() if e["event.action"] == "smtp.mail_refused"]
    assert {e["email.from.address"] for e in refusals} >= {"mallory@example.org",
                                                            "alice@billing.example.org"}
    assert all(e["event.reason"] == "sender_not_owned" for e in refusals)


def test_domain_sender_entry_allows_any_address_in_that_domain(shared_gw):
    gw = shared_gw
    with submission(gw) as c:
        login(c, "LOGIN", "billing", BILLING_PW)
        for allowed in ("claims@billing.example.org", "Statements@BILLING.example.org"):
            code, reply = c.mail(allowed)
            assert code == 250, (allowed, code, reply)
            c.rset()
        for foreign in ("claims@example.org", "x@sub.billing.example.org",
                        "x@evilbilling.example.org", "billing.example.org@attacker.test"):
            code, reply = c.mail(foreign)
            assert code == 553, (foreign, code, reply)
        refused = c.sendmail("claims@billing.example.org", ["payer@dest.test"],
                             message(frm="claims@billing.example.org", to="payer@dest.test"))
        assert refused == {}
    got = gw.messages_to("payer@dest.test")
    assert got[0].mail_from == "claims@billing.example.org"
    assert got[0].rcpt_tos == ["payer@dest.test"]


def test_implicit_tls_submission_delivers(shared_gw):
    gw = shared_gw
    with smtplib.SMTP_SSL("127.0.0.1", gw.submissions, timeout=10,
                          context=no_verify_context()) as c:
        c.ehlo("client.test")
        assert c.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert not c.has_extn("starttls")
        assert "PLAIN" in c.esmtp_features["auth"].split()
        code, _ = c.mail("alice@example.org")
        assert code == 530  # TLS alone is not authentication
        c.rset()
        code, _ = login(c, "PLAIN", "alice", ALICE_PW)
        assert code == 235
        assert c.sendmail("alice@example.org", ["implicit@dest.test"], message()) == {}
    got = gw.messages_to("implicit@dest.test")[0]
    assert got.mail_from == "alice@example.org"
    assert b"with ESMTPSA" in got.data
    ev = [e for e in gw.events() if e["event.action"] == "auth.success"]
    assert ev and ev[0]["listener"] == "submissions"


# --------------------------------------------------------------------------- TLS 1.2 floor


def _legacy_context(maximum: ssl.TLSVersion) -> ssl.SSLContext:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = maximum
        # OpenSSL 3 refuses TLS < 1.2 at its default security level; level 0 lets the client
        # offer it, so a refusal can only come from the server.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


@pytest.fixture(scope="module")
def tls11_client() -> ssl.SSLContext:
    """A client context that offers at most TLS 1.1, after proving against a local TLS 1.1
    server that this OpenSSL can still speak it; otherwise the test would prove nothing."""
    import trustme

    ca = trustme.CA()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("127.0.0.1").configure_cert(srv)
        srv.minimum_version = ssl.TLSVersion.TLSv1
        srv.maximum_version = ssl.TLSVersion.TLSv1_1
        try:
            srv.set_ciphers("DEFAULT:@SECLEVEL=0")
        except ssl.SSLError as exc:
            pytest.skip(f"local OpenSSL ({ssl.OPENSSL_VERSION}) has no TLS 1.1 ciphers: {exc}")
    client = _legacy_context(ssl.TLSVersion.TLSv1_1)
    result: dict[str, Any] = {}
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        ls.settimeout(5)

        def serve() -> None:
            try:
                conn, _ = ls.accept()
                conn.settimeout(5)
                with srv.wrap_socket(conn, server_side=True) as s:
                    result["server"] = s.version()
            except Exception as exc:
                result["server_error"] = exc

        t = threading.Thread(target=serve)
        t.start()
        try:
            with socket.create_connection(ls.getsockname(), timeout=5) as raw, \
                    client.wrap_socket(raw) as s:
                result["client"] = s.version()
        except (ssl.SSLError, OSError) as exc:
            result["client_error"] = exc
        t.join(10)
    if result.get("client") != "TLSv1.1":
        pytest.skip(f"local OpenSSL ({ssl.OPENSSL_VERSION}) cannot negotiate TLS 1.1 even with "
                    f"itself at SECLEVEL=0 ({result}), so a refusal by the gateway would "
                    "prove nothing")
    return client


def _handshake(gw: GatewayProc | SharedView, listener: str, ctx: ssl.SSLContext) -> str:
    """Return the negotiated TLS version on a listener (STARTTLS or implicit TLS)."""
    if listener == "submission":
        raw = RawSMTP(gw.submission, timeout=10)
        raw.ehlo()
        raw.starttls(ctx)
        tls = raw.sock
    else:
        sock = socket.create_connection(("127.0.0.1", gw.submissions), timeout=10)
        tls = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
        raw = None
    try:
        assert isinstance(tls, ssl.SSLSocket)
        return str(tls.version())
    finally:
        tls.close()
        if raw is not None:
            raw.close()


def test_tls_below_1_2_is_refused(shared_gw, tls11_client):
    gw = shared_gw
    for listener in ("submission", "submissions"):
        with pytest.raises(ssl.SSLError) as err:
            _handshake(gw, listener, tls11_client)
        # A protocol_version alert is the polite refusal; closing the connection
        # mid-handshake (EOF) is a refusal too. Anything else (no shared cipher, certificate)
        # would mean the client side is what failed, not the version floor.
        text = str(err.value).upper()
        assert any(k in text for k in ("PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL", "EOF")), \
            (listener, err.value)
        # control: the same legacy-capable client capped at 1.2 connects
        assert _handshake(gw, listener, _legacy_context(ssl.TLSVersion.TLSv1_2)) == "TLSv1.2", \
            listener
        # and the listener still serves a normal client afterwards
        assert _handshake(gw, listener, no_verify_context()) in ("TLSv1.2", "TLSv1.3")
    assert_no_traceback(gw)


# --------------------------------------------------------------------------- swaks


def _swaks_tls_supported() -> bool:
    if shutil.which("swaks") is None:
        return False
    out = subprocess.run(["swaks", "--support"], capture_output=True, text=True, timeout=30)
    return "TLS supported" in out.stdout + out.stderr


needs_swaks = pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")


def swaks(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["swaks", "--ehlo", "client.test", "--timeout", "10",
                           "--header", "Subject: swaks test", *args],
                          capture_output=True, text=True, timeout=60)


@needs_swaks
def test_swaks_starttls_auth_plain(shared_gw):
    if not _swaks_tls_supported():
        pytest.skip("swaks was installed without TLS support (Debian package "
                    "libnet-ssleay-perl is missing; it is only a Recommends of swaks)")
    gw = shared_gw
    r = swaks("--server", f"127.0.0.1:{gw.submission}", "--tls",
              "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", ALICE_PW,
              "--from", "alice@example.org", "--to", "swaks@dest.test")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "235 2.7.0" in r.stdout
    assert "250 2.0.0 Ok: queued as" in r.stdout
    got = gw.messages_to("swaks@dest.test")[0]
    assert got.mail_from == "alice@example.org" and got.rcpt_tos == ["swaks@dest.test"]
    assert b"Subject: swaks test" in got.data


@needs_swaks
def test_swaks_is_no_open_relay(auth_gw, sink):
    gw = auth_gw("trusted_networks=[10.99.0.0/16]")
    r = swaks("--server", f"127.0.0.1:{gw.relay}",
              "--from", "alice@example.org", "--to", "victim@dest.test")
    assert r.returncode != 0
    assert "554 5.7.1 Relay access denied" in r.stdout, r.stdout
    # submission without AUTH: refused before any recipient is taken
    r = swaks("--server", f"127.0.0.1:{gw.submission}",
              "--from", "alice@example.org", "--to", "victim@dest.test")
    assert r.returncode != 0
    assert "530 5.7.0 Authentication required" in r.stdout, r.stdout
    if _swaks_tls_supported():
        r = swaks("--server", f"127.0.0.1:{gw.submission}", "--tls",
                  "--from", "alice@example.org", "--to", "victim@dest.test")
        assert r.returncode != 0
        assert "530 5.7.0 Authentication required" in r.stdout, r.stdout
    gw.wait_event(lambda e: e["event.action"] == "smtp.relay_denied"
                  and e["email.to.address"] == "victim@dest.test")
    assert not any(e["event.action"] == "message.accepted" for e in gw.events())
    time.sleep(0.5)
    assert sink.messages == []


# --------------------------------------------------------------------------- AUTH abuse


def test_auth_failures_lock_out_and_passwords_never_logged(auth_gw):
    # ip_failure_factor=1: the address locks after as many failures as a user does
    gw = auth_gw("auth.max_failures=3", "auth.ip_failure_factor=1")
    with submission(gw) as c:
        for i, wrong in enumerate(WRONG_PWS):
            with pytest.raises(smtplib.SMTPAuthenticationError) as bad:
                login(c, "PLAIN" if i % 2 == 0 else "LOGIN", "alice", wrong)
            assert bad.value.smtp_code == 535, bad.value
        # locked now: even the right password is refused, with a temporary error
        with pytest.raises(smtplib.SMTPAuthenticationError) as locked:
            login(c, "PLAIN", "alice", ALICE_PW)
        assert locked.value.smtp_code == 454, locked.value
        assert locked.value.smtp_error.startswith(b"4.7.0")
        code, _ = c.mail("alice@example.org")
        assert code == 530
    # the IP is locked, for any user
    with submission(gw) as c, pytest.raises(smtplib.SMTPAuthenticationError) as locked:
        login(c, "LOGIN", "billing", BILLING_PW)
    assert locked.value.smtp_code == 454
    # the user is locked, from any IP
    with submission(gw, source="127.0.0.2") as c, \
            pytest.raises(smtplib.SMTPAuthenticationError) as locked:
        login(c, "PLAIN", "alice", ALICE_PW)
    assert locked.value.smtp_code == 454
    # another user from another IP is not affected
    with submission(gw, source="127.0.0.2") as c:
        code, _ = login(c, "PLAIN", "billing", BILLING_PW)
        assert code == 235

    events = gw.events()
    failures = [e for e in events if e["event.action"] == "auth.failure"]
    assert [e["auth.failures"] for e in failures] == [1, 2, 3]
    assert all(e["user.name"] == "alice" and e["source.ip"] == "127.0.0.1" for e in failures)
    lockouts = [e for e in events if e["event.action"] == "auth.lockout"]
    assert lockouts and lockouts[0]["auth.failures"] == 3
    refused = [e for e in events if e["event.action"] == "auth.refused"]
    assert len(refused) == 3 and all(e["event.reason"] == "locked_out" for e in refused)

    audit_text = (gw.var / "log" / "audit.jsonl").read_text(errors="replace")
    stdout_text = gw.out.read_text(errors="replace")
    assert "auth.failure" in stdout_text  # the stdout log is really being written
    secrets = [ALICE_PW, BILLING_PW, *WRONG_PWS]
    encoded = [plain_blob(u, p) for u in ("alice", "billing") for p in secrets]
    encoded += [base64.b64encode(p.encode()).decode() for p in secrets]
    for where, text in (("audit log", audit_text), ("stdout log", stdout_text)):
        for s in secrets + encoded:
            assert s not in text, f"a password ({s[:6]}...) appears in the {where}"
    assert_no_traceback(gw)


def test_disabled_user_can_no_longer_authenticate(auth_gw):
    gw = auth_gw()
    with submission(gw) as c:
        assert login(c, "PLAIN", "alice", ALICE_PW)[0] == 235

    r = gw.cli("user", "disable", "alice")
    assert r.returncode == 0, r.stderr
    reload_gateway(gw)
    for mechanism in ("PLAIN", "LOGIN"):
        with submission(gw) as c, pytest.raises(smtplib.SMTPAuthenticationError) as bad:
            login(c, mechanism, "alice", ALICE_PW)
        assert bad.value.smtp_code == 535  # same answer as a wrong password
    # other users are unaffected
    with submission(gw) as c:
        assert login(c, "PLAIN", "billing", BILLING_PW)[0] == 235
    failures = [e for e in gw.events() if e["event.action"] == "auth.failure"]
    assert len(failures) == 2 and all(e["user.name"] == "alice" for e in failures)
    assert_no_traceback(gw)
