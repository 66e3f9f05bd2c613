"""Small statistics shared by the features (the survey's Table 5, the evaluation's judge, the
label agreement); no numpy/scipy needed, exact where it matters.

- ``wilson``: the 95% Wilson score interval of a share k/n (better than ±1.96·SE for small n and
  shares near 0 or 1).
- ``sign_test``: two-sided exact sign test of "fine-tuned" vs "baseline" wins, ties left out
  (a binomial test of wins against p = 1/2).
- ``fleiss_kappa``: agreement of several raters on items, each item rated by the same number.
"""

from __future__ import annotations

import math
from fractions import Fraction

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """(low, high) of the Wilson score interval of k successes in n trials; None when n is 0."""
    if n <= 0:
        return None
    if not 0 <= k <= n:
        raise ValueError(f"k must be between 0 and n (k={k}, n={n})")
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact p-value of ``wins`` vs ``losses`` under H0 p = 1/2 (1.0 when both are 0)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2 ** n)
    return float(min(Fraction(1), 2 * tail))


def fleiss_kappa(table: list[list[int]]) -> float | None:
    """``table[i][j]``: raters who put item i in category j; every row must sum to the same n >= 2.
    None for no items; 1.0 when every rating falls in one category (no chance to disagree)."""
    if not table:
        return None
    n = sum(table[0])
    if n < 2 or any(sum(row) != n for row in table):
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of ratings per item")
    items = len(table)
    p_j = [sum(row[j] for row in table) / (items * n) for j in range(len(table[0]))]
    p_i = [(sum(x * x for x in row) - n) / (n * (n - 1)) for row in table]
    p_bar, p_e = sum(p_i) / items, sum(p * p for p in p_j)
    if p_e >= 1:
        return 1.0
    return (p_bar - p_e) / (1 - p_e)
