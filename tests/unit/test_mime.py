"""Finding the header section (intake's header-size limit, policies' header conditions)."""

from __future__ import annotations

from gateway.mime import header_section_size


def test_header_section_size():
    msg = b"From: a@b\r\nSubject: x\r\n folded\r\n\r\nbody\r\n"
    assert header_section_size(msg) == msg.index(b"body")
    assert header_section_size(b"\r\nbody without headers\r\n") == 0
    assert header_section_size(b"no header here at all\r\n" * 3) == 0
    assert header_section_size(b"X: 1\r\nnot a field line\r\nmore\r\n") == len(b"X: 1\r\n")
    assert header_section_size(b" continuation first\r\n") == 0
    big = b"X-Long: " + b"y" * 10 + b"\r\n"
    assert header_section_size(big * 100_000, limit=1000) > 1000
