"""A raw-socket SMTP client for tests that need to misbehave more than ``smtplib`` allows:
pipelined writes, bare CR/LF, NUL bytes, overlong lines, invalid UTF-8, vanishing mid-DATA.

Every socket has a timeout, and every reply read is kept in ``transcript`` so a test can check
that no reply leaked internals (e.g. a Python traceback).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[bytes, ...]  # text after "NNN-" / "NNN " of each line

    @property
    def text(self) -> bytes:
        return b"\n".join(self.lines)

    def __str__(self) -> str:
        return f"{self.code} {self.text.decode('utf-8', 'replace')}"


class RawSMTP:
    """One SMTP session over a plain (or TLS-wrapped) socket, driven byte by byte."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0,
                 source: str | None = None) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            (host, port), timeout=timeout,
            source_address=(source, 0) if source else None)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.transcript: list[Reply] = []
        self.greeting = self.reply()

    # ------------------------------------------------------------------ I/O

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def reply(self) -> Reply:
        """Read one (possibly multi-line) reply. Raises EOFError if the server closed first."""
        lines: list[bytes] = []
        while True:
            while b"\r\n" not in self.buf:
                if not self._fill():
                    raise EOFError(f"connection closed; partial reply {self.buf!r}, "
                                   f"lines so far {lines!r}")
            line, self.buf = self.buf.split(b"\r\n", 1)
            if len(line) < 3 or not line[:3].isdigit():
                raise AssertionError(f"malformed reply line {line!r}")
            lines.append(line[4:])
            if line[3:4] != b"-":
                r = Reply(int(line[:3]), tuple(lines))
                self.transcript.append(r)
                return r

    def replies(self, n: int) -> list[Reply]:
        return [self.reply() for _ in range(n)]

    def cmd(self, line: bytes | str) -> Reply:
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.reply()

    def read_until_closed(self, limit: float = 10.0) -> list[Reply]:
        """Read replies until the server closes the connection (within ``limit`` seconds)."""
        out: list[Reply] = []
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                out.append(self.reply())
            except EOFError:
                return out
            except ConnectionResetError:
                return out
        raise AssertionError(f"server did not close the connection; got {out}")

    def closed_by_peer(self, wait: float = 5.0) -> bool:
        """True if the server closed the connection (EOF or reset) within ``wait`` seconds."""
        self.sock.settimeout(wait)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    # ------------------------------------------------------------------ conveniences

    def ehlo(self, name: str = "client.test") -> Reply:
        r = self.cmd(f"EHLO {name}")
        assert r.code == 250, r
        return r

    def starttls(self, context: ssl.SSLContext) -> None:
        r = self.cmd("STARTTLS")
        assert r.code == 220, r
        assert not self.buf, "server sent data after 220 to STARTTLS"
        self.sock = context.wrap_socket(self.sock, server_hostname="127.0.0.1")

    def data(self, body: bytes) -> Reply:
        """DATA, wait for 354, then send ``body`` exactly as given (the caller adds the
        terminator, so it can also leave it out or get it wrong)."""
        r = self.cmd("DATA")
        assert r.code == 354, r
        self.send(body)
        return self.reply()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def quit(self) -> None:
        with contextlib.suppress(OSError, EOFError, AssertionError):
            self.cmd("QUIT")
        self.close()

    def __enter__(self) -> RawSMTP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.quit()


def no_verify_context() -> ssl.SSLContext:
    """Client TLS context for the gateway's self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
