"""Orthogonal-MSGM (``--task orthogonal`` / official ``square``): the score on forget data is pushed
orthogonal to the direction back to the forget point (MSGM, for moderately separable D_g / D_f).

  L = α L_g + (1 − α) L_f,  L_f = λ(t) ⟨s(x_f,t, t), ∇ log p_0t(x_f,t | x_f,0)⟩²   (paper: squared dot product)

Config: ``unlearn.alpha`` (0.99), ``unlearn.forget_every`` (4), ``unlearn.orthogonal_product`` ('dot' =
paper, 'elementwise' = the official code's Σ_i (s_i ∇_i)² with its weighting), and the extensions
``unlearn.forget_t_min/max`` and ``unlearn.reference`` (L_f acts on s − s_ref).
"""
import losses
from unlearning import needs
from unlearning.base import Method, Objective, choice, dsm_term, forget_time_range, register


def orthogonal_loss(p, reduce_mean, product='dot', likelihood_weighting=False):
  """Per-sample Orthogonal term ``[B]`` of a ``losses.Perturbed`` batch.

  ``product='dot'`` (paper): λ ⟨s, ∇⟩² = w ⟨ŝ, z⟩² / σ² = w ⟨ε̂, z⟩² / σ², with the dimension sum
  normalised by ``R`` once.
  ``product='elementwise'`` (official code): Σ_i (s_i ∇_i)² weighted by σ⁴ (= Σ_i (ε̂_i z_i)², no
  likelihood weighting) or by g² (likelihood weighting), reduced by ``R``.
  With a reference model both act on s − s_ref.
  """
  ss = centred(p)
  if product == 'dot':
    dim = p.z[0].numel()
    dot = (ss * p.z).reshape(p.z.shape[0], -1).sum(dim=1)
    return p.weight * losses.sum_form(dot ** 2, dim, reduce_mean) / p.std ** 2
  if product == 'elementwise':
    per_dim = losses.reduce_dims((ss * p.z) ** 2, reduce_mean)
    if likelihood_weighting:
      return p.g2 * per_dim / p.std ** 4
    return per_dim
  raise ValueError(f"unknown unlearn.orthogonal_product '{product}'; valid: dot, elementwise")


def centred(p):
  """ŝ − ŝ_ref when a reference model is used (the forget term then acts on the change from it), else ŝ."""
  return p.scaled_score if p.reference is None else p.scaled_score - p.reference


def msgm_schedule(config):
  """``(α, forget_every)`` of the MSGM tasks (``unlearn.alpha``, ``unlearn.forget_every``; official 0.99, 4)."""
  return float(config.unlearn.alpha), int(config.unlearn.forget_every)


def build(ctx):
  u = ctx.config.unlearn
  product = choice(u.get('orthogonal_product', 'dot'), ('dot', 'elementwise'), 'unlearn.orthogonal_product')
  lw = bool(ctx.config.training.likelihood_weighting)
  reference = needs.load_reference(ctx.config, ctx.device)
  forget = ctx.loss_fn(lambda p, g: orthogonal_loss(p, ctx.reduce_mean, product, lw),
                       t_range=forget_time_range(u), reference=reference)
  alpha, every = msgm_schedule(ctx.config)
  return Objective(dsm_term(ctx), forget, alpha, every)


METHOD = register(Method(
  'orthogonal', build, official_name='square',
  summary='MSGM Orthogonal: the score on D_f is pushed orthogonal to the way back to the forget point',
  equation='L_f = λ⟨s(x_f,t), ∇log p_0t(x_f,t|x_f,0)⟩²',
  keys=('unlearn.alpha', 'unlearn.forget_every', 'unlearn.orthogonal_product', 'unlearn.forget_t_min',
        'unlearn.forget_t_max', 'unlearn.reference'),
  paper='MSGM (ICCV 2025), Eq. of Orthogonal-MSGM'))
