"""experiments.report.stats against answers computed by hand or by an independent formula."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from experiments.report import stats


def test_paired_interval_and_p_match_a_hand_computation():
    a, b = [10, 12, 9, 14, 11], [8, 11, 9, 10, 9]
    # d = [2, 1, 0, 4, 2]: mean 9/5; squared deviations 0.04 + 0.64 + 3.24 + 4.84 + 0.04 = 8.8, var 8.8/4
    mean, se = 1.8, math.sqrt(2.2 / 5)
    t_crit = sps.t.ppf(0.975, 4)                    # 2.7764
    got = stats.paired(a, b)
    assert got.n_pairs == 5 and got.diff == pytest.approx(mean)
    assert got.sd == pytest.approx(math.sqrt(2.2))
    assert (got.ci_low, got.ci_high) == pytest.approx((mean - t_crit * se, mean + t_crit * se))
    assert (got.ci_low, got.ci_high) == pytest.approx((-0.041686, 3.641686), abs=1e-6)
    assert got.p_value == pytest.approx(2 * sps.t.sf(mean / se, 4))
    assert got.p_value == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert math.isnan(got.boot_low)                  # fewer than 10 pairs: no bootstrap interval


def test_welch_matches_scipy():
    a, b = [0.70, 0.72, 0.69, 0.75], [0.50, 0.52, 0.51]
    got = stats.welch(a, b)
    assert got.test == "welch" and got.diff == pytest.approx(np.mean(a) - np.mean(b))
    assert got.p_value == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue)
    assert got.ci_low < got.diff < got.ci_high


def test_holm_on_a_known_family():
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = stats.holm([0.01, np.nan, 0.04])          # NaN is not a member of the family
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert stats.holm([0.6, 0.7]).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("n, sd", [(2, 1.0), (3, 0.5), (5, 2.0), (10, 1.0), (30, 0.1)])
def test_mde_has_80_percent_power(n, sd):
    delta = stats.paired_mde(n, sd)
    df, nc = n - 1, delta / (sd / math.sqrt(n))
    crit = sps.t.ppf(0.975, df)
    power = sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc)
    assert power == pytest.approx(0.80, abs=1e-3)
    normal = (sps.norm.ppf(0.975) + sps.norm.ppf(0.80)) * sd / math.sqrt(n)
    assert delta > normal                            # the normal approximation is optimistic for few seeds


def test_mde_by_simulation():
    rng = np.random.default_rng(0)
    n, sd = 5, 1.0
    delta = stats.paired_mde(n, sd)
    d = rng.normal(delta, sd, size=(20_000, n))
    p = sps.ttest_1samp(d, 0.0, axis=1).pvalue
    assert (p < 0.05).mean() == pytest.approx(0.80, abs=0.015)


def test_paired_finds_a_small_constant_gain_under_shared_seed_noise_welch_does_not():
    rng = np.random.default_rng(1)
    seed_effect = rng.normal(0.0, 5.0, size=10)     # shared by both losses: batch order, init
    baseline = 60.0 + seed_effect
    method = baseline + 0.5 + rng.normal(0.0, 0.1, size=10)
    paired, unpaired = stats.paired(method, baseline), stats.welch(method, baseline)
    assert paired.p_value < 1e-6 and paired.ci_low > 0
    assert unpaired.p_value > 0.5 and unpaired.ci_low < 0 < unpaired.ci_high
    assert paired.mde < 0.5 < unpaired.mde
    assert paired.boot_low > 0 and paired.boot_low < paired.diff < paired.boot_high   # 10 pairs: bootstrap


def test_bootstrap_is_seeded():
    d = np.arange(12, dtype=float)
    assert stats.bootstrap_ci(d) == stats.bootstrap_ci(d)
    lo, hi = stats.bootstrap_ci(d)
    assert lo < d.mean() < hi


def test_edge_cases():
    one = stats.paired([1.0], [0.0])
    assert one.n_pairs == 1 and one.diff == 1.0 and math.isnan(one.ci_low) and math.isnan(one.p_value)
    assert math.isnan(stats.paired([], []).diff)
    same_gain = stats.paired([0.70, 0.72, 0.69], [0.50, 0.52, 0.49])   # equal up to float rounding
    assert same_gain.p_value == 0.0 and same_gain.ci_low == same_gain.ci_high == pytest.approx(0.2)
    assert same_gain.mde == 0.0
    none = stats.paired([0.3, 0.6, 0.1], [0.3, 0.6, 0.1])
    assert none.p_value == 1.0 and none.diff == 0.0 and (none.ci_low, none.ci_high) == (0.0, 0.0)
    two_equal = stats.paired([0.7, 0.8], [0.6, 0.7])   # two identical differences are too few to call exact
    assert two_equal.diff == pytest.approx(0.1) and math.isnan(two_equal.p_value)
    assert math.isnan(stats.welch([1.0], [0.0, 1.0]).p_value)


def test_pairs_on_the_seeds_both_sides_have():
    method = {0: 0.60, 1: 0.62, 2: 0.61, 3: 0.90}
    baseline = {0: 0.50, 1: 0.51, 2: 0.52, 4: 0.10}
    got = stats.compare(method, baseline)
    assert got.n_pairs == 3
    assert got.diff == pytest.approx(np.mean([0.10, 0.11, 0.09]))
    assert stats.compare(method, baseline, "welch").diff == pytest.approx(np.mean(list(method.values()))
                                                                          - np.mean(list(baseline.values())))
    with pytest.raises(ValueError):
        stats.compare(method, baseline, "mann-whitney")
