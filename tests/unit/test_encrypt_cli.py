"""``phigate keys import|list|remove`` (through keyscli's parsers, as cli.py adds them), the
``encrypt:`` configuration section, and the entity split that decides what stays outside the
encryption. Synthetic keys and data only."""

from __future__ import annotations

import argparse
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from gateway.encrypt.entity import chunks, entity_header, outer_header, split
from gateway.keyscli import add_parsers, run
from tests.unit.test_encrypt_keys import Pki, needs_tools, pem, pki

__all__ = ["pki"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path)
    p.add_argument("--set", dest="overrides", action="append", default=[])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phigate")
    add_parsers(parser.add_subparsers(dest="command", required=True), _common)
    return parser


@pytest.fixture(autouse=True)
def _stop_agents(tmp_path: Path) -> Iterator[None]:
    yield  # gpg starts an agent in the keyring's home on import; stop it with the test
    subprocess.run(["gpgconf", "--homedir", str(tmp_path / "var" / "gnupg"), "--kill", "all"],
                   capture_output=True, check=False)


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(f"paths:\n  var: {tmp_path / 'var'}\nrules:\n  enabled: false\n{extra}")
    return path


def _keys(conf: Path, *argv: str) -> int:
    args = _parser().parse_args(["keys", *argv, "--config", str(conf)])
    return run(args, load_config(args.config, args.overrides))


@needs_tools
def test_keys_import_list_remove(pki: Pki, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    conf = _config(tmp_path)
    files = {}
    for name, data in (("alice.asc", pki.alice.public), ("old.asc", pki.old.public)):
        files[name] = tmp_path / name
        files[name].write_bytes(data)
    cert, _ = pki.ca.issue("carol@clinic.test")
    (tmp_path / "carol.pem").write_bytes(pem(cert))
    (tmp_path / "junk.txt").write_text("hello")
    assert _keys(conf, "import", str(files["alice.asc"]), str(files["old.asc"])) == 0
    err = capsys.readouterr().err
    assert f"{pki.old.fingerprint} is expired" in err
    assert _keys(conf, "import", "--aes-gcm", str(tmp_path / "carol.pem"),
                 str(tmp_path / "junk.txt")) == 1
    assert "junk.txt: no OpenPGP key or X.509 certificate found" in capsys.readouterr().err
    assert _keys(conf, "list", "--json") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_addr = {r["addresses"][0]: r for r in rows}
    assert by_addr["alice@partner.test"]["status"] == "valid"
    assert by_addr["alice@partner.test"]["fingerprint"] == pki.alice.fingerprint
    assert by_addr["old@partner.test"]["status"] == "expired"
    assert by_addr["carol@clinic.test"] == by_addr["carol@clinic.test"] | {
        "type": "smime", "status": "valid", "aes_gcm": True}
    assert _keys(conf, "list") == 0
    text = capsys.readouterr().out
    assert "openpgp  valid" in text and "smime    valid" in text and "-- 3 key(s)" in text
    assert _keys(conf, "remove", "old@partner.test") == 0
    assert "removed openpgp" in capsys.readouterr().out
    assert _keys(conf, "remove", by_addr["carol@clinic.test"]["fingerprint"].lower()) == 0
    assert _keys(conf, "remove", "nobody@x.test") == 1
    capsys.readouterr()
    assert _keys(conf, "list", "--json") == 0
    assert [json.loads(r)["fingerprint"] for r in capsys.readouterr().out.splitlines()] == [
        pki.alice.fingerprint]
    audit = (tmp_path / "var" / "log" / "audit.jsonl").read_text().splitlines()
    actions = [json.loads(line)["event.action"] for line in audit]
    assert actions.count("keys.imported") == 3 and actions.count("keys.removed") == 2


def test_encrypt_config_defaults_and_errors(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path))
    assert cfg.encrypt.keyring == tmp_path / "var" / "gnupg"
    assert cfg.encrypt.smime_dir == tmp_path / "var" / "smime"
    assert cfg.encrypt.wkd.cache_dir == tmp_path / "var" / "wkd"
    assert not cfg.encrypt.wkd.enabled and cfg.encrypt.protect_subject
    conf = _config(tmp_path, "encrypt:\n  smime_gcm: ['@lab.test', 'x@y.test']\n"
                             "  wkd: {enabled: true, cache_ttl: 2h}\n")
    cfg = load_config(conf)
    assert cfg.encrypt.smime_gcm == ("lab.test", "x@y.test") and cfg.encrypt.wkd.enabled
    assert cfg.encrypt.wkd.cache_ttl == 7200
    bad = _config(tmp_path, "encrypt:\n  keyring: gnupg\n  sign:\n    pgp_key: nope\n"
                            "    smime_cert: org.pem\n  wdk: {}\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    text = "\n".join(err.value.problems)
    assert f"{bad}:10: encrypt.wdk: unknown key 'wdk'" in text
    assert f"{bad}:8: encrypt.sign.pgp_key: expected an OpenPGP fingerprint" in text
    assert "set both smime_cert and smime_key" in text


RAW = (b"Received: from x\r\nFrom: a@example.org\r\nTo: b@partner.test\r\n"
       b"Subject: =?utf-8?q?Patient_4711?=\r\n  continued\r\nMIME-Version: 1.0\r\n"
       b"Content-Type: multipart/mixed;\r\n boundary=\"xx\"\r\nDate: d\r\n"
       b"Message-ID: <m@x>\r\n\r\n--xx\r\n\r\nbody\r\n--xx--\r\n")


def test_entity_split_and_headers() -> None:
    sp = split(RAW)
    assert [f.name for f in sp.fields] == ["received", "from", "to", "subject",
                                           "mime-version", "content-type", "date", "message-id"]
    assert bytes(sp.body) == b"--xx\r\n\r\nbody\r\n--xx--\r\n"
    head = entity_header(sp, True)
    assert b"Subject: =?utf-8?q?Patient_4711?=\r\n  continued\r\n" in head
    assert b'Content-Type: multipart/mixed; boundary="xx"; protected-headers="v1"\r\n' in head
    assert head.endswith(b"\r\n\r\n") and b"Received" not in head
    outer = outer_header(sp, True, [b"Content-Type: application/pkcs7-mime"])
    assert b"Subject: ...\r\n" in outer and b"4711" not in outer
    assert b"Received: from x" in outer and outer.count(b"MIME-Version") == 1
    assert entity_header(sp, False) == b'Content-Type: multipart/mixed;\r\n boundary="xx"\r\n\r\n'
    plain = split(b"Subject: s\n\nline1\nline2\r\nline3")
    assert entity_header(plain, False) == b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    body = b"".join(bytes(c) for c in chunks(b"", plain.body))
    assert body == b"line1\r\nline2\r\nline3"
    assert bytes(split(b"no header body").body) == b""


@needs_tools
def test_from_config_and_check_setup(pki: Pki, tmp_path: Path) -> None:
    from gateway.encrypt import Encrypted, Encryptor, check_setup
    from tests.unit.test_encrypt_keys import NOW, sample_message

    org_cert, org_key = pki.ca.issue("secure@example.org")
    other_cert, _ = pki.ca.issue("other@example.org")
    (tmp_path / "org.crt").write_bytes(pem(org_cert))
    (tmp_path / "other.crt").write_bytes(pem(other_cert))
    (tmp_path / "org.key").write_bytes(org_key)
    conf = _config(tmp_path, f"encrypt:\n  sign:\n    pgp_key: {pki.org_fpr}\n"
                             "    smime_cert: other.crt\n    smime_key: org.key\n")
    cfg = load_config(conf)
    problems = check_setup(cfg)
    assert any(f"no secret key {pki.org_fpr}" in p for p in problems)
    assert any("smime_key does not belong to smime_cert" in p for p in problems)
    enc = Encryptor.from_config(cfg)
    enc.store.keyring.import_data(pki.org_secret)
    enc.store.import_data(pki.alice.public, NOW)
    cfg = load_config(conf, ["encrypt.sign.smime_cert=org.crt"])
    assert check_setup(cfg) == []
    res = Encryptor.from_config(cfg).encrypt_for(sample_message("alice@partner.test"),
                                                 "alice@partner.test", NOW)
    assert isinstance(res, Encrypted) and res.signed and res.method == "pgp"
