"""Zero-shot restoration with a trained score model: PC inpainting and probability-flow reconstruction.

  * ``sample_pc_inpaint(score_fn, sde, data, mask, timesteps, ...)``: the predictor–corrector inpainter of
    score_sde. The unknown pixels start from the prior; after every corrector and predictor update the
    known pixels are replaced by a draw of the forward marginal p_0t(x_t | x_0) at the time the state has
    reached, and after the last update by the data themselves, so the known pixels of the result are
    exactly ``data``.
  * ``get_pc_inpainter(...)``: score_sde's factory name, returning ``pc_inpainter(model, data, mask,
    generator=None) -> (inverse_scaler(x), nfe)``.
  * ``encode_ode(score_fn, sde, x, eps, ...)``: the latent x_T of ``x`` along the probability-flow ODE from
    ``eps`` to ``T`` (the state part of the likelihood's ODE, ``likelihood.py``, without its divergence).
  * ``perturb_latent(sde, z, t, noise)``: the official reconstruction's perturbation of the latent,
    ``mean(z, t) + std(t) · noise`` with the SDE's marginal (VP: √ᾱ_t z + √(1 − ᾱ_t) n, a prior sample
    again when z is one).
  * ``reconstruct(score_fn, sde, x, t, eps, ...)``: encode, perturb, decode with ``sampling.sample_ode``.

Conventions as in ``sampling.py``: ``score_fn(x, t)`` returns the score, ``x`` is ``[B, ...]`` in the model's
data range (``scaler`` applied), ``t`` is ``[B]``; ``mask`` is 1 (True) on known pixels and 0 on the pixels to
fill, broadcastable to ``data`` (e.g. ``[B or 1, 1, H, W]``); ``nfe`` counts score-network evaluations.
"""
from typing import Optional

import torch
from tqdm.auto import tqdm

import sampling
from cuda_graphs import maybe_graphed
from models import utils as mutils
from sampling import CountedFn, batch_time, randn_like
from tensor_utils import append_dims


def _known(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
  """``mask`` as a bool tensor broadcast to ``like``'s shape and device (True = known pixel)."""
  mask = mask.to(like.device)
  if mask.dtype != torch.bool:
    mask = mask != 0
  return mask.expand_as(like)


def impose_known(x: torch.Tensor, data: torch.Tensor, known: torch.Tensor, sde, t: Optional[torch.Tensor],
                 generator=None):
  """Known pixels of ``x`` replaced by a draw of p_0t(x_t | data) at times ``t`` [B] (the data themselves
  when ``t`` is None). Returns ``(x, x_known_mean)``: the new state and the same with the known pixels at
  the marginal's mean (no fresh noise), both shaped like ``x``."""
  if t is None:
    out = torch.where(known, data, x)
    return out, out
  mean, std = sde.marginal_prob(data, t)
  draw = mean + append_dims(std, data.ndim) * randn_like(data, generator)
  return torch.where(known, draw, x), torch.where(known, mean, x)


def sample_pc_inpaint(score_fn, sde, data, mask, timesteps, predictor='euler_maruyama', corrector='none', snr=0.16,
                      n_steps=1, probability_flow=False, denoise=True, generator=None, progress=False, x=None):
  """Predictor–corrector inpainting of ``data`` where ``mask`` is 0, along ``timesteps`` (descending).

  Each grid time t_i runs the corrector (known pixels then drawn from p_0t at t_i) and the predictor, which
  moves the state to the next grid time t_{i+1} (known pixels then drawn at t_{i+1}; after the last step
  they are set to ``data``). With ``denoise`` the unknown pixels of the result are the last predictor's
  mean (no noise added at the final step).

  Args:
    score_fn: ``score_fn(x, t) -> ∇_x log p_t(x)`` for ``x`` [B, ...] and ``t`` [B].
    sde: the forward ``sde_lib.SDE``.
    data: the images [B, C, H, W] (any rank) in the model's data range; only the known pixels are read.
    mask: 1/True on known pixels, 0/False on pixels to fill; broadcastable to ``data``.
    timesteps: the 1-D time grid, e.g. ``sampling.get_time_grid(sde, eps)``.
    predictor, corrector, snr, n_steps, probability_flow: as in ``sampling.sample_pc``.
    generator: ``torch.Generator`` for every noise draw.
    progress: a tqdm progress bar over the time grid.
    x: the starting state (its unknown pixels are used); default a prior draw with ``generator``.

  Returns:
    ``(x [B, ...], nfe)`` with ``x == data`` exactly on the known pixels.
  """
  pred_cls, corr_cls = sampling.check_pc_combination(sde, predictor, corrector, probability_flow)
  counted = CountedFn(score_fn)
  pred = pred_cls(sde, counted, probability_flow)
  corr = corr_cls(sde, counted, snr, n_steps)
  known = _known(mask, data)
  if x is None:
    draw_device = data.device if generator is None else generator.device
    x = sde.prior_sampling(tuple(data.shape), generator=generator, device=draw_device, dtype=data.dtype).to(data.device)
  x = torch.where(known, data, x)
  times = timesteps.tolist()
  x_mean = x
  for i, t in enumerate(tqdm(times, desc='PC inpainting', disable=not progress, leave=False)):
    vec_t = batch_time(t, x)
    x, _ = corr.update_fn(x, vec_t, generator)
    x, _ = impose_known(x, data, known, sde, vec_t, generator)
    x, x_mean = pred.update_fn(x, vec_t, generator)
    next_t = batch_time(times[i + 1], x) if i + 1 < len(times) else None
    x, x_mean_known = impose_known(x, data, known, sde, next_t, generator)
    x_mean = torch.where(known, x_mean_known, x_mean)
  out = x_mean if denoise else x
  return torch.where(known, data, out), counted.calls


def get_pc_inpainter(sde, predictor, corrector, inverse_scaler, snr, n_steps=1, probability_flow=False,
                     continuous=False, denoise=True, eps=1e-5, progress=False):
  """score_sde's factory: ``pc_inpainter(model, data, mask, generator=None, x=None) -> (images, nfe)``.

  ``predictor``/``corrector``: registered names (refused here when they cannot run on ``sde``). ``data``:
  [B, C, H, W] in the model's range (``scaler`` applied); the result is ``inverse_scaler`` of the
  inpainted state ([0, 1] for images), on the PC grid ``linspace(T, eps, N)``.
  """
  predictor, corrector = str(predictor).lower(), str(corrector).lower()
  sampling.check_pc_combination(sde, predictor, corrector, probability_flow)

  def pc_inpainter(model, data, mask, generator=None, x=None):
    with torch.no_grad():
      score_fn = mutils.get_score_fn(sde, model, train=False, continuous=continuous)
      timesteps = sampling.get_time_grid(sde, eps)
      out, nfe = sample_pc_inpaint(score_fn, sde, data, mask, timesteps, predictor=predictor, corrector=corrector,
                                   snr=snr, n_steps=n_steps, probability_flow=probability_flow, denoise=denoise,
                                   generator=generator, progress=progress, x=x)
      return inverse_scaler(out), nfe

  return pc_inpainter


# ----------------------------------------------------------------------------------------------------
# Reconstruction through the probability-flow ODE
# ----------------------------------------------------------------------------------------------------

def encode_ode(score_fn, sde, x, eps, method='RK45', rtol=1e-5, atol=1e-5, solver='torchdiffeq', max_nfe=0,
               cuda_graph=True):
  """The latent x_T [B, ...] of ``x`` (at time ``eps``) along the probability-flow ODE
  dx/dt = f(x, t) − g(t)² s(x, t) / 2 integrated from ``eps`` to ``T``; returns ``(z, nfe)``.

  The same trajectory as the state part of ``likelihood.get_log_likelihood_fn`` (whose adaptive steps
  also control the divergence integral, so the two latents agree to the solver's tolerance).
  """
  rsde = sde.reverse(score_fn, probability_flow=True)

  def velocity(y, t):
    return rsde.sde(y, t)[0]

  velocity, extra = maybe_graphed(velocity, (x, batch_time(eps, x)), cuda_graph)
  z, nfe = sampling.solve_ode(lambda t, y: velocity(y, batch_time(t, y)), x, eps, sde.T, solver=solver,
                              method=method, rtol=rtol, atol=atol, max_nfe=max_nfe)
  return z, nfe + extra


def perturb_latent(sde, z: torch.Tensor, t: float, noise: torch.Tensor) -> torch.Tensor:
  """``mean + std · noise`` with ``(mean, std) = sde.marginal_prob(z, t)``: the official reconstruction's
  perturbation of the latent ``z`` [B, ...] at time ``t`` (a float); ``noise`` ~ N(0, I) shaped like ``z``."""
  mean, std = sde.marginal_prob(z, batch_time(t, z))
  return mean + append_dims(std, z.ndim) * noise


def reconstruct(score_fn, sde, x, t, eps, noise=None, generator=None, method='RK45', rtol=1e-5, atol=1e-5,
                solver='torchdiffeq', denoise=True, max_nfe=0, cuda_graph=True):
  """Encode ``x`` [B, ...] (model range, at time ``eps``) to x_T, perturb the latent at time ``t``
  (``perturb_latent``; ``noise`` or a draw with ``generator``), decode with ``sampling.sample_ode``.

  Returns ``(x_rec [B, ...], nfe)`` in the model's range; ``nfe`` counts the encoder's and the decoder's
  network evaluations. ``denoise``: the ODE sampler's final denoising step.
  """
  z, nfe_enc = encode_ode(score_fn, sde, x, eps, method=method, rtol=rtol, atol=atol, solver=solver,
                          max_nfe=max_nfe, cuda_graph=cuda_graph)
  if noise is None:
    noise = randn_like(z, generator)
  z = perturb_latent(sde, z, t, noise.to(device=z.device, dtype=z.dtype))
  out, nfe_dec = sampling.sample_ode(score_fn, sde, z, eps, method=method, rtol=rtol, atol=atol, solver=solver,
                                     denoise=denoise, max_nfe=max_nfe, cuda_graph=cuda_graph)
  return out, nfe_enc + nfe_dec


def get_reconstructor(sde, inverse_scaler, t, eps, method='RK45', rtol=1e-5, atol=1e-5, solver='torchdiffeq',
                      denoise=True, max_nfe=0, cuda_graph=True):
  """``reconstruct_fn(model, data, noise=None, generator=None) -> (images, nfe)``: ``reconstruct`` with the
  model's continuous-time score (as score_sde's ODE sampler and likelihood); ``data`` in the model's
  range, the result ``inverse_scaler``-ed ([0, 1] for images)."""

  def reconstruct_fn(model, data, noise=None, generator=None):
    with torch.no_grad():
      score_fn = mutils.get_score_fn(sde, model, train=False, continuous=True)
      out, nfe = reconstruct(score_fn, sde, data, t, eps, noise=noise, generator=generator, method=method,
                             rtol=rtol, atol=atol, solver=solver, denoise=denoise, max_nfe=max_nfe,
                             cuda_graph=cuda_graph)
      return inverse_scaler(out), nfe

  return reconstruct_fn
