"""Training objectives: denoising score matching and the MSGM forget terms, as per-sample losses.

Notation (``x_t = m_t x_0 + σ_t z``, ``z ~ N(0, I)``):
  * ``s = s_θ(x_t, t)`` the model's score; ``∇ = ∇_{x_t} log p_0t(x_t | x_0) = -z / σ_t`` the target;
  * ``ŝ = σ_t s`` the σ-scaled score (``ŝ = -ε̂`` for networks that predict the noise ε̂);
  * ``λ(t)`` the weighting: ``σ_t²`` by default, ``g(t)²`` with ``likelihood_weighting``
    (continuous training only); ``w(t) = λ(t) / σ_t²`` (1 by default);
  * ``R`` the reduction over data dimensions: the mean when ``reduce_mean``, else ``0.5 ×`` the sum
    (score_sde's convention). A term written with Σ over dimensions is divided by D, or halved, once.

Per-sample terms (each ``[B]``; see the functions below for the formulas in noise form):
  * ``dsm``         L_g = λ ‖s − ∇‖²                       = w ‖ε̂ − z‖²              (score_sde's loss)
  * ``obtuse``      L_f = λ ⟨s, ∇⟩       (paper sign)      = w ⟨ε̂, z⟩
  * ``orthogonal``  L_f = λ ⟨s, ∇⟩²      (paper, dot)       = w ⟨ε̂, z⟩² / σ_t²
                    L_f = Σ_i (σ² s_i ∇_i)² (official, elementwise, no likelihood weighting) = Σ_i (ε̂_i z_i)²
                    L_f = g² Σ_i (s_i ∇_i)² (official, elementwise, likelihood weighting)
  * ``erase``       L_f = ‖ŝ + u‖², u ~ U[0, 1)  (official ``erase``: ε̂ regressed onto uniform noise; no g²)
  * extensions of ``obtuse`` (``unlearn.obtuse_form``, docs/unlearning.md): ``target``, ``ratio``,
    ``negative_dsm`` and ``hole`` (the reference score minus ∇Φ of a noisy log density ratio)

The retain/forget mix and the reduction over the batch happen in one place, the step functions.
"""
import dataclasses

import torch
import torch.optim as optim

from models import utils as mutils
from tensor_utils import append_dims
from configs import default_configs


# ----------------------------------------------------------------------------------------------------------
# Optimisation


def get_optimizer(config, params):
  """The optimiser named by ``config.optim.optimizer`` (only Adam, as in the official code)."""
  config = default_configs.with_defaults(config)
  if config.optim.optimizer != 'Adam':
    raise ValueError(f"unknown optimizer '{config.optim.optimizer}'; valid: Adam")
  return optim.Adam(params, lr=config.optim.lr, betas=(config.optim.beta1, 0.999), eps=config.optim.eps,
                    weight_decay=config.optim.weight_decay, amsgrad=config.optim.get('amsgrad', False))


def optimization_manager(config):
  """``optimize_fn(optimizer, params, step)``: linear learning-rate warm-up, gradient-norm clipping, step."""
  config = default_configs.with_defaults(config)

  def optimize_fn(optimizer, params, step, lr=config.optim.lr, warmup=config.optim.warmup,
                  grad_clip=config.optim.grad_clip):
    if warmup > 0:
      for g in optimizer.param_groups:
        g['lr'] = lr * min(step / warmup, 1.0)
    if grad_clip >= 0:
      torch.nn.utils.clip_grad_norm_(params, max_norm=grad_clip)
    optimizer.step()

  return optimize_fn


# ----------------------------------------------------------------------------------------------------------
# Perturbation of a batch and the model's σ-scaled score


@dataclasses.dataclass
class Perturbed:
  """A noised batch and what the model said about it. Shapes: ``[B, ...]`` and ``[B]``."""
  scaled_score: torch.Tensor  # ŝ = σ_t s_θ(x_t, t)
  z: torch.Tensor             # the noise: x_t = m_t x_0 + σ_t z
  std: torch.Tensor           # σ_t, [B]
  weight: torch.Tensor        # w(t) = λ(t) / σ_t², [B]
  g2: torch.Tensor            # g(t)² [B] (continuous) or None (discrete)
  reference: torch.Tensor = None  # σ_t s_ref(x_t, t) of a frozen reference model, when one is used
  tilt: torch.Tensor = None       # σ_t ∇_x Φ(ℓ(x_t, t)): the hole's correction (``obtuse_form='hole'``)


def _model_scaled_score(sde, model_fn, x_t, labels, std):
  out = model_fn(x_t, labels)
  return -out if sde.predicts_noise else out * append_dims(std, out.ndim)


def _reference_scaled_score(sde, reference, x_t, labels, std):
  if reference is None:
    return None
  with torch.no_grad():
    return _model_scaled_score(sde, mutils.get_model_fn(reference, False), x_t, labels, std)


def perturb_continuous(sde, model, x0, train, likelihood_weighting=False, eps=1e-5, t=None, z=None,
                       generator=None, t_range=None, reference=None, tilt_fn=None):
  """Continuous time: ``t ~ U(eps, T)`` (or ``U(t_range)``), ``x_t`` from ``sde.marginal_prob``; the model
  sees ``sde.model_labels``. ``reference``: a frozen network evaluated at the same ``(x_t, t)``;
  ``tilt_fn(x_t, t, std) -> [B, ...]`` fills ``Perturbed.tilt``."""
  b = x0.shape[0]
  if t is None:
    lo, hi = (eps, sde.T) if t_range is None else (max(eps, t_range[0]), min(sde.T, t_range[1]))
    t = torch.rand(b, device=x0.device, dtype=x0.dtype, generator=generator) * (hi - lo) + lo
  if z is None:
    z = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
  mean, std = sde.marginal_prob(x0, t)
  x_t = mean + append_dims(std, x0.ndim) * z
  labels = sde.model_labels(t, True)
  ss = _model_scaled_score(sde, mutils.get_model_fn(model, train), x_t, labels, std)
  g2 = sde.sde(torch.zeros_like(x0), t)[1] ** 2
  weight = g2 / std ** 2 if likelihood_weighting else torch.ones_like(std)
  tilt = None if tilt_fn is None else tilt_fn(x_t, t, std)
  return Perturbed(ss, z, std, weight, g2, _reference_scaled_score(sde, reference, x_t, labels, std), tilt)


def perturb_discrete(sde, model, x0, train, index=None, z=None, generator=None, reference=None):
  """Discrete DDPM (VP) or SMLD (VE) perturbation at a uniform noise level; the model sees the level index."""
  b = x0.shape[0]
  if index is None:
    index = torch.randint(0, sde.N, (b,), device=x0.device, generator=generator)
  if z is None:
    z = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
  coeff, std = sde.discrete_marginal(index)
  coeff, std = coeff.to(x0.dtype), std.to(x0.dtype)
  x_t = append_dims(coeff, x0.ndim) * x0 + append_dims(std, x0.ndim) * z
  ss = _model_scaled_score(sde, mutils.get_model_fn(model, train), x_t, index, std)
  return Perturbed(ss, z, std, torch.ones_like(std), None, _reference_scaled_score(sde, reference, x_t, index, std))


# ----------------------------------------------------------------------------------------------------------
# Per-sample terms (pure functions of tensors)


def reduce_dims(x, reduce_mean):
  """``R``: mean over the data dimensions, or half their sum (score_sde). ``[B, ...] -> [B]``."""
  flat = x.reshape(x.shape[0], -1)
  return flat.mean(dim=1) if reduce_mean else 0.5 * flat.sum(dim=1)


def _sum_form(total, dim, reduce_mean):
  """Applies ``R``'s normalisation to a per-sample quantity already summed over the D dimensions."""
  return total / dim if reduce_mean else 0.5 * total


def dsm_loss(p: Perturbed, reduce_mean):
  """L_g = λ ‖s − ∇‖² = w R((ŝ + z)²) = w R((ε̂ − z)²)."""
  return p.weight * reduce_dims((p.scaled_score + p.z) ** 2, reduce_mean)


def obtuse_loss(p: Perturbed, reduce_mean, sign='paper'):
  """Obtuse-MSGM. Paper: minimise λ ⟨s, ∇⟩ = w R(ŝ ⊙ (−z)) = w R(ε̂ ⊙ z), which turns the score away
  from the forget point. ``sign='official'`` minimises the negative, as the official code does (the score
  is pushed towards the forget data)."""
  value = p.weight * reduce_dims(-p.scaled_score * p.z, reduce_mean)
  if sign == 'paper':
    return value
  if sign == 'official':
    return -value
  raise ValueError(f"unknown unlearn.obtuse_sign '{sign}'; valid: paper, official")


def _centred(p: Perturbed):
  """ŝ − ŝ_ref when a reference model is used (the forget term then acts on the change from it), else ŝ."""
  return p.scaled_score if p.reference is None else p.scaled_score - p.reference


def obtuse_target_loss(p: Perturbed, reduce_mean, push=1.):
  """Obtuse-MSGM as a regression (``unlearn.obtuse_form='target'``): the score is regressed onto the
  reference score moved ``push`` times the target distance *away* from the forget point,

      L_f = λ ‖s − s_ref − κ (−∇)‖² = w R((ŝ − ŝ_ref − κ z)²),   κ = ``push``,

  with ``s_ref = 0`` without a reference model (κ = 1 is the "flipped" denoising target). Its
  minimiser on forget-dominated regions is ``s_ref − κ ∇ log p_f,t``: the reference density with a hole
  ``p_f,t^(−κ)`` where the forget data lie. Unlike the linear form it is bounded below.
  """
  return p.weight * reduce_dims((_centred(p) - push * p.z) ** 2, reduce_mean)


def obtuse_ratio_loss(p: Perturbed, reduce_mean, push=1.):
  """Obtuse-MSGM as a regression relative to a reference model (``unlearn.obtuse_form='ratio'``): the
  score is regressed onto the reference score moved ``push`` times further along its difference from the
  forget target,

      L_f = λ ‖s − s_ref − κ (s_ref − ∇)‖² = w R((ŝ − (1 + κ) ŝ_ref − κ z)²),   κ = ``push``.

  Averaged over forget data the target is ``s_ref + κ ∇ log(p_ref,t / p_f,t)``. With the retain term the
  population minimiser is ``s_g − κ ∇ log(α + (1 − α) r_t)``, ``r_t = p_f,t / p_g,t``, when the reference
  is the retain-only model (s_ref = s_g): the density ``p_g,t (α + (1 − α) r_t)^(−κ)``, a hole whose depth
  follows the density ratio (deepest where forget data dominate retained data most): a soft-edged
  version of the best reachable trade-off's holes (docs/frontier.md, docs/unlearning.md). Needs
  ``unlearn.reference``.
  """
  if p.reference is None:
    raise ValueError("unlearn.obtuse_form='ratio' needs a reference model: set unlearn.reference")
  return p.weight * reduce_dims((p.scaled_score - (1. + push) * p.reference - push * p.z) ** 2, reduce_mean)


def negative_dsm_loss(p: Perturbed, reduce_mean):
  """Negative score matching on the forget data (``unlearn.obtuse_form='negative_dsm'``):

      L_f = −λ ‖s − ∇‖² = λ (2 ⟨s, ∇⟩ − ‖s‖²) − λ ‖∇‖²,

  i.e. twice the paper's Obtuse term plus a score-norm term. With α L_g + (1 − α) L_f the objective is
  score matching on the signed measure α p_g − (1 − α) p_f, whose minimiser (where that measure stays
  positive, i.e. α/(1 − α) ≥ sup p_f/p_g) is the score of (α p_g − (1 − α) p_f)_+: the densities that
  trace the best reachable (NLL_g, NLL_f) frontier. Below that α the objective is unbounded.
  """
  return -dsm_loss(p, reduce_mean)


def hole_potential(log_ratio, depth, threshold, sharpness):
  """Φ(ℓ) = c · sigmoid(β (ℓ − ℓ*)) in nats: ~0 where the log density ratio ℓ = log p_f,t / p_g,t is below
  the threshold ℓ*, ~c (the hole's depth) above it; β (per nat of ℓ) sets how hard the edge is. ``[B] -> [B]``."""
  return depth * torch.sigmoid(sharpness * (log_ratio - threshold))


def get_hole_tilt_fn(log_ratio_fn, depth, threshold, sharpness):
  """``tilt_fn(x_t, t, std) -> σ_t ∇_x Φ(ℓ(x_t, t))`` (shape of ``x_t``, no gradient to the model).

  ``log_ratio_fn(x, t) -> [B]`` is log p_f,t(x) − log p_g,t(x) in nats, differentiable in ``x``: a noisy-data
  classifier's logit (``noisy_classifier``) or an exact ratio (``noisy_classifier.mixture_log_ratio_fn``).
  """

  def tilt_fn(x_t, t, std):
    with torch.enable_grad():
      x = x_t.detach().requires_grad_(True)
      phi = hole_potential(log_ratio_fn(x, t), depth, threshold, sharpness)
      grad, = torch.autograd.grad(phi.sum(), x)
    return append_dims(std, x_t.ndim) * grad.detach()

  return tilt_fn


def obtuse_hole_loss(p: Perturbed, reduce_mean):
  """Obtuse-MSGM with a hard-edged hole (``unlearn.obtuse_form='hole'``): the score is regressed onto the
  reference score minus the gradient of a potential of the noisy log density ratio ℓ = log p_f,t / p_g,t,

      L_f = λ ‖s − (s_ref − ∇Φ(ℓ(x_t, t)))‖² = w R((ŝ − ŝ_ref + σ_t ∇Φ)²),   Φ = ``hole_potential``.

  With a retain-only reference (s_ref = s_g) the target is the score of p_g,t · exp(−Φ(ℓ)): p_g with a hole
  of depth c (nats) wherever forget data outweigh retained data by more than e^ℓ*, with an edge as hard
  as β makes it — the shape of the best reachable trade-off's densities (docs/frontier.md), which the
  ``ratio`` form only approximates with a soft edge. Needs ``unlearn.reference`` and ``unlearn.classifier``.
  """
  if p.reference is None or p.tilt is None:
    raise ValueError("unlearn.obtuse_form='hole' needs a reference model (unlearn.reference) and a density "
                     "ratio (unlearn.classifier)")
  return p.weight * reduce_dims((p.scaled_score - p.reference + p.tilt) ** 2, reduce_mean)


def orthogonal_loss(p: Perturbed, reduce_mean, product='dot', likelihood_weighting=False):
  """Orthogonal-MSGM.

  ``product='dot'`` (paper): λ ⟨s, ∇⟩² = w ⟨ŝ, z⟩² / σ² = w ⟨ε̂, z⟩² / σ², with the dimension sum
  normalised by ``R`` once.
  ``product='elementwise'`` (official code): Σ_i (s_i ∇_i)² weighted by σ⁴ (= Σ_i (ε̂_i z_i)², no
  likelihood weighting) or by g² (likelihood weighting), reduced by ``R``.
  With a reference model both act on s − s_ref (``unlearn.reference``).
  """
  ss = _centred(p)
  if product == 'dot':
    dim = p.z[0].numel()
    dot = (ss * p.z).reshape(p.z.shape[0], -1).sum(dim=1)
    return p.weight * _sum_form(dot ** 2, dim, reduce_mean) / p.std ** 2
  if product == 'elementwise':
    per_dim = reduce_dims((ss * p.z) ** 2, reduce_mean)
    if likelihood_weighting:
      return p.g2 * per_dim / p.std ** 4
    return per_dim
  raise ValueError(f"unknown unlearn.orthogonal_product '{product}'; valid: dot, elementwise")


def erase_loss(p: Perturbed, reduce_mean, generator=None):
  """EraseDiff-style baseline (official ``erase``): R((ŝ + u)²) with u ~ U[0, 1), i.e. ε̂ regressed onto u."""
  u = torch.rand(p.z.shape, device=p.z.device, dtype=p.z.dtype, generator=generator)
  return reduce_dims((p.scaled_score + u) ** 2, reduce_mean)


# ----------------------------------------------------------------------------------------------------------
# Tasks

@dataclasses.dataclass(frozen=True)
class Task:
  """A training task: which data L_g sees and which forget term (if any) L_f uses."""
  name: str
  official_name: str
  retain_data: str          # 'full' (D) or 'retain' (D_g)
  forget_term: str = None   # None, 'orthogonal', 'obtuse' or 'erase'


TASKS = {t.name: t for t in (
  Task('standard', 'normal', 'full'),
  Task('unseen', 'no_u', 'retain'),
  Task('orthogonal', 'square', 'retain', 'orthogonal'),
  Task('obtuse', 'norm', 'retain', 'obtuse'),
  Task('erase', 'erase', 'retain', 'erase'),
)}


def get_task(name):
  """The task named ``name``: readable (``orthogonal``) or official (``square``) names."""
  for task in TASKS.values():
    if name in (task.name, task.official_name):
      return task
  valid = ', '.join(f'{t.name} ({t.official_name})' for t in TASKS.values())
  raise ValueError(f"unknown task '{name}'; valid: {valid}")


# ----------------------------------------------------------------------------------------------------------
# Loss-function factories (official names); every loss_fn returns a per-sample tensor [B]


OBTUSE_FORMS = ('linear', 'target', 'ratio', 'negative_dsm', 'hole')


def _term_fn(term, reduce_mean, likelihood_weighting, unlearn):
  if term == 'dsm':
    return lambda p, g: dsm_loss(p, reduce_mean)
  if term == 'obtuse':
    sign = unlearn.get('obtuse_sign', 'paper') if unlearn is not None else 'paper'
    if sign not in ('paper', 'official'):
      raise ValueError(f"unknown unlearn.obtuse_sign '{sign}'; valid: paper, official")
    form = unlearn.get('obtuse_form', 'linear') if unlearn is not None else 'linear'
    if form not in OBTUSE_FORMS:
      raise ValueError(f"unknown unlearn.obtuse_form '{form}'; valid: {', '.join(OBTUSE_FORMS)}")
    if form != 'linear' and sign != 'paper':
      raise ValueError(f"unlearn.obtuse_sign='official' applies to obtuse_form='linear' only, not '{form}'")
    if form == 'target':
      push = float(unlearn.get('push', 1.))
      return lambda p, g: obtuse_target_loss(p, reduce_mean, push)
    if form == 'ratio':
      push = float(unlearn.get('push', 1.))
      return lambda p, g: obtuse_ratio_loss(p, reduce_mean, push)
    if form == 'negative_dsm':
      return lambda p, g: negative_dsm_loss(p, reduce_mean)
    if form == 'hole':
      return lambda p, g: obtuse_hole_loss(p, reduce_mean)
    return lambda p, g: obtuse_loss(p, reduce_mean, sign)
  if term == 'orthogonal':
    product = unlearn.get('orthogonal_product', 'dot') if unlearn is not None else 'dot'
    if product not in ('dot', 'elementwise'):
      raise ValueError(f"unknown unlearn.orthogonal_product '{product}'; valid: dot, elementwise")
    return lambda p, g: orthogonal_loss(p, reduce_mean, product, likelihood_weighting)
  if term == 'erase':
    return lambda p, g: erase_loss(p, reduce_mean, g)
  raise ValueError(f"unknown loss term '{term}'; valid: dsm, orthogonal, obtuse, erase")


def forget_time_range(unlearn):
  """``(t_min, t_max)`` over which the forget term is applied (``unlearn.forget_t_min/max``), or None for all."""
  if unlearn is None:
    return None
  lo, hi = float(unlearn.get('forget_t_min', 0.)), float(unlearn.get('forget_t_max', 1.))
  if not 0. <= lo < hi <= 1.:
    raise ValueError(f'unlearn.forget_t_min/forget_t_max must satisfy 0 <= min < max <= 1, got {lo}, {hi}')
  return None if (lo, hi) == (0., 1.) else (lo, hi)


def _obtuse_form(term, unlearn):
  return unlearn.get('obtuse_form', 'linear') if term == 'obtuse' and unlearn is not None else None


def _require_reference(term, unlearn, reference, log_ratio_fn=None):
  form = _obtuse_form(term, unlearn)
  if form in ('ratio', 'hole') and reference is None:
    raise ValueError(f"unlearn.obtuse_form='{form}' needs a reference model: set unlearn.reference to a "
                     "checkpoint of the same architecture (e.g. the Unseen or the pretrained model)")
  if form == 'hole' and log_ratio_fn is None:
    raise ValueError("unlearn.obtuse_form='hole' needs a noisy density ratio: set unlearn.classifier to a "
                     "noisy-classifier checkpoint (python main.py --mode train_noisy_classifier) or to 'exact' "
                     "(the 2-D toy's exact ratio)")


def hole_tilt_fn(term, unlearn, log_ratio_fn):
  """The tilt of ``obtuse_form='hole'`` from ``unlearn.hole_depth/hole_log_ratio/hole_sharpness``, else None."""
  if _obtuse_form(term, unlearn) != 'hole':
    return None
  depth, threshold = float(unlearn.hole_depth), float(unlearn.hole_log_ratio)
  sharpness = float(unlearn.hole_sharpness)
  if not (depth >= 0. and sharpness > 0.):
    raise ValueError(f'unlearn.hole_depth must be >= 0 and unlearn.hole_sharpness > 0, got {depth}, {sharpness}')
  return get_hole_tilt_fn(log_ratio_fn, depth, threshold, sharpness)


def get_sde_loss_fn(sde, train, reduce_mean=True, continuous=True, likelihood_weighting=True, eps=1e-5,
                    term='dsm', unlearn=None, reference=None, log_ratio_fn=None):
  """Continuous-time loss: ``loss_fn(model, batch, generator=None) -> [B]`` for the given ``term``.

  Forget terms are drawn on ``forget_time_range(unlearn)`` and see the frozen ``reference`` network and,
  for ``obtuse_form='hole'``, the noisy log density ratio ``log_ratio_fn(x, t) -> [B]``.
  """
  fn = _term_fn(term, reduce_mean, likelihood_weighting, unlearn)
  _require_reference(term, unlearn, reference, log_ratio_fn)
  t_range = forget_time_range(unlearn) if term != 'dsm' else None
  tilt_fn = hole_tilt_fn(term, unlearn, log_ratio_fn)

  def loss_fn(model, batch, generator=None):
    p = perturb_continuous(sde, model, batch, train, likelihood_weighting, eps, generator=generator,
                           t_range=t_range, reference=reference if term != 'dsm' else None, tilt_fn=tilt_fn)
    return fn(p, generator)

  return loss_fn


def _discrete_loss_fn(sde, train, reduce_mean, term, unlearn, reference=None):
  sde.discrete_marginal(torch.zeros(1, dtype=torch.long))  # refuses SDEs without a discrete form
  fn = _term_fn(term, reduce_mean, False, unlearn)
  if _obtuse_form(term, unlearn) == 'hole':
    raise ValueError("unlearn.obtuse_form='hole' needs continuous training (training.continuous=True)")
  _require_reference(term, unlearn, reference)
  if term != 'dsm' and forget_time_range(unlearn) is not None:
    raise ValueError('unlearn.forget_t_min/forget_t_max need continuous training (training.continuous=True)')
  ref = reference if term != 'dsm' else None

  def loss_fn(model, batch, generator=None):
    return fn(perturb_discrete(sde, model, batch, train, generator=generator, reference=ref), generator)

  return loss_fn


def get_smld_loss_fn(vesde, train, reduce_mean=False, term='dsm', unlearn=None):
  """SMLD (NCSN) discrete loss on the VE noise levels: ``loss_fn(model, batch) -> [B]``."""
  return _discrete_loss_fn(vesde, train, reduce_mean, term, unlearn)


def get_ddpm_loss_fn(vpsde, train, reduce_mean=True, term='dsm', unlearn=None):
  """DDPM discrete loss on the VP β schedule: ``loss_fn(model, batch) -> [B]``."""
  return _discrete_loss_fn(vpsde, train, reduce_mean, term, unlearn)


def get_loss_fn(sde, train, reduce_mean, continuous, likelihood_weighting, eps=1e-5, term='dsm', unlearn=None,
                reference=None, log_ratio_fn=None):
  """Continuous score matching, or the discrete DDPM/SMLD loss the SDE defines."""
  if continuous:
    return get_sde_loss_fn(sde, train, reduce_mean, True, likelihood_weighting, eps, term, unlearn, reference,
                           log_ratio_fn)
  if likelihood_weighting:
    raise ValueError('likelihood weighting is only defined for continuous training (training.continuous=True)')
  return _discrete_loss_fn(sde, train, reduce_mean, term, unlearn, reference)


# ----------------------------------------------------------------------------------------------------------
# Step functions: the one place where per-sample losses are reduced and mixed


def _optimizer_step(state, loss, optimize_fn):
  model, optimizer = state['model'], state['optimizer']
  optimizer.zero_grad(set_to_none=True)
  loss.backward()
  optimize_fn(optimizer, model.parameters(), step=state['step'])
  state['step'] += 1
  state['ema'].update(model.parameters())


def _with_ema(state, fn):
  ema, model = state['ema'], state['model']
  with torch.no_grad():
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
      return fn()
    finally:
      ema.restore(model.parameters())


def get_step_fn(sde, train, optimize_fn=None, reduce_mean=False, continuous=True, likelihood_weighting=False,
                eps=1e-5):
  """``step_fn(state, batch) -> loss`` (scalar, detached): one optimisation step on D, or an EMA evaluation."""
  loss_fn = get_loss_fn(sde, train, reduce_mean, continuous, likelihood_weighting, eps)

  def step_fn(state, batch):
    if train:
      loss = loss_fn(state['model'], batch).mean()
      _optimizer_step(state, loss, optimize_fn)
      return loss.detach()
    return _with_ema(state, lambda: loss_fn(state['model'], batch).mean())

  return step_fn


def is_forget_step(step, forget_every):
  """The forget term is used on steps ``0, k, 2k, …`` (official: ``step % 4 == 0``)."""
  return forget_every > 0 and step % forget_every == 0


def get_msgm_step_fn(sde, train, task, unlearn, optimize_fn=None, reduce_mean=False, continuous=True,
                     likelihood_weighting=False, eps=1e-5, reference=None, log_ratio_fn=None):
  """MSGM step: ``loss = α·mean(L_g(batch_g)) + (1−α)·mean(L_f(batch_f))·[forget step]``.

  ``step_fn(state, batch_g, batch_f=None, generator=None) -> {'loss', 'loss_g', 'loss_f'}`` (detached scalars; ``loss_f``
  is NaN on steps without the forget term). For tasks without a forget term the loss is ``mean(L_g)``.
  When evaluating (``train=False``) both terms are computed with the EMA weights and ``loss = α L_g +
  (1 − α) L_f``.
  """
  loss_g_fn = get_loss_fn(sde, train, reduce_mean, continuous, likelihood_weighting, eps)
  loss_f_fn = None
  if task.forget_term is not None:
    loss_f_fn = get_loss_fn(sde, train, reduce_mean, continuous, likelihood_weighting, eps,
                            term=task.forget_term, unlearn=unlearn, reference=reference, log_ratio_fn=log_ratio_fn)
  alpha = float(unlearn.alpha)
  if not 0. <= alpha <= 1.:
    raise ValueError(f'unlearn.alpha must be in [0, 1], got {alpha}')
  forget_every = int(unlearn.forget_every)

  def needs_forget_batch(step):
    return loss_f_fn is not None and (not train or is_forget_step(step, forget_every))

  def compute(model, step, batch_g, batch_f, generator):
    loss_g = loss_g_fn(model, batch_g, generator).mean()
    if not needs_forget_batch(step):
      return loss_g if loss_f_fn is None else alpha * loss_g, loss_g, None
    loss_f = loss_f_fn(model, batch_f, generator).mean()
    return alpha * loss_g + (1. - alpha) * loss_f, loss_g, loss_f

  def step_fn(state, batch_g, batch_f=None, generator=None):
    if needs_forget_batch(state['step']) and batch_f is None:
      raise ValueError('this step uses the forget term but no forget batch was given')
    if train:
      loss, loss_g, loss_f = compute(state['model'], state['step'], batch_g, batch_f, generator)
      _optimizer_step(state, loss, optimize_fn)
    else:
      loss, loss_g, loss_f = _with_ema(
        state, lambda: compute(state['model'], state['step'], batch_g, batch_f, generator))
    nan = torch.tensor(float('nan'))
    return {'loss': loss.detach(), 'loss_g': loss_g.detach(),
            'loss_f': nan if loss_f is None else loss_f.detach()}

  step_fn.needs_forget_batch = needs_forget_batch
  return step_fn
