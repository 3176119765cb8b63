"""Loss-based membership inference on D_f: are the forgotten training items still recognisable?

A model that trained on an item tends to denoise it better than an item of the same classes it never
saw. The test compares the per-item denoising loss of D_f **training** items (members) with that of D_f
**test** items (non-members) under the model's EMA weights:

    L(x) = (1/J) Σ_j λ(t_j) ‖s_θ(m_t_j x + σ_t_j z_j, t_j) − ∇ log p_0t_j‖²     (the training loss, per item)

with J fixed draws (t_j, z_j) seeded from ``config.seed``: t stratified on [max(eps, mia.t_min), mia.t_max]
(one draw per stratum), z_j ~ N(0, I). The same draws serve every item and every model (common random
numbers), so the comparison is between items and between models, never between noise draws. The
weighting, reduction and time parametrisation are the run's (``training.continuous``, ``reduce_mean``,
``likelihood_weighting``; discrete training maps t to the level ⌊t·N⌋).

The statistic is the AUC of "lower loss = member": P(L(non-member) > L(member)) + ½ P(tie), the
Mann–Whitney U divided by n_m·n_n (``scipy.stats.mannwhitneyu``), with DeLong's standard error and a
two-sided p-value. 0.5: the training items are not recognisable; 1: every training item has a lower loss
than every held-out one. Caveats (docs/evaluation.md): the two sides must come from one distribution (a
train/test split that differs by itself moves the AUC, so compare with Unseen's AUC, which never saw
either side); a small, well-regularised model has an AUC near 0.5 even before unlearning (nothing to hide).
"""
import math
from typing import NamedTuple, Tuple

import numpy as np
import torch
from scipy import stats as scipy_stats

import datasets
import losses
from configs import default_configs
from evaluation.stats import Z95, mean_sem


class MIASettings(NamedTuple):
  """``num_items`` per side (0: all), ``num_draws`` J, and the time range ``(t_lo, t_hi)``."""
  num_items: int
  num_draws: int
  t_range: Tuple[float, float]


def get_settings(config, sde=None) -> MIASettings:
  """The validated ``config.mia``; one ``ValueError`` line per bad value."""
  m = config.mia
  n, j = int(m.num_items), int(m.num_draws)
  if n < 0:
    raise ValueError(f'mia.num_items must be >= 0 (0 = all items), got {m.num_items}')
  if j < 1:
    raise ValueError(f'mia.num_draws must be positive, got {m.num_draws}')
  t_max_sde = float(sde.T) if sde is not None else 1.
  lo, hi = max(float(config.training.eps), float(m.t_min)), min(float(m.t_max), t_max_sde)
  if not (0. <= float(m.t_min) < float(m.t_max) <= t_max_sde) or not lo < hi:
    raise ValueError(f'mia.t_min/t_max must satisfy 0 <= t_min < t_max <= {t_max_sde:g} (and t_max > '
                     f'training.eps), got {m.t_min}, {m.t_max}')
  return MIASettings(n, j, (lo, hi))


def fixed_draws(num_draws, shape, t_range, seed):
  """``(t [J] float32, z [J, *shape] float32)`` on the CPU: t stratified on ``t_range`` (draw j uniform in the
  j-th of J equal strata), z standard normal; a function of ``seed`` only."""
  g = torch.Generator().manual_seed(int(seed))
  j = int(num_draws)
  lo, hi = t_range
  u = (torch.arange(j, dtype=torch.float64) + torch.rand(j, generator=g, dtype=torch.float64)) / j
  t = (lo + u * (hi - lo)).to(torch.float32)
  z = torch.randn((j,) + tuple(shape), generator=g)
  return t, z


def item_losses(model, sde, x, t, z, reduce_mean=True, likelihood_weighting=False, continuous=True,
                batch_size=512):
  """float64 ``[N]``: each item's denoising loss, averaged over the draws ``(t [J], z [J, ...])``.

  ``x`` ``[N, ...]`` scaled items on the model's device; every item sees every draw. ``batch_size`` bounds
  the rows (items × draws) per forward pass. Eval mode, no gradients."""
  j = int(t.shape[0])
  device = x.device
  t, z = t.to(device), z.to(device)
  per = max(1, int(batch_size) // j)
  out = []
  with torch.no_grad():
    for start in range(0, x.shape[0], per):
      xb = x[start:start + per]
      b = xb.shape[0]
      x_rep = xb.repeat_interleave(j, dim=0)
      z_rep = z.repeat((b,) + (1,) * (z.ndim - 1))
      t_rep = t.repeat(b)
      if continuous:
        p = losses.perturb_continuous(sde, model, x_rep, False, likelihood_weighting, t=t_rep, z=z_rep)
      else:
        index = (t_rep * sde.N).long().clamp(0, sde.N - 1)
        p = losses.perturb_discrete(sde, model, x_rep, False, index=index, z=z_rep)
      out.append(losses.dsm_loss(p, reduce_mean).reshape(b, j).double().mean(dim=1).cpu())
  return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def delong_se(member, nonmember) -> float:
  """DeLong's standard error of the AUC P(non-member loss > member loss) + ½ P(tie), from the placement
  values (midranks); NaN with fewer than two items on a side."""
  a = np.asarray(nonmember, dtype=np.float64)
  b = np.asarray(member, dtype=np.float64)
  na, nb = a.size, b.size
  if na < 2 or nb < 2:
    return float('nan')
  both = scipy_stats.rankdata(np.concatenate([a, b]))
  v_a = (both[:na] - scipy_stats.rankdata(a)) / nb          # share of members below each non-member
  v_b = 1. - (both[na:] - scipy_stats.rankdata(b)) / na     # share of non-members above each member
  return float(math.sqrt(v_a.var(ddof=1) / na + v_b.var(ddof=1) / nb))


def membership_auc(member, nonmember, z=Z95) -> dict:
  """The AUC of "lower loss = member" for per-item losses of members and non-members (1-D, finite).

  Returns ``{'auc', 'se' (DeLong; None when undefined), 'ci95' ([lo, hi], normal, clipped to [0, 1]),
  'p_value' (two-sided Mann–Whitney), 'n_member', 'n_nonmember'}``; ``ValueError`` for an empty side or
  non-finite values."""
  m = np.asarray(member, dtype=np.float64).reshape(-1)
  n = np.asarray(nonmember, dtype=np.float64).reshape(-1)
  if m.size == 0 or n.size == 0:
    raise ValueError(f'the membership AUC needs items on both sides, got {m.size} members and {n.size} non-members')
  if not (np.isfinite(m).all() and np.isfinite(n).all()):
    raise ValueError('the membership AUC got non-finite losses')
  res = scipy_stats.mannwhitneyu(n, m, alternative='two-sided')
  auc = float(res.statistic) / (m.size * n.size)
  se = delong_se(m, n)
  ok = math.isfinite(se)
  ci = [max(0., auc - z * se), min(1., auc + z * se)] if ok else [None, None]
  return {'auc': auc, 'se': se if ok else None, 'ci95': ci, 'p_value': float(res.pvalue), 'n_member': int(m.size),
          'n_nonmember': int(n.size)}


def _subset(view, n, seed):
  """The first ``n`` (0: all) items of a permutation of ``view`` seeded by ``seed``, loaded (CPU)."""
  from evaluation.relearn import load_items
  count = len(view) if n == 0 else min(n, len(view))
  idx = torch.randperm(len(view), generator=torch.Generator().manual_seed(int(seed)))[:count]
  return load_items(datasets.IndexView(view, idx))


def membership(config, model, sde, data, device) -> dict:
  """The loss-based membership test of ``model`` (its current weights: pass the EMA weights) on D_f: the
  results.json entry ``"membership"`` (``membership_auc``'s keys plus the mean loss of each side, the draws
  and time range). ``FloatingPointError`` when a loss is not finite."""
  config = default_configs.with_defaults(config)
  s = get_settings(config, sde)
  if len(data.train.forget) == 0 or len(data.test.forget) == 0:
    raise ValueError('the membership test needs D_f items in both the training and the test split')
  tc = config.training
  scaler = datasets.get_data_scaler(config)
  t, z = fixed_draws(s.num_draws, data.shape, s.t_range, datasets.derive_seed(config.seed, 'mia', 'draws'))
  model.eval()
  side = {}
  for name, split in (('member', 'train'), ('nonmember', 'test')):
    x = _subset(data.split(split).forget, s.num_items, datasets.derive_seed(config.seed, 'mia', split))
    side[name] = item_losses(model, sde, scaler(x.to(device)), t, z, tc.reduce_mean, tc.likelihood_weighting,
                             tc.continuous, int(config.eval.batch_size))
    bad = int((~torch.isfinite(side[name])).sum())
    if bad:
      raise FloatingPointError(f'the denoising loss of {bad} D_f {split} items is not finite')
  out = membership_auc(side['member'], side['nonmember'])
  out.update({'loss_member': mean_sem(side['member']).to_dict(), 'loss_nonmember': mean_sem(side['nonmember']).to_dict(),
              'num_draws': s.num_draws, 't_range': list(s.t_range), 'continuous': bool(tc.continuous),
              'score': 'denoising loss, lower = member', 'seed': int(config.seed)})
  return out


def membership_of_checkpoint(config, ckpt_path, device=None) -> dict:
  """``membership`` of one checkpoint's EMA weights, without writing anything (for benchmarks)."""
  import run_lib
  import sde_lib
  config = default_configs.with_defaults(config)
  device = run_lib.resolve_device(config.device if device is None else device)
  data = datasets.get_dataset(config, evaluation=True)
  sde = sde_lib.get_sde(config)
  model, state = run_lib.load_ema_model(config, ckpt_path, device)
  out = membership(config, model, sde, data, device)
  out.update({'checkpoint': ckpt_path, 'step': int(state['step'])})
  return out
