"""The systemd units: hardened to an exposure of 2.0 or lower (``systemd-analyze security``,
offline), valid (``systemd-analyze verify`` on a copy whose commands point at an existing
binary, since /opt/phigate is not installed here; it needs no running systemd), and the
``MemoryDenyWriteExecute=yes`` they set is safe: the PHI engine (Hyperscan, PDFium, Office
extraction) classifies corpus messages in a process under ``PR_SET_MDWE``, the kernel's
"no writable-and-executable memory" switch (Linux 6.3+), as systemd does it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.corpus.generate import generate

ROOT = Path(__file__).resolve().parents[2]
UNITS = ("phigate.service", "phigate-portal.service")
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None and not os.environ.get("CI"),
    reason="systemd-analyze not installed (make test installs it)")


def _exposure(unit: Path) -> float:
    assert ANALYZE is not None, "systemd-analyze not installed (Debian package systemd)"
    out = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager", str(unit)],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out.stdout)
    assert m, out.stdout[-2000:] + out.stderr[-2000:]
    return float(m[1])


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_exposure_at_most_2(unit: str) -> None:
    assert _exposure(ROOT / "systemd" / unit) <= 2.0


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_units_verify(unit: str, tmp_path: Path) -> None:
    text = (ROOT / "systemd" / unit).read_text()
    assert "/opt/phigate/venv/bin/phigate" in text
    copy = tmp_path / unit
    copy.write_text(text.replace("/opt/phigate/venv/bin/phigate", "/bin/true"))
    assert ANALYZE is not None
    out = subprocess.run([ANALYZE, "verify", "--man=no", str(copy)], capture_output=True,
                         text=True, timeout=60)
    problems = [line for line in (out.stdout + out.stderr).splitlines()
                if unit in line and "is not executable" not in line]
    assert out.returncode == 0 and not problems, out.stdout + out.stderr


def test_units_set_what_the_design_asks() -> None:
    for unit in UNITS:
        text = (ROOT / "systemd" / unit).read_text()
        for line in ("User=phigate", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
                     "AmbientCapabilities=CAP_NET_BIND_SERVICE", "ProtectSystem=strict",
                     "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes",
                     "NoNewPrivileges=yes", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
                     "SystemCallFilter=@system-service", "MemoryDenyWriteExecute=yes",
                     "ReadWritePaths=/var/lib/phigate"):
            assert f"\n{line}\n" in text, (unit, line)
    gw = (ROOT / "systemd" / "phigate.service").read_text()
    assert "\nType=notify\n" in gw and "\nExecReload=/bin/kill -HUP $MAINPID\n" in gw
    assert "portal run" in (ROOT / "systemd" / "phigate-portal.service").read_text()
    users = (ROOT / "systemd" / "sysusers.d" / "phigate.conf").read_text()
    assert re.search(r"(?m)^u phigate ", users)
    tmpfiles = (ROOT / "systemd" / "tmpfiles.d" / "phigate.conf").read_text()
    assert "/var/lib/phigate/spool" in tmpfiles


_MDWE = """
import ctypes, runpy, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(77)
sys.argv = ["phigate", *sys.argv[1:]]
runpy.run_module("gateway.cli", run_name="__main__")
"""


def test_phi_engine_runs_without_writable_executable_memory(tmp_path: Path) -> None:
    samples = [s for s in generate(120, 77) if b"Content-Disposition: attachment" in s.raw]
    assert samples
    for s in samples:
        (tmp_path / f"{s.name}.eml").write_bytes(s.raw)
    out = subprocess.run(
        [sys.executable, "-c", _MDWE, "rules", "test", "--json", "--set",
         f"paths.var={tmp_path / 'var'}", "--set",
         f"rules.cache_dir={ROOT / '.cache' / 'hyperscan'}", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    if out.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    assert out.returncode in (0, 1), out.stderr[-3000:]
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(samples)
    assert not [r for r in results if r["errors"]], out.stdout[-3000:]
    assert any(r["phi"] for r in results)
