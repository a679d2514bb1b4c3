"""An independent DKIM verifier for the tests: OpenDKIM (Debian package ``opendkim``) in its
test mode (``opendkim -t FILE``), fed the exact bytes, with the public keys given in a file
(``TestPublicKeys``). Integration tests fill that file with the TXT records as a real DNS
server (NSD on loopback) serves them: OpenDKIM's own resolver (libunbound) could not be pointed
at a nameserver on a high port (``Nameservers 127.0.0.1@PORT`` and an unbound forward-zone
sent no query at all), so the lookup is ours and the verification is OpenDKIM's.

The verdict per signature is read from the Authentication-Results field OpenDKIM prints at
``-vvv``: ``dkim=pass header.d=... header.s=...``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

OPENDKIM_PACKAGE = "opendkim"


def find_opendkim() -> str | None:
    return shutil.which("opendkim") or next(
        (p for p in ("/usr/sbin/opendkim",) if os.access(p, os.X_OK)), None)


def require_opendkim() -> str:
    path = find_opendkim()
    if path is None:
        msg = f"OpenDKIM is not installed (Debian package '{OPENDKIM_PACKAGE}')"
        if os.environ.get("CI"):
            pytest.fail(f"{msg}: CI must install it")
        pytest.skip(f"{msg}; CI installs it")
    return path


_RESULT = re.compile(r"dkim=(\w+)[^;]*?header\.d=(\S+)[^;]*?header\.s=(\S+)")


def verify(message: bytes, workdir: Path, keys: dict[str, str]) -> dict[str, str]:
    """Verify every DKIM signature of ``message``; return {"SELECTOR._domainkey.DOMAIN":
    result} with OpenDKIM's results (pass, fail, neutral, permerror, ...).

    ``keys`` maps "SELECTOR._domainkey.DOMAIN" to the TXT value."""
    opendkim = require_opendkim()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = ["Mode v", "Syslog no", "AlwaysAddARHeader yes", "MinimumKeyBits 1024"]
    (workdir / "keys").write_text("".join(f"{n} {v}\n" for n, v in keys.items()))
    conf.append(f"TestPublicKeys {workdir / 'keys'}")
    (workdir / "opendkim.conf").write_text("\n".join(conf) + "\n")
    msg = workdir / "message.eml"
    msg.write_bytes(message)
    proc = subprocess.run([opendkim, "-x", str(workdir / "opendkim.conf"), "-vvv", "-t",
                           str(msg)], capture_output=True, timeout=60)
    out = proc.stdout.decode("utf-8", "replace") + proc.stderr.decode("utf-8", "replace")
    ar = out.partition("hname='Authentication-Results'")[2].partition("\nopendkim:")[0]
    results = {f"{s.rstrip(';')}._domainkey.{d.rstrip(';')}": r
               for r, d, s in _RESULT.findall(ar)}
    if not results:
        raise AssertionError(f"no verdict from opendkim (exit {proc.returncode}):\n{out[-3000:]}")
    return results
