"""A real authoritative DNS server on loopback for routing tests: NLnet Labs' NSD (Debian
package ``nsd``), run in the foreground on a free high port with zone files written by the
test. No privileges needed beyond binding 127.0.0.1:<port>.

A zone listed in ``broken_zones`` is configured with a zone file that does not exist: NSD
then answers SERVFAIL for every name in it, which is how a test gets a genuine SERVFAIL.
Names outside the configured zones get REFUSED.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

NSD_PACKAGE = "nsd"


def find_nsd() -> str | None:
    return shutil.which("nsd") or next(
        (p for p in ("/usr/sbin/nsd", "/usr/local/sbin/nsd") if os.access(p, os.X_OK)), None)


def free_udp_tcp_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = int(t.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port for DNS")


class BlackHoleDNS:
    """Binds UDP and TCP on a port and never answers: a nameserver that times out."""

    def __init__(self) -> None:
        self.port = free_udp_tcp_port()
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", self.port))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", self.port))
        self.tcp.listen(16)

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()


class NsdServer:
    def __init__(self, workdir: Path, zones: dict[str, str],
                 broken_zones: tuple[str, ...] = ()) -> None:
        self.dir = workdir
        self.zones = zones
        self.broken_zones = broken_zones
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def _write(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        d = str(self.dir)
        lines = [
            "server:",
            "  ip-address: 127.0.0.1",
            f"  port: {self.port}",
            '  username: ""',
            '  chroot: ""',
            f'  zonesdir: "{d}"',
            '  database: ""',
            f'  pidfile: "{d}/nsd.pid"',
            f'  xfrdfile: "{d}/xfrd.state"',
            f'  zonelistfile: "{d}/zone.list"',
            f'  xfrdir: "{d}"',
            f'  logfile: "{d}/nsd.log"',
            "  server-count: 1",
            "  verbosity: 1",
            "  hide-version: yes",
            "  do-ip6: no",
            "remote-control:",
            "  control-enable: no",
        ]
        for name, text in self.zones.items():
            fname = f"{name.rstrip('.')}.zone"
            (self.dir / fname).write_text(text)
            lines += ["zone:", f"  name: {name}", f"  zonefile: {fname}"]
        for name in self.broken_zones:
            lines += ["zone:", f"  name: {name}", f"  zonefile: missing-{name}.zone"]
        conf = self.dir / "nsd.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def log(self) -> str:
        out = []
        for name in ("nsd.log", "stdout.log"):
            with contextlib.suppress(OSError):
                out.append((self.dir / name).read_text(errors="replace")[-3000:])
        return "\n".join(out)

    def start(self, timeout: float = 15.0) -> None:
        nsd = find_nsd()
        if nsd is None:
            raise FileNotFoundError("nsd")
        self.port = free_udp_tcp_port()
        conf = self._write()
        with open(self.dir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen([nsd, "-d", "-c", str(conf)], stdout=out,
                                         stderr=subprocess.STDOUT, cwd=self.dir)
        first_zone = next(iter(self.zones))
        q = dns.message.make_query(first_zone, "SOA")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nsd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                r = dns.query.udp(q, "127.0.0.1", port=self.port, timeout=0.3)
            except (dns.exception.Timeout, OSError):
                time.sleep(0.05)
                continue
            if r.rcode() == dns.rcode.NOERROR and r.answer:
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nsd did not answer on 127.0.0.1:{self.port}:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


class ScriptedDNS:
    """A tiny UDP responder for cases an authoritative server cannot produce on demand,
    e.g. a name whose MX query answers NOERROR/empty while its A query answers SERVFAIL.
    ``script`` maps (name, type) to an rcode name ("NOERROR", "SERVFAIL", "NXDOMAIN");
    anything else gets REFUSED. Answers never carry records."""

    def __init__(self, script: dict[tuple[str, str], str]) -> None:
        self.script = {(n.lower().rstrip("."), t.upper()): r for (n, t), r in script.items()}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.queries: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, addr = self.sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            try:
                q = dns.message.from_wire(wire)
                question = q.question[0]
                key = (question.name.to_text(omit_final_dot=True).lower(),
                       dns.rdatatype.to_text(question.rdtype))
                self.queries.append(key)
                r = dns.message.make_response(q)
                r.set_rcode(dns.rcode.from_text(self.script.get(key, "REFUSED")))
                r.flags |= dns.flags.AA
                self.sock.sendto(r.to_wire(), addr)
            except Exception:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
