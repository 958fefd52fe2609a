"""Routing metrics (RouteLLM, see ../shared/routing/README.md). Pure numpy.

Setting: ``n`` prompts, a router score per prompt (higher = more need for the strong
model), and the quality each model got on each prompt (``weak``, ``strong``, in [0, 1]).
Routing the ``k`` highest-scored prompts to the strong model and the rest to the weak one
gives the total quality ``sum(weak) + G(k)``, where ``G(k)`` is the summed gain
``strong - weak`` of the routed prompts.

Ties: prompts with equal scores are interchangeable to the router, so a partial selection
inside a tied group is counted at its expected value under random tie-breaking: every member
of the group contributes the group's mean gain. ``G`` is then piecewise linear in ``k``,
with kinks only at group boundaries, and a fractional ``k = f * n`` is read off by linear
interpolation (the same expected value: the marginal prompt goes strong with probability
``frac(k)``). All metrics below are exact on that curve, not rounded to a grid.

- ``perf(f) = (sum(weak) + G(f n)) / n``: mean quality with a share ``f`` of strong calls.
- ``PGR(f) = G(f n) / G(n) = (perf(f) - perf(0)) / (perf(1) - perf(0))``.
- ``APGR``: trapezoid rule of PGR over f = 0, 0.01, ..., 1. A random router has APGR 0.5.
- ``CPT(x)``: the smallest ``f`` with ``PGR(f) >= x``.
- ``strong_share_at_95``: the smallest ``f`` with ``perf(f) >= 0.95 * perf(1)``, i.e. the
  smallest share of strong calls that reaches 95% of the all-strong quality (a ratio of
  qualities, unlike CPT which is a share of the weak-to-strong gap); 0 when the weak model
  alone already reaches it.
- ``AUC``: P(score of a prompt where the strong model beats the weak one > score of a prompt
  where it does not), ties counting 1/2 (Mann-Whitney).

PGR-based values are NaN when the strong model is not better than the weak one overall
(no gap to recover), and AUC is NaN when only one label class is present.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

GRID: NDArray[np.float64] = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class RoutingMetrics:
    n: int
    apgr: float
    cpt50: float
    cpt80: float
    strong_share_at_95: float
    auc: float
    perf_weak: float
    perf_strong: float

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-friendly: NaN becomes None."""
        return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in asdict(self).items()}


def _as_arrays(scores: ArrayLike, weak: ArrayLike, strong: ArrayLike) -> tuple[NDArray[np.float64], ...]:
    s, w, q = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (scores, weak, strong))
    if not (len(s) == len(w) == len(q)):
        raise ValueError(f"length mismatch: scores {len(s)}, weak {len(w)}, strong {len(q)}")
    if len(s) == 0:
        raise ValueError("no prompts")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return s, w, q


def cumulative_gain(scores: ArrayLike, weak: ArrayLike, strong: ArrayLike) -> NDArray[np.float64]:
    """``G(k)`` for k = 0..n (length n + 1): expected summed gain of the top-k prompts."""
    s, w, q = _as_arrays(scores, weak, strong)
    order = np.argsort(-s, kind="stable")
    s_sorted, gain = s[order], (q - w)[order]
    # Replace every gain by its tie group's mean: the expected value under random tie-breaking.
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    sizes = np.diff(np.r_[starts, len(s_sorted)])
    group_mean = np.add.reduceat(gain, starts) / sizes
    return np.r_[0.0, np.cumsum(np.repeat(group_mean, sizes))]


def _gain_at(curve: NDArray[np.float64], fractions: ArrayLike) -> NDArray[np.float64]:
    n = len(curve) - 1
    return np.interp(np.asarray(fractions, dtype=np.float64) * n, np.arange(n + 1), curve)


def _first_reaching(curve: NDArray[np.float64], target: float) -> float:
    """Smallest real k/n with the piecewise-linear curve >= target (curve[-1] >= target)."""
    n = len(curve) - 1
    tol = 1e-12 * max(1.0, abs(target))
    hits = np.flatnonzero(curve >= target - tol)
    j = int(hits[0])
    if j == 0:
        return 0.0
    lo, hi = curve[j - 1], curve[j]  # lo < target <= hi: linear crossing inside (j-1, j]
    return float((j - 1 + (target - lo) / (hi - lo)) / n)


def quality_curve(
    scores: ArrayLike, weak: ArrayLike, strong: ArrayLike, fractions: ArrayLike = GRID
) -> NDArray[np.float64]:
    """perf(f): mean quality at each share ``f`` of strong calls."""
    _, w, _ = _as_arrays(scores, weak, strong)
    return (w.sum() + _gain_at(cumulative_gain(scores, weak, strong), fractions)) / len(w)


def pgr_curve(
    scores: ArrayLike, weak: ArrayLike, strong: ArrayLike, fractions: ArrayLike = GRID
) -> NDArray[np.float64]:
    """PGR(f) at each share ``f`` (default f = 0, 0.01, ..., 1); NaN without a quality gap."""
    curve = cumulative_gain(scores, weak, strong)
    total = curve[-1]
    if total <= 0:
        return np.full(np.shape(fractions), np.nan)
    return _gain_at(curve, fractions) / total


def apgr(scores: ArrayLike, weak: ArrayLike, strong: ArrayLike) -> float:
    """Area under PGR(f), trapezoid rule on f = 0, 0.01, ..., 1."""
    pgr = pgr_curve(scores, weak, strong, GRID)
    return float(np.sum((pgr[1:] + pgr[:-1]) / 2.0 * np.diff(GRID)))


def cpt(scores: ArrayLike, weak: ArrayLike, strong: ArrayLike, x: float) -> float:
    """CPT(x): smallest share of strong calls whose PGR is at least ``x`` (a fraction, 0.5 = 50%)."""
    curve = cumulative_gain(scores, weak, strong)
    if curve[-1] <= 0:
        return float("nan")
    return _first_reaching(curve, x * curve[-1])


def strong_share_at(scores: ArrayLike, weak: ArrayLike, strong: ArrayLike, ratio: float = 0.95) -> float:
    """Smallest share of strong calls with mean quality >= ``ratio`` x the all-strong quality."""
    _, w, q = _as_arrays(scores, weak, strong)
    curve = cumulative_gain(scores, weak, strong)
    target = ratio * q.sum() - w.sum()  # on the G scale; G(n) = sum(q) - sum(w) >= target if q.sum() >= 0
    return _first_reaching(curve, target)


def auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """ROC AUC of ``scores`` against boolean ``labels``; tied scores count 1/2 (average ranks)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=bool).reshape(-1)
    if len(s) != len(y):
        raise ValueError(f"length mismatch: scores {len(s)}, labels {len(y)}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_ranks(values: ArrayLike) -> NDArray[np.float64]:
    """1-based ranks of ``values``; tied values share their group's average rank."""
    s = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    sizes = np.diff(np.r_[starts, len(s_sorted)])
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(starts + (sizes + 1) / 2.0, sizes)
    return ranks


def spearman(a: ArrayLike, b: ArrayLike) -> float:
    """Spearman rank correlation (average ranks for ties). 1.0 when neither side orders anything
    (fewer than two values, or both constant); NaN when only one side is constant."""
    ra, rb = average_ranks(a), average_ranks(b)
    flat_a, flat_b = (len(r) < 2 or bool(np.all(r == r[0])) for r in (ra, rb))
    if flat_a and flat_b:
        return 1.0
    if flat_a or flat_b:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def strong_needed(weak: ArrayLike, strong: ArrayLike) -> NDArray[np.bool_]:
    """The classifier's label: the strong model's quality beats the weak model's."""
    return np.asarray(strong, dtype=np.float64) > np.asarray(weak, dtype=np.float64)


def routing_metrics(scores: ArrayLike, weak: ArrayLike, strong: ArrayLike) -> RoutingMetrics:
    s, w, q = _as_arrays(scores, weak, strong)
    return RoutingMetrics(
        n=len(s),
        apgr=apgr(s, w, q),
        cpt50=cpt(s, w, q, 0.5),
        cpt80=cpt(s, w, q, 0.8),
        strong_share_at_95=strong_share_at(s, w, q, 0.95),
        auc=auc(s, strong_needed(w, q)),
        perf_weak=float(w.mean()),
        perf_strong=float(q.mean()),
    )


def random_metrics(weak: ArrayLike, strong: ArrayLike) -> RoutingMetrics:
    """A random router: every score tied, so every selection has the mean gain (APGR = 0.5)."""
    w = np.asarray(weak, dtype=np.float64)
    return routing_metrics(np.zeros(len(w)), weak, strong)


def threshold_for_share(scores: ArrayLike, share: float) -> float:
    """The score threshold (route strong when score >= it) that sends about ``share`` of these prompts strong."""
    s = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))[::-1]
    k = int(round(share * len(s)))
    if k <= 0:
        return float(np.nextafter(s[0], np.inf))
    return float(s[min(k, len(s)) - 1])


def per_source_apgr(scores: ArrayLike, weak: ArrayLike, strong: ArrayLike, sources: list[str],
                    min_prompts: int = 10, min_gap: float = 0.02) -> dict[str, float]:
    """APGR per source (MMLU subject, LLMRouter task, ...), for the sources with at least
    ``min_prompts`` prompts where the stronger model is better by more than ``min_gap`` on average
    (elsewhere APGR measures nothing)."""
    s, w, t = _as_arrays(scores, weak, strong)
    src = np.asarray(sources)
    out = {}
    for name in sorted(set(sources)):
        rows = src == name
        if rows.sum() >= min_prompts and t[rows].mean() > w[rows].mean() + min_gap:
            out[name] = round(apgr(s[rows], w[rows], t[rows]), 4)
    return out
