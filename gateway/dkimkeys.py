"""DKIM keys: where they live, which are active, their DNS records, generation and rotation.

Two kinds of keys:

- *managed* keys live in ``<paths.var>/dkim/DOMAIN.SELECTOR.key`` (mode 0600), with a small
  state file ``<paths.var>/dkim/state.json`` saying, per domain and algorithm, which selector
  signs (``active``), which is published ahead of a switch (``pending``) and which are still
  published for mail in flight after a switch (``retiring``, with the time they may go).
  Without a state entry, a domain's key is the one generated on first start,
  ``DOMAIN.<dkim.selector>.key``.
- *configured* keys (``dkim.domains.DOMAIN`` in gateway.yaml) are the admin's: phigate signs
  with them and prints their records, but does not generate or rotate them.

Rotation is three runs of ``phigate dkim rotate``: start (new key, publish it), switch (after
the new record is visible in DNS), retire (after the grace period, the old key is deleted and
its record can go). Nothing here logs key material.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from .config import Config

RSA = "rsa"
ED25519 = "ed25519"
ALGORITHMS = (RSA, ED25519)
ACTIVE, PENDING, RETIRING = "active", "pending", "retiring"

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class DkimKeyError(Exception):
    """A key or key-state problem, worded for the admin (what happened, what to do)."""


@dataclass(frozen=True)
class KeyEntry:
    """One selector of one domain, as it should appear in DNS."""

    domain: str
    selector: str
    algorithm: str  # RSA or ED25519
    path: Path
    status: str  # ACTIVE, PENDING or RETIRING
    until: float | None = None  # RETIRING: when its record may be removed
    configured: bool = False  # from gateway.yaml rather than phigate's own store

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}."


# --------------------------------------------------------------------------- key files


def load_private_key(path: Path) -> PrivateKey:
    """Read an RSA or Ed25519 private key: PEM (PKCS#1 or PKCS#8), or an Ed25519 key as the
    base64 of its 32-byte seed (what dkimpy's ``dknewkey`` writes)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DkimKeyError(f"{path}: cannot read the DKIM key: {exc.strerror}") from None
    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise DkimKeyError(f"{path}: not a readable, unencrypted PEM private key") from None
        if isinstance(key, rsa.RSAPrivateKey):
            if key.key_size < 1024:
                raise DkimKeyError(f"{path}: RSA key of {key.key_size} bits is too small "
                                   "(receivers ignore keys under 1024; use 2048)")
            return key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key
        raise DkimKeyError(f"{path}: DKIM keys must be RSA or Ed25519")
    try:
        seed = base64.b64decode(data.strip(), validate=True)
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise DkimKeyError(f"{path}: not a PEM private key nor a base64 Ed25519 seed")
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed)


def algorithm_of(key: PrivateKey) -> str:
    return RSA if isinstance(key, rsa.RSAPrivateKey) else ED25519


def public_key_b64(key: PrivateKey) -> str:
    """The ``p=`` value: SubjectPublicKeyInfo DER for RSA, the raw 32 bytes for Ed25519."""
    pub = key.public_key()
    if isinstance(pub, ed25519.Ed25519PublicKey):
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = pub.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(raw).decode("ascii")


def txt_value(key: PrivateKey) -> str:
    return f"v=DKIM1; k={algorithm_of(key)}; p={public_key_b64(key)}"


def txt_strings(value: str, limit: int = 255) -> list[str]:
    """Split a TXT value into character-strings of at most 255 bytes (RFC 1035 3.3)."""
    raw = value.encode("ascii")
    return [raw[i:i + limit].decode("ascii") for i in range(0, len(raw), limit)] or [""]


def zone_line(entry: KeyEntry, key: PrivateKey) -> str:
    strings = " ".join(f'"{s}"' for s in txt_strings(txt_value(key)))
    return f"{entry.dns_name} IN TXT {strings}"


def generate(algorithm: str) -> tuple[PrivateKey, bytes]:
    """A new key and its PEM (PKCS#1 for RSA, as ``ensure_dkim_key`` writes; PKCS#8 for
    Ed25519)."""
    if algorithm == ED25519:
        ed = ed25519.Ed25519PrivateKey.generate()
        return ed, ed.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption())


def _write_atomic(path: Path, data: bytes, mode: int, exclusive: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if exclusive and path.exists():
        raise DkimKeyError(f"{path}: already exists; refusing to overwrite a key")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# --------------------------------------------------------------------------- the store


class KeyStore:
    """Managed keys under ``<paths.var>/dkim`` and their state file."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.dir = config.paths.var / "dkim"
        self.state_path = self.dir / "state.json"

    def key_path(self, domain: str, selector: str) -> Path:
        return self.dir / f"{domain}.{selector}.key"

    # state.json: {"domains": {DOMAIN: {ALG: {"active": SEL|null, "pending": SEL|null,
    #                                         "retiring": [{"selector": SEL, "until": T}]}}}}
    def read_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"domains": {}}
        except (OSError, ValueError) as exc:
            raise DkimKeyError(f"{self.state_path}: unreadable DKIM key state ({exc}); "
                               "restore it from a backup or remove it to start over") from None
        if not isinstance(data, dict) or not isinstance(data.get("domains"), dict):
            raise DkimKeyError(f"{self.state_path}: not a DKIM key state file")
        return data

    def write_state(self, state: dict[str, Any]) -> None:
        text = json.dumps(state, indent=2, sort_keys=True) + "\n"
        _write_atomic(self.state_path, text.encode("utf-8"), 0o600)

    def slot(self, state: dict[str, Any], domain: str, algorithm: str) -> dict[str, Any]:
        """The state of one domain and algorithm, seeded with the first-start key."""
        dom = state["domains"].setdefault(domain, {})
        if algorithm not in dom:
            default = self.config.dkim.selector
            active = (default if algorithm == RSA and self.key_path(domain, default).exists()
                      else None)
            dom[algorithm] = {ACTIVE: active, PENDING: None, RETIRING: []}
        slot: dict[str, Any] = dom[algorithm]
        return slot

    def domains(self) -> list[str]:
        names = set(self.config.domains) | set(self.config.dkim.domains)
        with contextlib.suppress(DkimKeyError):
            names |= set(self.read_state()["domains"])
        return sorted(names)

    def entries(self, domain: str) -> list[KeyEntry]:
        """Every key of ``domain`` whose record belongs in DNS, the signing ones first."""
        configured = self.config.dkim.domains.get(domain)
        if configured is not None:
            out = [KeyEntry(domain, configured.selector, RSA, configured.key, ACTIVE,
                            configured=True)]
            if configured.ed25519_selector and configured.ed25519_key:
                out.append(KeyEntry(domain, configured.ed25519_selector, ED25519,
                                    configured.ed25519_key, ACTIVE, configured=True))
            return out
        state = self.read_state()
        out = []
        for alg in ALGORITHMS:
            if alg not in state["domains"].get(domain, {}) and alg != RSA:
                continue
            slot = self.slot(state, domain, alg)
            if slot[ACTIVE]:
                out.append(KeyEntry(domain, slot[ACTIVE], alg,
                                    self.key_path(domain, slot[ACTIVE]), ACTIVE))
        for alg in ALGORITHMS:
            slot = state["domains"].get(domain, {}).get(alg)
            if not slot:
                continue
            if slot.get(PENDING):
                out.append(KeyEntry(domain, slot[PENDING], alg,
                                    self.key_path(domain, slot[PENDING]), PENDING))
            for r in slot.get(RETIRING) or []:
                out.append(KeyEntry(domain, r["selector"], alg,
                                    self.key_path(domain, r["selector"]), RETIRING,
                                    until=float(r["until"])))
        return out

    def signing_entries(self) -> list[KeyEntry]:
        return [e for d in self.domains() for e in self.entries(d) if e.status == ACTIVE]


def iter_signing_keys(config: Config) -> Iterator[tuple[KeyEntry, PrivateKey]]:
    """Each active key with its parsed private key; a missing or bad file is an error."""
    for entry in KeyStore(config).signing_entries():
        key = load_private_key(entry.path)
        if algorithm_of(key) != entry.algorithm:
            raise DkimKeyError(f"{entry.path}: holds an {algorithm_of(key)} key, "
                               f"but selector {entry.selector} expects {entry.algorithm}")
        yield entry, key


# --------------------------------------------------------------------------- commands


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def _own(config: Config, domain: str) -> str:
    name = domain.lower().rstrip(".")
    if not config.is_own_domain(name):
        raise DkimKeyError(f"{name} is not one of the organisation's domains "
                           f"({', '.join(config.domains) or 'none configured'}); add it to "
                           f"'domains' in {config.source} first")
    return name


def keygen(config: Config, domain: str, selector: str, algorithm: str = RSA,
           out: Callable[[str], None] = print) -> KeyEntry:
    """Create a key; it signs at once if the domain has no key of that algorithm yet, otherwise
    it waits as ``pending`` for ``rotate`` to switch to it."""
    domain = _own(config, domain)
    selector = selector.lower()
    store = KeyStore(config)
    configured = config.dkim.domains.get(domain)
    if configured is not None:
        want = configured.selector if algorithm == RSA else configured.ed25519_selector
        path = configured.key if algorithm == RSA else configured.ed25519_key
        if want != selector or path is None:
            raise DkimKeyError(
                f"{domain}: its keys are configured in {config.source} (dkim.domains.{domain}) "
                f"with selector {want or '(no ' + algorithm + ' key)'}; set the selector and "
                "key path there first, then run keygen to create the file")
        key, pem = generate(algorithm)
        _write_atomic(path, pem, 0o600, exclusive=True)
        entry = KeyEntry(domain, selector, algorithm, path, ACTIVE, configured=True)
    else:
        state = store.read_state()
        slot = store.slot(state, domain, algorithm)
        taken = {slot[ACTIVE], slot[PENDING]} | {r["selector"] for r in slot[RETIRING]}
        for other in ALGORITHMS:
            if other != algorithm and other in state["domains"][domain]:
                o = state["domains"][domain][other]
                taken |= {o[ACTIVE], o[PENDING]} | {r["selector"] for r in o[RETIRING]}
        if selector in taken:
            raise DkimKeyError(f"{domain}: selector {selector} is already in use; "
                               "choose another (`phigate dkim dns` lists them)")
        if slot[PENDING]:
            raise DkimKeyError(f"{domain}: a rotation is in progress ({algorithm} selector "
                               f"{slot[PENDING]} is pending); finish it with "
                               f"`phigate dkim rotate --domain {domain}` first")
        path = store.key_path(domain, selector)
        key, pem = generate(algorithm)
        _write_atomic(path, pem, 0o600, exclusive=True)
        status = PENDING if slot[ACTIVE] else ACTIVE
        slot[status] = selector
        store.write_state(state)
        entry = KeyEntry(domain, selector, algorithm, path, status)
    out(f"; {algorithm} key for {domain}, selector {selector}: {entry.path} (mode 0600)")
    out(f"; publish this record in the zone of {domain}:")
    out(zone_line(entry, key))
    if entry.status == PENDING:
        out(f"; {domain} already signs with another {algorithm} key: this one is pending."
            f" Once the record above is visible, switch with "
            f"`phigate dkim rotate --domain {domain}" + (" --ed25519`" if algorithm == ED25519
                                                        else "`"))
    else:
        out("; phigate signs with it after a reload (SIGHUP) or restart; publish the record "
            "first, or receivers fail the signatures until it appears")
    return entry


def dns_records(config: Config, domain: str) -> list[str]:
    """Zone lines for every key of ``domain`` that must be in DNS."""
    domain = domain.lower().rstrip(".")
    lines = []
    for entry in KeyStore(config).entries(domain):
        lines.append(zone_line(entry, load_private_key(entry.path)))
    return lines


def key_domain(config: Config, domain: str) -> str | None:
    """The closest domain at or above ``domain`` that has a key (the ``d=`` of its mail)."""
    store = KeyStore(config)
    with_keys = {e.domain for e in store.signing_entries()}
    name = domain.lower().rstrip(".")
    while name:
        if name in with_keys:
            return name
        name = name.partition(".")[2]
    return None


TxtLookup = Callable[[str], list[str]]


def rotate(config: Config, domain: str, algorithm: str = RSA, selector: str | None = None,
           lookup: TxtLookup | None = None, force: bool = False, now: float | None = None,
           out: Callable[[str], None] = print) -> int:
    """Advance the rotation of one domain's key by one step; return an exit status.

    start -> (publish the new record) -> switch -> (grace period) -> retire.
    ``lookup`` answers TXT queries (the configured resolver); ``force`` skips the check that
    the new record is visible before switching.
    """
    domain = _own(config, domain)
    now = time.time() if now is None else now
    if domain in config.dkim.domains:
        out(f"{domain}: its keys are configured in {config.source} (dkim.domains.{domain}); "
            "phigate rotates only the keys it keeps in paths.var. To rotate by hand: create "
            "a key under a new selector, publish its record, point dkim.domains."
            f"{domain} at it and reload, then remove the old record after "
            f"{config.dkim.rotate_grace / 86400:g} days.")
        return 1
    store = KeyStore(config)
    state = store.read_state()
    slot = store.slot(state, domain, algorithm)
    flag = " --ed25519" if algorithm == ED25519 else ""
    cmd = f"phigate dkim rotate --domain {domain}{flag}"

    due = [r for r in slot[RETIRING] if float(r["until"]) <= now]
    if due:
        for r in due:
            slot[RETIRING].remove(r)
            with contextlib.suppress(FileNotFoundError):
                store.key_path(domain, r["selector"]).unlink()
        store.write_state(state)
        for r in due:
            out(f"retired: {algorithm} selector {r['selector']} of {domain}; its private key "
                "is deleted.")
            out(f"  now remove the DNS record {r['selector']}._domainkey.{domain}. "
                f'(or publish it as "v=DKIM1; p=" to say the key is revoked)')
        return 0

    if slot[PENDING]:
        new = slot[PENDING]
        path = store.key_path(domain, new)
        key = load_private_key(path)
        entry = KeyEntry(domain, new, algorithm, path, PENDING)
        if not force:
            problem = _published_problem(entry, key, lookup)
            if problem:
                out(f"not switched: {problem}")
                out(f"  publish: {zone_line(entry, key)}")
                out(f"  then run `{cmd}` again (or add --force if this DNS view is stale)")
                return 1
        old = slot[ACTIVE]
        slot[ACTIVE], slot[PENDING] = new, None
        if old:
            slot[RETIRING].append({"selector": old, "until": now + config.dkim.rotate_grace})
        store.write_state(state)
        out(f"switched: {domain} now signs with {algorithm} selector {new} "
            "(after `systemctl reload phigate` or a SIGHUP to the gateway).")
        if old:
            out(f"  keep the record {old}._domainkey.{domain}. published until "
                f"{_when(now + config.dkim.rotate_grace)}: mail signed before the switch is "
                "still being verified.")
            out(f"  after that date run `{cmd}` again to retire it.")
        return 0

    if slot[RETIRING]:
        for r in slot[RETIRING]:
            out(f"waiting: {algorithm} selector {r['selector']} of {domain} stays published "
                f"until {_when(float(r['until']))}; run `{cmd}` after that to retire it.")
        return 0

    new = selector or _fresh_selector(store, domain, now)
    entry = keygen(config, domain, new, algorithm, out=lambda _line: None)
    key = load_private_key(entry.path)
    if entry.status == ACTIVE:  # there was no key to replace
        out(f"created: {domain} had no {algorithm} key; selector {new} signs after a reload.")
        out(f"  publish: {zone_line(entry, key)}")
        return 0
    out(f"started: new {algorithm} key for {domain}, selector {new} ({entry.path}).")
    out("  1. publish this record now (the old one stays):")
    out(f"     {zone_line(entry, key)}")
    out(f"  2. once it is visible (`phigate dns check {domain}`), run `{cmd}` to switch.")
    return 0


def _fresh_selector(store: KeyStore, domain: str, now: float) -> str:
    base = "phigate" + time.strftime("%Y%m", time.gmtime(now))
    name, n = base, 1
    while store.key_path(domain, name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def parse_tags(value: str) -> dict[str, str]:
    """A DKIM tag list (``v=DKIM1; k=rsa; p=...``), whitespace inside values removed."""
    tags: dict[str, str] = {}
    for part in value.split(";"):
        name, sep, val = part.partition("=")
        if sep:
            tags[name.strip()] = "".join(val.split())
    return tags


def _published_problem(entry: KeyEntry, key: PrivateKey, lookup: TxtLookup | None) -> str | None:
    if lookup is None:
        return "no resolver to check that the new record is published"
    try:
        records = lookup(entry.dns_name)
    except Exception as exc:  # a DNS failure, worded for the admin
        return f"could not look up {entry.dns_name} ({type(exc).__name__})"
    if not records:
        return f"{entry.dns_name} has no TXT record yet"
    p = public_key_b64(key)
    if not any(parse_tags(r).get("p") == p for r in records):
        return f"{entry.dns_name} holds a different key than {entry.path}"
    return None
