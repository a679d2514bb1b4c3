"""Prometheus metrics, derived from the decision log.

No stage counts anything itself: every decision is already an audit event, so ``GatewayMetrics``
is an observer of ``AuditLog`` (``audit.observers``) that maps events to counters and
histograms. The queue gauges come from the spool at scrape time (``SpoolCollector``): a
``listdir`` per state, and the oldest message's age read from its queue id, which starts with
its arrival time, so no queue file is opened.

Several worker processes: each worker counts in its own process; with ``workers > 1`` the
values live in prometheus-client's multiprocess files (``<paths.var>/metrics/<supervisor
pid>/``, mmapped, one file per worker and metric type) and worker 0 serves ``/metrics`` on
``metrics.listen``, summing every worker's files at scrape time. A restarted worker leaves its
file behind, so totals never go backwards within a run; the folders of earlier runs are
removed when worker 0 starts (``paths.var`` is locked to one running gateway).

Labels never carry addresses, subjects or values: only event names, rule ids, finding types,
verdict actions, TLS versions and similar closed or admin-defined sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .audit import AuditLog
from .config import Config
from .spool import STATES

# Seconds; an attempt is one SMTP transaction, or a portal store plus its notification.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

Fields = Mapping[str, Any]


def _label(value: Any, default: str = "none") -> str:
    return value if isinstance(value, str) and value else default


class GatewayMetrics:
    """Counters and histograms fed by audit events: ``observe`` is the ``AuditLog`` observer."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()

        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(name, doc, list(labels), registry=r)

        self.events = counter("phigate_audit_events", "Audit events by action", ["action"])
        self.accepted = counter("phigate_messages_accepted",
                                "Messages accepted (250 at end of DATA), by listener and the "
                                "queue state they entered (incoming, or hold)",
                                ["listener", "state"])
        self.rejected = counter("phigate_messages_rejected",
                                "Messages refused by policy at end of DATA", ["reason"])
        self.deferred = counter("phigate_messages_deferred",
                                "Temporary failures: at intake (451/452 to the client, by "
                                "reason) or a delivery attempt that left recipients pending",
                                ["stage", "reason"])
        self.expired = counter("phigate_messages_expired",
                               "Messages whose pending recipients expired in the queue")
        self.bounces = counter("phigate_bounces",
                               "Bounces (DSNs) created for senders, by kind", ["kind"])
        self.deliveries = counter("phigate_deliveries",
                                  "Recipient delivery outcomes per attempt", ["outcome"])
        self.verdicts = counter("phigate_verdicts",
                                "Per-recipient verdicts by action and deciding rule; "
                                "mode=monitor for monitor-mode policies that matched",
                                ["action", "rule", "mode"])
        self.phi_messages = counter("phigate_phi_messages",
                                    "Messages classified as carrying PHI")
        self.detections = counter("phigate_phi_detections",
                                  "Messages in which a finding type was detected", ["type"])
        self.findings = counter("phigate_phi_findings",
                                "Detector hits by finding type (summed counts)", ["type"])
        self.tls = counter("phigate_delivery_tls",
                           "Delivered recipients by TLS version achieved and level required",
                           ["version", "required"])
        self.tls_fallbacks = counter("phigate_tls_fallbacks",
                                     "PHI sent to the portal because the destination could "
                                     "not meet the TLS requirement")
        self.portal_rewrites = counter("phigate_portal_rewrites",
                                       "Messages stored in the portal for a recipient "
                                       "(a notification is sent instead)", ["outcome"])
        self.portal_opens = counter("phigate_portal_opens",
                                    "Portal message pages viewed by their recipient")
        self.portal_events = counter("phigate_portal_events",
                                     "Portal events (verification, denials, downloads...)",
                                     ["event", "outcome"])
        self.encryptions = counter("phigate_encryptions",
                                   "End-to-end encryption attempts by method and outcome",
                                   ["method", "outcome"])
        self.ratelimit = counter("phigate_ratelimit_events",
                                 "Rate-limit and anomaly events by kind and scope",
                                 ["event", "scope"])
        self.latency = Histogram("phigate_delivery_duration_seconds",
                                 "Duration of the delivery attempt, observed per recipient "
                                 "outcome", ["outcome"], buckets=LATENCY_BUCKETS, registry=r)
        self._children: dict[tuple[Any, ...], Any] = {}
        self._by_action: dict[str, Callable[[Fields], None]] = {
            "message.accepted": self._accepted,
            "message.rejected": self._rejected,
            "message.deferred": self._deferred,
            "message.expired": lambda f: self.expired.inc(),
            "message.verdict": self._verdict,
            "message.encrypt": self._encrypt,
            "bounce.created": lambda f: self._child(self.bounces, "bounce").inc(),
            "bounce.delay_warning": lambda f: self._child(self.bounces, "delay_warning").inc(),
            "delivery.delivered": lambda f: self._delivery("delivered", f),
            "delivery.deferred": lambda f: self._delivery("deferred", f),
            "delivery.bounced": lambda f: self._delivery("bounced", f),
            "tls.fallback": lambda f: self.tls_fallbacks.inc(),
            "portal.stored": lambda f: self._child(
                self.portal_rewrites, _label(f.get("event.outcome"), "unknown")).inc(),
            "portal.view": lambda f: self.portal_opens.inc(),
        }

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: label sets are few, and ``labels()`` takes a
        lock and builds tuples on every call (this halves the observer's cost)."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, action: str, fields: Fields) -> None:
        """Count one audit event. Never raises: metrics must not disturb mail flow."""
        try:
            self._child(self.events, action).inc()
            handler = self._by_action.get(action)
            if handler is not None:
                handler(fields)
            elif action.startswith("ratelimit."):
                self._child(self.ratelimit, action[10:],
                            _label(fields.get("ratelimit.scope"))).inc()
            elif action.startswith("portal."):
                self._child(self.portal_events, action[7:],
                            _label(fields.get("event.outcome"), "unknown")).inc()
        except Exception:  # noqa: S110 - a counter is not worth a lost message
            pass

    def _accepted(self, f: Fields) -> None:
        self._child(self.accepted, _label(f.get("listener"), "unknown"),
                    _label(f.get("queue.state"), "incoming")).inc()

    def _rejected(self, f: Fields) -> None:
        self._child(self.rejected, _label(f.get("event.reason"), "policy")).inc()

    def _deferred(self, f: Fields) -> None:
        if "event.reason" in f:  # intake: the client was told 451/452
            self._child(self.deferred, "intake", _label(f.get("event.reason"))).inc()
        else:
            self._child(self.deferred, "delivery", "retry").inc()

    def _verdict(self, f: Fields) -> None:
        for mode, key in (("enforce", "verdict.recipients"), ("monitor", "verdict.monitor")):
            for rv in f.get(key) or ():
                self._child(self.verdicts, _label(rv.get("action")), _label(rv.get("rule")),
                            mode).inc()
        if f.get("phi.detected"):
            self.phi_messages.inc()
        seen: set[str] = set()
        for finding in f.get("phi.findings") or ():
            kind = _label(finding.get("type"), "unknown")
            count = finding.get("count")
            self._child(self.findings, kind).inc(
                count if isinstance(count, int) and count > 0 else 1)
            if kind not in seen:
                seen.add(kind)
                self._child(self.detections, kind).inc()

    def _delivery(self, outcome: str, f: Fields) -> None:
        self._child(self.deliveries, outcome).inc()
        duration = f.get("delivery.duration")
        if isinstance(duration, int | float):
            self._child(self.latency, outcome).observe(duration)
        if outcome == "delivered":
            version = _label(f.get("tls.version")) if f.get("tls.established") else "none"
            self._child(self.tls, version, _label(f.get("tls.required"), "unknown")).inc()

    def _encrypt(self, f: Fields) -> None:
        self._child(self.encryptions, _label(f.get("encrypt.method")),
                    _label(f.get("event.outcome"), "unknown")).inc()


class SpoolCollector(Collector):
    """Queue size by state and the age of the oldest message in each, read at scrape time.

    The cost is one ``listdir`` per state; ages come from the queue ids (time-ordered: the
    first 14 hex digits are the arrival time in microseconds), with the file's mtime as the
    fallback for a name in another form. Results are reused for ``min_interval`` seconds, so
    several scrapers cannot make it scan more often."""

    def __init__(self, root: Path, clock: Callable[[], float] = time.time,
                 min_interval: float = 2.0) -> None:
        self.root = root
        self.clock = clock
        self.min_interval = min_interval
        self._cache: tuple[float, dict[str, tuple[int, float]]] | None = None

    def scan(self) -> dict[str, tuple[int, float]]:
        """``state -> (messages, age of the oldest in seconds)``."""
        now = self.clock()
        if self._cache is not None and 0 <= now - self._cache[0] < self.min_interval:
            return self._cache[1]
        out: dict[str, tuple[int, float]] = {}
        for state in STATES:
            try:
                names = [n for n in os.listdir(self.root / state) if not n.startswith(".")]
            except FileNotFoundError:
                names = []
            age = 0.0
            if names:
                oldest = min(names)
                arrived = _arrival(oldest, self.root / state / oldest)
                age = max(0.0, now - arrived) if arrived is not None else 0.0
            out[state] = (len(names), round(age, 3))
        self._cache = (now, out)
        return out

    def collect(self) -> Iterator[Metric]:
        size = GaugeMetricFamily("phigate_queue_messages", "Messages in the spool by state",
                                 labels=["state"])
        age = GaugeMetricFamily("phigate_queue_oldest_age_seconds",
                                "Age of the oldest message in each spool state (0 when empty)",
                                labels=["state"])
        for state, (count, oldest) in self.scan().items():
            size.add_metric([state], count)
            age.add_metric([state], oldest)
        yield size
        yield age


def _arrival(name: str, path: Path) -> float | None:
    head = name[:14]
    if len(head) == 14:
        with contextlib.suppress(ValueError):
            when = int(head, 16) / 1e6
            if 946684800 < when < 4102444800:  # 2000 .. 2100: a queue id, not a stray name
                return when
    try:
        return path.stat().st_mtime
    except OSError:
        return None


# --------------------------------------------------------------------------- processes


def multiprocess_dir(var: Path, run_id: int) -> Path:
    return var / "metrics" / str(run_id)


def enable_multiprocess(path: Path, clear_others: bool) -> None:
    """Count in prometheus-client's multiprocess files under ``path`` (this process and its
    siblings of the same run). ``clear_others`` removes the folders of earlier runs."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if clear_others:
        for other in path.parent.iterdir():
            if other != path:
                shutil.rmtree(other, ignore_errors=True)
    os.environ[_MULTIPROC_ENV] = str(path)
    if not getattr(values.ValueClass, "_multiprocess", False):
        # prometheus-client chooses the value class when it is first imported; a worker may
        # have imported it before its folder was known
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def exposition(metrics: GatewayMetrics, spool: SpoolCollector | None,
               multiprocess: Path | None) -> bytes:
    """The text exposition: every worker's counters (summed) plus the spool gauges."""
    if multiprocess is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(multiprocess))  # type: ignore[no-untyped-call]
    else:
        registry = CollectorRegistry()
        registry.register(_Forward(metrics.registry))
    if spool is not None:
        registry.register(spool)
    return generate_latest(registry)


class _Forward(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        return iter(self.registry.collect())


class MetricsServer:
    """``GET /metrics`` on ``metrics.listen`` (aiohttp, on the worker's event loop; the
    exposition is built in a thread)."""

    def __init__(self, metrics: GatewayMetrics, spool: SpoolCollector | None,
                 multiprocess: Path | None) -> None:
        self.metrics = metrics
        self.spool = spool
        self.multiprocess = multiprocess
        self._runner: Any = None

    async def start(self, host: str, port: int) -> None:
        from aiohttp import web

        async def handle(request: web.Request) -> web.Response:
            body = await asyncio.to_thread(exposition, self.metrics, self.spool,
                                           self.multiprocess)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application()
        app.router.add_get("/metrics", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, reuse_address=True).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner.cleanup()
            self._runner = None


async def start_for_worker(audit: AuditLog, config: Config, worker: int) -> MetricsServer | None:
    """Count this worker's audit events; worker 0 also serves ``/metrics``. Returns the server
    to stop, if this worker runs one. A listener that cannot be bound is logged
    (``service.listen_failed``) and mail flow goes on without metrics."""
    listen = config.metrics.listen
    if listen is None:
        return None
    multiprocess = None
    if config.workers > 1:  # forked by the supervisor: its pid names this run
        multiprocess = multiprocess_dir(config.paths.var, os.getppid())
        enable_multiprocess(multiprocess, clear_others=worker == 0)
    metrics = GatewayMetrics()
    audit.observers.append(metrics.observe)
    if worker != 0:
        return None
    server = MetricsServer(metrics, SpoolCollector(config.paths.spool), multiprocess)
    try:
        await server.start(listen.host, listen.port)
    except OSError as exc:
        audit.emit("service.listen_failed", {"listener": "metrics", "listen.address": str(listen),
                                             "event.outcome": "failure",
                                             "error.type": type(exc).__name__})
        return None
    audit.emit("service.listen", {"listener": "metrics", "listen.address": str(listen),
                                  "process.worker": worker})
    return server
