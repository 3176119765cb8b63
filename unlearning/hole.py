"""The hole of Obtuse's ``hole`` form: a potential Φ of the noisy log density ratio ℓ = log p_f,t / p_g,t
(nats), its gradient as a correction of the reference score, and where ℓ comes from (the toy's exact
ratio or a noisy classifier, ``unlearning/noisy_classifier.py``) with its threshold."""
import torch
from absl import logging

import datasets
from tensor_utils import append_dims
from unlearning import noisy_classifier
from unlearning.needs import NeedError


def hole_potential(log_ratio, depth, threshold, sharpness):
  """Φ(ℓ) = c · sigmoid(β (ℓ − ℓ*)) in nats: ~0 where the log density ratio ℓ = log p_f,t / p_g,t is below
  the threshold ℓ*, ~c (the hole's depth) above it; β (per nat of ℓ) sets how hard the edge is. ``[B] -> [B]``."""
  return depth * torch.sigmoid(sharpness * (log_ratio - threshold))


def get_hole_tilt_fn(log_ratio_fn, depth, threshold, sharpness):
  """``tilt_fn(x_t, t, std) -> σ_t ∇_x Φ(ℓ(x_t, t))`` (shape of ``x_t``, no gradient to the model).

  ``log_ratio_fn(x, t) -> [B]`` is log p_f,t(x) − log p_g,t(x) in nats, differentiable in ``x``: a noisy-data
  classifier's logit or an exact ratio (``noisy_classifier.mixture_log_ratio_fn``).
  """

  def tilt_fn(x_t, t, std):
    with torch.enable_grad():
      x = x_t.detach().requires_grad_(True)
      phi = hole_potential(log_ratio_fn(x, t), depth, threshold, sharpness)
      grad, = torch.autograd.grad(phi.sum(), x)
    return append_dims(std, x_t.ndim) * grad.detach()

  return tilt_fn


def load_log_ratio(config, data, sde, device):
  """The noisy log density ratio of ``config.unlearn.classifier`` (None when unset): 'exact' for data from a
  known mixture (the 2-D toy), else a noisy-classifier checkpoint. Resolves the hole's threshold."""
  spec = config.unlearn.classifier
  if not spec:
    return None
  if spec == 'exact':
    if data.density is None:
      raise NeedError(f"unlearn.classifier='exact' needs data from a known density (GMM2D), not {data.name}; "
                      'train a noisy classifier with --mode train_noisy_classifier')
    fn = noisy_classifier.mixture_log_ratio_fn(data.density, data.forget_indices, sde)
  else:
    fn = noisy_classifier.load_log_ratio_fn(spec, config, sde, data, device)
  resolve_hole_threshold(config, data, sde, fn, device)
  return fn


def resolve_hole_threshold(config, data, sde, log_ratio_fn, device):
  """With ``unlearn.hole_forget_fraction`` q > 0, sets ``unlearn.hole_log_ratio`` (in place) to the ℓ* above
  which a share q of the forget term's inputs lie: the D_f training items at t ~ U[max(eps, forget_t_min),
  forget_t_max] with seeded noise. Logs it; W/config.json then records the resolved value. Nothing for q = 0."""
  q = float(config.unlearn.get('hole_forget_fraction', 0.))
  if q == 0.:
    return
  items = datasets.get_data_iterator(data.train.forget, 1000, 0, shuffle=False, drop_last=False, infinite=False)
  x0 = [x for x, _ in items]
  x0 = datasets.get_data_scaler(config)(torch.cat(x0)).to(device) if x0 else torch.zeros(0)
  t_range = (max(float(config.training.eps), float(config.unlearn.forget_t_min)), float(config.unlearn.forget_t_max))
  gen = torch.Generator().manual_seed(datasets.derive_seed(config.seed, 'hole-threshold'))
  threshold = noisy_classifier.threshold_for_fraction(log_ratio_fn, x0, sde, t_range, q, gen)
  logging.info('unlearn.hole_log_ratio = %.4f: a share %.3g of the D_f training items at t in [%.3g, %.3g] has '
               'a larger log density ratio (unlearn.hole_forget_fraction)', threshold, q, *t_range)
  config.unlearn.hole_log_ratio = threshold


def hole_tilt(config, log_ratio_fn):
  """The tilt of ``config.unlearn.hole_*`` around ``log_ratio_fn``."""
  u = config.unlearn
  depth, threshold, sharpness = float(u.hole_depth), float(u.hole_log_ratio), float(u.hole_sharpness)
  if not (depth >= 0. and sharpness > 0.):
    raise ValueError(f'unlearn.hole_depth must be >= 0 and unlearn.hole_sharpness > 0, got {depth}, {sharpness}')
  return get_hole_tilt_fn(log_ratio_fn, depth, threshold, sharpness)
