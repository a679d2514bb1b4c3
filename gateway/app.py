"""Wires the parts together and runs them: listeners, delivery, signals, worker processes.

The parent process validates the configuration, prepares ``paths.var`` (spool recovery,
generated certificate and DKIM key), binds the listening sockets and then either runs one worker
itself or forks ``workers`` processes that share those sockets, so the kernel spreads
connections over the cores. Each worker runs intake and delivery on its own event loop; the spool
is shared, and a rename decides which worker delivers a message. SIGTERM drains (stop accepting,
finish sessions in DATA, finish delivery attempts in flight), SIGHUP reloads the configuration
and keeps the running one if the new one is bad.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import ssl
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .audit import AuditLog, configure_stdlib_logging
from .authguard import AuthGuard
from .config import Config, ConfigError, HostPort, load_config
from .delivery import Delivery
from .dkim import Signer
from .dkimkeys import DkimKeyError
from .encrypt import Encryptor
from .intake import CALL_LIMITS, GatewaySMTP, IntakeHandler, IntakeState, Listener
from .policy import DeliverPolicy, Policy
from .ratelimit import RateLimiter
from .routing import Router, make_resolver
from .smtpclient import SmtpSender
from .spool import Spool
from .tlspolicy import TlsPolicy
from .tlsutil import ensure_dkim_key, ensure_self_signed, server_context
from .users import UserDB

if TYPE_CHECKING:
    from portal.service import PortalService

    from .metrics import MetricsServer

RESTART_SOON = 10.0  # a worker ending sooner than this after its start failed to start
RESTART_MAX_DELAY = 60.0

LISTENERS = {
    "relay": Listener("relay", require_auth=False, implicit_tls=False),
    "submission": Listener("submission", require_auth=True, implicit_tls=False),
    "submissions": Listener("submissions", require_auth=True, implicit_tls=True),
}


class ImplicitTlsSMTP(GatewaySMTP):
    """Port 465: the connection is TLS from the first byte (RFC 8314)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if transport.get_extra_info("sslcontext") is not None and self.session is not None:
            # tells aiosmtpd that the session is encrypted, so AUTH is offered
            self._tls_protocol = transport  # type: ignore[assignment]
            self.session.ssl = {"ssl_object": transport.get_extra_info("ssl_object")}


def prepare_var(config: Config) -> tuple[Path, Path]:
    """Create the var folders, the certificate and the DKIM keys if none are configured."""
    config.paths.var.mkdir(parents=True, exist_ok=True)
    if config.tls.cert is not None and config.tls.key is not None:
        cert, key = config.tls.cert, config.tls.key
    else:
        cert, key = ensure_self_signed(config.paths.var, config.hostname)
    for domain in config.domains:
        if domain not in config.dkim.domains:  # an admin's own key is configured there
            ensure_dkim_key(config.paths.var, domain, config.dkim.selector)
    return cert, key


def lock_var(var: Path) -> int | None:
    """Hold ``var/phigate.lock`` for the life of this gateway (forked workers inherit it), so
    a second instance cannot recover, and so disturb, a spool that a running one owns."""
    var.mkdir(parents=True, exist_ok=True)
    fd = os.open(var / "phigate.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _die_with_parent(parent: int) -> None:
    """Linux: get SIGTERM when the supervisor dies (even by SIGKILL), so no orphan worker
    keeps the ports and the spool lock."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(0)


def bind(hp: HostPort) -> socket.socket:
    family = socket.AF_INET6 if ":" in hp.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((hp.host, hp.port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def sd_notify(state: str) -> None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(state.encode())


@dataclass
class Runtime:
    """Collaborators a test may replace."""

    clock: Callable[[], float] = time.time
    policy: Policy | None = None


class Gateway:
    """One worker: intake servers on the shared sockets plus delivery."""

    def __init__(self, config: Config, config_path: Path, overrides: Sequence[str],
                 sockets: dict[str, socket.socket], cert: Path, key: Path,
                 runtime: Runtime | None = None, worker: int = 0,
                 audit: AuditLog | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.overrides = list(overrides)
        self.sockets = sockets
        self.cert = cert
        self.key = key
        self.runtime = runtime or Runtime()
        self.worker = worker
        self.audit = audit or AuditLog.from_config(config.log)
        self.spool = Spool(config.paths.spool)
        self.servers: list[asyncio.base_events.Server] = []
        self.handlers: list[IntakeHandler] = []
        self.delivery: Delivery | None = None
        self.router: Router | None = None
        self._stopped = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._sts_refresh: asyncio.Task[None] | None = None
        self.portal: PortalService | None = None
        self.limiter: RateLimiter | None = None
        self.tls_policy: TlsPolicy | None = None
        self.metrics_server: MetricsServer | None = None

    def _state(self, config: Config) -> IntakeState:
        users = UserDB.load(config.auth.users_file)
        policy: Policy
        if self.runtime.policy is not None:
            policy = self.runtime.policy
        elif config.rules.enabled:
            from .classify import PhiPolicy  # loads the vocabularies: only when used

            policy = PhiPolicy(config)
        else:
            policy = DeliverPolicy()
        return IntakeState(config, policy, users)

    def _rules_stamp(self) -> tuple[tuple[str, float], ...]:
        """Modification times of every rule file, to reload when an admin saves one."""
        cfg = self.config
        if not cfg.rules.enabled:
            return ()
        files = sorted(cfg.rules_dir.glob("*.yaml")) + sorted(
            (cfg.rules_dir / "local.d").glob("*.yaml"))
        out = []
        for f in files:
            with contextlib.suppress(OSError):
                out.append((str(f), f.stat().st_mtime))
        return tuple(out)

    async def _watch_rules(self) -> None:
        stamp = self._rules_stamp()
        while True:
            await asyncio.sleep(2.0)
            now = self._rules_stamp()
            if now != stamp:
                stamp = now
                self.reload()

    async def start(self) -> None:
        cfg = self.config
        clock = self.runtime.clock
        configure_stdlib_logging(self.audit)
        self.spool.ensure()
        if cfg.metrics.listen is not None:
            from .metrics import start_for_worker  # prometheus-client: only when used

            self.metrics_server = await start_for_worker(self.audit, cfg, self.worker)
        state = self._state(cfg)
        self.limiter = state.limiter = RateLimiter(cfg, self.audit, clock, self.worker)
        await self.limiter.start()
        self.router = Router(cfg, make_resolver(cfg), clock)
        self.tls_policy = TlsPolicy(cfg, self.router.resolver, clock)
        sender = SmtpSender(cfg.hostname, cfg.delivery.connect_timeout,
                            cfg.delivery.command_timeout, cfg.delivery.idle_connection,
                            capabilities=self.tls_policy.capabilities)
        if cfg.portal.enabled:
            from portal.service import PortalService

            self.portal = PortalService(cfg, self.audit, clock)
        self.delivery = Delivery(cfg, self.spool, self.audit, self.router, sender, clock,
                                 scanner=self.worker == 0,
                                 portal=self.portal.rewriter if self.portal else None,
                                 signer=Signer.from_config(cfg, clock),
                                 tls_policy=self.tls_policy,
                                 encryptor=Encryptor.from_config(cfg))
        guard = AuthGuard(cfg.auth.max_failures, cfg.auth.failure_window, cfg.auth.lockout,
                          cfg.auth.tarpit, clock, cfg.auth.ip_failure_factor)
        tls_ctx = server_context(self.cert, self.key)
        loop = asyncio.get_running_loop()
        for name, sock in self.sockets.items():
            if name == "portal":
                if self.portal is not None:
                    await self.portal.serve(sock)
                    if self.worker == 0:
                        self.portal.start_purger()
                continue
            listener = LISTENERS[name]
            handler = IntakeHandler(listener, state, self.spool, self.audit, guard,
                                    self.delivery.notify, clock)
            self.handlers.append(handler)
            self.servers.append(await loop.create_server(
                self._factory(handler, listener, tls_ctx), sock=sock,
                ssl=tls_ctx if listener.implicit_tls else None,
                ssl_handshake_timeout=30 if listener.implicit_tls else None))
        self.delivery.start()
        self._watcher = asyncio.create_task(self._watch_rules())
        self._sts_refresh = asyncio.create_task(self.tls_policy.sts.run_refresh())
        self.audit.emit("service.started", {"process.pid": os.getpid(),
                                            "process.worker": self.worker,
                                            "service.state": "running"})

    def _factory(self, handler: IntakeHandler, listener: Listener,
                 tls_ctx: ssl.SSLContext) -> Callable[[], GatewaySMTP]:
        def make() -> GatewaySMTP:
            cfg = handler.state.config
            cls = ImplicitTlsSMTP if listener.implicit_tls else GatewaySMTP
            kw: dict[str, Any] = {
                "data_size_limit": cfg.smtp.max_message_size,
                "enable_SMTPUTF8": True,
                "hostname": cfg.hostname,
                "ident": "ESMTP phigate",
                "tls_context": None if listener.implicit_tls else tls_ctx,
                "timeout": cfg.smtp.timeout,
                "auth_require_tls": True,
                "command_call_limit": CALL_LIMITS,
            }
            if listener.name == "relay":
                kw["auth_exclude_mechanism"] = ["PLAIN", "LOGIN"]
            return cls(handler, **kw)

        return make

    def reload(self) -> bool:
        try:
            new = load_config(self.config_path, self.overrides)
            state = self._state(new)
        except ConfigError as err:
            # The running configuration and rules stay in force.
            self.audit.emit("config.reload_failed", {"config.file": str(self.config_path),
                                                     "config.problems": err.problems,
                                                     "event.outcome": "failure"})
            return False
        self.config = new
        if self.limiter is not None:  # counters and baselines are kept
            self.limiter.reconfigure(new)
            state.limiter = self.limiter
        old = self.handlers[0].state.policy if self.handlers else None
        for h in self.handlers:
            h.state = state
        if old is not None and old is not state.policy:
            old.close()
        if self.delivery is not None and self.router is not None:
            self.delivery.encryptor = Encryptor.from_config(new)
            try:
                self.delivery.signer = Signer.from_config(new, self.runtime.clock)
            except DkimKeyError as exc:  # a key file an admin broke: keep the old keys
                self.audit.emit("config.reload_failed", {"config.file": str(self.config_path),
                                                         "error.type": type(exc).__name__,
                                                         "event.outcome": "failure"})
            self.delivery.config = new
            self.router.config = new
            self.router.resolver = make_resolver(new)
            if self.tls_policy is not None:
                self.tls_policy.config = new  # caches (MTA-STS, capabilities) are kept
                self.tls_policy.resolver = self.tls_policy.sts.resolver = self.router.resolver
        self.audit.emit("config.reloaded", {"config.file": str(self.config_path),
                                            "event.outcome": "success",
                                            "process.worker": self.worker})
        return True

    async def stop(self, grace: float = 30.0) -> None:
        for s in self.servers:
            s.close()
        for task in (self._watcher, self._sts_refresh):
            if task is not None:
                task.cancel()
        deadline = time.monotonic() + grace
        # bounded polling: sessions in DATA finish on their own, we only wait for them
        while any(h.in_data for h in self.handlers) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if self.delivery is not None:
            await self.delivery.stop(max(1.0, deadline - time.monotonic()))
        if self.handlers:
            self.handlers[0].state.policy.close(wait=True)
        if self.limiter is not None:
            await self.limiter.close()
        if self.tls_policy is not None:
            await self.tls_policy.capabilities.close()
        if self.portal is not None:
            with contextlib.suppress(Exception):
                await self.portal.stop()
        for s in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(s.wait_closed(), 1.0)
        self.audit.emit("service.stopped", {"process.pid": os.getpid(),
                                            "process.worker": self.worker,
                                            "service.state": "stopped"})
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        self._stopped.set()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        stopping: list[asyncio.Task[None]] = []
        loop.add_signal_handler(signal.SIGTERM, lambda: stopping.append(
            asyncio.create_task(self.stop())) if not stopping else None)
        loop.add_signal_handler(signal.SIGINT, lambda: stopping.append(
            asyncio.create_task(self.stop())) if not stopping else None)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        await self.start()
        await self._stopped.wait()


def exit_fields(status: int) -> dict[str, Any]:
    """How a worker ended, from ``os.wait``'s status: its exit code, or the signal that killed
    it (9 from the kernel's OOM killer, 11 a crash in a C extension)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return {"process.exit_signal": signal.Signals(sig).name if sig in signal.valid_signals()
                else sig}
    return {"process.exit_code": os.waitstatus_to_exitcode(status)}


def _create_portal_store(config: Config) -> str | None:
    """Open (create) a SQLite portal store once, before the workers start and each opens it
    (on a fresh var folder they would all create it at once): a store that cannot be opened
    is a start-up error, said once. PostgreSQL is left to the workers: its schema is made
    under an advisory lock, and the gateway starts while it is down."""
    from portal.model import StoreError
    from portal.store import is_postgres_url, open_store

    if is_postgres_url(config.portal.store):
        return None
    try:
        open_store(config.portal.store).close()
    except StoreError as err:
        return str(err)
    return None


def _failure_fields(exc: BaseException) -> dict[str, Any]:
    """What ended a worker, without the exception's text (which may quote message content):
    its type and where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return {"error.type": type(exc).__name__, "error.location": where}


def _run_worker(config: Config, config_path: Path, overrides: Sequence[str],
                sockets: dict[str, socket.socket], cert: Path, key: Path, worker: int) -> None:
    gw = Gateway(config, config_path, overrides, sockets, cert, key, worker=worker)
    asyncio.run(gw.serve())


def run(config_path: Path, overrides: Sequence[str]) -> int:
    """``phigate run``: returns the process exit code."""
    try:
        config = load_config(config_path, overrides)
    except ConfigError as err:
        print("\n".join(err.problems), file=sys.stderr)
        return 1
    if lock_var(config.paths.var) is None:
        print(f"another phigate is running with paths.var={config.paths.var} "
              f"(it holds {config.paths.var / 'phigate.lock'}); stop it first", file=sys.stderr)
        return 1
    cert, key = prepare_var(config)
    try:
        Signer.from_config(config)
    except DkimKeyError as err:
        print(str(err), file=sys.stderr)
        return 1
    audit = AuditLog.from_config(config.log)
    problem = _create_portal_store(config) if config.portal.enabled else None
    if problem:
        print(problem, file=sys.stderr)
        return 1
    recovered = Spool(config.paths.spool).recover()
    audit.emit("queue.recovered", {"count": recovered["requeued"], "queue.state": "incoming"})
    if recovered["corrupt"]:
        audit.emit("queue.corrupt", {"count": recovered["corrupt"], "queue.state": "corrupt"})
    sockets: dict[str, socket.socket] = {}
    try:
        for name in ("relay", "submission", "submissions"):
            hp = getattr(config.listen, name)
            if hp is not None:
                sockets[name] = bind(hp)
                audit.emit("service.listen", {"listener": name, "listen.address": str(hp)})
        if config.portal.enabled:
            sockets["portal"] = bind(config.portal.listen)
            audit.emit("service.listen", {"listener": "portal",
                                          "listen.address": str(config.portal.listen)})
    except OSError as exc:
        print(f"cannot listen: {exc.strerror} ({exc.__class__.__name__})", file=sys.stderr)
        return 1
    if config.workers == 1:
        sd_notify("READY=1")
        _run_worker(config, config_path, overrides, sockets, cert, key, 0)
        return 0
    return _supervise(config, config_path, overrides, sockets, cert, key, audit)


def _supervise(config: Config, config_path: Path, overrides: Sequence[str],
               sockets: dict[str, socket.socket], cert: Path, key: Path,
               audit: AuditLog) -> int:
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False

    parent = os.getpid()

    started: dict[int, float] = {}  # worker index -> when it was last started
    quick_fails: dict[int, int] = {}  # worker index -> failures in a row soon after start

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _die_with_parent(parent)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_DFL)
                _run_worker(config, config_path, overrides, sockets, cert, key, index)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException as exc:
                code = 1
                with contextlib.suppress(Exception):
                    audit.emit("service.worker_failed", {"process.worker": index,
                                                         "process.pid": os.getpid(),
                                                         **_failure_fields(exc)})
            finally:
                os._exit(code)
        children[pid] = index
        started[index] = time.monotonic()

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def on_hup(signum: int, frame: Any) -> None:
        try:
            load_config(config_path, overrides)
        except ConfigError as err:
            audit.emit("config.reload_failed", {"config.file": str(config_path),
                                                "config.problems": err.problems})
            return
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    for i in range(config.workers):
        spawn(i)
    sd_notify("READY=1")
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid, None)
        if index is not None and not stopping:
            # a worker that keeps failing soon after it starts (a store it cannot open, a
            # broken file) is restarted ever more slowly: 0.5 s, 1 s, 2 s ... up to a minute
            soon = time.monotonic() - started.get(index, 0.0) < RESTART_SOON
            quick_fails[index] = quick_fails.get(index, 0) + 1 if soon else 0
            delay = min(RESTART_MAX_DELAY, 0.5 * 2 ** quick_fails[index])
            audit.emit("service.worker_restarted", {"process.worker": index,
                                                    "process.pid": pid, **exit_fields(status),
                                                    "process.restart_delay": delay})
            time.sleep(delay)
            if not stopping:
                spawn(index)
    return 0
