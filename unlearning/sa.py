"""Selective Amnesia for unconditional models (``--task sa``; Heng & Soh, "Selective Amnesia: A Continual
Learning Approach to Forgetting in Deep Generative Models", NeurIPS 2023):

  L = L_sur(x_f) + γ L_g(x_replay) + λ' Σ_j F_j (θ_j − θ*_j)²

  * L_sur: the forget items mapped to a surrogate — their x_t built with uniform noise u ~ U[0, 1)^D, and
    u the target (``losses.draw_noise('uniform')``, EraseDiff's surrogate): SA's surrogate is uniform-noise
    images under the forget label, which an unconditional model has no label for;
  * replay: samples of the pretrained model whose class (``eval.classifier``; the exact one on the toy)
    is not a forget class (``sa.replay='generated'``, SA's generative replay), or D_g (``'data'``);
  * F: the diagonal Fisher of the pretrained model θ* over its own samples (SA: 500 per class, here
    ``sa.samples`` in all, every class) of the time-summed per-sample loss (``unlearning/fisher.py``).

Defaults from SA's CIFAR-10 DDPM config: λ = 10 (``sa.ewc_lambda``), γ = 1 (``sa.replay_weight``), Adam lr
1e-4, batches of 128 + 128, 20,000 steps, clip 1 (the last four are ``optim``/``training`` keys). SA's loss
sums over pixels; with ``training.reduce_mean`` the terms here average over the D dimensions, so the
penalty is applied with λ' = λ·D (λ' = 2λ for the half-sum of ``reduce_mean=False``), which keeps SA's
balance between the penalty and the loss. SA's Fisher uses 5,000 generated samples and all T time steps
per sample; here ``sa.samples`` = 1,000 samples and ``sa.fisher_times`` = 8 draws of (t, z) per sample (an
unbiased estimate of the time sum) keep it within minutes on a CPU.
The samples and the Fisher are cached in ``W/generated_pool.pt`` and ``W/fisher.pth``.
"""
import torch
from absl import logging

import datasets
from unlearning import fisher, needs
from unlearning.base import Method, Objective, choice, register


def retained_rows(labels, forget_indices):
  """Bool ``[N]``: predictions (``[N]`` classes or ``[N, A]`` attributes) that name no forget class/attribute."""
  forget = torch.as_tensor(sorted(int(i) for i in forget_indices))
  if labels.ndim == 1:
    return ~torch.isin(labels.long().cpu(), forget)
  return ~labels.bool().cpu()[:, forget].any(dim=1)


def replay_items(ctx, pool):
  """The rows of ``pool`` (data space) that the evaluation classifier assigns to retained classes."""
  from evaluation import classifier as classifier_lib
  try:
    clf = classifier_lib.get_classifier(ctx.config, ctx.device, data=ctx.data)
  except ValueError as e:
    raise needs.NeedError(f"sa.replay='generated' needs a classifier to drop the forget classes from the replayed "
                          f"samples ({e}); train one with --mode train_classifier and set eval.classifier, or use "
                          "--config.sa.replay=data") from None
  keep = retained_rows(clf.predict(pool.to(ctx.device)), ctx.data.forget_indices)
  logging.info('sa: %d of %d samples of the pretrained model are of retained classes (replayed)', int(keep.sum()),
               len(pool))
  if not keep.any():
    raise needs.NeedError('sa: no sample of the pretrained model is of a retained class: nothing to replay')
  return pool[keep]


def penalty_scale(config, data):
  """λ'/λ: SA sums its loss over the D dimensions; the terms here average over them (``reduce_mean``) or
  take half their sum."""
  if not config.training.reduce_mean:
    return 2.
  dims = 1
  for s in data.shape:
    dims *= int(s)
  return float(dims)


def build(ctx):
  config, c = ctx.config, ctx.config.sa
  replay = choice(c.replay, ('generated', 'data'), 'sa.replay')
  surrogate = ctx.loss_fn(noise='uniform')
  retain = ctx.loss_fn()
  if not ctx.train:
    return Objective(retain, surrogate, weights=(float(c.replay_weight), 1.))
  anchor = needs.anchor_model(ctx)
  scaler = datasets.get_data_scaler(config)
  pool = needs.generated_pool(ctx, anchor, int(c.samples))
  batches = None
  if replay == 'generated':
    batches = needs.step_batches(scaler(replay_items(ctx, pool)), int(config.training.batch_size),
                                 datasets.derive_seed(config.seed, 'sa-replay'), ctx.device)
  fim = fisher.cached_fisher(ctx, anchor, scaler(pool), 'generated', int(c.fisher_times))
  centre = {n: p.detach().clone() for n, p in needs.trainable(anchor)}
  lam = float(c.ewc_lambda) * penalty_scale(config, ctx.data)

  def ewc(model):
    return lam * fisher.quadratic_penalty(model, centre, fim)

  return Objective(retain, surrogate, forget_every=1, regularizer=ewc, weights=(float(c.replay_weight), 1.),
                   retain_batches=batches)


METHOD = register(Method(
  'sa', build,
  summary='Selective Amnesia: D_f mapped to a uniform-noise surrogate, generative replay, EWC penalty',
  equation="L = L_sur(x_f) + γ L(x_replay) + λ' Σ F_j (θ_j − θ*_j)²",
  needs=('the starting (pretrained) weights: samples, replay and the diagonal Fisher',
         "the evaluation classifier (eval.classifier) for sa.replay='generated'"),
  keys=('sa.ewc_lambda', 'sa.replay_weight', 'sa.replay', 'sa.samples', 'sa.fisher_times'),
  paper='Heng & Soh, Selective Amnesia, NeurIPS 2023 (code clear-nus/selective-amnesia, DDPM)',
  trains_on='samples of the pretrained model of retained classes (or D_g) + D_f'))
