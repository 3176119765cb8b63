"""The training state that checkpoints store (model, EMA, optimiser, step), and models loaded from files."""
import losses
import utils
from models import utils as mutils
from models.ema import ExponentialMovingAverage


def create_state(config, device):
  """Model (on ``device``), EMA, optimiser and step counter: the dict the checkpoints store."""
  model = mutils.create_model(config, device)
  ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
  optimizer = losses.get_optimizer(config, model.parameters())
  return dict(model=model, ema=ema, optimizer=optimizer, step=0)


def load_ema_model(config, ckpt_path, device):
  """The network of ``ckpt_path`` with its EMA weights, in eval mode; returns ``(model, state)``."""
  state = create_state(config, device)
  state['optimizer'] = None
  utils.restore_checkpoint(ckpt_path, state, device)
  state['ema'].copy_to(state['model'].parameters())
  state['model'].eval()
  return state['model'], state


def load_frozen_model(config, ckpt_path, device, weights='ema'):
  """The network of ``ckpt_path`` with its ``'ema'`` or ``'raw'`` weights, in eval mode, with every
  parameter frozen (``requires_grad=False``): a reference or anchor that training must not change."""
  if weights == 'ema':
    model, _ = load_ema_model(config, ckpt_path, device)
  elif weights == 'raw':
    state = create_state(config, device)
    utils.restore_pretrained(ckpt_path, state['model'], state['ema'], device)
    model = state['model'].eval()
  else:
    raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
  for p in model.parameters():
    p.requires_grad_(False)
  return model
