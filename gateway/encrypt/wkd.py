"""OpenPGP Web Key Directory lookup (draft-koch-openpgp-webkey-service), over HTTPS, cached.

The advanced method asks ``https://openpgpkey.DOMAIN/.well-known/openpgpkey/DOMAIN/hu/HASH``;
only when that host does not exist in DNS does the direct method ask
``https://DOMAIN/.well-known/openpgpkey/hu/HASH`` (HASH: z-base-32 of the SHA-1 of the lower-cased
local part; ``?l=`` carries the local part as written). Answers, found or not, are cached as
files for ``cache_ttl`` (``negative_ttl`` for "no key"), so a recipient costs one lookup a day,
not one per message. Errors (timeouts, TLS failures, 5xx) are not cached and mean "no key now".

The network seam is ``connect``: tests map names to a loopback server with a test CA.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_ZB32 = "ybndrfg8ejkmcpqxot1uwisza345h769"
MAX_KEY_SIZE = 512 * 1024  # a key block larger than this is refused, not read

Connect = Callable[[str, int, float], socket.socket]


def zbase32(data: bytes) -> str:
    bits = "".join(f"{b:08b}" for b in data)
    bits += "0" * (-len(bits) % 5)
    return "".join(_ZB32[int(bits[i:i + 5], 2)] for i in range(0, len(bits), 5))


def wkd_hash(local: str) -> str:
    return zbase32(hashlib.sha1(local.lower().encode("utf-8")).digest())  # noqa: S324 - spec


def urls(address: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """(host, path) of the advanced and the direct method."""
    local, _, domain = address.rpartition("@")
    domain = domain.lower().rstrip(".")
    h = wkd_hash(local)
    q = urllib.parse.urlencode({"l": local})
    return ((f"openpgpkey.{domain}", f"/.well-known/openpgpkey/{domain}/hu/{h}?{q}"),
            (domain, f"/.well-known/openpgpkey/hu/{h}?{q}"))


@dataclass(frozen=True)
class Fetched:
    data: bytes | None  # the key block, or None for "no key published"
    fetched_at: float
    method: str  # advanced | direct | cache


class NoSuchHost(Exception):
    pass


def _default_connect(host: str, port: int, timeout: float) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise NoSuchHost(host) from None
    err: OSError | None = None
    for family, kind, proto, _c, addr in infos:
        sock = socket.socket(family, kind, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(addr)
            return sock
        except OSError as exc:
            sock.close()
            err = exc
    raise err or OSError(f"cannot connect to {host}")


class WkdClient:
    def __init__(self, cache_dir: Path, cache_ttl: float = 86400.0,
                 negative_ttl: float = 3600.0, timeout: float = 10.0,
                 context: ssl.SSLContext | None = None, port: int = 443,
                 connect: Connect | None = None) -> None:
        self.cache_dir = cache_dir
        self.cache_ttl = cache_ttl
        self.negative_ttl = negative_ttl
        self.timeout = timeout
        self.context = context or ssl.create_default_context()
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.port = port
        self._connect = connect or _default_connect

    def _cache_path(self, address: str) -> Path:
        local, _, domain = address.rpartition("@")
        return self.cache_dir / domain.lower() / wkd_hash(local)

    def cached(self, address: str, now: float) -> Fetched | None:
        path = self._cache_path(address)
        try:
            meta = json.loads(path.with_suffix(".json").read_text("utf-8"))
            fetched_at = float(meta["fetched_at"])
            found = bool(meta["found"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        ttl = self.cache_ttl if found else self.negative_ttl
        if not fetched_at <= now < fetched_at + ttl:
            return None
        try:
            data = path.read_bytes() if found else None
        except OSError:
            return None
        return Fetched(data, fetched_at, "cache")

    def _store(self, address: str, data: bytes | None, now: float) -> None:
        path = self._cache_path(address)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if data is not None:
            path.write_bytes(data)
        else:
            path.unlink(missing_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"fetched_at": now, "found": data is not None}), "utf-8")
        os.replace(tmp, path.with_suffix(".json"))

    def lookup(self, address: str, now: float | None = None) -> Fetched | None:
        """The key block published for ``address``, ``Fetched(None, ...)`` when none is
        published, or None when the directory could not be asked (try again later)."""
        now = time.time() if now is None else now
        hit = self.cached(address, now)
        if hit is not None:
            return hit
        advanced, direct = urls(address)
        try:
            try:
                data, method = self._get(*advanced), "advanced"
            except NoSuchHost:
                data, method = self._get(*direct), "direct"
        except (NoSuchHost, OSError, ssl.SSLError, http.client.HTTPException, _Refused):
            return None
        self._store(address, data, now)
        return Fetched(data, now, method)

    def _get(self, host: str, path: str) -> bytes | None:
        sock = self._connect(host, self.port, self.timeout)
        conn = http.client.HTTPSConnection(host, self.port, timeout=self.timeout,
                                           context=self.context)
        try:
            conn.sock = self.context.wrap_socket(sock, server_hostname=host)
            conn.request("GET", path, headers={"Accept": "application/octet-stream",
                                               "User-Agent": "phigate-wkd"})
            resp = conn.getresponse()
            if resp.status == 404:
                return None
            if resp.status != 200:  # redirects included: the draft allows none across hosts
                raise _Refused(resp.status)
            length = resp.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > MAX_KEY_SIZE:
                raise _Refused(413)
            data = resp.read(MAX_KEY_SIZE + 1)
            if len(data) > MAX_KEY_SIZE:
                raise _Refused(413)
            return data or None
        finally:
            conn.close()


class _Refused(Exception):
    """An answer that is neither a key nor "none published"."""
