"""Checkpoint I/O in the score_sde layout, written atomically and read safely.

A checkpoint is a dict ``{'optimizer', 'model', 'ema', 'step'}`` (the official layout; model keys carry
the ``module.`` prefix of ``nn.DataParallel`` so that the official code reads our files too) plus, in
files written here, ``'config'`` (the resolved config as JSON) and ``'rng'`` (generator states for an
exact resume). Files are read with ``torch.load(weights_only=True)``; the only non-tensor types
allowed through are the numpy scalars that official trained checkpoints keep in the optimizer state.
"""
import contextlib
import json
import os
import pickle
import tempfile
import zipfile

import numpy as np
import torch

MODULE_PREFIX = 'module.'


class CheckpointError(RuntimeError):
  """A checkpoint is missing, unreadable, unsafe, or does not match the model."""


def _numpy_scalar_globals():
  """The numpy types an official checkpoint's optimizer state needs (``numpy.float64`` learning rates)."""
  from numpy._core import multiarray
  allowed = [(multiarray.scalar, 'numpy.core.multiarray.scalar'), multiarray.scalar, np.dtype]
  for name in ('Float64DType', 'Float32DType', 'Int64DType'):
    allowed.append(getattr(np.dtypes, name))
  return allowed


def load_file(path, map_location='cpu'):
  """Reads a checkpoint file safely; every failure becomes one ``CheckpointError`` naming the file."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise CheckpointError(f'no checkpoint file at {path}')
  try:
    with torch.serialization.safe_globals(_numpy_scalar_globals()):
      obj = torch.load(path, map_location=map_location, weights_only=True)
  except pickle.UnpicklingError as e:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if 'weights only' in str(e).lower() or 'weights_only' in str(e).lower():
      raise CheckpointError(f'refusing to load {path}: it contains Python objects that a safe load does not '
                            f'allow ({reason})') from None
    raise CheckpointError(f'cannot read {path}: not a PyTorch checkpoint ({reason})') from None
  except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError, KeyError, AttributeError) as e:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise CheckpointError(f'cannot read {path}: the file is truncated, corrupt or not a PyTorch checkpoint '
                          f'({reason})') from None
  if not isinstance(obj, dict):
    raise CheckpointError(f'{path} is not a checkpoint: it holds a {type(obj).__name__}, not a dict')
  return obj


def strip_module_prefix(state_dict):
  """Removes the ``module.`` prefix that ``nn.DataParallel`` adds to every key (if present)."""
  if state_dict and all(k.startswith(MODULE_PREFIX) for k in state_dict):
    return {k[len(MODULE_PREFIX):]: v for k, v in state_dict.items()}
  return dict(state_dict)


def add_module_prefix(state_dict):
  return {MODULE_PREFIX + k: v for k, v in state_dict.items()}


def _describe(keys, limit=8):
  keys = sorted(keys)
  more = f' … and {len(keys) - limit} more' if len(keys) > limit else ''
  return ', '.join(keys[:limit]) + more


def load_model_state(model, state_dict, path='checkpoint'):
  """Loads a model state dict strictly; a mismatch names the missing, unexpected and mis-shaped keys."""
  if not isinstance(state_dict, dict):
    raise CheckpointError(f"{path}: 'model' entry is a {type(state_dict).__name__}, not a state dict")
  incoming = strip_module_prefix(state_dict)
  own = model.state_dict()
  missing = set(own) - set(incoming)
  unexpected = set(incoming) - set(own)
  shapes = [f'{k} (file {tuple(incoming[k].shape)}, model {tuple(own[k].shape)})'
            for k in own if k in incoming and hasattr(incoming[k], 'shape') and
            tuple(incoming[k].shape) != tuple(own[k].shape)]
  if missing or unexpected or shapes:
    parts = []
    if missing:
      parts.append(f'missing keys ({len(missing)}): {_describe(missing)}')
    if unexpected:
      parts.append(f'unexpected keys ({len(unexpected)}): {_describe(unexpected)}')
    if shapes:
      parts.append(f'shape mismatches ({len(shapes)}): {_describe(shapes, 4)}')
    raise CheckpointError(f'{path} does not match the model built from this config: ' + '; '.join(parts) +
                          '. Check that config.model matches the configuration the checkpoint was trained with.')
  model.load_state_dict(incoming, strict=True)


def _require(loaded, keys, path):
  absent = [k for k in keys if k not in loaded]
  if absent:
    raise CheckpointError(f'{path} is not a score-model checkpoint: it lacks {absent} '
                          f'(found keys: {sorted(loaded)})')


def restore_checkpoint(ckpt_path, state, device):
  """Restores ``state`` (dict with 'optimizer', 'model', 'ema', 'step') from ``ckpt_path``.

  Unlike the official function, a missing file is an error (never a silent fresh start) and the
  model is loaded strictly. Returns ``state``, with ``state['step']`` and, if present, the stored
  ``'rng'`` and ``'config'`` entries.
  """
  loaded = load_file(ckpt_path, map_location=device)
  _require(loaded, ('model', 'ema', 'step'), ckpt_path)
  load_model_state(state['model'], loaded['model'], ckpt_path)
  try:
    state['ema'].load_state_dict(loaded['ema'])
  except (KeyError, ValueError, TypeError) as e:
    raise CheckpointError(f"{ckpt_path}: the EMA state does not match the model ({e})") from None
  if 'optimizer' in state and state['optimizer'] is not None:
    if 'optimizer' not in loaded:
      raise CheckpointError(f'{ckpt_path} has no optimizer state to resume from')
    try:
      state['optimizer'].load_state_dict(loaded['optimizer'])
    except (KeyError, ValueError, TypeError) as e:
      raise CheckpointError(f'{ckpt_path}: the optimizer state does not match the model ({e})') from None
  state['step'] = int(loaded['step'])
  for key in ('rng', 'config', 'epoch'):
    if key in loaded:
      state[key] = loaded[key]
  return state


def restore_pretrained(ckpt_path, model, ema, device='cpu'):
  """Fine-tuning start: the raw weights into ``model`` and the EMA weights into ``ema``; returns the file's step.

  The optimizer and the step counter are not taken from the file: fine-tuning starts at step 0.
  """
  loaded = load_file(ckpt_path, map_location=device)
  _require(loaded, ('model', 'ema'), ckpt_path)
  load_model_state(model, loaded['model'], ckpt_path)
  try:
    ema.load_state_dict(loaded['ema'])
  except (KeyError, ValueError, TypeError) as e:
    raise CheckpointError(f"{ckpt_path}: the EMA state does not match the model ({e})") from None
  return int(loaded.get('step', 0))


def atomic_write(path, write, mode='wb'):
  """Calls ``write(file)`` on a temporary file beside ``path``, then renames it onto ``path`` atomically:
  readers see the old file or the complete new one, never a partial one."""
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix='.tmp-', suffix=os.path.splitext(path)[1], dir=folder)
  try:
    with os.fdopen(fd, mode) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def atomic_torch_save(obj, path):
  """Writes ``obj`` to ``path`` with ``torch.save``, atomically."""
  atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path, text):
  """Writes ``text`` to ``path`` atomically."""
  atomic_write(path, lambda f: f.write(text), mode='w')


def save_checkpoint(ckpt_path, state):
  """Saves ``state`` in the official layout (plus 'config' and 'rng' when present), atomically."""
  saved = {
    'optimizer': state['optimizer'].state_dict(),
    'model': add_module_prefix(state['model'].state_dict()),
    'ema': state['ema'].state_dict(),
    'step': int(state['step']),
  }
  if state.get('config') is not None:
    cfg = state['config']
    saved['config'] = cfg if isinstance(cfg, str) else config_to_json(cfg)
  if state.get('rng') is not None:
    saved['rng'] = state['rng']
  atomic_torch_save(saved, ckpt_path)


def config_to_json(config):
  """A ConfigDict as a JSON string (tuples become lists)."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)
