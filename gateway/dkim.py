"""DKIM signing of outbound mail (RFC 6376; Ed25519 per RFC 8463), the last transform before
a message leaves.

dkimpy does what it does well: parsing the header, choosing the fields to sign (its RFC 6376
list, From signed twice so no second From can be added), relaxed canonicalisation, and the
layout and folding of the DKIM-Signature field. The private-key operation is done here with
``cryptography`` on keys parsed once at start-up: dkimpy re-parses the PEM on every call and
signs with Python's ``pow()``, some 25 times slower for RSA-2048. The output is byte for byte
what ``dkim.sign`` produces for the same key, message and time (tests/unit/test_dkim.py).

One body hash serves both signatures (same canonicalisation, same hash).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from email.utils import getaddresses

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from dkim.canonicalization import (
    CanonicalizationPolicy,
    correct_empty_body,
    strip_trailing_lines,
)

from .config import Config
from .dkimkeys import ED25519, RSA, PrivateKey, iter_signing_keys

CANONICALIZE = (b"relaxed", b"relaxed")
_POLICY = CanonicalizationPolicy.from_c_value(b"/".join(CANONICALIZE))
_HEADER = b"DKIM-Signature"
_ALG = {RSA: b"rsa-sha256", ED25519: b"ed25519-sha256"}
# dkimpy's RFC 6376 list: From, Sender, Reply-To, Subject, Date, Message-ID, To, Cc, the MIME
# fields, Resent-*, In-Reply-To, References, List-*; From once more (oversigned).
SIGN_HEADERS = frozenset(dkim.DKIM.SHOULD) | frozenset(dkim.DKIM.FROZEN)
OVERSIGN = frozenset(dkim.DKIM.FROZEN)
# Messages up to this size are signed inline on the event loop (well under a millisecond of
# hashing); bigger ones in a thread, so a 30 MB attachment does not stall other deliveries.
INLINE_LIMIT = 256 * 1024

# Why a message left unsigned (for the caller's log event; ``event.reason``).
NO_KEY = "dkim_no_key"
NO_FROM = "dkim_no_from"
MALFORMED = "dkim_malformed_header"


@dataclass(frozen=True)
class Key:
    domain: bytes
    selector: bytes
    algorithm: str
    private: PrivateKey


@dataclass(frozen=True)
class Signed:
    """A message after signing. ``reason`` says why it is unsigned when ``domain`` is None."""

    data: bytes
    domain: str | None = None  # the d= of the signatures
    selectors: tuple[str, ...] = ()
    reason: str | None = None

    @property
    def signed(self) -> bool:
        return self.domain is not None


class Signer:
    """Signs for the organisation's domains; built once, used for every delivery."""

    def __init__(self, keys: Iterable[Key], clock: Callable[[], float] = time.time) -> None:
        self._keys: dict[str, list[Key]] = {}
        for k in keys:
            self._keys.setdefault(k.domain.decode("ascii"), []).append(k)
        for ks in self._keys.values():  # RSA (universally verified) on top
            ks.sort(key=lambda k: k.algorithm != RSA)
        self._clock = clock

    @classmethod
    def from_config(cls, config: Config, clock: Callable[[], float] = time.time) -> Signer:
        """Load every active key (raises dkimkeys.DkimKeyError naming the file and the fix)."""
        keys = [Key(e.domain.encode("ascii"), e.selector.encode("ascii"), e.algorithm, pk)
                for e, pk in iter_signing_keys(config)]
        return cls(keys, clock)

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def keys_for(self, domain: str) -> Sequence[Key]:
        """The keys that sign mail from ``domain``: its own, else its closest parent's."""
        name = _ascii_domain(domain)
        while name:
            found = self._keys.get(name)
            if found:
                return found
            name = name.partition(".")[2]
        return ()

    def sign(self, data: bytes, mail_from: str) -> bytes:
        """The message with DKIM-Signature fields prepended (unchanged if no key applies)."""
        return self.sign_message(data, mail_from).data

    async def sign_async(self, data: bytes, mail_from: str) -> Signed:
        if len(data) <= INLINE_LIMIT:
            return self.sign_message(data, mail_from)
        return await asyncio.to_thread(self.sign_message, data, mail_from)

    def sign_message(self, data: bytes, mail_from: str) -> Signed:
        """Sign for the From header's domain, or the envelope sender's if that one has no key
        (a bounce or a forwarded message); otherwise return the data unsigned with a reason."""
        try:
            headers, body = parse(data)
        except dkim.MessageFormatError:
            return Signed(data, reason=MALFORMED)
        from_values = [v for n, v in headers if n.lower() == b"from"]
        if not from_values:
            return Signed(data, reason=NO_FROM)
        keys: Sequence[Key] = ()
        for domain in (_from_domain(from_values[0]), _address_domain(mail_from)):
            if domain and (keys := self.keys_for(domain)):
                break
        if not keys:
            return Signed(data, reason=NO_KEY)
        linesep = b"\r\n" if data.find(b"\r\n") == data.find(b"\n") - 1 else b"\n"
        include = select_headers(headers)
        canon_headers = _POLICY.canonicalize_headers(headers)
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
        now = int(self._clock())
        fields = [signature_field(k, include, canon_headers, body_hash, now, linesep)
                  for k in keys]
        return Signed(b"".join(fields) + data, keys[0].domain.decode("ascii"),
                      tuple(k.selector.decode("ascii") for k in keys))


def parse(data: bytes) -> tuple[list[list[bytes]], bytes]:
    """``dkim.rfc822_parse`` with the same result, without splitting the body into lines:
    header fields as [name, value] and the body with bare LF turned into CRLF."""
    if data.startswith((b"\r\n", b"\n")):
        return [], _crlf(data[2 if data.startswith(b"\r\n") else 1:])
    ends = [i for i in (data.find(b"\n\r\n"), data.find(b"\n\n")) if i >= 0]
    if not ends:
        headers, body = dkim.rfc822_parse(data)
        return headers, body
    end = min(ends) + 1
    headers, _ = dkim.rfc822_parse(data[:end])
    blank = 2 if data.startswith(b"\r\n", end) else 1
    return headers, _crlf(data[end + blank:])


def _crlf(body: bytes) -> bytes:
    if body.count(b"\n") == body.count(b"\r\n"):
        return body
    return body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def relaxed_body(body: bytes) -> bytes:
    """dkimpy's relaxed body canonicalisation with the same result, with bytes methods instead
    of its regular expressions (which take about a second on a 10 MB attachment)."""
    if b"\t" in body:
        body = body.replace(b"\t", b" ")
    while b"  " in body:
        body = body.replace(b"  ", b" ")
    body = body.replace(b" \r\n", b"\r\n")
    result: bytes = correct_empty_body(strip_trailing_lines(body))
    return result


def select_headers(headers: Sequence[Sequence[bytes]]) -> tuple[bytes, ...]:
    """dkimpy's ``DKIM.default_sign_headers``: the fields present, in order, then From again."""
    present = [name for name, _ in headers if name.lower() in SIGN_HEADERS]
    present += [name for name in present if name.lower() in OVERSIGN]
    return tuple(name.lower() for name in present)


def signature_field(key: Key, include: Sequence[bytes], canon_headers: list[tuple[bytes, bytes]],
                    body_hash: bytes, now: int, linesep: bytes = b"\r\n") -> bytes:
    """One ``DKIM-Signature: ...`` field, laid out exactly as dkimpy's ``DKIM.sign`` and
    ``gen_header`` lay it out, with the signature computed here."""
    fields = [
        (b"v", b"1"),
        (b"a", _ALG[key.algorithm]),
        (b"c", b"/".join(CANONICALIZE)),
        (b"d", key.domain),
        (b"i", b"@" + key.domain),
        (b"q", b"dns/txt"),
        (b"s", key.selector),
        (b"t", str(now).encode("ascii")),
        (b"h", b" : ".join(include)),
        (b"bh", body_hash),
        (b"b", b"0" * 60),  # makes dkimpy fold b= onto its own line, as it does
    ]
    value = dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(_HEADER),
                      linesep=b"\r\n")
    value = dkim.RE_BTAG.sub(b"\\1", value)
    h = hashlib.sha256()
    dkim.hash_headers(h, _POLICY, canon_headers, include, (_HEADER, b" " + value), dict(fields))
    digest = h.digest()
    if isinstance(key.private, rsa.RSAPrivateKey):
        sig = key.private.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    else:
        sig = key.private.sign(digest)  # RFC 8463: Ed25519 over the SHA-256 of the header
    fields[-1] = (b"b", base64.b64encode(sig))
    value = b"; ".join(b"=".join(f) for f in fields) + linesep
    folded: bytes = dkim.fold(value, namelen=len(_HEADER), linesep=linesep)
    return _HEADER + b": " + folded


def _ascii_domain(domain: str) -> str:
    name = domain.strip().lower().rstrip(".")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return ""
    return name


def _address_domain(address: str) -> str:
    return _ascii_domain(address.rpartition("@")[2]) if "@" in address else ""


def _from_domain(value: bytes) -> str:
    text = value.decode("utf-8", "replace")
    addrs = [a for _, a in getaddresses([text]) if "@" in a]
    return _address_domain(addrs[0]) if addrs else ""
