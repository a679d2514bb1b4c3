"""The audit log's hash chain: every kind of tampering is found and named, the chain holds with
several processes appending, and it continues across size rotation, logrotate's rename, a
truncation in place and a writer that died between append and state update."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from gateway.audit import AuditLog, load_or_create_key, read_state, state_file
from gateway.auditcli import audit_files, cmd_search, cmd_verify, parse_time, trail, verify
from gateway.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def _cfg(var: Path, *extra: str) -> Config:
    return load_config(ROOT / "conf" / "gateway.yaml", [f"paths.var={var}", *extra])


def _log(var: Path, n: int, action: str = "test.event", **kw: int) -> Path:
    cfg = _cfg(var)
    audit = AuditLog(cfg.log.audit_file, stdout=False, key_file=cfg.log.hmac_key_file, **kw)
    for i in range(n):
        audit.emit(action, {"count": i, "email.local_id": f"Q{i % 5}"})
    audit.close()
    return cfg.log.audit_file


def _verify(var: Path, files: list[Path] | None = None) -> tuple[bool, str]:
    cfg = _cfg(var)
    key = load_or_create_key(cfg.log.hmac_key_file, create=False)
    files = files or audit_files(cfg.log.audit_file)
    _, problem = verify(files, key, cfg.log.audit_file)
    return problem is None, str(problem)


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_intact_chain_verifies_and_key_is_private(tmp_path: Path) -> None:
    path = _log(tmp_path, 20)
    ok, why = _verify(tmp_path)
    assert ok, why
    key = tmp_path / "audit.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    events = [json.loads(x) for x in _lines(path)]
    assert [e["log.seq"] for e in events] == list(range(1, 21))
    assert events[0]["log.prev_mac"] == "0" * 64 and "log.prev_mac" not in events[1]


def test_cli_verify_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _log(tmp_path, 5)
    cfg = _cfg(tmp_path)
    args = argparse.Namespace(files=[])
    assert cmd_verify(args, cfg) == 0
    assert "chain intact" in capsys.readouterr().out
    lines = _lines(path)
    lines[2] = lines[2].replace(b'"count":2', b'"count":7')
    path.write_bytes(b"".join(lines))
    assert cmd_verify(args, cfg) == 1
    assert f"{path}:3: edited" in capsys.readouterr().out


@pytest.mark.parametrize("tamper,line,word", [
    ("edit", 4, "edited"),
    ("delete", 4, "deleted"),
    ("delete_two", 4, "deleted: events 4..5"),
    ("insert_copy", 5, "inserted"),
    ("insert_forged", 4, "inserted"),
    ("swap", 4, "reordered"),
    ("drop_mac", 4, "not a chained event"),
    ("cut_head", 1, "first lines were deleted"),
    ("cut_tail", 9, "last events were cut off"),
])
def test_tampering_is_found_and_named(tmp_path: Path, tamper: str, line: int,
                                      word: str) -> None:
    path = _log(tmp_path, 10)
    lines = _lines(path)
    if tamper == "edit":
        lines[3] = lines[3].replace(b'"count":3', b'"count":4')
    elif tamper == "delete":
        del lines[3]
    elif tamper == "delete_two":
        del lines[3:5]
    elif tamper == "insert_copy":
        lines.insert(4, lines[1])
    elif tamper == "insert_forged":
        forged = json.loads(lines[3])
        forged["event.action"] = "queue.release"
        lines.insert(3, (json.dumps(forged, separators=(",", ":")) + "\n").encode())
    elif tamper == "swap":
        lines[3], lines[5] = lines[5], lines[3]
    elif tamper == "drop_mac":
        ev = json.loads(lines[3])
        del ev["log.mac"]
        lines[3] = (json.dumps(ev, separators=(",", ":")) + "\n").encode()
    elif tamper == "cut_head":
        del lines[:2]
    elif tamper == "cut_tail":
        del lines[8:]
    path.write_bytes(b"".join(lines))
    ok, why = _verify(tmp_path)
    assert not ok
    assert why.startswith(f"{path}:{line}: ") and word in why, why


def _worker(var: str, n: int) -> None:
    _log(Path(var), n, action=f"test.worker{os.getpid()}")


def test_several_processes_share_one_chain(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), 150)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    ok, why = _verify(tmp_path)
    assert ok, why
    seqs = [json.loads(x)["log.seq"] for x in _lines(tmp_path / "log" / "audit.jsonl")]
    assert seqs == list(range(1, 601))


def test_forked_child_reuses_parents_log(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    audit = AuditLog.from_config(cfg.log, stdout=False)
    audit.emit("test.parent")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        for _ in range(50):
            audit.emit("test.child")
        os._exit(0)
    for _ in range(50):
        audit.emit("test.parent")
    os.waitpid(pid, 0)
    audit.close()
    ok, why = _verify(tmp_path)
    assert ok, why


def test_size_rotation_continues_the_chain(tmp_path: Path) -> None:
    _log(tmp_path, 40, rotate_size=2000)
    files = audit_files(tmp_path / "log" / "audit.jsonl")
    assert len(files) > 3
    ok, why = _verify(tmp_path)
    assert ok, why
    live = json.loads(_lines(tmp_path / "log" / "audit.jsonl")[0])
    assert (tmp_path / "log" / live["log.prev_file"]).exists()
    # a whole rotated file removed from the middle is a gap between its neighbours
    middle = sorted(f for f in files if f.name != "audit.jsonl")[1]
    middle.unlink()
    ok, why = _verify(tmp_path)
    assert not ok and "deleted: events" in why, why


def test_logrotate_rename_and_copytruncate(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    audit = AuditLog.from_config(cfg.log, stdout=False)
    path = cfg.log.audit_file
    for i in range(3):
        audit.emit("test.a", count=i)
    path.rename(path.with_name("audit.jsonl.1"))  # logrotate's "create" mode
    path.touch()
    audit.emit("test.b")
    first = json.loads(_lines(path)[0])
    assert first["log.prev_file"] == "audit.jsonl.1" and first["log.seq"] == 4
    ok, why = _verify(tmp_path)
    assert ok, why
    # copytruncate: copied, then truncated in place
    path.with_name("audit.jsonl.2").write_bytes(path.read_bytes())
    os.truncate(path, 0)
    audit.emit("test.c")
    audit.close()
    first = json.loads(_lines(path)[0])
    assert first["log.seq"] == 5 and first["log.prev_file"] == ""
    ok, why = _verify(tmp_path)
    assert ok, why


def test_crash_between_append_and_state_and_lost_state(tmp_path: Path) -> None:
    path = _log(tmp_path, 3)
    st = state_file(path)
    before = read_state(path)
    assert before is not None and before.seq == 3
    _log(tmp_path, 2)
    st.write_bytes(b"")  # state lost: the writer finds its place from the file's tail
    _log(tmp_path, 2)
    ok, why = _verify(tmp_path)
    assert ok, why
    assert [json.loads(x)["log.seq"] for x in _lines(path)] == list(range(1, 8))


def test_concurrent_first_start_agrees_on_one_key(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    q: multiprocessing.Queue[bytes] = ctx.Queue()

    def make() -> None:
        q.put(load_or_create_key(tmp_path / "k" / "audit.key"))

    procs = [ctx.Process(target=make) for _ in range(6)]
    for p in procs:
        p.start()
    keys = {q.get(timeout=30) for _ in procs}
    for p in procs:
        p.join(10)
    assert len(keys) == 1
    assert [p.name for p in (tmp_path / "k").iterdir()] == ["audit.key"]


def test_search_follows_bounces_and_portal(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _cfg(tmp_path)
    audit = AuditLog.from_config(cfg.log, stdout=False)
    audit.emit("message.accepted", {"email.local_id": "A1", "email.from.address": "x@example.org"})
    audit.emit("message.accepted", {"email.local_id": "B2", "email.from.address": "y@example.org"})
    audit.emit("portal.stored", {"email.local_id": "A1", "portal.id": "P9"})
    audit.emit("portal.opened", {"portal.id": "P9"})
    audit.emit("delivery.failed", {"email.local_id": "B2"})
    audit.emit("bounce.created", {"email.local_id": "C3", "related.local_id": "A1"})
    audit.emit("delivery.delivered", {"email.local_id": "C3"})
    audit.close()
    args = argparse.Namespace(queue_id="A1", sender=None, since=None, until=None, files=[],
                              json=True)
    assert cmd_search(args, cfg) == 0
    got = [json.loads(x)["event.action"] for x in capsys.readouterr().out.splitlines()]
    assert got == ["message.accepted", "portal.stored", "portal.opened", "bounce.created",
                   "delivery.delivered"]
    evs = [json.loads(x) for x in _lines(cfg.log.audit_file)]
    assert [e["email.local_id"] for e in trail(evs, None, "Y@example.org")] == ["B2", "B2"]
    args = argparse.Namespace(queue_id=None, sender=None, since="1h", until=None, files=[],
                              json=False)
    assert cmd_search(args, cfg) == 0
    assert len(capsys.readouterr().out.splitlines()) == 7
    assert parse_time("2025-01-31T08:00Z").isoformat() == "2025-01-31T08:00:00+00:00"


def test_log_config_keys(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    assert cfg.log.hmac_key_file == tmp_path / "audit.key" and cfg.log.rotate_size == 0
    cfg = _cfg(tmp_path, "log.rotate_size=10MB", "log.hmac_key_file=/etc/phigate/audit.key")
    assert cfg.log.rotate_size == 10 * 1024 * 1024
    assert cfg.log.hmac_key_file == Path("/etc/phigate/audit.key")
    conf = tmp_path / "gateway.yaml"
    conf.write_text("log:\n  audit_file: a.jsonl\n  rotate_size: lots\n")
    with pytest.raises(ConfigError) as err:
        load_config(conf, [])
    assert any(p.startswith(f"{conf}:3:") and "rotate_size" in p for p in err.value.problems)


def test_verify_without_key_says_so(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    with pytest.raises(ConfigError) as err:
        cmd_verify(argparse.Namespace(files=[]), cfg)
    assert "no audit log key" in err.value.problems[0]
