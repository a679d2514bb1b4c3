"""Labelled synthetic corpus of outbound e-mail for measuring the PHI detectors.

Import from the module, not the package (the module and its main function share a name)::

    from tests.corpus.generate import Sample, generate, write

``generate(n, seed)`` returns ``Sample`` objects (raw RFC 5322 bytes plus labels), half with PHI
and half realistic near misses; ``write(samples, folder)`` stores them as ``NAME.eml`` files and
``labels.jsonl``. From a shell: ``python -m tests.corpus.generate --n 1000 --seed 1234 --out DIR``.
"""
