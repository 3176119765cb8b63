"""Exponential moving average of the trainable parameters, in the score_sde checkpoint format.

The average covers the parameters with ``requires_grad=True`` in ``model.parameters()`` order (the
frozen Fourier projection of NCSN++ is left out, as in the official code). With ``use_num_updates`` the
decay warms up as ``min(decay, (1 + n) / (10 + n))`` after the n-th update.
"""
import torch


class ExponentialMovingAverage:
  """EMA of parameters: ``shadow ← shadow − (1 − d)(shadow − param)`` after each optimiser step."""

  def __init__(self, parameters, decay, use_num_updates=True):
    if not 0. <= decay <= 1.:
      raise ValueError(f'EMA decay must be in [0, 1], got {decay}')
    self.decay = decay
    self.num_updates = 0 if use_num_updates else None
    self.shadow_params = [p.clone().detach() for p in parameters if p.requires_grad]
    self.collected_params = []

  def current_decay(self):
    """The decay the next ``update`` will use (after incrementing the update count)."""
    if self.num_updates is None:
      return self.decay
    n = self.num_updates + 1
    return min(self.decay, (1 + n) / (10 + n))

  @torch.no_grad()
  def update(self, parameters):
    """Moves the averages towards the current trainable ``parameters``."""
    decay = self.current_decay()
    if self.num_updates is not None:
      self.num_updates += 1
    params = [p for p in parameters if p.requires_grad]
    if len(params) != len(self.shadow_params):
      raise ValueError(f'EMA of {len(self.shadow_params)} tensors updated with {len(params)} parameters')
    if not params:
      return
    # s ← s − (1 − d)(s − p) for all tensors at once (the same operations, in fewer kernels)
    steps = torch._foreach_sub(self.shadow_params, params)
    torch._foreach_mul_(steps, 1. - decay)
    torch._foreach_sub_(self.shadow_params, steps)

  @torch.no_grad()
  def copy_to(self, parameters):
    """Writes the averages into the trainable ``parameters``."""
    params = [p for p in parameters if p.requires_grad]
    for s, p in zip(self.shadow_params, params, strict=True):
      p.copy_(s)

  def store(self, parameters):
    """Keeps a copy of ``parameters`` so that ``restore`` can bring them back after ``copy_to``."""
    self.collected_params = [p.detach().clone() for p in parameters]

  @torch.no_grad()
  def restore(self, parameters):
    """Restores the parameters saved by ``store``."""
    if not self.collected_params:
      raise RuntimeError('ExponentialMovingAverage.restore called before store')
    for c, p in zip(self.collected_params, parameters, strict=True):
      p.copy_(c)
    self.collected_params = []

  def to(self, device):
    self.shadow_params = [s.to(device) for s in self.shadow_params]
    return self

  def state_dict(self):
    """``{'decay', 'num_updates', 'shadow_params'}``: the official layout."""
    return dict(decay=self.decay, num_updates=self.num_updates, shadow_params=self.shadow_params)

  def load_state_dict(self, state_dict):
    """Reads the official layout; the shadow list must match the trainable parameters in number and shape."""
    shadow = state_dict['shadow_params']
    if len(shadow) != len(self.shadow_params):
      raise ValueError(f'EMA state has {len(shadow)} tensors, the model has {len(self.shadow_params)} '
                       'trainable parameters')
    for i, (s, new) in enumerate(zip(self.shadow_params, shadow)):
      if tuple(s.shape) != tuple(new.shape):
        raise ValueError(f'EMA tensor {i} has shape {tuple(new.shape)}, the parameter has {tuple(s.shape)}')
    self.decay = float(state_dict['decay'])
    n = state_dict['num_updates']
    self.num_updates = None if n is None else int(n)
    self.shadow_params = [new.detach().to(device=s.device, dtype=s.dtype).clone()
                          for s, new in zip(self.shadow_params, shadow)]
