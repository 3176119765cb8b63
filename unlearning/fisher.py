"""The diagonal Fisher information of a score model, for parameter-space penalties (Selective Amnesia's
EWC, VDU's single-checkpoint stability term), computed once and cached with its digest.

  F_j = (1/N) Σ_i (∂ℓ_i / ∂θ_j)²,   ℓ_i = T · mean_k L(x_i; t_k, z_k)

where L is the run's per-sample training loss (``losses``; λ(t), R) and the K draws (t_k, z_k) estimate the
sum over the T = ``sde.N`` time steps of Selective Amnesia's per-sample loss (its time-summed ELBO).
"""
import torch
from absl import logging

from unlearning import needs


def diagonal_fisher(model, loss_fn, items, times=8, scale=1., generator=None):
  """``{name: F}`` over ``model``'s trainable parameters (F has the parameter's shape, float32).

  ``items`` [N, ...] (scaled data on the model's device), ``loss_fn(model, x [K, ...], generator) -> [K]`` the
  per-sample loss; each item's gradient is that of ``scale · mean(loss_fn(model, x_i repeated K times))``
  with its own K draws from ``generator`` (K = ``times``).
  """
  named = needs.trainable(model)
  fisher = [torch.zeros_like(p, dtype=torch.float32) for _, p in named]
  n = len(items)
  if n == 0:
    raise needs.NeedError('the Fisher information needs at least one item')
  params = [p for _, p in named]
  for i in range(n):
    x = items[i:i + 1].expand(int(times), *items.shape[1:])
    value = float(scale) * loss_fn(model, x, generator).mean()
    grads = torch.autograd.grad(value, params, allow_unused=True)
    for f, g in zip(fisher, grads):
      if g is not None:
        f.add_(g.detach().float() ** 2)
  return {name: f / n for (name, _), f in zip(named, fisher)}


FISHER_FILE = 'fisher.pth'


def cached_fisher(ctx, model, items, source, times, name='fisher'):
  """``diagonal_fisher`` of the frozen ``model`` (the starting weights) over ``items`` with the run's loss
  (evaluation mode: no dropout), T = ``sde.N``; cached in ``W/<name>.pth`` keyed by the weights' digest,
  ``source`` (a word on where the items come from), their number, ``times`` and the seed."""
  meta = {'weights': needs.weights_digest(model), 'source': source, 'n': int(len(items)), 'times': int(times),
          'seed': int(ctx.config.seed), 'loss': [bool(ctx.config.training.reduce_mean),
                                                   bool(ctx.config.training.likelihood_weighting),
                                                   bool(ctx.config.training.continuous)]}
  path = f'{ctx.workdir}/{name}.pth' if ctx.workdir else None
  # Built before the cache is read: building a loss advances the global RNG (``losses.get_loss_fn``), and a
  # start that finds the cache must leave the training stream where a start that computes it does.
  train = ctx.train
  ctx.train = False   # the loss in evaluation mode (deterministic given the draws)
  try:
    loss_fn = ctx.loss_fn()
  finally:
    ctx.train = train
  cached = needs.load_cache(path, meta)
  if cached is not None:
    return {k: v.to(ctx.device) for k, v in cached.items()}
  logging.info('computing the diagonal Fisher information over %d %s items (%d draws each)', len(items), source,
               times)
  with needs.differentiable(model):
    fisher = diagonal_fisher(model, loss_fn, items.to(ctx.device), times, float(ctx.sde.N),
                             needs.generator(ctx, name))
  needs.save_cache(path, meta, fisher)
  return fisher


def quadratic_penalty(model, centre, precision):
  """Σ_j P_j (θ_j − c_j)² over the trainable parameters (``centre``/``precision``: ``{name: tensor}``)."""
  total = None
  for name, p in needs.trainable(model):
    term = (precision[name] * (p - centre[name]) ** 2).sum()
    total = term if total is None else total + term
  return total
