"""CHUNKING (RFC 3030 BDAT): chunks are received as sent, with no dot-unstuffing."""

from __future__ import annotations

import socket


def _session(port: int, script: bytes, replies: int) -> list[str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()  # greeting
        s.sendall(b"EHLO client.test\r\n")
        ehlo = []
        while True:
            line = f.readline().decode()
            ehlo.append(line)
            if line[3] == " ":
                break
        assert any("CHUNKING" in x for x in ehlo)
        s.sendall(script)
        out = [f.readline().decode().strip() for _ in range(replies)]
        s.sendall(b"QUIT\r\n")
        return out


def test_bdat_two_chunks_delivered_byte_exact(gateway_factory, sink):
    gw = gateway_factory(transport={"dest.test": sink.port})
    part1 = b"From: alice@example.org\r\nTo: bob@dest.test\r\nSubject: c\r\n\r\n"
    part2 = b".leading dot kept\r\nsecond line\r\n"
    script = (b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@dest.test>\r\n"
              + f"BDAT {len(part1)}\r\n".encode() + part1
              + f"BDAT {len(part2)} LAST\r\n".encode() + part2)
    replies = _session(gw.relay, script, 4)
    assert replies[0].startswith("250") and replies[1].startswith("250")
    assert replies[2] == f"250 2.0.0 {len(part1)} octets received"
    assert replies[3].startswith("250 2.0.0 Ok: queued as ")
    got = sink.wait_for(1)[0]
    assert got.data.endswith(part1 + part2)


def test_bdat_without_rcpt_and_oversize(gateway_factory, sink):
    gw = gateway_factory("smtp.max_message_size=1KB", transport={"dest.test": sink.port})
    body = b"x" * 600 + b"\r\n"
    script = (b"BDAT 5 LAST\r\nhello"
              + b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@dest.test>\r\n"
              + f"BDAT {len(body)}\r\n".encode() + body
              + f"BDAT {len(body)} LAST\r\n".encode() + body)
    replies = _session(gw.relay, script, 5)
    assert replies[0].startswith("503 5.5.1")
    assert replies[3].startswith("250")
    assert replies[4].startswith("552 5.3.4")
    assert sink.messages == []
