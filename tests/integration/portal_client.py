"""A small HTTP client for the portal tests: real requests over loopback, cookies kept per
client, redirects not followed (the tests check them)."""

from __future__ import annotations

import http.client
import re
import urllib.parse
import uuid
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser
from email.policy import default


@dataclass
class Resp:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def form_token(self) -> str:
        m = re.search(r'name="csrf" value="([^"]+)"', self.text)
        assert m, "no CSRF token on the page"
        return m.group(1)


@dataclass
class Browser:
    port: int
    cookies: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Resp:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        h = dict(headers or {})
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        for value in r.headers.get_all("Set-Cookie") or []:
            name, _, rest = value.partition("=")
            val = rest.split(";", 1)[0]
            if val in ("", '""') or "Max-Age=0" in value:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = val
        conn.close()
        return Resp(r.status, r.headers, data)

    def get(self, path: str) -> Resp:
        return self.request("GET", path)

    def post(self, path: str, fields: dict[str, str]) -> Resp:
        return self.request("POST", path, urllib.parse.urlencode(fields).encode(),
                            {"Content-Type": "application/x-www-form-urlencoded"})

    def post_multipart(self, path: str, fields: dict[str, str],
                       files: list[tuple[str, str, bytes]]) -> Resp:
        boundary = uuid.uuid4().hex
        out = b""
        for k, v in fields.items():
            out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n"
                    f"{v}\r\n").encode()
        for name, ctype, data in files:
            out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
                    f"filename=\"{name}\"\r\nContent-Type: {ctype}\r\n\r\n").encode()
            out += data + b"\r\n"
        out += f"--{boundary}--\r\n".encode()
        return self.request("POST", path, out,
                            {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def parse(raw: bytes) -> Message:
    return BytesParser(policy=default).parsebytes(raw)


def link_of(notification: bytes) -> str:
    """The portal path (``/p/<id>/<secret>``) in a notification's text part."""
    msg = parse(notification)
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    m = re.search(r"https?://[^/\s]+(/p/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+)", part.get_content())
    assert m, "no portal link in the notification"
    return m.group(1)


def code_of(mail: bytes) -> str:
    msg = parse(mail)
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    m = re.search(r"^\s+(\d{6,8})\s*$", part.get_content(), re.M)
    assert m, "no code in the code mail"
    return m.group(1)
