"""Tests of evaluation/stats.py: Wilson intervals against the closed form and known values; mean ± SEM."""
import math

import numpy as np
import pytest
import torch

from evaluation.stats import Z95, mean_sem, wilson_interval


def wilson_by_quadratic(k, n, z):
  """The Wilson bounds as the roots p of (p̂ - p)² = z² p (1 - p) / n, solved independently."""
  ph = k / n
  a = 1 + z * z / n
  b = -(2 * ph + z * z / n)
  c = ph * ph
  disc = math.sqrt(b * b - 4 * a * c)
  return (-b - disc) / (2 * a), (-b + disc) / (2 * a)


@pytest.mark.parametrize('k,n,expected', [
  (0, 10, (0.0, 0.27753)),      # upper bound z²/(n + z²) at k = 0
  (5, 10, (0.23659, 0.76341)),
  (50, 100, (0.40383, 0.59617)),
  (10, 10, (0.72247, 1.0)),
  (3, 1000, (0.0010208, 0.0087830)),
])
def test_wilson_interval_known_values(k, n, expected):
  lo, hi = wilson_interval(k, n)
  assert lo == pytest.approx(expected[0], abs=2e-5)
  assert hi == pytest.approx(expected[1], abs=2e-5)
  qlo, qhi = wilson_by_quadratic(k, n, Z95)
  assert lo == pytest.approx(max(qlo, 0.), abs=1e-12)
  assert hi == pytest.approx(min(qhi, 1.), abs=1e-12)


def test_wilson_interval_boundaries_and_z():
  assert wilson_interval(0, 10)[0] == 0.0
  assert wilson_interval(0, 10)[1] == pytest.approx(Z95 ** 2 / (10 + Z95 ** 2), rel=1e-12)
  assert wilson_interval(10, 10)[1] == 1.0
  narrow, wide = wilson_interval(30, 100, z=1.0), wilson_interval(30, 100, z=2.575829)
  assert wide[0] < narrow[0] < 0.3 < narrow[1] < wide[1]


@pytest.mark.parametrize('k,n', [(1, 0), (-1, 10), (11, 10)])
def test_wilson_interval_rejects_bad_counts(k, n):
  with pytest.raises(ValueError):
    wilson_interval(k, n)


def test_mean_sem():
  m = mean_sem([1., 2., 3., 4.])
  assert m.mean == 2.5 and m.n == 4
  assert m.sem == pytest.approx(math.sqrt(((1.5 ** 2 + 0.5 ** 2) * 2) / 3) / 2, rel=1e-12)
  mean, sem, n = mean_sem(torch.tensor([[1., 3.], [5., 7.]]))
  assert (mean, n) == (4., 4) and sem == pytest.approx(np.std([1, 3, 5, 7], ddof=1) / 2)
  assert m.to_dict() == {'mean': 2.5, 'sem': m.sem, 'n': 4}
  one = mean_sem(np.array([3.]))
  assert math.isnan(one.sem) and one.to_dict() == {'mean': 3., 'sem': None, 'n': 1}
  with pytest.raises(ValueError):
    mean_sem([])
  with pytest.raises(ValueError):
    mean_sem([1., float('nan')])
