"""Samplers of the reverse-time SDE / probability-flow ODE: predictor–corrector (PC) and black-box ODE.

Layout (time grid, update rules and loops are separate, the loops are plain functions):
  * ``get_time_grid(sde, eps)``: the PC time grid ``linspace(T, eps, N)``;
  * predictors (``euler_maruyama``, ``reverse_diffusion``, ``ancestral_sampling``, ``none``) and correctors
    (``langevin``, ``ald``, ``none``) in two registries; each one is a small object with
    ``update_fn(x, t, generator) -> (x, x_mean)`` where ``x_mean`` is the update without its fresh noise;
  * ``sample_pc(score_fn, sde, x, timesteps, ...)`` and ``sample_ode(score_fn, sde, x, ...)``: the loops,
    functions of (score, starting point ``x_T``, time grid, generator, knobs) returning ``(samples, nfe)``;
  * ``solve_ode(fn, y0, t0, t1, ...)``: one entry point for torchdiffeq (on the data's device) and
    ``scipy.integrate.solve_ivp`` (the official host round-trip path), shared with ``likelihood.py``;
  * ``get_sampling_fn(config, sde, shape, inverse_scaler, eps)``: the configured sampler
    ``sampling_fn(model, z=None, generator=None) -> (samples, nfe)``.

Conventions: ``score_fn(x, t)`` returns the score ∇_x log p_t(x) (never the noise), ``x`` is
``[B, ...]`` of any rank and ``t`` a ``[B]`` tensor of times in ``[eps, T]``. ``nfe`` is the number of
score-network evaluations actually made (each one a batch of ``B``). All randomness comes from the
``generator`` argument when one is given (it may live on another device than the data: the draws are
made on the generator's device and moved), so a seed fixes the samples.
"""
import abc
import math
from typing import Callable, Optional

import numpy as np
import torch
import torchdiffeq
from scipy import integrate
from tqdm.auto import tqdm

import conditioning
import sde_lib
from cuda_graphs import maybe_graphed
from models import utils as mutils
from tensor_utils import append_dims
from configs import default_configs

_PREDICTORS = {}
_CORRECTORS = {}


# ----------------------------------------------------------------------------------------------------
# Registries
# ----------------------------------------------------------------------------------------------------

def _registrar(registry, kind):
  def register(cls=None, *, name=None):
    def add(cls):
      key = cls.__name__ if name is None else name
      if key in registry:
        raise ValueError(f'a {kind} named {key!r} is already registered')
      registry[key] = cls
      cls.name = key
      return cls

    return add if cls is None else add(cls)

  register.__doc__ = f'Class decorator registering a {kind} under ``name`` (default: the class name).'
  return register


register_predictor = _registrar(_PREDICTORS, 'predictor')
register_corrector = _registrar(_CORRECTORS, 'corrector')


def _lookup(registry, kind, name):
  key = str(name).lower()
  if key not in registry:
    raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(registry))}")
  return registry[key]


def get_predictor(name):
  """The predictor class registered as ``name`` (case-insensitive); unknown names list the valid ones."""
  return _lookup(_PREDICTORS, 'predictor', name)


def get_corrector(name):
  """The corrector class registered as ``name`` (case-insensitive); unknown names list the valid ones."""
  return _lookup(_CORRECTORS, 'corrector', name)


# ----------------------------------------------------------------------------------------------------
# Randomness and small helpers
# ----------------------------------------------------------------------------------------------------

def randn_like(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
  """Standard normal noise with the shape, dtype and device of ``x``.

  With a ``generator`` the draw is made on the generator's device and then moved to ``x``'s, so a
  CPU generator reproduces the same numbers whatever device the data lives on.
  """
  if generator is None:
    return torch.randn_like(x)
  return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)


def rademacher_like(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
  """Independent ±1 entries (probability 1/2 each) shaped like ``x``; same device rules as ``randn_like``."""
  device = x.device if generator is None else generator.device
  bits = torch.randint(0, 2, x.shape, generator=generator, device=device)
  return (bits.to(x.dtype) * 2 - 1).to(x.device)


def batch_time(t, x: torch.Tensor) -> torch.Tensor:
  """The time ``t`` (float or 0-dim tensor) repeated over the batch of ``x``: ``[B]`` in ``x``'s dtype/device.

  A tensor ``t`` is not read back to the host (no device synchronisation inside ODE right-hand sides).
  """
  if torch.is_tensor(t):
    return t.to(device=x.device, dtype=x.dtype).reshape(1).expand(x.shape[0]).clone()
  return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


def _take(table: torch.Tensor, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
  """``table[index]`` (a float64 CPU table) on ``like``'s device, in ``like``'s dtype."""
  return table.to(device=index.device)[index].to(device=like.device, dtype=like.dtype)


class ODEBudgetError(ValueError):
  """An ODE solve needed more right-hand-side evaluations than its ``max_nfe``."""


class CountedFn:
  """Wraps a function and counts its calls (each call of a score function = one network evaluation);
  with ``limit`` a call beyond it raises ``ODEBudgetError`` (``limit_message`` says why)."""

  def __init__(self, fn: Callable, limit: int = 0, limit_message: str = ''):
    self.fn = fn
    self.calls = 0
    self.limit = int(limit or 0)
    self.limit_message = limit_message

  def __call__(self, *args, **kwargs):
    if self.limit and self.calls >= self.limit:
      raise ODEBudgetError(self.limit_message or f'more than {self.limit} function evaluations')
    self.calls += 1
    return self.fn(*args, **kwargs)


def get_time_grid(sde: sde_lib.SDE, eps: float, device=None, dtype=torch.float64) -> torch.Tensor:
  """The PC sampler's times ``linspace(T, eps, N)`` [N], from the prior end ``T`` down to ``eps``.

  Note (as in score_sde) the grid spacing is ``(T - eps)/(N - 1)`` while the Euler–Maruyama predictor
  steps by ``1/N`` and the discrete tables are indexed by ``floor(t (N-1)/T)``.
  """
  return torch.linspace(sde.T, eps, sde.N, device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------------
# Predictors
# ----------------------------------------------------------------------------------------------------

class Predictor(abc.ABC):
  """One step of a discretised reverse-time SDE (or probability-flow ODE) from ``t`` to ``t - 1/N``.

  ``score_fn(x, t)`` returns the score [B, ...]; ``update_fn(x, t, generator)`` returns the new state
  and its mean (the state before the fresh Gaussian noise is added), both shaped like ``x``.
  """

  name = None

  def __init__(self, sde, score_fn, probability_flow=False):
    reason = self.unsupported_reason(sde, probability_flow)
    if reason:
      raise ValueError(reason)
    self.sde = sde
    self.score_fn = score_fn
    self.probability_flow = probability_flow
    self.rsde = sde.reverse(score_fn, probability_flow)

  @classmethod
  def unsupported_reason(cls, sde, probability_flow) -> Optional[str]:
    """Why this predictor cannot run on ``sde`` (with ``probability_flow``), or None when it can."""
    return None

  @abc.abstractmethod
  def update_fn(self, x, t, generator=None):
    """One predictor step: returns ``(x_next, x_next_mean)``."""


@register_predictor(name='euler_maruyama')
class EulerMaruyamaPredictor(Predictor):
  """Euler–Maruyama on the reverse SDE with dt = -1/N:

  x_mean = x - [f(x,t) - g(t)² s(x,t)] / N,   x = x_mean + g(t) sqrt(1/N) z
  (with ``probability_flow`` the drift uses g²s/2 and no noise is added).
  """

  def update_fn(self, x, t, generator=None):
    step = 1. / self.rsde.N
    drift, diffusion = self.rsde.sde(x, t)
    x_mean = x - drift * step
    if self.probability_flow:
      return x_mean, x_mean
    noise = randn_like(x, generator)
    return x_mean + append_dims(diffusion, x.ndim) * math.sqrt(step) * noise, x_mean


@register_predictor(name='reverse_diffusion')
class ReverseDiffusionPredictor(Predictor):
  """Reverse of the SDE's own discretisation x_{i+1} = x_i + f_i + G_i z (DDPM for VP, SMLD for VE):

  x_mean = x - f_i + G_i² s(x, t),   x = x_mean + G_i z
  (with ``probability_flow``: x_mean = x - f_i + G_i² s / 2 and no noise).
  """

  def update_fn(self, x, t, generator=None):
    rev_f, rev_g = self.rsde.discretize(x, t)
    x_mean = x - rev_f
    if self.probability_flow:
      return x_mean, x_mean
    return x_mean + append_dims(rev_g, x.ndim) * randn_like(x, generator), x_mean


def _ancestral_ve(sde, score_fn, x, t, generator):
  """SMLD ancestral step: sample p(x_{i-1} | x_i) of the chain with noise levels σ_i (σ_{-1} = 0).

  x_mean = x + (σ_i² - σ_{i-1}²) s,   std = sqrt(σ_{i-1}² (σ_i² - σ_{i-1}²) / σ_i²).
  """
  i = sde.timestep_index(t)
  sigma = _take(sde.discrete_sigmas, i, x)
  prev = torch.where(i == 0, torch.zeros_like(sigma), _take(sde.discrete_sigmas, (i - 1).clamp(min=0), x))
  var_step = sigma ** 2 - prev ** 2
  x_mean = x + append_dims(var_step, x.ndim) * score_fn(x, t)
  std = torch.sqrt(prev ** 2 * var_step / sigma ** 2)
  return x_mean + append_dims(std, x.ndim) * randn_like(x, generator), x_mean


def _ancestral_vp(sde, score_fn, x, t, generator):
  """DDPM ancestral step with β_i: x_mean = (x + β_i s) / sqrt(1 - β_i),   x = x_mean + sqrt(β_i) z."""
  beta = _take(sde.discrete_betas, sde.timestep_index(t), x)
  x_mean = (x + append_dims(beta, x.ndim) * score_fn(x, t)) / append_dims(torch.sqrt(1. - beta), x.ndim)
  return x_mean + append_dims(torch.sqrt(beta), x.ndim) * randn_like(x, generator), x_mean


# The Markov chains ancestral sampling inverts: DDPM (VP) and SMLD (VE). Exact classes on purpose: the
# sub-VP SDE has no such discrete forward chain.
_ANCESTRAL_RULES = {sde_lib.VPSDE: _ancestral_vp, sde_lib.VESDE: _ancestral_ve}


@register_predictor(name='ancestral_sampling')
class AncestralSamplingPredictor(Predictor):
  """Ancestral sampling of the DDPM (VP) or SMLD (VE) Markov chain; see ``_ancestral_vp``/``_ancestral_ve``."""

  @classmethod
  def unsupported_reason(cls, sde, probability_flow):
    if probability_flow:
      return ('ancestral_sampling samples the stochastic DDPM/SMLD posterior and has no probability-flow '
              '(deterministic) form: set sampling.probability_flow=False, or use the reverse_diffusion or '
              'euler_maruyama predictor')
    if type(sde) not in _ANCESTRAL_RULES:
      return (f'ancestral_sampling is defined only for the DDPM (VPSDE) and SMLD (VESDE) Markov chains, not '
              f'for {type(sde).__name__}, which has no discrete forward chain: use the reverse_diffusion or '
              f'euler_maruyama predictor')
    return None

  def update_fn(self, x, t, generator=None):
    return _ANCESTRAL_RULES[type(self.sde)](self.sde, self.score_fn, x, t, generator)


@register_predictor(name='none')
class NonePredictor(Predictor):
  """No predictor step (corrector-only sampling): returns ``(x, x)`` without evaluating the score."""

  def update_fn(self, x, t, generator=None):
    return x, x


# ----------------------------------------------------------------------------------------------------
# Correctors
# ----------------------------------------------------------------------------------------------------

class Corrector(abc.ABC):
  """``n_steps`` of Langevin MCMC targeting p_t at fixed ``t``; ``snr`` sets the step size.

  ``update_fn(x, t, generator)`` returns ``(x, x_mean)``, ``x_mean`` being the last step without its noise.
  """

  name = None

  def __init__(self, sde, score_fn, snr, n_steps):
    reason = self.unsupported_reason(sde)
    if reason:
      raise ValueError(reason)
    self.sde = sde
    self.score_fn = score_fn
    self.snr = float(snr)
    self.n_steps = int(n_steps)

  @classmethod
  def unsupported_reason(cls, sde) -> Optional[str]:
    """Why this corrector cannot run on ``sde``, or None when it can."""
    return None

  @abc.abstractmethod
  def step_size(self, x, t, score, noise):
    """The Langevin step size ε [B] for the current state."""

  def update_fn(self, x, t, generator=None):
    """x_mean = x + ε s(x, t),  x = x_mean + sqrt(2ε) z, repeated ``n_steps`` times."""
    x_mean = x
    for _ in range(self.n_steps):
      score = self.score_fn(x, t)
      noise = randn_like(x, generator)
      eps = self.step_size(x, t, score, noise)
      x_mean = x + append_dims(eps, x.ndim) * score
      x = x_mean + append_dims(torch.sqrt(2. * eps), x.ndim) * noise
    return x, x_mean


def _batch_mean_norm(v):
  """Mean over the batch of the per-sample L2 norms (a scalar tensor)."""
  return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1).mean()


@register_corrector(name='langevin')
class LangevinCorrector(Corrector):
  """Langevin corrector of score_sde: ε = 2 α_i (snr ‖z‖ / ‖s‖)², norms averaged over the batch.

  α_i = ``sde.langevin_alpha(t)`` (the DDPM α_i = 1 - β_i for VP and sub-VP, 1 for VE).
  """

  def step_size(self, x, t, score, noise):
    ratio = self.snr * _batch_mean_norm(noise) / _batch_mean_norm(score)
    return 2. * ratio ** 2 * self.sde.langevin_alpha(t).to(x.dtype)


@register_corrector(name='ald')
class AnnealedLangevinCorrector(Corrector):
  """Annealed Langevin dynamics of NCSN: ε = 2 α_i (snr σ_t)² with σ_t the marginal std at ``t``."""

  def step_size(self, x, t, score, noise):
    std = self.sde.marginal_prob(x, t)[1]
    return 2. * (self.snr * std) ** 2 * self.sde.langevin_alpha(t).to(x.dtype)


@register_corrector(name='none')
class NoneCorrector(Corrector):
  """No corrector step: returns ``(x, x)`` without evaluating the score."""

  def step_size(self, x, t, score, noise):  # pragma: no cover - never called
    raise NotImplementedError

  def update_fn(self, x, t, generator=None):
    return x, x


def check_pc_combination(sde, predictor: str, corrector: str, probability_flow: bool = False):
  """Raises ValueError (with the reason) unless ``predictor``/``corrector`` can sample from ``sde``."""
  pred_cls, corr_cls = get_predictor(predictor), get_corrector(corrector)
  if pred_cls is NonePredictor and corr_cls is NoneCorrector:
    raise ValueError("predictor='none' with corrector='none' does nothing (it would return the prior sample): "
                     "choose a predictor, a corrector, or both")
  for reason in (pred_cls.unsupported_reason(sde, probability_flow), corr_cls.unsupported_reason(sde)):
    if reason:
      raise ValueError(reason)
  return pred_cls, corr_cls


# ----------------------------------------------------------------------------------------------------
# Samplers (pure loops)
# ----------------------------------------------------------------------------------------------------

def sample_pc(score_fn, sde, x, timesteps, predictor='euler_maruyama', corrector='none', snr=0.16, n_steps=1,
              probability_flow=False, denoise=True, generator=None, progress=False):
  """Predictor–corrector sampling from ``x`` (the prior sample x_T) along ``timesteps`` (descending).

  Each time ``t`` of the grid runs the corrector, then the predictor (as in score_sde). With ``denoise``
  the returned sample is the last predictor's mean (no noise added at the final step).

  Args:
    score_fn: ``score_fn(x, t) -> ∇_x log p_t(x)`` for ``x`` [B, ...] and ``t`` [B].
    sde: the forward ``sde_lib.SDE``.
    x: starting point [B, ...] (its dtype and device are kept).
    timesteps: the 1-D grid of times, e.g. ``get_time_grid(sde, eps)``.
    predictor, corrector: registered names (see ``get_predictor``/``get_corrector``).
    snr, n_steps: corrector signal-to-noise ratio and number of steps per time.
    probability_flow: use the probability-flow ODE in the predictor.
    generator: ``torch.Generator`` for every noise draw.
    progress: show a tqdm progress bar.

  Returns:
    ``(samples [B, ...], nfe)``: nfe = score evaluations made = len(timesteps) × (predictor + corrector
    evaluations per step).
  """
  pred_cls, corr_cls = check_pc_combination(sde, predictor, corrector, probability_flow)
  counted = CountedFn(score_fn)
  pred = pred_cls(sde, counted, probability_flow)
  corr = corr_cls(sde, counted, snr, n_steps)
  x_mean = x
  for t in tqdm(timesteps.tolist(), desc='PC sampling', disable=not progress, leave=False):
    vec_t = batch_time(t, x)
    x, x_mean = corr.update_fn(x, vec_t, generator)
    x, x_mean = pred.update_fn(x, vec_t, generator)
  return (x_mean if denoise else x), counted.calls


# Adaptive torchdiffeq methods, and the scipy names mapped onto them (same Runge–Kutta pairs).
_SCIPY_TO_TORCHDIFFEQ = {'RK45': 'dopri5', 'RK23': 'bosh3', 'DOP853': 'dopri8'}
_TORCHDIFFEQ_ADAPTIVE = ('dopri5', 'dopri8', 'bosh3', 'fehlberg2', 'adaptive_heun')
_SCIPY_METHODS = ('RK45', 'RK23', 'DOP853', 'Radau', 'BDF', 'LSODA')


def resolve_ode_method(method: str, solver: str) -> str:
  """The ODE method name understood by ``solver`` ('torchdiffeq' or 'scipy').

  scipy's explicit pairs map to torchdiffeq's (RK45→dopri5, RK23→bosh3, DOP853→dopri8) and back; the
  implicit scipy methods (Radau, BDF, LSODA) exist only with ``solver='scipy'``.
  """
  if solver == 'torchdiffeq':
    if method in _SCIPY_TO_TORCHDIFFEQ:
      return _SCIPY_TO_TORCHDIFFEQ[method]
    if method in _TORCHDIFFEQ_ADAPTIVE:
      return method
    raise ValueError(f"ODE method {method!r} is not available with solver='torchdiffeq'; valid: "
                     f"{', '.join(list(_SCIPY_TO_TORCHDIFFEQ) + list(_TORCHDIFFEQ_ADAPTIVE))} "
                     f"(implicit scipy methods need solver='scipy')")
  if solver == 'scipy':
    back = {v: k for k, v in _SCIPY_TO_TORCHDIFFEQ.items()}
    if method in back:
      return back[method]
    if method in _SCIPY_METHODS:
      return method
    raise ValueError(f"ODE method {method!r} is not available with solver='scipy'; valid: {', '.join(_SCIPY_METHODS)}")
  raise ValueError(f"unknown ODE solver {solver!r}; valid: scipy, torchdiffeq")


def solve_ode(fn, y0: torch.Tensor, t0: float, t1: float, *, solver='torchdiffeq', method='RK45', rtol=1e-5,
              atol=1e-5, max_nfe=0):
  """Integrates dy/dt = fn(t, y) from ``t0`` to ``t1`` (either direction) and returns ``(y(t1), nfe)``.

  ``fn(t, y)`` receives a 0-dim time tensor and ``y`` shaped, typed and placed like ``y0``, and returns a
  tensor of the same shape. ``solver='torchdiffeq'`` integrates on ``y0``'s device in ``y0``'s dtype (times
  in float64); ``solver='scipy'`` runs ``scipy.integrate.solve_ivp`` on a float64 host copy and calls
  ``fn`` on ``y0``'s device/dtype (one device↔host round trip per evaluation, as the official code).
  The error norm is the RMS over all entries of ``y`` in both cases. ``nfe`` = calls of ``fn``.
  ``max_nfe`` > 0 stops a solve that needs more evaluations with ``ODEBudgetError`` (a diverged score
  makes the ODE stiff and the adaptive solver crawl instead of failing).
  """
  method = resolve_ode_method(method, solver)
  counted = CountedFn(fn, max_nfe, f'the ODE from t={t0:g} to t={t1:g} needed more than {max_nfe} evaluations '
                                   f'(rtol {rtol:g}, atol {atol:g}): the score is probably diverged, or raise '
                                   'sampling.ode_max_nfe (0 = no limit)')
  if solver == 'torchdiffeq':
    times = torch.tensor([t0, t1], dtype=torch.float64, device=y0.device)
    # step_t makes the last step end exactly on t1: torchdiffeq otherwise steps past t1 and interpolates,
    # evaluating fn outside [eps, T] (where e.g. the VP marginal std is undefined for t < 0).
    y1 = torchdiffeq.odeint(counted, y0, times, rtol=rtol, atol=atol, method=method,
                            options={'step_t': times[1:]})[-1]
    return y1, counted.calls

  shape, device, dtype = y0.shape, y0.device, y0.dtype

  def numpy_fn(t, y):
    y_t = torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)
    t_t = torch.tensor(t, device=device, dtype=dtype)
    return counted(t_t, y_t).detach().reshape(-1).cpu().numpy().astype(np.float64)

  y0_np = y0.detach().reshape(-1).cpu().numpy().astype(np.float64)
  sol = integrate.solve_ivp(numpy_fn, (t0, t1), y0_np, method=method, rtol=rtol, atol=atol)
  if not sol.success:
    raise RuntimeError(f'scipy solve_ivp failed: {sol.message}')
  y1 = torch.from_numpy(sol.y[:, -1]).reshape(shape).to(device=device, dtype=dtype)
  return y1, counted.calls


def sample_ode(score_fn, sde, x, eps, method='RK45', rtol=1e-5, atol=1e-5, solver='torchdiffeq', denoise=True,
               progress=False, max_nfe=0, cuda_graph=True):
  """Probability-flow ODE sampling: integrates dx/dt = f(x,t) - g(t)² s(x,t)/2 from ``T`` down to ``eps``.

  With ``denoise`` one reverse-diffusion predictor step (no noise, ``probability_flow=False``) is
  applied at ``t = eps`` and its mean returned, as in score_sde. Deterministic given ``x``.

  Args:
    score_fn: ``score_fn(x, t) -> ∇_x log p_t(x)``.
    sde: the forward ``sde_lib.SDE``.
    x: the starting point x_T [B, ...].
    eps: end time of the integration.
    method, rtol, atol, solver, max_nfe: see ``solve_ode``.
    progress: show a tqdm counter of the network evaluations.
    cuda_graph: for ``x`` on a CUDA device, replay the drift from a captured CUDA graph
      (``cuda_graphs.maybe_graphed``: same numbers, far fewer kernel launches; one warm-up evaluation,
      counted in ``nfe``). No effect on the CPU.

  Returns:
    ``(samples [B, ...], nfe)``; nfe counts the solver's evaluations plus the denoising one.
  """
  rsde = sde.reverse(score_fn, probability_flow=True)
  bar = tqdm(desc='ODE sampling (nfe)', disable=not progress, leave=False)

  def velocity(y, t):
    return rsde.sde(y, t)[0]

  velocity, extra = maybe_graphed(velocity, (x, batch_time(sde.T, x)), cuda_graph)

  def drift(t, y):
    bar.update(1)
    return velocity(y, batch_time(t, y))

  try:
    x, nfe = solve_ode(drift, x, sde.T, eps, solver=solver, method=method, rtol=rtol, atol=atol,
                       max_nfe=max_nfe)
  finally:
    bar.close()
  nfe += extra
  if denoise:
    _, x = ReverseDiffusionPredictor(sde, score_fn, probability_flow=False).update_fn(x, batch_time(eps, x))
    nfe += 1
  return x, nfe


# ----------------------------------------------------------------------------------------------------
# Configured sampling functions
# ----------------------------------------------------------------------------------------------------

def _model_device_dtype(model):
  """Device and floating dtype of the model's first parameter/buffer (CPU/float32 when it has none)."""
  for tensor in list(model.parameters()) + list(model.buffers()):
    if tensor.is_floating_point():
      return tensor.device, tensor.dtype
  return torch.device('cpu'), torch.float32


def resolve_eps(config, sde, eps=None) -> float:
  """The end time of sampling: ``eps`` if given (non-zero), else ``config.sampling.eps`` if non-zero,
  else ``sde.default_sampling_eps`` (1e-3 VP/sub-VP, 1e-5 VE)."""
  if eps:
    return float(eps)
  if config.sampling.get('eps', 0.):
    return float(config.sampling.eps)
  return float(sde.default_sampling_eps)


def class_labels_for(model, labels, batch, device, config):
  """The class labels [B] a sampler feeds ``model``: ``labels`` or the config's (``conditioning``) for a
  class-conditional model, None for an unconditional one (which refuses ``labels``)."""
  k = conditioning.model_num_classes(model)
  if not k:
    if labels is not None:
      raise ValueError('class labels were given to sample a model that is not class-conditional')
    return None
  if labels is None:
    labels = conditioning.sampling_labels(config, batch)
  if tuple(labels.shape) != (batch,):
    raise ValueError(f'labels has shape {tuple(labels.shape)}, expected ({batch},)')
  return conditioning.check_labels(labels, k).to(device)


def get_sampling_fn(config, sde, shape, inverse_scaler, eps=None, progress=False):
  """The sampler selected by ``config.sampling.method`` ('pc' or 'ode').

  Invalid predictor/corrector combinations are refused here (ValueError with the reason): ancestral
  sampling on sub-VP or with ``probability_flow``, and predictor='none' with corrector='none'.

  Args:
    config: the experiment config (``config.sampling.*``, ``config.training.continuous``).
    sde: the forward ``sde_lib.SDE``.
    shape: the batch shape ``[B, ...]`` of the samples.
    inverse_scaler: maps the model's data range back to [0, 1] (applied to the returned samples).
    eps: end time; None/0 = ``config.sampling.eps`` or the SDE default (see ``resolve_eps``).
    progress: show a tqdm progress bar.

  Returns:
    ``sampling_fn(model, z=None, generator=None, labels=None) -> (samples [B, ...], nfe)``. ``z`` is the
    starting prior sample (drawn with ``generator`` when omitted); the device and dtype are ``z``'s, or else
    the model's. ``nfe`` counts the network evaluations actually made (score evaluations: one with
    classifier-free guidance scale 0 or 1, otherwise each is one pass over a batch of 2B). The PC sampler
    uses the score parameterisation of ``config.training.continuous``; the ODE sampler, as score_sde, always
    conditions on continuous time (smooth in t; for VP it coincides with the discrete labels when N = 1000).
    A class-conditional model samples the classes ``labels`` [B] (default: ``config.sampling.labels`` for
    samples 0 … B−1 as class indices; callers that know the class names pass ``labels``) with guidance
    ``config.sampling.guidance``; an unconditional model refuses labels.
  """
  config = default_configs.with_defaults(config)
  shape = tuple(shape)
  eps = resolve_eps(config, sde, eps)
  s = config.sampling
  method = s.method.lower()

  if method == 'pc':
    predictor, corrector = s.predictor.lower(), s.corrector.lower()
    check_pc_combination(sde, predictor, corrector, s.probability_flow)
    continuous = config.training.continuous

    def run(score_fn, x, generator):
      timesteps = get_time_grid(sde, eps)
      return sample_pc(score_fn, sde, x, timesteps, predictor=predictor, corrector=corrector, snr=s.snr,
                       n_steps=s.n_steps_each, probability_flow=s.probability_flow, denoise=s.noise_removal,
                       generator=generator, progress=progress)

  elif method == 'ode':
    solver = s.get('ode_solver', 'torchdiffeq')
    ode_method, rtol, atol, denoise = s.ode_method, s.ode_rtol, s.ode_atol, s.noise_removal
    max_nfe, cuda_graph = s.get('ode_max_nfe', 0), s.get('cuda_graph', True)
    resolve_ode_method(ode_method, solver)
    continuous = True

    def run(score_fn, x, generator):
      return sample_ode(score_fn, sde, x, eps, method=ode_method, rtol=rtol, atol=atol, solver=solver,
                        denoise=denoise, progress=progress, max_nfe=max_nfe, cuda_graph=cuda_graph)

  else:
    raise ValueError(f"unknown sampling method {s.method!r}; valid: ode, pc")

  conditioning.check_sampling(config)
  guidance = float(s.get('guidance', 1.))

  def sampling_fn(model, z=None, generator=None, labels=None):
    """Samples ``shape`` from ``model`` (prior draw ``z`` and classes ``labels`` optional); returns
    ``(inverse_scaler(x), nfe)``."""
    with torch.no_grad():
      if z is None:
        device, dtype = _model_device_dtype(model)
        draw_device = device if generator is None else generator.device
        x = sde.prior_sampling(shape, generator=generator, device=draw_device, dtype=dtype).to(device)
      else:
        if tuple(z.shape) != shape:
          raise ValueError(f'z has shape {tuple(z.shape)}, expected {shape}')
        x = z
      y = class_labels_for(model, labels, shape[0], x.device, config)
      score_fn = mutils.get_score_fn(sde, model, train=False, continuous=continuous, class_labels=y,
                                     guidance=guidance)
      x, nfe = run(score_fn, x, generator)
      return inverse_scaler(x), nfe

  return sampling_fn


# ----------------------------------------------------------------------------------------------------
# One-step generators (a score network distilled into G(z, y), e.g. by SFD)
# ----------------------------------------------------------------------------------------------------

def marginal_coefficients(sde, t):
  """``(m_t, σ_t)`` [B] of ``x_t = m_t x_0 + σ_t z`` at times ``t`` [B]."""
  mean, std = sde.marginal_prob(torch.ones_like(t), t)
  return mean, std


def denoise(score_fn, sde, x, t):
  """Tweedie's estimate E[x_0 | x_t = x] = (x + σ_t² s(x, t)) / m_t for ``x`` [B, ...] at times ``t`` [B]."""
  m, std = marginal_coefficients(sde, t)
  return (x + append_dims(std ** 2, x.ndim) * score_fn(x, t)) / append_dims(m, x.ndim)


def one_step_generate(sde, model, z, t_init, class_labels=None, train=False, continuous=True):
  """G(z, y) = x̂_0: the denoiser of ``model`` at the fixed time ``t_init`` (in (0, T]) applied to x = σ_init z.

  ``z`` [B, ...] standard normal, ``class_labels`` [B] (class-conditional networks; None: the null label) ->
  [B, ...] in the model's data range; one network evaluation. As SFD's generator: the noised input holds no
  data part (x = σ_init z), and the network's x̂_0 is the sample.
  """
  t = torch.full((z.shape[0],), float(t_init), device=z.device, dtype=z.dtype)
  _, std = marginal_coefficients(sde, t)
  x = append_dims(std, z.ndim) * z
  score_fn = mutils.get_score_fn(sde, model, train=train, continuous=continuous, class_labels=class_labels)
  return denoise(score_fn, sde, x, t)


def get_one_step_sampling_fn(config, sde, shape, inverse_scaler, t_init):
  """The sampler of a one-step generator checkpoint (``utils.EXTRA_ENTRIES``' ``generator``): the same
  ``sampling_fn(model, z=None, generator=None, labels=None) -> (samples [B, ...], nfe = 1)`` as
  ``get_sampling_fn``, with ``z`` a standard normal draw [B, ...] (``generator`` draws it when omitted) and the
  classes of a class-conditional generator as there (without guidance: ``sampling.guidance`` must be 1)."""
  config = default_configs.with_defaults(config)
  shape = tuple(shape)
  t_init = float(t_init)
  if float(config.sampling.get('guidance', 1.)) != 1.:
    raise ValueError(f'a one-step generator samples its distilled conditional model: config.sampling.guidance must '
                     f'be 1, got {config.sampling.guidance}')
  if not 0. < t_init <= sde.T:
    raise ValueError(f'the generator time t_init={t_init} must be in (0, {sde.T}]')
  continuous = bool(config.training.continuous)

  def sampling_fn(model, z=None, generator=None, labels=None):
    with torch.no_grad():
      if z is None:
        device, dtype = _model_device_dtype(model)
        draw_device = device if generator is None else generator.device
        z = torch.randn(shape, generator=generator, device=draw_device, dtype=dtype).to(device)
      elif tuple(z.shape) != shape:
        raise ValueError(f'z has shape {tuple(z.shape)}, expected {shape}')
      y = class_labels_for(model, labels, shape[0], z.device, config)
      x = one_step_generate(sde, model, z, t_init, y, continuous=continuous)
      return inverse_scaler(x), 1

  return sampling_fn
