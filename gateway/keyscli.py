"""``phigate keys import|list|remove``: recipients' OpenPGP keys and S/MIME certificates, kept
under ``paths.var`` (``encrypt.keyring``, ``encrypt.smime_dir``) for the ``encrypt`` action.
Validity, expiry and fingerprints are shown; imports and removals are audit events."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .audit import AuditLog
from .config import Config
from .encrypt.keystore import KeyInfo, KeyStore
from .encrypt.pgp import Keyring
from .encrypt.smime import CertStore


def add_parsers(subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
                common: Callable[[argparse.ArgumentParser], None]) -> None:
    k = subparsers.add_parser("keys", help="recipients' OpenPGP keys and S/MIME certificates")
    ksub = k.add_subparsers(dest="action", required=True)
    p = ksub.add_parser("import", help="import OpenPGP keys or S/MIME certificates",
                        description="Each FILE holds OpenPGP public keys (armored or binary, "
                                    "a revocation certificate too) or X.509 certificates (PEM, "
                                    "DER or PKCS#7); - reads standard input.")
    common(p)
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--aes-gcm", action="store_true",
                   help="S/MIME: the recipient's client reads AES-256-GCM (default: CBC)")
    p.add_argument("--json", action="store_true", help="one JSON object per key")
    p = ksub.add_parser("list", help="list keys and certificates with validity and expiry")
    common(p)
    p.add_argument("--address", help="only keys for this address")
    p.add_argument("--json", action="store_true", help="one JSON object per key")
    p = ksub.add_parser("remove", help="remove keys by fingerprint or by address")
    common(p)
    p.add_argument("target", metavar="FINGERPRINT|ADDRESS")


def open_keystore(cfg: Config) -> KeyStore:
    enc = cfg.encrypt
    return KeyStore(Keyring(enc.keyring, enc.gpg), CertStore(enc.smime_dir))


def _day(ts: float | None) -> str:
    return "never" if ts is None else time.strftime("%Y-%m-%d", time.gmtime(ts))


def _line(info: KeyInfo) -> str:
    kind = "openpgp" if info.kind == "pgp" else "smime"
    notes = []
    if info.kind == "smime":
        notes.append("aes-256-gcm" if info.gcm else "aes-256-cbc")
    if info.secret:
        notes.append("secret key: organisation's signing key")
    note = f"  ({', '.join(notes)})" if notes else ""
    return (f"{kind:8} {info.status:9} {_day(info.expires):10}  {info.fingerprint}  "
            f"{', '.join(info.addresses) or '-'}{note}")


def _print(infos: list[KeyInfo], as_json: bool) -> None:
    for info in infos:
        print(json.dumps(info.to_json()) if as_json else _line(info))


def _audit(audit: AuditLog, action: str, info: KeyInfo) -> None:
    audit.emit(action, {"event.outcome": "success", "encrypt.method": info.kind,
                        "encrypt.key_fingerprint": info.fingerprint,
                        "email.to.address": list(info.addresses)})


def run(args: argparse.Namespace, cfg: Config) -> int:
    store = open_keystore(cfg)
    now = time.time()
    if args.action == "list":
        infos = store.entries(now)
        if args.address:
            infos = [i for i in infos if args.address.strip().lower() in i.addresses]
        _print(infos, args.json)
        if not args.json:
            print(f"-- {len(infos)} key(s)")
        return 0
    audit = AuditLog.from_config(cfg.log, stdout=False)
    try:
        if args.action == "import":
            return _import(args, store, audit, now)
        removed = store.remove(args.target, now)
        for info in removed:
            _audit(audit, "keys.removed", info)
            print(f"removed {_line(info)}")
        if not removed:
            print(f"{args.target}: no key or certificate matches (see `phigate keys list`)",
                  file=sys.stderr)
            return 1
        return 0
    finally:
        audit.close()


def _import(args: argparse.Namespace, store: KeyStore, audit: AuditLog, now: float) -> int:
    status = 0
    for name in args.files:
        try:
            data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        except OSError as exc:
            print(f"{name}: cannot read: {exc.strerror}", file=sys.stderr)
            status = 1
            continue
        try:
            infos = store.import_data(data, now, gcm=args.aes_gcm)
        except ValueError as err:
            print(f"{name}: {err}", file=sys.stderr)
            status = 1
            continue
        for info in infos:
            _audit(audit, "keys.imported", info)
            if info.status != "valid" and not args.json:
                print(f"{name}: warning: {info.fingerprint} is {info.status}; mail to "
                      f"{', '.join(info.addresses)} goes through the portal", file=sys.stderr)
        _print(infos, args.json)
    return status
