"""Cost of the audit log's hash chain per event: the plain O_APPEND writer (before the chain)
against the chained writer (flock, state read, stat, HMAC, append, state write), alone and with
several processes appending to one file, plus a whole ``AuditLog.emit``. Usage:

    python bench/audit_chain.py [--n 20000] [--procs 4]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.audit import AuditChain, AuditLog, _Writer, load_or_create_key  # noqa: E402

LINE = json.dumps({"@timestamp": "2025-01-31T08:00:00.000Z", "event.action": "delivery.delivered",
                   "email.local_id": "01HQ3Z8K2M4N5P6Q7R8S9T0V1W", "email.to.address": "b@x.test",
                   "destination.domain": "x.test", "tls.version": "TLSv1.3", "smtp.code": 250},
                  separators=(",", ":"))


def _writer(folder: Path, chained: bool) -> _Writer:
    path = folder / "log" / "audit.jsonl"
    if not chained:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _Writer(path, False, None)
    return _Writer(path, False, AuditChain(path, load_or_create_key(folder / "audit.key")))


def _run(folder: str, chained: bool, n: int) -> float:
    w = _writer(Path(folder), chained)
    t0 = time.perf_counter()
    for _ in range(n):
        w.msg(LINE)
    dt = time.perf_counter() - t0
    w.close()
    return dt


def _parallel(chained: bool, n: int, procs: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(procs) as pool:
            t0 = time.perf_counter()
            pool.starmap(_run, [(d, chained, n // procs)] * procs)
            return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--procs", type=int, default=4)
    args = ap.parse_args()
    out: dict[str, float] = {}
    for chained in (False, True):
        with tempfile.TemporaryDirectory() as d:
            _run(d, chained, 500)  # warm up
            out[f"{'chained' if chained else 'plain'}_us"] = _run(d, chained, args.n) / args.n * 1e6
        out[f"{'chained' if chained else 'plain'}_{args.procs}procs_us"] = (
            _parallel(chained, args.n, args.procs) / args.n * 1e6)
    for chained in (False, True):
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "log" / "audit.jsonl"
            log = AuditLog(path if chained else None, stdout=False)
            if not chained:  # the writer as it was before the chain: one O_APPEND write
                path.parent.mkdir(parents=True)
                log._writer._fds.append(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT))
            t0 = time.perf_counter()
            for i in range(args.n):
                log.emit("delivery.delivered", {"email.local_id": "01HQ3Z8K2M4N5P6Q", "count": i})
            out[f"emit_{'chained' if chained else 'plain'}_us"] = (
                (time.perf_counter() - t0) / args.n * 1e6)
            log.close()
    out = {k: round(v, 2) for k, v in out.items()}
    out["ratio"] = round(out["chained_us"] / out["plain_us"], 2)
    print(f"per event: plain write {out['plain_us']} us, chained {out['chained_us']} us "
          f"(x{out['ratio']}); {args.procs} processes on one file: plain "
          f"{out[f'plain_{args.procs}procs_us']} us, chained "
          f"{out[f'chained_{args.procs}procs_us']} us (wall time per event); whole "
          f"AuditLog.emit {out['emit_plain_us']} us before, {out['emit_chained_us']} us chained")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
