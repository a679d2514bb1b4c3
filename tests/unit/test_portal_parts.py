"""The portal's pure parts: sealing, the notification's contents, rendering a stored message
safely. Synthetic data only."""

from __future__ import annotations

from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import SMTP, default
from pathlib import Path

import pytest

from gateway.config import load_config
from portal import crypto
from portal.mail import Composer, original_headers, strip_secure
from portal.render import render, sanitise

ROOT = Path(__file__).resolve().parents[2]


def test_seal_round_trip_and_tamper() -> None:
    secret, pid = crypto.new_secret(), crypto.new_id()
    key = crypto.derive(secret, "pickup", pid)
    blob = crypto.seal(key, b"synthetic content", pid)
    assert b"synthetic" not in blob
    assert crypto.unseal(key, blob, pid) == b"synthetic content"
    with pytest.raises(crypto.SealError):
        crypto.unseal(crypto.derive(crypto.new_secret(), "pickup", pid), blob, pid)
    with pytest.raises(crypto.SealError):  # bound to its pickup id
        crypto.unseal(key, blob, crypto.new_id())
    flipped = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(crypto.SealError):
        crypto.unseal(key, flipped, pid)
    # the key depends on purpose and context, and the token hash is not the key
    assert crypto.derive(secret, "session", pid) != key
    assert crypto.token_hash(secret) != key
    assert len(pid) >= 22 and len(secret) >= 43  # 128 and 256 bits, URL-safe


def test_codes() -> None:
    codes = {crypto.new_code(6) for _ in range(200)}
    assert all(len(c) == 6 and c.isdigit() for c in codes)
    assert len(codes) > 150
    key = crypto.derive("s", "pickup", "p")
    assert crypto.code_hash(key, "123456") != crypto.code_hash(key, "123457")


def test_strip_secure() -> None:
    assert strip_secure("[secure] Lab results") == "Lab results"
    assert strip_secure("Re: [SECURE]  referral [Secure]") == "Re: referral"


def _original() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Alice Sender <alice@example.org>"
    msg["To"] = "bob@dest.test"
    msg["Subject"] = "[secure] Results for Testpatient Quux"
    msg["Message-ID"] = "<m1@example.org>"
    msg.set_content("Synthetic body about Testpatient Quux.")
    msg.add_alternative("<p>Synthetic <b>body</b><script>alert(1)</script>"
                        "<img src='https://tracker.test/p.gif'>"
                        "<a href='javascript:alert(1)'>x</a>"
                        "<a href='https://example.org/info'>info</a></p>", subtype="html")
    msg.add_attachment(b"%PDF-synthetic", maintype="application", subtype="pdf",
                       filename="quux-labs.pdf")
    return msg.as_bytes(policy=SMTP)


def test_notification_has_no_phi() -> None:
    cfg = load_config(ROOT / "conf" / "gateway.yaml", ["portal.anti_phishing_phrase=blue heron"])
    comp = Composer(cfg.portal, cfg.organisation, cfg.hostname)
    orig = original_headers(_original(), "alice@example.org")
    assert orig.sender_name == "Alice Sender" and orig.subject == "Results for Testpatient Quux"
    raw = comp.notification(orig, "bob@dest.test", "http://portal.test/p/abc/def", 1.8e9, 1.7e9)
    msg = BytesParser(policy=default).parsebytes(raw)
    assert msg["Subject"] == f"Secure message from {cfg.organisation}"
    text = raw.decode()
    for leaked in ("Quux", "Testpatient", "quux-labs", "Synthetic"):
        assert leaked not in text
    plain = msg.get_body(preferencelist=("plain",))
    html = msg.get_body(preferencelist=("html",))
    assert plain is not None and html is not None
    assert "http://portal.test/p/abc/def" in plain.get_content()
    assert 'href="http://portal.test/p/abc/def"' in html.get_content()
    assert "blue heron" in plain.get_content() and "Alice Sender" in plain.get_content()
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")


def test_notification_escapes_sender_name_in_html() -> None:
    cfg = load_config(ROOT / "conf" / "gateway.yaml", [])
    comp = Composer(cfg.portal, cfg.organisation, cfg.hostname)
    orig = original_headers(b'From: "<b>Mallory</b>" <m@example.org>\r\n\r\nx', "m@example.org")
    raw = comp.notification(orig, "bob@dest.test", "http://p.test/p/a/b", 1.8e9, 1.7e9)
    html = BytesParser(policy=default).parsebytes(raw).get_body(preferencelist=("html",))
    assert html is not None and "<b>Mallory" not in html.get_content()
    assert "&lt;b&gt;Mallory" in html.get_content()


def test_render_sanitises_and_lists_attachments() -> None:
    shown = render(_original())
    assert shown.subject == "Results for Testpatient Quux"
    assert shown.html is not None
    assert "<script" not in shown.html and "alert" not in shown.html
    assert "<img" not in shown.html and "tracker.test" not in shown.html
    assert "javascript:" not in shown.html
    assert 'href="https://example.org/info"' in shown.html and "noopener" in shown.html
    assert [(a.filename, a.data) for a in shown.attachments] == [
        ("quux-labs.pdf", b"%PDF-synthetic")]


def test_render_plain_and_attached_message() -> None:
    inner = EmailMessage()
    inner["Subject"] = "inner"
    inner.set_content("inner synthetic text")
    outer = EmailMessage()
    outer["Subject"] = "outer"
    outer.set_content("plain <b>not html</b>")
    outer.add_attachment(inner)
    shown = render(outer.as_bytes(policy=SMTP))
    assert shown.html is None and shown.text is not None and "<b>not html</b>" in shown.text
    assert len(shown.attachments) == 1
    assert shown.attachments[0].content_type == "message/rfc822"
    assert b"inner synthetic text" in shown.attachments[0].data


def test_sanitise_keeps_tables() -> None:
    out = sanitise("<table><tr><td colspan=2 onclick='x()'>a</td></tr></table>")
    assert "<td colspan=\"2\">a</td>" in out and "onclick" not in out


def test_stored_form_carries_the_rendered_view() -> None:
    from portal.render import pack, unpack

    raw = _original()
    view, original = unpack(pack(raw))
    assert original == raw
    assert view.subject == "Results for Testpatient Quux" and view.html is not None
    assert "<script" not in view.html
    assert [(f.filename, f.size) for f in view.files] == [("quux-labs.pdf", 14)]
    legacy_view, legacy_raw = unpack(raw)  # content stored before views existed
    assert legacy_raw == raw and legacy_view == view
