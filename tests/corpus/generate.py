"""Generate the labelled corpus: ``python -m tests.corpus.generate --n 1000 --seed 1234 --out DIR``.

Labels are derived from what each template actually wrote (see ``model.Ctx.rec``):

- ``phi``: the message carries patient PHI (its family is a PHI family).
- ``types``: label types of the patient PHI present (identifiers and clinical content tied to a
  patient); empty when ``phi`` is False.
- ``structured``: ``types`` includes a structured identifier (see ``STRUCTURED_TYPES``).
- ``other_types``: label types of values present that are *not* patient PHI: a provider's name or
  NPI, a clinic's phone and address in a signature, an ICD-10 code in a coding tip, an IP address
  in an IT notice. A detector finding one of these is right about the type but must not call the
  message PHI on its strength alone.
- ``values`` / ``other_values`` (in memory only, not written to labels.jsonl): the exact strings
  behind ``types`` and ``other_types``, for span-level checks.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from faker import Faker

from tests.corpus import message
from tests.corpus.clean_families import CLEAN_FAMILIES
from tests.corpus.model import Ctx, Draft
from tests.corpus.phi_families import PHI_FAMILIES

TYPE_LABELS = frozenset({
    "ssn", "mbi", "mrn", "dob", "medicaid_id", "member_id", "phone", "fax", "email", "address",
    "zip", "account", "credit_card", "routing", "drivers_license", "passport", "vin", "ip", "url",
    "device_serial", "npi", "dea", "name", "icd10", "cpt", "medication", "diagnosis", "lab",
})  # fmt: skip

# Identifier types that make a PHI message "structured" when they are tied to the patient.
STRUCTURED_TYPES = frozenset({
    "ssn", "mbi", "mrn", "dob", "medicaid_id", "member_id", "account", "credit_card", "routing",
    "phone", "fax", "email", "drivers_license", "passport", "vin", "device_serial",
})  # fmt: skip


@dataclass(frozen=True)
class Sample:
    name: str
    raw: bytes
    phi: bool
    types: frozenset[str]
    structured: bool
    category: str
    other_types: frozenset[str] = frozenset()
    values: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    other_values: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def label(self) -> dict[str, object]:
        return {
            "name": self.name,
            "phi": self.phi,
            "types": sorted(self.types),
            "structured": self.structured,
            "category": self.category,
            "other_types": sorted(self.other_types),
        }


Family = tuple[str, Callable[[Ctx], Draft], float]


def allocate(total: int, families: Sequence[Family]) -> list[int]:
    """Split ``total`` over families by weight (largest remainder), every family at least once
    when there is room."""
    weights = [w for _, _, w in families]
    s = sum(weights)
    exact = [total * w / s for w in weights]
    counts = [int(x) for x in exact]
    if total >= len(families):
        counts = [max(1, c) for c in counts]
    while sum(counts) > total:
        i = max(range(len(counts)), key=lambda k: (counts[k] - exact[k], counts[k]))
        counts[i] -= 1
    order = sorted(range(len(counts)), key=lambda k: exact[k] - int(exact[k]), reverse=True)
    j = 0
    while sum(counts) < total:
        counts[order[j % len(order)]] += 1
        j += 1
    return counts


def plan(n: int, seed: int) -> list[tuple[bool, Family]]:
    n_phi = n - n // 2
    slots: list[tuple[bool, Family]] = []
    for is_phi, fams, total in ((True, PHI_FAMILIES, n_phi), (False, CLEAN_FAMILIES, n // 2)):
        for fam, count in zip(fams, allocate(total, fams), strict=True):
            slots.extend([(is_phi, fam)] * count)
    random.Random(f"phigate-corpus-order:{seed}").shuffle(slots)
    return slots


def make_sample(index: int, is_phi: bool, fam: Family, seed: int, fake: Faker) -> Sample:
    category, fn, _ = fam
    rng = random.Random(f"phigate-corpus:{seed}:{index}:{category}")
    fake.seed_instance(rng.getrandbits(64))
    ctx = Ctx(rng, fake)
    d = fn(ctx)
    raw = message.build(d, rng, ctx.date)
    types = frozenset(t for t, _ in ctx.r.phi)
    other = frozenset(t for t, _ in ctx.r.other)
    unknown = (types | other) - TYPE_LABELS
    if unknown:
        raise AssertionError(f"{category}: unknown label types {sorted(unknown)}")
    if is_phi and not types:
        raise AssertionError(f"{category}: PHI family produced no PHI values")
    if not is_phi and types:
        raise AssertionError(f"{category}: non-PHI family recorded PHI {sorted(types)}")
    prefix = "phi" if is_phi else "clean"
    return Sample(
        name=f"{prefix}-{category.replace('_', '-')}-{index:04d}",
        raw=raw,
        phi=is_phi,
        types=types,
        structured=bool(types & STRUCTURED_TYPES),
        category=category,
        other_types=other,
        values=tuple(ctx.r.phi),
        other_values=tuple(ctx.r.other),
    )


def generate(n: int = 1000, seed: int = 1234) -> list[Sample]:
    """``n`` samples, deterministic for a seed; ceil(n/2) carry PHI, floor(n/2) do not."""
    fake = Faker("en_US")
    return [
        make_sample(i, is_phi, fam, seed, fake) for i, (is_phi, fam) in enumerate(plan(n, seed))
    ]


def write(samples: Iterable[Sample], folder: Path) -> None:
    """Write ``NAME.eml`` for every sample and one ``labels.jsonl`` line per sample."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "labels.jsonl").open("w", encoding="utf-8") as labels:
        for s in samples:
            (folder / f"{s.name}.eml").write_bytes(s.raw)
            labels.write(json.dumps(s.label(), sort_keys=False) + "\n")


def summary(samples: Sequence[Sample]) -> str:
    cats = Counter((s.phi, s.category) for s in samples)
    lines = []
    for is_phi in (True, False):
        total = sum(v for (p, _), v in cats.items() if p == is_phi)
        lines.append(f"{'PHI' if is_phi else 'non-PHI'}: {total}")
        for (p, cat), v in sorted(cats.items(), key=lambda kv: (-kv[1], kv[0][1])):
            if p == is_phi:
                lines.append(f"  {cat:<26} {v}")
    with_att = sum(1 for s in samples if b"Content-Disposition: attachment" in s.raw)
    structured = sum(1 for s in samples if s.structured)
    lines.append(f"with attachments: {with_att}; structured PHI: {structured}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--n", type=int, default=1000, help="number of messages (default 1000)")
    ap.add_argument("--seed", type=int, default=1234, help="random seed (default 1234)")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--quiet", action="store_true", help="do not print the summary")
    args = ap.parse_args(argv)
    samples = generate(args.n, args.seed)
    write(samples, args.out)
    if not args.quiet:
        print(f"wrote {len(samples)} messages and labels.jsonl to {args.out}")
        print(summary(samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
