"""Process-level helpers: device choice, seeding, generator states, the run's log file, the main rank."""
import logging as py_logging
import os
import random

import numpy as np
import torch
from absl import logging


class DeviceError(ValueError):
  """``config.device`` names a device that this machine does not have."""


def is_main_process():
  """True outside ``torch.distributed`` and on rank 0: the process that writes files."""
  return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
    torch.distributed.get_rank() == 0


def resolve_device(name):
  """'auto' → CUDA when available, else CPU; other names (or a ``torch.device``) are passed to
  ``torch.device``."""
  if name in (None, '', 'auto'):
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  device = torch.device(name)
  if device.type == 'cuda' and not torch.cuda.is_available():
    raise DeviceError(f"config.device is '{name}' but CUDA is not available; use 'cpu' or 'auto'")
  return device


def seed_everything(seed):
  """Seeds Python, numpy and torch (CPU and CUDA) from ``config.seed``."""
  random.seed(seed)
  np.random.seed(seed % 2 ** 32)
  torch.manual_seed(seed)


def rng_state():
  """The global generator states (CPU, and every CUDA device when present), for an exact resume."""
  state = {'torch': torch.get_rng_state()}
  if torch.cuda.is_available():
    state['cuda'] = torch.cuda.get_rng_state_all()
  return state


def set_rng_state(state):
  torch.set_rng_state(state['torch'])
  if 'cuda' in state and torch.cuda.is_available():
    torch.cuda.set_rng_state_all(state['cuda'])


def add_log_file(folder):
  """Appends absl log records to ``folder/stdout.txt``; returns the handler (remove it when done)."""
  handler = py_logging.FileHandler(os.path.join(folder, 'stdout.txt'), mode='a')
  handler.setFormatter(py_logging.Formatter('%(asctime)s %(levelname)s %(message)s'))
  logging.get_absl_logger().addHandler(handler)
  logging.set_verbosity(logging.INFO)
  return handler


def log_to_file(handler, message, level=py_logging.ERROR):
  """Writes ``message`` to the run's log file only (the console gets it once, from main.py)."""
  if handler is not None:
    handler.emit(py_logging.LogRecord('absl', level, __file__, 0, message, None, None))
