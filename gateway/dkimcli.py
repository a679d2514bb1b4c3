"""``phigate dkim keygen|dns|rotate`` and ``phigate dns check``: the parsers and handlers, added
to the ``phigate`` command by ``cli.build_parser`` through :func:`add_parsers`. Each handler
takes the parsed arguments and the loaded configuration and returns the exit status."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import DEFAULT_CONFIG, Config
from .dkimkeys import ED25519, RSA, DkimKeyError, KeyStore, dns_records, keygen, rotate


def _common(p: argparse.ArgumentParser) -> None:
    # the same options as every other subcommand (cli._common), so the same keys are found
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help="configuration file (default: conf/gateway.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a configuration key by its dotted path (repeatable)")


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``dkim`` and ``dns``; each leaf sets ``handler(args, config) -> int``."""
    d = subparsers.add_parser("dkim", help="DKIM keys: generate, print DNS records, rotate")
    dsub = d.add_subparsers(dest="action", required=True)
    p = dsub.add_parser("keygen", help="create a DKIM key and print its DNS record")
    _common(p)
    p.add_argument("--domain", required=True)
    p.add_argument("--selector", required=True)
    p.add_argument("--ed25519", action="store_true",
                   help="an Ed25519 key (a second signature, RFC 8463) instead of RSA-2048")
    p.set_defaults(handler=cmd_keygen)
    p = dsub.add_parser("dns", help="print the TXT records of a domain's DKIM keys")
    _common(p)
    p.add_argument("domain")
    p.set_defaults(handler=cmd_dns)
    p = dsub.add_parser(
        "rotate", help="advance a key rotation by one step: start, switch, retire",
        description="Run once to create and publish a new key, again (once the record is "
                    "visible in DNS) to switch to it, and again after dkim.rotate_grace to "
                    "retire the old key. Each run says what to do next.")
    _common(p)
    p.add_argument("--domain", required=True)
    p.add_argument("--ed25519", action="store_true", help="rotate the Ed25519 key")
    p.add_argument("--selector", help="selector of the new key (default: phigateYYYYMM)")
    p.add_argument("--force", action="store_true",
                   help="switch without checking that the new record is visible in DNS")
    p.set_defaults(handler=cmd_rotate)

    n = subparsers.add_parser("dns", help="check a domain's DNS records")
    nsub = n.add_subparsers(dest="action", required=True)
    p = nsub.add_parser("check", help="SPF, DKIM, DMARC, MTA-STS and TLS-RPT records")
    _common(p)
    p.add_argument("domain")
    p.add_argument("--ip", action="append", default=[],
                   help="a sending address to test SPF for (default: outbound_addresses, "
                        "else the addresses of hostname)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(handler=cmd_dns_check)


def _fail(err: DkimKeyError) -> int:
    print(str(err), file=sys.stderr)
    return 1


def cmd_keygen(args: argparse.Namespace, cfg: Config) -> int:
    try:
        keygen(cfg, args.domain, args.selector, ED25519 if args.ed25519 else RSA)
    except DkimKeyError as err:
        return _fail(err)
    return 0


def cmd_dns(args: argparse.Namespace, cfg: Config) -> int:
    domain = args.domain.lower().rstrip(".")
    try:
        lines = dns_records(cfg, domain)
    except DkimKeyError as err:
        return _fail(err)
    if not lines:
        parent = domain.partition(".")[2]
        while parent and not KeyStore(cfg).entries(parent):
            parent = parent.partition(".")[2]
        hint = (f"; its mail is signed as d={parent} (`phigate dkim dns {parent}`)" if parent
                else f"; create one with `phigate dkim keygen --domain {domain} "
                     "--selector phigate`")
        print(f"{domain} has no DKIM key of its own{hint}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0


def cmd_rotate(args: argparse.Namespace, cfg: Config) -> int:
    from .dnscheck import resolver_lookup

    resolve = resolver_lookup(cfg)
    try:
        return rotate(cfg, args.domain, ED25519 if args.ed25519 else RSA, args.selector,
                      lookup=lambda name: resolve(name, "TXT"), force=args.force)
    except DkimKeyError as err:
        return _fail(err)


def cmd_dns_check(args: argparse.Namespace, cfg: Config) -> int:
    from .dnscheck import check

    try:
        report = check(cfg, args.domain, addresses=args.ip)
    except ValueError as err:  # a bad --ip or domain
        print(f"{err}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_json()) if args.json else report.text())
    return 0 if report.ok else 1
