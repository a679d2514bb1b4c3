"""Encryption round trips checked by independent tools: the ``gpg`` command line with the
recipient's secret key (its own GnuPG home) and ``openssl cms`` decrypt what the Encryptor
produced to the original MIME entity, attachments included; signatures verify; expired and
revoked keys give NoKey with the reason; mixed recipients each get their own form; a 25 MB
attachment is encrypted within bounded memory (peak RSS growth measured in a child process).
Synthetic data only."""

from __future__ import annotations

import email
import email.policy
import json
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from gateway.encrypt import Encrypted, Encryptor, NoKey, audit_fields, key_problem_notice
from gateway.encrypt.encryptor import Signing
from gateway.encrypt.entity import split
from gateway.encrypt.keystore import KeyStore
from tests.unit.test_encrypt_keys import (
    NOW,
    Pki,
    new_store,
    openssl_decrypt,
    pem,
    pki,
    sample_message,
    store_dirs,
)

pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "gpg", "openssl"], capture_output=True).returncode != 0,
    reason="needs gpg (Debian gnupg) and openssl")
__all__ = ["pki", "store_dirs"]  # fixtures


def _parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def _check_entity(original: bytes, inner: bytes, protected: bool = True) -> None:
    """``inner`` is the original body, byte for byte, under its Content-* fields (and, when
    protected, copies of the addressing fields and the real Subject)."""
    body = bytes(split(original).body)
    assert inner.endswith(body)
    head = inner[: len(inner) - len(body)]
    im = _parse(inner)
    om = _parse(original)
    if protected:
        assert im["Subject"] == om["Subject"]
        assert 'protected-headers="v1"' in head.decode()
    atts = {p.get_filename(): p.get_content() for p in im.iter_attachments()}
    assert atts == {p.get_filename(): p.get_content() for p in om.iter_attachments()}


def _outer_ok(original: bytes, out: bytes, ctype: str) -> EmailMessage:
    om, msg = _parse(original), _parse(out)
    for h in ("From", "To", "Date", "Message-ID"):
        assert msg[h] == om[h]
    assert msg["Subject"] == "..."
    assert msg.get_content_type() == ctype
    assert b"patient" not in out and b"Synthetic test body" not in out
    assert all(line.endswith(b"\r") or not line for line in out.split(b"\n")[:-1])  # CRLF
    return msg


def _armored(msg: EmailMessage) -> bytes:
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["application/pgp-encrypted",
                                                    "application/octet-stream"]
    assert msg.get_param("protocol") == "application/pgp-encrypted"
    payload = parts[1].get_payload(decode=True)
    assert isinstance(payload, bytes) and payload.startswith(b"-----BEGIN PGP MESSAGE-----")
    return payload


@pytest.fixture
def store(pki: Pki, store_dirs: Path) -> Iterator[KeyStore]:
    st = new_store(store_dirs)
    for party in (pki.alice, pki.old, pki.rev):
        st.import_data(party.public, NOW)
    st.import_data(pki.rev_revocation, NOW)
    yield st


def _smime_party(pki: Pki, address: str, gcm: bool, st: KeyStore,
                 rsa_key: bool = True) -> tuple[Path, Path]:
    cert, key = pki.ca.issue(address, rsa_key=rsa_key)
    cpath = pki.smime_dir / f"{address}.crt"
    kpath = pki.smime_dir / f"{address}.key"
    cpath.write_bytes(pem(cert))
    kpath.write_bytes(key)
    st.import_data(pem(cert), NOW, gcm=gcm)
    return cpath, kpath


def test_pgp_round_trip_with_gpg(pki: Pki, store: KeyStore) -> None:
    raw = sample_message("Alice Partner <alice@partner.test>")
    res = Encryptor(store).encrypt_for(raw, "alice@partner.test", NOW)
    assert isinstance(res, Encrypted), res
    assert (res.method, res.fingerprint, res.signed, res.source) == (
        "pgp", pki.alice.fingerprint, False, "keyring")
    msg = _outer_ok(raw, res.message, "multipart/encrypted")
    inner = pki.recipients.decrypt(_armored(msg))
    _check_entity(raw, inner)
    fields = audit_fields(res)
    assert fields["encrypt.method"] == "pgp" and fields["event.outcome"] == "success"


def test_pgp_signed_by_the_organisation(pki: Pki, store: KeyStore) -> None:
    store.keyring.import_data(pki.org_secret)
    pki.recipients.run("--import", data=pki.org.export(pki.org_fpr))
    raw = sample_message("alice@partner.test")
    enc = Encryptor(store, Signing(pgp_key=pki.org_fpr))
    res = enc.encrypt_for(raw, "alice@partner.test", NOW)
    assert isinstance(res, Encrypted) and res.signed
    inner, status = pki.recipients.decrypt_verbose(_armored(_parse(res.message)))
    assert f"VALIDSIG {pki.org_fpr}" in status or "GOODSIG" in status
    _check_entity(raw, inner)
    # the organisation's own secret key is never taken for a recipient's key
    assert isinstance(enc.encrypt_for(raw, "secure@example.org", NOW), NoKey)


@pytest.mark.parametrize("gcm", [True, False])
def test_smime_round_trip_with_openssl(pki: Pki, store: KeyStore, gcm: bool) -> None:
    address = f"carol-{'gcm' if gcm else 'cbc'}@clinic.test"
    cpath, kpath = _smime_party(pki, address, gcm, store)
    raw = sample_message(address)
    res = Encryptor(store).encrypt_for(raw, address, NOW)
    assert isinstance(res, Encrypted), res
    assert res.method == "smime" and res.algorithm == ("aes-256-gcm" if gcm else "aes-256-cbc")
    msg = _outer_ok(raw, res.message, "application/pkcs7-mime")
    assert msg.get_param("smime-type") == ("authEnveloped-data" if gcm else "enveloped-data")
    der = msg.get_payload(decode=True)
    assert isinstance(der, bytes)
    printed = subprocess.run(["openssl", "cms", "-cmsout", "-print", "-inform", "DER"],
                             input=der, capture_output=True, check=True).stdout.decode()
    assert ("authEnvelopedData" in printed) == gcm
    if not gcm:
        assert "aes-256-cbc" in printed
    else:
        assert "aes-256-gcm" in printed
    inner = openssl_decrypt(res.message, cpath, kpath)
    _check_entity(raw, inner)


def test_smime_gcm_by_config_and_ec_recipient(pki: Pki, store: KeyStore) -> None:
    cpath, kpath = _smime_party(pki, "erin@lab.test", False, store, rsa_key=False)
    raw = sample_message("erin@lab.test")
    res = Encryptor(store, gcm_recipients=("lab.test",)).encrypt_for(raw, "erin@lab.test", NOW)
    assert isinstance(res, Encrypted) and res.algorithm == "aes-256-gcm"
    _check_entity(raw, openssl_decrypt(res.message, cpath, kpath))


def test_smime_signed_then_encrypted(pki: Pki, store: KeyStore, tmp_path: Path) -> None:
    cpath, kpath = _smime_party(pki, "frank@clinic.test", False, store)
    org_cert, org_key = pki.ca.issue("secure@example.org")
    (tmp_path / "org.crt").write_bytes(pem(org_cert))
    (tmp_path / "org.key").write_bytes(org_key)
    (tmp_path / "ca.crt").write_bytes(pem(pki.ca.cert))
    raw = sample_message("frank@clinic.test")
    enc = Encryptor(store, Signing(smime_cert=tmp_path / "org.crt",
                                   smime_key=tmp_path / "org.key"))
    res = enc.encrypt_for(raw, "frank@clinic.test", NOW)
    assert isinstance(res, Encrypted) and res.signed
    signed = openssl_decrypt(res.message, cpath, kpath)
    assert _parse(signed).get_content_type() == "multipart/signed"
    # not -binary: OpenSSL 3.0's multipart reader in binary mode keeps the CR of the CRLF
    # that belongs to the closing delimiter (RFC 2046) and fails its own check; our content
    # is canonical CRLF already, so text mode verifies the exact bytes
    verified = subprocess.run(
        ["openssl", "cms", "-verify", "-CAfile", str(tmp_path / "ca.crt"),
         "-purpose", "any"], input=signed, capture_output=True, check=False)
    assert verified.returncode == 0, verified.stderr.decode()
    _check_entity(raw, verified.stdout)


def test_mixed_recipients_each_get_their_form(pki: Pki, store: KeyStore) -> None:
    _smime_party(pki, "carol@clinic.test", True, store)
    enc = Encryptor(store)
    rcpts = ["alice@partner.test", "carol@clinic.test", "nobody@elsewhere.test",
             "old@partner.test", "rev@partner.test"]
    raw = sample_message(", ".join(rcpts))
    got = {r: enc.encrypt_for(raw, r, NOW) for r in rcpts}
    a, c = got["alice@partner.test"], got["carol@clinic.test"]
    assert isinstance(a, Encrypted) and a.method == "pgp"
    assert isinstance(c, Encrypted) and c.method == "smime"
    assert got["nobody@elsewhere.test"] == NoKey("nobody@elsewhere.test", "none")
    old, rev = got["old@partner.test"], got["rev@partner.test"]
    assert isinstance(old, NoKey) and old.reason == "expired" and old.notify_sender
    assert old.fingerprint == pki.old.fingerprint and old.method == "pgp"
    assert isinstance(rev, NoKey) and rev.reason == "revoked" and rev.notify_sender
    assert not got["nobody@elsewhere.test"].notify_sender  # type: ignore[union-attr]
    notice = key_problem_notice(old, "doctor@example.org", "secure-messages@example.org",
                                "Example Health", "phigate.example.org", NOW)
    text = notice.decode()
    assert "old@partner.test" in text and pki.old.fingerprint in text and "expired" in text
    assert "patient" not in text and "4711" not in text  # nothing of the original
    assert audit_fields(rev)["event.reason"] == "encrypt_revoked"


def test_tool_failure_is_nokey_error_never_clear(pki: Pki, store: KeyStore) -> None:
    _smime_party(pki, "gina@clinic.test", False, store)
    res = Encryptor(store, openssl="/nonexistent/openssl").encrypt_for(
        sample_message("gina@clinic.test"), "gina@clinic.test", NOW)
    assert isinstance(res, NoKey) and res.reason == "error" and not res.notify_sender
    assert res.error_type == "FileNotFoundError"


def test_lf_only_message_is_canonicalised(pki: Pki, store: KeyStore) -> None:
    raw = sample_message("alice@partner.test").replace(b"\r\n", b"\n")
    res = Encryptor(store, protect_subject=False).encrypt_for(raw, "alice@partner.test", NOW)
    assert isinstance(res, Encrypted)
    msg = _parse(res.message)
    assert msg["Subject"] == "Results for patient 4711"  # protection off: subject kept outside
    inner = pki.recipients.decrypt(_armored(msg))
    assert b"\n" not in inner.replace(b"\r\n", b"")
    assert inner.endswith(bytes(split(raw).body).replace(b"\n", b"\r\n"))


_BIG = r"""
import gc, json, os, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from gateway.encrypt import Encryptor
from gateway.encrypt.keystore import KeyStore
from gateway.encrypt.pgp import Keyring
from gateway.encrypt.smime import CertStore
from tests.unit.test_encrypt_keys import sample_message
base, rcpt, out = Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
raw = sample_message(rcpt, attachment=os.urandom(25 * 1024 * 1024))
store = KeyStore(Keyring(base / "gnupg"), CertStore(base / "smime"))
enc = Encryptor(store)
enc.encrypt_for(b"Subject: warm\r\n\r\nx\r\n", rcpt, time.time())  # imports, caches
def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)
gc.collect()
Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS")
res = enc.encrypt_for(raw, rcpt, time.time())
after = status("VmHWM")
out.write_bytes(res.message)
print(json.dumps({"raw": len(raw), "out": len(res.message), "before": before,
                  "growth": after - before, "method": res.method}))
"""


@pytest.mark.parametrize("kind", ["pgp", "smime"])
def test_25mb_attachment_bounded_memory(pki: Pki, store: KeyStore, tmp_path: Path,
                                        kind: str) -> None:
    rcpt = "alice@partner.test" if kind == "pgp" else "hank@clinic.test"
    if kind == "smime":
        cpath, kpath = _smime_party(pki, rcpt, True, store)
    out = tmp_path / "big.eml"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", _BIG, str(root), str(store.keyring.home.parent),
                           rcpt, str(out)], capture_output=True, check=False, timeout=240)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    report = json.loads(proc.stdout)
    assert report["method"] == kind
    growth_mb = report["growth"] / 2**20
    print(f"\n{kind}: message {report['raw'] / 2**20:.1f} MB -> {report['out'] / 2**20:.1f} MB, "
          f"peak RSS growth {growth_mb:.1f} MB")
    # the result itself has to exist once; no second or third copy of the message
    assert report["growth"] < report["out"] + 24 * 2**20
    data = out.read_bytes()
    if kind == "pgp":
        inner = pki.recipients.decrypt(_armored(_parse(data)))
    else:
        inner = openssl_decrypt(data, cpath, kpath)
    big = [p for p in _parse(inner).iter_attachments() if p.get_filename() == "scan.bin"]
    content = big[0].get_content()
    assert isinstance(content, bytes) and len(content) == 25 * 1024 * 1024
