"""Variational Diffusion Unlearning (``--task vdu``; arXiv 2510.04058): only the forget data are available.
A plasticity inducer lowers the likelihood of D_f (raises its denoising loss) and a stability regulariser
keeps the weights near the pretrained ones, in the Gaussian (variational) form of a per-weight posterior:

  L = −min(L_dsm(x_f), c · L_0(x_f)) + γ Σ_j (θ_j − μ_j)² / (2 σ_j²)

  * μ_j, σ_j² from ``vdu.checkpoints`` — several independently trained checkpoints of the same model (their
    EMA weights): the per-weight mean and variance (+ ``vdu.variance_floor``), as the paper estimates them;
  * with none given (one pretrained model), the single-checkpoint fallback: μ = the starting weights and
    1/σ² = their diagonal Fisher (``unlearning/fisher.py``) over samples the model draws itself — no D_g is
    ever read. The log and ``W/vdu.json`` say which was used.

No public code or hyper-parameters were found: γ = 1 (``vdu.gamma``) and the ascent's ceiling c = 1
(``vdu.ceiling``; ``unlearning/neggrad.py``) are this project's choices, ``vdu.samples`` = 1,000 and
``vdu.fisher_times`` = 8 as Selective Amnesia's Fisher here.
"""
import json
import os

import torch
from absl import logging

import datasets
import runtime
import train_state
import utils
from unlearning import fisher, needs
from unlearning.base import Method, Objective, register
from unlearning.neggrad import neggrad_term


def checkpoint_moments(ctx, paths, floor):
  """``(μ, 1/σ²)`` per trainable weight over the EMA weights of the checkpoints ``paths`` (two or more)."""
  if len(paths) < 2:
    raise needs.NeedError(f'vdu.checkpoints needs two or more checkpoints for a variance, got {len(paths)}')
  weights = []
  for path in paths:
    if not os.path.isfile(path):
      raise needs.NeedError(f'vdu.checkpoints: no checkpoint at {path}')
    model = train_state.load_frozen_model(ctx.config, path, ctx.device, weights='ema')
    params = dict(model.named_parameters())
    weights.append({n: params[n].detach() for n, _ in needs.trainable(ctx.model)})
  mean = {n: torch.stack([w[n] for w in weights]).mean(0) for n in weights[0]}
  precision = {n: 1. / (torch.stack([w[n] for w in weights]).var(0, unbiased=False) + float(floor))
               for n in weights[0]}
  return mean, precision


def build(ctx):
  config, c = ctx.config, ctx.config.vdu
  plasticity = neggrad_term(ctx, float(c.ceiling))
  if not ctx.train:
    return Objective(None, plasticity, weights=(0., 1.))
  paths = [p.strip() for p in str(c.checkpoints).split(',') if p.strip()]
  if paths:
    mean, precision = checkpoint_moments(ctx, paths, c.variance_floor)
    source = f'per-weight mean and variance over {len(paths)} checkpoints'
  else:
    anchor = needs.anchor_model(ctx)
    pool = needs.generated_pool(ctx, anchor, int(c.samples))
    precision = fisher.cached_fisher(ctx, anchor, datasets.get_data_scaler(config)(pool), 'generated',
                                     int(c.fisher_times))
    mean = {n: p.detach().clone() for n, p in needs.trainable(anchor)}
    source = (f'single-checkpoint fallback: the starting weights and their diagonal Fisher over {len(pool)} of '
              'their own samples')
  logging.info('vdu stability term: %s', source)
  if ctx.workdir and runtime.is_main_process():
    utils.atomic_write_text(os.path.join(ctx.workdir, 'vdu.json'),
                            json.dumps({'stability': source, 'checkpoints': paths}, indent=2))
  gamma = float(c.gamma)

  def stability(model):
    return 0.5 * gamma * fisher.quadratic_penalty(model, mean, precision)

  return Objective(None, plasticity, forget_every=1, regularizer=stability, weights=(0., 1.))


METHOD = register(Method(
  'vdu', build, retain_data='none',
  summary='VDU: D_f only; ascent on its denoising loss (plasticity) + a per-weight Gaussian stability term',
  equation='L = −min(L_dsm(x_f), c·L_0) + γ Σ (θ_j − μ_j)²/(2σ_j²)',
  needs=('several independently trained checkpoints (vdu.checkpoints), or the starting weights and their Fisher',),
  keys=('vdu.gamma', 'vdu.ceiling', 'vdu.checkpoints', 'vdu.samples', 'vdu.fisher_times', 'vdu.variance_floor'),
  paper='Variational Diffusion Unlearning, arXiv 2510.04058 (no public code found)'))
