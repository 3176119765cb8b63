"""The training (and evaluation) step of every unlearning method: the one place where the per-sample terms
of an ``Objective`` are reduced over the batch and mixed, back-propagated and applied."""
import torch

import losses


def get_step_fn(objective, train, optimize_fn=None):
  """``step_fn(state, batch_g, batch_f=None, generator=None) -> {'loss', 'loss_g', 'loss_f'}``.

  Training: one optimisation step of ``objective`` on the model of ``state`` (the objective's hooks run
  between backpropagation and ``optimize_fn``, and after it); evaluating: the same loss with the EMA
  weights, no update. The values are detached scalars on the model's device (``loss_g``/``loss_f`` are NaN
  when the step has no such term); nothing is read back to the host. ``step_fn.needs_forget_batch(step)``
  and ``step_fn.needs_retain_batch`` say which batches a step takes.
  """

  def compute(model, step, batch_g, batch_f, generator):
    lg, lf = objective.terms(model, step, batch_g, batch_f, generator, train)
    return objective.total(model, lg, lf, train), lg, lf

  def step_fn(state, batch_g, batch_f=None, generator=None):
    step = state['step']
    if objective.needs_forget_batch(step, train) and batch_f is None:
      raise ValueError('this step uses the forget term but no forget batch was given')
    if objective.needs_retain_batch and batch_g is None:
      raise ValueError('this step uses the retain term but no retain batch was given')
    model = state['model']
    if train:
      loss, lg, lf = compute(model, step, batch_g, batch_f, generator)
      optimizer = state['optimizer']
      optimizer.zero_grad(set_to_none=True)
      objective.backward(model, loss, lg, lf)
      objective.before_update(model)
      optimize_fn(optimizer, model.parameters(), step=step)
      objective.after_update(model)
      state['step'] += 1
      state['ema'].update(model.parameters())
    else:
      loss, lg, lf = losses.with_ema(state, lambda: compute(model, step, batch_g, batch_f, generator))
    nan = torch.full((), float('nan'), device=loss.device)
    return {'loss': loss.detach(), 'loss_g': nan if lg is None else lg.detach().mean(),
            'loss_f': nan if lf is None else lf.detach().mean()}

  step_fn.needs_forget_batch = lambda step: objective.needs_forget_batch(step, train)
  step_fn.needs_retain_batch = objective.needs_retain_batch
  step_fn.objective = objective
  return step_fn
