"""A small DNS server on loopback built on dnspython, for the TLS-policy tests: it answers
from a table of records over UDP and TCP and, like a validating resolver that checked the
DNSSEC chain, sets the AD bit on answers for names in ``secure`` (NSD, an authoritative server,
never sets AD, and a DNSSEC-signed zone plus a validating resolver is more machinery than the
DANE tests need: what the gateway must do is trust TLSA only when AD is set)."""

from __future__ import annotations

import socket
import socketserver
import struct
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from tests.integration.dnsserver import free_udp_tcp_port


class AdDns:
    def __init__(self, records: dict[tuple[str, str], list[str]],
                 secure: set[str] | None = None, ttl: int = 60) -> None:
        self.records = {(n.lower().rstrip("."), t.upper()): v for (n, t), v in records.items()}
        self.secure = {n.lower().rstrip(".") for n in (secure or set())}
        self.ttl = ttl
        self.port = free_udp_tcp_port()
        outer = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                sock.sendto(outer.answer(data), self.client_address)

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                head = self.request.recv(2)
                if len(head) < 2:
                    return
                (n,) = struct.unpack("!H", head)
                data = b""
                while len(data) < n:
                    chunk = self.request.recv(n - len(data))
                    if not chunk:
                        return
                    data += chunk
                out = outer.answer(data)
                self.request.sendall(struct.pack("!H", len(out)) + out)

        self.udp = socketserver.ThreadingUDPServer(("127.0.0.1", self.port), Udp)
        self.tcp = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Tcp,
                                                   bind_and_activate=False)
        self.tcp.allow_reuse_address = True
        self.tcp.server_bind()
        self.tcp.server_activate()
        for srv in (self.udp, self.tcp):
            threading.Thread(target=srv.serve_forever, daemon=True).start()

    def answer(self, wire: bytes) -> bytes:
        q = dns.message.from_wire(wire)
        r = dns.message.make_response(q)
        r.flags |= dns.flags.AA
        question = q.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rtype = dns.rdatatype.to_text(question.rdtype)
        values = self.records.get((name, rtype))
        if values:
            r.answer.append(dns.rrset.from_text(question.name, self.ttl, "IN", rtype, *values))
            if name in self.secure:
                r.flags |= dns.flags.AD
        elif not any(n == name for n, _ in self.records):
            r.set_rcode(dns.rcode.NXDOMAIN)
        return r.to_wire()

    def close(self) -> None:
        for srv in (self.udp, self.tcp):
            srv.shutdown()
            srv.server_close()


def port25_free(host: str) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT of a past test
        try:
            s.bind((host, 25))
        except OSError:
            return False
    return True
