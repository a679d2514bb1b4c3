"""Per-sender baselines and a surge score: pure functions, no I/O (the rate limiter keeps the
state in its backend and calls these).

What is learned, per sender, from completed hours (an exponentially weighted moving average
and variance, so recent weeks count most and nothing grows without bound):

* messages in each hour of the day (24 slots, one observation per slot per day): both the
  volume and the hour of day, since an hour in which a sender never writes expects ~0;
* distinct external recipient domains per active hour;
* PHI findings per message.

The score of a message is the largest of the three surprises, each ``(observed - expected) /
sqrt(variance + prior)``: the current hour's messages so far against the slot's baseline, the
hour's distinct external domains so far, and this message's PHI findings. An account that writes
20 messages a day and then 400 in an hour to new domains scores in the hundreds; three messages
instead of one score about 1. A sender is scored only after ``learning`` seconds of history.

Completed hours are clipped before they are learned (at baseline + 4 deviations), so one surge
does not teach the baseline that surges are normal. Hours are UTC hour numbers; only their
period matters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import AnomalyBand, AnomalyConfig

HOUR = 3600.0
MAX_FOLD_HOURS = 24 * 28  # a sender silent for longer has its slots decayed in one step
PHI_ALPHA_SHARE = 0.1  # per-message EWMA weight of PHI findings, as a share of alpha


def hour_of(ts: float) -> int:
    return int(ts // HOUR)


@dataclass(frozen=True)
class HourStats:
    """One sender's traffic in one hour (so far)."""

    messages: int = 0
    domains: int = 0  # distinct external recipient domains
    phi_sum: float = 0.0  # PHI findings summed over the hour's messages
    phi_sq: float = 0.0  # and their squares


@dataclass
class Baseline:
    first_hour: int  # the hour the sender was first seen
    through: int  # hours before this one have been learned
    hod: list[float] = field(default_factory=lambda: [0.0] * 24)
    hod_var: list[float] = field(default_factory=lambda: [0.0] * 24)
    domains: float = 0.0
    domains_var: float = 0.0
    phi: float = 0.0
    phi_var: float = 0.0
    messages: int = 0  # messages learned so far

    def to_json(self) -> dict[str, Any]:
        return {"first_hour": self.first_hour, "through": self.through,
                "hod": [round(x, 4) for x in self.hod],
                "hod_var": [round(x, 4) for x in self.hod_var],
                "domains": self.domains, "domains_var": self.domains_var, "phi": self.phi,
                "phi_var": self.phi_var, "messages": self.messages}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Baseline:
        return cls(int(d["first_hour"]), int(d["through"]),
                   [float(x) for x in d["hod"]], [float(x) for x in d["hod_var"]],
                   float(d["domains"]), float(d["domains_var"]), float(d["phi"]),
                   float(d["phi_var"]), int(d.get("messages", 0)))

    def learned(self, hour: int, cfg: AnomalyConfig) -> bool:
        return (hour - self.first_hour) * HOUR >= cfg.learning


def _ewma(mean: float, var: float, x: float, a: float) -> tuple[float, float]:
    d = x - mean
    return mean + a * d, (1 - a) * (var + a * d * d)


def _clip(x: float, mean: float, var: float, prior: float) -> float:
    return min(x, mean + 4.0 * math.sqrt(max(var, mean) + prior))


def fold(b: Baseline, hours: Mapping[int, HourStats], upto: int,
         cfg: AnomalyConfig) -> Baseline:
    """Learn the completed hours ``b.through .. upto - 1`` (hours absent from ``hours`` had no
    mail) and return the new baseline (``b`` is not changed)."""
    n = Baseline.from_json(b.to_json())
    start = max(n.through, upto - MAX_FOLD_HOURS)
    if start > n.through:  # a long silence: every slot saw (start - through) / 24 empty days
        decay = (1 - cfg.alpha) ** ((start - n.through) / 24)
        n.hod = [x * decay for x in n.hod]
    a = cfg.alpha
    for h in range(start, upto):
        st = hours.get(h, HourStats())
        learned = n.learned(h, cfg)
        slot = h % 24
        x = float(st.messages)
        if learned:
            x = _clip(x, n.hod[slot], n.hod_var[slot], cfg.prior)
        n.hod[slot], n.hod_var[slot] = _ewma(n.hod[slot], n.hod_var[slot], x, a)
        if st.messages:
            d = float(st.domains)
            if learned:
                d = _clip(d, n.domains, n.domains_var, cfg.prior)
            n.domains, n.domains_var = _ewma(n.domains, n.domains_var, d, a)
            mean = st.phi_sum / st.messages
            var = max(0.0, st.phi_sq / st.messages - mean * mean)
            if learned:
                mean = _clip(mean, n.phi, n.phi_var, cfg.prior)
            w = 1 - (1 - a * PHI_ALPHA_SHARE) ** st.messages
            d_phi = mean - n.phi
            n.phi += w * d_phi
            n.phi_var = (1 - w) * (n.phi_var + w * d_phi * d_phi) + w * var
            n.messages += st.messages
    n.through = max(n.through, upto)
    return n


@dataclass(frozen=True)
class Assessment:
    score: float
    features: dict[str, float]  # numbers only: they go to the audit log and the webhook


def assess(b: Baseline | None, current: HourStats, hour: int, findings: float,
           cfg: AnomalyConfig) -> Assessment:
    """Score the message that made ``current`` (its hour so far, this message included)."""
    slot = hour % 24
    if b is None:
        return Assessment(0.0, {"messages_this_hour": current.messages, "learning": 1})
    expected = b.hod[slot]
    total = sum(b.hod) or 1.0
    features: dict[str, float] = {
        "messages_this_hour": current.messages,
        "expected_messages": round(expected, 2),
        "external_domains_this_hour": current.domains,
        "expected_domains": round(b.domains, 2),
        "phi_findings": findings,
        "expected_phi_findings": round(b.phi, 2),
        "hour_of_day": slot,
        "hour_share": round(expected / total, 3),
    }
    if not b.learned(hour, cfg):
        features["learning"] = 1
        return Assessment(0.0, features)

    def z(x: float, mean: float, var: float) -> float:
        return (x - mean) / math.sqrt(max(var, mean) + cfg.prior)

    parts = {
        "volume": z(current.messages, expected, b.hod_var[slot]),
        "domains": z(current.domains, b.domains, b.domains_var),
        "phi": z(findings, b.phi, b.phi_var),
    }
    for k, v in parts.items():
        features[f"score_{k}"] = round(v, 2)
    return Assessment(round(max(0.0, *parts.values()), 2), features)


def band_for(score: float, bands: tuple[AnomalyBand, ...]) -> AnomalyBand | None:
    """The highest band whose score is reached (bands sorted by score)."""
    found = None
    for band in bands:
        if score >= band.score:
            found = band
    return found
