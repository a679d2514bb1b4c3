"""Load and validate ``conf/gateway.yaml`` into typed, frozen configuration objects.

Every problem is reported as ``file:line: what is wrong`` so an admin can fix the file;
``--set dotted.key=YAML`` overrides are validated the same way and reported as ``--set KEY``.
"""

from __future__ import annotations

import functools
import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

DEFAULT_CONFIG = Path("conf/gateway.yaml")
T = TypeVar("T")


class ConfigError(Exception):
    """A configuration problem, already formatted as ``file:line: problem`` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Listen:
    relay: HostPort | None
    submission: HostPort | None
    submissions: HostPort | None


@dataclass(frozen=True)
class SmtpLimits:
    max_message_size: int
    max_recipients: int
    max_header_size: int
    timeout: float
    data_timeout: float
    max_line_length: int


@dataclass(frozen=True)
class AuthConfig:
    users_file: Path
    max_failures: int
    failure_window: float
    lockout: float
    tarpit: float
    ip_failure_factor: int


@dataclass(frozen=True)
class RetryConfig:
    first: float
    max_backoff: float
    expire: float
    delay_warning: float


@dataclass(frozen=True)
class DeliveryConfig:
    mode: str
    smarthost: HostPort | None
    transport: Mapping[str, HostPort]
    concurrency: int
    per_destination: int
    connect_timeout: float
    command_timeout: float
    idle_connection: float
    retry: RetryConfig
    scan_interval: float


@dataclass(frozen=True)
class DnsConfig:
    nameservers: tuple[str, ...]
    port: int
    timeout: float


@dataclass(frozen=True)
class TlsConfig:
    cert: Path | None
    key: Path | None
    # outbound (see gateway/tlspolicy.py)
    policy_file: Path | None  # per-destination levels, conf/tls_policy.yaml
    policies: Mapping[str, DestinationTls] = field(default_factory=dict)
    ca_file: Path | None = None  # extra CAs for `verify` and MTA-STS fetches
    mta_sts: bool = True
    mta_sts_port: int = 443  # where mta-sts.DOMAIN is fetched (tests use another port)
    dane: bool = True
    fallback_after: float = 0.0  # PHI to a destination short of TLS: portal after this long
    capability_ttl: float = 3600.0
    capability_redis: str | None = None  # shared capability cache (default: ratelimit.redis)


TLS_LEVELS = ("none", "may", "encrypt", "verify", "dane", "portal")


@dataclass(frozen=True)
class DestinationTls:
    """One line of the TLS policy file (Postfix's smtp_tls_policy_maps)."""

    level: str  # one of TLS_LEVELS
    match: tuple[str, ...] = ()  # names the certificate must carry (`verify`); default MX name
    source: str = ""  # file:line, for logs and `tls probe`


@dataclass(frozen=True)
class LogConfig:
    audit_file: Path
    stdout: bool
    hmac_key_file: Path  # the audit chain's HMAC key, generated (0600) on first use
    rotate_size: int = 0  # start a new audit file (the chain continues) past this size; 0 = off


@dataclass(frozen=True)
class PortalConfig:
    enabled: bool
    listen: HostPort
    base_url: str
    store: str  # a SQLite file, or a postgresql:// URL shared by several nodes
    submit: HostPort  # where the portal hands its mail (codes, replies): the relay listener
    from_address: str  # envelope and From of the portal's own mail
    subject: str  # the notification's neutral subject
    anti_phishing_phrase: str  # shown in every notification and portal page, if set
    templates: Path
    expire: float  # a pickup's lifetime
    code_digits: int
    code_ttl: float
    code_resend: float  # minimum interval between two codes for one pickup
    max_failures: int  # wrong codes before the pickup locks
    lockout: float
    session_idle: float
    notify_sender_on_open: bool


@dataclass(frozen=True)
class MetricsConfig:
    listen: HostPort | None


@dataclass(frozen=True)
class QuarantineConfig:
    notify: str | None = None  # a DLP reviewer told (without PHI) when a message is held


@dataclass(frozen=True)
class RulesConfig:
    dir: Path
    cache_dir: Path  # compiled Hyperscan databases
    enabled: bool
    scan_timeout: float
    processes: int  # scanner processes per gateway worker; 0 = cores / workers
    worker_memory_mb: int = 0  # address-space limit of each scanner process; 0 = none


@dataclass(frozen=True)
class DkimKeys:
    """Keys an admin keeps outside phigate's own store (``dkim.domains.DOMAIN``)."""

    selector: str
    key: Path
    ed25519_selector: str | None
    ed25519_key: Path | None


@dataclass(frozen=True)
class DkimConfig:
    selector: str  # selector of the key generated on first start
    rotate_grace: float  # how long a replaced selector stays published
    domains: Mapping[str, DkimKeys]  # explicitly configured keys; others live in paths.var


# Rate limits (``ratelimit:``): what is counted, per whom, and what an anomaly score does.
RL_WINDOWS = {"minute": 60.0, "hour": 3600.0, "day": 86400.0}
RL_METRICS = ("messages", "recipients", "phi_messages")
RL_SCOPES = ("user", "sender", "domain", "ip")
RL_ACTIONS = ("alert", "defer", "hold", "lock")


@dataclass(frozen=True)
class Limit:
    """At most ``count`` of ``metric`` per ``window`` for one ``scope`` key (token bucket)."""

    scope: str  # user | sender | domain | ip
    metric: str  # messages | recipients | phi_messages
    window: str  # minute | hour | day
    count: int

    @property
    def seconds(self) -> float:
        return RL_WINDOWS[self.window]


@dataclass(frozen=True)
class Selector:
    """A group member or exemption: ``user:NAME``, ``sender:ADDRESS``, ``sender:@DOMAIN``,
    ``domain:DOMAIN``, ``ip:NETWORK``."""

    kind: str
    value: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


@dataclass(frozen=True)
class LimitGroup:
    name: str
    members: tuple[Selector, ...]  # none: every sender not matched by an earlier group
    limits: tuple[Limit, ...]


@dataclass(frozen=True)
class AnomalyBand:
    score: float
    actions: tuple[str, ...]


@dataclass(frozen=True)
class AnomalyConfig:
    enabled: bool = True
    learning: float = 3 * 86400.0  # history a sender needs before it is scored
    alpha: float = 0.3  # EWMA weight of the newest observation (an hour of a day)
    prior: float = 4.0  # variance added to every baseline (no alarm on 3 mails instead of 1)
    bands: tuple[AnomalyBand, ...] = (
        AnomalyBand(8.0, ("alert",)),
        AnomalyBand(15.0, ("alert", "hold")),
        AnomalyBand(30.0, ("alert", "defer", "lock")),
    )
    hold_for: float = 86400.0
    webhook: str | None = None
    webhook_timeout: float = 5.0


def _l(scope: str, metric: str, **windows: int) -> tuple[Limit, ...]:
    return tuple(Limit(scope, metric, w, n) for w, n in windows.items())


# One sender at hundreds a minute is slowed; an organisation-wide domain, or an Exchange
# connector's address (trusted_ip) that carries every staff member's mail, gets a lot of room.
DEFAULT_LIMIT_GROUPS = (
    LimitGroup("staff", (), (
        *_l("user", "messages", minute=30, hour=300, day=1500),
        *_l("user", "recipients", minute=200, hour=1500, day=5000),
        *_l("user", "phi_messages", hour=100, day=400),
        *_l("sender", "messages", minute=30, hour=300, day=1500),
        *_l("sender", "recipients", minute=200, hour=1500, day=5000),
        *_l("sender", "phi_messages", hour=100, day=400),
        *_l("domain", "messages", minute=3000, hour=50000),
        *_l("ip", "messages", minute=120, hour=2000),
        *_l("ip", "recipients", minute=1000),
    )),
)
DEFAULT_TRUSTED_IP = (*_l("ip", "messages", minute=6000), *_l("ip", "recipients", minute=30000))


@dataclass(frozen=True)
class RateLimitConfig:
    enabled: bool = True
    redis: str | None = None  # redis://HOST:PORT/DB shared by every worker and node
    redis_timeout: float = 0.5
    on_redis_error: str = "open"  # open: accept and alert | closed: 451
    exempt: tuple[Selector, ...] = ()
    trusted_ip: tuple[Limit, ...] = DEFAULT_TRUSTED_IP  # ip limits for trusted_networks
    groups: tuple[LimitGroup, ...] = DEFAULT_LIMIT_GROUPS
    anomaly: AnomalyConfig = AnomalyConfig()
    snapshot_interval: float = 10.0  # in-process state saved under paths.var this often


@dataclass(frozen=True)
class EncryptSign:
    """The organisation's key for signing encrypted mail (optional, each kind on its own)."""

    pgp_key: str | None = None  # fingerprint of a secret key in encrypt.keyring
    pgp_passphrase_file: Path | None = None
    smime_cert: Path | None = None
    smime_key: Path | None = None


@dataclass(frozen=True)
class WkdConfig:
    enabled: bool = False
    cache_dir: Path = Path("var/wkd")
    cache_ttl: float = 86400.0
    negative_ttl: float = 3600.0
    timeout: float = 10.0
    port: int = 443  # tests use another port
    ca_file: Path | None = None  # a private CA (tests); default: the system's


@dataclass(frozen=True)
class EncryptConfig:
    """OpenPGP and S/MIME for the ``encrypt`` action (gateway/encrypt/)."""

    keyring: Path = Path("var/gnupg")  # GnuPG home of recipients' keys
    smime_dir: Path = Path("var/smime")  # recipients' certificates
    protect_subject: bool = True  # outer Subject "...", the real one inside
    smime_gcm: tuple[str, ...] = ()  # addresses or domains whose clients read AES-256-GCM
    notify_sender: bool = True  # tell the sender when a key exists but is expired/revoked
    sign: EncryptSign = EncryptSign()
    wkd: WkdConfig = WkdConfig()
    gpg: str = "gpg"
    openssl: str = "openssl"


@dataclass(frozen=True)
class Paths:
    var: Path

    @property
    def spool(self) -> Path:
        return self.var / "spool"


@dataclass(frozen=True)
class Config:
    source: Path
    hostname: str
    organisation: str
    domains: tuple[str, ...]
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    listen: Listen
    smtp: SmtpLimits
    auth: AuthConfig
    delivery: DeliveryConfig
    dns: DnsConfig
    tls: TlsConfig
    log: LogConfig
    portal: PortalConfig
    metrics: MetricsConfig
    paths: Paths
    workers: int
    rules: RulesConfig
    dkim: DkimConfig = DkimConfig("phigate", 7 * 86400.0, {})
    encrypt: EncryptConfig = EncryptConfig()
    outbound_addresses: tuple[str, ...] = ()  # as receivers see them; `dns check` tests SPF
    ratelimit: RateLimitConfig = RateLimitConfig()
    quarantine: QuarantineConfig = QuarantineConfig()
    raw: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def rules_dir(self) -> Path:
        return self.rules.dir

    def is_trusted(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.trusted_networks)

    def is_own_domain(self, domain: str) -> bool:
        domain = domain.lower().rstrip(".")
        return any(domain == d or domain.endswith("." + d) for d in self.domains)


# --------------------------------------------------------------------------- YAML with lines


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping key, by dotted path."""


def _load_with_lines(text: str, filename: str) -> tuple[Any, dict[str, int]]:
    lines: dict[str, int] = {}
    try:
        node = yaml.compose(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{filename}:{line}: YAML syntax error: {problem}"]) from None
    if node is None:
        return {}, lines

    def walk(n: yaml.Node, path: str) -> None:
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = str(k.value)
                sub = f"{path}.{key}" if path else key
                lines[sub] = k.start_mark.line + 1
                walk(v, sub)
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, f"{path}[{i}]")

    walk(node, "")
    data = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
    return data, lines


def parse_override(item: str) -> tuple[str, Any]:
    """Parse one ``--set dotted.key=YAML`` argument."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError([f"--set {item}: expected KEY=VALUE, e.g. listen.relay=127.0.0.1:2525"])
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        # Not YAML (e.g. "[::1]:2525"): take the text as it is; validation judges it.
        parsed = value.strip()
    return key, parsed


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, str]:
    """Apply ``--set`` overrides in place; return the origin label of each overridden key."""
    origins: dict[str, str] = {}
    for item in overrides:
        key, value = parse_override(item)
        node: dict[str, Any] = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
        origins[key] = f"--set {key}"
    return origins


# --------------------------------------------------------------------------- validation


class _Checker:
    """Walks the raw mapping, converting values and collecting ``file:line`` problems."""

    def __init__(self, filename: str, lines: Mapping[str, int], origins: Mapping[str, str]):
        self.filename = filename
        self.lines = lines
        self.origins = origins
        self.problems: list[str] = []

    def where(self, path: str) -> str:
        for key, label in self.origins.items():
            if path == key or path.startswith(key + ".") or path.startswith(key + "["):
                return label
        probe = path
        while probe:
            if probe in self.lines:
                return f"{self.filename}:{self.lines[probe]}"
            probe = probe.rpartition(".")[0]
        return f"{self.filename}:1"

    def fail(self, path: str, problem: str) -> None:
        self.problems.append(f"{self.where(path)}: {path}: {problem}")

    def section(self, data: Any, path: str, known: Iterable[str]) -> dict[str, Any]:
        if data is None:
            return {}
        if not isinstance(data, dict):
            self.fail(path, f"expected a mapping, got {type(data).__name__}")
            return {}
        allowed = set(known)
        for key in data:
            if key not in allowed:
                sub = f"{path}.{key}" if path else str(key)
                known_keys = ", ".join(sorted(allowed))
                self.fail(sub, f"unknown key '{key}' (expected one of: {known_keys})")
        return data

    def get(
        self, data: Mapping[str, Any], path: str, key: str, conv: Callable[[Any], T], default: T
    ) -> T:
        sub = f"{path}.{key}" if path else key
        if key not in data or (data[key] is None and default is None):
            return default
        try:
            return conv(data[key])
        except (ValueError, TypeError) as exc:
            self.fail(sub, str(exc))
            return default


def _hostport(value: Any) -> HostPort:
    if not isinstance(value, str):
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    text = value.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT with a port 1-65535, got '{value}'")
    return HostPort(host, int(port))


def _hp(host: str, port: int) -> HostPort | None:
    return HostPort(host, port)


def _opt_hostport(value: Any) -> HostPort | None:
    if value in (None, "", False, "off"):
        return None
    return _hostport(value)


def _positive(kind: type[T]) -> Callable[[Any], T]:
    def conv(value: Any) -> T:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        if value <= 0:
            raise ValueError(f"must be greater than 0, got {value}")
        return kind(value)  # type: ignore[call-arg]

    return conv


def _size(value: Any) -> int:
    """Sizes accept plain bytes or a suffix: 35MB, 512KB, 1GiB."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        text = value.strip().upper().replace("IB", "B")
        for suffix, mult in (("KB", 1024), ("MB", 1024**2), ("GB", 1024**3), ("B", 1)):
            if text.endswith(suffix) and text[: -len(suffix)].strip().replace(".", "", 1).isdigit():
                return int(float(text[: -len(suffix)]) * mult)
        if text.isdigit() and int(text) > 0:
            return int(text)
    raise ValueError(f"expected a size such as 35MB or 1048576, got {value!r}")


def _duration(value: Any) -> float:
    """Durations accept seconds or a suffix: 300s, 5m, 1h, 5d."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        for suffix, mult in (("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)):
            num = text[: -len(suffix)]
            if text.endswith(suffix) and num.replace(".", "", 1).isdigit():
                return float(num) * mult
    raise ValueError(f"expected a duration such as 300, 5m, 4h or 5d, got {value!r}")


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value.strip()


def _address(value: Any) -> str:
    text = _string(value)
    local, at, domain = text.rpartition("@")
    if not at or not local or "." not in domain or any(c.isspace() or c in "<>" for c in text):
        raise ValueError(f"expected an address such as secure@example.org, got {value!r}")
    return text


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _domain(value: Any) -> str:
    text = _string(value).lower().rstrip(".")
    labels = text.split(".")
    if any(not lab or len(lab) > 63 for lab in labels) or any(c.isspace() for c in text):
        raise ValueError(f"'{value}' is not a domain name")
    return text


def _network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise ValueError(f"'{value}' is not an IP network (e.g. 10.0.0.0/8 or ::1/128)") from None


def _list(conv: Callable[[Any], T]) -> Callable[[Any], tuple[T, ...]]:
    def inner(value: Any) -> tuple[T, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {type(value).__name__}")
        return tuple(conv(v) for v in value)

    return inner


def _choice(*options: str) -> Callable[[Any], str]:
    def conv(value: Any) -> str:
        if value not in options:
            raise ValueError(f"'{value}' is not one of: {', '.join(options)}")
        return str(value)

    return conv


def _workers(value: Any) -> int:
    if value == "auto":
        return max(1, os.cpu_count() or 1)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 64:
        return value
    raise ValueError(f"expected 'auto' or a number of processes 1-64, got {value!r}")


def _validate(data: Any, chk: _Checker, source: Path, base: Path) -> Config | None:
    top = chk.section(
        data,
        "",
        [
            "hostname", "organisation", "domains", "trusted_networks", "listen", "smtp", "auth",
            "delivery", "dns", "tls", "log", "portal", "metrics", "paths", "workers",
            "rules", "dkim", "ratelimit", "audit", "outbound_addresses", "encrypt",
            "quarantine",
        ],
    )
    paths_d = chk.section(top.get("paths"), "paths", ["var"])
    var = Path(chk.get(paths_d, "paths", "var", _string, "./var"))
    paths = Paths(var=var)

    def conf_path(value: Any) -> Path:
        p = Path(_string(value))
        return p if p.is_absolute() else base / p

    def var_path(value: Any) -> Path:
        p = Path(_string(value))
        return p if p.is_absolute() else var / p

    listen_d = chk.section(top.get("listen"), "listen", ["relay", "submission", "submissions"])
    listen = Listen(
        relay=chk.get(listen_d, "listen", "relay", _opt_hostport, _hp("127.0.0.1", 2525)),
        submission=chk.get(
            listen_d, "listen", "submission", _opt_hostport, _hp("127.0.0.1", 2587)
        ),
        submissions=chk.get(
            listen_d, "listen", "submissions", _opt_hostport, _hp("127.0.0.1", 2465)
        ),
    )
    smtp_d = chk.section(
        top.get("smtp"),
        "smtp",
        ["max_message_size", "max_recipients", "max_header_size", "timeout", "data_timeout",
         "max_line_length"],
    )
    smtp = SmtpLimits(
        max_message_size=chk.get(smtp_d, "smtp", "max_message_size", _size, 35 * 1024 * 1024),
        max_recipients=chk.get(smtp_d, "smtp", "max_recipients", _positive(int), 1000),
        max_header_size=chk.get(smtp_d, "smtp", "max_header_size", _size, 1024 * 1024),
        timeout=chk.get(smtp_d, "smtp", "timeout", _duration, 300.0),
        data_timeout=chk.get(smtp_d, "smtp", "data_timeout", _duration, 600.0),
        max_line_length=chk.get(smtp_d, "smtp", "max_line_length", _positive(int), 998),
    )
    auth_d = chk.section(
        top.get("auth"),
        "auth",
        ["users_file", "max_failures", "failure_window", "lockout", "tarpit",
         "ip_failure_factor"],
    )
    auth = AuthConfig(
        users_file=chk.get(auth_d, "auth", "users_file", conf_path, base / "users.yaml"),
        max_failures=chk.get(auth_d, "auth", "max_failures", _positive(int), 5),
        failure_window=chk.get(auth_d, "auth", "failure_window", _duration, 900.0),
        lockout=chk.get(auth_d, "auth", "lockout", _duration, 900.0),
        tarpit=chk.get(auth_d, "auth", "tarpit", _duration, 1.0),
        ip_failure_factor=chk.get(auth_d, "auth", "ip_failure_factor", _positive(int), 4),
    )
    deliv_d = chk.section(
        top.get("delivery"),
        "delivery",
        ["mode", "smarthost", "transport", "concurrency", "per_destination", "connect_timeout",
         "command_timeout", "idle_connection", "retry", "scan_interval"],
    )
    retry_d = chk.section(
        deliv_d.get("retry"), "delivery.retry", ["first", "max_backoff", "expire", "delay_warning"]
    )
    retry = RetryConfig(
        first=chk.get(retry_d, "delivery.retry", "first", _duration, 300.0),
        max_backoff=chk.get(retry_d, "delivery.retry", "max_backoff", _duration, 4000.0),
        expire=chk.get(retry_d, "delivery.retry", "expire", _duration, 5 * 86400.0),
        delay_warning=chk.get(retry_d, "delivery.retry", "delay_warning", _duration, 4 * 3600.0),
    )
    transport: dict[str, HostPort] = {}
    raw_transport = deliv_d.get("transport") or {}
    if not isinstance(raw_transport, dict):
        chk.fail("delivery.transport", "expected a map of DOMAIN: HOST:PORT")
    else:
        for dom, hp in raw_transport.items():
            sub = f"delivery.transport.{dom}"
            try:
                text = str(dom)
                # ".example.org" routes every subdomain, as in Postfix transport maps
                key = "." + _domain(text[1:]) if text.startswith(".") else _domain(text)
                transport[key] = _hostport(hp)
            except ValueError as exc:
                chk.fail(sub, str(exc))
    mode = chk.get(deliv_d, "delivery", "mode", _choice("mx", "smarthost"), "mx")
    smarthost = chk.get(deliv_d, "delivery", "smarthost", _opt_hostport, None)
    if mode == "smarthost" and smarthost is None:
        chk.fail("delivery.mode", "mode 'smarthost' needs delivery.smarthost (HOST:PORT)")
    delivery = DeliveryConfig(
        mode=mode,
        smarthost=smarthost,
        transport=transport,
        concurrency=chk.get(deliv_d, "delivery", "concurrency", _positive(int), 50),
        per_destination=chk.get(deliv_d, "delivery", "per_destination", _positive(int), 10),
        connect_timeout=chk.get(deliv_d, "delivery", "connect_timeout", _duration, 30.0),
        command_timeout=chk.get(deliv_d, "delivery", "command_timeout", _duration, 300.0),
        idle_connection=chk.get(deliv_d, "delivery", "idle_connection", _duration, 5.0),
        retry=retry,
        scan_interval=chk.get(deliv_d, "delivery", "scan_interval", _duration, 1.0),
    )
    dns_d = chk.section(top.get("dns"), "dns", ["nameservers", "port", "timeout"])
    dns = DnsConfig(
        nameservers=chk.get(dns_d, "dns", "nameservers", _list(_ip_text), ()),
        port=chk.get(dns_d, "dns", "port", _positive(int), 53),
        timeout=chk.get(dns_d, "dns", "timeout", _duration, 5.0),
    )
    tls_d = chk.section(top.get("tls"), "tls", [
        "cert", "key", "policy_file", "ca_file", "mta_sts", "mta_sts_port", "dane",
        "fallback_after", "capability_ttl", "capability_redis"])
    policy_file = chk.get(tls_d, "tls", "policy_file", conf_path, base / "tls_policy.yaml")
    tls = TlsConfig(
        cert=chk.get(tls_d, "tls", "cert", conf_path, None),
        key=chk.get(tls_d, "tls", "key", conf_path, None),
        policy_file=policy_file,
        policies=_tls_policies(policy_file, chk) if policy_file is not None else {},
        ca_file=chk.get(tls_d, "tls", "ca_file", conf_path, None),
        mta_sts=chk.get(tls_d, "tls", "mta_sts", _bool, True),
        mta_sts_port=chk.get(tls_d, "tls", "mta_sts_port", _port, 443),
        dane=chk.get(tls_d, "tls", "dane", _bool, True),
        fallback_after=chk.get(tls_d, "tls", "fallback_after", _duration_or_zero, 0.0),
        capability_ttl=chk.get(tls_d, "tls", "capability_ttl", _duration, 3600.0),
        capability_redis=chk.get(tls_d, "tls", "capability_redis", _redis_url, None),
    )
    if (tls.cert is None) != (tls.key is None):
        chk.fail("tls", "set both tls.cert and tls.key, or neither (one is generated)")
    log_d = chk.section(top.get("log"), "log",
                        ["audit_file", "stdout", "hmac_key_file", "rotate_size"])
    log = LogConfig(
        audit_file=chk.get(log_d, "log", "audit_file", var_path, var / "log" / "audit.jsonl"),
        stdout=chk.get(log_d, "log", "stdout", _bool, True),
        hmac_key_file=chk.get(log_d, "log", "hmac_key_file", var_path, var / "audit.key"),
        rotate_size=0 if log_d.get("rotate_size") in (0, "0") else
        chk.get(log_d, "log", "rotate_size", _size, 0),
    )
    hostname = chk.get(top, "", "hostname", _domain, _default_hostname())
    organisation = chk.get(top, "", "organisation", _string, "phigate")
    domains: tuple[str, ...] = chk.get(top, "", "domains", _list(_domain), ())
    portal_d = chk.section(top.get("portal"), "portal", [
        "enabled", "listen", "base_url", "store", "submit", "from_address", "subject",
        "anti_phishing_phrase", "templates", "expire", "code_digits", "code_ttl",
        "code_resend", "max_failures", "lockout", "session_idle", "notify_sender_on_open"])
    portal_listen = chk.get(portal_d, "portal", "listen", _hostport, HostPort("127.0.0.1", 8080))

    def store_url(value: Any) -> str:
        text = _string(value)
        return text if text.startswith(("postgresql://", "postgres://")) else str(var_path(text))

    def code_digits(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 6 <= value <= 8:
            raise ValueError(f"expected 6, 7 or 8 digits, got {value!r}")
        return value

    pc = functools.partial(chk.get, portal_d, "portal")
    first_domain = domains[0] if domains else hostname
    portal = PortalConfig(
        enabled=pc("enabled", _bool, True),
        listen=portal_listen,
        base_url=pc("base_url", _string, f"http://{portal_listen}").rstrip("/"),
        store=pc("store", store_url, str(var / "portal.db")),
        submit=pc("submit", _hostport, listen.relay or HostPort("127.0.0.1", 2525)),
        from_address=pc("from_address", _address, f"secure-messages@{first_domain}"),
        subject=pc("subject", _string, f"Secure message from {organisation}"),
        anti_phishing_phrase=pc("anti_phishing_phrase", str, ""),
        templates=pc("templates", conf_path, base / "templates"),
        expire=pc("expire", _duration, 30 * 86400.0),
        code_digits=pc("code_digits", code_digits, 6),
        code_ttl=pc("code_ttl", _duration, 600.0),
        code_resend=pc("code_resend", _duration, 60.0),
        max_failures=pc("max_failures", _positive(int), 5),
        lockout=pc("lockout", _duration, 1800.0),
        session_idle=pc("session_idle", _duration, 900.0),
        notify_sender_on_open=pc("notify_sender_on_open", _bool, False),
    )
    metrics_d = chk.section(top.get("metrics"), "metrics", ["listen"])
    metrics = MetricsConfig(
        listen=chk.get(metrics_d, "metrics", "listen", _opt_hostport, _hp("127.0.0.1", 9325))
    )
    quarantine_d = chk.section(top.get("quarantine"), "quarantine", ["notify"])
    quarantine = QuarantineConfig(
        notify=chk.get(quarantine_d, "quarantine", "notify", _address, None))
    rules_d = chk.section(top.get("rules"), "rules",
                          ["dir", "cache_dir", "enabled", "scan_timeout", "processes",
                           "worker_memory_mb"])
    rules = RulesConfig(
        dir=chk.get(rules_d, "rules", "dir", conf_path, base / "rules"),
        cache_dir=chk.get(rules_d, "rules", "cache_dir", var_path, var / "cache"),
        enabled=chk.get(rules_d, "rules", "enabled", _bool, True),
        scan_timeout=chk.get(rules_d, "rules", "scan_timeout", _duration, 60.0),
        processes=chk.get(rules_d, "rules", "processes", _nonneg_int, 0),
        worker_memory_mb=chk.get(rules_d, "rules", "worker_memory_mb", _nonneg_int, 0),
    )
    dkim = _dkim(top.get("dkim"), chk, conf_path)
    encrypt = _encrypt(top.get("encrypt"), chk, var, var_path, conf_path)
    ratelimit = _ratelimit(top.get("ratelimit"), chk)
    if "capability_redis" not in (tls_d or {}) and ratelimit.redis:
        tls = replace(tls, capability_redis=ratelimit.redis)  # the nodes' one shared Redis
    cfg = Config(
        source=source,
        hostname=hostname,
        organisation=organisation,
        domains=domains,
        trusted_networks=chk.get(
            top, "", "trusted_networks", _list(_network),
            (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
        ),
        listen=listen,
        smtp=smtp,
        auth=auth,
        delivery=delivery,
        dns=dns,
        tls=tls,
        log=log,
        portal=portal,
        metrics=metrics,
        paths=paths,
        workers=chk.get(top, "", "workers", _workers, 1),
        rules=rules,
        dkim=dkim,
        encrypt=encrypt,
        outbound_addresses=chk.get(top, "", "outbound_addresses", _list(_ip_text), ()),
        ratelimit=ratelimit,
        quarantine=quarantine,
        raw=top,
    )
    for name in dkim.domains:
        if not cfg.is_own_domain(name):
            chk.fail(f"dkim.domains.{name}", f"'{name}' is not one of domains (or a subdomain)")
    return None if chk.problems else cfg


def _encrypt(data: Any, chk: _Checker, var: Path, var_path: Callable[[Any], Path],
             conf_path: Callable[[Any], Path]) -> EncryptConfig:
    d = chk.section(data, "encrypt", ["keyring", "smime_dir", "protect_subject", "smime_gcm",
                                      "notify_sender", "sign", "wkd", "gpg", "openssl"])
    s = chk.section(d.get("sign"), "encrypt.sign",
                    ["pgp_key", "pgp_passphrase_file", "smime_cert", "smime_key"])
    w = chk.section(d.get("wkd"), "encrypt.wkd", ["enabled", "cache_dir", "cache_ttl",
                                                  "negative_ttl", "timeout", "port", "ca_file"])

    def fingerprint(value: Any) -> str:
        text = _string(value).replace(" ", "").upper()
        if len(text) not in (40, 64) or any(c not in "0123456789ABCDEF" for c in text):
            raise ValueError(f"expected an OpenPGP fingerprint (40 hex digits), got {value!r}")
        return text

    def gcm_entry(value: Any) -> str:
        text = _string(value).lower()
        return _address(text) if "@" in text.lstrip("@") else _domain(text.lstrip("@"))

    sign = EncryptSign(
        pgp_key=chk.get(s, "encrypt.sign", "pgp_key", fingerprint, None),
        pgp_passphrase_file=chk.get(s, "encrypt.sign", "pgp_passphrase_file", conf_path, None),
        smime_cert=chk.get(s, "encrypt.sign", "smime_cert", conf_path, None),
        smime_key=chk.get(s, "encrypt.sign", "smime_key", conf_path, None),
    )
    if (sign.smime_cert is None) != (sign.smime_key is None):
        chk.fail("encrypt.sign", "set both smime_cert and smime_key, or neither")
    wkd = WkdConfig(
        enabled=chk.get(w, "encrypt.wkd", "enabled", _bool, False),
        cache_dir=chk.get(w, "encrypt.wkd", "cache_dir", var_path, var / "wkd"),
        cache_ttl=chk.get(w, "encrypt.wkd", "cache_ttl", _duration, 86400.0),
        negative_ttl=chk.get(w, "encrypt.wkd", "negative_ttl", _duration, 3600.0),
        timeout=chk.get(w, "encrypt.wkd", "timeout", _duration, 10.0),
        port=chk.get(w, "encrypt.wkd", "port", _positive(int), 443),
        ca_file=chk.get(w, "encrypt.wkd", "ca_file", conf_path, None),
    )
    gcm: tuple[str, ...] = chk.get(d, "encrypt", "smime_gcm", _list(gcm_entry), ())
    return EncryptConfig(
        keyring=chk.get(d, "encrypt", "keyring", var_path, var / "gnupg"),
        smime_dir=chk.get(d, "encrypt", "smime_dir", var_path, var / "smime"),
        protect_subject=chk.get(d, "encrypt", "protect_subject", _bool, True),
        smime_gcm=gcm,
        notify_sender=chk.get(d, "encrypt", "notify_sender", _bool, True),
        sign=sign,
        wkd=wkd,
        gpg=chk.get(d, "encrypt", "gpg", _string, "gpg"),
        openssl=chk.get(d, "encrypt", "openssl", _string, "openssl"),
    )


def _selector(value: Any) -> str:
    text = _string(value).lower()
    if not all(lab and len(lab) <= 63 and lab.replace("-", "").replace("_", "").isalnum()
               and lab.isascii() for lab in text.split(".")):
        raise ValueError(f"'{value}' is not a DKIM selector (letters, digits, - and _)")
    return text


def _dkim(data: Any, chk: _Checker, conf_path: Callable[[Any], Path]) -> DkimConfig:
    dkim_d = chk.section(data, "dkim", ["selector", "rotate_grace", "domains"])
    domains: dict[str, DkimKeys] = {}
    raw_domains = dkim_d.get("domains") or {}
    if not isinstance(raw_domains, dict):
        chk.fail("dkim.domains", "expected a map of DOMAIN: {selector, key}")
        raw_domains = {}
    for dom, entry in raw_domains.items():
        path = f"dkim.domains.{dom}"
        d = chk.section(entry, path, ["selector", "key", "ed25519_selector", "ed25519_key"])
        selector = chk.get(d, path, "selector", _selector, "")
        key = chk.get(d, path, "key", conf_path, None)
        ed_sel = chk.get(d, path, "ed25519_selector", _selector, None)
        ed_key = chk.get(d, path, "ed25519_key", conf_path, None)
        if not selector or key is None:
            chk.fail(path, "needs both selector and key (the private key file)")
        if (ed_sel is None) != (ed_key is None):
            chk.fail(path, "set both ed25519_selector and ed25519_key, or neither")
        if ed_sel is not None and ed_sel == selector:
            chk.fail(f"{path}.ed25519_selector", "must differ from the RSA selector")
        try:
            name = _domain(str(dom))
        except ValueError as exc:
            chk.fail(path, str(exc))
            continue
        if key is not None:
            domains[name] = DkimKeys(selector, key, ed_sel, ed_key)
    return DkimConfig(
        selector=chk.get(dkim_d, "dkim", "selector", _selector, "phigate"),
        rotate_grace=chk.get(dkim_d, "dkim", "rotate_grace", _duration, 7 * 86400.0),
        domains=domains,
    )


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError(f"expected a port 1-65535, got {value!r}")
    return value


def _duration_or_zero(value: Any) -> float:
    return 0.0 if value in (0, "0", "0s") else _duration(value)


def _tls_policies(path: Path, outer: _Checker) -> dict[str, DestinationTls]:
    """conf/tls_policy.yaml: ``policies: {DOMAIN: {level: ..., match: [...]}}``; ``.DOMAIN``
    covers subdomains. A missing file is no policy (every destination uses the default)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        outer.problems.append(f"{path}:1: cannot read: {exc.strerror}")
        return {}
    try:
        data, lines = _load_with_lines(text, str(path))
    except ConfigError as err:
        outer.problems.extend(err.problems)
        return {}
    chk = _Checker(str(path), lines, {})
    top = chk.section(data, "", ["policies"])
    raw = top.get("policies") or {}
    out: dict[str, DestinationTls] = {}
    if not isinstance(raw, dict):
        chk.fail("policies", "expected a mapping of DOMAIN: {level: ...}")
        raw = {}
    for domain, entry in raw.items():
        where = f"policies.{domain}"
        if isinstance(entry, str):
            entry = {"level": entry}
        d = chk.section(entry, where, ["level", "match"])
        if "level" not in d:
            chk.fail(where, f"set a level (one of: {', '.join(TLS_LEVELS)})")
            continue
        level = chk.get(d, where, "level", _choice(*TLS_LEVELS), "")
        if not level:
            continue
        match: tuple[str, ...] = chk.get(d, where, "match", _list(_string), ())
        key = str(domain).lower().rstrip(".")
        out[key] = DestinationTls(level, tuple(m.lower() for m in match), chk.where(where))
    outer.problems.extend(chk.problems)
    return out


def _rl_selector(value: Any) -> Selector:
    text = _string(value)
    kind, sep, rest = text.partition(":")
    rest = rest.strip()
    if not sep or kind not in ("user", "sender", "domain", "ip") or not rest:
        raise ValueError(f"'{value}' is not a selector (user:NAME, sender:ADDRESS, "
                         "sender:@DOMAIN, domain:DOMAIN or ip:NETWORK)")
    if kind == "ip":
        return Selector("ip", rest, _network(rest))
    if kind == "domain" or (kind == "sender" and rest.startswith("@")):
        return Selector(kind, ("@" if kind == "sender" else "") + _domain(rest.lstrip("@")))
    return Selector(kind, rest.lower() if kind == "sender" else rest)


def _rl_limits(data: Any, chk: _Checker, path: str, scopes: Iterable[str]) -> tuple[Limit, ...]:
    """``SCOPE: {METRIC: {WINDOW: COUNT}}`` -> limits."""
    out: list[Limit] = []
    for scope, metrics in chk.section(data, path, scopes).items():
        out += _rl_metrics(metrics, chk, f"{path}.{scope}", str(scope))
    return tuple(out)


def _rl_metrics(data: Any, chk: _Checker, path: str, scope: str) -> tuple[Limit, ...]:
    """``METRIC: {WINDOW: COUNT}`` -> limits of one scope."""
    out: list[Limit] = []
    for metric, windows in chk.section(data, path, RL_METRICS).items():
        mpath = f"{path}.{metric}"
        for window in chk.section(windows, mpath, RL_WINDOWS):
            count = chk.get(windows, mpath, window, _positive(int), 0)
            if count:
                out.append(Limit(scope, str(metric), str(window), count))
    return tuple(out)


def _redis_url(value: Any) -> str | None:
    if value in (None, "", False):
        return None
    text = _string(value)
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"expected redis://HOST:PORT/DB, got {value!r}")
    return text


def _ratelimit(data: Any, chk: _Checker) -> RateLimitConfig:
    d = chk.section(data, "ratelimit", [
        "enabled", "redis", "redis_timeout", "on_redis_error", "exempt", "trusted_ip",
        "groups", "anomaly", "snapshot_interval"])
    base = RateLimitConfig()

    groups: list[LimitGroup] = []
    raw_groups = d.get("groups")
    if raw_groups is not None and not isinstance(raw_groups, dict):
        chk.fail("ratelimit.groups", "expected a map of GROUP: {members, limits}")
    for name, entry in (raw_groups or {}).items():
        gpath = f"ratelimit.groups.{name}"
        g = chk.section(entry, gpath, ["members", "limits"])
        groups.append(LimitGroup(str(name), chk.get(g, gpath, "members", _list(_rl_selector), ()),
                                 _rl_limits(g.get("limits"), chk, f"{gpath}.limits", RL_SCOPES)))
    for i, grp in enumerate(groups[:-1]):
        if not grp.members:
            later = ", ".join(x.name for x in groups[i + 1:])
            chk.fail(f"ratelimit.groups.{grp.name}", "a group without members matches every "
                     f"sender, so the groups after it ({later}) would never apply: put it last")
    an = chk.section(d.get("anomaly"), "ratelimit.anomaly", [
        "enabled", "learning", "alpha", "prior", "bands", "hold_for", "webhook",
        "webhook_timeout"])
    ab = base.anomaly

    def fraction(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise ValueError(f"expected a number in (0, 1], got {value!r}")
        return float(value)

    def url(value: Any) -> str | None:
        if value in (None, ""):
            return None
        text = _string(value)
        if not text.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
        return text

    bands: list[AnomalyBand] = []
    raw_bands = an.get("bands")
    if raw_bands is not None and not isinstance(raw_bands, list):
        chk.fail("ratelimit.anomaly.bands", "expected a list of {score, actions}")
        raw_bands = None
    for i, entry in enumerate(raw_bands or []):
        bpath = f"ratelimit.anomaly.bands[{i}]"
        b = chk.section(entry, bpath, ["score", "actions"])
        score = chk.get(b, bpath, "score", _positive(float), 0.0)
        no_actions: tuple[str, ...] = ()
        actions = chk.get(b, bpath, "actions", _list(_choice(*RL_ACTIONS)), no_actions)
        if not score or not actions:
            chk.fail(bpath, f"needs score (> 0) and actions (any of: {', '.join(RL_ACTIONS)})")
        bands.append(AnomalyBand(score, actions))
    anomaly = AnomalyConfig(
        enabled=chk.get(an, "ratelimit.anomaly", "enabled", _bool, ab.enabled),
        learning=chk.get(an, "ratelimit.anomaly", "learning", _duration, ab.learning),
        alpha=chk.get(an, "ratelimit.anomaly", "alpha", fraction, ab.alpha),
        prior=chk.get(an, "ratelimit.anomaly", "prior", _positive(float), ab.prior),
        bands=tuple(sorted(bands, key=lambda b: b.score)) if raw_bands is not None
        else ab.bands,
        hold_for=chk.get(an, "ratelimit.anomaly", "hold_for", _duration, ab.hold_for),
        webhook=chk.get(an, "ratelimit.anomaly", "webhook", url, None),
        webhook_timeout=chk.get(an, "ratelimit.anomaly", "webhook_timeout", _duration,
                                ab.webhook_timeout),
    )
    return RateLimitConfig(
        enabled=chk.get(d, "ratelimit", "enabled", _bool, base.enabled),
        redis=chk.get(d, "ratelimit", "redis", _redis_url, None),
        redis_timeout=chk.get(d, "ratelimit", "redis_timeout", _duration, base.redis_timeout),
        on_redis_error=chk.get(d, "ratelimit", "on_redis_error", _choice("open", "closed"),
                               base.on_redis_error),
        exempt=chk.get(d, "ratelimit", "exempt", _list(_rl_selector), ()),
        trusted_ip=_rl_metrics(d["trusted_ip"], chk, "ratelimit.trusted_ip", "ip")
        if d.get("trusted_ip") is not None else base.trusted_ip,
        groups=tuple(groups) if raw_groups is not None else base.groups,
        anomaly=anomaly,
        snapshot_interval=chk.get(d, "ratelimit", "snapshot_interval", _duration,
                                  base.snapshot_interval),
    )


def _nonneg_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number >= 0, got {value!r}")
    return value


def _ip_text(value: Any) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise ValueError(f"'{value}' is not an IP address") from None


def _default_hostname() -> str:
    import socket

    name = socket.getfqdn()
    return name.lower() if "." in name else "phigate.localdomain"


def load_config(path: Path | str | None = None, overrides: Iterable[str] = ()) -> Config:
    """Load, override and validate. Raises ConfigError listing every problem found."""
    source = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{source}:1: configuration file not found"]) from None
    except OSError as exc:
        raise ConfigError([f"{source}:1: cannot read: {exc.strerror}"]) from None
    data, lines = _load_with_lines(text, str(source))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:1: the file must be a YAML mapping of settings"])
    origins = apply_overrides(data, overrides)
    chk = _Checker(str(source), lines, origins)
    cfg = _validate(data, chk, source, source.parent)
    if cfg is None:
        raise ConfigError(chk.problems)
    return cfg
