#!/usr/bin/env python3
"""Relay benchmark: phigate against Postfix on the same machine, end to end.

Postfix's ``smtp-source`` drives COUNT messages over SESSIONS concurrent sessions into the system
under test, which relays them to Postfix's ``smtp-sink`` on another loopback port::

    smtp-source -s 10 -m 2000 -l SIZE -f bench@example.org -t rcpt@dest.test 127.0.0.1:PORT
        -> phigate (``phigate run``, durability on: fsync of file and directory before 250)
        -> smtp-sink -c 127.0.0.1:SINKPORT

and the same load through a separate Postfix instance configured as a plain loopback relay.
Throughput is measured end to end: from the start of ``smtp-source`` until the sink's running
counter (``smtp-sink -c`` prints ``sess=.. quit=.. mesg=N``, read from a pipe and timestamped
as it arrives) shows the last message. The time ``smtp-source`` took (all 250s received) is
reported beside it as the intake rate. Results for each size: msg/s for each system (median
and best of ``--repeat`` interleaved runs: on a shared machine other load only slows a run
down, so the best run estimates capacity and the median what to expect), the ratio
phigate/Postfix, CPU time per message of each system's process tree (the steadiest figure when
the machine is busy), the machine's other load during the run, and one JSON line at the end.
``--rev REV`` benchmarks a git revision (``git archive`` into the work folder, run with
``python -m gateway.cli`` from there) instead of the working tree.

The Postfix instance: the script writes its own ``main.cf`` (the loopback-relay lines from
NOTES.md, plus its own ``queue_directory``, ``data_directory``, ``syslog_name`` and a
``maillog_file`` under /var/tmp, as ``maillog_file_prefixes`` requires), copies the packaged
``/etc/postfix/master.cf`` and changes it with ``postconf -c DIR``: ``smtpd`` listens on a free
loopback port and no service is chrooted (a chroot would need copies of /etc files). It runs as
``postfix -c DIR start`` / ``postfix -c DIR stop``. As the super-user this needs no entry in
``alternate_config_directories`` (Postfix checks that list only for its set-gid commands,
postdrop and postqueue, which are not used here), and /etc/postfix is never touched, so the
benchmark coexists with a system Postfix or with tests that run their own. The master's pid is
read from ``QUEUE/pid/master.pid`` and, if ``postfix stop`` does not end it, it is killed by pid.

Systems (``--systems``, default: one ``phigate-wN`` per ``--workers`` value and ``postfix``):
``phigate-wN`` signs every message with DKIM (RSA-2048, its default); ``phigate-wN-nodkim``
runs with ``domains=[]``, so it has no key and signs nothing (phigate has no switch for it);
``postfix`` is the plain relay above; ``postfix-dkim`` is a second instance set up the same way
plus a real signing milter: OpenDKIM (Debian ``opendkim``), an RSA-2048 key for the sending
domain made by ``opendkim-genkey``, its own config file in the work folder, run by the bench
in the foreground (``opendkim -f -x CONF``) on a loopback port and stopped at the end
(``milter_default_action = tempfail``: a failing milter defers mail rather than passing it
unsigned). Its CPU is added to Postfix's and shown on its own. Every sink dumps what it
receives (``smtp-sink -D``; ``--no-sink-dump`` turns it off): after each run the bench counts
the messages carrying a DKIM-Signature field and has OpenDKIM (test mode, ``opendkim -t``)
verify the first one against the system's public key, so a baseline that silently stopped
signing shows as such.

Worker processes that ended during a run (the gateway's own ``service.worker_failed`` and
``service.worker_restarted`` events: error type and place, exit code or signal) are printed
after the table.

``--campaign N`` sends N messages of ``--campaign-size`` bytes through phigate alone and prints,
every ``--interval`` seconds, messages sunk so far and the rate, the gateway's memory (VmRSS
summed over the process tree, and PSS, which counts pages shared by the forked workers once),
CPU time, the queue backlog and the spool size; then whether memory stayed flat (RSS when 20%
of the messages had arrived against RSS at the end).

``--profile FILE`` runs one phigate (workers=1) under cProfile instead of the comparison and
prints where the time went, grouped into phigate / aiosmtpd / aiosmtplib / structlog / stdlib.

Every process started here is stopped in a ``finally`` (phigate by SIGTERM, then SIGKILL of its
process group; Postfix by ``postfix stop``, then by pid; the sinks by pid), every wait has a
timeout, and ports are chosen free at run time. Work files go under /var/tmp/phigate-bench-*
(removed at the end unless ``--keep``).

    .venv/bin/python bench/relay.py                       # 5 KB and 100 KB, workers=2
    .venv/bin/python bench/relay.py --workers 1,2 --repeat 5 --rev HEAD
    .venv/bin/python bench/relay.py --campaign 100000
    .venv/bin/python bench/relay.py --profile bench/out/relay.prof --sizes 5120
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import pstats
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"
PHIGATE = ROOT / ".venv" / "bin" / "phigate"
OPENDKIM = "/usr/sbin/opendkim"
OPENDKIM_GENKEY = "/usr/sbin/opendkim-genkey"
SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
SENDER = "bench@example.org"
RECIPIENT = "rcpt@dest.test"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """Something the benchmark depends on did not happen in time or failed."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- utilities

_used_ports: set[int] = set()


def free_port() -> int:
    """A loopback port nobody listens on now (and not handed out before in this run)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _used_ports:
            _used_ports.add(port)
            return port
    raise BenchError("no free port")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5):
            return True
    except OSError:
        return False


def wait_until(pred: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def run_cmd(args: list[str], timeout: float = 60, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        cp = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{' '.join(args)}: timed out after {timeout:g}s") from exc
    if check and cp.returncode != 0:
        raise BenchError(f"{' '.join(args)}: exit {cp.returncode}: "
                         f"{(cp.stderr or cp.stdout).strip()[-500:]}")
    return cp


def stop_process(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM,
                 grace: float = 30.0, group: bool = False) -> None:
    """Signal one process we started (by its pid), wait, then SIGKILL it (and, with ``group``,
    the process group it leads, which was created for it with start_new_session)."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(grace)
        return
    except subprocess.TimeoutExpired:
        pass
    log(f"pid {proc.pid} did not exit within {grace:g}s of signal {sig}: SIGKILL")
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


# ---------------------------------------------------------------------------------- /proc


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [0]=state, [1]=ppid, [2]=pgrp,
    [11]=utime, [12]=stime, [13]=cutime, [14]=cstime (clock ticks)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rfind(")") + 2:].split()


def _gone(pid: int) -> bool:
    st = _stat(pid)
    return st is None or st[0] == "Z"


def proc_tree(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _stat(int(entry))
        if st is not None:
            children.setdefault(int(st[1]), []).append(int(entry))
    if _stat(root) is None:
        return []
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def group_members(pgid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes in process group ``pgid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _stat(int(entry))
        if st is not None and st[0] != "Z" and int(st[2]) == pgid:
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
                out.append((int(entry), cmd.decode(errors="replace").strip()))
    return out


def cpu_seconds(root: int) -> float:
    """User + system CPU of the tree; the root's reaped children (cutime, cstime) included, so
    Postfix daemons that exited during the run still count."""
    total = 0
    for pid in proc_tree(root):
        st = _stat(pid)
        if st is None:
            continue
        total += int(st[11]) + int(st[12])
        if pid == root:
            total += int(st[13]) + int(st[14])
    return total / CLK_TCK


def _kb(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def tree_memory(root: int) -> tuple[int, int, int]:
    """(sum of VmRSS, sum of PSS, number of processes) over the tree, in kB. RSS counts pages
    shared by forked workers once per process; PSS divides them among the sharers."""
    rss = pss = n = 0
    for pid in proc_tree(root):
        rss += _kb(f"/proc/{pid}/status", "VmRSS:")
        pss += _kb(f"/proc/{pid}/smaps_rollup", "Pss:")
        n += 1
    return rss, pss, n


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    return total - idle, total


def du(path: Path) -> tuple[int, int]:
    """(bytes allocated, regular files) under ``path``, like ``du``."""
    size = files = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(os.path.join(dirpath, name))
                size += st.st_blocks * 512
                files += 1
    return size, files


def count_files(dirs: Iterable[Path]) -> int:
    n = 0
    for d in dirs:
        for _dirpath, _dirs, names in os.walk(d):
            n += len(names)
    return n


# ---------------------------------------------------------------------------------- sink


class Sink:
    """``smtp-sink -c`` on a loopback port; its running counter is read from a pipe and every
    change is timestamped (monotonic clock) as it arrives."""

    _MESG = re.compile(rb"mesg=(\d+)")

    def __init__(self, workdir: Path, name: str, dump: bool = True) -> None:
        self.port = free_port()
        self.errfile = workdir / f"{name}.stderr"
        # ``smtp-sink -D DIR/dump`` appends every message it receives (to DIR/dump, or to
        # DIR/dumpHEX files it sometimes makes instead): read after each run to count the
        # messages that carry a DKIM-Signature, then emptied (smtp-sink opens it O_APPEND)
        self.dumpfile = workdir / f"{name}.dump" / "dump" if dump else None
        self.sample: bytes | None = None  # the first message of the last dkim_tally()
        self.proc: subprocess.Popen[bytes] | None = None
        self.count = 0
        self.history: list[tuple[int, float]] = [(0, time.monotonic())]
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        dump: list[str] = []
        if self.dumpfile is not None:
            # smtp-sink writes as nobody (-u): a folder of nobody's in a searchable one
            os.chmod(self.dumpfile.parent.parent, 0o755)
            self.dumpfile.parent.mkdir(mode=0o755, exist_ok=True)
            shutil.chown(self.dumpfile.parent, "nobody")
            dump = ["-D", str(self.dumpfile)]
        with open(self.errfile, "wb") as err:
            self.proc = subprocess.Popen(
                [SMTP_SINK, "-u", "nobody", *dump, "-c", f"127.0.0.1:{self.port}", "1024"],
                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        self._thread = threading.Thread(target=self._read, daemon=True, name="sink-reader")
        self._thread.start()
        wait_until(lambda: self._listening(), 10, f"smtp-sink on port {self.port}")

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"smtp-sink exited: {self.errfile.read_text().strip()[-300:]}")
        # no test connection: smtp-sink would count it as a session; check the socket table
        local = f"0100007F:{self.port:04X}"
        with open("/proc/net/tcp") as f:
            rows = [line.split() for line in f]
        return any(len(r) > 3 and r[1] == local and r[3] == "0A" for r in rows)

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            now = time.monotonic()
            if not chunk:
                break
            pending += chunk
            cut = pending.rfind(b"\r")
            if cut < 0:
                continue
            found = self._MESG.findall(pending[:cut])
            pending = pending[cut + 1:]
            if found:
                n = int(found[-1])
                with self._cond:
                    if n != self.count:
                        self.count = n
                        self.history.append((n, now))
                        self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def time_reached(self, n: int) -> float | None:
        """Monotonic time at which the counter first reached ``n``."""
        with self._cond:
            i = bisect_left([c for c, _ in self.history], n)
            return self.history[i][1] if i < len(self.history) else None

    def wait_for(self, n: int, timeout: float, stalled: Callable[[float], bool]) -> bool:
        """Wait until the counter reaches ``n``. False on timeout or when ``stalled(seconds
        since the last change)`` says to give up."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.count < n:
                now = time.monotonic()
                if now > deadline or stalled(now - self.history[-1][1]):
                    return False
                if not self.alive():
                    raise BenchError("smtp-sink exited during the run")
                self._cond.wait(0.2)
        return True

    def dkim_tally(self) -> tuple[int, int]:
        """(messages, messages with a DKIM-Signature header field) in the dump since the last
        call; the dump is emptied. Call only when no transaction is in progress."""
        if self.dumpfile is None:
            return 0, 0
        messages = signed = 0
        self.sample = None
        for path in sorted(self.dumpfile.parent.iterdir()):
            in_header = has_sig = False
            # the first message is kept whole to verify a signature: from the line after
            # smtp-sink's own fields (its Received field ends them: 3 lines) to the next one
            keep: list[bytes] | None = None
            received = 0
            with open(path, "rb") as f:
                for line in f:
                    if line.startswith(b"X-Client-Addr: "):  # smtp-sink's first line of each
                        if has_sig:
                            signed += 1
                        messages += 1
                        in_header, has_sig, received = True, False, 0
                        if keep and self.sample is None:
                            self.sample = b"".join(keep)
                        keep = [] if messages == 1 else None
                        continue
                    if received < 3:  # smtp-sink's X-* fields and its 3-line Received field
                        if received or line.startswith(b"Received: "):
                            received += 1
                        continue
                    if keep is not None:
                        keep.append(line)
                    if in_header:
                        if line in (b"\n", b"\r\n"):
                            in_header = False
                        elif line[:15].lower() == b"dkim-signature:":
                            has_sig = True
            if has_sig:
                signed += 1
            if keep and self.sample is None:
                self.sample = b"".join(keep)
            if path == self.dumpfile:
                os.truncate(path, 0)
            else:
                path.unlink()
        return messages, signed

    def stop(self) -> None:
        stop_process(self.proc, grace=5)


# ---------------------------------------------------------------------------------- systems


class System:
    """A relay under test: receives on ``port``, delivers to ``sink``."""

    label = ""
    port = 0
    sink: Sink

    def start(self) -> None:
        raise NotImplementedError

    def root_pid(self) -> int:
        raise NotImplementedError

    def queue_len(self) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def outcome_counts(self) -> dict[str, int]:
        raise NotImplementedError

    def extra_pids(self) -> list[int]:
        """Processes outside ``root_pid()``'s tree that belong to the system (a milter)."""
        return []

    def dkim_keys(self) -> dict[str, str]:
        """{"SELECTOR._domainkey.DOMAIN": TXT value} of the keys the system signs with."""
        return {}

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.root_pid()) + sum(cpu_seconds(p) for p in self.extra_pids())

    def memory(self) -> tuple[int, int, int]:
        rss, pss, n = tree_memory(self.root_pid())
        for pid in self.extra_pids():
            r, p, k = tree_memory(pid)
            rss, pss, n = rss + r, pss + p, n + k
        return rss, pss, n


class Phigate(System):
    def __init__(self, workdir: Path, workers: int, profile: Path | None = None,
                 source: Path | None = None, dkim: bool = True) -> None:
        self.workers = workers
        self.source = source  # another source tree (git archive of a revision), or None
        self.dkim = dkim
        self.label = (f"phigate-w{workers}" + ("" if dkim else "-nodkim")
                      + ("-cprofile" if profile else ""))
        self.var = workdir / self.label
        self.sink = Sink(workdir, f"sink-{self.label}")
        self.port = free_port()
        self.profile = profile
        self.proc: subprocess.Popen[bytes] | None = None
        self.leftovers = 0
        self.out_at_stop: int | None = None  # size of gateway.out when the bench stopped it

    @property
    def audit_file(self) -> Path:
        return self.var / "log" / "audit.jsonl"

    def command(self) -> list[str]:
        sets = [
            f"paths.var={self.var}",
            f"listen.relay=127.0.0.1:{self.port}",
            f"listen.submission=127.0.0.1:{free_port()}",
            f"listen.submissions=127.0.0.1:{free_port()}",
            # the portal and /metrics listen on fixed ports by default: two gateways (or
            # another agent's) would collide
            f"portal.listen=127.0.0.1:{free_port()}",
            f"metrics.listen=127.0.0.1:{free_port()}",
            f"delivery.transport={{\"dest.test\": \"127.0.0.1:{self.sink.port}\"}}",
            "domains=[example.org]",
            "log.stdout=false",
            f"workers={self.workers}",
            *EXTRA_SETS,
            # no organisation domain: no DKIM key, every message leaves unsigned (phigate has
            # no switch for signing; the cost is one dkim.unsigned audit event per message)
            *([] if self.dkim else ["domains=[]"]),
        ]
        if self.profile is not None:
            head = [str(VENV_PY), "-m", "cProfile", "-o", str(self.profile), "-m", "gateway.cli"]
        else:
            # phigate's CLI from the cwd's gateway package: the working tree or a --rev tree
            head = [str(VENV_PY), "-m", "gateway.cli"]
        cmd = [*head, "run", "--config", "conf/gateway.yaml"]
        for s in sets:
            cmd += ["--set", s]
        return cmd

    def start(self) -> None:
        self.sink.start()
        self.var.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        log(f"[{self.label}] {' '.join(repr(c) if ' ' in c else c for c in cmd)}")
        with open(self.var / "gateway.out", "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=self.source or ROOT, stdout=out,
                                         stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchError(f"phigate exited with {self.proc.returncode}: "
                                 f"{(self.var / 'gateway.out').read_text()[-500:]}")
            return self._started() >= self.workers and port_open(self.port)

        # the port opens in the parent before workers run: wait for every worker's event too
        wait_until(ready, 120, f"{self.label} to listen on {self.port}", 0.1)

    def _started(self) -> int:
        try:
            return self.audit_file.read_text().count('"event.action":"service.started"')
        except FileNotFoundError:
            return 0

    def root_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def queue_len(self) -> int:
        spool = self.var / "spool"
        return count_files(spool / s for s in ("incoming", "active", "deferred"))

    def stop(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.out_at_stop = (self.var / "gateway.out").stat().st_size
        try:
            stop_process(self.proc, grace=60, group=True)
            if self.proc is not None:
                self._reap_group(self.proc.pid)
        finally:
            self.sink.stop()

    def _reap_group(self, pgid: int) -> None:
        """Processes still in the gateway's process group after it exited (it leads a session
        of its own, so nothing else is in that group): e.g. a multiprocessing forkserver and
        pool workers that did not end with the gateway. Reported, then ended by pid."""
        left = group_members(pgid)
        if not left:
            return
        self.leftovers = len(left)
        log(f"[{self.label}] after exit, {len(left)} process(es) of its group still ran: "
            + ", ".join(f"{pid} {cmd[:60]}" for pid, cmd in left) + " -> SIGTERM")
        for pid, _ in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(BenchError):
            wait_until(lambda: not group_members(pgid), 10, "leftover processes to exit", 0.1)
        for pid, _ in group_members(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def outcome_counts(self) -> dict[str, int]:
        counts = audit_counts(self.audit_file)
        if self.leftovers:
            counts["bench: processes left running after exit"] = self.leftovers
        return counts

    def dkim_keys(self) -> dict[str, str]:
        out = {}
        for path in (self.var / "dkim").glob("*.key"):  # DOMAIN.SELECTOR.key
            domain, _, selector = path.name.removesuffix(".key").rpartition(".")
            with contextlib.suppress(ValueError, OSError):
                out[f"{selector}._domainkey.{domain}"] = dkim_txt(path)
        return out

    def worker_exits(self) -> list[str]:
        """The gateway's events about worker processes that failed or were restarted (error
        type and place, exit code or signal), and fatal-error dumps in its output."""
        out: list[str] = []
        with contextlib.suppress(FileNotFoundError), open(self.audit_file, "rb") as f:
            for line in f:
                if b"service.worker_" in line:
                    ev = json.loads(line)
                    out.append(" ".join(f"{k}={v}" for k, v in ev.items()
                                        if not k.startswith("log.")))
        with contextlib.suppress(FileNotFoundError):
            text = (self.var / "gateway.out").read_bytes()[:self.out_at_stop]
            out += [b.decode(errors="replace").rstrip() for b in re.split(
                rb"(?m)^(?=Fatal Python error)", text) if b.startswith(b"Fatal Python error")]
        return out


def audit_counts(path: Path) -> dict[str, int]:
    """Events in a phigate audit log, by ``event.action``."""
    pat = re.compile(rb'"event\.action":"([^"]+)"')
    counts: Counter[str] = Counter()
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
        for line in f:
            m = pat.search(line)
            counts[m.group(1).decode() if m else "?"] += 1
    return dict(sorted(counts.items()))


def dkim_txt(private_pem: Path) -> str:
    """The DNS TXT value publishing the public half of an RSA private key (PEM)."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(private_pem.read_bytes(), None)
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


_AR_DKIM = re.compile(r"dkim=(\w+)")


def verify_dkim(message: bytes, keys: dict[str, str], where: Path) -> str:
    """OpenDKIM's verdict (``opendkim -t``, test mode, the public keys from a file as
    tests/opendkim.py does) on the first DKIM signature of ``message``: pass, fail, ..."""
    if not os.access(OPENDKIM, os.X_OK):
        return "not checked (no opendkim)"
    where.mkdir(parents=True, exist_ok=True)
    (where / "keys").write_text("".join(f"{n} {v}\n" for n, v in keys.items()))
    (where / "verify.conf").write_text("\n".join([
        "Mode v", "Syslog no", "AlwaysAddARHeader yes", "MinimumKeyBits 1024",
        f"TestPublicKeys {where / 'keys'}", ""]))
    (where / "message.eml").write_bytes(message)
    cp = run_cmd([OPENDKIM, "-x", str(where / "verify.conf"), "-vvv", "-t",
                  str(where / "message.eml")], timeout=60, check=False)
    out = cp.stdout + cp.stderr
    ar = out.partition("hname='Authentication-Results'")[2].partition("\nopendkim:")[0]
    found = _AR_DKIM.findall(ar)
    return found[0] if found else f"no verdict (opendkim exit {cp.returncode})"


class OpenDkim:
    """OpenDKIM (Debian ``opendkim``) as a signing milter for the ``postfix-dkim`` baseline:
    an RSA-2048 key made by ``opendkim-genkey`` for the sending domain, its own config file,
    run in the foreground (``opendkim -f -x CONF``) on a loopback port, all under DIR. As
    root without ``UserID`` it keeps running as root (it reads its key and listens on a high
    port, nothing else). ``RequireSafeKeys false``: the work folder is under /var/tmp, which
    anybody may write to, and OpenDKIM refuses a key on such a path otherwise. No syslog;
    ``LogResults`` would log every message, so errors only (``-v``-less) go to its stderr."""

    def __init__(self, base: Path, domain: str, selector: str = "bench",
                 socket_kind: str = "unix") -> None:
        self.base = base
        self.domain, self.selector = domain, selector
        self.socket_kind = socket_kind
        self.port = free_port()
        self.sock_path = base / "opendkim.sock"
        self.conf = base / "opendkim.conf"
        self.key = base / f"{selector}.private"
        self.out = base / "opendkim.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        if not self.key.exists():
            run_cmd([OPENDKIM_GENKEY, "-b", "2048", "-d", self.domain, "-s", self.selector,
                     "-D", str(self.base)])
        self.conf.write_text("\n".join([
            "# written by bench/relay.py: sign everything from internal hosts (127.0.0.1)",
            "Syslog no",
            "Mode s",
            f"Domain {self.domain}",
            f"Selector {self.selector}",
            f"KeyFile {self.key}",
            "RequireSafeKeys false",
            f"Socket {self.socket_spec()}",
            "UMask 000",  # the socket: Postfix's smtpd (user postfix) must connect to it
            "Canonicalization relaxed/relaxed",
            "SignatureAlgorithm rsa-sha256",
            "",
        ]))
        cmd = [OPENDKIM, "-f", "-x", str(self.conf)]
        log(f"[opendkim] {' '.join(cmd)}  ({self.socket_spec()}, RSA-2048 "
            f"{self.selector}._domainkey.{self.domain})")
        with contextlib.suppress(FileNotFoundError):
            self.sock_path.unlink()
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchError(f"opendkim exited with {self.proc.returncode}: "
                                 f"{self.out.read_text(errors='replace')[-500:]}")
            if self.socket_kind == "unix":
                return self.sock_path.is_socket()
            return port_open(self.port)

        wait_until(ready, 30, f"opendkim on {self.socket_spec()}", 0.1)

    def socket_spec(self) -> str:
        """OpenDKIM's spelling of its socket (Postfix's is ``postfix_spec``)."""
        if self.socket_kind == "unix":
            return f"local:{self.sock_path}"
        return f"inet:{self.port}@127.0.0.1"

    def postfix_spec(self) -> str:
        if self.socket_kind == "unix":
            return f"unix:{self.sock_path}"
        return f"inet:127.0.0.1:{self.port}"

    def public_txt(self) -> str:
        """The TXT record value (``v=DKIM1; ... p=...``) from opendkim-genkey's .txt file."""
        text = (self.base / f"{self.selector}.txt").read_text()
        return "".join(re.findall(r'"([^"]*)"', text))

    def stop(self) -> None:
        stop_process(self.proc, grace=10)


class PostfixRelay(System):
    """A private Postfix instance: its own config, queue and data directories (see the module
    docstring for why ``postfix -c DIR`` works without touching /etc/postfix). With ``dkim``
    (``postfix-dkim``): the same instance plus an OpenDKIM milter (class OpenDkim) signing
    every message; ``milter_default_action = tempfail``, so a milter that fails defers mail
    instead of passing it unsigned."""

    def __init__(self, workdir: Path, dkim: bool = False, milter_socket: str = "unix") -> None:
        self.label = "postfix-dkim" if dkim else "postfix"
        self.base = workdir / self.label
        self.conf = self.base / "etc"
        self.queue = self.base / "queue"
        self.data = self.base / "data"
        self.maillog = self.base / "maillog"
        self.sink = Sink(workdir, f"sink-{self.label}")
        self.port = free_port()
        self.started = False
        self.milter = OpenDkim(self.base / "opendkim", SENDER.partition("@")[2],
                               socket_kind=milter_socket) if dkim else None

    def main_cf(self) -> str:
        milter = [] if self.milter is None else [
            f"smtpd_milters = {self.milter.postfix_spec()}",
            "non_smtpd_milters = $smtpd_milters",
            "milter_default_action = tempfail",
        ]
        return "\n".join([
            "# written by bench/relay.py: a plain loopback relay (NOTES.md)",
            "compatibility_level = 3.6",
            f"queue_directory = {self.queue}",
            f"data_directory = {self.data}",
            f"syslog_name = {self.label}-bench",
            *milter,
            f"maillog_file = {self.maillog}",
            "myhostname = relay.bench.test",
            "inet_interfaces = loopback-only",
            "inet_protocols = ipv4",
            "mydestination =",
            "mynetworks = 127.0.0.0/8",
            f"relayhost = [127.0.0.1]:{self.sink.port}",
            "smtpd_relay_restrictions = permit_mynetworks, reject",
            "local_transport = error:no local delivery",
            "alias_maps =",
            "alias_database =",
            "",
        ])

    def start(self) -> None:
        self.sink.start()
        if self.milter is not None:
            self.milter.start()
        for d in (self.conf, self.queue, self.data):
            d.mkdir(parents=True, exist_ok=True)
        # the daemons run as the postfix user: they must be able to reach the queue
        for d in (self.base.parent, self.base, self.queue):
            os.chmod(d, 0o755)
        shutil.chown(self.data, "postfix", "postfix")
        (self.conf / "main.cf").write_text(self.main_cf())
        shutil.copy("/etc/postfix/master.cf", self.conf / "master.cf")
        run_cmd([POSTCONF, "-c", str(self.conf), "-M",
                 f"smtp/inet=127.0.0.1:{self.port} inet n - n - - smtpd"])
        run_cmd([POSTCONF, "-c", str(self.conf), "-F", "*/*/chroot = n"])
        log(f"[{self.label}] {POSTFIX} -c {self.conf} start  (smtpd 127.0.0.1:{self.port}, "
            f"relayhost [127.0.0.1]:{self.sink.port}"
            + (f", milter {self.milter.postfix_spec()})" if self.milter else ")"))
        self.started = True
        run_cmd([POSTFIX, "-c", str(self.conf), "start"], timeout=60)

        def ready() -> bool:
            return self.master_pid() is not None and port_open(self.port)

        wait_until(ready, 60, f"postfix smtpd on port {self.port}", 0.1)

    def master_pid(self) -> int | None:
        try:
            pid = int((self.queue / "pid" / "master.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _stat(pid) is not None else None

    def root_pid(self) -> int:
        pid = self.master_pid()
        if pid is None:
            raise BenchError("postfix master is not running")
        return pid

    def queue_len(self) -> int:
        return count_files(self.queue / d for d in
                           ("maildrop", "incoming", "active", "deferred", "hold"))

    def daemons(self) -> list[int]:
        """Live processes of this instance: every Postfix daemon, the master included, runs
        with the queue directory as its working directory."""
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/cwd") == str(self.queue) \
                            and not _gone(int(entry)):
                        out.append(int(entry))
        return out

    def stop(self) -> None:
        try:
            if self.started:
                cp = run_cmd([POSTFIX, "-c", str(self.conf), "stop"], timeout=60, check=False)
                if cp.returncode != 0 and self.master_pid() is not None:
                    log(f"[{self.label}] stop: exit {cp.returncode} {cp.stderr.strip()[-200:]}")
                try:
                    # also catches a master that an interrupted ``postfix start`` left behind
                    wait_until(lambda: not self.daemons(), 30, "postfix to exit", 0.2)
                except BenchError:
                    for pid in self.daemons():
                        log(f"[{self.label}] pid {pid} still running: SIGKILL")
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
        finally:
            try:
                if self.milter is not None:
                    self.milter.stop()
            finally:
                self.sink.stop()

    def dkim_keys(self) -> dict[str, str]:
        if self.milter is None:
            return {}
        return {f"{self.milter.selector}._domainkey.{self.milter.domain}":
                dkim_txt(self.milter.key)}

    def extra_pids(self) -> list[int]:
        if self.milter is not None and self.milter.proc is not None \
                and self.milter.proc.poll() is None:
            return [self.milter.proc.pid]
        return []

    def outcome_counts(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        with contextlib.suppress(FileNotFoundError), open(self.maillog, "rb") as f:
            for line in f:
                m = re.search(rb" status=(\w+)", line)
                if m:
                    counts[f"status={m.group(1).decode()}"] += 1
                elif b" warning: " in line or b" fatal: " in line or b" error: " in line:
                    counts["warning/error lines"] += 1
        if self.milter is not None:
            with contextlib.suppress(FileNotFoundError):
                lines = self.milter.out.read_text(errors="replace").splitlines()
                if lines:
                    counts["opendkim output lines"] = len(lines)
        return dict(sorted(counts.items()))


# ---------------------------------------------------------------------------------- one run


@dataclass
class Sample:
    t: float
    sunk: int
    rss_kb: int
    pss_kb: int
    procs: int
    cpu_s: float
    queue_files: int
    spool_bytes: int = 0
    log_bytes: int = 0
    machine_busy_s: float = 0.0  # CPU seconds used by everything on the machine (cumulative)


@dataclass
class RunResult:
    system: str
    size: int
    count: int
    sessions: int
    complete: bool
    sunk: int
    elapsed_s: float
    msg_per_s: float
    intake_s: float
    intake_msg_per_s: float
    cpu_s: float
    cpu_ms_per_msg: float
    machine_cores_busy: float
    source_cpu_s: float
    sink_cpu_s: float
    other_cores: float
    peak_rss_mb: float
    peak_pss_mb: float
    source_exit: int | None
    source_errors: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    # messages in the sink's dump and how many of them carry a DKIM-Signature field (None:
    # the sink did not dump, --no-sink-dump)
    sink_dumped: int | None = None
    dkim_signed: int | None = None
    # OpenDKIM's verdict on the first signed message of the run (None: it was not signed)
    dkim_verified: str | None = None
    # of cpu_s: the part of processes outside the system's tree (postfix-dkim: opendkim)
    milter_cpu_s: float | None = None


class Sampler(threading.Thread):
    """Samples the system's memory, CPU and queue every ``interval`` seconds."""

    def __init__(self, system: System, t0: float, base: int, interval: float,
                 spool: Path | None = None, audit: Path | None = None,
                 on_sample: Callable[[Sample], None] | None = None) -> None:
        super().__init__(daemon=True, name="sampler")
        self.system, self.t0, self.base, self.interval = system, t0, base, interval
        self.spool, self.audit, self.on_sample = spool, audit, on_sample
        self.samples: list[Sample] = []
        self.stopped = threading.Event()

    def take(self) -> Sample:
        rss, pss, n = self.system.memory()
        s = Sample(t=time.monotonic() - self.t0, sunk=self.system.sink.count - self.base,
                   rss_kb=rss, pss_kb=pss, procs=n, cpu_s=self.system.cpu_seconds(),
                   queue_files=self.system.queue_len(),
                   machine_busy_s=machine_busy_ticks()[0] / CLK_TCK)
        if self.spool is not None:
            s.spool_bytes = du(self.spool)[0]
        if self.audit is not None:
            with contextlib.suppress(FileNotFoundError):
                s.log_bytes = self.audit.stat().st_size
        return s

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                s = self.take()
            except Exception as exc:  # sampling must never stop the benchmark
                log(f"sampler: {type(exc).__name__}: {exc}")
                continue
            self.samples.append(s)
            if self.on_sample is not None:
                self.on_sample(s)


def drive(system: System, size: int, count: int, sessions: int, timeout: float,
          interval: float = 0.5, stall: float = 30.0,
          on_sample: Callable[[Sample], None] | None = None) -> RunResult:
    """smtp-source -> system -> sink, timed from the start of smtp-source until the sink has
    counted the last message."""
    wait_until(lambda: system.queue_len() == 0, 120, f"{system.label} queue to drain", 0.2)
    sink = system.sink
    base = sink.count
    sink.dkim_tally()  # forget earlier messages (a warm-up's)
    cpu0 = system.cpu_seconds()
    extra0 = sum(cpu_seconds(p) for p in system.extra_pids())
    assert sink.proc is not None
    sink_cpu0 = cpu_seconds(sink.proc.pid)
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, total0 = machine_busy_ticks()
    spool = system.var / "spool" if isinstance(system, Phigate) else None
    audit = system.audit_file if isinstance(system, Phigate) else None
    cmd = [SMTP_SOURCE, "-s", str(sessions), "-m", str(count), "-l", str(size),
           "-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{system.port}"]
    t0 = time.monotonic()
    sampler = Sampler(system, t0, base, interval, spool, audit, on_sample)
    src = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL)
    sampler.start()
    src_out: list[bytes] = []
    src_done: list[float] = []

    def collect() -> None:
        out, err = src.communicate()
        src_done.append(time.monotonic())
        src_out.append(out + err)

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    try:
        complete = sink.wait_for(
            base + count, timeout,
            stalled=lambda quiet: bool(src_done) and quiet > stall)
        t_end = sink.time_reached(base + count) if complete else time.monotonic()
        assert t_end is not None
        cpu1 = system.cpu_seconds()
        extra1 = sum(cpu_seconds(p) for p in system.extra_pids())
        sink_cpu1 = cpu_seconds(sink.proc.pid)
        busy1, total1 = machine_busy_ticks()
        collector.join(max(5.0, timeout - (time.monotonic() - t0)))
    finally:
        sampler.stopped.set()
        if src.poll() is None:
            stop_process(src, grace=5)
        sampler.join(10)
    # smtp-source is the only child reaped during the run
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    source_cpu = (children1.ru_utime + children1.ru_stime
                  - children0.ru_utime - children0.ru_stime)
    # machine CPU not spent by the system, smtp-source or smtp-sink: other load on this shared
    # machine, this script, and kernel work charged to no process (softirq)
    other = ((busy1 - busy0) / CLK_TCK - (cpu1 - cpu0) - source_cpu
             - (sink_cpu1 - sink_cpu0))
    sunk = sink.count - base
    dumped, signed = sink.dkim_tally()
    verdict = None
    if sink.sample is not None and b"\ndkim-signature:" in b"\n" + sink.sample.lower():
        keys = system.dkim_keys()
        verdict = (verify_dkim(sink.sample, keys, sink.errfile.parent / f"verify-{system.label}")
                   if keys else "not checked (no key known)")
    elapsed = t_end - t0
    intake = (src_done[0] - t0) if src_done else float("nan")
    errors = [ln for ln in b"".join(src_out).decode(errors="replace").splitlines() if ln.strip()]
    samples = sampler.samples
    cores = os.cpu_count() or 1
    return RunResult(
        system=system.label, size=size, count=count, sessions=sessions, complete=complete,
        sunk=sunk, elapsed_s=round(elapsed, 3), msg_per_s=round(sunk / elapsed, 1),
        intake_s=round(intake, 3), intake_msg_per_s=round(count / intake, 1),
        cpu_s=round(cpu1 - cpu0, 2),
        cpu_ms_per_msg=round(1000 * (cpu1 - cpu0) / max(sunk, 1), 3),
        machine_cores_busy=round(cores * (busy1 - busy0) / max(total1 - total0, 1), 2),
        source_cpu_s=round(source_cpu, 2), sink_cpu_s=round(sink_cpu1 - sink_cpu0, 2),
        other_cores=round(other / elapsed, 2),
        peak_rss_mb=round(max((s.rss_kb for s in samples), default=0) / 1024, 1),
        peak_pss_mb=round(max((s.pss_kb for s in samples), default=0) / 1024, 1),
        source_exit=src.returncode, source_errors=errors[:20], samples=samples,
        sink_dumped=dumped if sink.dumpfile is not None else None,
        dkim_signed=signed if sink.dumpfile is not None else None,
        dkim_verified=verdict,
        milter_cpu_s=round(extra1 - extra0, 2) if system.extra_pids() else None,
    )


# ---------------------------------------------------------------------------------- modes


def fmt_size(n: int) -> str:
    return f"{n // 1024} KB" if n % 1024 == 0 else f"{n} B"


def compare(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    systems: list[System] = []
    results: list[RunResult] = []
    try:
        systems = make_systems(args, workdir)
        for s in systems:
            s.start()
        if args.warmup:
            for s in systems:
                r = drive(s, args.sizes[0], args.warmup, args.sessions, args.timeout)
                log(f"[{s.label}] warm-up {args.warmup} x {fmt_size(args.sizes[0])}: "
                    f"{r.msg_per_s} msg/s{'' if r.complete else ' INCOMPLETE'}")
        for size in args.sizes:
            for rep in range(args.repeat):
                for s in systems:
                    r = drive(s, size, args.count, args.sessions, args.timeout)
                    r.samples = []
                    results.append(r)
                    log(f"[{s.label}] {fmt_size(size)} run {rep + 1}: {r.sunk}/{r.count} in "
                        f"{r.elapsed_s:.2f}s = {r.msg_per_s} msg/s end to end "
                        f"(intake {r.intake_msg_per_s} msg/s), cpu {r.cpu_s}s "
                        f"({r.cpu_ms_per_msg} ms/msg"
                        + (f"; opendkim {r.milter_cpu_s}s = "
                           f"{1000 * r.milter_cpu_s / max(r.sunk, 1):.2f} ms/msg"
                           if r.milter_cpu_s is not None else "")
                        + f"), machine {r.machine_cores_busy} cores busy "
                        f"(smtp-source {r.source_cpu_s}s, smtp-sink {r.sink_cpu_s}s, other "
                        f"{r.other_cores} cores), peak rss {r.peak_rss_mb} MB"
                        + (f", DKIM-signed {r.dkim_signed}/{r.sink_dumped} at the sink"
                           if r.sink_dumped is not None else "")
                        + (f" (first verified by opendkim: dkim={r.dkim_verified})"
                           if r.dkim_verified else "")
                        + ("" if r.complete else "  INCOMPLETE")
                        + (f"  smtp-source said: {r.source_errors[:3]}" if r.source_errors
                           else ""))
    finally:
        outcomes = {}
        for s in systems:
            try:
                s.stop()
            except Exception as exc:
                log(f"[{s.label}] stop failed: {type(exc).__name__}: {exc}")
            outcomes[s.label] = s.outcome_counts()
    for s in systems:
        if isinstance(s, Phigate):
            show_worker_exits(s)
    return report(args, results, outcomes)


SYSTEM_SPEC = re.compile(r"^(?:phigate-w(\d+)(-nodkim)?|postfix|postfix-dkim)$")


def make_systems(args: argparse.Namespace, workdir: Path) -> list[System]:
    """``--systems`` (phigate-wN, phigate-wN-nodkim, postfix, postfix-dkim), or else one
    phigate per ``--workers`` value and Postfix unless ``--no-postfix``."""
    dump = not args.no_sink_dump
    names = args.systems or ([f"phigate-w{w}" for w in args.workers]
                             + ([] if args.no_postfix else ["postfix"]))
    systems: list[System] = []
    for name in names:
        m = SYSTEM_SPEC.match(name)
        if m is None:
            raise BenchError(f"unknown system {name!r}: phigate-wN, phigate-wN-nodkim, "
                             "postfix, postfix-dkim")
        if m.group(1):
            systems.append(Phigate(workdir, int(m.group(1)), source=args.source,
                                   dkim=not m.group(2)))
        else:
            if name == "postfix-dkim":
                missing = [p for p in (OPENDKIM, OPENDKIM_GENKEY) if not os.access(p, os.X_OK)]
                if missing:
                    raise BenchError(f"postfix-dkim needs {', '.join(missing)} (Debian "
                                     "packages opendkim, opendkim-tools)")
            systems.append(PostfixRelay(workdir, dkim=name == "postfix-dkim",
                                        milter_socket=args.milter_socket))
        if not dump:
            systems[-1].sink.dumpfile = None
    return systems


def show_worker_exits(gw: Phigate) -> None:
    """Workers that ended while the gateway ran (the gateway's own events)."""
    exits = gw.worker_exits()
    if exits:
        print(f"\n{gw.label}: {len(exits)} record(s) of worker processes ending during the "
              f"run (from {gw.var / 'gateway.out'}):")
        for block in exits:
            print("  " + block.replace("\n", "\n  "))


def report(args: argparse.Namespace, results: list[RunResult],
           outcomes: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Median and best run per system and size. On a shared machine other load only ever
    slows a run down, so the best run is the better estimate of what the system can do; the
    median shows what to expect."""
    labels = list(dict.fromkeys(r.system for r in results))
    med: dict[tuple[str, int], float] = {}
    best: dict[tuple[str, int], float] = {}
    for r in results:
        key = (r.system, r.size)
        rates = [x.msg_per_s for x in results if (x.system, x.size) == key]
        med[key], best[key] = statistics.median(rates), max(rates)
    print()
    print(f"relay benchmark: {args.count} messages per run, {args.sessions} sessions, "
          f"{args.repeat} run(s) each; msg/s end to end (smtp-source start -> last message "
          "counted by smtp-sink)")
    baselines = [b for b in ("postfix", "postfix-dkim") if b in labels]
    header = (f"{'size':>7}  {'system':<18} {'median':>8} {'best':>8} {'intake/s':>9} "
              f"{'cpu ms/msg':>10} {'other load':>10} {'rss MB':>7} {'pss MB':>7} "
              f"{'DKIM-signed':>13}"
              + "".join(f" {'/' + b + ' med':>17} {'best':>5}" for b in baselines))
    print(header)
    print("-" * len(header))
    signed: dict[str, str] = {}
    for size in args.sizes:
        for label in labels:
            rs = [r for r in results if r.system == label and r.size == size]
            if not rs:
                continue
            key = (label, size)
            ratios_txt = ""
            for b in baselines:
                pf = (b, size)
                ok = pf in med and label != b
                ratios_txt += (f" {f'{med[key] / med[pf]:.2f}' if ok else '':>17}"
                               f" {f'{best[key] / best[pf]:.2f}' if ok else '':>5}")
            dumped = [r for r in rs if r.sink_dumped is not None]
            sig = (f"{sum(r.dkim_signed or 0 for r in dumped)}/"
                   f"{sum(r.sink_dumped or 0 for r in dumped)}" if dumped else "-")
            signed[f"{label}@{size}"] = sig
            print(f"{fmt_size(size):>7}  {label:<18} {med[key]:>8.1f} {best[key]:>8.1f} "
                  f"{statistics.median(r.intake_msg_per_s for r in rs):>9.1f} "
                  f"{statistics.median(r.cpu_ms_per_msg for r in rs):>10.2f} "
                  f"{statistics.median(r.other_cores for r in rs):>10.2f} "
                  f"{max(r.peak_rss_mb for r in rs):>7.1f} "
                  f"{max(r.peak_pss_mb for r in rs):>7.1f} {sig:>13}{ratios_txt}"
                  + ("" if all(r.complete for r in rs) else "  INCOMPLETE"))
    print("(other load: median cores busy with anything but the system, smtp-source and "
          "smtp-sink during a run; near 0 on a quiet machine. DKIM-signed: messages counted "
          "in smtp-sink's dump (-D) with a DKIM-Signature field / all dumped, over the runs. "
          "cpu of postfix-dkim includes the opendkim milter)")
    try:
        load = os.getloadavg()
        print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
              f"({os.cpu_count()} cores)")
    except OSError:
        pass

    def ratios(table: dict[tuple[str, int], float], base: str) -> dict[str, float]:
        return {f"{label}/{base}@{size}": round(v / table[(base, size)], 3)
                for (label, size), v in table.items()
                if label != base and (base, size) in table}

    print()
    for label, counts in outcomes.items():
        print(f"{label} outcomes: {json.dumps(counts)}")
    summary = {
        "bench": "relay", "count": args.count, "sessions": args.sessions,
        "repeat": args.repeat, "sizes": args.sizes,
        "msg_per_s": {f"{label}@{size}": v for (label, size), v in med.items()},
        "best_msg_per_s": {f"{label}@{size}": v for (label, size), v in best.items()},
        "ratios": {k: v for b in baselines for k, v in ratios(med, b).items()},
        "ratios_best": {k: v for b in baselines for k, v in ratios(best, b).items()},
        "dkim_signed": signed, "outcomes": outcomes,
        "runs": [{k: v for k, v in asdict(r).items() if k != "samples"} for r in results],
    }
    print(json.dumps(summary, separators=(",", ":")))
    return summary


def campaign(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    gw = Phigate(workdir, args.workers[0], source=args.source)
    gw.sink.dumpfile = None  # N messages: not kept on disk
    n, size = args.campaign, args.campaign_size
    timeout = args.timeout if args.timeout_set else max(600.0, n / 20)
    last: list[float] = [0.0, 0.0, 0.0, 0.0]

    def show(s: Sample) -> None:
        dt = s.t - last[0]
        rate = (s.sunk - last[1]) / dt if dt > 0 else 0.0
        gw_cores = (s.cpu_s - last[2]) / dt if dt > 0 else 0.0
        busy = (s.machine_busy_s - last[3]) / dt if dt > 0 else 0.0
        last[:] = [s.t, float(s.sunk), s.cpu_s, s.machine_busy_s]
        print(f"t={s.t:7.1f}s sunk={s.sunk:7d} ({rate:6.1f} msg/s, avg {s.sunk / s.t:6.1f}) "
              f"queue={s.queue_files:6d} files spool={s.spool_bytes / 2**20:7.1f} MB "
              f"rss={s.rss_kb / 1024:6.1f} MB pss={s.pss_kb / 1024:6.1f} MB "
              f"procs={s.procs} cpu={s.cpu_s:7.1f}s ({gw_cores:4.2f} cores; machine "
              f"{busy:4.2f} busy) audit.jsonl={s.log_bytes / 2**20:6.1f} MB", flush=True)

    try:
        gw.start()
        start_mem = tree_memory(gw.root_pid())
        last[2], last[3] = cpu_seconds(gw.root_pid()), machine_busy_ticks()[0] / CLK_TCK
        print(f"campaign: {n} x {fmt_size(size)} through {gw.label}, {args.sessions} sessions; "
              f"idle gateway rss={start_mem[0] / 1024:.1f} MB pss={start_mem[1] / 1024:.1f} MB",
              flush=True)
        r = drive(gw, size, n, args.sessions, timeout, interval=args.interval,
                  stall=60, on_sample=show)
        final = Sampler(gw, 0, 0, 1, gw.var / "spool", gw.audit_file).take()
    finally:
        gw.stop()
    outcomes = {gw.label: gw.outcome_counts()}
    samples = r.samples
    at20 = next((s for s in samples if s.sunk >= 0.2 * n), None)
    end = samples[-1] if samples else None
    rates = []
    for a, b in itertools.pairwise(samples):
        if b.t > a.t:
            rates.append((b.sunk - a.sunk) / (b.t - a.t))
    print()
    print(f"campaign: {r.sunk}/{n} sunk in {r.elapsed_s:.1f}s = {r.msg_per_s} msg/s end to end "
          f"(intake {r.intake_msg_per_s} msg/s){'' if r.complete else '  INCOMPLETE'}")
    if rates:
        print(f"interval rates: min {min(rates):.1f}  median {statistics.median(rates):.1f}  "
              f"max {max(rates):.1f} msg/s")
    print(f"gateway cpu {r.cpu_s}s = {r.cpu_ms_per_msg} ms/msg; machine "
          f"{r.machine_cores_busy} cores busy on average")
    print(f"peak rss {r.peak_rss_mb} MB (sum over the process tree), peak pss {r.peak_pss_mb} MB")
    if at20 and end:
        growth = (end.rss_kb - at20.rss_kb) / max(at20.rss_kb, 1)
        print(f"rss at 20% ({at20.sunk} sunk, t={at20.t:.0f}s): {at20.rss_kb / 1024:.1f} MB; "
              f"at the end ({end.sunk} sunk): {end.rss_kb / 1024:.1f} MB; growth "
              f"{100 * growth:+.1f}% -> {'flat' if abs(growth) < 0.10 else 'NOT flat'} "
              "(within 10%)")
    print(f"spool peak {max((s.spool_bytes for s in samples), default=0) / 2**20:.1f} MB, "
          f"peak backlog {max((s.queue_files for s in samples), default=0)} queue files; "
          f"after the run {final.spool_bytes / 2**20:.1f} MB, {final.queue_files} files; "
          f"audit log {final.log_bytes / 2**20:.1f} MB")
    print(f"{gw.label} outcomes: {json.dumps(outcomes[gw.label])}")
    summary = {
        "bench": "relay-campaign", "count": n, "size": size, "sessions": args.sessions,
        "workers": gw.workers,
        "result": {k: v for k, v in asdict(r).items() if k != "samples"},
        "rss_mb_at_20pct": round(at20.rss_kb / 1024, 1) if at20 else None,
        "rss_mb_at_end": round(end.rss_kb / 1024, 1) if end else None,
        "spool_peak_mb": round(max((s.spool_bytes for s in samples), default=0) / 2**20, 2),
        "samples": [asdict(s) for s in samples], "outcomes": outcomes,
    }
    print(json.dumps(summary, separators=(",", ":")))
    return summary


# ---------------------------------------------------------------------------------- profile

_CATEGORIES = (
    ("phigate", ("/gateway/",)),
    ("aiosmtpd", ("/aiosmtpd/",)),
    ("aiosmtplib", ("/aiosmtplib/",)),
    ("structlog", ("/structlog/",)),
    ("other site-packages", ("site-packages",)),
)


def category(func: tuple[str, int, str]) -> str:
    filename, _, name = func
    if filename == "~":  # C functions: builtins and C methods
        return "idle (epoll)" if "poll" in name and "epoll" in name else "C builtins"
    for cat, needles in _CATEGORIES:
        if any(n in filename for n in needles):
            return cat
    return "stdlib"


def describe(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    if filename == "~":
        return name
    short = filename
    for marker, skip in (("/gateway/", 1), ("site-packages/", len("site-packages/")),
                         ("/lib/python3", len("/lib/"))):
        i = filename.find(marker)
        if i >= 0:
            short = filename[i + skip:]
            break
    return f"{short}:{line}({name})"


def profile_report(path: Path, top: int = 15) -> dict[str, Any]:
    st = pstats.Stats(str(path))
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = st.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    idle = sum(v[2] for f, v in raw.items() if category(f) == "idle (epoll)")
    busy = total - idle
    by_cat: dict[str, float] = {}
    for f, v in raw.items():
        by_cat[category(f)] = by_cat.get(category(f), 0.0) + v[2]
    print(f"\nprofile {path}: {total:.1f}s profiled, {idle:.1f}s idle in epoll, "
          f"{busy:.1f}s busy (percentages below are of busy time)")
    print("self time by origin:")
    for cat, t in sorted(by_cat.items(), key=lambda kv: -kv[1]):
        if cat != "idle (epoll)":
            print(f"  {cat:<22} {t:7.2f}s {100 * t / busy:5.1f}%")
    print(f"top {top} by self time:")
    rows = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)
    rows = [kv for kv in rows if category(kv[0]) != "idle (epoll)"][:top]
    for f, (_cc, nc, tt, ct, _) in rows:
        print(f"  {100 * tt / busy:5.1f}% self {100 * ct / busy:5.1f}% cum {nc:>9} calls "
              f"[{category(f)}] {describe(f)}")
    print(f"top {top} by cumulative time (leaving out the roots above 90%: runpy, the CLI, "
          "the event loop):")
    rows = sorted(raw.items(), key=lambda kv: kv[1][3], reverse=True)
    shown = 0
    for f, (_cc, nc, tt, ct, _) in rows:
        if category(f) == "idle (epoll)" or ct > 0.9 * busy:
            continue
        print(f"  {100 * ct / busy:5.1f}% cum {100 * tt / busy:5.1f}% self {nc:>9} calls "
              f"[{category(f)}] {describe(f)}")
        shown += 1
        if shown >= top:
            break
    return {"total_s": total, "idle_s": idle,
            "by_origin": {k: round(v, 3) for k, v in by_cat.items()}}


def profile(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    out = args.profile.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    gw = Phigate(workdir, 1, profile=out, source=args.source)
    gw.sink.dumpfile = None
    size = args.sizes[0]
    try:
        gw.start()
        r = drive(gw, size, args.count, args.sessions, args.timeout)
        print(f"under cProfile: {r.sunk}/{r.count} x {fmt_size(size)} in {r.elapsed_s:.1f}s = "
              f"{r.msg_per_s} msg/s (cProfile slows the gateway; only the shares matter)")
    finally:
        gw.stop()
    print(f"{gw.label} outcomes: {json.dumps(gw.outcome_counts())}")
    if not out.exists():
        raise BenchError(f"no profile written to {out} (see {gw.var / 'gateway.out'})")
    return profile_report(out)


# ---------------------------------------------------------------------------------- main


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.replace(",", " ").split()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=_ints, default=[2],
                   help="phigate worker processes; a list (1,2) runs one gateway per value "
                        "(default: 2)")
    p.add_argument("--sizes", type=_ints, default=[5120, 102400],
                   help="message sizes in bytes for smtp-source -l (default: 5120,102400)")
    p.add_argument("--count", type=int, default=2000, help="messages per run (default: 2000)")
    p.add_argument("--sessions", type=int, default=10,
                   help="concurrent smtp-source sessions (default: 10)")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per size and system, interleaved; median and best are reported")
    p.add_argument("--warmup", type=int, default=200,
                   help="messages sent to each system before measuring (0: none)")
    p.add_argument("--no-postfix", action="store_true", help="skip the Postfix baseline")
    p.add_argument("--systems", type=lambda t: [x for x in t.replace(",", " ").split() if x],
                   metavar="LIST",
                   help="systems to compare instead of --workers/--no-postfix, e.g. "
                        "phigate-w2,postfix,postfix-dkim: phigate-wN (DKIM-signs, its "
                        "default), phigate-wN-nodkim (domains=[]: no key, nothing signed), "
                        "postfix (plain relay), postfix-dkim (Postfix + OpenDKIM milter, "
                        "RSA-2048)")
    p.add_argument("--milter-socket", choices=("unix", "inet"), default="unix",
                   help="postfix-dkim: OpenDKIM on a unix socket in the work folder (default, "
                        "as Debian sets it up) or on a loopback TCP port")
    p.add_argument("--no-sink-dump", action="store_true",
                   help="do not have smtp-sink dump messages (-D); DKIM-Signature fields are "
                        "then not counted")
    p.add_argument("--campaign", type=int, default=0, metavar="N",
                   help="instead of the comparison: N messages through phigate alone, "
                        "sampled over time")
    p.add_argument("--campaign-size", type=int, default=5120)
    p.add_argument("--interval", type=float, default=5.0,
                   help="campaign sampling interval in seconds (default: 5)")
    p.add_argument("--profile", type=Path, metavar="FILE",
                   help="instead of the comparison: run phigate (workers=1) under cProfile, "
                        "write FILE and print the hotspots")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds allowed for one run to finish (default: 300; campaign: N/20)")
    p.add_argument("--rev", metavar="REV",
                   help="benchmark this git revision of phigate (exported with git archive "
                        "into the work folder) instead of the working tree")
    p.add_argument("--workdir", type=Path,
                   help="work folder (default: a new /var/tmp/phigate-bench-*)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--gateway-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra phigate --set override (repeatable), e.g. rules.enabled=false "
                        "to measure the relay path alone")
    p.add_argument("--json-out", type=Path, help="also write the JSON summary to this file")
    return p


def preflight() -> None:
    missing = [p for p in (SMTP_SOURCE, SMTP_SINK, POSTFIX, POSTCONF, str(PHIGATE))
               if not os.access(p, os.X_OK)]
    if missing:
        raise BenchError(f"missing: {', '.join(missing)} (make deps venv)")
    if os.geteuid() != 0:
        raise BenchError("run as root: smtp-sink drops to nobody, postfix start needs root")


def export_rev(rev: str, workdir: Path) -> Path:
    """``git archive REV`` into the work folder: the benchmark then runs that revision even
    while the working tree is being edited."""
    commit = run_cmd(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                     timeout=30).stdout.strip()
    dest = workdir / f"src-{commit[:12]}"
    dest.mkdir(parents=True, exist_ok=True)
    archive = workdir / "src.tar"
    run_cmd(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), commit],
            timeout=60)
    run_cmd(["tar", "-xf", str(archive), "-C", str(dest)], timeout=60)
    archive.unlink()
    return dest


def describe_source(source: Path | None, rev: str | None) -> None:
    where = source or ROOT
    cp = run_cmd(["git", "-C", str(ROOT), "describe", "--always",
                  *([rev] if rev else ["--dirty"])], timeout=30, check=False)
    what = cp.stdout.strip() if cp.returncode == 0 else "?"
    log(f"phigate source: {where} ({'git archive of ' + rev if rev else 'working tree'}, {what})")


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# --set overrides for every phigate started (``--gateway-set``), e.g. rules.enabled=false.
# The load comes from one sender: rate limits (bench/ratelimit.py measures them) are off
# unless a --gateway-set turns them on.
EXTRA_SETS: list[str] = ["ratelimit.enabled=false"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    EXTRA_SETS.extend(args.gateway_set)
    args.timeout_set = any(a.startswith("--timeout") for a in (argv or sys.argv[1:]))
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    try:
        preflight()
    except BenchError as err:
        log(f"relay bench: {err}")
        return 2
    if args.workdir is not None:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="phigate-bench-", dir="/var/tmp"))
    log(f"work folder: {workdir}")
    code = 0
    try:
        args.source = export_rev(args.rev, workdir) if args.rev else None
        describe_source(args.source, args.rev)
        if args.profile is not None:
            summary = profile(args, workdir)
        elif args.campaign:
            summary = campaign(args, workdir)
        else:
            summary = compare(args, workdir)
        if args.json_out is not None:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(json.dumps(summary, indent=1) + "\n")
    except BenchError as err:
        log(f"relay bench: {err}")
        code = 1
    except KeyboardInterrupt:
        log("relay bench: interrupted")
        code = 130
    finally:
        if args.keep or code:
            log(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
