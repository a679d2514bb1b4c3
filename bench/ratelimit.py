#!/usr/bin/env python3
"""What rate limits and anomaly scoring cost end to end: bench/relay.py's machinery
(``smtp-source`` -> ``phigate run`` -> ``smtp-sink``, timed until the sink has the last message)
with limits off, in process, and in Redis (a throwaway ``redis-server`` on loopback), runs
interleaved ``--repeat`` times. Every message passes every stage of the limiter (the bench
sender is in a group whose limits are never reached, the anomaly baseline is recorded) without
being refused. Prints msg/s and CPU ms per message per mode (median and best) and the ratios
against "off"; the target is a cost under 5%. One JSON line at the end.

    .venv/bin/python bench/ratelimit.py                   # 2000 x 5 KB, 10 sessions, 3 rounds
    .venv/bin/python bench/ratelimit.py --count 4000 --repeat 5 --workers 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.relay import (  # noqa: E402
    BenchError,
    Phigate,
    RunResult,
    drive,
    log,
    preflight,
)
from tests.redis_server import RedisServer  # noqa: E402

BIG = 10_000_000
GROUP = ('ratelimit.groups={"bench": {"members": ["sender:bench@example.org"], "limits": {'
         f'"user": {{"messages": {{"minute": {BIG}}}}},'
         f'"sender": {{"messages": {{"minute": {BIG}, "day": {BIG}}},'
         f'           "recipients": {{"minute": {BIG}}}, "phi_messages": {{"hour": {BIG}}}}},'
         f'"domain": {{"messages": {{"minute": {BIG}}}}},'
         f'"ip": {{"messages": {{"minute": {BIG}}}}}}}}},'
         ' "staff": {"limits": {}}}')
TRUSTED = ('ratelimit.trusted_ip='
           f'{{"messages": {{"minute": {BIG}}}, "recipients": {{"minute": {BIG}}}}}')
# each gateway alone on its ports (the portal would take 127.0.0.1:8080 in each)
SETS = ["rules.enabled=false", "portal.enabled=false"]


class Mode(Phigate):
    def __init__(self, workdir: Path, workers: int, mode: str, sets: list[str]) -> None:
        super().__init__(workdir, workers)
        self.label = f"limits-{mode}"
        self.var = workdir / self.label
        self.sets = sets

    def command(self) -> list[str]:
        cmd = super().command()
        for s in self.sets:
            cmd += ["--set", s]
        return cmd


def redis_calls(url: str) -> int:
    """Script calls (EVALSHA/EVAL) the Redis server has run so far, from INFO commandstats: a
    count no noise moves. Every per-message step is one script call (the commands a script runs
    are counted by Redis as well, so they are left out); other commands (flags set by an
    anomaly, `once`, the hourly fold) are not per message."""
    import redis as redis_lib

    client = redis_lib.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return sum(int(v["calls"]) for k, v in stats.items()
               if k in ("cmdstat_evalsha", "cmdstat_eval"))


def summary(results: list[RunResult]) -> dict[str, float]:
    rates = [r.msg_per_s for r in results]
    cpu = [r.cpu_ms_per_msg for r in results]
    return {"median_msg_s": statistics.median(rates), "best_msg_s": max(rates),
            "median_cpu_ms": statistics.median(cpu), "best_cpu_ms": min(cpu),
            "complete": float(all(r.complete for r in results))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--size", type=int, default=5120)
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--modes", default="off,memory,redis")
    args = p.parse_args(argv)
    try:
        preflight()
    except BenchError as err:
        log(f"ratelimit bench: {err}")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="phigate-bench-rl-", dir="/var/tmp"))
    redis: RedisServer | None = None
    systems: list[Mode] = []
    results: dict[str, list[RunResult]] = {}
    code = 0
    calls_per_msg: list[float] = []
    try:
        modes = args.modes.split(",")
        on = ["ratelimit.enabled=true", GROUP, TRUSTED, *SETS]
        for m in modes:
            sets = ["ratelimit.enabled=false", *SETS] if m == "off" else list(on)
            if m == "redis":
                if shutil.which("redis-server") is None:
                    log("redis-server not installed: skipping the redis mode")
                    continue
                redis = RedisServer()
                redis.start()
                sets.append(f"ratelimit.redis={redis.url}")
            systems.append(Mode(workdir, args.workers, m, sets))
        for s in systems:
            s.start()
            results[s.label] = []
        for s in systems:  # warm-up (imports, first connections)
            drive(s, args.size, 200, args.sessions, args.timeout)
        for rep in range(args.repeat):
            for s in systems:
                before = redis_calls(redis.url) if redis and s.label == "limits-redis" else 0
                r = drive(s, args.size, args.count, args.sessions, args.timeout)
                results[s.label].append(r)
                extra = ""
                if redis and s.label == "limits-redis":
                    calls_per_msg.append((redis_calls(redis.url) - before) / r.count)
                    extra = f", {calls_per_msg[-1]:.3f} Redis script calls/msg"
                log(f"[{s.label}] run {rep + 1}: {r.sunk}/{r.count} {r.msg_per_s} msg/s, "
                    f"{r.cpu_ms_per_msg} ms CPU/msg, machine {r.machine_cores_busy} cores busy"
                    + extra + ("" if r.complete else "  INCOMPLETE"))
        for s in systems:
            counts = s.outcome_counts()
            refused = counts.get("ratelimit.deferred", 0) + counts.get("ratelimit.alert", 0)
            if refused:
                log(f"[{s.label}] WARNING: {refused} rate-limit refusals or alerts in the run")
    except BenchError as err:
        log(f"ratelimit bench: {err}")
        code = 1
    finally:
        for s in systems:
            try:
                s.stop()
            except Exception as exc:
                log(f"[{s.label}] stop failed: {type(exc).__name__}: {exc}")
        if redis is not None:
            redis.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
    if code or not results:
        return code
    table = {k: summary(v) for k, v in results.items() if v}
    base = table.get("limits-off")
    print(f"{'mode':16} {'msg/s med':>10} {'best':>8} {'cpu ms/msg med':>15} {'ratio med':>10} "
          f"{'ratio best':>10} {'cpu ratio':>10}")
    out = {"count": args.count, "size": args.size, "sessions": args.sessions,
           "workers": args.workers, "repeat": args.repeat, "modes": {}}
    for label, t in table.items():
        ratio = t["median_msg_s"] / base["median_msg_s"] if base else float("nan")
        ratio_best = t["best_msg_s"] / base["best_msg_s"] if base else float("nan")
        cpu_ratio = t["median_cpu_ms"] / base["median_cpu_ms"] if base else float("nan")
        print(f"{label:16} {t['median_msg_s']:>10.1f} {t['best_msg_s']:>8.1f} "
              f"{t['median_cpu_ms']:>15.3f} {ratio:>10.3f} {ratio_best:>10.3f} "
              f"{cpu_ratio:>10.3f}")
        out["modes"][label] = {**t, "ratio_median": round(ratio, 3),
                               "ratio_best": round(ratio_best, 3),
                               "cpu_ratio": round(cpu_ratio, 3)}
    if calls_per_msg:
        print(f"Redis script calls per message (limits-redis, median of runs): "
              f"{statistics.median(calls_per_msg):.3f}")
        out["redis_calls_per_msg"] = round(statistics.median(calls_per_msg), 4)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
