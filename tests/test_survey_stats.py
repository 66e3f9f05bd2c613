"""Survey statistics against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from dreamshot import stats


def test_wilson_interval_matches_hand_computation():
    # k=8, n=10, z=1.96: centre (0.8 + 1.9208/10) / 1.38416 = 0.71676,
    # half-width 1.96 * sqrt(0.016 + 0.009604) / 1.38416 = 0.22657
    low, high = stats.wilson(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)
    low, high = stats.wilson(0, 10)          # k = 0: low is 0, high = z² / (n + z²) = 0.2775
    assert low == 0.0 and high == pytest.approx(3.8415 / 13.8415, abs=1e-4)
    assert stats.wilson(0, 0) is None
    with pytest.raises(ValueError):
        stats.wilson(11, 10)


def test_sign_test_is_exact_two_sided():
    assert stats.sign_test(9, 1) == pytest.approx(22 / 1024)     # 2 * (C(10,0) + C(10,1)) / 2^10
    assert stats.sign_test(1, 9) == pytest.approx(22 / 1024)
    assert stats.sign_test(5, 5) == 1.0                          # capped at 1
    assert stats.sign_test(0, 0) == 1.0
    assert stats.sign_test(6, 0) == pytest.approx(2 / 64)        # 0.03125
    assert stats.sign_test(20, 0) == pytest.approx(2 / 2**20)


def test_fleiss_kappa_wikipedia_example():
    # The worked example of Fleiss (1971) as on Wikipedia: 10 items, 14 raters, 5 categories -> 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert stats.fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-4)
    # two raters, perfect agreement across two categories -> 1; all in one category -> 1
    assert stats.fleiss_kappa([[2, 0], [0, 2]]) == pytest.approx(1.0)
    assert stats.fleiss_kappa([[2, 0], [2, 0]]) == 1.0
    # systematic disagreement on two items: p_bar 0, p_e 0.5 -> -1
    assert stats.fleiss_kappa([[1, 1], [1, 1]]) == pytest.approx(-1.0)
    assert stats.fleiss_kappa([]) is None
    with pytest.raises(ValueError):
        stats.fleiss_kappa([[2, 0], [1, 0]])
    assert not math.isnan(stats.fleiss_kappa([[3, 0, 0], [0, 3, 0], [1, 1, 1]]))


def test_agreement_uses_shared_pairs_and_the_smallest_rating_count():
    from types import SimpleNamespace as Row

    from dreamshot.survey.results import _kappa, question_result

    rows = [Row(question="like", pair_id=1, choice=c) for c in ("lora", "lora", "lora")] + \
           [Row(question="like", pair_id=2, choice=c) for c in ("base", "base")] + \
           [Row(question="like", pair_id=3, choice="lora")]            # rated once: left out
    k = _kappa(rows)["like"]
    # items 1 and 2 with m = 2 ratings each: perfect agreement across two categories -> kappa 1
    assert (k["items"], k["raters"]) == (2, 2) and k["kappa"] == pytest.approx(1.0)
    assert _kappa(rows)["shot"] == {"kappa": None, "items": 0, "raters": 0}
    res = question_result("like", ["lora"] * 6 + ["base"] * 2 + ["neither"] * 2)
    assert (res.n, res.shares["lora"].count, res.shares["neither"].share) == (10, 6, 0.2)
    assert res.sign_p == pytest.approx(2 * (1 + 8 + 28) / 256)   # 6 vs 2, ties left out
