"""The training (and evaluation) step of every unlearning method: the one place where the per-sample terms
of an ``Objective`` are reduced over the batch and mixed, back-propagated and applied."""
import torch

import losses


def get_step_fn(objective, train, optimize_fn=None, engine=None):
  """``step_fn(state, batch_g, batch_f=None, generator=None) -> {'loss', 'loss_g', 'loss_f'}``.

  Training: one optimisation step of ``objective`` on the model of ``state`` (the objective's hooks run
  between backpropagation and ``optimize_fn``, and after it); evaluating: the same loss with the EMA
  weights, no update. The values are detached scalars on the model's device (``loss_g``/``loss_f`` are NaN
  when the step has no such term); nothing is read back to the host. ``step_fn.needs_forget_batch(step)``
  and ``step_fn.needs_retain_batch`` say which batches a step takes.

  ``engine`` (``runtime.StepEngine``, training only): the network runs through it — on a group of processes
  each one computes the network on its rows of the (whole) batches and reduces its rows' terms, and the
  gradients are averaged over the group in the one backward pass of the step (retain and forget terms
  together); an objective with ``manual_backward`` averages the gradients it combines itself
  (``unlearning.base.gradients``). The returned values are then this process's; their mean over the group
  is the batch's. Also mixed precision (fp16 with loss scaling), channels_last and ``torch.compile``.
  """

  def compute(model, net, step, batch_g, batch_f, generator):
    lg, lf = objective.terms(net, step, batch_g, batch_f, generator, train)
    if engine is not None:
      lg, lf = engine.rows(lg), engine.rows(lf)
    return objective.total(model, lg, lf, train), lg, lf

  def step_fn(state, batch_g, batch_f=None, generator=None):
    step = state['step']
    if objective.needs_forget_batch(step, train) and batch_f is None:
      raise ValueError('this step uses the forget term but no forget batch was given')
    if objective.needs_retain_batch and batch_g is None:
      raise ValueError('this step uses the retain term but no retain batch was given')
    model = state['model']
    if train:
      optimizer = state['optimizer']
      if engine is None:
        loss, lg, lf = compute(model, model, step, batch_g, batch_f, generator)
        optimizer.zero_grad(set_to_none=True)
        objective.backward(model, loss, lg, lf)
        objective.before_update(model)
        optimize_fn(optimizer, model.parameters(), step=step)
      else:
        net = engine.network(step, sync=not objective.manual_backward)
        loss, lg, lf = compute(model, net, step, batch_g, batch_f, generator)
        optimizer.zero_grad(set_to_none=True)
        objective.backward(model, engine.scale(loss), lg, lf)
        engine.unscale(optimizer)
        objective.before_update(model)
        optimize_fn(engine.optimizer(optimizer), model.parameters(), step=step)
      objective.after_update(model)
      state['step'] += 1
      state['ema'].update(model.parameters())
    else:
      loss, lg, lf = losses.with_ema(state, lambda: compute(model, model, step, batch_g, batch_f, generator))
    nan = torch.full((), float('nan'), device=loss.device)
    return {'loss': loss.detach(), 'loss_g': nan if lg is None else lg.detach().mean(),
            'loss_f': nan if lf is None else lf.detach().mean()}

  step_fn.needs_forget_batch = lambda step: objective.needs_forget_batch(step, train)
  step_fn.needs_retain_batch = objective.needs_retain_batch
  step_fn.objective = objective
  step_fn.engine = engine
  return step_fn
