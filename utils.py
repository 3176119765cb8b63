"""Checkpoint I/O in the score_sde layout, written atomically and read safely.

A checkpoint is a dict ``{'optimizer', 'model', 'ema', 'step'}`` (the official layout; model keys carry
the ``module.`` prefix of ``nn.DataParallel`` so that the official code reads our files too) plus, in
files written here, ``'config'`` (the resolved config as JSON) and ``'rng'`` (generator states for an
exact resume). Files are read with ``torch.load(weights_only=True)``; the only non-tensor types
allowed through are the numpy scalars that official trained checkpoints keep in the optimizer state.
"""
import contextlib
import errno
import hashlib
import json
import os
import pickle
import re
import shutil
import socket
import tempfile
import time
import zipfile

import numpy as np
import torch

MODULE_PREFIX = 'module.'
#: a model or EMA weight of larger magnitude is treated as blown up (trained networks stay far below it)
WEIGHT_LIMIT = 1e10
#: the prefix of the temporary files ``atomic_write`` renames into place (a kill can leave one behind)
TMP_PREFIX = '.tmp-'


class CheckpointError(RuntimeError):
  """A checkpoint is missing, unreadable, unsafe, damaged, holds non-finite weights, or does not match."""


class WriteError(RuntimeError):
  """A file could not be written (full disk, no permission, …); the previous version, if any, is intact."""


class WorkdirBusyError(RuntimeError):
  """Another live process holds the lock of a work directory (or evaluation folder)."""


def _numpy_scalar_globals():
  """The numpy types an official checkpoint's optimizer state needs (``numpy.float64`` learning rates)."""
  from numpy._core import multiarray
  allowed = [(multiarray.scalar, 'numpy.core.multiarray.scalar'), multiarray.scalar, np.dtype]
  for name in ('Float64DType', 'Float32DType', 'Int64DType'):
    allowed.append(getattr(np.dtypes, name))
  return allowed


def _first_line(e):
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def _unpickler_reason(e):
  """``(global, reason)`` from PyTorch's safe-load error: the Python object it refused (None if none) and
  the refusal in a few words, without PyTorch's advice to turn the safe load off (never given here)."""
  text = str(e)
  found = re.search(r'GLOBAL ([\w.]+)', text)
  if found:
    return found.group(1), found.group(1)
  found = re.search(r'WeightsUnpickler error:\s*([^\n]+)', text)
  return None, (found.group(1).strip() if found else 'unreadable')


def _is_torch_file(path):
  """A PyTorch file starts as a zip archive (torch >= 1.6; possibly truncated) or as a pickle stream of
  protocol 2 or later (the legacy format)."""
  with open(path, 'rb') as f:
    head = f.read(4)
  return head.startswith(b'PK\x03\x04') or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def load_file(path, map_location='cpu', verify=True):
  """Reads a checkpoint file safely; every failure becomes one ``CheckpointError`` naming the file.

  Only tensors, Python containers and numbers are unpickled (``weights_only``); a file holding other
  Python objects is refused without running anything. When the file records a ``'sha256'`` of its
  tensors (files written by ``save_checkpoint``), it is checked (``verify``); files without one (the
  official score_sde / MSGM checkpoints) load as they are.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise CheckpointError(f'no checkpoint file at {path}')
  try:
    if os.path.getsize(path) == 0:
      raise CheckpointError(f'{path} is empty: not a checkpoint')
    if not _is_torch_file(path):
      raise CheckpointError(f'{path} is not a checkpoint: it is neither a PyTorch zip archive nor a PyTorch '
                            f'pickle (damaged, or another kind of file)')
    with torch.serialization.safe_globals(_numpy_scalar_globals()):
      obj = torch.load(path, map_location=map_location, weights_only=True)
  except CheckpointError:
    raise
  except pickle.UnpicklingError as e:
    python_object, reason = _unpickler_reason(e)
    if python_object is not None:
      raise CheckpointError(f'refusing to load {path}: it holds Python objects that a checkpoint never holds '
                            f'({reason}); unpickling them could run code, so the file is not read') from None
    raise CheckpointError(f'{path} is not a checkpoint: it cannot be read as one ({reason}); the file is damaged '
                          'or of another kind') from None
  except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError, KeyError, AttributeError,
          TypeError, IndexError) as e:
    raise CheckpointError(f'cannot read {path}: the file is truncated, corrupt or not a PyTorch checkpoint '
                          f'({_first_line(e)})') from None
  if not isinstance(obj, dict):
    raise CheckpointError(f'{path} is not a checkpoint: it holds a {type(obj).__name__}, not a dict')
  if verify and 'sha256' in obj:
    recorded = obj['sha256']
    digest = tensors_sha256({k: v for k, v in obj.items() if k != 'sha256'})
    if digest != recorded:
      raise CheckpointError(f'{path} is damaged: its contents do not match the SHA-256 recorded in it (file '
                            f'{digest[:16]}…, recorded {str(recorded)[:16]}…); use another checkpoint')
  return obj


def tensors_sha256(obj):
  """Hex SHA-256 of a nested structure of dicts, lists, tensors and numbers: keys in sorted order, each
  tensor's dtype, shape and raw bytes, each number's type and value. Equal structures give equal digests
  on every machine (little-endian); a single flipped bit in any tensor changes it."""
  h = hashlib.sha256()

  def walk(x):
    if torch.is_tensor(x):
      t = x.detach().cpu().contiguous()
      h.update(f'T{t.dtype}{tuple(t.shape)}'.encode())
      h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(x, dict):
      h.update(f'D{len(x)}'.encode())
      for k in sorted(x, key=repr):
        h.update(repr(k).encode())
        walk(x[k])
    elif isinstance(x, (list, tuple)):
      h.update(f'L{len(x)}'.encode())
      for v in x:
        walk(v)
    else:
      h.update(f'{type(x).__name__}:{x!r}'.encode())

  walk(obj)
  return h.hexdigest()


def weights_problem(named_tensors, limit=WEIGHT_LIMIT):
  """The first floating tensor of ``named_tensors`` (``(name, tensor)`` pairs) holding NaN, ±inf or a value
  of magnitude above ``limit`` (None: no limit), described in words with its name; None if all are fine."""
  for name, t in named_tensors:
    if not torch.is_tensor(t) or not (t.is_floating_point() or t.is_complex()):
      continue
    t = t.detach()
    nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    if nan or inf:
      parts = [f'{n} {what}' for n, what in ((nan, 'NaN'), (inf, '±inf')) if n]
      return f"'{name}' holds {' and '.join(parts)} (of {t.numel():,} values)"
    if limit is not None and t.numel():
      big = float(t.abs().max())
      if big > limit:
        return f"'{name}' holds a value of magnitude {big:.3g} (above {limit:.0e}: the weights have blown up)"
  return None


def ema_named_tensors(model, ema):
  """``(name, shadow tensor)`` pairs of an EMA over ``model``'s trainable parameters (the official layout
  keeps them as an unnamed list in ``named_parameters`` order)."""
  names = [n for n, p in model.named_parameters() if p.requires_grad]
  return [(f'ema:{n}', s) for n, s in zip(names, ema.shadow_params)]


def state_problem(state):
  """Why the weights of a training ``state`` (model and EMA) must not be saved or used, or None."""
  model = state['model']
  return weights_problem(list(model.state_dict().items()) + ema_named_tensors(model, state['ema']))


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


_LABEL_KEY = 'label_embedding.weight'


def _check_class_conditional(incoming, own, path):
  """One line when a class-conditional checkpoint meets an unconditional config, or the reverse, or the
  numbers of classes differ (the label embedding has num_classes + 1 rows)."""
  has_file, has_model = _LABEL_KEY in incoming, _LABEL_KEY in own
  if has_file and not has_model:
    k = incoming[_LABEL_KEY].shape[0] - 1
    raise CheckpointError(f'{path} is a class-conditional checkpoint ({k} classes) but the config is unconditional: '
                          f'set --config.model.class_conditional=True --config.model.num_classes={k}')
  if has_model and not has_file:
    raise CheckpointError(f'{path} is an unconditional checkpoint but config.model.class_conditional=True: set '
                          '--config.model.class_conditional=False')
  if has_file and incoming[_LABEL_KEY].shape[0] != own[_LABEL_KEY].shape[0]:
    k, mine = incoming[_LABEL_KEY].shape[0] - 1, own[_LABEL_KEY].shape[0] - 1
    raise CheckpointError(f'{path} was trained for {k} classes but config.model.num_classes={mine}: set '
                          f'--config.model.num_classes={k}')


def load_model_state(model, state_dict, path='checkpoint'):
  """Loads a model state dict strictly; a mismatch names the missing, unexpected and mis-shaped keys."""
  if not isinstance(state_dict, dict):
    raise CheckpointError(f"{path}: 'model' entry is a {type(state_dict).__name__}, not a state dict")
  incoming = strip_module_prefix(state_dict)
  own = model.state_dict()
  _check_class_conditional(incoming, own, path)
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


def _check_loaded_weights(state, loaded, path):
  """Refuses a checkpoint whose model, EMA or optimizer state is not finite (or whose weights have blown
  up), naming the first bad tensor; nothing of it is then used."""
  problem = state_problem(state)
  if problem is None and isinstance(loaded.get('optimizer'), dict):
    opt_state = loaded['optimizer'].get('state', {})
    problem = weights_problem(((f'optimizer:{k}.{name}', v) for k, entry in opt_state.items()
                               if isinstance(entry, dict) for name, v in entry.items()), limit=None)
  if problem is not None:
    raise CheckpointError(f'refusing {path}: {problem}. A run that diverged wrote it; use an earlier '
                          'checkpoint')


def restore_checkpoint(ckpt_path, state, device):
  """Restores ``state`` (dict with 'optimizer', 'model', 'ema', 'step') from ``ckpt_path``.

  Unlike the official function, a missing file is an error (never a silent fresh start), the model is
  loaded strictly, the recorded SHA-256 (if any) is checked, and weights that are not finite are refused.
  Returns ``state``, with ``state['step']`` and, if present, the stored ``'rng'`` and ``'config'`` entries.
  """
  loaded = load_file(ckpt_path, map_location=device)
  _require(loaded, ('model', 'ema', 'step'), ckpt_path)
  load_model_state(state['model'], loaded['model'], ckpt_path)
  try:
    state['ema'].load_state_dict(loaded['ema'])
  except (KeyError, ValueError, TypeError) as e:
    raise CheckpointError(f"{ckpt_path}: the EMA state does not match the model ({e})") from None
  _check_loaded_weights(state, loaded, ckpt_path)
  if 'optimizer' in state and state['optimizer'] is not None:
    if 'optimizer' not in loaded:
      raise CheckpointError(f'{ckpt_path} has no optimizer state to resume from')
    try:
      state['optimizer'].load_state_dict(loaded['optimizer'])
    except (KeyError, ValueError, TypeError) as e:
      raise CheckpointError(f'{ckpt_path}: the optimizer state does not match the model ({e})') from None
  state['step'] = int(loaded['step'])
  for key in ('rng', 'config', 'epoch') + EXTRA_ENTRIES:
    if key in loaded:
      state[key] = loaded[key]
  return state


def restore_pretrained(ckpt_path, model, ema, device='cpu'):
  """Fine-tuning start: the raw weights into ``model`` and the EMA weights into ``ema``; returns the file's step.

  The optimizer and the step counter are not taken from the file: fine-tuning starts at step 0. The same
  checks as ``restore_checkpoint`` apply (SHA-256 when recorded, finite weights).
  """
  loaded = load_file(ckpt_path, map_location=device)
  _require(loaded, ('model', 'ema'), ckpt_path)
  load_model_state(model, loaded['model'], ckpt_path)
  try:
    ema.load_state_dict(loaded['ema'])
  except (KeyError, ValueError, TypeError) as e:
    raise CheckpointError(f"{ckpt_path}: the EMA state does not match the model ({e})") from None
  _check_loaded_weights({'model': model, 'ema': ema}, {}, ckpt_path)
  return int(loaded.get('step', 0))


def _free_bytes(folder):
  try:
    return shutil.disk_usage(folder).free
  except OSError:
    return None


def atomic_write(path, write, mode='wb'):
  """Calls ``write(file)`` on a temporary file beside ``path``, then renames it onto ``path`` atomically:
  readers see the old file or the complete new one, never a partial one.

  A failed write (full disk, no permission, a name too long, …) removes the temporary file, leaves any
  previous ``path`` unchanged and raises ``WriteError`` with one line that says what happened.
  """
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  tmp = None
  try:
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=os.path.splitext(path)[1], dir=folder)
    os.chmod(tmp, 0o666 & ~_umask())   # the permissions of a plain open(), not mkstemp's private 0600
    with os.fdopen(fd, mode) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except (OSError, RuntimeError) as e:
    free = _free_bytes(folder) if os.path.isdir(folder) else None   # before the partial file is removed
    if tmp is not None:
      with contextlib.suppress(OSError):
        os.remove(tmp)
    raise WriteError(_write_failure(path, e, free)) from None
  except BaseException:
    if tmp is not None:
      with contextlib.suppress(OSError):
        os.remove(tmp)
    raise


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _write_failure(path, e, free=None):
  """One line on why writing ``path`` failed and what to do; ``free``: bytes left on its disk, or None."""
  code = getattr(e, 'errno', None)
  full = (f'cannot write {path}: the disk is full ({(free or 0) / 2 ** 20:.2f} MiB free); free some space and run '
          'the same command again (files already written are unchanged)')
  if code == errno.ENOSPC:
    return full
  if isinstance(e, OSError) and code is not None:
    hint = {errno.EACCES: 'no permission to write there: choose a writable --workdir',
            errno.EPERM: 'no permission to write there: choose a writable --workdir',
            errno.EROFS: 'the file system is read-only: choose a writable --workdir',
            errno.ENAMETOOLONG: 'a path component is longer than the file system allows: choose a shorter name',
            errno.ENOTDIR: 'a part of the path is a file, not a folder: choose another --workdir',
            errno.EEXIST: 'a part of the path is a file, not a folder: choose another --workdir',
            errno.EFBIG: 'the file is larger than this system allows (a file-size limit)',
            errno.EDQUOT: 'the disk quota is used up: free some space'}.get(code, 'the file system refused it')
    return f'cannot write {path}: {e.strerror or _first_line(e)} ({hint}); files already written are unchanged'
  if free is not None and free < 64 * 1024:   # PyTorch's writer reports a full disk as an "unexpected pos"
    return full
  where = f' ({free / 2 ** 20:.0f} MiB free on that disk)' if free is not None else ''
  return (f'cannot write {path}: the write stopped part-way{where} ({_first_line(e)}); files already written are '
          'unchanged')


def atomic_torch_save(obj, path):
  """Writes ``obj`` to ``path`` with ``torch.save``, atomically."""
  atomic_write(path, lambda f: torch.save(obj, f))


def read_json(path):
  """The parsed JSON file at ``path``; ``ValueError('cannot read <path>: <why>')`` when it cannot be read or
  parsed."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f'cannot read {path}: {e}') from None


def atomic_write_text(path, text):
  """Writes ``text`` to ``path`` atomically."""
  atomic_write(path, lambda f: f.write(text), mode='w')


#: entries a method may add to its checkpoints (``Objective.checkpoint_entries``): ``generator`` marks a one-step
#: generator (``{'method', 't_init', 'continuous', ...}``: sampled in one network evaluation, see
#: ``sampling.get_one_step_sampling_fn``); ``extra`` holds what the method needs to resume (e.g. SFD's fake
#: score network and its optimiser).
EXTRA_ENTRIES = ('generator', 'extra')


def save_checkpoint(ckpt_path, state):
  """Saves ``state`` in the official layout (plus 'config', 'rng', the ``EXTRA_ENTRIES`` a method adds and the
  'sha256' of everything else),
  atomically. Weights that are not finite, or have blown up, are never written: ``CheckpointError``."""
  problem = state_problem(state)
  if problem is not None:
    raise CheckpointError(f'refusing to write {ckpt_path}: {problem}')
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
  for key in EXTRA_ENTRIES:
    if state.get(key) is not None:
      saved[key] = state[key]
  saved['sha256'] = tensors_sha256(saved)
  atomic_torch_save(saved, ckpt_path)


def config_to_json(config):
  """A ConfigDict as a JSON string (tuples become lists)."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


# ----------------------------------------------------------------------------------------------------------
# One run per folder


LOCK_NAME = '.lock'


class FolderLock:
  """An exclusive, non-blocking lock on ``folder`` (``flock`` on ``folder/.lock``) held while a run writes
  there; ``what`` says which kind of run (in messages). A second process is refused at once with
  ``WorkdirBusyError`` naming the PID and host that hold it. The kernel releases the lock when its
  process dies, so a lock left by a killed run never blocks a resume (the file itself stays; it is
  harmless). A context manager."""

  def __init__(self, folder, what='run'):
    self.folder, self.what, self._file = os.fspath(folder), what, None

  def __enter__(self):
    try:
      import fcntl
    except ImportError:   # no flock on this platform: run unlocked
      return self
    path = os.path.join(self.folder, LOCK_NAME)
    try:
      f = open(path, 'a+')
    except OSError as e:
      raise WriteError(_write_failure(path, e)) from None
    try:
      fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      holder = f.read().strip() or 'another process'
      f.close()
      raise WorkdirBusyError(f'{self.folder} is in use by another {holder}: wait for it to finish, or use another '
                             'folder (one run per folder)') from None
    f.seek(0)
    f.truncate()
    f.write(f'{self.what} (PID {os.getpid()} on host {socket.gethostname()}, since '
            f'{time.strftime("%Y-%m-%d %H:%M:%S")})\n')
    f.flush()
    self._file = f
    return self

  def __exit__(self, *exc):
    if self._file is not None:
      self._file.close()   # closing releases the lock
      self._file = None
    return False


def remove_tmp_files(folders):
  """Removes the temporary files that a kill during ``atomic_write`` left in ``folders`` (not recursive);
  returns their paths. Call it only while holding the folders' lock: a live writer's file looks the same."""
  removed = []
  for folder in folders:
    if not os.path.isdir(folder):
      continue
    for name in os.listdir(folder):
      path = os.path.join(folder, name)
      if name.startswith(TMP_PREFIX) and os.path.isfile(path):
        with contextlib.suppress(FileNotFoundError):
          os.remove(path)
          removed.append(path)
  return removed


def make_run_folder(folder):
  """Creates ``folder`` (and its parents) for a run; returns True when it did not exist before. A path that
  is a file, unwritable or too long raises ``WriteError`` with one line."""
  folder = os.fspath(folder)
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise WriteError(f'{folder} is a file, not a folder: choose another --workdir')
  created = not os.path.exists(folder)
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise WriteError(_write_failure(os.path.join(folder, ''), e)) from None
  if not os.access(folder, os.W_OK | os.X_OK):
    read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    why = 'its file system is read-only' if read_only else 'no permission'
    raise WriteError(f'cannot write to {folder}: {why} (choose a writable --workdir)')
  return created


def remove_if_unused(folder, created, allowed=('stdout.txt', LOCK_NAME)):
  """After a failed start: removes ``folder`` if this run ``created`` it and it holds nothing but ``allowed``
  files and empty folders, so that a refused command leaves no work directory behind."""
  if not created or not os.path.isdir(folder):
    return False
  for root, dirs, files in os.walk(folder):
    if root == os.fspath(folder):
      if any(f not in allowed for f in files):
        return False
    elif files:
      return False
  shutil.rmtree(folder, ignore_errors=True)
  return True
