"""DKIM signatures per second: phigate's Signer against dkimpy's ``dkim.sign`` on the same
message, key and process, RSA-2048 and Ed25519, plus the bare ``cryptography`` RSA operation
(the ceiling). Prints ratios, which hold on a noisy machine where absolute numbers do not.

    .venv/bin/python bench/dkim.py [--seconds 3] [--size 4000]
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
from collections.abc import Callable
from pathlib import Path

# run as a script, this file's folder comes first on sys.path and its name hides dkimpy's
# package: take the folder off and put the project root on
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import dkim  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils  # noqa: E402

from gateway.dkim import Key, Signer, select_headers  # noqa: E402


def rate(fn: Callable[[], object], seconds: float) -> float:
    fn()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(10):
            fn()
        n += 10
    return n / elapsed


def message(size: int) -> bytes:
    head = (b"From: Alice Example <alice@example.org>\r\nTo: bob@partner.test\r\n"
            b"Subject: Appointment reminder\r\nDate: Mon, 01 Jan 2024 09:00:00 +0000\r\n"
            b"Message-ID: <m1@example.org>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n")
    line = b"Your appointment is on Monday at 9:00. Please bring your card.\r\n"
    return head + line * max(1, size // len(line))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--size", type=int, default=4000, help="message size in bytes")
    args = ap.parse_args()
    msg = message(args.size)
    include = list(select_headers(dkim.rfc822_parse(msg)[0]))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_pem = rsa_key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    ed_seed = base64.b64encode(ed_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
        serialization.NoEncryption()))
    ours_rsa = Signer([Key(b"example.org", b"s1", "rsa", rsa_key)])
    ours_ed = Signer([Key(b"example.org", b"e1", "ed25519", ed_key)])
    both = Signer([Key(b"example.org", b"s1", "rsa", rsa_key),
                   Key(b"example.org", b"e1", "ed25519", ed_key)])
    digest = b"\x01" * 32
    canon = (b"relaxed", b"relaxed")
    rows: list[tuple[str, float, float | None]] = []

    raw = rate(lambda: rsa_key.sign(digest, padding.PKCS1v15(),
                                    utils.Prehashed(hashes.SHA256())), args.seconds)
    ours = rate(lambda: ours_rsa.sign(msg, "alice@example.org"), args.seconds)
    theirs = rate(lambda: dkim.sign(msg, b"s1", b"example.org", rsa_pem, canonicalize=canon,
                                    include_headers=include), args.seconds)
    rows += [("rsa-2048: cryptography sign only", raw, None),
             ("rsa-2048: phigate Signer", ours, theirs),
             ("rsa-2048: dkimpy dkim.sign", theirs, None)]
    ours = rate(lambda: ours_ed.sign(msg, "alice@example.org"), args.seconds)
    try:
        import nacl  # noqa: F401  dkimpy signs Ed25519 only through PyNaCl

        theirs_ed: float | None = rate(
            lambda: dkim.sign(msg, b"e1", b"example.org", ed_seed, canonicalize=canon,
                              signature_algorithm=b"ed25519-sha256", include_headers=include),
            args.seconds)
    except ImportError:
        theirs_ed = None
    rows += [("ed25519: phigate Signer", ours, theirs_ed)]
    if theirs_ed is not None:
        rows.append(("ed25519: dkimpy dkim.sign", theirs_ed, None))
    rows.append(("rsa-2048 + ed25519 (two signatures): phigate", rate(
        lambda: both.sign(msg, "alice@example.org"), args.seconds), None))

    print(f"message {len(msg)} bytes, {args.seconds:g} s per measurement, one core")
    for name, value, base in rows:
        ratio = f"  {value / base:5.1f}x dkimpy" if base else ""
        print(f"{name:48} {value:8.0f} /s  {1000 / value:6.3f} ms{ratio}")
    if theirs_ed is None:
        print("(dkimpy Ed25519 not measured: PyNaCl is not installed)")


if __name__ == "__main__":
    main()
