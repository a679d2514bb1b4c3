"""DKIM signing: byte-identical to dkimpy's ``dkim.sign``, verified by OpenDKIM (an independent
implementation) on the exact bytes, domain and key selection, unsigned cases; key generation,
DNS records and rotation."""

from __future__ import annotations

import argparse
import base64
import random
import re
import stat
import sysconfig
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.canonicalization import Relaxed

from gateway.config import Config, load_config
from gateway.dkim import MALFORMED, NO_FROM, NO_KEY, Key, Signer, parse, relaxed_body
from gateway.dkim import select_headers as our_select
from gateway.dkimcli import add_parsers
from gateway.dkimkeys import (
    ACTIVE,
    PENDING,
    RETIRING,
    KeyStore,
    dns_records,
    keygen,
    public_key_b64,
    rotate,
    txt_strings,
    txt_value,
)
from gateway.tlsutil import ensure_dkim_key
from tests import opendkim

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf" / "gateway.yaml"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()
RSA_PEM = RSA_KEY.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
ED_SEED = base64.b64encode(ED_KEY.private_bytes(serialization.Encoding.Raw,
                                                serialization.PrivateFormat.Raw,
                                                serialization.NoEncryption()))

PLAIN = (b"From: Alice Example <alice@example.org>\r\nTo: bob@partner.test\r\n"
         b"Cc: carol@partner.test\r\nSubject: Appointment   reminder\r\n"
         b"Date: Mon, 01 Jan 2024 09:00:00 +0000\r\nMessage-ID: <m1@example.org>\r\n"
         b"Reply-To: front-desk@example.org\r\nMIME-Version: 1.0\r\n"
         b"Content-Type: text/plain; charset=us-ascii\r\nX-Mailer: test\r\n"
         b"Received: from x by y\r\n\r\nSee you on Monday.  \r\n\tIndented line\r\n\r\n\r\n")
EIGHT_BIT = (b"From: alice@example.org\r\nTo: bob@partner.test\r\nSubject: =?utf-8?q?F=C3=BCr?=\r\n"
             b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
             b"Content-Transfer-Encoding: 8bit\r\n\r\n"
             + "Grüße aus Köln, café, naïve \u2013 ok\r\n".encode() * 20)
SMTPUTF8 = ("From: Jürgen Müller <jürgen@example.org>\r\nTo: josé@partner.test\r\n"
            "Subject: Überweisung für Frau Ñúñez\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            "Grüße 👋\r\n").encode()
LONG_HEADER = (b"From: alice@example.org\r\nTo: "
               + b",\r\n ".join(b"recipient%d@partner.test" % i for i in range(300))
               + b"\r\nSubject: " + b"word " * 400 + b"\r\n"
               + b"References: " + b" ".join(b"<id%d@example.org>" % i for i in range(200))
               + b"\r\n\r\nbody\r\n")
BARE_LF = b"From: alice@example.org\nTo: bob@partner.test\nSubject: lf\n\nline one \nline two\n"
MESSAGES = {"plain": PLAIN, "8bit": EIGHT_BIT, "smtputf8": SMTPUTF8, "long-header": LONG_HEADER,
            "bare-lf": BARE_LF, "empty-body": b"From: alice@example.org\r\nSubject: x\r\n\r\n",
            "no-body": b"From: alice@example.org\r\nSubject: x\r\n"}


def _signer(*keys: Key, t: int = 1_700_000_000) -> Signer:
    return Signer(keys, clock=lambda: t)


RSA_K = Key(b"example.org", b"s2024", "rsa", RSA_KEY)
ED_K = Key(b"example.org", b"e2024", "ed25519", ED_KEY)


def _records() -> dict[str, str]:
    return {"s2024._domainkey.example.org": txt_value(RSA_KEY),
            "e2024._domainkey.example.org": txt_value(ED_KEY)}


def _dkimpy_sign(msg: bytes, algorithm: bytes, t: int, monkeypatch: pytest.MonkeyPatch) -> bytes:
    monkeypatch.setattr(dkim.time, "time", lambda: t)
    headers, _ = dkim.rfc822_parse(msg)
    # a message with bare LF line ends gets its signature field with LF too
    linesep = b"\r\n" if msg.find(b"\r\n") == msg.find(b"\n") - 1 else b"\n"
    if algorithm == b"rsa-sha256":
        return bytes(dkim.sign(msg, b"s2024", b"example.org", RSA_PEM, linesep=linesep,
                               canonicalize=(b"relaxed", b"relaxed"),
                               include_headers=list(our_select(headers))))
    return bytes(dkim.sign(msg, b"e2024", b"example.org", ED_SEED, linesep=linesep,
                           canonicalize=(b"relaxed", b"relaxed"),
                           signature_algorithm=b"ed25519-sha256",
                           include_headers=list(our_select(headers))))


# --------------------------------------------------------------------------- byte identity


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_rsa_signature_is_byte_identical_to_dkimpy(name, monkeypatch):
    msg = MESSAGES[name]
    ours = _signer(RSA_K).sign(msg, "alice@example.org")
    assert ours.endswith(msg)
    assert ours[: len(ours) - len(msg)] == _dkimpy_sign(msg, b"rsa-sha256", 1_700_000_000,
                                                        monkeypatch)


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_ed25519_signature_is_byte_identical_to_dkimpy(name, monkeypatch):
    pytest.importorskip("nacl", reason="dkimpy signs Ed25519 only with PyNaCl installed")
    msg = MESSAGES[name]
    ours = _signer(ED_K).sign(msg, "alice@example.org")
    assert ours[: len(ours) - len(msg)] == _dkimpy_sign(msg, b"ed25519-sha256", 1_700_000_000,
                                                        monkeypatch)


def _email_corpus() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return sorted((stdlib / "test" / "test_email" / "data").glob("msg_*.txt"))


def test_byte_identical_on_cpythons_email_corpus(monkeypatch):
    corpus = _email_corpus()
    if not corpus:
        pytest.skip("CPython's test/test_email/data is not installed here")
    signer = _signer(RSA_K)
    compared = 0
    for path in corpus:
        msg = path.read_bytes()
        try:
            ref = _dkimpy_sign(msg, b"rsa-sha256", 1_700_000_000, monkeypatch)
        except dkim.DKIMException:
            # dkimpy cannot sign it (no From, bad header syntax): neither do we
            assert not signer.sign_message(msg, "a@example.org").signed, path.name
            continue
        signed = signer.sign_message(msg, "alice@example.org")
        if signed.reason == NO_KEY:  # From is some other domain and so is the sender
            continue
        assert signed.data[: len(signed.data) - len(msg)] == ref, path.name
        compared += 1
    assert compared > 20


def test_parse_and_relaxed_body_match_dkimpy_on_random_input():
    rnd = random.Random(6)
    alphabet = [b" ", b"\t", b"\r\n", b"\n", b"\r", b"a", b"b", b"  ", b"\r\n\r\n", b":"]
    for _ in range(3000):
        body = b"".join(rnd.choice(alphabet) for _ in range(rnd.randrange(0, 40)))
        assert relaxed_body(body) == Relaxed.canonicalize_body(body), body
        msg = b"From: a@example.org\r\nX: y\n\t z\r\n" + body
        try:
            ref = dkim.rfc822_parse(msg)
        except dkim.MessageFormatError:
            with pytest.raises(dkim.MessageFormatError):
                parse(msg)
            continue
        assert parse(msg) == ref, msg


# --------------------------------------------------------------------------- OpenDKIM verifies


@pytest.mark.parametrize("name", ["plain", "8bit", "smtputf8", "long-header", "empty-body"])
def test_opendkim_verifies_both_signatures(name, tmp_path):
    signed = _signer(RSA_K, ED_K, t=int(__import__("time").time())).sign(MESSAGES[name],
                                                                          "alice@example.org")
    results = opendkim.verify(signed, tmp_path, keys=_records())
    assert results == {"s2024._domainkey.example.org": "pass",
                       "e2024._domainkey.example.org": "pass"}


def test_opendkim_rejects_a_changed_message(tmp_path):
    signed = _signer(RSA_K, ED_K, t=int(__import__("time").time())).sign(PLAIN,
                                                                          "alice@example.org")
    tampered = signed.replace(b"See you on Monday.", b"See you on Friday.")
    results = opendkim.verify(tampered, tmp_path, keys=_records())
    assert set(results.values()) == {"fail"}, results


def test_signed_fields_and_oversigned_from():
    signed = _signer(RSA_K).sign(PLAIN, "alice@example.org")
    h = re.search(rb"h=([^;]+);", signed)
    assert h is not None
    fields = [f.strip() for f in re.sub(rb"\s+", b"", h.group(1)).split(b":")]
    assert fields == [b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to",
                      b"mime-version", b"content-type", b"from"]
    assert b"c=relaxed/relaxed" in signed and b"a=rsa-sha256" in signed


# --------------------------------------------------------------------------- which key


def test_subdomain_signed_with_the_parent_key_and_each_domain_its_own():
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signer = _signer(RSA_K, Key(b"clinic.test", b"c1", "rsa", other))
    msg = PLAIN.replace(b"alice@example.org", b"alice@notify.example.org")
    s = signer.sign_message(msg, "alice@notify.example.org")
    assert s.domain == "example.org" and s.selectors == ("s2024",)
    msg = PLAIN.replace(b"alice@example.org", b"dr@clinic.test")
    s = signer.sign_message(msg, "dr@clinic.test")
    assert s.domain == "clinic.test" and s.selectors == ("c1",)
    assert b"d=clinic.test" in s.data


def test_domain_without_key_leaves_unsigned_with_a_reason():
    signer = _signer(RSA_K)
    msg = PLAIN.replace(b"alice@example.org", b"someone@elsewhere.test")
    s = signer.sign_message(msg, "someone@elsewhere.test")
    assert not s.signed and s.reason == NO_KEY and s.data == msg
    assert signer.sign(msg, "someone@elsewhere.test") == msg
    # the envelope sender's domain signs when the From domain has no key (e.g. a forward)
    s = signer.sign_message(msg, "bounces@example.org")
    assert s.signed and s.domain == "example.org"
    s = signer.sign_message(b"Subject: no from\r\n\r\nx\r\n", "alice@example.org")
    assert s.reason == NO_FROM
    s = signer.sign_message(b"not a header line\r\n\r\n", "alice@example.org")
    assert s.reason == MALFORMED


async def test_sign_async_signs_big_messages_off_the_loop():
    big = PLAIN + b"0123456789abcdef" * 40_000
    s = await _signer(RSA_K).sign_async(big, "alice@example.org")
    assert s.signed and s.data.endswith(big)


# --------------------------------------------------------------------------- keys from config


def _config(tmp_path: Path, *extra: str) -> Config:
    return load_config(CONF, [f"paths.var={tmp_path / 'var'}",
                              "domains=[example.org, clinic.test]", *extra])


def test_signer_from_config_uses_first_start_keys_and_keygen(tmp_path, capsys):
    cfg = _config(tmp_path)
    for d in cfg.domains:
        ensure_dkim_key(cfg.paths.var, d)  # what the gateway does on first start
    signer = Signer.from_config(cfg)
    assert signer.domains == ("clinic.test", "example.org")
    keygen(cfg, "example.org", "ed1", "ed25519")
    keygen(cfg, "notify.example.org", "n1")
    signer = Signer.from_config(cfg)
    s = signer.sign_message(PLAIN, "alice@example.org")
    assert s.selectors == ("phigate", "ed1")
    s = signer.sign_message(PLAIN.replace(b"@example.org>", b"@notify.example.org>"), "x@y.test")
    assert s.domain == "notify.example.org"
    path = cfg.paths.var / "dkim" / "example.org.ed1.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    out = capsys.readouterr().out
    assert 'ed1._domainkey.example.org. IN TXT "v=DKIM1; k=ed25519; p=' in out
    # the verifier agrees with the records `dkim dns` prints
    records = {}
    for line in dns_records(cfg, "example.org"):
        name, _, rest = line.partition(" IN TXT ")
        records[name.rstrip(".")] = "".join(re.findall(r'"([^"]*)"', rest))
    signed = signer.sign(PLAIN, "alice@example.org")
    assert opendkim.verify(signed, tmp_path / "v", keys=records) == {
        "phigate._domainkey.example.org": "pass", "ed1._domainkey.example.org": "pass"}


def test_configured_keys_and_config_errors(tmp_path):
    key = tmp_path / "k.pem"
    key.write_bytes(RSA_PEM)
    cfg = _config(tmp_path, f'dkim.domains={{"clinic.test": {{"selector": "x1", "key": "{key}"}}}}')
    assert cfg.dkim.domains["clinic.test"].key == key
    signer = Signer.from_config(cfg)
    assert signer.keys_for("clinic.test")[0].selector == b"x1"
    bad = tmp_path / "gateway.yaml"
    bad.write_text("domains: [example.org]\ndkim:\n  domains:\n    other.test:\n"
                   "      selector: 'bad selector'\n      key: k.pem\n      ed25519_key: e.pem\n")
    with pytest.raises(Exception) as exc:
        load_config(bad)
    problems = "\n".join(exc.value.problems)  # type: ignore[attr-defined]
    assert f"{bad}:5: dkim.domains.other.test.selector: 'bad selector' is not a DKIM selector" \
        in problems
    assert "set both ed25519_selector and ed25519_key" in problems
    assert "'other.test' is not one of domains" in problems


# --------------------------------------------------------------------------- records, rotation


def test_txt_strings_are_at_most_255_bytes():
    value = txt_value(rsa.generate_private_key(public_exponent=65537, key_size=4096))
    parts = txt_strings(value)
    assert len(parts) == 3 and all(len(p) <= 255 for p in parts) and "".join(parts) == value


def _cli(cfg_args: list[str], argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="phigate")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([*argv, "--config", str(CONF),
                              *[a for s in cfg_args for a in ("--set", s)]])
    result: int = args.handler(args, load_config(args.config, args.overrides))
    return result


def test_cli_keygen_and_dns(tmp_path, capsys):
    sets = [f"paths.var={tmp_path / 'var'}", "domains=[example.org]"]
    assert _cli(sets, ["dkim", "keygen", "--domain", "example.org", "--selector", "s1"]) == 0
    assert _cli(sets, ["dkim", "keygen", "--domain", "example.org", "--selector", "e1",
                       "--ed25519"]) == 0
    capsys.readouterr()
    assert _cli(sets, ["dkim", "dns", "example.org"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r's1\._domainkey\.example\.org\. IN TXT "v=DKIM1; k=rsa; p=[^"]+"'
                        r'( "[^"]+")+', lines[0]), lines[0]
    assert all(len(s) <= 255 for s in re.findall(r'"([^"]*)"', lines[0]))
    assert lines[1].startswith('e1._domainkey.example.org. IN TXT "v=DKIM1; k=ed25519; p=')
    # refused: a second key under a used selector, a foreign domain
    assert _cli(sets, ["dkim", "keygen", "--domain", "example.org", "--selector", "s1"]) == 1
    assert _cli(sets, ["dkim", "keygen", "--domain", "evil.test", "--selector", "s1"]) == 1
    assert "not one of the organisation's domains" in capsys.readouterr().err
    assert _cli(sets, ["dkim", "dns", "sub.example.org"]) == 1
    assert "d=example.org" in capsys.readouterr().err


def test_cli_is_wired_into_phigate():
    from gateway import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "dkim" not in sub.choices:
        pytest.skip("gateway/cli.py does not call dkimcli.add_parsers yet")
    assert "dns" in sub.choices


def test_rotation_start_switch_retire(tmp_path):
    cfg = _config(tmp_path, "dkim.rotate_grace=2d")
    ensure_dkim_key(cfg.paths.var, "example.org")
    store = KeyStore(cfg)
    dns: dict[str, list[str]] = {}
    lookup: Callable[[str], list[str]] = lambda name: dns.get(name, [])  # noqa: E731
    out: list[str] = []
    t0 = 1_700_000_000.0

    assert rotate(cfg, "example.org", selector="new1", lookup=lookup, now=t0,
                  out=out.append) == 0
    assert out[0].startswith("started:") and any("publish this record" in o for o in out)
    assert [(e.selector, e.status) for e in store.entries("example.org")] == [
        ("phigate", ACTIVE), ("new1", PENDING)]
    assert Signer.from_config(cfg).keys_for("example.org")[0].selector == b"phigate"

    out.clear()  # not yet in DNS: refuses to switch, says what to publish
    assert rotate(cfg, "example.org", lookup=lookup, now=t0 + 60, out=out.append) == 1
    assert out[0].startswith("not switched: new1._domainkey.example.org. has no TXT record")
    dns["new1._domainkey.example.org."] = ["v=DKIM1; k=rsa; p=" + public_key_b64(RSA_KEY)]
    out.clear()  # a different key published: still refused
    assert rotate(cfg, "example.org", lookup=lookup, now=t0 + 60, out=out.append) == 1
    assert "holds a different key" in out[0]

    new_key = serialization.load_pem_private_key(
        (cfg.paths.var / "dkim" / "example.org.new1.key").read_bytes(), None)
    assert isinstance(new_key, rsa.RSAPrivateKey)
    dns["new1._domainkey.example.org."] = [txt_value(new_key)]
    out.clear()
    assert rotate(cfg, "example.org", lookup=lookup, now=t0 + 3600, out=out.append) == 0
    assert out[0].startswith("switched: example.org now signs with rsa selector new1")
    assert [(e.selector, e.status) for e in store.entries("example.org")] == [
        ("new1", ACTIVE), ("phigate", RETIRING)]
    assert Signer.from_config(cfg).keys_for("example.org")[0].selector == b"new1"
    assert len(dns_records(cfg, "example.org")) == 2  # the old record stays published

    out.clear()  # within the grace period: nothing to do yet
    assert rotate(cfg, "example.org", lookup=lookup, now=t0 + 86400, out=out.append) == 0
    assert out[0].startswith("waiting: rsa selector phigate")
    out.clear()
    assert rotate(cfg, "example.org", lookup=lookup, now=t0 + 3 * 86400, out=out.append) == 0
    assert out[0].startswith("retired: rsa selector phigate")
    assert "remove the DNS record phigate._domainkey.example.org." in out[1]
    assert not (cfg.paths.var / "dkim" / "example.org.phigate.key").exists()
    assert [(e.selector, e.status) for e in store.entries("example.org")] == [("new1", ACTIVE)]


def test_rotation_refuses_configured_keys(tmp_path):
    key = tmp_path / "k.pem"
    key.write_bytes(RSA_PEM)
    cfg = _config(tmp_path, f'dkim.domains={{"clinic.test": {{"selector": "x1", "key": "{key}"}}}}')
    out: list[str] = []
    assert rotate(cfg, "clinic.test", out=out.append) == 1
    assert "configured in" in out[0] and "rotate by hand" in out[0]
