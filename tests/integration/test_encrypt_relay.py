"""End-to-end encryption in the running gateway: keys imported with ``phigate keys import``;
PHI to a recipient with a valid OpenPGP key arrives as PGP/MIME that the recipient's own gpg
decrypts to the original; a recipient with an expired key gets the portal and the sender a
notice; a recipient without a key keeps the TLS-or-portal path. Synthetic data only."""

from __future__ import annotations

import shutil
import smtplib
from email.parser import BytesParser
from email.policy import default
from pathlib import Path

import pytest

from tests.conftest import GatewayProc, Sink
from tests.unit.test_encrypt_keys import GpgHome

pytestmark = pytest.mark.skipif(shutil.which("gpg") is None,
                                reason="needs gpg (Debian gnupg; make test installs it)")

PHI = ("Referral for Patient: Jane Testperson, DOB 03/04/1971, MRN 00123456.\r\n"
       "Diagnosis: type 2 diabetes (E11.9), HbA1c 9.1%.\r\n")


def _send(gw: GatewayProc, to: str) -> None:
    data = (f"From: alice@example.org\r\nTo: {to}\r\nSubject: referral\r\n"
            f"Message-ID: <enc.{to}@example.org>\r\n\r\n{PHI}").encode()
    with smtplib.SMTP("127.0.0.1", gw.relay, timeout=30) as c:
        c.ehlo("client.test")
        assert not c.sendmail("alice@example.org", [to], data)


def test_pgp_recipient_gets_encrypted_mail(gateway_factory, sink: Sink, tmp_path: Path) -> None:
    home = GpgHome()
    try:
        home.gen("Pat Recipient <pat@dest.test>")
        home.gen("Old Key <old@dest.test>", expire="seconds=1", faked_time="20200101T000000")
        keyfile = tmp_path / "keys.asc"
        keyfile.write_bytes(home.export("pat@dest.test") + home.export("old@dest.test"))
        gw = gateway_factory("rules.enabled=true",
                             transport={"dest.test": sink.port, "example.org": sink.port})
        out = gw.cli("keys", "import", str(keyfile))
        assert out.returncode == 0, out.stderr

        _send(gw, "pat@dest.test")
        got = sink.wait_for(1)[0]
        assert got.rcpt_tos == ["pat@dest.test"]
        msg = BytesParser(policy=default).parsebytes(got.data)
        assert msg.get_content_type() == "multipart/encrypted"
        assert b"Testperson" not in got.data and b"00123456" not in got.data
        armored = next(p for p in msg.iter_parts()
                       if p.get_content_type() == "application/octet-stream")
        plain = home.decrypt(armored.get_payload(decode=True))
        assert b"Jane Testperson" in plain and b"00123456" in plain
        ev = gw.wait_event(lambda e: e["event.action"] == "message.encrypt"
                           and e["email.to.address"] == "pat@dest.test")
        assert ev["encrypt.method"] == "pgp" and ev["event.outcome"] == "success"

        # an expired key: the portal, and a PHI-free notice to the sender
        _send(gw, "old@dest.test")
        msgs = sink.wait_for(3)
        notice = next(m for m in msgs if m.rcpt_tos == ["alice@example.org"])
        note = next(m for m in msgs if m.rcpt_tos == ["old@dest.test"])
        assert b"Secure message from" in note.data
        assert b"expired" in notice.data.lower()
        for m in (notice, note):
            assert b"Testperson" not in m.data and b"referral" not in m.data
    finally:
        home.close()
