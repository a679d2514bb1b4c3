"""A real ``redis-server`` for tests: started in a temp dir on a free loopback port, no
persistence. Use it by importing the fixture into a test module::

    from tests.redis_server import redis_module_fixture, redis_server_fixture  # noqa: F401

    def test_something(redis_server: RedisServer) -> None:
        redis_server.url          # redis://127.0.0.1:PORT/0, flushed before each test
        redis_server.stop(); redis_server.start()   # an outage, same port

Without ``redis-server`` on the PATH the tests that ask for it are skipped with the reason
"redis-server not installed (make test installs it)".
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SKIP_REASON = "redis-server not installed (make test installs it)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise FileNotFoundError(SKIP_REASON)
        self.exe = exe
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="phigate-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - kept by the child
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.root), "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.root / "server.log").read_text()[-2000:])
            if self.command("PING") == "+PONG":
                return
            time.sleep(0.02)
        raise TimeoutError(f"redis-server did not answer on port {self.port}")

    def command(self, *words: str) -> str | None:
        """One inline command; the first reply line, or None if the server is not there."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), 0.5) as s:
                s.sendall((" ".join(words) + "\r\n").encode())
                return s.recv(4096).split(b"\r\n", 1)[0].decode()
        except OSError:
            return None

    def flush(self) -> None:
        self.command("FLUSHALL")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module", name="redis_module")
def redis_module_fixture() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip(SKIP_REASON)
    pytest.importorskip("redis", reason="redis (the Python client) not installed")
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture(name="redis_server")
def redis_server_fixture(redis_module: RedisServer) -> Iterator[RedisServer]:
    """The module's server, running and empty (a test that stopped it gets it back)."""
    if redis_module.command("PING") != "+PONG":
        with contextlib.suppress(Exception):
            redis_module.stop()
        redis_module.start()
    redis_module.flush()
    yield redis_module


__all__ = ["SKIP_REASON", "RedisServer", "redis_module_fixture", "redis_server_fixture"]
