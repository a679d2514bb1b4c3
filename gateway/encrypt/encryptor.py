"""The ``encrypt`` transform for one recipient: what delivery calls.

``Encryptor.encrypt_for(raw, recipient, now)`` returns ``Encrypted`` (the message to send to that
recipient instead of ``raw``: PGP/MIME or S/MIME, outer delivery headers kept) or ``NoKey`` (why
not: delivery then uses the portal, and when ``NoKey.notify_sender`` builds
``key_problem_notice`` for the sender). It blocks (gpg and openssl run as child processes):
call it in a thread. DKIM signing comes after it, on the encrypted form.

Memory: the body is streamed to the tool from the caller's buffer without a copy, ciphertext is
written to a temporary file (never plaintext) and read back once as the result, so a message
costs about the size of its encrypted form on top of what the caller already holds.
"""

from __future__ import annotations

import email.policy
import email.utils
import secrets
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path
from typing import IO, Any, Literal

from . import entity, pgp, smime
from .keystore import Found, KeyStore, Missing, Source
from .pgp import Keyring, PgpError
from .smime import CBC, GCM, CertStore, SmimeError
from .wkd import WkdClient

Reason = Literal["none", "expired", "revoked", "unusable", "error"]


@dataclass(frozen=True)
class Encrypted:
    message: bytes  # the whole message to send to this recipient (before DKIM signing)
    method: Literal["pgp", "smime"]
    fingerprint: str  # OpenPGP fingerprint, or the certificate's SHA-256
    algorithm: str  # "openpgp" (gpg chooses by the key's preferences), aes-256-gcm, aes-256-cbc
    signed: bool
    source: Source  # keyring, smime_dir or wkd
    subject_protected: bool


@dataclass(frozen=True)
class NoKey:
    recipient: str
    reason: Reason
    method: Literal["pgp", "smime"] | None = None  # the kind of the key that has a problem
    fingerprint: str | None = None
    expired_at: float | None = None
    error_type: str | None = None  # reason "error": the exception's type, for the log

    @property
    def notify_sender(self) -> bool:
        """A key exists but cannot be used: the sender should hear about it."""
        return self.reason in ("expired", "revoked", "unusable")


@dataclass(frozen=True)
class Signing:
    pgp_key: str | None = None  # fingerprint of the organisation's secret key in the keyring
    pgp_passphrase: str | None = None
    smime_cert: Path | None = None
    smime_key: Path | None = None


class Encryptor:
    def __init__(self, store: KeyStore, signing: Signing | None = None,
                 protect_subject: bool = True, gcm_recipients: tuple[str, ...] = (),
                 openssl: str = "openssl") -> None:
        self.store = store
        self.signing = signing or Signing()
        self.protect_subject = protect_subject
        self.gcm_recipients = tuple(g.lower().lstrip("@") for g in gcm_recipients)
        self.openssl = openssl

    @classmethod
    def from_config(cls, cfg: Any) -> Encryptor:
        """Build from a loaded ``Config`` (its ``encrypt`` section)."""
        enc = cfg.encrypt
        keyring = Keyring(enc.keyring, enc.gpg)
        wkd: WkdClient | None = None
        wkd_ring: Keyring | None = None
        if enc.wkd.enabled:
            import ssl

            ctx = ssl.create_default_context(
                cafile=str(enc.wkd.ca_file) if enc.wkd.ca_file else None)
            wkd = WkdClient(enc.wkd.cache_dir, enc.wkd.cache_ttl, enc.wkd.negative_ttl,
                            enc.wkd.timeout, ctx, enc.wkd.port)
            wkd_ring = Keyring(enc.wkd.cache_dir / "gnupg", enc.gpg)
        passphrase = None
        if enc.sign.pgp_passphrase_file is not None:
            passphrase = enc.sign.pgp_passphrase_file.read_text("utf-8").strip("\r\n")
        signing = Signing(enc.sign.pgp_key, passphrase, enc.sign.smime_cert, enc.sign.smime_key)
        return cls(KeyStore(keyring, CertStore(enc.smime_dir), wkd, wkd_ring), signing,
                   enc.protect_subject, enc.smime_gcm, enc.openssl)

    def _gcm(self, recipient: str, cert_gcm: bool) -> bool:
        domain = recipient.rpartition("@")[2].lower()
        return cert_gcm or recipient.lower() in self.gcm_recipients or any(
            domain == g or domain.endswith("." + g) for g in self.gcm_recipients)

    def encrypt_for(self, raw: bytes, recipient: str, now: float) -> Encrypted | NoKey:
        try:
            found = self.store.lookup(recipient, now)
        except (OSError, ValueError) as exc:  # a keyring that cannot be read
            return NoKey(recipient, "error", error_type=type(exc).__name__)
        if isinstance(found, Missing):
            reason: Reason = found.reason  # type: ignore[assignment]
            return NoKey(recipient, reason, found.kind, found.fingerprint, found.expired_at)
        try:
            return self._encrypt(raw, recipient, found)
        except (PgpError, SmimeError, OSError, ValueError) as exc:
            # fail closed: the caller falls back to the portal, never to clear text
            return NoKey(recipient, "error", found.kind, found.fingerprint,
                         error_type=type(exc).__name__)

    def _encrypt(self, raw: bytes, recipient: str, found: Found) -> Encrypted:
        sp = entity.split(raw)
        head = entity.entity_header(sp, self.protect_subject)
        boundary = "=_phigate_" + secrets.token_hex(12)
        with tempfile.TemporaryFile(prefix="phigate-enc-") as out:
            if found.kind == "pgp":
                assert found.keyring is not None
                fields, before, after = pgp.pgp_mime(boundary)
                out.write(entity.outer_header(sp, self.protect_subject, fields))
                out.write(before)
                # a key found through WKD lives in its own keyring; gpg reads it beside the
                # main one, which holds the organisation's signing key
                ring = self.store.keyring
                extra = [] if found.keyring is ring else [found.keyring.home / "pubring.kbx"]
                sign = self.signing.pgp_key
                ring.encrypt(entity.chunks(head, sp.body), found.fingerprint, out, sign=sign,
                             passphrase=self.signing.pgp_passphrase, keyrings=extra)
                out.write(after)
                signed, algorithm = sign is not None, "openpgp"
            else:
                assert found.cert is not None
                algorithm = GCM if self._gcm(recipient, found.cert.gcm) else CBC
                out.write(entity.outer_header(sp, self.protect_subject,
                                              smime.smime_fields(algorithm)))
                signed = self._smime_body(head, sp.body, found.cert.path, algorithm, out)
            out.seek(0)
            message = out.read()
        return Encrypted(message, found.kind, found.fingerprint, algorithm, signed,
                         found.source, self.protect_subject)

    def _smime_body(self, head: bytes, body: memoryview, cert: Path, algorithm: str,
                    out: IO[bytes]) -> bool:
        s = self.signing
        inner: Iterator[bytes | memoryview] = entity.chunks(head, body)
        signed = s.smime_cert is not None and s.smime_key is not None
        if signed:
            assert s.smime_cert is not None and s.smime_key is not None
            sig = smime.sign(self.openssl, s.smime_cert, s.smime_key, inner)
            inner = smime.multipart_signed("=_phigate_s_" + secrets.token_hex(12),
                                           entity.chunks(head, body), sig)
        smime.encrypt(self.openssl, cert, algorithm, inner, out)
        return signed


def audit_fields(result: Encrypted | NoKey) -> dict[str, Any]:
    """The audit fields describing ``result`` (what was done, never the content)."""
    if isinstance(result, Encrypted):
        return {"event.outcome": "success", "encrypt.method": result.method,
                "encrypt.key_fingerprint": result.fingerprint,
                "encrypt.algorithm": result.algorithm, "encrypt.signed": result.signed,
                "encrypt.key_source": result.source, "email.size": len(result.message)}
    return {"event.outcome": "failure", "event.reason": f"encrypt_{result.reason}",
            "encrypt.method": result.method, "encrypt.key_fingerprint": result.fingerprint,
            "encrypt.key_problem": result.reason, "error.type": result.error_type}


_PROBLEM_TEXT: Mapping[str, str] = {
    "expired": "their key has expired",
    "revoked": "their key has been revoked by its owner",
    "unusable": "their key cannot be used for encryption (not yet valid, or not an "
                "encryption key)",
}


def key_problem_notice(problem: NoKey, sender: str, from_address: str, organisation: str,
                       hostname: str, now: float | None = None) -> bytes:
    """A message to the sender: the recipient's key could not be used, the message went
    through the secure portal instead. Names the recipient, the key and the problem; never
    the original subject or any content."""
    now = time.time() if now is None else now
    kind = {"pgp": "OpenPGP key", "smime": "S/MIME certificate"}.get(problem.method or "", "key")
    what = _PROBLEM_TEXT.get(problem.reason, "their key cannot be used")
    if problem.method == "smime":
        what = what.replace("their key", "their certificate")
    when = ""
    if problem.reason == "expired" and problem.expired_at is not None:
        when = time.strftime(" on %d %B %Y", time.gmtime(problem.expired_at))
        what += when
    fp = f"\nFingerprint: {problem.fingerprint}\n" if problem.fingerprint else "\n"
    text = (
        f"Your message to {problem.recipient} was not encrypted with the recipient's "
        f"{kind}: {what}.\n\n"
        "It was delivered securely all the same, through the secure message portal: the "
        "recipient receives a link and proves who they are before reading it.\n\n"
        f"Recipient: {problem.recipient}\n"
        f"Key: {kind}{fp}\n"
        "To have future messages encrypted directly, ask the recipient for a current key and "
        "send it to your mail administrator (who adds it with `phigate keys import`).\n\n"
        f"-- \n{organisation} mail gateway\n")
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = Address(organisation, addr_spec=from_address)
    msg["To"] = sender
    msg["Subject"] = "Encryption key problem for a recipient of your message"
    msg["Date"] = email.utils.formatdate(now, localtime=False)
    msg["Message-ID"] = email.utils.make_msgid(domain=hostname)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(text)
    return msg.as_bytes()


def check_setup(cfg: Any) -> list[str]:
    """Problems with the ``encrypt`` section that only the files can show (for
    ``phigate check-config`` and start-up): the tools, the signing key and certificate."""
    import shutil

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    enc = cfg.encrypt
    where = f"{cfg.source}: encrypt"
    problems: list[str] = []
    for tool, what in ((enc.gpg, "gpg (Debian package gnupg)"),
                       (enc.openssl, "openssl (Debian package openssl)")):
        if shutil.which(tool) is None:
            problems.append(f"{where}: {what} not found; encrypted delivery falls back to "
                            "the portal")
    s = enc.sign
    if s.pgp_key is not None and shutil.which(enc.gpg) is not None:
        ring = Keyring(enc.keyring, enc.gpg)
        if not any(k.fingerprint == s.pgp_key and k.secret for k in ring.all_keys()):
            problems.append(f"{where}.sign.pgp_key: no secret key {s.pgp_key} in {enc.keyring} "
                            f"(import it with gpg --homedir {enc.keyring} --import)")
    if s.smime_cert is not None and s.smime_key is not None:
        try:
            cert = x509.load_pem_x509_certificate(s.smime_cert.read_bytes())
            key = serialization.load_pem_private_key(s.smime_key.read_bytes(), None)
            if cert.public_key().public_bytes(
                    serialization.Encoding.DER,
                    serialization.PublicFormat.SubjectPublicKeyInfo) != key.public_key(
                    ).public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo):
                problems.append(f"{where}.sign: smime_key does not belong to smime_cert")
        except (OSError, ValueError, TypeError) as exc:
            problems.append(f"{where}.sign: cannot load the S/MIME certificate or key "
                            f"({type(exc).__name__}: unreadable, not PEM, or encrypted)")
    return problems
