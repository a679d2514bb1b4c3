"""Users file (argon2 hashes, sender rights) and AUTH failure throttling."""

from __future__ import annotations

import pytest

from gateway.authguard import AuthGuard
from gateway.config import ConfigError
from gateway.users import User, UserDB


def test_user_add_verify_disable(tmp_path):
    path = tmp_path / "users.yaml"
    db = UserDB.load(path)
    db.set_user("alice", password="correct horse", senders=["alice@example.org",
                                                            "@billing.example.org"])
    db.save()
    text = path.read_text()
    assert "correct horse" not in text and "$argon2id$" in text
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    db2 = UserDB.load(path)
    assert db2.verify("alice", "correct horse") is not None
    assert db2.verify("alice", "wrong") is None
    assert db2.verify("mallory", "correct horse") is None
    db2.set_user("alice", disabled=True)
    db2.save()
    assert UserDB.load(path).verify("alice", "correct horse") is None


def test_sender_rights():
    u = User("alice", "", ("Alice@Example.org", "@billing.example.org", "clinic.example.org"))
    assert u.may_send_as("alice@example.org")
    assert not u.may_send_as("bob@example.org")
    assert u.may_send_as("any@billing.example.org")
    assert u.may_send_as("x@clinic.example.org")
    assert not u.may_send_as("x@evil-billing.example.org")


def test_bad_users_file_has_line(tmp_path):
    path = tmp_path / "users.yaml"
    path.write_text("users:\n  bob:\n    password: plaintext\n  carol:\n    pasword: x\n")
    with pytest.raises(ConfigError) as exc:
        UserDB.load(path)
    text = "\n".join(exc.value.problems)
    assert f"{path}:2: users.bob.password: expected an argon2 hash" in text
    assert f"{path}:5: users.carol: unknown key 'pasword'" in text


def test_guard_tarpit_then_lockout_then_expiry():
    now = [1000.0]
    g = AuthGuard(max_failures=3, window=600, lockout=900, tarpit=1.0, clock=lambda: now[0],
                  ip_factor=1)
    assert not g.locked("192.0.2.1", "alice")
    assert g.failure("192.0.2.1", "alice") == (1, 1.0, False)
    assert g.failure("192.0.2.1", "alice") == (2, 2.0, False)
    n, _, started = g.failure("192.0.2.1", "alice")
    assert (n, started) == (3, True)
    assert g.locked("192.0.2.1", "alice")
    assert g.locked("192.0.2.99", "alice")  # the user is locked from anywhere
    assert g.locked("192.0.2.1", "bob")  # and the IP for any user
    assert not g.locked("192.0.2.99", "bob")
    now[0] += 901
    assert not g.locked("192.0.2.1", "alice")


def test_guard_window_forgets_old_failures():
    now = [0.0]
    g = AuthGuard(max_failures=3, window=60, lockout=900, tarpit=0.5, clock=lambda: now[0])
    for _ in range(2):
        g.failure("192.0.2.1", "alice")
        now[0] += 61
    n, _, started = g.failure("192.0.2.1", "alice")
    assert n == 1 and not started


def test_guard_ip_tolerates_more_failures_than_one_user():
    now = [0.0]
    g = AuthGuard(max_failures=2, window=600, lockout=900, tarpit=0, clock=lambda: now[0])
    for user in ("a", "b", "c"):
        g.failure("198.51.100.7", user)
    assert not g.locked("198.51.100.7", "d")  # 3 typos by 3 people behind one NAT
    for user in ("d", "e", "f", "g", "h"):
        g.failure("198.51.100.7", user)
    assert g.locked("198.51.100.7", "z")  # 8 failures = 4 x 2: the address is refused
