"""The pickup portal end to end in a real headless Chromium (Debian's ``chromium`` driven by
Selenium through Debian's ``chromedriver``, whose version always matches the browser).

A ``[secure]`` message with a binary attachment goes through a real ``phigate run``; the
notification reaches a local sink; the browser opens the notification's HTML part and clicks
"Open the message" like a user, asks for a code, types a wrong one (error shown), then the
one read from the second mail, reads the message, downloads the attachment (bytes compared),
and replies with text and a file; the reply reaches the sender's sink. A screenshot of the
message page on a phone-sized viewport goes to ``tests/e2e/out/``. A second gateway with
``portal.expire=2s`` shows the expiry page. Synthetic data only.
"""

from __future__ import annotations

import calendar
import email.utils
import shutil
import smtplib
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any, cast

import pytest

from tests.conftest import GatewayProc, Received, Sink
from tests.integration.portal_client import code_of
from tests.integration.portal_client import parse as _parse

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SKIP_REASON = "chromium not installed (make test installs it)"
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip(SKIP_REASON, allow_module_level=True)
pytest.importorskip("selenium", reason="selenium not installed (pip install selenium)")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
PHONE = (390, 844)
BODY = "Synthetic referral text for Testpatient Zyxw, follow-up in two weeks."
SUBJECT = "[secure] Referral Zyxw"
ATTACHMENT = bytes(range(256)) * 64 + b"\x00\xff synthetic tail"  # binary, compared byte for byte
REPLY_TEXT = "Synthetic reply from the browser"
REPLY_FILE = b"synthetic reply attachment\n\x00\x01\x02"


def parse(raw: bytes) -> EmailMessage:
    return cast(EmailMessage, _parse(raw))


def _submit(gw: GatewayProc, to: str, subject: str = SUBJECT) -> None:
    msg = EmailMessage()
    msg["From"] = "Alice Sender <alice@example.org>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{time.time_ns()}@example.org>"
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg.set_content(BODY)
    msg.add_attachment(ATTACHMENT, maintype="application", subtype="octet-stream",
                       filename="scan-zyxw.bin")
    with smtplib.SMTP("127.0.0.1", gw.relay, timeout=30) as c:
        c.ehlo("client.test")
        assert not c.sendmail("alice@example.org", [to], msg.as_bytes(policy=SMTP))


def _wait(sink: Sink, rcpt: str, subject: str, timeout: float = 30.0,
          skip: int = 0) -> Received:
    """The (skip+1)-th message at the sink for ``rcpt`` whose subject contains ``subject``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sink.handler.lock:
            found = [m for m in sink.handler.messages
                     if rcpt in m.rcpt_tos and subject in str(parse(m.data)["subject"])]
        if len(found) > skip:
            return found[skip]
        time.sleep(0.05)
    raise AssertionError(f"no message for {rcpt} with {subject!r} at the sink")


def _notification_html(note: Received, dest: Path) -> str:
    """The notification's HTML part as a local file URL, to open it as a mail client would."""
    part = parse(note.data).get_body(preferencelist=("html",))
    assert part is not None, "the notification has no HTML part"
    dest.write_text(part.get_content(), encoding="utf-8")
    return dest.as_uri()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[tuple[WebDriver, Path]]:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-sync",
                "--disable-component-update", f"--user-data-dir={tmp_path / 'profile'}",
                f"--window-size={PHONE[0]},{PHONE[1]}"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {
        "download.default_directory": str(downloads),
        "download.prompt_for_download": False,
        "download.directory_upgrade": True,
        "safebrowsing.enabled": False,  # no lookups (and no internet) for the download
    })
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(30)
        driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                               {"behavior": "allow", "downloadPath": str(downloads)})
        # a phone: 390x844 CSS pixels at 3x, touch, mobile layout (meta viewport honoured)
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": PHONE[0], "height": PHONE[1], "deviceScaleFactor": 3, "mobile": True})
        yield driver, downloads
    finally:
        driver.quit()


def _until(driver: WebDriver, cond: Callable[[Any], Any], what: str,
           timeout: float = 20.0) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(cond, message=what)


def _button(driver: WebDriver, label: str) -> Any:
    return _until(driver, ec.element_to_be_clickable(
        (By.XPATH, f"//button[normalize-space()='{label}']")), f"button {label!r}")


def _download(downloads: Path, name: str, timeout: float = 20.0) -> bytes:
    target = downloads / name
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if target.exists() and not list(downloads.glob("*.crdownload")):
            return target.read_bytes()
        time.sleep(0.1)
    raise AssertionError(f"download did not finish: {sorted(p.name for p in downloads.iterdir())}")


@pytest.fixture
def gateways(gateway_factory: Callable[..., GatewayProc],
             sink: Sink) -> tuple[GatewayProc, GatewayProc]:
    transport = {"dest.test": sink.port, "example.org": sink.port}
    main = gateway_factory("rules.enabled=true", transport=transport, name="gw")
    short = gateway_factory("rules.enabled=true", "portal.expire=2s", transport=transport,
                            name="gw-expire")
    return main, short


def test_portal_in_chromium(gateways: tuple[GatewayProc, GatewayProc], sink: Sink,
                            browser: tuple[WebDriver, Path], tmp_path: Path) -> None:
    gw, short = gateways
    driver, downloads = browser

    # a message on the short-lived gateway first: its link has expired by the end
    _submit(short, "erin@dest.test")
    _submit(gw, "bob@dest.test")

    # the notification, opened from its HTML part: click "Open the message" like a user
    note = _wait(sink, "bob@dest.test", "Secure message from")
    assert b"Zyxw" not in note.data and b"scan-zyxw" not in note.data
    driver.get(_notification_html(note, tmp_path / "notification.html"))
    driver.find_element(By.LINK_TEXT, "Open the message").click()
    # a cross-site hop from the mail client, then the same-site continue page, then the form
    _button(driver, "Email me a code").click()
    code_input = _until(driver, ec.element_to_be_clickable((By.ID, "code")), "code field")
    assert "b***@dest.test" in driver.page_source
    code = code_of(_wait(sink, "bob@dest.test", "one-time code").data)

    # a wrong code: the error, in words, and the form again
    wrong = "000000" if code != "000000" else "111111"
    code_input.send_keys(wrong)
    _button(driver, "Verify and open").click()
    alert = _until(driver, ec.visibility_of_element_located((By.CSS_SELECTOR, "[role=alert]")),
                   "error after a wrong code")
    assert "That code is not right" in alert.text and "more tries" in alert.text

    # the right one: the message
    field = _until(driver, ec.element_to_be_clickable((By.ID, "code")), "code field again")
    field.clear()
    field.send_keys(code)
    _button(driver, "Verify and open").click()
    _until(driver, ec.url_contains("/m/"), "the message page")
    _until(driver, ec.visibility_of_element_located((By.TAG_NAME, "h1")), "heading")
    assert driver.find_element(By.TAG_NAME, "h1").text == "Referral Zyxw"  # [secure] removed
    assert "Testpatient Zyxw" in driver.find_element(By.CSS_SELECTOR, ".body").text
    assert driver.execute_script("return window.innerWidth") == PHONE[0]
    # the page fits the phone: nothing wider than the viewport
    assert driver.execute_script("return document.documentElement.scrollWidth") <= PHONE[0]

    OUT.mkdir(exist_ok=True)
    shot = OUT / f"portal-message-{PHONE[0]}x{PHONE[1]}.png"
    assert driver.save_screenshot(str(shot))
    print(f"\nscreenshot of the message page: {shot}")

    # the attachment, downloaded by clicking its link
    driver.find_element(By.LINK_TEXT, "scan-zyxw.bin").click()
    assert _download(downloads, "scan-zyxw.bin") == ATTACHMENT

    # a reply with text and a file
    upload = tmp_path / "reply-note.bin"
    upload.write_bytes(REPLY_FILE)
    driver.find_element(By.ID, "text").send_keys(REPLY_TEXT)
    driver.find_element(By.ID, "files").send_keys(str(upload))
    _button(driver, "Send reply").click()
    sent = _until(driver, ec.visibility_of_element_located((By.CSS_SELECTOR, "[role=status]")),
                  "reply confirmation")
    assert "Your reply was sent" in sent.text
    assert REPLY_TEXT in driver.find_element(By.ID, "thread-h").find_element(
        By.XPATH, "..").text
    reply = _wait(sink, "alice@example.org", "Re: Referral Zyxw")
    msg = parse(reply.data)
    assert msg["Reply-To"] == "bob@dest.test"
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None and REPLY_TEXT in body.get_content()
    files = [(p.get_filename(), p.get_payload(decode=True)) for p in msg.iter_attachments()]
    assert files == [("reply-note.bin", REPLY_FILE)]

    # the expired link (2 s lifetime), opened the same way: the expiry page
    old = _wait(sink, "erin@dest.test", "Secure message from")
    created = short.wait_event(lambda e: e["event.action"] == "portal.stored"
                               and e.get("event.outcome") == "success")
    # the event's expiry is to the second: wait until it has surely passed (usually it has)
    expires = calendar.timegm(time.strptime(created["portal.expires"], "%Y-%m-%dT%H:%M:%SZ"))
    time.sleep(max(0.0, expires + 1.1 - time.time()))
    driver.get(_notification_html(old, tmp_path / "expired.html"))
    driver.find_element(By.LINK_TEXT, "Open the message").click()
    heading = _until(driver, ec.text_to_be_present_in_element((By.TAG_NAME, "h1"),
                                                              "Message expired"),
                     "the expiry page")
    assert heading
    assert "alice@example.org" in driver.find_element(By.CSS_SELECTOR, ".lead").text
    assert not driver.find_elements(By.ID, "code")

    events = [e["event.action"] for e in gw.events()]
    for action in ("portal.code_sent", "portal.code_failed", "portal.verified", "portal.view",
                   "portal.download", "portal.reply"):
        assert action in events, action
    assert any(e["event.action"] == "portal.denied" and e.get("event.reason") == "expired"
               for e in short.events())
