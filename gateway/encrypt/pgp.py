"""OpenPGP through GnuPG (python-gnupg): the keyring of recipients' keys, and PGP/MIME
(RFC 3156) encryption streamed through ``gpg``'s stdin and an output file.

Trust model: a key is in the keyring because an admin imported it (``phigate keys import``) or
because the recipient's domain published it in its Web Key Directory (a separate keyring), so
every key present is trusted (``--trust-model always``); validity is what this module checks:
revoked, expired (against the caller's clock) or without a usable encryption subkey.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import getaddresses
from pathlib import Path
from typing import IO, Any

import gnupg

from .entity import ChunkReader

_GPG_OPTIONS = ["--trust-model", "always", "--no-auto-key-locate", "--no-auto-key-retrieve",
                "--no-emit-version", "--no-comments"]


class PgpError(Exception):
    """gpg failed; the text holds gpg's status keyword, never message content."""


@dataclass(frozen=True)
class PgpKey:
    fingerprint: str
    addresses: tuple[str, ...]  # lower case, from the user ids
    created: float
    expires: float | None  # the primary key's expiry
    revoked: bool
    encrypt_until: float | None  # latest expiry among valid encryption (sub)keys; None = never
    can_encrypt: bool  # a (sub)key with the encrypt capability that is neither revoked nor
    # expired by gpg's own clock
    secret: bool = False

    def problem(self, now: float) -> str | None:
        """None when the key can be used at ``now``, else expired, revoked or unusable."""
        if self.revoked:
            return "revoked"
        if self.expires is not None and self.expires <= now:
            return "expired"
        if not self.can_encrypt:
            return "unusable"
        if self.encrypt_until is not None and self.encrypt_until <= now:
            return "expired"
        return None


def _ts(text: str) -> float | None:
    return float(text) if text and text.isdigit() else None


def _addresses(uids: list[str]) -> tuple[str, ...]:
    out: list[str] = []
    for _name, addr in getaddresses(uids):
        if "@" in addr and addr.lower() not in out:
            out.append(addr.lower())
    return tuple(out)


def _key(raw: dict[str, Any], secret: bool) -> PgpKey:
    # 'cap' of the primary key: lower-case letters are its own capabilities, upper-case ones
    # what the whole key can still do by gpg's clock (revoked or expired subkeys left out)
    cap = raw.get("cap", "")
    subinfo: dict[str, dict[str, str]] = raw.get("subkey_info") or {}
    until: list[float | None] = []
    if "e" in cap:
        until.append(_ts(raw.get("expires", "")))
    for info in subinfo.values():
        if "e" in (info.get("cap") or "") and info.get("trust") not in ("r", "e", "i", "d"):
            until.append(_ts(info.get("expires", "")))
    encrypt_until: float | None = None
    if until and all(u is not None for u in until):
        encrypt_until = max(u for u in until if u is not None)
    return PgpKey(
        fingerprint=raw["fingerprint"],
        addresses=_addresses(list(raw.get("uids") or [])),
        created=_ts(raw.get("date", "")) or 0.0,
        expires=_ts(raw.get("expires", "")),
        revoked=raw.get("trust", "") == "r",
        encrypt_until=encrypt_until,
        can_encrypt="E" in cap and bool(until),
        secret=secret,
    )


class Keyring:
    """A GnuPG home holding recipients' public keys (and the organisation's signing key)."""

    def __init__(self, home: Path, gpg_binary: str = "gpg") -> None:
        self.home = home
        self.gpg_binary = gpg_binary
        self._gpg: gnupg.GPG | None = None
        self._cache: tuple[tuple[int, int], list[PgpKey]] | None = None

    @property
    def gpg(self) -> gnupg.GPG:
        if self._gpg is None:
            self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.home, 0o700)
            self._gpg = gnupg.GPG(gpgbinary=self.gpg_binary, gnupghome=str(self.home),
                                  options=list(_GPG_OPTIONS))
            self._gpg.encoding = "utf-8"
            if not (self.home / "trustdb.gpg").exists():
                # with --trust-model always gpg never creates it, yet importing a revocation
                # certificate updates it (and fails without it)
                subprocess.run([self.gpg_binary, "--homedir", str(self.home), "--batch",
                                "--import-ownertrust"], input=b"", capture_output=True,
                               check=False, timeout=30)
        return self._gpg

    def _stamp(self) -> tuple[int, int]:
        try:
            st = (self.home / "pubring.kbx").stat()
        except FileNotFoundError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_size)

    def all_keys(self) -> list[PgpKey]:
        """Every key, read again only when the keyring file changed."""
        stamp = self._stamp()
        if stamp == (0, 0):
            return []
        if self._cache is not None and self._cache[0] == stamp:
            return self._cache[1]
        secret = {k["fingerprint"] for k in self.gpg.list_keys(secret=True)}
        keys = [_key(k, k["fingerprint"] in secret) for k in self.gpg.list_keys()]
        self._cache = (stamp, keys)
        return keys

    def for_address(self, address: str) -> list[PgpKey]:
        """Keys with a user id for exactly ``address``, newest first."""
        addr = address.lower()
        found = [k for k in self.all_keys() if addr in k.addresses]
        return sorted(found, key=lambda k: k.created, reverse=True)

    def import_data(self, data: bytes) -> list[str]:
        """Import keys (armored or binary); the fingerprints of the keys it changed."""
        result = self.gpg.import_keys(data)
        self._cache = None
        found = {str(r["fingerprint"]) for r in result.results
                 if r.get("fingerprint") and r.get("ok")}
        # a revocation certificate reports no IMPORT_OK, only the key it was considered for
        for line in (result.stderr or "").splitlines():
            if line.startswith("[GNUPG:] KEY_CONSIDERED ") and result.count:
                found.add(line.split()[2])
        return sorted(found)

    def delete(self, fingerprint: str) -> bool:
        """Remove a public key (and its secret key, if the keyring holds one)."""
        if any(k.fingerprint == fingerprint and k.secret for k in self.all_keys()):
            self.gpg.delete_keys(fingerprint, secret=True, expect_passphrase=False)
        result = self.gpg.delete_keys(fingerprint)
        self._cache = None
        return str(result.status) == "ok"

    def encrypt(self, entity: Iterator[bytes | memoryview], fingerprint: str, out: IO[bytes],
                sign: str | None = None, passphrase: str | None = None,
                keyrings: list[Path] | None = None) -> None:
        """Encrypt (and sign) ``entity`` to ``fingerprint``, writing the armored OpenPGP
        message to ``out`` with CRLF line ends. Nothing but ciphertext touches the disk."""
        with tempfile.TemporaryDirectory(prefix="phigate-pgp-") as tmp:
            path = Path(tmp) / "out.asc"
            extra = ["--pinentry-mode", "loopback"] if sign else []
            for ring in keyrings or []:
                extra += ["--keyring", str(ring)]
            result = self.gpg.encrypt_file(
                ChunkReader(entity), [fingerprint], sign=sign, passphrase=passphrase,
                always_trust=True, armor=True, output=str(path), extra_args=extra)
            if not result.ok or not path.exists():
                raise PgpError(f"gpg: {result.status or 'failed'}")
            with path.open("rb") as src:
                _copy_crlf(src, out)


def _copy_crlf(src: IO[bytes], out: IO[bytes]) -> None:
    """Copy gpg's armored output (LF line ends, no CR) with CRLF line ends."""
    while True:
        chunk = src.read(1024 * 1024)
        if not chunk:
            return
        out.write(chunk.replace(b"\n", b"\r\n"))


def gpg_available(binary: str = "gpg") -> bool:
    return shutil.which(binary) is not None


def pgp_mime(boundary: str) -> tuple[list[bytes], bytes, bytes]:
    """RFC 3156 section 4: the outer Content-Type fields, the text before the armored message
    and the text after it."""
    b = boundary.encode("ascii")
    fields = [b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";',
              b' boundary="' + b + b'"']
    head = (b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n"
            b"--" + b + b"\r\n"
            b"Content-Type: application/pgp-encrypted\r\n"
            b"Content-Description: PGP/MIME version identification\r\n"
            b"\r\n"
            b"Version: 1\r\n"
            b"\r\n"
            b"--" + b + b"\r\n"
            b'Content-Type: application/octet-stream; name="encrypted.asc"\r\n'
            b"Content-Description: OpenPGP encrypted message\r\n"
            b'Content-Disposition: inline; filename="encrypted.asc"\r\n'
            b"\r\n")
    tail = b"\r\n--" + b + b"--\r\n"
    return [fields[0] + b"\r\n" + fields[1]], head, tail
