#!/usr/bin/env python3
"""Portal benchmark: opening a message page with a verified session, under concurrent load.

What is measured: ``GET /m/<id>`` with a verified session cookie (the page a recipient sees:
store lookups of the pickup, the session and its grant, unsealing the message with AES-256-GCM,
parsing and rendering it with the HTML sanitised, the audit event) on a ``phigate portal run``
process, by ``--connections`` (50) concurrent keep-alive clients on loopback for
``--duration`` seconds after a short warm-up. Two baselines in the same run, on the same
machine: ``GET /healthz`` on the same portal process (same aiohttp server and middleware, no
store work), and a minimal aiohttp "hello" app in its own process. Ratios message/baseline are
printed for requests/s and p99 latency, for each store: SQLite (the default, a file under the
work folder) and PostgreSQL (``PHIGATE_TEST_PG_DSN`` if set, else a throwaway cluster from
``tests/portal_pg.py`` when the server is installed: fsync off, so the figures are for reads,
which is what a page view is).

The load generator is ``wrk`` (``-t1 -c50 --latency``; Debian package ``wrk``) when installed,
else an asyncio one on aiohttp's client (``--tool aiohttp`` forces it). With ``wrk`` the client
costs far less CPU, which matters on a small machine where client and server share the cores.
Beside each figure: the server process's CPU time per request (user+system from
/proc/PID/stat), the steadiest number when other work shares the machine, and the load average.

The setup uses the real pieces: the message is stored with the portal's own rewriter
(``PortalRewriter.rewrite``: sealed under the link's secret, as the gateway's delivery worker
does), then the session is obtained through the real web flow (open the link, "Email me a code",
the code read from a local SMTP sink the portal submits to, verify -> cookie). The message is
synthetic: text and HTML parts (about 2 KB each) and one 100 KB binary attachment
(``--attachment``).

    .venv/bin/python bench/portal.py                       # sqlite and postgresql, 10 s each
    .venv/bin/python bench/portal.py --stores sqlite --duration 5 --tool aiohttp
    .venv/bin/python bench/portal.py --repeat 3            # best of 3 interleaved rounds

Every process started here is stopped in a ``finally`` (SIGTERM, then SIGKILL, by pid); work
files go under /var/tmp/phigate-bench-portal-* (removed unless ``--keep``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.config import load_config  # noqa: E402
from portal.mail import Composer  # noqa: E402
from portal.rewrite import PortalRewriter  # noqa: E402
from portal.store import open_store  # noqa: E402
from tests.conftest import free_port, start_sink, wait_port  # noqa: E402
from tests.integration.portal_client import Browser, code_of, link_of, parse  # noqa: E402

CONFIG = ROOT / "conf" / "gateway.yaml"
PHIGATE = [sys.executable, "-m", "gateway.cli"]
TICK = os.sysconf("SC_CLK_TCK")
MARKER = "Synthetic bench letter for Testpatient Benchly"

HELLO_APP = """
import sys
from aiohttp import web

async def hello(request):
    return web.Response(text="ok\\n")

app = web.Application()
app.router.add_get("/", hello)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None,
            handle_signals=True)
"""


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx answers and socket errors
    cpu_ms_per_req: float | None  # the server process's CPU time per request


# ---------------------------------------------------------------------- processes


def _cpu(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _message(attachment: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Alice Sender <alice@example.org>"
    msg["To"] = "bob@dest.test"
    msg["Subject"] = "[secure] Bench referral"
    msg["Date"] = "Mon, 01 Jan 2024 09:00:00 +0000"
    msg["Message-ID"] = f"<{time.time_ns()}@example.org>"
    para = ("Synthetic paragraph about an appointment, a follow-up and a referral; nothing "
            "here is real. ") * 6
    text = MARKER + "\n\n" + "\n\n".join([para] * 4)
    msg.set_content(text)
    html = (f"<p><b>{MARKER}</b></p>" + "".join(f"<p>{para}</p>" for _ in range(4))
            + '<table><tr><td>Item</td><td>Value</td></tr></table>'
            + '<img src="https://tracker.invalid/p.gif"><script>alert(1)</script>')
    msg.add_alternative(html, subtype="html")
    blob = (bytes(range(256)) * (attachment // 256 + 1))[:attachment]
    msg.add_attachment(blob, maintype="application", subtype="pdf", filename="bench-scan.pdf")
    return bytes(msg)


# ---------------------------------------------------------------------- load generators


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value.strip())
    if not m:
        raise ValueError(f"cannot read wrk latency {value!r}")
    return float(m.group(1)) * _UNIT[m.group(2)]


def run_wrk(url: str, cookie: str | None, connections: int, duration: float) -> Result:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
            "--timeout", "10s"]
    if cookie:
        argv += ["-H", f"Cookie: {cookie}"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, timeout=duration + 60,
                         check=True).stdout
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                      out):
        errors += sum(int(x) for x in m.groups())
    return Result(rps, _ms(lat["50"]), _ms(lat["99"]), total, errors, None)


def run_aiohttp(url: str, cookie: str | None, connections: int, duration: float) -> Result:
    import aiohttp

    async def main() -> Result:
        headers = {"Cookie": cookie} if cookie else {}
        lat: list[float] = []
        errors = 0
        conn = aiohttp.TCPConnector(limit=connections, force_close=False)
        async with aiohttp.ClientSession(connector=conn, headers=headers,
                                         cookie_jar=aiohttp.DummyCookieJar()) as s:
            deadline = time.perf_counter() + duration

            async def client() -> None:
                nonlocal errors
                while time.perf_counter() < deadline:
                    t0 = time.perf_counter()
                    try:
                        async with s.get(url, allow_redirects=False) as r:
                            await r.read()
                            ok = r.status == 200
                    except aiohttp.ClientError:
                        ok = False
                    lat.append(time.perf_counter() - t0)
                    errors += not ok

            start = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(connections)))
            elapsed = time.perf_counter() - start
        lat.sort()
        q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else lat * 99
        return Result(len(lat) / elapsed, q[49] * 1e3, q[98] * 1e3, len(lat), errors, None)

    return asyncio.run(main())


def measure(tool: str, url: str, cookie: str | None, connections: int, duration: float,
            warmup: float, server_pid: int) -> Result:
    run = run_wrk if tool == "wrk" else run_aiohttp
    if warmup > 0:
        run(url, cookie, connections, warmup)
    before = _cpu(server_pid)
    res = run(url, cookie, connections, duration)
    res.cpu_ms_per_req = (_cpu(server_pid) - before) * 1e3 / max(1, res.requests)
    return res


# ---------------------------------------------------------------------- one store


def bench_store(label: str, store_url: str, work: Path, sink_port: int, raw: bytes,
                args: argparse.Namespace, hello: tuple[int, int]) -> dict[str, object]:
    port = free_port()
    var = work / label
    var.mkdir()
    overrides = [f"paths.var={var}", f"portal.listen=127.0.0.1:{port}",
                 f"portal.base_url=http://127.0.0.1:{port}", f"portal.store={store_url}",
                 f"portal.submit=127.0.0.1:{sink_port}", "hostname=phigate.test",
                 "domains=[example.org]", "portal.code_resend=1s"]
    cfg = load_config(CONFIG, overrides)

    # the message, stored as the gateway's delivery worker stores it
    store = open_store(cfg.portal.store)
    try:
        composer = Composer(cfg.portal, cfg.organisation, cfg.hostname)
        done = PortalRewriter(store, composer, cfg.portal.base_url, cfg.portal.expire) \
            .rewrite("BENCH0001", "alice@example.org", raw, "bob@dest.test")
    finally:
        store.close()
    link = link_of(done.notification)

    argv = [*PHIGATE, "portal", "run", "--config", str(CONFIG)]
    for o in overrides:
        argv += ["--set", o]
    server: subprocess.Popen[bytes] | None = None
    with open(var / "stdout.log", "ab") as out:
        server = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_port(port, 30)
        # a verified session, through the real flow
        b = Browser(port)
        page = b.get(link + "?s=1")
        assert page.status == 200, page.status
        sent = b.post(link + "/send", {"csrf": page.form_token()})
        assert sent.status == 200, sent.status
        code = _code_from_sink(args.sink, "bob@dest.test")
        verified = b.post(link + "/verify", {"csrf": sent.form_token(), "code": code})
        assert verified.status == 303, verified.status
        path = verified.headers["Location"]
        check = b.get(path)
        assert check.status == 200 and MARKER in check.text, check.status
        page_bytes = len(check.body)
        cookie = "; ".join(f"{k}={v}" for k, v in b.cookies.items())

        targets = {
            "hello": (f"http://127.0.0.1:{hello[0]}/", None, hello[1]),
            "healthz": (f"http://127.0.0.1:{port}/healthz", None, server.pid),
            "message": (f"http://127.0.0.1:{port}{path}", cookie, server.pid),
        }
        runs: dict[str, list[Result]] = {k: [] for k in targets}
        for _ in range(args.repeat):  # interleaved, so a busy moment hits all alike
            for name, (url, ck, pid) in targets.items():
                runs[name].append(measure(args.tool, url, ck, args.connections, args.duration,
                                          args.warmup, pid))
        best = {name: max(rs, key=lambda r: r.rps) for name, rs in runs.items()}
        return {"results": best, "page_bytes": page_bytes}
    finally:
        _stop(server)


def _code_from_sink(sink: object, rcpt: str, timeout: float = 20.0) -> str:
    handler = sink.handler  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with handler.lock:
            mails = [m for m in handler.messages if rcpt in m.rcpt_tos
                     and "one-time code" in str(parse(m.data)["subject"])]
            handler.messages.clear()
        if mails:
            return code_of(mails[-1].data)
        time.sleep(0.05)
    raise RuntimeError("the code mail did not arrive at the sink")


# ---------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stores", default="sqlite,postgresql")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds before each measurement")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved rounds; best is kept")
    ap.add_argument("--attachment", type=int, default=100 * 1024, help="attachment bytes")
    ap.add_argument("--tool", choices=("auto", "wrk", "aiohttp"), default="auto")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    if args.tool == "auto":
        args.tool = "wrk" if shutil.which("wrk") else "aiohttp"
    if args.tool == "wrk" and not shutil.which("wrk"):
        ap.error("wrk is not installed (apt-get install wrk), or use --tool aiohttp")

    work = Path(tempfile.mkdtemp(prefix="phigate-bench-portal-", dir="/var/tmp"))
    raw = _message(args.attachment)
    sink = start_sink()
    args.sink = sink
    hello_proc: subprocess.Popen[bytes] | None = None
    cluster = None
    report: dict[str, dict[str, object]] = {}
    skipped: dict[str, str] = {}
    try:
        hello_port = free_port()
        hello_proc = subprocess.Popen([sys.executable, "-c", HELLO_APP, str(hello_port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(hello_port, 20)
        for label in [s.strip() for s in args.stores.split(",") if s.strip()]:
            if label == "sqlite":
                url = str(work / "portal.db")
            elif label == "postgresql":
                url = os.environ.get("PHIGATE_TEST_PG_DSN", "")
                if not url:
                    from tests.portal_pg import PgCluster, pg_bindir

                    if pg_bindir() is None:
                        skipped[label] = "postgresql not installed"
                        continue
                    cluster = PgCluster()
                    cluster.__enter__()
                    url = cluster.admin_dsn
            else:
                ap.error(f"unknown store {label!r}")
            print(f"[{label}] measuring ({args.tool}, {args.connections} connections, "
                  f"{args.duration:g} s each)...", file=sys.stderr, flush=True)
            report[label] = bench_store(label, url, work, sink.port, raw, args,
                                        (hello_port, hello_proc.pid))
    finally:
        _stop(hello_proc)
        sink.stop()
        if cluster is not None:
            cluster.destroy()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    load = os.getloadavg()
    print()
    print(f"portal message page vs baselines: {args.connections} concurrent clients, "
          f"{args.duration:g} s, tool {args.tool}, {os.cpu_count()} CPUs, "
          f"message {len(raw) / 1024:.0f} KB (text + HTML + {args.attachment // 1024} KB "
          f"attachment), load average {load[0]:.2f}")
    head = f"{'store':10} {'target':9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} " \
           f"{'CPU ms/req':>10} {'errors':>6}"
    print(head)
    print("-" * len(head))
    out: dict[str, object] = {}
    for label, data in report.items():
        res: dict[str, Result] = data["results"]  # type: ignore[assignment]
        for name in ("hello", "healthz", "message"):
            r = res[name]
            cpu = f"{r.cpu_ms_per_req:.3f}" if r.cpu_ms_per_req is not None else "-"
            print(f"{label:10} {name:9} {r.rps:9.0f} {r.p50_ms:8.2f} {r.p99_ms:8.2f} "
                  f"{cpu:>10} {r.errors:6d}")
        m, h, z = res["message"], res["healthz"], res["hello"]
        ratios = {
            "rps_message_over_healthz": round(m.rps / h.rps, 3),
            "rps_message_over_hello": round(m.rps / z.rps, 3),
            "p99_message_over_healthz": round(m.p99_ms / h.p99_ms, 2),
            "p99_message_over_hello": round(m.p99_ms / z.p99_ms, 2),
        }
        print(f"{'':10} ratios: req/s message/healthz {ratios['rps_message_over_healthz']:.3f}, "
              f"message/hello {ratios['rps_message_over_hello']:.3f}; p99 message/healthz "
              f"{ratios['p99_message_over_healthz']:.1f}x, message/hello "
              f"{ratios['p99_message_over_hello']:.1f}x")
        out[label] = {**{k: {kk: round(vv, 3) if isinstance(vv, float) else vv
                             for kk, vv in asdict(v).items()} for k, v in res.items()},
                      "ratios": ratios, "page_bytes": data["page_bytes"]}
        if any(r.errors for r in res.values()):
            print(f"{'':10} WARNING: errors during the run; figures are not valid",
                  file=sys.stderr)
    for label, why in skipped.items():
        print(f"{label:10} skipped: {why}")
    print(json.dumps({"bench": "portal", "tool": args.tool, "connections": args.connections,
                      "duration_s": args.duration, "repeat": args.repeat,
                      "cpus": os.cpu_count(), "loadavg_1m": round(load[0], 2),
                      "message_bytes": len(raw), "stores": out, "skipped": skipped},
                     separators=(",", ":")))
    errors = sum(r.errors for d in report.values()
                 for r in d["results"].values())  # type: ignore[attr-defined]
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
