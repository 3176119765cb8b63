"""Log-likelihoods of score-based models through the probability-flow ODE (nats and bits/dim).

The probability-flow ODE dx/dt = v(x, t) = f(x, t) - g(t)² s(x, t) / 2 transports p_eps to p_T, and
along a trajectory d log p_t(x_t)/dt = -∇·v(x_t, t). Integrating the augmented state (x, ∫∇·v) from
``eps`` to ``T`` therefore gives

    log p_eps(x) = log p_T(z) + ∫_eps^T ∇·v(x_t, t) dt,     z = x_T.

The divergence is exact for low-dimensional data (one vector–Jacobian product per dimension) and
otherwise the Hutchinson–Skilling estimate εᵀ (∂v/∂x) ε with one probe ε (Rademacher or Gaussian) drawn
once per call. Each right-hand-side evaluation costs ONE network forward (made with grad enabled) and
one VJP for Hutchinson (D VJPs when exact); the drift is read off the same forward (the official code
runs the network a second time for the divergence).

``get_log_likelihood_fn`` returns the log-density in nats per sample (the 2-D toy's unit);
``get_likelihood_fn`` converts it to bits/dim with score_sde's offset (see ``bpd_offset``).
"""
import contextlib
import math
from typing import Optional

import torch

from cuda_graphs import maybe_graphed
from models import utils as mutils
from sampling import batch_time, rademacher_like, randn_like, solve_ode
from tensor_utils import num_dims, sum_flat

#: data with at most this many dimensions gets the exact divergence by default.
EXACT_DIVERGENCE_MAX_DIMS = 16


def draw_probe(x: torch.Tensor, hutchinson_type: str = 'Rademacher', generator=None) -> torch.Tensor:
  """The Hutchinson probe ε shaped like ``x``: Rademacher (±1) or standard Gaussian; E[ε εᵀ] = I."""
  kind = hutchinson_type.lower()
  if kind == 'rademacher':
    return rademacher_like(x, generator)
  if kind == 'gaussian':
    return randn_like(x, generator)
  raise ValueError(f"unknown Hutchinson type {hutchinson_type!r}; valid: Gaussian, Rademacher")


def drift_and_divergence(drift_fn, x: torch.Tensor, t: torch.Tensor, probe: Optional[torch.Tensor] = None):
  """The drift v(x, t) [B, ...] and its divergence ∇_x·v [B] from one evaluation of ``drift_fn``.

  ``probe=None``: exact divergence Σ_i ∂v_i/∂x_i with one VJP per data dimension (the samples of the
  batch must not interact inside ``drift_fn``, true for a score network in eval mode).
  Otherwise the Hutchinson estimate εᵀ ∇_x(v·ε) from a single VJP.
  """
  with torch.enable_grad():
    x = x.detach().requires_grad_(True)
    drift = drift_fn(x, t)
    if probe is not None:
      div = sum_flat(_vjp(drift, x, probe) * probe)
    else:
      flat = drift.reshape(x.shape[0], -1)
      dims = flat.shape[1]
      div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
      for i in range(dims):
        onehot = torch.zeros_like(flat)
        onehot[:, i] = 1.
        div = div + _vjp(flat, x, onehot, retain_graph=i < dims - 1).reshape(x.shape[0], -1)[:, i]
  return drift.detach(), div.detach()


def _vjp(out, x, v, retain_graph=False):
  """vᵀ ∂out/∂x (zeros when ``out`` does not depend on ``x``)."""
  if not out.requires_grad:
    return torch.zeros_like(x)
  grad, = torch.autograd.grad(out, x, grad_outputs=v, retain_graph=retain_graph, allow_unused=True)
  return torch.zeros_like(x) if grad is None else grad


@contextlib.contextmanager
def frozen_parameters(model):
  """Turns ``requires_grad`` off for the parameters of ``model`` inside the block (then restores it): the
  divergence needs gradients with respect to x only, so autograd skips the weight-gradient work."""
  params = [p for p in model.parameters() if p.requires_grad]
  for p in params:
    p.requires_grad_(False)
  try:
    yield
  finally:
    for p in params:
      p.requires_grad_(True)


def bpd_offset(inverse_scaler) -> float:
  """score_sde's bits/dim offset, ``7 - inverse_scaler(-1)``: 7 for centred data in [-1, 1], 8 for [0, 1].

  A density on the scaled data is converted to a density on 8-bit pixel values {0, …, 255} (bins of
  width 1): with data in [0, 1] each bin has width 1/256, so log2(256) = 8 bits/dim are added; with
  centred data in [-1, 1] the bin width is 2/256 = 1/128 and log2(128) = 7 bits/dim are added.
  """
  return 7. - float(inverse_scaler(torch.tensor(-1., dtype=torch.float64)))


def logp_to_bpd(logp: torch.Tensor, dims: int, offset: float) -> torch.Tensor:
  """bits/dim from a log-density in nats per sample: ``-logp / (dims ln 2) + offset``."""
  return -logp / (dims * math.log(2.)) + offset


def get_log_likelihood_fn(sde, hutchinson_type='Rademacher', rtol=1e-5, atol=1e-5, method='RK45', eps=1e-5,
                          solver='torchdiffeq', exact_divergence=None, continuous=True, max_nfe=0, cuda_graph=True):
  """``log_likelihood_fn(model, data, generator=None) -> (logp [B], z [B, ...], nfe)``.

  ``logp`` is log p_eps(data) in nats per sample (no offset, no dequantisation); NLL = -logp.

  Args:
    sde: the forward ``sde_lib.SDE``.
    hutchinson_type: 'Rademacher' or 'Gaussian' probe (ignored with the exact divergence).
    rtol, atol, method: ODE solver tolerances and method (scipy names, mapped for torchdiffeq).
    eps: the ODE is integrated from ``eps`` (not 0) to ``T``.
    solver: 'torchdiffeq' (on the data's device) or 'scipy' (``solve_ivp`` on the host).
    exact_divergence: exact divergence (True), Hutchinson (False), or None = exact when the data has at
      most ``EXACT_DIVERGENCE_MAX_DIMS`` dimensions per sample.
    continuous: the score parameterisation; score_sde always uses continuous time here.
    max_nfe: > 0 stops a batch whose ODE needs more evaluations (``sampling.ODEBudgetError``).
    cuda_graph: for data on a CUDA device, capture one right-hand-side evaluation (forward + VJPs) in a
      CUDA graph per call and replay it (``cuda_graphs``; same numbers, far fewer kernel launches; a model
      that cannot be captured falls back to eager evaluation with a warning). No effect on the CPU.

  ``z`` is the latent (the ODE state at ``T``) and ``nfe`` the number of network forwards (= evaluations
  of the ODE's right-hand side, plus the one warm-up evaluation of a CUDA-graph capture). The divergence
  needs autograd: call it under ``torch.no_grad()`` if you like, but not under ``torch.inference_mode()``.
  """

  def log_likelihood_fn(model, data, generator=None):
    batch = data.shape[0]
    exact = num_dims(data) <= EXACT_DIVERGENCE_MAX_DIMS if exact_divergence is None else bool(exact_divergence)
    probe = None if exact else draw_probe(data, hutchinson_type, generator)
    score_fn = mutils.get_score_fn(sde, model, train=False, continuous=continuous)
    rsde = sde.reverse(score_fn, probability_flow=True)

    def drift_fn(x, t):
      return rsde.sde(x, t)[0]

    def evaluate(x, t):
      return drift_and_divergence(drift_fn, x, t, probe)

    with torch.no_grad(), frozen_parameters(model):
      evaluate, extra = maybe_graphed(evaluate, (data, batch_time(eps, data)), cuda_graph)

      def rhs(t, state):
        x = state[:-batch].reshape(data.shape)
        drift, div = evaluate(x, batch_time(t, x))
        return torch.cat([drift.reshape(-1), div])

      # One flat state (x, ∫div) so the solver's RMS error norm covers both, as in score_sde.
      init = torch.cat([data.reshape(-1), torch.zeros(batch, dtype=data.dtype, device=data.device)])
      final, nfe = solve_ode(rhs, init, eps, sde.T, solver=solver, method=method, rtol=rtol, atol=atol,
                             max_nfe=max_nfe)
      z = final[:-batch].reshape(data.shape)
      delta_logp = final[-batch:]
      logp = sde.prior_logp(z) + delta_logp
    return logp, z, nfe + extra

  return log_likelihood_fn


def get_likelihood_fn(sde, inverse_scaler, hutchinson_type='Rademacher', rtol=1e-5, atol=1e-5, method='RK45',
                      eps=1e-5, solver='torchdiffeq', exact_divergence=None, continuous=True, max_nfe=0,
                      cuda_graph=True):
  """``likelihood_fn(model, data, generator=None) -> (bpd [B], z [B, ...], nfe)`` (score_sde's bits/dim).

  ``bpd = -log p_eps(data) / (D ln 2) + 7 - inverse_scaler(-1)`` with D the dimensions per sample: the
  offset (``bpd_offset``) turns a density on the scaled data into bits/dim of 8-bit data, 8 for
  uncentred [0, 1] data and 7 for centred [-1, 1] data. The result is a valid upper bound on the
  discrete negative log-likelihood only if the CALLER has applied uniform dequantisation to ``data``
  before scaling, i.e. fed ``scaler((x·255 + u) / 256)`` with u ~ U[0, 1) and x the image in [0, 1].

  Arguments as in ``get_log_likelihood_fn``; ``inverse_scaler`` maps the model's data range to [0, 1].
  ``nfe`` counts the network forwards; ``z`` is the latent at time T.
  """
  offset = bpd_offset(inverse_scaler)
  log_likelihood_fn = get_log_likelihood_fn(sde, hutchinson_type=hutchinson_type, rtol=rtol, atol=atol,
                                            method=method, eps=eps, solver=solver,
                                            exact_divergence=exact_divergence, continuous=continuous,
                                            max_nfe=max_nfe, cuda_graph=cuda_graph)

  def likelihood_fn(model, data, generator=None):
    logp, z, nfe = log_likelihood_fn(model, data, generator)
    return logp_to_bpd(logp, num_dims(data), offset), z, nfe

  return likelihood_fn
