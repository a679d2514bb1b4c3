"""Which key to encrypt to for a recipient address, and the admin's view of all keys.

Order of lookup: an OpenPGP key the admin imported (the GnuPG keyring under ``paths.var``), then
an S/MIME certificate the admin imported, then (when enabled) the recipient domain's Web Key
Directory. A key is matched by exact address in a user id (OpenPGP) or in the certificate's
subjectAltName / emailAddress (S/MIME), never by substring. When no usable key is found, the
answer says why: ``none``, or the problem of the newest key that exists (``expired``,
``revoked``, ``unusable``: no encryption capability, not yet valid), so the sender can be told.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography import x509

from .pgp import Keyring, PgpKey
from .smime import CertStore, SmimeCert, SmimeError, parse_certificates
from .wkd import WkdClient

Kind = Literal["pgp", "smime"]
Source = Literal["keyring", "smime_dir", "wkd"]


@dataclass(frozen=True)
class KeyInfo:
    """One key or certificate as ``phigate keys list`` shows it."""

    kind: Kind
    fingerprint: str
    addresses: tuple[str, ...]
    created: float
    expires: float | None
    status: str  # valid | expired | revoked | unusable
    source: Source
    gcm: bool = False
    subject: str = ""
    secret: bool = False  # the keyring holds the secret key too (the organisation's own)

    def to_json(self) -> dict[str, Any]:
        return {"type": "openpgp" if self.kind == "pgp" else "smime",
                "fingerprint": self.fingerprint, "addresses": list(self.addresses),
                "created": int(self.created), "expires": None if self.expires is None
                else int(self.expires), "status": self.status, "source": self.source,
                **({"aes_gcm": self.gcm, "subject": self.subject} if self.kind == "smime"
                   else {"secret": self.secret})}


@dataclass(frozen=True)
class Found:
    kind: Kind
    fingerprint: str
    source: Source
    keyring: Keyring | None = None  # pgp: the keyring that holds the key
    cert: SmimeCert | None = None  # smime


@dataclass(frozen=True)
class Missing:
    reason: str  # none | expired | revoked | unusable
    kind: Kind | None = None
    fingerprint: str | None = None
    expired_at: float | None = None


def _pgp_info(k: PgpKey, now: float, source: Source) -> KeyInfo:
    return KeyInfo("pgp", k.fingerprint, k.addresses, k.created, k.expires,
                   k.problem(now) or "valid", source, secret=k.secret)


def _smime_info(c: SmimeCert, now: float) -> KeyInfo:
    return KeyInfo("smime", c.fingerprint, c.addresses, c.not_before, c.not_after,
                   c.problem(now) or "valid", "smime_dir", gcm=c.gcm, subject=c.subject)


class KeyStore:
    def __init__(self, keyring: Keyring, certs: CertStore, wkd: WkdClient | None = None,
                 wkd_keyring: Keyring | None = None) -> None:
        self.keyring = keyring
        self.certs = certs
        self.wkd = wkd
        self.wkd_keyring = wkd_keyring
        # delivery calls lookup from several threads; a directory's answer replaces the keys
        # it gave before, which must not interleave for one keyring
        self._wkd_lock = threading.Lock()

    # ------------------------------------------------------------------ lookup

    def lookup(self, address: str, now: float) -> Found | Missing:
        problems: list[Missing] = []
        for k in self.keyring.for_address(address):
            if k.secret:
                continue  # the organisation's own signing key is no recipient's key
            problem = k.problem(now)
            if problem is None:
                return Found("pgp", k.fingerprint, "keyring", keyring=self.keyring)
            problems.append(Missing(problem, "pgp", k.fingerprint, k.expires))
        for c in self.certs.for_address(address):
            problem = c.problem(now)
            if problem is None:
                return Found("smime", c.fingerprint, "smime_dir", cert=c)
            problems.append(Missing(problem, "smime", c.fingerprint, c.not_after))
        if self.wkd is not None and self.wkd_keyring is not None:
            with self._wkd_lock:
                found = self._wkd(address, now, problems)
            if found is not None:
                return found
        return problems[0] if problems else Missing("none")

    def _wkd(self, address: str, now: float, problems: list[Missing]) -> Found | None:
        assert self.wkd is not None and self.wkd_keyring is not None
        fetched = self.wkd.lookup(address, now)
        ring = self.wkd_keyring
        if fetched is None:  # directory unreachable: use what an earlier answer left
            keys = ring.for_address(address)
        else:
            keys = ring.for_address(address)
            if fetched.method != "cache" or (fetched.data and not keys):
                for old in keys:  # the directory's answer replaces what it said before
                    ring.delete(old.fingerprint)
                if fetched.data:
                    ring.import_data(fetched.data)
                keys = ring.for_address(address)
        for k in keys:
            problem = k.problem(now)
            if problem is None:
                return Found("pgp", k.fingerprint, "wkd", keyring=ring)
            problems.append(Missing(problem, "pgp", k.fingerprint, k.expires))
        return None

    # ------------------------------------------------------------------ admin

    def entries(self, now: float) -> list[KeyInfo]:
        out = [_pgp_info(k, now, "keyring") for k in self.keyring.all_keys()]
        out += [_smime_info(c, now) for c in self.certs.certs()]
        return out

    def import_data(self, data: bytes, now: float, gcm: bool = False) -> list[KeyInfo]:
        """Import OpenPGP keys or S/MIME certificates (the kind is recognised from the data);
        the keys added or updated. Raises ValueError when the data is neither."""
        if _looks_x509(data):
            try:
                fps = set(self.certs.import_data(data, gcm=gcm))
            except SmimeError as err:
                raise ValueError(str(err)) from None
            if not fps:
                raise ValueError("no certificate in it names a mail address "
                                 "(a CA certificate?)")
            return [_smime_info(c, now) for c in self.certs.certs() if c.fingerprint in fps]
        fpr = set(self.keyring.import_data(data))
        if not fpr:
            raise ValueError("no OpenPGP key or X.509 certificate found")
        return [_pgp_info(k, now, "keyring") for k in self.keyring.all_keys()
                if k.fingerprint in fpr]

    def remove(self, what: str, now: float) -> list[KeyInfo]:
        """Remove keys by fingerprint (OpenPGP or S/MIME SHA-256) or by address."""
        target = what.strip().replace(" ", "").replace(":", "")
        removed: list[KeyInfo] = []
        is_addr = "@" in what
        for info in self.entries(now):
            if (info.fingerprint.upper() == target.upper()) if not is_addr \
                    else (what.strip().lower() in info.addresses):
                ok = (self.keyring.delete(info.fingerprint) if info.kind == "pgp"
                      else self.certs.delete(info.fingerprint))
                if ok:
                    removed.append(info)
        return removed


def _looks_x509(data: bytes) -> bool:
    if b"-----BEGIN CERTIFICATE-----" in data or b"-----BEGIN PKCS7-----" in data:
        return True
    if b"-----BEGIN PGP" in data:
        return False
    try:
        x509.load_der_x509_certificate(data)
        return True
    except ValueError:
        pass
    try:
        parse_certificates(data)
        return True
    except SmimeError:
        return False


def default_paths(var: Path) -> tuple[Path, Path, Path]:
    """Keyring, certificate folder and WKD cache under ``paths.var``."""
    return var / "gnupg", var / "smime", var / "wkd"
