"""SalUn (``--task salun``; Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight
Saliency", ICLR 2024): only the weights most salient for the forget data move.

  m = 1[ |G| ≥ γ ],  G = Σ_b clip(∇_θ mean L_dsm(x_f,b; θ_0), 1),  γ: the (1 − share) quantile of |G| over all weights

computed once from the weights the run starts from (the pretrained model) over D_f (``salun.mask_batches``
batches of ``training.batch_size_un``; 0 = all of D_f, as SalUn's code); then the objective of another method
(``salun.base``, default ``neggrad``: SalUn's ``ga`` variant, the one that applies to unconditional models —
its random-label variant needs classes) trains with the gradient masked, θ = m ⊙ θ + (1 − m) ⊙ θ_0: the
unmasked weights are restored after every step, so they stay exactly at θ_0 whatever the optimiser does.

Defaults from SalUn's DDPM code: share 0.5 (a global threshold over all weights), per-batch gradients
clipped to norm 1 and summed. It masks after clipping the update's norm; here the masked gradient is
clipped (the norm of what is applied). SalUn trains without an EMA (``--config.model.ema_rate=0`` does the
same; otherwise the EMA of a frozen weight moves from the file's EMA value to its raw value).
The mask is cached in ``W/salun_mask.pth`` with the digest of the weights it was computed from.
"""
import math

import torch
from absl import logging

import runtime
from unlearning import needs
from unlearning.base import Method, Objective, dsm_term, get_method, register

MASK_FILE = 'salun_mask.pth'


def saliency_mask(model, loss_fn, batches, share, generator=None, clip=1.):
  """``{name: bool mask}`` over the trainable parameters: True for the ``share`` of all weights with the largest
  |Σ_b clip(∇ mean loss_fn(model, x_b))| (exactly ⌈share·N⌉ of the N weights; ties broken by position)."""
  if not 0. < float(share) <= 1.:
    raise ValueError(f'salun.share must lie in (0, 1], got {share}')
  named = needs.trainable(model)
  total = [torch.zeros_like(p) for _, p in named]
  for x in batches:
    model.zero_grad(set_to_none=True)
    loss_fn(model, x, generator).mean().backward()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for _, p in named]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    scale = min(1., clip / float(norm)) if clip > 0 and float(norm) > 0 else 1.
    for acc, g in zip(total, grads):
      acc.add_(g, alpha=scale)
  model.zero_grad(set_to_none=True)
  scores = torch.cat([t.abs().reshape(-1) for t in total])
  k = max(1, math.ceil(float(share) * scores.numel()))
  chosen = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
  chosen[torch.topk(scores, k, sorted=False).indices] = True
  out, start = {}, 0
  for (name, p) in named:
    out[name] = chosen[start:start + p.numel()].reshape(p.shape)
    start += p.numel()
  return out


class MaskedObjective(Objective):
  """``base`` with its gradient masked and the unmasked weights held at their starting values."""

  def __init__(self, base, mask, model):
    super().__init__(base.retain_fn, base.forget_fn, forget_every=base.forget_every, regularizer=base.regularizer,
                     weights=base.weights, retain_batches=base.retain_batches)
    self.base, self.mask = base, mask
    self.frozen = {n: p.detach().clone() for n, p in needs.trainable(model)}

  @property
  def manual_backward(self):
    return self.base.manual_backward

  def synchronize(self):
    # every process of a torchrun group masks the same weights (their gradients are averaged, then masked)
    self.base.synchronize()
    device = next(iter(self.mask.values())).device
    self.mask = {k: v.to(device) for k, v in runtime.broadcast_from_main(self.mask).items()}

  def terms(self, *args, **kwargs):
    return self.base.terms(*args, **kwargs)

  def total(self, *args, **kwargs):
    return self.base.total(*args, **kwargs)

  def backward(self, model, loss, lg, lf):
    self.base.backward(model, loss, lg, lf)

  def before_update(self, model):
    self.base.before_update(model)
    for name, p in needs.trainable(model):
      if p.grad is not None:
        p.grad.mul_(self.mask[name])

  @torch.no_grad()
  def after_update(self, model):
    self.base.after_update(model)
    for name, p in needs.trainable(model):
      p.copy_(torch.where(self.mask[name], p, self.frozen[name]))


def build(ctx):
  c = ctx.config.salun
  base_method = get_method(c.base)
  if base_method.name == 'salun' or not base_method.forget_data:
    raise ValueError(f"salun.base must be a method with a forget term (e.g. neggrad, erase, obtuse), not '{c.base}'")
  base = base_method.build(ctx)
  if not ctx.train:
    return base
  anchor = needs.anchor_model(ctx)
  batch = int(ctx.config.training.batch_size_un)
  n_batches = int(c.mask_batches) or math.ceil(len(ctx.data.train.forget) / batch)
  meta = {'weights': needs.weights_digest(anchor), 'share': float(c.share), 'batches': n_batches, 'batch': batch,
          'seed': int(ctx.config.seed)}
  path = f'{ctx.workdir}/{MASK_FILE}' if ctx.workdir else None
  term = dsm_term(ctx)   # before the cache is read: building a loss advances the global RNG (fisher.cached_fisher)
  mask = needs.load_cache(path, meta)
  if mask is None:
    batches = needs.forget_batches(ctx, batch, n_batches, 'salun-mask')
    with needs.differentiable(anchor):
      mask = saliency_mask(anchor, term, batches, float(c.share), needs.generator(ctx, 'salun-mask-noise'))
    needs.save_cache(path, meta, mask)
  mask = {k: v.to(ctx.device).bool() for k, v in mask.items()}
  moving = sum(int(m.sum()) for m in mask.values())
  logging.info('salun: %d of %d weights move (share %.3g), base objective %s', moving,
               sum(m.numel() for m in mask.values()), moving / max(sum(m.numel() for m in mask.values()), 1),
               base_method.name)
  return MaskedObjective(base, mask, ctx.model)


METHOD = register(Method(
  'salun', build,
  summary='SalUn: a weight-saliency mask (top share of |∇L_f| at the start) on another forget objective',
  equation='θ ← m ⊙ θ + (1 − m) ⊙ θ_0, m = 1[|∇_θ L_dsm(D_f; θ_0)| ≥ γ], objective of salun.base',
  needs=('the starting (pretrained) weights, for the mask',), keys=('salun.base', 'salun.share', 'salun.mask_batches'),
  paper='Fan et al., SalUn, ICLR 2024 (code OPTML-Group/Unlearn-Saliency, DDPM)'))
