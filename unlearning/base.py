"""The pieces every unlearning method is made of: its registry entry (``Method``), what it is given when
it is built (``Context``) and what it hands to the training step (``Objective``).

An ``Objective`` turns a retain batch x_g ~ D_g and a forget batch x_f ~ D_f into per-sample terms
``L_g [B_g]`` and ``L_f [B_f]`` (either may be absent) and a parameter-space term ``R(θ)``; the step
(``unlearning/step.py``) reduces and mixes them in one place:

    loss = α · mean(L_g) + (1 − α) · mean(L_f) · [forget step] + R(θ)

Methods that need more than that (a gradient mask, a bi-level update) override ``backward`` /
``before_update`` / ``after_update``.

Under torchrun the step splits every batch's rows over the processes (``runtime.StepEngine``): the terms must
be row-wise (row i of ``L_g``/``L_f`` depends on row i of the batches, and on parameters), and an objective
whose ``backward`` combines gradients of several terms sets ``manual_backward`` and takes them from
``gradients``, which averages them over the processes first.
"""
import dataclasses
from typing import Callable, Optional, Tuple

import torch

import losses
import runtime


@dataclasses.dataclass(frozen=True)
class Method:
  """An unlearning method (or baseline) as ``--task`` knows it.

  ``retain_data``: what L_g trains on: ``'full'`` (D), ``'retain'`` (D_g) or ``'none'`` (no retained data is
  read at all). ``forget_data``: whether D_f batches are drawn. ``build(ctx) -> Objective``.
  ``needs``: what the method needs besides the data (for docs and error messages); ``keys``: the config
  keys it reads; ``presets``: named settings (``--config.unlearn.preset``); ``paper``: where it comes from.
  ``class_conditional``: the method trains class-conditional networks too (``config.model.class_conditional``:
  its data batches are ``(x, y)`` pairs, ``losses.split_batch``); the others refuse them. ``unconditional``:
  False for a method that needs class-conditional networks (SFD), which the toy and family jobs then skip.
  ``configure(config)``: called before the state is built, to set what the method fixes (e.g. its optimiser).
  """
  name: str
  build: Callable
  official_name: Optional[str] = None
  retain_data: str = 'retain'
  forget_data: bool = True
  summary: str = ''
  equation: str = ''
  needs: Tuple[str, ...] = ()
  keys: Tuple[str, ...] = ()
  paper: str = ''
  presets: dict = dataclasses.field(default_factory=dict)
  trains_on: str = ''   # for the docs' table, where ``retain_data`` does not say it all
  class_conditional: bool = False
  unconditional: bool = True
  configure: Optional[Callable] = None


_METHODS = {}


def register(method):
  """Adds ``method`` to the registry (names and official names must be unique); returns it."""
  for name in (method.name, method.official_name):
    if name is not None and any(name in (m.name, m.official_name) for m in _METHODS.values()):
      raise ValueError(f'an unlearning method is already registered as {name!r}')
  _METHODS[method.name] = method
  return method


def registered():
  """Every registered method, in registration order (the ``unlearning`` package imports them all)."""
  import unlearning  # noqa: F401  (importing the package registers every method)
  return list(_METHODS.values())


def get_method(name):
  """The method ``--task name`` names: readable (``orthogonal``) or official (``square``) names."""
  if isinstance(name, Method):
    return name
  for method in registered():
    if name in (method.name, method.official_name):
      return method
  valid = ', '.join(m.name + (f' ({m.official_name})' if m.official_name and m.official_name != m.name else '')
                    for m in registered())
  raise ValueError(f"unknown task '{name}'; valid: {valid}")


@dataclasses.dataclass
class Context:
  """What a method's ``build`` gets.

  ``model``: the network being trained, holding its starting weights (fresh, fine-tuning or resumed);
  ``start``: ``'fresh'``, ``'finetune'``, ``'resumed'`` or ``'eval'``; ``workdir``: where the method may cache
  what it computes once (None: nothing is cached); ``train``: a training run (False: the evaluation loss,
  which needs the per-sample terms only); ``step``: the step the run starts at; ``extra``: the ``extra`` entry of
  the checkpoint a run resumes from (``Objective.checkpoint_entries``), else None.
  """
  config: object
  sde: object
  data: object
  device: torch.device
  model: torch.nn.Module
  train: bool = True
  start: str = 'fresh'
  workdir: Optional[str] = None
  step: int = 0
  extra: Optional[dict] = None

  def loss_fn(self, term_fn=None, t_range=None, reference=None, tilt_fn=None, noise='gaussian'):
    """The engine's per-sample loss with this run's training settings (``losses.get_loss_fn``)."""
    tc = self.config.training
    return losses.get_loss_fn(self.sde, self.train, tc.reduce_mean, tc.continuous, tc.likelihood_weighting, tc.eps,
                              term_fn=term_fn, t_range=t_range, reference=reference, tilt_fn=tilt_fn, noise=noise)

  @property
  def reduce_mean(self):
    return bool(self.config.training.reduce_mean)


class Objective:
  """Per-sample retain and forget terms, a parameter term, and how they are mixed into one loss.

  ``retain_fn(model, x [B, ...], generator) -> [B]`` (None: no retain term), ``forget_fn`` likewise (None: no
  forget term), ``regularizer(model) -> scalar`` (None: none). The terms are weighted α and 1 − α
  (``alpha``), or by ``weights = (w_g, w_f)`` when given; the forget term is used on steps 0, k, 2k, …
  (``forget_every`` = k; 0: never). ``retain_batches(step) -> x`` supplies the retain batch itself (e.g.
  replayed samples) instead of the run's D_g iterator; it must depend on the step only, so that a resumed
  run draws what an uninterrupted one would.
  """

  def __init__(self, retain_fn=None, forget_fn=None, alpha=1., forget_every=1, regularizer=None, weights=None,
               retain_batches=None):
    if weights is None:
      if not 0. <= float(alpha) <= 1.:
        raise ValueError(f'the retain weight α must be in [0, 1], got {alpha}')
      weights = (float(alpha), 1. - float(alpha))
    self.retain_fn, self.forget_fn, self.regularizer = retain_fn, forget_fn, regularizer
    self.weights, self.forget_every, self.retain_batches = tuple(float(w) for w in weights), int(forget_every), \
      retain_batches

  @property
  def needs_retain_batch(self):
    """Whether the run must feed a retain batch (False without a retain term or with ``retain_batches``)."""
    return self.retain_fn is not None and self.retain_batches is None

  def needs_forget_batch(self, step, train=True):
    """Whether step ``step`` uses the forget term (always when evaluating)."""
    if self.forget_fn is None:
      return False
    return not train or (self.forget_every > 0 and step % self.forget_every == 0)

  def terms(self, model, step, batch_g, batch_f, generator=None, train=True):
    """``(L_g [B_g] or None, L_f [B_f] or None)`` for this step's batches."""
    if self.retain_batches is not None and batch_g is None:
      batch_g = self.retain_batches(step)
    lg = self.retain_fn(model, batch_g, generator) if self.retain_fn is not None else None
    lf = self.forget_fn(model, batch_f, generator) if self.needs_forget_batch(step, train) else None
    return lg, lf

  def total(self, model, lg, lf, train=True):
    """The scalar loss: w_g·mean(L_g) + w_f·mean(L_f) + R(θ) (w = (α, 1 − α) by default); w_g·mean(L_g) alone
    on steps without the forget term (as the official schedule); mean(L_g) for a method without a forget
    term."""
    parts = []
    if lg is not None:
      parts.append(lg.mean() if self.forget_fn is None else self.weights[0] * lg.mean())
    if lf is not None:
      parts.append(self.weights[1] * lf.mean())
    if train and self.regularizer is not None:
      parts.append(self.regularizer(model))
    if not parts:
      raise ValueError('this step has neither a retain nor a forget term')
    return sum(parts[1:], parts[0])

  #: True when ``backward`` combines the gradients of several terms itself (``gradients``/``set_gradients``)
  #: instead of back-propagating ``loss``: the step then leaves the averaging over processes to ``gradients``.
  manual_backward = False

  # Hooks of the update (defaults: plain backpropagation of the total).
  def backward(self, model, loss, lg, lf):
    loss.backward()

  def before_update(self, model):
    """Called with the gradients in place, before clipping and the optimiser step."""

  def after_update(self, model):
    """Called after the optimiser step (before the EMA update)."""

  def checkpoint_entries(self):
    """Entries written with every checkpoint besides the model (``utils.EXTRA_ENTRIES``: ``generator``,
    ``extra``); a resumed run hands ``extra`` back to the method (``Context.extra``)."""
    return {}

  def synchronize(self):
    """Called once by every process of a torchrun group before training (after the group agreed to start):
    make what the processes computed each for themselves and must share exactly (e.g. a mask applied after
    the gradients were averaged) rank 0's (``runtime.broadcast_from_main``)."""


def set_gradients(model, grads):
  """Writes ``grads`` (one tensor or None per trainable parameter, ``named_parameters`` order) into ``.grad``."""
  for p, g in zip([p for p in model.parameters() if p.requires_grad], grads, strict=True):
    p.grad = None if g is None else g.detach()


def gradients(model, value, retain_graph=False):
  """∇_θ ``value`` for the trainable parameters (zeros where a parameter does not enter), averaged over the
  processes of a torchrun group (each ``value`` being the mean over this process's rows, the average is the
  gradient of the mean over the batch)."""
  params = [p for p in model.parameters() if p.requires_grad]
  grads = torch.autograd.grad(value, params, retain_graph=retain_graph, allow_unused=True)
  return runtime.average_([torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)])


def flat_dot(a, b):
  """⟨a, b⟩ of two gradient lists, as a 0-dim tensor."""
  return sum(((x * y).sum() for x, y in zip(a, b)), torch.zeros((), device=a[0].device))


def dsm_term(ctx):
  """The retain term: denoising score matching ``L_g = λ ‖s − ∇ log p_0t‖²`` per sample (engine loss)."""
  return ctx.loss_fn()


def forget_time_range(unlearn):
  """``(t_min, t_max)`` on which the forget term is drawn (``unlearn.forget_t_min/max``), or None for all."""
  lo, hi = float(unlearn.get('forget_t_min', 0.)), float(unlearn.get('forget_t_max', 1.))
  if not 0. <= lo < hi <= 1.:
    raise ValueError(f'unlearn.forget_t_min/forget_t_max must satisfy 0 <= min < max <= 1, got {lo}, {hi}')
  return None if (lo, hi) == (0., 1.) else (lo, hi)


def choice(value, valid, key):
  """``value`` if it is one of ``valid``, else a ``ValueError`` naming ``key`` and the valid values."""
  if value not in valid:
    raise ValueError(f"unknown {key} {value!r}; valid: {', '.join(valid)}")
  return value
