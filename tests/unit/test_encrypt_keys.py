"""Keys and certificates for the encryption tests, made here (nothing shipped), and the key
store's view of them: lookup by address, expired and revoked keys, import, list and remove.

The helpers are imported by the other test_encrypt* modules. GnuPG homes live under /tmp with
short names (gpg-agent's socket path must stay short) and their agents are stopped after use.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.encrypt.keystore import KeyStore, Missing
from gateway.encrypt.pgp import Keyring
from gateway.encrypt.smime import CertStore

needs_tools = pytest.mark.skipif(shutil.which("gpg") is None or shutil.which("openssl") is None,
                                 reason="needs gpg (Debian gnupg) and openssl")
pytestmark = needs_tools

NOW = dt.datetime.now(dt.UTC).timestamp()


# --------------------------------------------------------------------------- OpenPGP


class GpgHome:
    """A throwaway GnuPG home driven by the gpg command line (the independent tool)."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="pgt", dir="/tmp"))
        os.chmod(self.path, 0o700)

    def run(self, *args: str, data: bytes | None = None) -> bytes:
        proc = subprocess.run(
            ["gpg", "--homedir", str(self.path), "--batch", "--yes", "--quiet",
             "--pinentry-mode", "loopback", "--passphrase", "", *args],
            input=data, capture_output=True, check=False)
        if proc.returncode != 0:
            raise AssertionError(f"gpg {args[0]} failed: {proc.stderr.decode()[-500:]}")
        return proc.stdout

    def gen(self, uid: str, expire: str = "1y", faked_time: str | None = None) -> str:
        extra = ["--faked-system-time", faked_time] if faked_time else []
        self.run(*extra, "--quick-gen-key", uid, "future-default", "default", expire)
        out = self.run("--with-colons", "--list-keys", uid.split("<")[-1].rstrip(">"))
        fprs = [line.split(":")[9] for line in out.decode().splitlines()
                if line.startswith("fpr:")]
        return fprs[0] if fprs else ""

    def newest(self, address: str) -> str:
        out = self.run("--with-colons", "--list-keys", f"<{address}>").decode()
        keys = [ln.split(":") for ln in out.splitlines() if ln.startswith(("pub:", "fpr:"))]
        pairs = [(int(keys[i][5]), keys[i + 1][9]) for i in range(0, len(keys) - 1)
                 if keys[i][0] == "pub" and keys[i + 1][0] == "fpr"]
        return max(pairs)[1]

    def export(self, fpr: str, secret: bool = False) -> bytes:
        return self.run("--armor", "--export-secret-keys" if secret else "--export", fpr)

    def revocation(self, fpr: str) -> bytes:
        text = (self.path / "openpgp-revocs.d" / f"{fpr}.rev").read_bytes()
        return text.replace(b":-----BEGIN PGP PUBLIC KEY BLOCK", b"-----BEGIN PGP PUBLIC KEY BLOCK")

    def decrypt(self, data: bytes) -> bytes:
        return self.run("--decrypt", data=data)

    def decrypt_verbose(self, data: bytes) -> tuple[bytes, str]:
        proc = subprocess.run(
            ["gpg", "--homedir", str(self.path), "--batch", "--status-fd", "2",
             "--pinentry-mode", "loopback", "--passphrase", "", "--decrypt"],
            input=data, capture_output=True, check=False)
        assert proc.returncode == 0, proc.stderr.decode()[-500:]
        return proc.stdout, proc.stderr.decode()

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.path), "--kill", "all"],
                       capture_output=True, check=False)
        shutil.rmtree(self.path, ignore_errors=True)


@dataclass
class PgpParty:
    address: str
    fingerprint: str
    public: bytes


@dataclass
class Pki:
    """Recipients' keys (in their own homes), the organisation's signing key, a test CA."""

    recipients: GpgHome  # holds the recipients' secret keys: the independent decrypter
    alice: PgpParty  # valid key
    old: PgpParty  # expired key
    rev: PgpParty  # revoked key (public key and its revocation, imported separately)
    rev_revocation: bytes
    org: GpgHome
    org_fpr: str
    org_secret: bytes
    ca: CertAuthority
    smime_dir: Path


def make_pki(base: Path) -> Pki:
    rc = GpgHome()
    alice = rc.gen("Alice Partner <alice@partner.test>")
    old = rc.gen("Old Partner <old@partner.test>", "1y", faked_time="20200101T000000")
    rev = rc.gen("Rev Partner <rev@partner.test>")
    org = GpgHome()
    org_fpr = org.gen("Example Health <secure@example.org>")
    smime_dir = base / "smime-keys"
    smime_dir.mkdir()
    return Pki(rc, PgpParty("alice@partner.test", alice, rc.export(alice)),
               PgpParty("old@partner.test", old, rc.export(old)),
               PgpParty("rev@partner.test", rev, rc.export(rev)), rc.revocation(rev),
               org, org_fpr, org.export(org_fpr, secret=True), CertAuthority(), smime_dir)


# --------------------------------------------------------------------------- S/MIME


class CertAuthority:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "phigate test CA")])
        now = dt.datetime.now(dt.UTC)
        self.name = name
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(days=1))
                     .not_valid_after(now + dt.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                     .sign(self.key, hashes.SHA256()))

    def issue(self, address: str, days: float = 30, rsa_key: bool = True,
              not_before_days: float = -1) -> tuple[x509.Certificate, bytes]:
        """(certificate, PEM private key) for ``address``; negative ``days`` = expired."""
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
            rsa.generate_private_key(65537, 2048) if rsa_key else ec.generate_private_key(
                ec.SECP256R1()))
        now = dt.datetime.now(dt.UTC)
        start = now + dt.timedelta(days=not_before_days)
        end = now + dt.timedelta(days=days)
        if end <= start:
            start = end - dt.timedelta(days=30)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
                .issuer_name(self.name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(address)]), False)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=False,
                    key_encipherment=rsa_key, data_encipherment=False,
                    key_agreement=not rsa_key, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False), True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                               False)
                .sign(self.key, hashes.SHA256()))
        pem_key = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cert, pem_key


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def openssl_decrypt(data: bytes, cert_pem: Path, key_pem: Path) -> bytes:
    """``openssl cms -decrypt`` of a whole S/MIME message (headers included)."""
    proc = subprocess.run(["openssl", "cms", "-decrypt", "-recip", str(cert_pem),
                           "-inkey", str(key_pem), "-binary"],
                          input=data, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()[-500:]
    return proc.stdout


# --------------------------------------------------------------------------- messages


def sample_message(to: str, attachment: bytes = b"\x00\x01binary\xff" * 100,
                   subject: str = "Results for patient 4711") -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "Dr Example <doctor@example.org>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = "Mon, 02 Mar 2026 10:00:00 +0000"
    msg["Message-ID"] = "<test-1@example.org>"
    msg.set_content("Synthetic test body: nothing real here.\n")
    msg.add_attachment(attachment, maintype="application", subtype="octet-stream",
                       filename="scan.bin")
    msg.add_attachment(b"%PDF-1.4 synthetic\n", maintype="application", subtype="pdf",
                       filename="letter.pdf")
    return msg.as_bytes()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    p = make_pki(tmp_path_factory.mktemp("pki"))
    yield p
    p.recipients.close()
    p.org.close()


@pytest.fixture
def store_dirs() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="pgs", dir="/tmp"))
    yield base
    subprocess.run(["gpgconf", "--homedir", str(base / "gnupg"), "--kill", "all"],
                   capture_output=True, check=False)
    shutil.rmtree(base, ignore_errors=True)


def new_store(base: Path) -> KeyStore:
    return KeyStore(Keyring(base / "gnupg"), CertStore(base / "smime"))


# --------------------------------------------------------------------------- tests


def test_pgp_lookup_valid_expired_revoked(pki: Pki, store_dirs: Path) -> None:
    store = new_store(store_dirs)
    for party in (pki.alice, pki.old, pki.rev):
        [info] = store.import_data(party.public, NOW)
        assert info.fingerprint == party.fingerprint and info.kind == "pgp"
    found = store.lookup("Alice@Partner.test", NOW)
    assert not isinstance(found, Missing) and found.fingerprint == pki.alice.fingerprint
    old = store.lookup("old@partner.test", NOW)
    assert isinstance(old, Missing) and old.reason == "expired"
    assert old.fingerprint == pki.old.fingerprint and old.expired_at is not None
    assert not isinstance(store.lookup("rev@partner.test", NOW), Missing)
    store.import_data(pki.rev_revocation, NOW)  # the owner revoked it later
    rev = store.lookup("rev@partner.test", NOW)
    assert isinstance(rev, Missing) and rev.reason == "revoked"
    assert store.lookup("nobody@partner.test", NOW) == Missing("none")
    # a key valid now is expired for a clock past its expiry
    later = store.lookup("alice@partner.test", NOW + 2 * 365 * 86400)
    assert isinstance(later, Missing) and later.reason == "expired"
    # exact address only: no substring matches
    assert store.lookup("lice@partner.test", NOW) == Missing("none")


def test_smime_lookup_and_listing(pki: Pki, store_dirs: Path) -> None:
    store = new_store(store_dirs)
    good, _ = pki.ca.issue("carol@clinic.test")
    expired, _ = pki.ca.issue("dave@clinic.test", days=-1)
    [info] = store.import_data(pem(good) + pem(pki.ca.cert), NOW, gcm=True)  # CA skipped
    assert info.kind == "smime" and info.gcm and info.status == "valid"
    store.import_data(expired.public_bytes(serialization.Encoding.DER), NOW)  # DER too
    found = store.lookup("carol@clinic.test", NOW)
    assert not isinstance(found, Missing) and found.kind == "smime"
    assert found.cert is not None and found.cert.gcm
    dave = store.lookup("dave@clinic.test", NOW)
    assert isinstance(dave, Missing) and dave.reason == "expired" and dave.kind == "smime"
    statuses = {i.addresses[0]: i.status for i in store.entries(NOW)}
    assert statuses == {"carol@clinic.test": "valid", "dave@clinic.test": "expired"}


def test_pgp_preferred_over_smime_and_remove(pki: Pki, store_dirs: Path) -> None:
    store = new_store(store_dirs)
    cert, _ = pki.ca.issue("alice@partner.test")
    store.import_data(pem(cert), NOW)
    found = store.lookup("alice@partner.test", NOW)
    assert not isinstance(found, Missing) and found.kind == "smime"
    store.import_data(pki.alice.public, NOW)
    found = store.lookup("alice@partner.test", NOW)
    assert not isinstance(found, Missing) and found.kind == "pgp"
    removed = store.remove(pki.alice.fingerprint, NOW)
    assert [r.fingerprint for r in removed] == [pki.alice.fingerprint]
    found = store.lookup("alice@partner.test", NOW)
    assert not isinstance(found, Missing) and found.kind == "smime"
    assert len(store.remove("alice@partner.test", NOW)) == 1
    assert store.lookup("alice@partner.test", NOW) == Missing("none")


def test_import_refuses_garbage(store_dirs: Path) -> None:
    store = new_store(store_dirs)
    with pytest.raises(ValueError):
        store.import_data(b"not a key at all", NOW)
