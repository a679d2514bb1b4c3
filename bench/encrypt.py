"""Encrypted messages per second: ``Encryptor.encrypt_for`` to a PGP key (RSA-3072, gpg 2.2's
default, and Curve25519) and to S/MIME certificates (RSA-2048, AES-256-CBC and AES-256-GCM),
at 5 KB and 1 MB, against the relay path's own cost for the same message (parse with ``email`` and
serialise: what every delivered message already pays). Ratios hold on a noisy machine where
absolute numbers do not. Keys are made for the run in temporary folders.

    .venv/bin/python bench/encrypt.py [--seconds 3] [--sizes 5000,1000000]
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.encrypt import Encrypted, Encryptor
from gateway.encrypt.keystore import KeyStore
from gateway.encrypt.pgp import Keyring
from gateway.encrypt.smime import CertStore
from tests.unit.test_encrypt_keys import CertAuthority, GpgHome, pem


def rate(fn: Callable[[], object], seconds: float) -> float:
    fn()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or n < 3:
        fn()
        n += 1
    return n / elapsed


def message(to: str, size: int) -> bytes:
    msg = email.message.EmailMessage(policy=email.policy.SMTP)
    msg["From"] = "doctor@example.org"
    msg["To"] = to
    msg["Subject"] = "Synthetic benchmark message"
    msg["Date"] = "Mon, 02 Mar 2026 10:00:00 +0000"
    msg["Message-ID"] = "<bench@example.org>"
    msg.set_content("Synthetic text, nothing real.\n" * 20)
    if size > 2000:
        msg.add_attachment(os.urandom(size * 3 // 4), maintype="application",
                           subtype="octet-stream", filename="scan.bin")
    return msg.as_bytes()


def baseline(raw: bytes) -> Callable[[], object]:
    def run() -> bytes:
        return email.message_from_bytes(raw, policy=email.policy.SMTP).as_bytes()
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--sizes", default="5000,1000000")
    args = ap.parse_args()
    if shutil.which("gpg") is None or shutil.which("openssl") is None:
        sys.exit("needs gpg (Debian gnupg) and openssl")
    keys = GpgHome()
    base = Path(tempfile.mkdtemp(prefix="pgb", dir="/tmp"))
    try:
        keys.run("--quick-gen-key", "R <rsa@partner.test>", "default", "default", "1y")
        keys.run("--quick-gen-key", "C <cv@partner.test>", "future-default", "default", "1y")
        store = KeyStore(Keyring(base / "gnupg"), CertStore(base / "smime"))
        now = time.time()
        store.import_data(keys.run("--armor", "--export"), now)
        ca = CertAuthority()
        for address, gcm in (("cbc@clinic.test", False), ("gcm@clinic.test", True)):
            cert, _ = ca.issue(address)
            store.import_data(pem(cert), now, gcm=gcm)
        enc = Encryptor(store)
        cases = [("pgp rsa3072", "rsa@partner.test"), ("pgp cv25519", "cv@partner.test"),
                 ("smime aes-256-cbc", "cbc@clinic.test"),
                 ("smime aes-256-gcm", "gcm@clinic.test")]
        results = []
        print(f"{'case':20} {'size':>9} {'msg/s':>9} {'baseline/s':>11} {'cost x':>8}")
        for size in (int(s) for s in args.sizes.split(",")):
            for name, rcpt in cases:
                raw = message(rcpt, size)
                res = enc.encrypt_for(raw, rcpt, now)
                assert isinstance(res, Encrypted), res
                base_rate = rate(baseline(raw), args.seconds)
                enc_rate = rate(lambda raw=raw, rcpt=rcpt: enc.encrypt_for(raw, rcpt, now),
                                args.seconds)
                ratio = base_rate / enc_rate
                results.append({"case": name, "size": len(raw), "msg_per_s": round(enc_rate, 1),
                                "baseline_per_s": round(base_rate, 1), "ratio": round(ratio, 1)})
                print(f"{name:20} {len(raw):>9} {enc_rate:>9.1f} {base_rate:>11.1f} "
                      f"{ratio:>7.1f}x")
        print(json.dumps({"bench": "encrypt", "results": results}))
    finally:
        keys.close()
        subprocess.run(["gpgconf", "--homedir", str(base / "gnupg"), "--kill", "all"],
                       capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
