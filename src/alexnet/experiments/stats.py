"""The statistics of every experiment's comparison: the difference of two arms' means over seeds with
Welch's t-test and its confidence interval (unequal variances, Welch–Satterthwaite degrees of
freedom), and the words a report uses for it.

The decision rule (:data:`DECISION_RULE`), the same for every experiment and written into each
experiment's ``protocol.json`` before its first run: a difference is *in the paper's direction* or
*against it* only when its 95% interval excludes zero; otherwise it is *not resolved at this
scale*, reported with the minimum detectable effect (:attr:`Difference.mde`: the true difference
that the same design, with the spread observed, would resolve with 80% power). With fewer than two
seeds in an arm there is no spread to test against, and the comparison says so instead of guessing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

CONFIDENCE = 0.95
POWER = 0.80  # of the minimum detectable effect
NOT_RESOLVED = "not resolved at this scale"
WITHIN_NOISE = NOT_RESOLVED  # the interval contains zero: the seeds run cannot tell the arms apart
PAPER_DIRECTION = "in the paper's direction"
AGAINST = "against the paper's direction"
NO_SPREAD = "one seed per arm: no spread to test against"
DECISION_RULE = (f"Welch's two-sided {CONFIDENCE:.0%} interval of the difference of the arms' means over seeds (each arm "
                 f"at its chosen rate): '{PAPER_DIRECTION}' or '{AGAINST}' only when the interval excludes zero; "
                 f"otherwise '{NOT_RESOLVED}', with the minimum detectable effect (the true difference the same "
                 f"design resolves with {POWER:.0%} power at the spread observed). Fixed before the runs.")


def finite(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


@dataclass
class Difference:
    """``b − a`` of two arms' means over seeds (``a`` the reference), with Welch's test."""

    diff: float | None
    low: float | None  # the confidence interval of diff (None without spread)
    high: float | None
    p: float | None  # two-sided Welch p-value
    df: float | None
    n_a: int
    n_b: int
    confidence: float = CONFIDENCE
    mde: float | None = None  # the minimum detectable effect (> 0), same units as diff

    @property
    def tested(self) -> bool:
        return self.low is not None and self.high is not None

    @property
    def within_noise(self) -> bool:
        """The interval contains zero (untested differences count as noise too)."""
        return not self.tested or (self.low <= 0.0 <= self.high)  # type: ignore[operator]

    def verdict(self, paper_sign: float | None = None) -> str:
        """"not resolved at this scale" (the interval contains zero), or the direction against the
        paper's (``paper_sign`` > 0: the paper finds b larger than a), or "differs" where the paper
        gives no sign."""
        if self.diff is None:
            return "—"
        if not self.tested:
            return NO_SPREAD
        if self.within_noise:
            return WITHIN_NOISE
        if not paper_sign:
            return "differs beyond seed noise"
        return PAPER_DIRECTION if (self.diff > 0) == (paper_sign > 0) else AGAINST

    def text(self, scale: float = 100.0, digits: int = 2, unit: str = "") -> str:
        """``+1.23 [−0.40, +2.86], p = 0.09`` (scaled, e.g. fractions to points)."""
        if self.diff is None:
            return "—"
        s = f"{self.diff * scale:+.{digits}f}{unit}"
        if self.tested:
            s += (f" [{self.low * scale:+.{digits}f}, {self.high * scale:+.{digits}f}]"  # type: ignore[operator]
                  + (f", p = {self.p:.2g}" if self.p is not None else ""))
            if self.within_noise and self.mde is not None and math.isfinite(self.mde):
                s += f"; MDE {self.mde * scale:.{digits}f}"
        return s

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items()}


def welch(a: Sequence[float | None], b: Sequence[float | None], confidence: float = CONFIDENCE) -> Difference:
    """Welch's unequal-variance t-test of mean(b) − mean(a) and its ``confidence`` interval. Needs
    two values in each arm; with fewer, the difference comes without an interval."""
    from scipy import stats

    xa, xb = finite(a), finite(b)
    if not xa or not xb:
        return Difference(None, None, None, None, None, len(xa), len(xb), confidence)
    ma, mb = sum(xa) / len(xa), sum(xb) / len(xb)
    diff = mb - ma
    if len(xa) < 2 or len(xb) < 2:
        return Difference(diff, None, None, None, None, len(xa), len(xb), confidence)
    va = sum((x - ma) ** 2 for x in xa) / (len(xa) - 1) / len(xa)  # squared standard errors
    vb = sum((x - mb) ** 2 for x in xb) / (len(xb) - 1) / len(xb)
    se2 = va + vb
    if se2 == 0.0:  # no spread at all: the seeds agree exactly
        return Difference(diff, diff, diff, 1.0 if diff == 0 else 0.0, math.inf, len(xa), len(xb), confidence)
    df = se2 ** 2 / (va ** 2 / (len(xa) - 1) + vb ** 2 / (len(xb) - 1))  # Welch–Satterthwaite
    se = math.sqrt(se2)
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    p = float(2 * stats.t.sf(abs(diff) / se, df))
    return Difference(diff, diff - half, diff + half, p, df, len(xa), len(xb), confidence, mde(se, df, confidence))


def seeds_to_resolve(d: Difference, effect: float) -> int | None:
    """Seeds per arm that would bring the minimum detectable effect of ``d``'s design down to
    ``effect`` at the same spread (the MDE shrinks as 1/√n): ⌈n · (MDE / effect)²⌉, at least n; None
    without a spread or an effect."""
    if d.mde is None or not effect or not math.isfinite(d.mde):
        return None
    n = max(d.n_a, d.n_b)
    return max(n, math.ceil(n * (d.mde / abs(effect)) ** 2))


def mde(se: float, df: float, confidence: float = CONFIDENCE, power: float = POWER) -> float:
    """The minimum detectable effect of a t-based comparison with standard error ``se`` and ``df``
    degrees of freedom: (t_{1−α/2} + t_{power}) · se, the true difference whose interval would exclude
    zero with probability ``power``."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, df) + stats.t.ppf(power, df)) * se


def one_sample(values: Sequence[float | None], confidence: float = CONFIDENCE) -> Difference:
    """The mean of ``values`` (e.g. paired differences) and its t interval; ``n_a`` is 0."""
    from scipy import stats

    xs = finite(values)
    if not xs:
        return Difference(None, None, None, None, None, 0, 0, confidence)
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return Difference(m, None, None, None, None, 0, len(xs), confidence)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    if sd == 0.0:
        return Difference(m, m, m, 1.0 if m == 0 else 0.0, math.inf, 0, len(xs), confidence)
    se = sd / math.sqrt(len(xs))
    df = len(xs) - 1
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return Difference(m, m - half, m + half, float(2 * stats.t.sf(abs(m) / se, df)), df, 0, len(xs), confidence,
                      mde(se, df, confidence))
