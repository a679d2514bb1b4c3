"""Web Key Directory lookup against a real HTTPS server on loopback (certificates from a test CA
made by trustme): the advanced method, the direct method when openpgpkey.DOMAIN does not
exist, caching of found and not-found answers, a server with an untrusted certificate, and the
Encryptor encrypting to a key found this way (decrypted by gpg). Synthetic data only."""

from __future__ import annotations

import http.server
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from gateway.encrypt import Encrypted, Encryptor
from gateway.encrypt.keystore import KeyStore
from gateway.encrypt.pgp import Keyring
from gateway.encrypt.smime import CertStore
from gateway.encrypt.wkd import NoSuchHost, WkdClient, urls, wkd_hash, zbase32
from tests.unit.test_encrypt_keys import NOW, Pki, pki, sample_message, store_dirs

__all__ = ["pki", "store_dirs"]  # fixtures


class Directory:
    """An HTTPS server answering WKD paths for several host names (by the Host header)."""

    def __init__(self, ca: trustme.CA, names: list[str]) -> None:
        self.keys: dict[tuple[str, str], bytes] = {}  # (host, path without query) -> key
        self.requests: list[tuple[str, str]] = []
        directory = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host = (self.headers.get("Host") or "").split(":")[0]
                path = urllib.parse.urlsplit(self.path).path
                directory.requests.append((host, self.path))
                body = directory.keys.get((host, path))
                self.send_response(200 if body else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*names).configure_cert(ctx)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.names = names
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, address: str, key: bytes, advanced: bool) -> None:
        (adv_host, adv_path), (dir_host, dir_path) = urls(address)
        host, path = (adv_host, adv_path) if advanced else (dir_host, dir_path)
        self.keys[(host, path.split("?")[0])] = key

    def connect(self, host: str, port: int, timeout: float) -> socket.socket:
        """The network seam: names this directory serves go to loopback, others don't exist."""
        if host not in self.names:
            raise NoSuchHost(host)
        return socket.create_connection(("127.0.0.1", self.port), timeout)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def directory(ca: trustme.CA) -> Iterator[Directory]:
    d = Directory(ca, ["openpgpkey.adv.test", "direct.test"])
    yield d
    d.close()


def _client(ca: trustme.CA, d: Directory, cache: Path) -> WkdClient:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return WkdClient(cache, cache_ttl=3600, negative_ttl=60, timeout=5, context=ctx,
                     port=d.port, connect=d.connect)


def test_hash_and_urls() -> None:
    # the draft's example: Joe.Doe@Example.ORG
    assert wkd_hash("Joe.Doe") == "iy9q119eutrkn8s1mk4r39qejnbu3n5q"
    (ah, ap), (dh, dp) = urls("Joe.Doe@Example.ORG")
    assert ah == "openpgpkey.example.org"
    assert ap == "/.well-known/openpgpkey/example.org/hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe"
    assert (dh, dp) == ("example.org",
                        "/.well-known/openpgpkey/hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe")
    assert zbase32(b"") == ""


def test_advanced_direct_and_cache(pki: Pki, ca: trustme.CA, directory: Directory,
                                   tmp_path: Path) -> None:
    key = b"\x99binary-key-block"
    directory.publish("ann@adv.test", key, advanced=True)
    directory.publish("ben@direct.test", key + b"2", advanced=False)
    wkd = _client(ca, directory, tmp_path / "wkd")
    got = wkd.lookup("ann@adv.test", NOW)
    assert got is not None and got.data == key and got.method == "advanced"
    got = wkd.lookup("ben@direct.test", NOW)  # openpgpkey.direct.test does not exist
    assert got is not None and got.data == key + b"2" and got.method == "direct"
    assert [h for h, _ in directory.requests] == ["openpgpkey.adv.test", "direct.test"]
    # cached: no new request within the TTL, a new one after it
    again = wkd.lookup("ann@adv.test", NOW + 60)
    assert again is not None and again.method == "cache" and again.data == key
    assert len(directory.requests) == 2
    assert wkd.lookup("ann@adv.test", NOW + 7200) is not None
    assert len(directory.requests) == 3
    # nothing published: remembered for negative_ttl only
    none = wkd.lookup("cat@adv.test", NOW)
    assert none is not None and none.data is None
    assert wkd.lookup("cat@adv.test", NOW + 30) is not None and len(directory.requests) == 4
    wkd.lookup("cat@adv.test", NOW + 120)
    assert len(directory.requests) == 5


def test_untrusted_certificate_is_no_answer(directory: Directory, tmp_path: Path) -> None:
    directory.publish("ann@adv.test", b"k", advanced=True)
    other = trustme.CA()
    wkd = _client(other, directory, tmp_path / "wkd")
    assert wkd.lookup("ann@adv.test", NOW) is None  # TLS failure: not cached, try later
    assert wkd.cached("ann@adv.test", NOW) is None


def test_encrypt_to_a_key_found_in_wkd(pki: Pki, ca: trustme.CA, directory: Directory,
                                       store_dirs: Path) -> None:
    fpr = pki.recipients.gen("Wendy <wendy@adv.test>")
    directory.publish("wendy@adv.test", pki.recipients.run("--export", fpr), advanced=True)
    store = KeyStore(Keyring(store_dirs / "gnupg"), CertStore(store_dirs / "smime"),
                     _client(ca, directory, store_dirs / "wkd"),
                     Keyring(store_dirs / "wkd" / "gnupg"))
    # the organisation's signing key sits in the main keyring, the WKD key in its own
    store.keyring.import_data(pki.org_secret)
    pki.recipients.run("--import", data=pki.org.export(pki.org_fpr))
    from gateway.encrypt.encryptor import Signing

    enc = Encryptor(store, Signing(pgp_key=pki.org_fpr))
    raw = sample_message("wendy@adv.test")
    res = enc.encrypt_for(raw, "wendy@adv.test", NOW)
    assert isinstance(res, Encrypted), res
    assert (res.source, res.fingerprint, res.signed) == ("wkd", fpr, True)
    assert store.keyring.for_address("wendy@adv.test") == []  # the admin's keyring untouched
    import email
    import email.policy

    msg = email.message_from_bytes(res.message, policy=email.policy.default)
    armored = list(msg.iter_parts())[1].get_payload(decode=True)  # type: ignore[attr-defined]
    inner, status = pki.recipients.decrypt_verbose(armored)
    assert b"Synthetic test body" in inner and "GOODSIG" in status
    # a second message uses the cache: no new request
    count = len(directory.requests)
    assert isinstance(enc.encrypt_for(raw, "wendy@adv.test", NOW + 10), Encrypted)
    assert len(directory.requests) == count
