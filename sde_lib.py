"""Forward SDEs (VP, sub-VP, VE), their reverse-time SDE/ODE, and the network parameterisation.

Conventions (as in score_sde_pytorch):
  * time ``t`` is a ``[B]`` tensor in ``[eps, T]`` with ``T = 1``; ``t = 0`` is the data end;
  * ``x`` is ``[B, ...]`` of any rank (images ``[B, C, H, W]`` or vectors ``[B, D]``);
  * ``marginal_prob(x0, t)`` returns the mean ``[B, ...]`` and the standard deviation ``σ_t`` ``[B]``
    of the perturbation kernel ``p_0t(x_t | x_0) = N(mean, σ_t² I)``;
  * every tensor returned follows the device and dtype of the input; the discrete tables are kept in
    float64 on the CPU and moved on use (the CPU/CUDA index mix-up of the original code cannot occur).

Each SDE also owns how a score network is parameterised (one place, no ``isinstance`` elsewhere):
  * ``model_labels(t, continuous)``: the time conditioning fed to the network;
  * ``output_to_score(out, t, continuous)``: the score ``∇_x log p_t(x)`` from the network output;
  * ``predicts_noise``: True when the network predicts the noise ``ε`` (VP, sub-VP), False when it
    predicts the score directly (VE).
"""
import abc
import math

import torch

from tensor_utils import append_dims, sum_flat, num_dims
from configs import default_configs

# The continuous-time VP/sub-VP networks of score_sde are conditioned on ``t * 999`` regardless of N.
VP_CONTINUOUS_LABEL_SCALE = 999.


def _table(values: torch.Tensor, ref: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
  """Looks ``values[index]`` up on ``index``'s device, returned in ``ref``'s dtype."""
  return values.to(device=index.device)[index].to(ref.dtype)


class SDE(abc.ABC):
  """A forward SDE dx = f(x, t) dt + g(t) dw on t ∈ [0, T], discretised with N steps."""

  #: default ``eps`` of the samplers (the smallest time integrated to).
  default_sampling_eps = 1e-3

  def __init__(self, N: int):
    if int(N) < 1:
      raise ValueError(f'the number of discretisation steps N must be >= 1, got {N}')
    self.N = int(N)

  @property
  def T(self) -> float:
    """End time of the SDE."""
    return 1.

  @abc.abstractmethod
  def sde(self, x, t):
    """Drift ``f(x, t)`` [B, ...] and diffusion ``g(t)`` [B]."""

  @abc.abstractmethod
  def marginal_prob(self, x, t):
    """Mean [B, ...] and std σ_t [B] of ``p_0t(x_t | x_0 = x)``."""

  @abc.abstractmethod
  def prior_sampling(self, shape, generator=None, device=None, dtype=None):
    """One draw of the prior ``p_T`` with the given shape."""

  @abc.abstractmethod
  def prior_logp(self, z):
    """Log-density of the prior at ``z``, in nats, shape [B]."""

  @property
  @abc.abstractmethod
  def predicts_noise(self) -> bool:
    """Whether the network output is the noise ε (True) or the score (False)."""

  @abc.abstractmethod
  def model_labels(self, t, continuous: bool):
    """Time conditioning fed to the score network for times ``t`` [B]."""

  @abc.abstractmethod
  def output_to_score(self, out, t, continuous: bool):
    """The score ∇_x log p_t(x) [B, ...] from the network output ``out`` at times ``t``."""

  def timestep_index(self, t):
    """Index of the discrete step for time ``t``: ``floor(t (N-1) / T)`` as in score_sde."""
    return (t * (self.N - 1) / self.T).long()

  def discretize(self, x, t):
    """Euler–Maruyama discretisation x_{i+1} = x_i + f_i + G_i z_i with dt = 1/N.

    Returns ``f`` [B, ...] and ``G`` [B].
    """
    dt = 1. / self.N
    drift, diffusion = self.sde(x, t)
    return drift * dt, diffusion * math.sqrt(dt)

  def langevin_alpha(self, t):
    """The step-size factor α_i of the Langevin/ALD correctors (1 except for VP-type SDEs)."""
    return torch.ones_like(t)

  def discrete_marginal(self, index):
    """Mean scale and std [B] of the discrete (DDPM/SMLD) perturbation at integer noise levels ``index`` [B].

    The network is then conditioned on ``index`` itself, as in score_sde's discrete training.
    """
    raise ValueError(f'discrete training is defined for VPSDE (DDPM) and VESDE (SMLD), not for '
                     f'{type(self).__name__}: set training.continuous=True')

  def reverse(self, score_fn, probability_flow: bool = False) -> 'ReverseSDE':
    """The reverse-time SDE (or, with ``probability_flow``, the probability-flow ODE) driven by ``score_fn``."""
    return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
  """Reverse-time SDE dx = [f - g² s] dt + g dw̄, or the ODE dx = [f - g² s / 2] dt.

  ``score_fn(x, t)`` returns the score ∇_x log p_t(x) [B, ...].
  """

  def __init__(self, forward: SDE, score_fn, probability_flow: bool = False):
    self.forward = forward
    self.score_fn = score_fn
    self.probability_flow = probability_flow
    self.N = forward.N

  @property
  def T(self):
    return self.forward.T

  def _scale(self):
    return 0.5 if self.probability_flow else 1.

  def sde(self, x, t):
    """Reverse drift [B, ...] and diffusion [B] (zero for the ODE)."""
    drift, diffusion = self.forward.sde(x, t)
    score = self.score_fn(x, t)
    drift = drift - append_dims(diffusion, x.ndim) ** 2 * score * self._scale()
    diffusion = torch.zeros_like(diffusion) if self.probability_flow else diffusion
    return drift, diffusion

  def discretize(self, x, t):
    """Reverse of the forward discretisation: rev_f = f - G² s (× 1/2 for the ODE), rev_G = G (or 0)."""
    f, G = self.forward.discretize(x, t)
    rev_f = f - append_dims(G, x.ndim) ** 2 * self.score_fn(x, t) * self._scale()
    rev_G = torch.zeros_like(G) if self.probability_flow else G
    return rev_f, rev_G


class _LinearBetaSchedule:
  """β(t) = β_0 + t (β_1 - β_0), shared by VP and sub-VP, with DDPM's table linspace(β_0/N, β_1/N, N)
  and α = 1 - β. The tables are checked on use: with β_1/N ≥ 1 the discrete steps (DDPM discretisation,
  ancestral sampling, Langevin step sizes, DDPM training) are undefined, while the continuous-time SDE
  is fine with any N."""

  def _init_schedule(self, beta_min, beta_max):
    self.beta_0 = float(beta_min)
    self.beta_1 = float(beta_max)
    self._discrete_betas = torch.linspace(self.beta_0 / self.N, self.beta_1 / self.N, self.N, dtype=torch.float64)

  def beta(self, t):
    return self.beta_0 + t * (self.beta_1 - self.beta_0)

  def log_mean_coeff(self, t):
    """log of the mean scale: -t²(β_1-β_0)/4 - t β_0/2."""
    return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

  def langevin_alpha(self, t):
    return _table(self.alphas, t, self.timestep_index(t))

  def _tables(self):
    if self.beta_1 / self.N >= 1.:
      raise ValueError(f'the discrete step β_max/N = {self.beta_1}/{self.N} must be below 1: raise '
                       'model.num_scales or lower model.beta_max (continuous-time samplers and losses do not '
                       'need this)')
    return self._discrete_betas

  @property
  def discrete_betas(self):
    return self._tables()

  @property
  def alphas(self):
    return 1. - self._tables()


class _GaussianPriorMixin:
  """Standard-normal prior N(0, I) shared by VP and sub-VP."""

  def prior_sampling(self, shape, generator=None, device=None, dtype=None):
    return torch.randn(*shape, generator=generator, device=device, dtype=dtype)

  def prior_logp(self, z):
    n = num_dims(z)
    return -0.5 * n * math.log(2 * math.pi) - 0.5 * sum_flat(z ** 2)


class VPSDE(_LinearBetaSchedule, _GaussianPriorMixin, SDE):
  """Variance-preserving SDE: dx = -β(t)/2 x dt + sqrt(β(t)) dw, β(t) = β_0 + t (β_1 - β_0).

  Its discretisation is DDPM's with betas linspace(β_0/N, β_1/N, N).
  """

  def __init__(self, beta_min=0.1, beta_max=20., N=1000):
    super().__init__(N)
    self._init_schedule(beta_min, beta_max)
    self.alphas_cumprod = torch.cumprod(1. - self._discrete_betas, dim=0)
    self.sqrt_alphas_cumprod = torch.sqrt(self.alphas_cumprod)
    self.sqrt_1m_alphas_cumprod = torch.sqrt(1. - self.alphas_cumprod)

  def sde(self, x, t):
    beta_t = self.beta(t)
    return -0.5 * append_dims(beta_t, x.ndim) * x, torch.sqrt(beta_t)

  def marginal_prob(self, x, t):
    lmc = self.log_mean_coeff(t)
    mean = append_dims(torch.exp(lmc), x.ndim) * x
    std = torch.sqrt(-torch.expm1(2. * lmc))
    return mean, std

  def discretize(self, x, t):
    """DDPM discretisation: f = (sqrt(α_i) - 1) x, G = sqrt(β_i)."""
    i = self.timestep_index(t)
    beta = _table(self.discrete_betas, x, i)
    alpha = _table(self.alphas, x, i)
    f = append_dims(torch.sqrt(alpha), x.ndim) * x - x
    return f, torch.sqrt(beta)

  def discrete_marginal(self, index):
    """DDPM: x_i = sqrt(ᾱ_i) x_0 + sqrt(1 - ᾱ_i) z."""
    self._tables()
    ref = torch.empty((), dtype=torch.get_default_dtype())
    return _table(self.sqrt_alphas_cumprod, ref, index), _table(self.sqrt_1m_alphas_cumprod, ref, index)

  predicts_noise = True

  def model_labels(self, t, continuous):
    return t * VP_CONTINUOUS_LABEL_SCALE if continuous else t * (self.N - 1)

  def output_to_score(self, out, t, continuous):
    """score = -ε̂ / σ_t; σ_t from the continuous marginal, or sqrt(1 - ᾱ_i) when discrete."""
    if continuous:
      std = self.marginal_prob(torch.zeros_like(out), t)[1]
    else:
      std = _table(self.sqrt_1m_alphas_cumprod, out, (t * (self.N - 1)).long())
    return -out / append_dims(std, out.ndim)


class subVPSDE(_LinearBetaSchedule, _GaussianPriorMixin, SDE):
  """Sub-VP SDE: dx = -β(t)/2 x dt + sqrt(β(t)(1 - exp(-2∫β))) dw.

  Marginal std σ_t = 1 - exp(-∫_0^t β) (the official ``1 - exp(2·log_mean_coeff)``). The network is
  always conditioned on ``t * 999`` (as in score_sde, discrete training included). The DDPM tables of
  the same β schedule are provided so that the Langevin/ALD correctors work (the official class lacks them).
  """

  def __init__(self, beta_min=0.1, beta_max=20., N=1000):
    super().__init__(N)
    self._init_schedule(beta_min, beta_max)

  def sde(self, x, t):
    beta_t = self.beta(t)
    discount = -torch.expm1(-2 * self.beta_0 * t - (self.beta_1 - self.beta_0) * t ** 2)
    return -0.5 * append_dims(beta_t, x.ndim) * x, torch.sqrt(beta_t * discount)

  def marginal_prob(self, x, t):
    lmc = self.log_mean_coeff(t)
    mean = append_dims(torch.exp(lmc), x.ndim) * x
    std = -torch.expm1(2. * lmc)
    return mean, std

  predicts_noise = True

  def model_labels(self, t, continuous):
    return t * VP_CONTINUOUS_LABEL_SCALE

  def output_to_score(self, out, t, continuous):
    std = self.marginal_prob(torch.zeros_like(out), t)[1]
    return -out / append_dims(std, out.ndim)


class VESDE(SDE):
  """Variance-exploding SDE: dx = σ(t) sqrt(2 log(σ_max/σ_min)) dw, σ(t) = σ_min (σ_max/σ_min)^t.

  Its discretisation is SMLD/NCSN's with geometric sigmas from σ_min to σ_max.
  """

  default_sampling_eps = 1e-5

  def __init__(self, sigma_min=0.01, sigma_max=50., N=1000):
    super().__init__(N)
    self.sigma_min = float(sigma_min)
    self.sigma_max = float(sigma_max)
    self.discrete_sigmas = torch.exp(torch.linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.N,
                                                    dtype=torch.float64))

  def sigma(self, t):
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  def sde(self, x, t):
    diffusion = self.sigma(t) * math.sqrt(2 * (math.log(self.sigma_max) - math.log(self.sigma_min)))
    return torch.zeros_like(x), diffusion

  def marginal_prob(self, x, t):
    return x, self.sigma(t)

  def prior_sampling(self, shape, generator=None, device=None, dtype=None):
    return torch.randn(*shape, generator=generator, device=device, dtype=dtype) * self.sigma_max

  def prior_logp(self, z):
    n = num_dims(z)
    return -0.5 * n * math.log(2 * math.pi * self.sigma_max ** 2) - sum_flat(z ** 2) / (2 * self.sigma_max ** 2)

  def discretize(self, x, t):
    """SMLD discretisation: f = 0, G = sqrt(σ_i² - σ_{i-1}²) (σ_{-1} = 0)."""
    i = self.timestep_index(t)
    sigma = _table(self.discrete_sigmas, x, i)
    adjacent = torch.where(i == 0, torch.zeros_like(sigma), _table(self.discrete_sigmas, x, (i - 1).clamp(min=0)))
    return torch.zeros_like(x), torch.sqrt(sigma ** 2 - adjacent ** 2)

  def discrete_marginal(self, index):
    """SMLD: x_i = x_0 + σ_i z with σ_i the i-th of the descending noise levels (index 0 = σ_max)."""
    ref = torch.empty((), dtype=torch.get_default_dtype())
    sigma = _table(self.discrete_sigmas, ref, (self.N - 1) - index)
    return torch.ones_like(sigma), sigma

  predicts_noise = False

  def model_labels(self, t, continuous):
    """σ(t) when continuous; otherwise the index of σ in the descending NCSN list, round((T - t)(N-1))."""
    if continuous:
      return self.sigma(t)
    return torch.round((self.T - t) * (self.N - 1)).long()

  def output_to_score(self, out, t, continuous):
    return out


_SDES = {'vpsde': VPSDE, 'subvpsde': subVPSDE, 'vesde': VESDE}


def get_sde(config):
  """Builds the SDE named by ``config.training.sde`` from ``config.model`` (β or σ range, ``num_scales``)."""
  config = default_configs.with_defaults(config)
  name = config.training.sde.lower()
  if name not in _SDES:
    raise ValueError(f"unknown SDE '{config.training.sde}'; valid: {', '.join(sorted(_SDES))}")
  m = config.model
  if name == 'vesde':
    return VESDE(sigma_min=m.sigma_min, sigma_max=m.sigma_max, N=m.num_scales)
  return _SDES[name](beta_min=m.beta_min, beta_max=m.beta_max, N=m.num_scales)
