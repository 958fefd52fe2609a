"""Routing metrics on small cases computed by hand (see export/metrics.py for the definitions)."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from export import metrics as m


def test_metrics_module_does_not_import_torch() -> None:
    code = "import sys, export.metrics; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# Four prompts: gains (strong - weak) = [1, 1, 0, -1]; total gap G(n) = 1.
WEAK4 = [0.0, 0.0, 1.0, 1.0]
STRONG4 = [1.0, 1.0, 1.0, 0.0]


def test_perfect_router() -> None:
    oracle = np.subtract(STRONG4, WEAK4)  # scores = gains: G(k) = [0, 1, 2, 2, 1]
    assert m.cumulative_gain(oracle, WEAK4, STRONG4).tolist() == [0, 1, 2, 2, 1]
    # Integral of G(4f) over [0, 1] = (0.5 + 1.5 + 2 + 1.5) / 4; the grid hits every kink.
    assert m.apgr(oracle, WEAK4, STRONG4) == pytest.approx(1.375)
    assert m.cpt(oracle, WEAK4, STRONG4, 0.5) == pytest.approx(0.125)  # G = 0.5 at k = 0.5
    assert m.cpt(oracle, WEAK4, STRONG4, 0.8) == pytest.approx(0.2)
    # 95% of all-strong quality: 0.95 * 3 - sum(weak)=2 -> G >= 0.85 at k = 0.85.
    assert m.strong_share_at(oracle, WEAK4, STRONG4, 0.95) == pytest.approx(0.85 / 4)
    assert m.auc(oracle, m.strong_needed(WEAK4, STRONG4)) == 1.0


def test_constant_score_is_random_routing() -> None:
    const = np.full(4, 0.3)
    assert m.apgr(const, WEAK4, STRONG4) == pytest.approx(0.5)
    assert m.cpt(const, WEAK4, STRONG4, 0.5) == pytest.approx(0.5)
    assert m.cpt(const, WEAK4, STRONG4, 0.8) == pytest.approx(0.8)
    assert m.strong_share_at(const, WEAK4, STRONG4, 0.95) == pytest.approx(0.85)
    assert m.auc(const, m.strong_needed(WEAK4, STRONG4)) == 0.5
    np.testing.assert_allclose(m.pgr_curve(const, WEAK4, STRONG4), m.GRID, atol=1e-12)
    rnd = m.random_metrics(WEAK4, STRONG4)
    assert rnd.apgr == pytest.approx(0.5) and rnd.cpt50 == pytest.approx(0.5)


def test_random_routing_is_half_on_any_data() -> None:
    rng = np.random.default_rng(0)
    weak = rng.integers(0, 2, 500).astype(float)
    strong = np.maximum(weak, rng.integers(0, 2, 500))
    assert m.random_metrics(weak, strong).apgr == pytest.approx(0.5, abs=1e-12)


def test_ties_count_at_their_expected_value() -> None:
    weak, strong = [0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 1.0, 1.0]  # gains [1, 0, 0, 0]
    tied = [1.0, 1.0, 0.0, 0.0]  # the top group holds the gain once in two prompts
    assert m.cumulative_gain(tied, weak, strong).tolist() == [0, 0.5, 1, 1, 1]
    assert m.apgr(tied, weak, strong) == pytest.approx((0.25 + 0.75 + 1 + 1) / 4)
    assert m.cpt(tied, weak, strong, 0.5) == pytest.approx(0.25)  # G = 0.5 at k = 1
    assert m.cpt(tied, weak, strong, 1.0) == pytest.approx(0.5)
    untied = [2.0, 1.0, 0.0, 0.0]
    assert m.apgr(untied, weak, strong) == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    # AUC: the positive ties one negative (1/2) and beats two: 2.5 / 3.
    assert m.auc(tied, m.strong_needed(weak, strong)) == pytest.approx(2.5 / 3)
    # Tie handling does not depend on input order.
    perm = [3, 1, 0, 2]
    assert m.apgr(np.take(tied, perm), np.take(weak, perm), np.take(strong, perm)) == pytest.approx(
        m.apgr(tied, weak, strong)
    )


def test_known_small_case() -> None:
    scores = [0.9, 0.8, 0.7, 0.2, 0.1]
    weak = [0.0, 1.0, 0.0, 1.0, 0.0]
    strong = [1.0, 1.0, 0.0, 0.0, 1.0]  # gains in score order [1, 0, 0, -1, 1]: G = [0,1,1,1,0,1]
    res = m.routing_metrics(scores, weak, strong)
    assert res.n == 5
    assert res.apgr == pytest.approx((0.5 + 1 + 1 + 0.5 + 0.5) / 5)
    assert res.cpt50 == pytest.approx(0.1)
    assert res.cpt80 == pytest.approx(0.16)
    assert res.strong_share_at_95 == pytest.approx(0.17)  # 0.95 * 3 - 2 = 0.85 -> k = 0.85
    assert res.auc == pytest.approx(0.5)  # positives 0.9 (beats 3 of 3) and 0.1 (beats 0)
    assert res.perf_weak == pytest.approx(0.4) and res.perf_strong == pytest.approx(0.6)
    perf = m.quality_curve(scores, weak, strong, [0.0, 0.2, 0.7, 1.0])
    np.testing.assert_allclose(perf, [0.4, 0.6, 0.5, 0.6])


def test_no_quality_gap_gives_nan_and_weak_already_good_enough() -> None:
    weak, strong = [1.0, 0.0], [0.0, 1.0]  # equal quality: nothing to recover
    res = m.routing_metrics([0.1, 0.9], weak, strong)
    assert math.isnan(res.apgr) and math.isnan(res.cpt50)
    assert res.strong_share_at_95 == 0.0  # weak alone already has 100% of strong's quality
    assert res.as_dict()["apgr"] is None
    assert res.auc == 1.0


def test_auc_single_class_is_nan_and_lengths_checked() -> None:
    assert math.isnan(m.auc([0.1, 0.2], [True, True]))
    with pytest.raises(ValueError):
        m.routing_metrics([0.1], [0.0, 1.0], [1.0, 1.0])


def test_threshold_for_share() -> None:
    scores = [0.1, 0.4, 0.3, 0.9]
    assert m.threshold_for_share(scores, 0.5) == 0.4  # score >= 0.4 selects 2 of 4
    assert m.threshold_for_share(scores, 1.0) == 0.1
    assert m.threshold_for_share(scores, 0.0) > 0.9


def test_average_ranks_and_spearman_with_ties() -> None:
    assert m.average_ranks([0.3, 0.1, 0.3, 0.2]).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert m.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert m.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties share ranks: [1, 2.5, 2.5, 4] against [1, 2, 3, 4] -> r = 4.5 / sqrt(4.5 * 5)
    assert m.spearman([0, 1, 1, 2], [0, 1, 2, 3]) == pytest.approx(4.5 / np.sqrt(4.5 * 5.0))
    assert m.spearman([0.5], [0.7]) == 1.0
    assert m.spearman([0.4, 0.4, 0.4], [0.6, 0.6, 0.6]) == 1.0  # neither side orders anything: they agree
    assert math.isnan(m.spearman([0.4, 0.4, 0.4], [0.1, 0.2, 0.3]))
