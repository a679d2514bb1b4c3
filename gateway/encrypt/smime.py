"""S/MIME (RFC 8551): the store of recipients' certificates and enveloped encryption.

Encryption runs the ``openssl cms`` command, streamed (stdin in, indefinite-length BER out to a
temporary file of ciphertext): AES-256-GCM (AuthEnvelopedData, RFC 5083/5084) for recipients
marked as able to read it, else AES-256-CBC (EnvelopedData). Why the command and not
``cryptography``'s ``PKCS7EnvelopeBuilder``: that builder (cryptography 50) offers AES-CBC only,
RSA recipients only, and holds the whole message in memory; the command does GCM, EC
recipients (ECDH) and streams a 25 MB message. Certificates are parsed with ``cryptography``.

Certificates live in ``encrypt.smime_dir`` as ``FINGERPRINT.pem`` with ``FINGERPRINT.json``
beside it (``{"gcm": bool, "imported": epoch}``). A certificate is trusted because an admin
imported it, like an OpenPGP key; validity dates and key usage are checked here.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

GCM = "aes-256-gcm"
CBC = "aes-256-cbc"


class SmimeError(Exception):
    """openssl failed, or a certificate file cannot be read; no message content inside."""


@dataclass(frozen=True)
class SmimeCert:
    fingerprint: str  # SHA-256 of the DER certificate, upper-case hex
    addresses: tuple[str, ...]
    subject: str
    issuer: str
    serial: str
    not_before: float
    not_after: float
    can_encrypt: bool  # RSA or EC key; key usage and extended key usage allow mail encryption
    gcm: bool  # the recipient's client reads AES-256-GCM (AuthEnvelopedData)
    path: Path

    def problem(self, now: float) -> str | None:
        if now >= self.not_after:
            return "expired"
        if not self.can_encrypt or now < self.not_before:
            return "unusable"
        return None


def parse_certificates(data: bytes) -> list[x509.Certificate]:
    """Certificates in PEM, DER or a PKCS#7 bundle (.p7b/.p7c, PEM or DER)."""
    if b"-----BEGIN PKCS7-----" in data:
        return pkcs7.load_pem_pkcs7_certificates(data)
    if b"-----BEGIN CERTIFICATE-----" in data:
        return x509.load_pem_x509_certificates(data)
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        pass
    try:
        return pkcs7.load_der_pkcs7_certificates(data)
    except ValueError:
        raise SmimeError("not a certificate (PEM, DER or PKCS#7)") from None


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex().upper()


def addresses(cert: x509.Certificate) -> tuple[str, ...]:
    out: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        out.extend(a.lower() for a in san.get_values_for_type(x509.RFC822Name))
    except x509.ExtensionNotFound:
        pass
    for attr in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
        value = str(attr.value).lower()
        if value not in out:
            out.append(value)
    return tuple(out)


def _can_encrypt(cert: x509.Certificate) -> bool:
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return False
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if isinstance(key, rsa.RSAPublicKey) and not ku.key_encipherment:
            return False
        if isinstance(key, ec.EllipticCurvePublicKey) and not ku.key_agreement:
            return False
    except x509.ExtensionNotFound:
        pass
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.EMAIL_PROTECTION not in eku and \
                ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
            return False
    except x509.ExtensionNotFound:
        pass
    return True


def describe(cert: x509.Certificate, gcm: bool, path: Path) -> SmimeCert:
    return SmimeCert(
        fingerprint=fingerprint(cert),
        addresses=addresses(cert),
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=format(cert.serial_number, "X"),
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        can_encrypt=_can_encrypt(cert),
        gcm=gcm,
        path=path,
    )


class CertStore:
    """Recipients' certificates in a folder, one file each."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._cache: tuple[tuple[int, int], list[SmimeCert]] | None = None

    def _stamp(self) -> tuple[int, int]:
        try:
            st = self.folder.stat()
        except FileNotFoundError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_nlink)

    def certs(self) -> list[SmimeCert]:
        stamp = self._stamp()
        if stamp == (0, 0):
            return []
        if self._cache is not None and self._cache[0] == stamp:
            return self._cache[1]
        out: list[SmimeCert] = []
        for pem in sorted(self.folder.glob("*.pem")):
            try:
                cert = x509.load_pem_x509_certificate(pem.read_bytes())
                meta = json.loads(pem.with_suffix(".json").read_text("utf-8")) \
                    if pem.with_suffix(".json").exists() else {}
            except (OSError, ValueError):
                continue  # a stray or broken file is not a recipient's certificate
            out.append(describe(cert, bool(meta.get("gcm", False)), pem))
        self._cache = (stamp, out)
        return out

    def for_address(self, address: str) -> list[SmimeCert]:
        addr = address.lower()
        found = [c for c in self.certs() if addr in c.addresses]
        return sorted(found, key=lambda c: c.not_before, reverse=True)

    def import_data(self, data: bytes, gcm: bool = False) -> list[str]:
        """Store each end-entity certificate in ``data`` (CA certificates are skipped)."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        done: list[str] = []
        for cert in parse_certificates(data):
            if not addresses(cert):
                continue  # a CA or server certificate: names no mailbox
            fp = fingerprint(cert)
            path = self.folder / f"{fp}.pem"
            _write(path, cert.public_bytes(serialization.Encoding.PEM))
            _write(path.with_suffix(".json"),
                   json.dumps({"gcm": gcm, "imported": int(time.time())}).encode())
            done.append(fp)
        self._cache = None
        return done

    def delete(self, fp: str) -> bool:
        path = self.folder / f"{fp.upper()}.pem"
        if not path.exists():
            return False
        path.unlink()
        path.with_suffix(".json").unlink(missing_ok=True)
        self._cache = None
        return True


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _pipe(args: list[str], chunks: Iterator[bytes | memoryview], out: IO[bytes]) -> None:
    """Run ``args`` with ``chunks`` on its stdin and its stdout into ``out``."""
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    errors: list[bytes] = []
    stderr = proc.stderr

    def drain() -> None:  # read stderr alongside, so a chatty openssl cannot block on it
        errors.append(stderr.read()[:2000])

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        for chunk in chunks:
            proc.stdin.write(chunk)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    rc = proc.wait()
    reader.join()
    if rc != 0:
        first = (errors[0] if errors else b"").decode("utf-8", "replace").strip()
        raise SmimeError(f"openssl {args[1]} {args[2]} failed (exit {rc}): "
                         f"{first.splitlines()[0][:200] if first else 'no message'}")


def sign(openssl: str, cert: Path, key: Path, entity: Iterator[bytes | memoryview]) -> bytes:
    """A detached CMS signature (DER, SHA-256) over ``entity``."""
    with tempfile.TemporaryFile() as out:
        _pipe([openssl, "cms", "-sign", "-binary", "-outform", "DER", "-md", "sha256",
               "-signer", str(cert), "-inkey", str(key)], entity, out)
        out.seek(0)
        return out.read()


def multipart_signed(boundary: str, entity: Iterator[bytes | memoryview],
                     signature: bytes) -> Iterator[bytes | memoryview]:
    """RFC 8551 section 3.5.3: the entity and its detached signature."""
    b = boundary.encode("ascii")
    yield (b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";\r\n'
           b' micalg=sha-256; boundary="' + b + b'"\r\n\r\n'
           b"This is a cryptographically signed message in MIME format.\r\n\r\n--" + b + b"\r\n")
    yield from entity
    yield (b"\r\n--" + b + b"\r\n"
           b'Content-Type: application/pkcs7-signature; name="smime.p7s"\r\n'
           b"Content-Transfer-Encoding: base64\r\n"
           b'Content-Disposition: attachment; filename="smime.p7s"\r\n\r\n')
    yield base64.encodebytes(signature).replace(b"\n", b"\r\n")
    yield b"\r\n--" + b + b"--\r\n"


def encrypt(openssl: str, cert: Path, algorithm: str, entity: Iterator[bytes | memoryview],
            out: IO[bytes]) -> None:
    """Encrypt ``entity`` to ``cert``; write the base64 body (CRLF lines) to ``out``."""
    with tempfile.TemporaryFile(prefix="phigate-smime-") as der:
        _pipe([openssl, "cms", "-encrypt", "-binary", "-stream", "-outform", "DER",
               f"-{algorithm}", "-recip", str(cert)], entity, der)
        der.seek(0)
        while True:
            block = der.read(57 * 16384)  # whole 76-character lines
            if not block:
                return
            out.write(base64.encodebytes(block).replace(b"\n", b"\r\n"))


def smime_fields(algorithm: str) -> list[bytes]:
    kind = b"authEnveloped-data" if algorithm == GCM else b"enveloped-data"
    return [b"Content-Type: application/pkcs7-mime; smime-type=" + kind + b';\r\n'
            b' name="smime.p7m"',
            b'Content-Disposition: attachment; filename="smime.p7m"',
            b"Content-Transfer-Encoding: base64",
            b"Content-Description: S/MIME encrypted message"]
