"""Small statistics for the evaluation reports: Wilson score intervals and mean ± standard error.

Pure functions of their inputs (numbers, sequences, numpy arrays or torch tensors); no randomness.
"""
import math
from typing import TYPE_CHECKING, NamedTuple, Sequence, Tuple, Union

import numpy as np

if TYPE_CHECKING:
  import torch

#: the two-sided 95 % standard-normal quantile, Φ⁻¹(0.975).
Z95 = 1.959964


def wilson_interval(k: int, n: int, z: float = Z95) -> Tuple[float, float]:
  """Wilson score interval for a binomial proportion: ``k`` successes out of ``n`` trials.

  Returns ``(lo, hi)`` as fractions in ``[0, 1]`` (multiply by 100 for percent):

      centre = (p + z²/2n) / (1 + z²/n),  half = z / (1 + z²/n) · sqrt(p(1-p)/n + z²/4n²),  p = k/n.

  ``z = 1.959964`` gives the 95 % interval. Unlike the normal (Wald) interval it stays inside
  ``[0, 1]`` and has a non-zero width at ``k = 0`` and ``k = n``. Raises ``ValueError`` unless
  ``0 <= k <= n`` and ``n > 0``.
  """
  k, n = int(k), int(n)
  if n <= 0:
    raise ValueError(f'the Wilson interval needs n > 0 trials, got n = {n}')
  if not 0 <= k <= n:
    raise ValueError(f'the Wilson interval needs 0 <= k <= n, got k = {k}, n = {n}')
  if z <= 0:
    raise ValueError(f'z must be positive, got {z}')
  p = k / n
  z2 = z * z
  denom = 1. + z2 / n
  centre = (p + z2 / (2. * n)) / denom
  half = z / denom * math.sqrt(p * (1. - p) / n + z2 / (4. * n * n))
  # Exact endpoints at the boundaries (the formula gives them up to rounding).
  lo = 0. if k == 0 else max(0., centre - half)
  hi = 1. if k == n else min(1., centre + half)
  return lo, hi


class MeanSEM(NamedTuple):
  """``mean``, ``sem`` (standard error of the mean, ddof = 1; NaN when ``n < 2``) and ``n``."""
  mean: float
  sem: float
  n: int

  def to_dict(self) -> dict:
    """``{'mean', 'sem', 'n'}`` (the results.json layout); a NaN SEM becomes None (valid JSON)."""
    return {'mean': self.mean, 'sem': None if math.isnan(self.sem) else self.sem, 'n': self.n}


def mean_sem(values: Union[Sequence[float], np.ndarray, 'torch.Tensor']) -> MeanSEM:
  """Mean, standard error of the mean ``std(ddof=1) / sqrt(n)`` and count of ``values`` (any shape,
  flattened), computed in float64. Raises ``ValueError`` for no values or non-finite ones."""
  if hasattr(values, 'detach'):  # a torch tensor
    values = values.detach().cpu().double().numpy()
  arr = np.asarray(values, dtype=np.float64).reshape(-1)
  n = int(arr.size)
  if n == 0:
    raise ValueError('mean_sem needs at least one value')
  if not np.isfinite(arr).all():
    raise ValueError(f'mean_sem got {int((~np.isfinite(arr)).sum())} non-finite value(s)')
  mean = float(arr.mean())
  sem = float(arr.std(ddof=1) / math.sqrt(n)) if n > 1 else float('nan')
  return MeanSEM(mean, sem, n)


def paired_difference(a, b) -> MeanSEM:
  """Mean ± SEM of the per-item differences ``b − a`` of two measurements of the same items (same order).

  Paired: what both share item by item (how hard each test point is) cancels, so the SEM is that of
  the differences, often far below either run's own SEM. Raises ``ValueError`` for unequal lengths.
  """
  a = np.asarray(a.detach().cpu().double().numpy() if hasattr(a, 'detach') else a, dtype=np.float64).reshape(-1)
  b = np.asarray(b.detach().cpu().double().numpy() if hasattr(b, 'detach') else b, dtype=np.float64).reshape(-1)
  if a.size != b.size:
    raise ValueError(f'a paired difference needs the same items in both runs, got {a.size} and {b.size} values')
  return mean_sem(b - a)
