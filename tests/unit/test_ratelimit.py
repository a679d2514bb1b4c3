"""Rate limits and anomaly actions with an injected clock: bursts refused with 451 4.7.1 at the
right stage and allowed again after the window, senders behind one trusted relay independent,
exemptions logged, a week of normal traffic learned and then a surge flagged, account lock and
unlock, the alert webhook on a local HTTP server, the in-process snapshot, config errors."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.anomaly import Baseline, HourStats, assess, fold
from gateway.audit import AuditLog
from gateway.config import AnomalyConfig, Config, ConfigError, load_config
from gateway.model import Finding, RecipientVerdict, Verdict
from gateway.ratelimit import MemoryBackend, RateLimiter, normalize_sender
from gateway.ratelimitcli import main as rl_main
from gateway.users import UserDB

ROOT = Path(__file__).resolve().parents[2]
MONDAY = 1_772_409_600.0  # 2026-03-02 00:00 UTC
STAFF = ('ratelimit.groups={"staff": {"limits": {'
         '"sender": {"messages": {"minute": 5, "hour": 1000}, "recipients": {"minute": 8},'
         '           "phi_messages": {"hour": 2}},'
         '"ip": {"messages": {"minute": 20}}}}}')


class Clock:
    def __init__(self, t: float = MONDAY) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_config(tmp_path: Path, *sets: str) -> Config:
    return load_config(ROOT / "conf" / "gateway.yaml", [
        f"paths.var={tmp_path / 'var'}", f"auth.users_file={tmp_path / 'users.yaml'}",
        "domains=[example.org]", "hostname=phigate.test", "workers=1", "ratelimit.enabled=true",
        *sets])


def events(tmp_path: Path, action: str | None = None) -> list[dict[str, Any]]:
    path = tmp_path / "audit.jsonl"
    if not path.exists():
        return []
    out = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [e for e in out if action is None or e["event.action"] == action]


@pytest.fixture
def limiter_factory(tmp_path: Path) -> Callable[..., tuple[RateLimiter, Clock]]:
    def make(*sets: str, clock: Clock | None = None) -> tuple[RateLimiter, Clock]:
        clock = clock or Clock()
        cfg = make_config(tmp_path, *sets)
        audit = AuditLog(tmp_path / "audit.jsonl", stdout=False)
        return RateLimiter(cfg, audit, clock), clock

    return make


def verdict(rcpts: list[str], findings: int = 0) -> Verdict:
    return Verdict(tuple(RecipientVerdict(r, "deliver", "default") for r in rcpts),
                   phi=findings > 0,
                   findings=(Finding("us_ssn", "ssn", findings, 1.0),) if findings else ())


async def send(rl: RateLimiter, sender: str, rcpts: list[str], ip: str = "127.0.0.1",
               user: str | None = None, findings: int = 0) -> tuple[str, str | None, bool]:
    """One transaction: (stage, reply or None, held)."""
    adm, reply = await rl.on_mail(user, sender, ip, {"source.ip": ip})
    if reply:
        return "mail", reply, False
    for r in rcpts:
        reply = await rl.on_rcpt(adm, r)
        if reply:
            return "rcpt", reply, False
    reply, held = await rl.on_message(adm, rcpts, verdict(rcpts, findings),
                                      {"email.local_id": "Q1"})
    return "data", reply, held


def test_sender_normalized() -> None:
    assert normalize_sender("Alice+Lab@Example.ORG") == "alice@example.org"
    assert normalize_sender("alice@example.org") == "alice@example.org"
    assert normalize_sender("+x@example.org") == "+x@example.org"


async def test_burst_deferred_at_mail_then_allowed_after_window(
        limiter_factory: Callable[..., tuple[RateLimiter, Clock]], tmp_path: Path) -> None:
    rl, clock = limiter_factory(STAFF)
    for i in range(5):  # plus-addressing and case count as one sender
        sender = ["alice@example.org", "Alice+a@example.org", "ALICE@EXAMPLE.ORG"][i % 3]
        assert (await send(rl, sender, ["bob@dest.test"]))[1] is None
    stage, reply, _ = await send(rl, "alice+z@example.org", ["bob@dest.test"])
    assert stage == "mail" and reply is not None
    assert reply.startswith("451 4.7.1 Too many messages from <alice@example.org>")
    assert "limit 5 per minute" in reply
    # another sender behind the same (trusted) relay is not affected
    assert (await send(rl, "carol@example.org", ["bob@dest.test"]))[1] is None
    clock.t += 12  # one token back (5 per 60 s)
    assert (await send(rl, "alice@example.org", ["bob@dest.test"]))[1] is None
    assert (await send(rl, "alice@example.org", ["bob@dest.test"]))[1] is not None
    clock.t += 60  # a whole window: the burst is allowed again
    for _ in range(5):
        assert (await send(rl, "alice@example.org", ["bob@dest.test"]))[1] is None
    ev = events(tmp_path, "ratelimit.deferred")
    assert ev and ev[0]["ratelimit.scope"] == "sender" and ev[0]["smtp.stage"] == "mail"
    assert ev[0]["ratelimit.limit"] == 5 and ev[0]["ratelimit.window"] == "minute"


async def test_recipients_deferred_at_rcpt(
        limiter_factory: Callable[..., tuple[RateLimiter, Clock]]) -> None:
    rl, _ = limiter_factory(STAFF)
    stage, reply, _ = await send(rl, "alice@example.org", [f"r{i}@dest.test" for i in range(10)])
    assert stage == "rcpt" and reply is not None
    assert reply.startswith("451 4.7.1 Too many recipients from <alice@example.org>")


async def test_phi_messages_deferred_at_end_of_data(
        limiter_factory: Callable[..., tuple[RateLimiter, Clock]]) -> None:
    rl, clock = limiter_factory(STAFF)
    for _ in range(2):
        assert (await send(rl, "alice@example.org", ["bob@dest.test"], findings=1))[1] is None
        clock.t += 30
    assert (await send(rl, "alice@example.org", ["bob@dest.test"]))[1] is None  # no PHI
    stage, reply, _ = await send(rl, "alice@example.org", ["bob@dest.test"], findings=1)
    assert stage == "data" and reply is not None
    assert "Too many messages with health information" in reply
    assert "limit 2 per hour" in reply


async def test_untrusted_ip_limited_trusted_relay_is_not(
        limiter_factory: Callable[..., tuple[RateLimiter, Clock]]) -> None:
    rl, _ = limiter_factory(STAFF, "trusted_networks=[10.0.0.0/24]")
    # 30 staff members behind the Exchange connector, 2 messages each, within a minute
    for i in range(30):
        for _ in range(2):
            assert (await send(rl, f"staff{i}@example.org", ["x@dest.test"],
                               ip="10.0.0.5"))[1] is None
    # the same from an untrusted address: its per-IP limit (20 a minute) applies
    replies = [(await send(rl, f"user{i}@example.org", ["x@dest.test"], ip="192.0.2.9",
                           user=f"user{i}"))[1] for i in range(25)]
    assert replies[19] is None and replies[20] is not None
    assert "from address 192.0.2.9" in (replies[20] or "")


async def test_exemption_is_logged_and_not_counted(
        limiter_factory: Callable[..., tuple[RateLimiter, Clock]], tmp_path: Path) -> None:
    rl, _ = limiter_factory(STAFF, 'ratelimit.exempt=["sender:alerts@example.org"]')
    for _ in range(20):
        assert (await send(rl, "Alerts+x@example.org", ["ops@dest.test"]))[1] is None
    ev = events(tmp_path, "ratelimit.exempt")
    assert len(ev) == 20 and ev[0]["ratelimit.selector"] == "sender:alerts@example.org"


async def test_groups_give_their_own_limits(
        limiter_factory: Callable[..., tuple[RateLimiter, Clock]]) -> None:
    groups = ('ratelimit.groups={"billing-run": {"members": ["sender:@billing.example.org"],'
              ' "limits": {"sender": {"messages": {"minute": 100}}}},'
              ' "staff": {"limits": {"sender": {"messages": {"minute": 2}}}}}')
    rl, _ = limiter_factory(groups)
    for _ in range(50):
        assert (await send(rl, "run@billing.example.org", ["p@dest.test"]))[1] is None
    assert (await send(rl, "a@example.org", ["p@dest.test"]))[1] is None
    assert (await send(rl, "a@example.org", ["p@dest.test"]))[1] is None
    assert (await send(rl, "a@example.org", ["p@dest.test"]))[1] is not None


# --------------------------------------------------------------------------- anomaly

NO_LIMITS = ('ratelimit.groups={"staff": {"limits": {"sender": {"messages": {"day": 100000}}}}}')


async def normal_week(rl: RateLimiter, clock: Clock, user: str | None = None) -> None:
    """About 20 messages a working day, 09-17 UTC, to colleagues and two partners, 0-2 PHI
    findings each (synthetic pattern)."""
    rnd = random.Random(7)
    for day in range(7):
        for hour in range(9, 17):
            for k in range(rnd.choice([1, 2, 3, 3])):
                clock.t = MONDAY + day * 86400 + hour * 3600 + k * 600 + 60
                rcpt = rnd.choice(["colleague@example.org", "lab@partner-lab.test",
                                   "billing@payer.test", "nurse@example.org"])
                _, reply, held = await send(rl, "alice@example.org", [rcpt], user=user,
                                                findings=rnd.choice([0, 0, 1, 2]))
                assert reply is None and not held, (day, hour, reply)


async def test_week_learned_then_surge_alerts_holds_defers_and_locks(
        limiter_factory: Callable[..., tuple[RateLimiter, Clock]], tmp_path: Path) -> None:
    db = UserDB.load(tmp_path / "users.yaml")
    db.set_user("alice", password="synthetic-pass-1", senders=["alice@example.org"])
    db.save()
    rl, clock = limiter_factory(NO_LIMITS)
    await normal_week(rl, clock, user="alice")
    assert not events(tmp_path, "ratelimit.alert")
    base = await rl.backend.baseline("alice@example.org")
    assert base is not None and base.learned(int(clock.t // 3600), rl.cfg.anomaly)
    assert 0.5 < base.hod[10] < 4 and base.hod[3] < 0.1
    # day 8, 10:00: 400 messages to new external domains, one every 9 seconds
    first: dict[str, int] = {}
    for i in range(400):
        clock.t = MONDAY + 7 * 86400 + 10 * 3600 + i * 9
        stage, reply, held = await send(rl, "alice@example.org", [f"x@new{i}.test"],
                                        user="alice")
        if held:
            first.setdefault("hold", i)
        if reply is not None:
            first.setdefault(stage, i)
            assert reply.startswith("451 4.7.1")
            break
    alerts = events(tmp_path, "ratelimit.alert")
    assert alerts and alerts[0]["event.reason"] == "anomaly"
    assert alerts[0]["anomaly.score"] >= 8
    assert "features" not in alerts[0] and "anomaly.features" in alerts[0]
    assert first["hold"] < first["data"] < 100, first  # a 20-a-day account: stopped early
    assert events(tmp_path, "ratelimit.held")
    assert UserDB.load(tmp_path / "users.yaml").users["alice"].locked
    assert events(tmp_path, "ratelimit.locked")[0]["user.name"] == "alice"
    # the locked account's next transaction is refused at MAIL
    stage, reply, _ = await send(rl, "alice@example.org", ["x@dest.test"], user="alice")
    assert stage == "mail" and "locked" in (reply or "")
    # one alert per band and hour, not one per message
    assert len(alerts) <= len(rl.cfg.anomaly.bands)
    # unlock through the CLI: AUTH and MAIL work again, the sender's hold is lifted
    args = ["--config", str(ROOT / "conf" / "gateway.yaml"),
            "--set", f"auth.users_file={tmp_path / 'users.yaml'}",
            "--set", f"paths.var={tmp_path / 'var'}"]
    assert rl_main(["user", "unlock", "alice", *args]) == 0
    assert not UserDB.load(tmp_path / "users.yaml").users["alice"].locked
    assert rl_main(["user", "unlock", "nobody", *args]) == 1
    clock.t += 3600
    stage, reply, _ = await send(rl, "alice@example.org", ["colleague@example.org"],
                                 user="alice")
    assert reply is None, reply


async def test_phi_spike_in_one_message_is_flagged(
        limiter_factory: Callable[..., tuple[RateLimiter, Clock]], tmp_path: Path) -> None:
    rl, clock = limiter_factory(NO_LIMITS)
    await normal_week(rl, clock)
    clock.t = MONDAY + 7 * 86400 + 11 * 3600
    _, reply, held = await send(rl, "alice@example.org", ["lab@partner-lab.test"], findings=60)
    assert held and reply is None
    alert = events(tmp_path, "ratelimit.alert")[-1]
    assert alert["anomaly.features"]["phi_findings"] == 60
    assert alert["anomaly.features"]["score_phi"] >= 15


def test_fold_learns_hour_of_day_and_decays_silence() -> None:
    cfg = AnomalyConfig()
    b = Baseline(0, 0)
    hours = {d * 24 + 10: HourStats(5, 1, 0.0, 0.0) for d in range(7)}
    b = fold(b, hours, 7 * 24, cfg)
    assert b.hod[10] > 4 and b.hod[3] == 0 and b.through == 7 * 24
    at_ten = assess(b, HourStats(5, 1), 7 * 24 + 10, 0, cfg)
    at_three = assess(b, HourStats(5, 1), 7 * 24 + 3, 0, cfg)
    assert at_ten.score < 1 < at_three.score  # the same mail at 03:00 is more surprising
    later = fold(b, {}, 7 * 24 + 60 * 24, cfg)  # two silent months
    assert later.hod[10] < 0.01


# --------------------------------------------------------------------------- webhook


async def test_webhook_receives_summary_without_phi(
        limiter_factory: Callable[..., tuple[RateLimiter, Clock]], tmp_path: Path) -> None:
    got: list[dict[str, Any]] = []
    arrived = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.json())
        arrived.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        rl, clock = limiter_factory(NO_LIMITS,
                                    f"ratelimit.anomaly.webhook=http://127.0.0.1:{port}/hook")
        await normal_week(rl, clock)
        clock.t = MONDAY + 7 * 86400 + 10 * 3600
        patient = "jane.doe.patient@gmail.test"
        for i in range(40):
            clock.t += 9
            await send(rl, "alice@example.org", [patient if i == 0 else f"p@n{i}.test"])
        await asyncio.wait_for(arrived.wait(), 10)
        await rl.close()
    finally:
        await runner.cleanup()
    body = got[0]
    assert body["event"] == "ratelimit.alert" and body["sender"] == "alice@example.org"
    assert body["score"] >= 8 and "alert" in body["actions"]
    assert set(body) == {"event", "time", "gateway", "sender", "user", "client_ip", "group",
                         "score", "band", "actions", "features"}
    assert all(isinstance(v, int | float) for v in body["features"].values())
    text = json.dumps(got)
    assert patient not in text and "n1.test" not in text and "@dest" not in text


# --------------------------------------------------------------------------- state, config


async def test_snapshot_restores_counters_and_baselines(
        limiter_factory: Callable[..., tuple[RateLimiter, Clock]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    rl, clock = limiter_factory(STAFF, clock=Clock(time.time()))  # the CLI reads real time
    for _ in range(5):
        assert (await send(rl, "alice@example.org", ["b@dest.test"]))[1] is None
    await rl.close()
    rl2, _ = limiter_factory(STAFF, clock=clock)
    await rl2.start()
    assert isinstance(rl2.backend, MemoryBackend)
    assert (await send(rl2, "alice@example.org", ["b@dest.test"]))[1] is not None
    await rl2.close()
    argv = ["limits", "show", "alice@example.org", "--json", "--config",
            str(ROOT / "conf" / "gateway.yaml"), "--set", f"paths.var={tmp_path / 'var'}",
            "--set", STAFF]
    assert await asyncio.to_thread(rl_main, argv) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["sender"] == "alice@example.org" and shown["state"] == "worker 0"
    used = {(x["scope"], x["metric"], x["window"]): x["used"] for x in shown["limits"]}
    assert used[("sender", "messages", "minute")] == pytest.approx(5, abs=0.5)


def test_config_errors_have_file_and_line(tmp_path: Path) -> None:
    conf = tmp_path / "gateway.yaml"
    conf.write_text(
        "ratelimit:\n"
        "  on_redis_error: maybe\n"
        "  groups:\n"
        "    staff:\n"
        "      limits:\n"
        "        sender:\n"
        "          mesages: {minute: 5}\n"
        "        ip:\n"
        "          messages: {fortnight: 3, minute: -1}\n"
        "    late:\n"
        "      members: [person:bob]\n"
        "  anomaly:\n"
        "    bands:\n"
        "      - {score: 5, actions: [shout]}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(conf)
    text = "\n".join(exc.value.problems)
    assert f"{conf}:2: ratelimit.on_redis_error: 'maybe' is not one of: open, closed" in text
    assert f"{conf}:7: ratelimit.groups.staff.limits.sender.mesages: unknown key" in text
    assert f"{conf}:9: ratelimit.groups.staff.limits.ip.messages.fortnight: unknown" in text
    assert f"{conf}:9: ratelimit.groups.staff.limits.ip.messages.minute: must be" in text
    assert f"{conf}:11: ratelimit.groups.late.members: 'person:bob' is not a selector" in text
    assert f"{conf}:4: ratelimit.groups.staff: a group without members" in text
    assert f"{conf}:14: ratelimit.anomaly.bands[0].actions: 'shout' is not one of" in text
