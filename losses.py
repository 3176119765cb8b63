"""Training objectives of the engine: denoising score matching as a per-sample loss (score_sde's losses).

Notation (``x_t = m_t x_0 + σ_t z``, ``z ~ N(0, I)``):
  * ``s = s_θ(x_t, t)`` the model's score; ``∇ = ∇_{x_t} log p_0t(x_t | x_0) = -z / σ_t`` the target;
  * ``ŝ = σ_t s`` the σ-scaled score (``ŝ = -ε̂`` for networks that predict the noise ε̂);
  * ``λ(t)`` the weighting: ``σ_t²`` by default, ``g(t)²`` with ``likelihood_weighting``
    (continuous training only); ``w(t) = λ(t) / σ_t²`` (1 by default);
  * ``R`` the reduction over data dimensions: the mean when ``reduce_mean``, else ``0.5 ×`` the sum
    (score_sde's convention). A term written with Σ over dimensions is divided by D, or halved, once.

``dsm_loss``: L = λ ‖s − ∇‖² = w R((ŝ + z)²) = w R((ε̂ − z)²), per sample ``[B]``. The loss factories
(``get_sde_loss_fn``, ``get_ddpm_loss_fn``, ``get_smld_loss_fn``, ``get_loss_fn``) perturb a batch
(``Perturbed``) and apply a per-sample term to it: DSM by default, or any ``term_fn(p, generator) -> [B]``
of the unlearning methods (``unlearning/``), which also choose the time range, a frozen reference network
evaluated at the same ``(x_t, t)`` and a tilt. ``get_step_fn`` is score_sde's plain training step; the
unlearning methods' steps (retain/forget mix, reduction over the batch) are in ``unlearning/step.py``.
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
  """The optimiser named by ``config.optim.optimizer`` (only Adam, as in the official code); ``optim.fused``
  takes PyTorch's fused kernel (one kernel for all parameters; CUDA, and the CPU in recent PyTorch), and a
  device without it is refused with one line."""
  config = default_configs.with_defaults(config)
  if config.optim.optimizer != 'Adam':
    raise ValueError(f"unknown optimizer '{config.optim.optimizer}'; valid: Adam")
  fused = {'fused': True} if config.optim.get('fused', False) else {}
  try:
    return optim.Adam(params, lr=config.optim.lr, betas=(config.optim.beta1, 0.999), eps=config.optim.eps,
                      weight_decay=config.optim.weight_decay, amsgrad=config.optim.get('amsgrad', False), **fused)
  except RuntimeError as e:
    if not fused:
      raise
    raise ValueError(f"optim.fused=True: this PyTorch has no fused Adam for these parameters "
                     f"({' '.join(str(e).split())[:160]}); set optim.fused=False") from None


def keep_optimizer_options(optimizer, restore):
  """Runs ``restore()`` (which loads a saved optimizer state) and keeps this optimizer's implementation
  options (``fused``, ``foreach``, ``capturable``: how it runs, not what it computes), so that a checkpoint
  written with other options resumes with these; the step counters go where the implementation wants them
  (on the parameter's device for fused/capturable, on the CPU otherwise)."""
  keys = ('fused', 'foreach', 'capturable')
  options = [{k: g[k] for k in keys if k in g} for g in optimizer.param_groups]
  out = restore()
  for group, opts in zip(optimizer.param_groups, options):
    group.update(opts)
    on_device = bool(opts.get('fused')) or bool(opts.get('capturable'))
    for p in group['params']:
      st = optimizer.state.get(p, {})
      step = st.get('step')
      if torch.is_tensor(step):
        st['step'] = step.to(device=p.device, dtype=torch.float32) if on_device else step.to('cpu')
  return out


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


def model_scaled_score(sde, model_fn, x_t, labels, std, class_labels=None):
  out = model_fn(x_t, labels) if class_labels is None else model_fn(x_t, labels, class_labels)
  return -out if sde.predicts_noise else out * append_dims(std, out.ndim)


def split_batch(batch):
  """``(x [B, ...], class labels [B] or None)`` of a batch: a tensor (no labels) or a pair ``(x, y)`` (the
  batches of a class-conditional run; y may hold the null label)."""
  if isinstance(batch, (tuple, list)):
    x, y = batch
    return x, y
  return batch, None


def _reference_scaled_score(sde, reference, x_t, labels, std):
  if reference is None:
    return None
  with torch.no_grad():
    return model_scaled_score(sde, mutils.get_model_fn(reference, False), x_t, labels, std)


def draw_noise(x0, generator=None, noise='gaussian'):
  """The noise z of ``x_t = m_t x_0 + σ_t z``: N(0, I) (``'gaussian'``, the SDE's), or U[0, 1)^D (``'uniform'``:
  the surrogate noise of EraseDiff and Selective Amnesia, with which x_t is built and which is the target)."""
  if noise == 'gaussian':
    return torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
  if noise == 'uniform':
    return torch.rand(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
  raise ValueError(f"unknown noise {noise!r}; valid: gaussian, uniform")


def perturb_continuous(sde, model, x0, train, likelihood_weighting=False, eps=1e-5, t=None, z=None,
                       generator=None, t_range=None, reference=None, tilt_fn=None, noise='gaussian', class_labels=None):
  """Continuous time: ``t ~ U(eps, T)`` (or ``U(t_range)``), ``x_t`` from ``sde.marginal_prob``; the model
  sees ``sde.model_labels`` (and ``class_labels`` [B], for class-conditional networks). ``reference``: a frozen
  network evaluated at the same ``(x_t, t)``; ``tilt_fn(x_t, t, std) -> [B, ...]`` fills ``Perturbed.tilt``;
  ``noise``: see ``draw_noise``."""
  b = x0.shape[0]
  if t is None:
    lo, hi = (eps, sde.T) if t_range is None else (max(eps, t_range[0]), min(sde.T, t_range[1]))
    t = torch.rand(b, device=x0.device, dtype=x0.dtype, generator=generator) * (hi - lo) + lo
  if z is None:
    z = draw_noise(x0, generator, noise)
  mean, std = sde.marginal_prob(x0, t)
  x_t = mean + append_dims(std, x0.ndim) * z
  labels = sde.model_labels(t, True)
  ss = model_scaled_score(sde, mutils.get_model_fn(model, train), x_t, labels, std, class_labels)
  g2 = sde.sde(torch.zeros_like(x0), t)[1] ** 2
  weight = g2 / std ** 2 if likelihood_weighting else torch.ones_like(std)
  tilt = None if tilt_fn is None else tilt_fn(x_t, t, std)
  return Perturbed(ss, z, std, weight, g2, _reference_scaled_score(sde, reference, x_t, labels, std), tilt)


def perturb_discrete(sde, model, x0, train, index=None, z=None, generator=None, reference=None, noise='gaussian',
                     class_labels=None):
  """Discrete DDPM (VP) or SMLD (VE) perturbation at a uniform noise level; the model sees the level index
  (and ``class_labels`` [B], for class-conditional networks)."""
  b = x0.shape[0]
  if index is None:
    index = torch.randint(0, sde.N, (b,), device=x0.device, generator=generator)
  if z is None:
    z = draw_noise(x0, generator, noise)
  coeff, std = sde.discrete_marginal(index)
  coeff, std = coeff.to(x0.dtype), std.to(x0.dtype)
  x_t = append_dims(coeff, x0.ndim) * x0 + append_dims(std, x0.ndim) * z
  ss = model_scaled_score(sde, mutils.get_model_fn(model, train), x_t, index, std, class_labels)
  return Perturbed(ss, z, std, torch.ones_like(std), None, _reference_scaled_score(sde, reference, x_t, index, std))


# ----------------------------------------------------------------------------------------------------------
# Per-sample terms (pure functions of tensors)


def reduce_dims(x, reduce_mean):
  """``R``: mean over the data dimensions, or half their sum (score_sde). ``[B, ...] -> [B]``."""
  flat = x.reshape(x.shape[0], -1)
  return flat.mean(dim=1) if reduce_mean else 0.5 * flat.sum(dim=1)


def sum_form(total, dim, reduce_mean):
  """Applies ``R``'s normalisation to a per-sample quantity already summed over the D dimensions."""
  return total / dim if reduce_mean else 0.5 * total


def dsm_loss(p: Perturbed, reduce_mean):
  """L_g = λ ‖s − ∇‖² = w R((ŝ + z)²) = w R((ε̂ − z)²)."""
  return p.weight * reduce_dims((p.scaled_score + p.z) ** 2, reduce_mean)


# ----------------------------------------------------------------------------------------------------------
# Loss-function factories (official names); every loss_fn returns a per-sample tensor [B]


def _dsm_term(reduce_mean):
  return lambda p, generator: dsm_loss(p, reduce_mean)


def get_sde_loss_fn(sde, train, reduce_mean=True, continuous=True, likelihood_weighting=True, eps=1e-5,
                    term_fn=None, t_range=None, reference=None, tilt_fn=None, noise='gaussian'):
  """Continuous-time loss: ``loss_fn(model, batch, generator=None) -> [B]`` (``batch``: x, or ``(x, y)`` with the
  class labels of a class-conditional network, ``split_batch``).

  ``t ~ U(eps, T)`` (or ``U(t_range)``); ``term_fn(p: Perturbed, generator) -> [B]`` (default: DSM) sees the
  frozen ``reference`` network and the ``tilt_fn`` correction at the same ``(x_t, t)`` when given; the
  noise is ``draw_noise``'s ``noise``.
  """
  fn = term_fn or _dsm_term(reduce_mean)
  # Refuses an unknown noise now. The check draws one number from the global RNG, and that draw is part of every
  # seeded run's stream: code that builds a loss only on some starts must build it on all (fisher.cached_fisher).
  draw_noise(torch.zeros(1), None, noise)

  def loss_fn(model, batch, generator=None):
    x, y = split_batch(batch)
    p = perturb_continuous(sde, model, x, train, likelihood_weighting, eps, generator=generator,
                           t_range=t_range, reference=reference, tilt_fn=tilt_fn, noise=noise, class_labels=y)
    return fn(p, generator)

  return loss_fn


def _discrete_loss_fn(sde, train, reduce_mean, term_fn=None, reference=None, noise='gaussian'):
  sde.discrete_marginal(torch.zeros(1, dtype=torch.long))  # refuses SDEs without a discrete form
  fn = term_fn or _dsm_term(reduce_mean)
  draw_noise(torch.zeros(1), None, noise)

  def loss_fn(model, batch, generator=None):
    x, y = split_batch(batch)
    return fn(perturb_discrete(sde, model, x, train, generator=generator, reference=reference, noise=noise,
                               class_labels=y), generator)

  return loss_fn


def get_smld_loss_fn(vesde, train, reduce_mean=False, term_fn=None):
  """SMLD (NCSN) discrete loss on the VE noise levels: ``loss_fn(model, batch) -> [B]``."""
  return _discrete_loss_fn(vesde, train, reduce_mean, term_fn)


def get_ddpm_loss_fn(vpsde, train, reduce_mean=True, term_fn=None):
  """DDPM discrete loss on the VP β schedule: ``loss_fn(model, batch) -> [B]``."""
  return _discrete_loss_fn(vpsde, train, reduce_mean, term_fn)


def get_loss_fn(sde, train, reduce_mean, continuous, likelihood_weighting, eps=1e-5, term_fn=None, t_range=None,
                reference=None, tilt_fn=None, noise='gaussian'):
  """Continuous score matching, or the discrete DDPM/SMLD loss the SDE defines, with ``term_fn`` (default DSM).

  A time range and a tilt need continuous training (``ValueError`` otherwise).
  """
  if continuous:
    return get_sde_loss_fn(sde, train, reduce_mean, True, likelihood_weighting, eps, term_fn, t_range, reference,
                           tilt_fn, noise)
  if likelihood_weighting:
    raise ValueError('likelihood weighting is only defined for continuous training (training.continuous=True)')
  if t_range is not None:
    raise ValueError('a forget time range (unlearn.forget_t_min/forget_t_max) needs continuous training '
                     '(training.continuous=True)')
  if tilt_fn is not None:
    raise ValueError('this forget term needs continuous training (training.continuous=True)')
  return _discrete_loss_fn(sde, train, reduce_mean, term_fn, reference, noise)


# ----------------------------------------------------------------------------------------------------------
# Step functions: the one place where per-sample losses are reduced and mixed


def _optimizer_step(state, loss, optimize_fn):
  model, optimizer = state['model'], state['optimizer']
  optimizer.zero_grad(set_to_none=True)
  loss.backward()
  optimize_fn(optimizer, model.parameters(), step=state['step'])
  state['step'] += 1
  state['ema'].update(model.parameters())


def with_ema(state, fn):
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
    return with_ema(state, lambda: loss_fn(state['model'], batch).mean())

  return step_fn
