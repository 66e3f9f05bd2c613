"""Metric code against hand-computed numbers; the judge on a separable toy set."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dreamshot.errors import InvalidInput
from dreamshot.evaluate import metrics
from dreamshot.evaluate.judge import LinearProbe, build_judge, confusion, retrieve, stratified_split


def test_cosines_match_hand_computed_values():
    a = np.array([[1.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    b = np.array([[0.0, 2.0], [3.0, 4.0], [1.0, 0.0]])
    assert metrics.cosine_rows(a, b) == pytest.approx([0.0, 1.0, 1 / math.sqrt(2)])
    assert metrics.cosine_rows([[2.0, 0.0]], [[-5.0, 0.0]]) == pytest.approx([-1.0])


def test_embedders_normalise_so_dot_is_cosine():
    from dreamshot.evaluate.embedders import normalize

    x = normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert x[0] == pytest.approx([0.6, 0.8]) and x[1].tolist() == [0.0, 0.0]


def test_paired_bootstrap_mean_difference_and_interval():
    base = [0.30, 0.40, 0.50, 0.20]
    tuned = [0.35, 0.45, 0.58, 0.22]       # differences 0.05, 0.05, 0.08, 0.02: mean 0.05
    row = metrics.paired_bootstrap(base, tuned, samples=4000, seed=1)
    assert row["n"] == 4 and row["base"] == pytest.approx(0.35) and row["tuned"] == pytest.approx(0.40)
    assert row["diff"] == pytest.approx(0.05)
    assert 0.02 <= row["ci_low"] < 0.05 < row["ci_high"] <= 0.08   # inside the range of the differences
    assert metrics.paired_bootstrap(base, tuned, samples=4000, seed=1) == row      # seeded
    same = metrics.paired_bootstrap([0.1, 0.2], [0.3, 0.4], samples=500)
    assert same["ci_low"] == pytest.approx(0.2) and same["ci_high"] == pytest.approx(0.2)
    assert metrics.paired_bootstrap([], [])["diff"] is None


def test_wilson_interval_known_values():
    low, high = metrics.wilson(8, 10)       # textbook: 0.490 - 0.943
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert metrics.wilson(0, 0) == (None, None)
    assert metrics.wilson(0, 5)[0] == 0.0


def test_tables_per_shot():
    scores = [{"shot": s, "base": {"clip_t": b}, "tuned": {"clip_t": t}}
              for s, b, t in (("close", 0.1, 0.3), ("close", 0.2, 0.4), ("long", 0.5, 0.4))]
    table = metrics.table(scores, "clip_t", samples=100)
    assert table["overall"]["diff"] == pytest.approx((0.2 + 0.2 - 0.1) / 3)
    assert table["per_shot"]["close"]["diff"] == pytest.approx(0.2) and table["per_shot"]["long"]["n"] == 1


def toy(n_per_class=20, seed=0):
    rng = np.random.default_rng(seed)
    centres = {"close": [3, 0, 0, 0], "medium": [0, 3, 0, 0], "long": [0, 0, 3, 0]}
    x, y = [], []
    for cls, c in centres.items():
        x.append(rng.normal(c, 0.5, size=(n_per_class, 4)))
        y += [cls] * n_per_class
    return np.concatenate(x), y


def test_linear_probe_separates_a_toy_set_and_reports_itself():
    x, y = toy()
    classes = ["close", "medium", "long"]
    probe = LinearProbe(classes).fit(x, y)
    assert probe.predict(x) == y
    texts = np.eye(3, 4)
    judge = build_judge("auto", classes, texts, x, y, min_per_class=8)
    assert judge.kind == "probe" and judge.report["accuracy"] == 1.0
    assert judge.report["n"] == 15 and sum(map(sum, judge.report["confusion"])) == 15
    assert judge.report["accuracy_ci"][0] > 0.7
    shuffled = list(np.random.default_rng(3).permutation(y))   # labels unrelated to features
    noisy = build_judge("probe", classes, texts, x, shuffled, min_per_class=8)
    assert noisy.report["accuracy"] < 0.8


def test_zero_shot_fallback_and_refusals():
    x, y = toy(n_per_class=3)
    classes = ["close", "medium", "long"]
    texts = np.eye(3, 4)
    judge = build_judge("auto", classes, texts, x, y, min_per_class=8)
    assert judge.kind == "zeroshot" and "fewer than 8" in judge.report["reason"]
    assert judge.predict(np.array([[0, 0, 1.0, 0]])) == ["long"]
    assert judge.report["accuracy"] == 1.0           # measured on the labels there are
    with pytest.raises(InvalidInput, match="at least 8 labeled frames"):
        build_judge("probe", classes, texts, x, y, min_per_class=8)
    with pytest.raises(InvalidInput, match="Unknown judge"):
        build_judge("magic", classes, texts, x, y)


def test_retrieval_confusion_and_split():
    assert retrieve(np.array([[1.0, 0.1], [0.0, 1.0]]), np.eye(2), ["a", "b"]) == ["a", "b"]
    assert confusion(["a", "a", "b"], ["a", "b", "b"], ["a", "b"]) == [[1, 1], [0, 1]]
    train, test = stratified_split(["a"] * 8 + ["b"] * 4, seed=0)
    assert len(test) == 3 and not set(train) & set(test) and len(train) + len(test) == 12
