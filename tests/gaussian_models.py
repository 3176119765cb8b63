"""Analytic dummy score networks for Gaussian data, and the closed forms the tests compare against.

For data x_0 ~ N(μ, Σ) and a forward SDE with perturbation kernel N(m_t x_0, σ_t² I), the marginal is

    p_t = N(m_t μ, Σ_t),   Σ_t = m_t² Σ + σ_t² I,   ∇ log p_t(x) = -Σ_t⁻¹ (x - m_t μ),

so a "network" returning the exact score (or the noise -σ_t · score for VP/sub-VP) can drive the
samplers and the likelihood, whose outputs are then known in closed form. Σ is diagonalised once
(Σ = U diag(λ) Uᵀ); every Σ_t shares U. Data may have any shape: it is flattened to D = prod(shape).
"""
import torch
from torch import nn

import sde_lib


def make_sde(name, N=1000):
  """The three SDEs with the project defaults, except a smaller VE σ_max (10) to keep the tests fast."""
  if name == 'vp':
    return sde_lib.VPSDE(beta_min=0.1, beta_max=20., N=N)
  if name == 'subvp':
    return sde_lib.subVPSDE(beta_min=0.1, beta_max=20., N=N)
  if name == 've':
    return sde_lib.VESDE(sigma_min=0.01, sigma_max=10., N=N)
  raise ValueError(name)


def random_covariance(dim, generator, scale=1.):
  """A random SPD matrix with eigenvalues in [0.25, 2.25] × scale², deterministic given ``generator``."""
  q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
  lam = (0.5 + 1.0 * torch.rand(dim, generator=generator, dtype=torch.float64)) ** 2 * scale ** 2
  return q @ torch.diag(lam) @ q.T


class _CountBackward(torch.autograd.Function):
  """Identity whose backward increments ``owner.backward_calls`` (counts VJPs through the network)."""

  @staticmethod
  def forward(ctx, x, owner):
    ctx.owner = owner
    return x.clone()

  @staticmethod
  def backward(ctx, grad):
    ctx.owner.backward_calls += 1
    return grad, None


class GaussianScoreModel(nn.Module):
  """A score "network" ``forward(x, labels)`` that is exact for data N(mean, cov) under ``sde``.

  It reads the time from the continuous-time labels like a real network would: VP/sub-VP labels are
  ``999 t`` (then m_t, σ_t come from ``sde.marginal_prob``), VE labels are σ(t) itself (m_t = 1). It
  returns the noise prediction ``-σ_t · score`` when ``sde.predicts_noise`` (VP/sub-VP) and the score
  otherwise (VE). ``calls`` counts the forwards and ``backward_calls`` the backward passes (VJPs)
  through it. Works in the dtype/device of ``x``.
  """

  def __init__(self, sde, mean, cov):
    super().__init__()
    self.sde = sde
    mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
    cov = torch.as_tensor(cov, dtype=torch.float64)
    lam, vecs = torch.linalg.eigh(cov)
    self.register_buffer('mean', mean)
    self.register_buffer('lam', lam)
    self.register_buffer('vecs', vecs)
    self.calls = 0
    self.backward_calls = 0

  def scale_and_std(self, labels):
    """m_t and σ_t [B] recovered from the labels."""
    if self.sde.predicts_noise:
      t = labels / sde_lib.VP_CONTINUOUS_LABEL_SCALE
      m, std = self.sde.marginal_prob(torch.ones_like(t), t)
      return m, std
    return torch.ones_like(labels), labels

  def score(self, x, m, std):
    flat = x.reshape(x.shape[0], -1)
    mean, lam, vecs = (b.to(x.dtype) for b in (self.mean, self.lam, self.vecs))
    centred = flat - m[:, None] * mean
    coords = centred @ vecs / (m[:, None] ** 2 * lam + std[:, None] ** 2)
    return -(coords @ vecs.T).reshape(x.shape)

  def forward(self, x, labels):
    self.calls += 1
    m, std = self.scale_and_std(labels.to(x.dtype))
    out = self.score(x, m, std)
    if self.sde.predicts_noise:
      out = -std.reshape((-1,) + (1,) * (x.ndim - 1)) * out
    return _CountBackward.apply(out, self) if torch.is_grad_enabled() else out


def marginal(sde, t, mean, cov):
  """Mean [D] and covariance [D, D] (float64) of p_t for data N(mean, cov); ``t`` a float."""
  tt = torch.tensor([t], dtype=torch.float64)
  m, std = sde.marginal_prob(torch.ones(1, dtype=torch.float64), tt)
  m, std = m.item(), std.item()
  mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
  cov = torch.as_tensor(cov, dtype=torch.float64)
  return m * mean, m ** 2 * cov + std ** 2 * torch.eye(cov.shape[0], dtype=torch.float64)


def log_density(x, mean, cov):
  """log N(x; mean, cov) in nats for x [B, ...] flattened to [B, D] (float64)."""
  flat = x.reshape(x.shape[0], -1).double().cpu()
  dist = torch.distributions.MultivariateNormal(torch.as_tensor(mean, dtype=torch.float64).reshape(-1),
                                                covariance_matrix=torch.as_tensor(cov, dtype=torch.float64))
  return dist.log_prob(flat)


def flow_map(sde, x, t_from, t_to, mean, cov):
  """The exact probability-flow ODE map from time ``t_from`` to ``t_to`` for Gaussian data.

  The flow is affine and preserves the standardised coordinates Σ_t^{-1/2}(x - m_t μ) (all Σ_t share
  their eigenvectors), so x_to = m_to μ + Σ_to^{1/2} Σ_from^{-1/2} (x - m_from μ). Float64 on the CPU.
  """
  mean0, cov0 = marginal(sde, t_from, mean, cov)
  mean1, cov1 = marginal(sde, t_to, mean, cov)
  lam0, vecs = torch.linalg.eigh(cov0)
  lam1 = torch.diagonal(vecs.T @ cov1 @ vecs)
  flat = x.reshape(x.shape[0], -1).double().cpu()
  coords = (flat - mean0) @ vecs * torch.sqrt(lam1 / lam0)
  return (mean1 + coords @ vecs.T).reshape(x.shape)


def sample_moments(x):
  """Sample mean [D] and covariance [D, D] (float64, CPU) of x [B, ...] flattened."""
  flat = x.reshape(x.shape[0], -1).double().cpu()
  return flat.mean(0), torch.cov(flat.T)
