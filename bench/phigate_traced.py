"""``phigate`` as bench/relay.py runs it, with a record of why a worker process ended.

The supervisor in gateway/app.py forks the workers; a worker that raises exits with code 1
without printing anything (``except BaseException: code = 1``), and the supervisor discards the
wait status, logging only the pid (``service.worker_restarted``). This wrapper, which changes
nothing else, prints to stderr (the bench's ``gateway.out``):

- ``phigate-trace: worker N pid P raised ...`` and the traceback, when ``_run_worker`` raises;
- ``phigate-trace: worker pid P returned normally`` when its event loop ended without error
  (the gateway was stopped: a SIGTERM or SIGINT reached the worker);
- ``phigate-trace: supervisor reaped pid P: exit C`` / ``killed by signal S`` for every worker
  the supervisor waits for, so a death by signal (OOM killer, segfault) shows as such;
- Python tracebacks of every thread on a fatal signal (``faulthandler``).

    python bench/phigate_traced.py run --config conf/gateway.yaml --set ...
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import time
import traceback
from typing import Any


def _say(msg: str) -> None:
    stamp = time.strftime("%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}"
    os.write(2, f"phigate-trace {stamp}: {msg}\n".encode(errors="replace"))


def install() -> None:
    faulthandler.enable(all_threads=True)
    from gateway import app

    real_run_worker = app._run_worker

    def traced_run_worker(*args: Any, **kwargs: Any) -> None:
        worker = args[-1] if args else kwargs.get("worker")
        try:
            real_run_worker(*args, **kwargs)
        except BaseException as exc:
            _say(f"worker {worker} pid {os.getpid()} raised {type(exc).__name__}: {exc}\n"
                 + "".join(traceback.format_exception(exc)))
            raise
        _say(f"worker {worker} pid {os.getpid()} returned normally (its gateway was stopped)")

    app._run_worker = traced_run_worker

    real_stop = app.Gateway.stop

    async def traced_stop(self: Any, *args: Any, **kwargs: Any) -> None:
        _say(f"worker {self.worker} pid {os.getpid()}: Gateway.stop() called")
        await real_stop(self, *args, **kwargs)

    app.Gateway.stop = traced_stop  # type: ignore[method-assign]

    # when each worker opens the portal's store: workers that create a fresh SQLite file
    # at the same moment can fail (``database is locked``); this shows how close they are
    from portal import service

    real_open_store = service.open_store  # type: ignore[attr-defined]

    def timed_open_store(*args: Any, **kwargs: Any) -> Any:
        t0 = time.monotonic()
        try:
            return real_open_store(*args, **kwargs)
        finally:
            os.write(2, f"phigate-timing: pid {os.getpid()} open_store {t0:.6f}.."
                        f"{time.monotonic():.6f}\n".encode())

    service.open_store = timed_open_store  # type: ignore[attr-defined]

    real_wait = os.wait

    def traced_wait() -> tuple[int, int]:
        pid, status = real_wait()
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            how = f"killed by signal {sig} ({signal.Signals(sig).name})"
            if os.WCOREDUMP(status):
                how += ", core dumped"
        else:
            how = f"exit {os.waitstatus_to_exitcode(status)}"
        _say(f"supervisor pid {os.getpid()} reaped pid {pid}: {how}")
        return pid, status

    os.wait = traced_wait


def main() -> int:
    # sys.path[0] is bench/, whose dkim.py and portal.py would shadow dkimpy and phigate's
    # portal: put the cwd there instead (a --rev source tree, ahead of the editable install)
    sys.path[0] = os.getcwd()
    install()
    from gateway.cli import main as cli_main

    sys.argv[0] = "phigate"
    return int(cli_main() or 0)


if __name__ == "__main__":
    sys.exit(main())
