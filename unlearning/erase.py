"""The official code's ``erase`` task (an EraseDiff-style baseline; not in the MSGM paper): on forget data
the predicted noise is regressed onto uniform noise instead of the noise that was added.

  L_f = R((ŝ + u)²) = R((ε̂ − u)²),  u ~ U[0, 1)^D   (no λ(t): the official code has no g² here)

with the MSGM schedule (``unlearn.alpha``, ``unlearn.forget_every``). EraseDiff as published (its
bi-level update) is ``--task erasediff``.
"""
import torch

import losses
from unlearning.base import Method, Objective, dsm_term, forget_time_range, register
from unlearning.orthogonal import msgm_schedule


def erase_loss(p, reduce_mean, generator=None):
  """R((ŝ + u)²) with u ~ U[0, 1) (drawn with ``generator``), i.e. ε̂ regressed onto u. ``[B]``."""
  u = torch.rand(p.z.shape, device=p.z.device, dtype=p.z.dtype, generator=generator)
  return losses.reduce_dims((p.scaled_score + u) ** 2, reduce_mean)


def build(ctx):
  forget = ctx.loss_fn(lambda p, g: erase_loss(p, ctx.reduce_mean, g), t_range=forget_time_range(ctx.config.unlearn))
  alpha, every = msgm_schedule(ctx.config)
  return Objective(dsm_term(ctx), forget, alpha, every)


METHOD = register(Method(
  'erase', build, official_name='erase',
  summary="the official code's erase: ε̂ on D_f regressed onto uniform noise",
  equation='L_f = ‖ε̂(x_f,t) − u‖², u ~ U[0,1)^D', keys=('unlearn.alpha', 'unlearn.forget_every'),
  paper='official MSGM code (EraseDiff-style, simplified)'))
