"""Obtuse-MSGM (``--task obtuse`` / official ``norm``): the score on forget data is turned away from the
forget point (MSGM, for highly overlapping D_g / D_f), and its extensions (docs/unlearning.md).

  L = α L_g + (1 − α) L_f,  L_f = λ(t) ⟨s(x_f,t, t), ∇ log p_0t(x_f,t | x_f,0)⟩   (paper sign, minimised)

Config: ``unlearn.alpha`` (0.99), ``unlearn.forget_every`` (4), ``unlearn.obtuse_sign`` ('paper' |
'official': the official code's opposite sign), ``unlearn.obtuse_form`` ('linear' = paper, 'target',
'ratio', 'negative_dsm', 'hole'), ``unlearn.push`` (κ of target/ratio), ``unlearn.forget_t_min/max``,
``unlearn.reference`` (ratio and hole need it), ``unlearn.classifier`` and ``unlearn.hole_*`` (hole),
``unlearn.low_noise_push`` / ``unlearn.low_noise_t_max`` (an added target-form term at low noise; 0 = none).
"""
from absl import logging

import losses
from unlearning import hole, needs
from unlearning.base import Method, Objective, choice, dsm_term, forget_time_range, register
from unlearning.orthogonal import centred, msgm_schedule

FORMS = ('linear', 'target', 'ratio', 'negative_dsm', 'hole')


def obtuse_loss(p, reduce_mean, sign='paper'):
  """Obtuse-MSGM. Paper: minimise λ ⟨s, ∇⟩ = w R(ŝ ⊙ (−z)) = w R(ε̂ ⊙ z), which turns the score away
  from the forget point. ``sign='official'`` minimises the negative, as the official code does (the score
  is pushed towards the forget data). ``[B]``."""
  value = p.weight * losses.reduce_dims(-p.scaled_score * p.z, reduce_mean)
  if sign == 'paper':
    return value
  if sign == 'official':
    return -value
  raise ValueError(f"unknown unlearn.obtuse_sign '{sign}'; valid: paper, official")


def obtuse_target_loss(p, reduce_mean, push=1.):
  """Obtuse-MSGM as a regression (``unlearn.obtuse_form='target'``): the score is regressed onto the
  reference score moved ``push`` times the target distance *away* from the forget point,

      L_f = λ ‖s − s_ref − κ (−∇)‖² = w R((ŝ − ŝ_ref − κ z)²),   κ = ``push``,

  with ``s_ref = 0`` without a reference model (κ = 1 is the "flipped" denoising target). Its
  minimiser on forget-dominated regions is ``s_ref − κ ∇ log p_f,t``: the reference density with a hole
  ``p_f,t^(−κ)`` where the forget data lie. Unlike the linear form it is bounded below.
  """
  return p.weight * losses.reduce_dims((centred(p) - push * p.z) ** 2, reduce_mean)


def obtuse_ratio_loss(p, reduce_mean, push=1.):
  """Obtuse-MSGM as a regression relative to a reference model (``unlearn.obtuse_form='ratio'``): the
  score is regressed onto the reference score moved ``push`` times further along its difference from the
  forget target,

      L_f = λ ‖s − s_ref − κ (s_ref − ∇)‖² = w R((ŝ − (1 + κ) ŝ_ref − κ z)²),   κ = ``push``.

  Averaged over forget data the target is ``s_ref + κ ∇ log(p_ref,t / p_f,t)``. With the retain term the
  population minimiser is ``s_g − κ ∇ log(α + (1 − α) r_t)``, ``r_t = p_f,t / p_g,t``, when the reference
  is the retain-only model (s_ref = s_g): the density ``p_g,t (α + (1 − α) r_t)^(−κ)``, a hole whose depth
  follows the density ratio (deepest where forget data dominate retained data most): a soft-edged
  version of the best reachable trade-off's holes (docs/frontier.md, docs/unlearning.md). Needs
  ``unlearn.reference``.
  """
  if p.reference is None:
    raise ValueError("unlearn.obtuse_form='ratio' needs a reference model: set unlearn.reference")
  return p.weight * losses.reduce_dims((p.scaled_score - (1. + push) * p.reference - push * p.z) ** 2, reduce_mean)


def negative_dsm_loss(p, reduce_mean):
  """Negative score matching on the forget data (``unlearn.obtuse_form='negative_dsm'``):

      L_f = −λ ‖s − ∇‖² = λ (2 ⟨s, ∇⟩ − ‖s‖²) − λ ‖∇‖²,

  i.e. twice the paper's Obtuse term plus a score-norm term. With α L_g + (1 − α) L_f the objective is
  score matching on the signed measure α p_g − (1 − α) p_f, whose minimiser (where that measure stays
  positive, i.e. α/(1 − α) ≥ sup p_f/p_g) is the score of (α p_g − (1 − α) p_f)_+: the densities that
  trace the best reachable (NLL_g, NLL_f) frontier. Below that α the objective is unbounded.
  """
  return -losses.dsm_loss(p, reduce_mean)


def obtuse_hole_loss(p, reduce_mean):
  """Obtuse-MSGM with a hard-edged hole (``unlearn.obtuse_form='hole'``): the score is regressed onto the
  reference score minus the gradient of a potential of the noisy log density ratio ℓ = log p_f,t / p_g,t,

      L_f = λ ‖s − (s_ref − ∇Φ(ℓ(x_t, t)))‖² = w R((ŝ − ŝ_ref + σ_t ∇Φ)²),   Φ = ``hole.hole_potential``.

  With a retain-only reference (s_ref = s_g) the target is the score of p_g,t · exp(−Φ(ℓ)): p_g with a hole
  of depth c (nats) wherever forget data outweigh retained data by more than e^ℓ*, with an edge as hard
  as β makes it — the shape of the best reachable trade-off's densities (docs/frontier.md), which the
  ``ratio`` form only approximates with a soft edge. Needs ``unlearn.reference`` and ``unlearn.classifier``.
  """
  if p.reference is None or p.tilt is None:
    raise ValueError("unlearn.obtuse_form='hole' needs a reference model (unlearn.reference) and a density "
                     "ratio (unlearn.classifier)")
  return p.weight * losses.reduce_dims((p.scaled_score - p.reference + p.tilt) ** 2, reduce_mean)


def obtuse_term(unlearn, reduce_mean):
  """``term_fn(p, generator) -> [B]`` of ``unlearn.obtuse_form`` / ``obtuse_sign`` (validated)."""
  sign = choice(unlearn.get('obtuse_sign', 'paper'), ('paper', 'official'), 'unlearn.obtuse_sign')
  form = choice(unlearn.get('obtuse_form', 'linear'), FORMS, 'unlearn.obtuse_form')
  if form != 'linear' and sign != 'paper':
    raise ValueError(f"unlearn.obtuse_sign='official' applies to obtuse_form='linear' only, not '{form}'")
  push = float(unlearn.get('push', 1.))
  return {'linear': lambda p, g: obtuse_loss(p, reduce_mean, sign),
          'target': lambda p, g: obtuse_target_loss(p, reduce_mean, push),
          'ratio': lambda p, g: obtuse_ratio_loss(p, reduce_mean, push),
          'negative_dsm': lambda p, g: negative_dsm_loss(p, reduce_mean),
          'hole': lambda p, g: obtuse_hole_loss(p, reduce_mean)}[form]


def low_noise_term(ctx, reference):
  """The optional second forget term (``unlearn.low_noise_push`` κ' > 0): the ``target`` form with push κ' on
  t ∈ [0, ``unlearn.low_noise_t_max``], added row by row to the form's own term, ``L_f = L_form + L_low [B]``.
  Each term draws its own t and noise. Which digit a sample becomes is decided at middle noise levels, the
  likelihood of a held-out forget image mostly at low ones (docs/unlearning.md): this term digs the hole
  ``p_ref · p_f,t^(−κ')`` there while the form's term acts on its own time range. None when κ' = 0."""
  u = ctx.config.unlearn
  push = float(u.get('low_noise_push', 0.))
  if push == 0.:
    return None
  t_max = float(u.get('low_noise_t_max', 0.05))
  if push < 0. or not 0. < t_max <= 1.:
    raise ValueError(f'unlearn.low_noise_push must be >= 0 and unlearn.low_noise_t_max in (0, 1], got {push}, '
                     f'{t_max}')
  if not ctx.config.training.continuous:
    raise ValueError('unlearn.low_noise_push needs continuous training (training.continuous=True)')
  reduce_mean = ctx.reduce_mean
  return ctx.loss_fn(lambda p, g: obtuse_target_loss(p, reduce_mean, push), t_range=(0., t_max),
                     reference=reference)


def summed(first, second):
  """``fn(model, x, generator) -> [B]``: the row-wise sum of two per-sample terms (``second`` may be None)."""
  if second is None:
    return first
  return lambda model, x, generator=None: first(model, x, generator) + second(model, x, generator)


def build(ctx):
  config, u = ctx.config, ctx.config.unlearn
  term = obtuse_term(u, ctx.reduce_mean)
  form = u.get('obtuse_form', 'linear')
  reference = needs.load_reference(config, ctx.device)
  if form in ('ratio', 'hole') and reference is None:
    raise ValueError(f"unlearn.obtuse_form='{form}' needs a reference model: set unlearn.reference to a "
                     "checkpoint of the same architecture (e.g. the Unseen or the pretrained model)")
  tilt = None
  if form == 'hole':
    if not config.training.continuous:
      raise ValueError("unlearn.obtuse_form='hole' needs continuous training (training.continuous=True)")
    log_ratio_fn = hole.load_log_ratio(config, ctx.data, ctx.sde, ctx.device)
    if log_ratio_fn is None:
      raise ValueError("unlearn.obtuse_form='hole' needs a noisy density ratio: set unlearn.classifier to a "
                       "noisy-classifier checkpoint (python main.py --mode train_noisy_classifier) or to 'exact' "
                       "(the 2-D toy's exact ratio)")
    tilt = hole.hole_tilt(config, log_ratio_fn)
  elif u.get('classifier'):
    logging.warning("unlearn.classifier is set but only obtuse_form='hole' uses it (form is '%s')", form)
  forget = ctx.loss_fn(term, t_range=forget_time_range(u), reference=reference, tilt_fn=tilt)
  forget = summed(forget, low_noise_term(ctx, reference))
  alpha, every = msgm_schedule(config)
  return Objective(dsm_term(ctx), forget, alpha, every)


def _ratio_preset(push, t_min, t_max, config_file, checkpoint, note=''):
  """An Obtuse ``ratio`` preset (every step, α = 0.98) over t ∈ [t_min, t_max], with a frozen model trained on
  D_g only as its reference; ``reference`` tells how to train that model for ``config_file``."""
  how = (f'a model of the same architecture trained on D_g only, e.g. `python main.py --config {config_file} '
         f'--workdir W_unseen --task unseen --mode train`, then '
         f'--config.unlearn.reference=W_unseen/checkpoints/{checkpoint}{note}')
  return {'unlearn': {'obtuse_form': 'ratio', 'push': push, 'alpha': 0.98, 'forget_every': 1,
                      'forget_t_min': t_min, 'forget_t_max': t_max},
          'reference': how}


def _hole_preset(depth, forget_fraction, sharpness, config_file, checkpoint, note=''):
  """An Obtuse ``hole`` preset (every step, α = 0.5, t ≤ 0.1) with an Unseen reference and a noisy classifier
  of D_f against D_g; ``reference`` / ``classifier`` tell how to train them. The threshold ℓ* is resolved
  from the share ``forget_fraction`` of the forget term's inputs that the hole covers."""
  preset = _ratio_preset(0., 0., 0.1, config_file, checkpoint, note)
  preset['unlearn'] = {'obtuse_form': 'hole', 'alpha': 0.5, 'forget_every': 1, 'forget_t_min': 0.,
                       'forget_t_max': 0.1, 'hole_depth': depth, 'hole_forget_fraction': forget_fraction,
                       'hole_sharpness': sharpness}
  preset['classifier'] = (f'a noisy classifier of D_f against D_g on t ≤ 0.1, e.g. `python main.py --config '
                          f'{config_file} --workdir W_nc --mode train_noisy_classifier`, then '
                          f'--config.unlearn.classifier=W_nc/noisy_classifier.pth{note}')
  return preset


def _with_low_noise(preset, push, t_max):
  """``preset`` with the low-noise target term (``unlearn.low_noise_push`` = ``push`` on t ≤ ``t_max``) added."""
  return dict(preset, unlearn=dict(preset['unlearn'], low_noise_push=push, low_noise_t_max=t_max))


TOY_NOTE = ' (python -m experiments.toy_gmm2d trains and passes it itself)'

PRESETS = {
  # The 2-D toy's best measured setting (docs/unlearning.md, measured on 20,000 test points): the reference
  # score minus the gradient of a 45-nat hole with a hard edge (β = 20 per nat), dug on the 3.6% of the
  # forget term's inputs where a noisy classifier gives the largest log ratio of forget to retained data
  # (ℓ* ≈ 3.7 with a classifier calibrated like seed 42's).
  'toy-best': _hole_preset(45., 0.036, 20., 'configs/toy/gmm2d.py', 'checkpoint_1.pth', TOY_NOTE),
  # The best setting without a classifier: Obtuse as a regression onto the reference score pushed along
  # log(p_ref / p_f), at every step but only at small noise levels.
  'toy-ratio': _ratio_preset(16., 0., 0.1, 'configs/toy/gmm2d.py', 'checkpoint_1.pth', TOY_NOTE),
  # The best measured setting on images (MNIST-5k, digit 3; docs/unlearning.md): the same form with a
  # small push, over the middle of the time range, where classes separate.
  'mnist-best': _ratio_preset(1., 0.2, 0.7, 'configs/mnist/mnist5k_small.py', 'checkpoint_3.pth'),
  # mnist-best plus the low-noise target term (κ' = 2 on t ≤ 0.05), which digs the hole in the likelihood of D_f
  # that the ratio term alone leaves out (docs/unlearning.md, "The D_f likelihood gap on MNIST").
  'mnist-nll': _with_low_noise(_ratio_preset(1., 0.2, 0.7, 'configs/mnist/mnist5k_small.py', 'checkpoint_3.pth'),
                               2., 0.05),
}

METHOD = register(Method(
  'obtuse', build, official_name='norm',
  summary='MSGM Obtuse: the score on D_f is turned away from the forget point (and its extension forms)',
  equation='L_f = λ⟨s(x_f,t), ∇log p_0t(x_f,t|x_f,0)⟩ (linear); target / ratio / negative_dsm / hole forms',
  needs=('a reference model for the ratio and hole forms', 'a noisy classifier for the hole form'),
  keys=('unlearn.alpha', 'unlearn.forget_every', 'unlearn.obtuse_sign', 'unlearn.obtuse_form', 'unlearn.push',
        'unlearn.forget_t_min', 'unlearn.forget_t_max', 'unlearn.reference', 'unlearn.classifier',
        'unlearn.hole_depth', 'unlearn.hole_log_ratio', 'unlearn.hole_sharpness', 'unlearn.hole_forget_fraction',
        'unlearn.low_noise_push', 'unlearn.low_noise_t_max'),
  paper='MSGM (ICCV 2025), Eq. of Obtuse-MSGM; extensions of this project (docs/unlearning.md)',
  presets=PRESETS))
