"""Process-level helpers: device choice, seeding, generator states, the run's log file, the main rank, the
process group of a ``torchrun`` launch, and how the training step runs the network (``StepEngine``: data
parallelism over the group, mixed precision, memory format, ``torch.compile``).

A single process (no ``WORLD_SIZE > 1`` in the environment) never joins a group: every helper below then
does what one process alone would (``world_size() == 1``, collectives are no-ops).
"""
import contextlib
import datetime
import logging as py_logging
import os
import random
import sys

import numpy as np
import torch
from absl import logging


class DeviceError(ValueError):
  """``config.device`` names a device that this machine does not have."""


class GroupAbort(RuntimeError):
  """Another process of the group failed and reported why; this one stops as well (nothing to report)."""


def _dist():
  return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size():
  """Number of processes in the group (1 outside ``torch.distributed``)."""
  return torch.distributed.get_world_size() if _dist() else 1


def rank():
  """This process's rank in the group (0 outside ``torch.distributed``)."""
  return torch.distributed.get_rank() if _dist() else 0


def is_main_process():
  """True outside ``torch.distributed`` and on rank 0: the process that writes files."""
  return rank() == 0


def launched_world_size():
  """``WORLD_SIZE`` of torchrun's environment (1 when the process was not started by torchrun)."""
  try:
    return max(int(os.environ.get('WORLD_SIZE', '1') or 1), 1)
  except ValueError:
    return 1


def resolve_device(name):
  """'auto' → CUDA when available, else CPU; other names (or a ``torch.device``) are passed to
  ``torch.device``. Under torchrun (``WORLD_SIZE`` > 1) a CUDA device is this process's own GPU,
  ``cuda:LOCAL_RANK``; a named GPU (``cuda:1``) would put every process on it and is refused."""
  if name in (None, '', 'auto'):
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  else:
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
      raise DeviceError(f"config.device is '{name}' but CUDA is not available; use 'cpu' or 'auto'")
  if device.type != 'cuda' or launched_world_size() == 1:
    return device
  if device.index is not None:
    raise DeviceError(f"config.device is '{name}': under torchrun every process would use that one GPU; use 'auto' "
                      "or 'cuda' (process k of a node takes cuda:k)")
  local = int(os.environ.get('LOCAL_RANK', '0'))
  if local >= torch.cuda.device_count():
    raise DeviceError(f'torchrun started process {local} on a node with {torch.cuda.device_count()} GPU(s): '
                      '--nproc_per_node must not exceed the number of GPUs')
  return torch.device('cuda', local)


def init_distributed(device_name='auto'):
  """Joins the process group that torchrun's environment describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``, ``MASTER_PORT``; multi-node launches pass torchrun's rendezvous flags): NCCL when the
  processes train on CUDA (each on ``cuda:LOCAL_RANK``), gloo on CPUs. Returns the world size; nothing is
  done without ``WORLD_SIZE > 1`` (1)."""
  n = launched_world_size()
  if n == 1:
    return 1
  if _dist():
    return world_size()
  if not torch.distributed.is_available():
    raise DeviceError('torchrun started this process, but this PyTorch build has no torch.distributed')
  device = resolve_device(device_name)
  if device.type == 'cuda':
    torch.cuda.set_device(device)
    backend = 'nccl'
  else:
    if not torch.distributed.is_gloo_available():
      raise DeviceError('torchrun on CPUs needs the gloo backend, which this PyTorch build lacks')
    backend = 'gloo'
  torch.distributed.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
  return world_size()


def close_distributed(synchronise=False):
  """Leaves the process group (if any); ``synchronise``: first waits for every process to get here (a run
  that ended well everywhere)."""
  if _dist():
    if synchronise:
      torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def exit_now(code):
  """Ends a process of a torchrun group with ``code`` once its output is flushed, skipping the interpreter's
  teardown: there, the backend's worker threads (gloo) can meet half-destroyed objects and abort a run that
  has finished and written everything (exit status -6 instead of ``code``)."""
  for handler in py_logging.getLogger().handlers + py_logging.getLogger('absl').handlers:
    try:
      handler.flush()
    except Exception:   # noqa: BLE001  (a closed stream: nothing left to flush)
      pass
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except Exception:   # noqa: BLE001
      pass
  os._exit(code)


def shard():
  """``(rank, world size)`` when this process is one of a group that splits the data, else None."""
  return (rank(), world_size()) if world_size() > 1 else None


def row_range(n, shard_=None):
  """Rows ``[lo, hi)`` of an ``n``-row batch that process ``rank`` of ``world`` owns (all of them without a
  group): equal contiguous slices, so ``n`` must be divisible by the world size (``ValueError``)."""
  r, k = shard_ if shard_ is not None else (rank(), world_size())
  if k == 1:
    return 0, n
  if n % k:
    raise ValueError(f'a batch of {n} rows cannot be split evenly over {k} processes')
  b = n // k
  return r * b, (r + 1) * b


def barrier():
  if world_size() > 1:
    torch.distributed.barrier()


def all_gather_objects(obj):
  """``[obj of rank 0, obj of rank 1, …]`` on every process (picklable objects; tensors on the CPU)."""
  if world_size() == 1:
    return [obj]
  out = [None] * world_size()
  torch.distributed.all_gather_object(out, obj)
  return out


def broadcast_from_main(obj):
  """Rank 0's ``obj`` on every process (tensors travel through the CPU and come back on their device)."""
  if world_size() == 1:
    return obj
  box = [_to_cpu(obj) if is_main_process() else None]
  torch.distributed.broadcast_object_list(box, src=0)
  return box[0]


def average_(tensors):
  """Averages a list of same-device tensors over the group, in place (one collective); returns the list."""
  k = world_size()
  if k == 1 or not tensors:
    return tensors
  flat = torch.cat([t.detach().reshape(-1) for t in tensors])
  torch.distributed.all_reduce(flat)
  flat /= k
  start = 0
  for t in tensors:
    t.copy_(flat[start:start + t.numel()].reshape(t.shape))
    start += t.numel()
  return tensors


def _to_cpu(obj):
  if torch.is_tensor(obj):
    return obj.detach().cpu()
  if isinstance(obj, dict):
    return {k: _to_cpu(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_to_cpu(v) for v in obj)
  return obj


def _message(error):
  return None if error is None else f'{type(error).__name__}: {error}'


def _raise_agreed(messages, error):
  """Raises, on every process, if any process's message says it failed (see ``agree``)."""
  failed = [r for r, m in enumerate(messages) if m is not None]
  if not failed:
    return
  if error is not None and rank() == failed[0]:
    error.msgm_report = True
    raise error
  raise GroupAbort(f'process {failed[0]} of the group failed: {messages[failed[0]]}')


def agree(error):
  """Called by every process of the group at the same point with the exception it met (or None): if any
  process failed, every process raises — the lowest failing rank its own exception (marked for
  ``reports_here``), the others ``GroupAbort`` — so that the group stops together with one report."""
  if world_size() == 1:
    if error is not None:
      raise error
    return
  _raise_agreed(all_gather_objects(_message(error)), error)


def gather_lists(items, error=None):
  """Every process's list ``items`` (tensors moved to the CPU), concatenated in rank order, on every process;
  an ``error`` met by any process is raised as ``agree`` does instead."""
  if world_size() == 1:
    if error is not None:
      raise error
    return list(items)
  parts = all_gather_objects((_message(error), None if error is not None else _to_cpu(list(items))))
  _raise_agreed([m for m, _ in parts], error)
  return [x for _, part in parts for x in part]


def map_batches(n, fn):
  """``[fn(0), …, fn(n − 1)]`` with the calls split over the group (process r makes calls r, r + K, …) and the
  results (tensors, moved to the CPU, or plain objects) gathered in call order on every process. ``fn(i)``
  must not depend on which process calls it (per-item seeds), so the list is the one a single process
  makes. A call that raises on one process raises on all (``agree``)."""
  k, r = world_size(), rank()
  if k == 1:
    return [fn(i) for i in range(n)]
  mine, error = [], None
  try:
    for i in range(r, n, k):
      mine.append((i, fn(i)))
  except Exception as e:   # noqa: BLE001  (shared with the group, then raised)
    error = e
  return [value for _, value in sorted(gather_lists(mine, error), key=lambda item: item[0])]


@contextlib.contextmanager
def together():
  """A block that every process of the group runs to its end: an exception in it on any process is raised
  on all of them as ``agree`` says, after the block (no process waits in a collective for a failed one)."""
  if world_size() == 1:
    yield
    return
  error = None
  try:
    yield
  except Exception as e:   # noqa: BLE001  (any failure of the block is shared with the group)
    error = e
  agree(error)


def reports_here(error):
  """Whether this process reports ``error`` (rank 0, or the process ``agree`` chose for it)."""
  return is_main_process() or getattr(error, 'msgm_report', False)


def seed_everything(seed):
  """Seeds Python, numpy and torch (CPU and CUDA) from ``config.seed``."""
  random.seed(seed)
  np.random.seed(seed % 2 ** 32)
  torch.manual_seed(seed)


def _cuda_index(device):
  return device.index if device.index is not None else torch.cuda.current_device()


def rng_state(device=None):
  """The global generator states (CPU, and every CUDA device when present), for an exact resume; with a
  CUDA ``device``, ``'cuda_device'`` records which of them the run drew from."""
  state = {'torch': torch.get_rng_state()}
  if torch.cuda.is_available():
    state['cuda'] = torch.cuda.get_rng_state_all()
    if device is not None and torch.device(device).type == 'cuda':
      state['cuda_device'] = _cuda_index(torch.device(device))
  return state


def set_rng_state(state, device=None):
  """Restores ``rng_state``'s generators. With a CUDA ``device``, that device continues the stream the saving
  run drew from (``'cuda_device'``), whatever the number of processes then and now (every process of a group
  draws the same numbers: the training step takes its rows of draws made for the whole batch)."""
  torch.set_rng_state(state['torch'])
  if 'cuda' not in state or not torch.cuda.is_available():
    return
  device = torch.device(device) if device is not None else None
  if world_size() == 1:
    torch.cuda.set_rng_state_all(state['cuda'])
  if device is not None and device.type == 'cuda':
    source = state.get('cuda_device', 0 if world_size() > 1 else _cuda_index(device))
    torch.cuda.set_rng_state(state['cuda'][source], device)


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


# ----------------------------------------------------------------------------------------------------------
# The training step's network: rows of this process, DDP, precision, memory format, compile


PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def speed_options(config):
  """``{'precision', 'channels_last', 'compile', 'fused', 'pin_memory', 'num_workers'}`` from the config (the
  defaults reproduce the plain fp32 eager step)."""
  t, o = config.training, config.optim
  mode = t.get('compile', '')
  mode = '' if mode in (None, False, '', 'none') else ('default' if mode is True else str(mode))
  return {'precision': str(t.get('precision', 'fp32')), 'channels_last': bool(t.get('channels_last', False)),
          'compile': mode, 'fused': bool(o.get('fused', False)), 'pin_memory': bool(t.get('pin_memory', False)),
          'num_workers': int(t.get('num_workers', 0))}


COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')


def check_speed_options(config, device, is_image):
  """Refuses, with one ``ValueError`` line, the speed options this device or data cannot use."""
  s = speed_options(config)
  if s['precision'] not in PRECISIONS:
    raise ValueError(f"unknown training.precision {s['precision']!r}; valid: {', '.join(PRECISIONS)}")
  if s['precision'] == 'fp16' and device.type != 'cuda':
    raise ValueError("training.precision='fp16' needs a CUDA device (its loss scaling is CUDA's); use 'bf16' or "
                     "'fp32' on the CPU")
  if s['channels_last'] and not is_image:
    raise ValueError('training.channels_last applies to image data [B, C, H, W] only')
  if s['compile'] and s['compile'] not in COMPILE_MODES:
    raise ValueError(f"unknown training.compile {s['compile']!r}; valid: '' (off), {', '.join(COMPILE_MODES)}")
  if s['pin_memory'] and device.type != 'cuda':
    raise ValueError('training.pin_memory needs a CUDA device (pinned host memory speeds up copies to a GPU)')
  if s['num_workers'] < 0:
    raise ValueError(f"training.num_workers must be >= 0, got {s['num_workers']}")
  return s


def needs_engine(config):
  """Whether the training step needs a ``StepEngine`` (a group, or a speed option other than the defaults)."""
  s = speed_options(config)
  return world_size() > 1 or s['precision'] != 'fp32' or s['channels_last'] or bool(s['compile'])


def _has_dropout(model):
  return any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


class _ScaledOptimizer:
  """The optimiser as ``optimize_fn`` sees it under fp16 loss scaling: ``step`` goes through the scaler."""

  def __init__(self, optimizer, scaler):
    self.optimizer, self.scaler = optimizer, scaler

  @property
  def param_groups(self):
    return self.optimizer.param_groups

  def step(self):
    self.scaler.step(self.optimizer)
    self.scaler.update()


class _Network:
  """``net(x [B, ...], labels [B], class_labels [B] = None) -> [B, ...]`` as the objective's terms see the network
  in one step."""

  def __init__(self, engine):
    self.engine, self.step, self.sync, self.calls = engine, 0, True, 0

  def train(self, mode=True):
    self.engine.model.train(mode)
    return self

  def __call__(self, x, labels, class_labels=None):
    e = self.engine
    n = x.shape[0]
    lo, hi = row_range(n, e.shard)
    if e.world > 1:
      x, labels = x[lo:hi], labels[lo:hi]
      class_labels = None if class_labels is None else class_labels[lo:hi]
    dtype = x.dtype
    if e.channels_last and x.ndim == 4:
      x = x.contiguous(memory_format=torch.channels_last)
    net = e.synced if self.sync else e.local()
    with e.dropout_stream(self.step, self.calls), e.autocast():
      out = net(x, labels) if class_labels is None else net(x, labels, class_labels)
    self.calls += 1
    out = out.to(dtype).contiguous()
    if e.world > 1:
      shape = out.shape[1:]
      out = torch.cat([out.new_zeros((lo,) + shape), out, out.new_zeros((n - hi,) + shape)])
    return out


class StepEngine:
  """How the training step runs the network, for a group of processes and/or the speed options.

  ``network(step, sync)`` is what the objective's terms call in place of the model: on a group of K
  processes it runs the network on this process's rows of the batch only (``row_range``; through
  DistributedDataParallel when ``sync``, so that the backward pass averages the gradients over the group)
  and returns zeros for the other rows; everything else of the terms — the draws of t and z, made for the
  whole batch from generators that every process advances alike — is computed for all rows, and ``rows``
  keeps this process's per-sample values for the reduction. The mean over equal slices, averaged over the
  processes, is the mean over the batch: the step of one process with the same batch. Network dropout
  draws from a stream per process (seeded by step, call and rank) so that the processes do not share masks.

  ``precision``: 'fp32', 'bf16' or 'fp16' autocast of the network's forward pass (the losses stay fp32;
  fp16 scales the loss: ``scale``, ``unscale``, ``optimizer``). ``channels_last``: the network and its
  image inputs in that memory format. ``compile``: a ``torch.compile`` mode for the network ('' = eager).
  ``model`` stays the plain module (its parameters, state dict and EMA are those of one process).
  """

  def __init__(self, model, device, precision='fp32', channels_last=False, compile='', seed=0, optimizer=None):
    self.model, self.device = model, torch.device(device)
    self.world, self.rank = world_size(), rank()
    self.shard = (self.rank, self.world)
    self.dtype = PRECISIONS[precision]
    self.precision, self.channels_last, self.compile_mode, self.seed = precision, bool(channels_last), compile, seed
    self.scaler = torch.amp.GradScaler(self.device.type) if precision == 'fp16' else None
    if self.channels_last:
      model.to(memory_format=torch.channels_last)
      if optimizer is not None:   # moments restored from a checkpoint follow their parameters' format
        for st in optimizer.state.values():
          for key, value in st.items():
            if torch.is_tensor(value) and value.ndim == 4:
              st[key] = value.contiguous(memory_format=torch.channels_last)
    self.dropout = self.world > 1 and _has_dropout(model)
    synced = model
    if self.world > 1:
      from torch.nn.parallel import DistributedDataParallel
      ids = [self.device.index] if self.device.type == 'cuda' else None
      # the networks have no buffers that training changes (no batch norm): no broadcast before each forward
      import inspect
      names = inspect.signature(DistributedDataParallel).parameters
      quiet = {'forward_sync_buffers': False} if 'forward_sync_buffers' in names else {'broadcast_buffers': False}
      synced = DistributedDataParallel(model, device_ids=ids, **quiet)
    self.synced = self._compiled(synced)
    self._local = None
    self._net = _Network(self)

  def _compiled(self, module):
    if not self.compile_mode:
      return module
    return torch.compile(module, mode=None if self.compile_mode == 'default' else self.compile_mode)

  def local(self):
    """The network without gradient synchronisation (for objectives that combine gradients themselves)."""
    if self._local is None:
      self._local = self.synced if self.world == 1 else self._compiled(self.model)
    return self._local

  def network(self, step, sync=True):
    self._net.step, self._net.sync, self._net.calls = int(step), bool(sync), 0
    return self._net

  def rows(self, values):
    """This process's rows of per-sample values ``[n]`` (all of them in one process; None stays None)."""
    if values is None or self.world == 1:
      return values
    lo, hi = row_range(values.shape[0], self.shard)
    return values[lo:hi]

  def autocast(self):
    if self.dtype is None:
      return contextlib.nullcontext()
    return torch.autocast(device_type=self.device.type, dtype=self.dtype)

  def dropout_stream(self, step, call):
    if not self.dropout:
      return contextlib.nullcontext()
    import datasets
    return _seeded(datasets.derive_seed(self.seed, 'dropout', step, call, self.rank), self.device)

  def scale(self, loss):
    return loss if self.scaler is None else self.scaler.scale(loss)

  def unscale(self, optimizer):
    if self.scaler is not None:
      self.scaler.unscale_(optimizer)

  def optimizer(self, optimizer):
    return optimizer if self.scaler is None else _ScaledOptimizer(optimizer, self.scaler)

  def describe(self):
    parts = [f'precision {self.precision}']
    if self.channels_last:
      parts.append('channels_last')
    if self.compile_mode:
      parts.append(f'torch.compile ({self.compile_mode})')
    return ', '.join(parts)


@contextlib.contextmanager
def _seeded(seed, device):
  """The default generators of the CPU and ``device`` seeded with ``seed`` inside the block, restored after."""
  devices = [device] if device.type == 'cuda' else []
  with torch.random.fork_rng(devices=devices):
    torch.manual_seed(seed)
    yield
