"""Comparing a method with a baseline over seeds: paired by seed (default) or unpaired (Welch).

Runs of one seed share the batch order, the augmentation stream and (same backbone) the initial weights, so
the natural unit is the per-seed difference `method − baseline`. `paired` gives its mean, a 95 % paired-t
interval, the two-sided p-value, a percentile bootstrap interval when there are enough pairs, and the minimum
detectable effect (MDE) of the test. `holm` adjusts a family of p-values. Pure numpy/scipy; see
docs/statistics.md for how the tables use it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import optimize, stats

ALPHA = 0.05
POWER = 0.80
N_BOOT = 10_000
MIN_BOOT = 10       # pairs needed before the bootstrap interval is reported
BOOT_SEED = 0
NAN = float("nan")


@dataclass(frozen=True)
class Comparison:
    """`diff` = mean(method) − mean(baseline) (the mean per-pair difference when paired); `sd` the spread the
    test uses (sd of the differences when paired, the standard error when Welch); `n_pairs` 0 for Welch."""

    test: str
    n_pairs: int
    diff: float
    ci_low: float = NAN
    ci_high: float = NAN
    p_value: float = NAN
    boot_low: float = NAN
    boot_high: float = NAN
    mde: float = NAN
    sd: float = NAN

    def as_dict(self) -> dict:
        return asdict(self)


def _finite(x: Sequence[float]) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    return x[~np.isnan(x)]


def _constant(x: np.ndarray, scale: float) -> bool:
    """All values equal up to float rounding (differences such as 0.7 − 0.5 and 0.72 − 0.52)."""
    return bool(np.ptp(x) <= 1e-12 * max(1.0, scale))


def _exact(test: str, n_pairs: int, diff: float, scale: float) -> Comparison:
    """No spread at all: the difference is known exactly (p = 0), or is exactly zero (p = 1)."""
    zero = abs(diff) <= 1e-12 * max(1.0, scale)
    diff = 0.0 if zero else diff
    boot = diff if n_pairs >= MIN_BOOT else NAN
    return Comparison(test, n_pairs, diff, diff, diff, 1.0 if zero else 0.0, boot, boot, mde=0.0, sd=0.0)


def t_interval(mean: float, se: float, df: float, alpha: float = ALPHA) -> tuple[float, float, float]:
    """Two-sided (1 − α) t interval for `mean` with standard error `se` and `df` degrees of freedom, and the
    p-value of mean = 0."""
    half = stats.t.ppf(1 - alpha / 2, df) * se
    p = 2 * stats.t.sf(abs(mean) / se, df)
    return float(mean - half), float(mean + half), float(p)


def power(delta: float, se: float, df: float, alpha: float = ALPHA) -> float:
    """Power of the two-sided t-test at level α when the true difference is `delta`: the probability that
    |T| exceeds the critical value under the noncentral t with noncentrality delta / se."""
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = abs(delta) / se
    far = stats.nct.cdf(-crit, df, nc)  # below α/2; scipy returns NaN where it underflows
    return float(stats.nct.sf(crit, df, nc) + (0.0 if math.isnan(far) else far))


def mde(se: float, df: float, alpha: float = ALPHA, target: float = POWER) -> float:
    """Smallest |difference| the two-sided t-test (standard error `se`, `df` degrees of freedom) detects
    with probability `target` at level α, solved exactly on the noncentral t by root finding.

    Normal approximation (too small for few seeds): (z_{1−α/2} + z_{power}) · se.
    """
    if not (df >= 1 and math.isfinite(se)):
        return NAN
    if se == 0:
        return 0.0
    hi = (stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(target)) * se
    while power(hi, se, df, alpha) < target:
        hi *= 2
    return float(optimize.brentq(lambda d: power(d, se, df, alpha) - target, 0.0, hi, xtol=1e-12 * hi))


def paired_mde(n: int, sd: float, alpha: float = ALPHA, target: float = POWER) -> float:
    """MDE of the paired t-test with `n` pairs whose differences have sample sd `sd`: se = sd/√n, df = n − 1;
    approximately (z_{1−α/2} + z_{power}) · sd/√n = 2.80 · sd/√n at α = 0.05, 80 % power."""
    return mde(sd / math.sqrt(n), n - 1, alpha, target) if n >= 2 else NAN


def bootstrap_ci(d: np.ndarray, alpha: float = ALPHA, n_boot: int = N_BOOT,
                 seed: int = BOOT_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `d`, resampling its entries (seeds) with replacement."""
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


MIN_EXACT = 3   # pairs needed before identical differences count as an exact (p = 0 or 1) result


def paired(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA, n_boot: int = N_BOOT,
           seed: int = BOOT_SEED) -> Comparison:
    """Paired comparison of aligned samples (a[i] and b[i] share seed i); pairs with a NaN are dropped."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    d = a[keep] - b[keep]
    n = len(d)
    if n < 2:
        return Comparison("paired", n, float(d.mean()) if n else NAN)
    scale = float(max(np.abs(a[keep]).max(), np.abs(b[keep]).max()))
    if _constant(d, scale):   # identical differences: significant only if seen often enough to mean something
        exact = n >= MIN_EXACT
        return _exact("paired", n, float(d.mean()), scale) if exact else Comparison("paired", n, float(d.mean()))
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    lo, hi, p = t_interval(mean, sd / math.sqrt(n), n - 1, alpha)
    boot = bootstrap_ci(d, alpha, n_boot, seed) if n >= MIN_BOOT else (NAN, NAN)
    return Comparison("paired", n, mean, lo, hi, p, *boot, mde=paired_mde(n, sd, alpha), sd=sd)


def welch_se_df(s1: float, n1: int, s2: float, n2: int) -> tuple[float, float]:
    """Standard error of a difference of two means (sample stds s1, s2; sizes n1, n2 ≥ 2) and its
    Welch–Satterthwaite degrees of freedom; with no spread at all, se = 0 and df = n1 + n2 − 2."""
    v1, v2 = s1 ** 2 / n1, s2 ** 2 / n2
    se = math.sqrt(v1 + v2)
    if se == 0:
        return 0.0, float(n1 + n2 - 2)
    return se, (v1 + v2) ** 2 / (v1 ** 2 / (n1 - 1) + v2 ** 2 / (n2 - 1))


def welch(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA) -> Comparison:
    """Unpaired comparison: difference of means, Welch t interval and p-value (Welch–Satterthwaite df), and
    the MDE of that test at the observed standard error."""
    a, b = _finite(a), _finite(b)
    if len(a) < 2 or len(b) < 2:
        return Comparison("welch", 0, float(a.mean() - b.mean()) if len(a) and len(b) else NAN)
    diff = float(a.mean() - b.mean())
    scale = float(max(np.abs(a).max(), np.abs(b).max()))
    if _constant(a, scale) and _constant(b, scale):
        return _exact("welch", 0, diff, scale)
    se, df = welch_se_df(float(a.std(ddof=1)), len(a), float(b.std(ddof=1)), len(b))
    lo, hi, p = t_interval(diff, se, df, alpha)
    return Comparison("welch", 0, diff, lo, hi, p, mde=mde(se, df, alpha), sd=se)


def compare(a: Mapping, b: Mapping, test: str = "paired", alpha: float = ALPHA) -> Comparison:
    """Method values `a` and baseline values `b`, each keyed by pairing key (e.g. seed). Paired: on the
    keys both sides have (`n_pairs` says how many); Welch: every value of each side."""
    if test == "welch":
        return welch(list(a.values()), list(b.values()), alpha)
    if test != "paired":
        raise ValueError(f"test={test!r}: choose paired or welch")
    common = sorted(set(a) & set(b), key=repr)
    return paired([a[k] for k in common], [b[k] for k in common], alpha)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaN entries stay NaN and do not
    count towards the family size."""
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    order = idx[np.argsort(p[idx], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out
