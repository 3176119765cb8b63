"""NegGrad+ (``--task neggrad``): gradient ascent on the denoising loss of the forget data, with the
retain term, and a ceiling so that the ascent cannot run away.

  L = α L_g − (1 − α) min(L_dsm(x_f), c · L_0(x_f)),   L_0 = w(t) R(z²) = the loss of the zero score ŝ = 0

per forget item: the ascent on an item stops (zero gradient) once the model denoises it no better than a
network that outputs nothing (``neggrad.ceiling`` = c = 1), so the objective is bounded below.

Defaults: α = 0.5 (``neggrad.alpha``): the retain and ascent terms weighted equally, as SalUn's ``ga``
variant (its code's default weight 1 on each); no paper bounds the ascent — the ceiling is this project's.
Sources: NegGrad/NegGrad+ baselines of SalUn (Fan et al., ICLR 2024), EraseDiff (Wu et al., 2024) and
SISS (Alberti et al., ICLR 2025).
"""
import torch

import losses
from unlearning.base import Method, Objective, dsm_term, register


def zero_score_loss(p, reduce_mean):
  """L_0 = w R(z²): the denoising loss of the zero score (ŝ = 0) on the same draws. ``[B]``."""
  return p.weight * losses.reduce_dims(p.z ** 2, reduce_mean)


def neggrad_loss(p, reduce_mean, ceiling=1.):
  """−min(L_dsm, c · L_0) per sample ``[B]``: the negated denoising loss, cut at ``ceiling`` c times the loss
  of the zero score (c ≤ 0: no ceiling)."""
  dsm = losses.dsm_loss(p, reduce_mean)
  if ceiling <= 0:
    return -dsm
  return -torch.minimum(dsm, ceiling * zero_score_loss(p, reduce_mean))


def neggrad_term(ctx, ceiling):
  """The forget loss ``loss_fn(model, x_f, generator) -> [B]`` of ``neggrad_loss`` on this run's settings."""
  return ctx.loss_fn(lambda p, g: neggrad_loss(p, ctx.reduce_mean, ceiling))


def build(ctx):
  c = ctx.config.neggrad
  return Objective(dsm_term(ctx), neggrad_term(ctx, float(c.ceiling)), float(c.alpha), 1)


METHOD = register(Method(
  'neggrad', build,
  summary='gradient ascent on the denoising loss of D_f, with the retain term (NegGrad+), bounded by a ceiling',
  equation='L = α L_g − (1 − α) min(L_dsm(x_f), c·L_0(x_f))', keys=('neggrad.alpha', 'neggrad.ceiling'),
  paper='NegGrad+ as in SalUn (ICLR 2024) / EraseDiff (2024) / SISS (ICLR 2025) baselines'))
