"""Quality of the PHI engine on the labelled synthetic corpus (tests/corpus).

Prints message-level recall (all PHI messages, and those with structured identifiers) and
false-positive rate, and per-type precision and recall. Usage:

    python bench/phi_quality.py [--n 1000] [--seed 1234] [--misses] [--by-category]

Tune on one seed and report on others (held-out seeds): the corpus templates are random, so
a rule that only fits one seed's messages shows up as a drop on the others.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.classify import Scanner  # noqa: E402
from gateway.rules.builtin import WORDLISTS, validators  # noqa: E402
from gateway.rules.ruleset import build_engine, load_ruleset  # noqa: E402
from tests.corpus.generate import generate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--misses", action="store_true", help="list misclassified sample names")
    ap.add_argument("--by-category", action="store_true",
                    help="recall per PHI family and false positives per non-PHI family")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rs = load_ruleset(ROOT / "conf" / "rules", WORDLISTS)
    scanner = Scanner(build_engine(rs, validators(), ROOT / "var" / "cache"))
    samples = generate(args.n, args.seed)
    tp = fn = fp = tn = 0
    s_tp = s_fn = 0
    type_tp: Counter[str] = Counter()
    type_fp: Counter[str] = Counter()
    type_fn: Counter[str] = Counter()
    misses: list[str] = []
    by_cat: dict[str, list[int]] = {}  # category -> [messages, wrong]
    t0 = time.perf_counter()
    nbytes = 0
    for s in samples:
        out = scanner.scan(s.raw)
        nbytes += len(s.raw)
        found = {f.type for f in out.findings}
        phi = out.phi or "unscannable" in found
        if s.phi:
            tp += phi
            fn += not phi
            if s.structured:
                s_tp += phi
                s_fn += not phi
        else:
            fp += phi
            tn += not phi
        cat = by_cat.setdefault(("phi " if s.phi else "clean ") + s.category, [0, 0])
        cat[0] += 1
        if phi != s.phi:
            cat[1] += 1
            misses.append(f"{s.name} expected={s.phi} found={sorted(found)}")
        truth = set(s.types)
        allowed = truth | set(getattr(s, "other_types", ()))
        for t in found - {"patient_context", "unscannable"}:
            if t in allowed:
                type_tp[t] += 1
            else:
                type_fp[t] += 1
        for t in truth - found:
            type_fn[t] += 1
    elapsed = time.perf_counter() - t0
    recall = tp / max(1, tp + fn)
    s_recall = s_tp / max(1, s_tp + s_fn)
    fpr = fp / max(1, fp + tn)
    result = {
        "messages": len(samples), "recall": round(recall, 4),
        "recall_structured": round(s_recall, 4), "false_positive_rate": round(fpr, 4),
        "msgs_per_s": round(len(samples) / elapsed, 1),
        "mb_per_s": round(nbytes / elapsed / 1e6, 2),
        "per_type": {},
    }
    for t in sorted(set(type_tp) | set(type_fp) | set(type_fn)):
        p = type_tp[t] / max(1, type_tp[t] + type_fp[t])
        r = type_tp[t] / max(1, type_tp[t] + type_fn[t])
        result["per_type"][t] = {"precision": round(p, 3), "recall": round(r, 3),
                                 "tp": type_tp[t], "fp": type_fp[t], "fn": type_fn[t]}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"messages {len(samples)}: recall {recall:.2%} (structured {s_recall:.2%}), "
              f"false positives {fpr:.2%}; {result['msgs_per_s']} msg/s, "
              f"{result['mb_per_s']} MB/s (one core, extraction included)")
        print(f"{'type':16} {'precision':>9} {'recall':>7} {'tp':>5} {'fp':>5} {'fn':>5}")
        for t, d in result["per_type"].items():
            print(f"{t:16} {d['precision']:9.3f} {d['recall']:7.3f} {d['tp']:5} {d['fp']:5} "
                  f"{d['fn']:5}")
    if args.by_category:
        result["by_category"] = {k: {"messages": n, "wrong": w} for k, (n, w) in by_cat.items()}
        if not args.json:
            for k, (n, w) in sorted(by_cat.items()):
                what = "missed" if k.startswith("phi ") else "flagged"
                print(f"{k:34} {n:4} messages, {w:3} {what}")
    if args.misses:
        print("\n".join(misses))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
