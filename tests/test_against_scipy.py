"""The hand-written statistics checked against scipy's: Spearman's rho (synth validate's ranking), the
Wasserstein-1 distance (synth's intensity goal) and the binomial tail behind LoadGen's early-stopping count.
They stay hand-written because cnnbench itself does not depend on scipy (the test extra does)."""

from __future__ import annotations

import math
import random

import pytest

stats = pytest.importorskip("scipy.stats", reason="scipy is in the test extra: ./setup.sh --test")

from cnnbench.tools.loadgen import EARLY_STOPPING_CONFIDENCE, early_stopping_queries  # noqa: E402
from cnnbench.tools.synth import wasserstein  # noqa: E402
from cnnbench.tools.synth_validation import spearman  # noqa: E402


@pytest.mark.parametrize("seed", range(5))
def test_spearman_equals_scipys_with_and_without_ties(seed):
    rng = random.Random(seed)
    a = [rng.random() for _ in range(12)]
    b = [x + rng.gauss(0, 0.3) for x in a]
    tied_a = [round(x, 1) for x in a]  # ties get their mean rank in both
    tied_b = [round(x, 1) for x in b]
    for x, y in ((a, b), (tied_a, tied_b), (a, list(reversed(a)))):
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_spearman_of_a_constant_side_is_undefined_as_in_scipy():
    assert math.isnan(spearman([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]))
    with pytest.warns(stats.ConstantInputWarning):
        assert math.isnan(stats.spearmanr([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]).statistic)


@pytest.mark.parametrize("seed", range(5))
def test_wasserstein_equals_scipys_on_weighted_samples(seed):
    rng = random.Random(seed)
    a = [(rng.uniform(0, 10), rng.uniform(0.1, 5)) for _ in range(rng.randint(1, 20))]
    b = [(rng.uniform(2, 12), rng.uniform(0.1, 5)) for _ in range(rng.randint(1, 20))]
    expected = stats.wasserstein_distance([x for x, _ in a], [x for x, _ in b], [w for _, w in a], [w for _, w in b])
    assert wasserstein(a, b) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert wasserstein(a, a) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("percentile, over_share", [(0.99, 0.0), (0.99, 0.005), (0.90, 0.0), (0.90, 0.05), (0.999, 0.0)])
def test_early_stopping_count_is_the_first_n_whose_binomial_tail_is_under_one_minus_confidence(percentile, over_share):
    n = early_stopping_queries(percentile, over_share)
    alpha = 1 - EARLY_STOPPING_CONFIDENCE

    def tail(m: int) -> float:
        return stats.binom.cdf(math.floor(over_share * m), m, 1 - percentile)

    assert tail(n) < alpha
    assert all(tail(m) >= alpha for m in range(max(1, n - 50), n))  # no smaller count passes
