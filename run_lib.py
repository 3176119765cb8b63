"""Training of score models with any unlearning method of ``unlearning/`` (the ``--task``), from scratch,
by fine-tuning a checkpoint, or resuming.

Work-directory layout (as in score_sde / MSGM):
  W/config.json                      the resolved config of the first run (later runs that change it add
                                     config_step<K>.json)
  W/stdout.txt                       the log (appended)
  W/checkpoints/checkpoint_K.pth     kept checkpoints, K = step // training.snapshot_freq
  W/checkpoints-meta/checkpoint.pth  the latest state for resuming, every snapshot_freq_for_preemption steps
  W/samples/iter_<step>/             snapshot samples
  W/tensorboard/                     scalars loss, loss_g, loss_f, eval_loss
Every file is written atomically; nothing already written is overwritten except the resume checkpoint.
"""
import contextlib
import json
import math
import os
import time

import torch
from absl import logging
from tqdm import tqdm

import conditioning
import datasets
import losses
import sampling
import sde_lib
import unlearning
import utils
from configs import default_configs
import runtime
from runtime import (add_log_file, is_main_process, log_to_file, resolve_device, rng_state, seed_everything,
                     set_rng_state)
from train_state import create_state, load_ema_model  # load_ema_model: part of run_lib's API


class TrainingError(RuntimeError):
  """A training run cannot start or cannot go on (bad input, non-finite loss)."""


def _flat(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def save_config(config, workdir, step):
  """Writes W/config.json once; a resumed run with a different config adds config_step<step>.json."""
  text = utils.config_to_json(config)
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    utils.atomic_write_text(path, text)
    return
  with open(path) as f:
    old = _flat(json.load(f))
  new = _flat(json.loads(text))
  changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
  if changed:
    logging.warning('the config differs from W/config.json in: %s', ', '.join(changed))
    utils.atomic_write_text(os.path.join(workdir, f'config_step{step}.json'), text)


# ----------------------------------------------------------------------------------------------------------
# Building blocks shared by training and evaluation


def sampling_eps(config, sde):
  return config.sampling.eps if config.sampling.eps > 0 else sde.default_sampling_eps


def sample_with_ema(state, sampling_fn, generator=None, z=None, labels=None):
  """Draws samples with the EMA weights (the raw weights are restored afterwards); ``labels``: the classes
  of a class-conditional model (None: unconditional models, or the sampler's default)."""
  model, ema = state['model'], state['ema']
  ema.store(model.parameters())
  ema.copy_to(model.parameters())
  try:
    if labels is None:
      return sampling_fn(model, z=z, generator=generator)
    return sampling_fn(model, z=z, generator=generator, labels=labels)
  finally:
    ema.restore(model.parameters())


def save_samples(samples, folder, is_image, name='sample'):
  """A PNG grid (images in [0, 1]) or scatter plot (2-D points), and the raw tensor (``.pt``)."""
  os.makedirs(folder, exist_ok=True)
  samples = samples.detach().cpu()
  utils.atomic_torch_save(samples, os.path.join(folder, f'{name}.pt'))
  png = os.path.join(folder, f'{name}.png')
  if is_image:
    import torchvision
    nrow = int(math.ceil(math.sqrt(samples.shape[0])))
    torchvision.utils.save_image(samples.clamp(0, 1), png, nrow=nrow, padding=2)
  elif samples.ndim == 2 and samples.shape[1] == 2:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.5)
    ax.set_aspect('equal')
    fig.savefig(png, dpi=100, bbox_inches='tight')
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------
# Training


def _check_config(config):
  t = config.training
  for key in ('n_iters', 'snapshot_freq', 'log_freq', 'snapshot_freq_for_preemption', 'batch_size'):
    if int(t[key]) <= 0:
      raise TrainingError(f'config.training.{key} must be positive, got {t[key]}')
  if int(t.batch_size_un) <= 0:
    raise TrainingError(f'config.training.batch_size_un must be positive, got {t.batch_size_un}')


def _check_class_conditional(config, method):
  """Refuses a class-conditional config for a method that does not train such networks (one line)."""
  if conditioning.num_classes(config) and not method.class_conditional:
    able = ', '.join(m.name for m in unlearning.registered() if m.class_conditional)
    raise TrainingError(f'--task {method.name} does not train class-conditional networks '
                        f'(config.model.class_conditional=True); those that do: {able}')


def _start_state(config, workdir, finetune, device):
  """Resume from W/checkpoints-meta, else fine-tune from ``training.pretrained``, else start fresh."""
  state = create_state(config, device)
  meta = os.path.join(workdir, 'checkpoints-meta', 'checkpoint.pth')
  if os.path.exists(meta):
    losses.keep_optimizer_options(state['optimizer'], lambda: utils.restore_checkpoint(meta, state, device))
    logging.info('resuming from %s at step %d', meta, state['step'])
    return state, 'resumed'
  if finetune:
    path = config.training.pretrained
    if not path:
      raise TrainingError('--finetune needs the checkpoint to start from: set --config.training.pretrained=PATH')
    if not os.path.isfile(path):
      raise TrainingError(f'--finetune: no checkpoint at config.training.pretrained={path}')
    file_step = utils.restore_pretrained(path, state['model'], state['ema'], device)
    state['ema'].decay = config.model.ema_rate   # the file's EMA weights, this run's EMA rate
    logging.info('fine-tuning from %s (trained for %d steps)', path, file_step)
    return state, 'finetune'
  return state, 'fresh'


def train(config, workdir, task='standard', finetune=False, progress=True):
  """Trains a score model with the unlearning method ``task`` (``unlearning.get_method``: readable or
  official names) in ``workdir``; returns the final state.

  From scratch, by fine-tuning ``config.training.pretrained`` (``finetune``), or resuming from
  ``W/checkpoints-meta/checkpoint.pth`` when it exists. One run per work directory: the first holds a
  lock (``utils.FolderLock``) and a second is refused. Raises ``TrainingError`` (or
  ``utils.CheckpointError``, ``utils.WriteError``, ``utils.WorkdirBusyError``,
  ``datasets.DatasetUnavailableError``, ``ValueError``) on bad input, before anything is written; a
  refused start leaves no new work directory behind. A non-finite loss or weights stop the run without
  writing them.

  Under torchrun (a ``torch.distributed`` group of K processes; ``runtime.init_distributed``) every process
  takes its rows of each batch — the batches, and the draws of t and z, are those of one process with
  the config's (global) batch size — and the gradients are averaged once per step (DDP), so the weights
  follow the single-process run (to float tolerance) and the checkpoints are the same files: a run
  resumes with any number of processes. Rank 0 holds the lock for the group and writes everything (log,
  TensorBoard, checkpoints, samples, train_stats.json); a refusal on any process stops all of them.
  """
  main = is_main_process()
  created, handler, ok = False, None, False
  held = contextlib.ExitStack()
  try:
    with runtime.together():
      config = default_configs.with_defaults(config)
      method = unlearning.get_method(task)
      unlearning.apply_preset(config, method)
      if method.configure is not None:
        method.configure(config)
      _check_config(config)
      _check_class_conditional(config, method)
      if main:
        created = utils.make_run_folder(workdir)
        held.enter_context(utils.FolderLock(workdir, 'training run'))
        folders = [workdir, os.path.join(workdir, 'checkpoints'), os.path.join(workdir, 'checkpoints-meta')]
        samples = os.path.join(workdir, 'samples')
        if os.path.isdir(samples):
          folders += [os.path.join(samples, d) for d in os.listdir(samples)]
        handler = add_log_file(workdir)
        for path in utils.remove_tmp_files(folders):
          logging.info('removed %s, left by an interrupted save', path)
    try:
      state = _train(config, workdir, method, finetune, progress and main, main)
      ok = True
      return state
    except Exception as e:
      log_to_file(handler, str(e))
      raise
  finally:
    held.close()
    if handler is not None:
      logging.get_absl_logger().removeHandler(handler)
      handler.close()
    if not ok and main:
      utils.remove_if_unused(workdir, created)


def _stop(message):
  """A ``TrainingError`` on rank 0, which reports it; ``GroupAbort`` on the other processes of a group."""
  return TrainingError(message) if is_main_process() else runtime.GroupAbort(message)


def _train(config, workdir, method, finetune, progress, main):
  setup_started = time.time()
  tc = config.training
  world = runtime.world_size()
  # Build everything that can refuse bad input before anything is written (on every process: a refusal on
  # one stops all of them, after this block).
  with runtime.together():
    device = resolve_device(config.device)
    seed_everything(config.seed)
    sde = sde_lib.get_sde(config)
    data = datasets.get_dataset(config)
    num_classes = conditioning.check_data(config, data)
    label_dropout = float(tc.get('label_dropout', 0.)) if num_classes else 0.
    official = f' (official name {method.official_name})' if method.official_name else ''
    logging.info('task %s%s; %s', method.name, official, data.describe())
    speed = runtime.check_speed_options(config, device, data.is_image)
    if method.forget_data and len(data.train.forget) == 0:
      raise TrainingError(f'task {method.name} needs forget data, but D_f is empty')
    scaler = datasets.get_data_scaler(config)
    inverse_scaler = datasets.get_data_inverse_scaler(config)
    sampling_fn = None
    if tc.snapshot_sampling:
      n = min(int(config.training.get('snapshot_num_samples', 64)), 4096)
      sampling_fn = sampling.get_sampling_fn(config, sde, (n,) + tuple(data.shape), inverse_scaler,
                                             sampling_eps(config, sde))
    state, how = _start_state(config, workdir, finetune, device)
    objective = unlearning.build_objective(method, config, sde, data, device, state['model'], True, how, workdir,
                                           int(state['step']), state.get('extra') if how == 'resumed' else None)
    one_step = objective.checkpoint_entries().get('generator')
    if one_step is not None and sampling_fn is not None:   # snapshots of a one-step generator
      sampling_fn = sampling.get_one_step_sampling_fn(config, sde, (n,) + tuple(data.shape), inverse_scaler,
                                                      one_step['t_init'])
    eval_objective = unlearning.build_objective(method, config, sde, data, device, state['model'], False, 'eval')
    if speed['precision'] == 'fp16' and objective.manual_backward:
      raise TrainingError(f"training.precision='fp16' cannot scale the gradients that --task {method.name} combines "
                          "itself; use 'bf16' or 'fp32'")
    eval_step_fn = unlearning.get_step_fn(eval_objective, False)
    if how != 'resumed':
      state['rng'] = None
    elif state.get('rng') is not None:
      set_rng_state(state['rng'], device)

    ckpt_dir = os.path.join(workdir, 'checkpoints')
    meta_path = os.path.join(workdir, 'checkpoints-meta', 'checkpoint.pth')

    retain_part = method.retain_data          # 'full', 'retain', or 'none' (D_g is never read)
    uses_retain = objective.needs_retain_batch and retain_part != 'none'
    data_seed = datasets.derive_seed(config.seed, 'train', method.name)
    # The forget iterator advances only on forget steps, so its position is the number of forget steps so far.
    start = int(state['step'])
    forget_done = sum(objective.needs_forget_batch(s) for s in range(start)) if method.forget_data else 0

    def batch_size(part, wanted):
      n = len(data.train.part(part))
      if 0 < n < wanted:
        logging.warning('the %s training data has %d items, fewer than a batch of %d: using batches of %d',
                        part, n, wanted, n)
      size = min(wanted, n) if n else wanted
      if size % world:
        raise TrainingError(f'under torchrun each batch is split evenly over the {world} processes, but the {part} '
                            f'batch has {size} items: make training.batch_size and batch_size_un multiples of {world}')
      return size

    # Training batches: the same on every process; a process of a group loads only its rows (datasets' shard).
    loading = dict(num_workers=speed['num_workers'], shard=runtime.shard(), pin_memory=speed['pin_memory'])
    sizes = []
    retain_iter = forget_iter = None
    if uses_retain:
      sizes.append(('', batch_size(retain_part, tc.batch_size)))
      retain_iter = data.iterator('train', retain_part, sizes[-1][1], data_seed, start_step=start, **loading)
    if method.forget_data:
      sizes.append(('forget ', batch_size('forget', tc.batch_size_un)))
      forget_iter = data.iterator('train', 'forget', sizes[-1][1], datasets.derive_seed(data_seed, 'forget'),
                                  start_step=forget_done, **loading)
    # Evaluation draws its batches and noise from its own streams, so it never shifts the training RNG. Its
    # retain term reads D_g test data even where training replays other items (sa's samples).
    eval_retain = eval_objective.needs_retain_batch and retain_part != 'none'
    evals_done = start // tc.eval_freq if tc.eval_freq > 0 else 0
    eval_iter = data.iterator('test', retain_part, tc.batch_size, datasets.derive_seed(config.seed, 'eval'),
                              random_flip=False, uniform_dequantization=False, drop_last=False,
                              start_step=evals_done) if eval_retain else None
    eval_forget_iter = None
    if method.forget_data and len(data.test.forget) > 0:
      eval_forget_iter = data.iterator('test', 'forget', tc.batch_size_un, datasets.derive_seed(config.seed, 'eval-f'),
                                       random_flip=False, uniform_dequantization=False, drop_last=False,
                                       start_step=evals_done)

  # Every process accepted the run: from here on rank 0 writes into the work directory.
  engine = None
  if runtime.needs_engine(config):
    engine = runtime.StepEngine(state['model'], device, speed['precision'], speed['channels_last'], speed['compile'],
                                config.seed, state['optimizer'])
  objective.synchronize()
  step_fn = unlearning.get_step_fn(objective, True, losses.optimization_manager(config), engine)
  logging.info('world size %d, %s; %s', world,
               ', '.join(f'per-rank {kind}batch {size // world} (global {size})' for kind, size in sizes),
               engine.describe() if engine is not None else 'precision fp32')
  if main:
    save_config(config, workdir, state['step'])
  writer = None
  if main:
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  blocking = not speed['pin_memory']

  def batch(iterator, drop=True):
    """The next batch: x, or ``(x, y)`` for a class-conditional network (a share ``training.label_dropout`` of the
    training labels replaced by the null label; none of the evaluation batches')."""
    if iterator is None:
      return None
    x, y = next(iterator)
    x = scaler(x.to(device, non_blocking=not blocking))
    if not num_classes:
      return x
    y = y.to(device, non_blocking=not blocking)
    return x, conditioning.drop_labels(y, label_dropout if drop else 0., num_classes)

  monitor = LossMonitor()

  def check(step):
    """Stops the run (nothing saved) if the loss was not finite since the last check (on any process) or the
    weights are not finite; warns about loss jumps. Reads values back from the device and, in a group,
    shares them: called by every process at log and save points."""
    bad_step, jumps = monitor.check()
    bad_value = monitor.bad_value
    if world > 1:
      seen = runtime.all_gather_objects((bad_step, bad_value, jumps))
      bad = sorted((s, v) for s, v, _ in seen if s is not None)
      bad_step, bad_value = bad[0] if bad else (None, None)
      jumps = sorted({j for _, _, js in seen for j in js})
    for jump_step, ratio, value in jumps if main else ():
      logging.warning('step %d: the loss %.4g is %.3g times its running average: the run may be diverging '
                      '(lower optim.lr or the unlearning weights)', jump_step, value, ratio)
    last_good = (f'The last good state is in {meta_path} and {ckpt_dir} (if written): lower optim.lr or the '
                 'unlearning weights and run the same command again to resume from it.')
    if bad_step is not None:
      raise _stop(f'the loss became {bad_value} at step {bad_step}; stopping without saving the weights. {last_good}')
    problem = utils.state_problem(state)
    if problem is not None:
      raise _stop(f'the weights are not finite after step {step} ({problem}); stopping without saving them. '
                  f'{last_good}')

  stats = None

  def save(path):
    state['rng'] = rng_state(device)
    state.update(objective.checkpoint_entries())
    utils.save_checkpoint(path, dict(state, config=config))
    if stats is not None:
      stats.write(int(state['step']))

  snapshot_labels = None if sampling_fn is None else conditioning.sampling_labels(
    config, min(int(config.training.get('snapshot_num_samples', 64)), 4096), class_names=data.class_names,
    device=device)

  def snapshot(step):
    save(os.path.join(ckpt_dir, f'checkpoint_{step // tc.snapshot_freq}.pth'))
    if sampling_fn is not None:
      gen = torch.Generator(device=device).manual_seed(datasets.derive_seed(config.seed, 'snapshot', step))
      samples, nfe = sample_with_ema(state, sampling_fn, generator=gen, labels=snapshot_labels)
      save_samples(samples, os.path.join(workdir, 'samples', f'iter_{step}'), data.is_image)
      logging.info('step %d: %d snapshot samples (%d network evaluations)', step, samples.shape[0], nfe)

  n_iters = int(tc.n_iters)
  if start >= n_iters:
    logging.info('nothing to do: the run has already reached step %d of %d', start, n_iters)
  bar = tqdm(total=n_iters, initial=start, disable=not progress, desc=f'train {method.name}', dynamic_ncols=True)
  t0, steps_timed = time.time(), 0
  if main:
    stats = TrainStats(workdir, method.name, how, start, t0 - setup_started, str(device),
                       config.training.pretrained if how == 'finetune' else '', processes=world)
  try:
    while state['step'] < n_iters:
      step = int(state['step'])
      batch_f = batch(forget_iter) if step_fn.needs_forget_batch(step) else None
      out = step_fn(state, batch(retain_iter), batch_f)
      monitor.update(out['loss'], step)
      done = int(state['step'])
      steps_timed += 1
      bar.update(1)
      log_now = done % tc.log_freq == 0 or done == n_iters
      meta_now = done % tc.snapshot_freq_for_preemption == 0 or done == n_iters
      snapshot_now = done % tc.snapshot_freq == 0
      if log_now or meta_now or snapshot_now:
        check(done)
      if log_now:
        keys = ('loss', 'loss_g', 'loss_f')
        means = torch.stack([out[k].detach().double() for k in keys])
        runtime.average_([means])   # a group: the means over its processes' rows, i.e. over the batch
        values = dict(zip(keys, means.tolist()))
        rate = steps_timed / max(time.time() - t0, 1e-9)
        bar.set_postfix(loss=f'{values["loss"]:.4g}', steps_per_s=f'{rate:.1f}')
        msg = f'step {done}: loss {values["loss"]:.5e}'
        for key in ('loss_g', 'loss_f'):   # NaN: the method has no such term (e.g. VDU reads no D_g)
          if not math.isnan(values[key]):
            msg += f', {key} {values[key]:.5e}'
        if main:
          logging.info(msg)
        if writer is not None:
          for key, value in values.items():
            if not math.isnan(value):
              writer.add_scalar(key, value, done)
      if main and tc.eval_freq > 0 and done % tc.eval_freq == 0:
        eval_f = batch(eval_forget_iter, False) if eval_forget_iter is not None else None
        if not method.forget_data or eval_f is not None:
          gen = torch.Generator(device=device).manual_seed(datasets.derive_seed(config.seed, 'eval-noise', done))
          ev = eval_step_fn(state, batch(eval_iter, False), eval_f, generator=gen)
          logging.info('step %d: eval_loss %.5e', done, ev['loss'].item())
          if writer is not None:
            writer.add_scalar('eval_loss', ev['loss'].item(), done)
      if main and meta_now:
        save(meta_path)
      if main and snapshot_now:
        snapshot(done)
    check(int(state['step']))
  except KeyboardInterrupt:
    logging.warning('interrupted at step %d; resume with the same command (from %s)', state['step'], meta_path)
    raise
  finally:
    bar.close()
    if writer is not None:
      writer.close()
  return state


class LossMonitor:
  """Watches the training loss where it lives (no read-back to the host every step).

  ``update(loss, step)`` records the first step whose loss is not finite and the largest ratio of |loss|
  to its running average (an exponential average with ``decay``; a ratio above ``jump`` is a warning).
  ``check()`` reads them back: ``(first non-finite step or None, [(step, ratio, loss)])`` and starts a new
  window for the jumps.
  """

  def __init__(self, decay=0.99, jump=100.):
    self.decay, self.jump = decay, jump
    self._bad = self._bad_value = self._running = self._ratio = self._ratio_step = self._ratio_value = None
    self.bad_value = None

  def update(self, loss, step):
    a = loss.detach().double().abs()
    if self._bad is None:
      self._bad = torch.full((), -1, dtype=torch.long, device=a.device)
      self._bad_value = torch.zeros((), dtype=torch.float64, device=a.device)
      self._running = torch.full((), float('nan'), dtype=torch.float64, device=a.device)
      self._reset_window(a.device)
    finite = torch.isfinite(a)
    first = ~finite & (self._bad < 0)
    self._bad = torch.where(first, step, self._bad)
    self._bad_value = torch.where(first, loss.detach().double(), self._bad_value)
    started = ~torch.isnan(self._running)
    ratio = torch.where(finite & started & (self._running > 0), a / self._running, torch.zeros_like(a))
    larger = ratio > self._ratio
    self._ratio = torch.where(larger, ratio, self._ratio)
    self._ratio_step = torch.where(larger, step, self._ratio_step)
    self._ratio_value = torch.where(larger, loss.detach().double(), self._ratio_value)
    mixed = torch.where(started, self.decay * self._running + (1. - self.decay) * a, a)
    self._running = torch.where(finite, mixed, self._running)

  def _reset_window(self, device):
    self._ratio = torch.zeros((), dtype=torch.float64, device=device)
    self._ratio_step = torch.full((), -1, dtype=torch.long, device=device)
    self._ratio_value = torch.zeros((), dtype=torch.float64, device=device)

  def check(self):
    if self._bad is None:
      return None, []
    bad = int(self._bad)
    self.bad_value = float(self._bad_value)
    jumps = []
    if float(self._ratio) > self.jump:
      jumps.append((int(self._ratio_step), float(self._ratio), float(self._ratio_value)))
    self._reset_window(self._ratio.device)
    return (bad if bad >= 0 else None), jumps


STATS_FILENAME = 'train_stats.json'


class TrainStats:
  """The compute of a training run, ``W/train_stats.json``, rewritten atomically with every checkpoint.

  One segment per process (a resumed run adds one): ``how`` it started (fresh, finetune, resumed), its
  ``start_step`` and ``end_step``, ``setup_seconds`` (data, model and the method's own preparation, e.g. a
  Fisher or a replay pool), ``loop_seconds`` (the training steps, with their logging, checkpoints and
  snapshots) and ``wall_seconds`` (both). The totals sum the segments: ``steps`` (optimisation steps of this
  work directory; a fine-tuned run does not count its pretraining, named in ``pretrained``), ``wall_seconds``,
  ``steps_per_second`` (steps / loop seconds). ``processes``: the processes of a segment's torchrun group
  (1 without torchrun); their time is not multiplied in.
  """

  def __init__(self, workdir, task, how, start_step, setup_seconds, device, pretrained='', processes=1):
    self.path = os.path.join(workdir, STATS_FILENAME)
    self.head = {'task': task, 'start': how, 'pretrained': pretrained, 'device': device}
    self.segments = []
    if how == 'resumed' and os.path.isfile(self.path):
      try:
        with open(self.path) as f:
          old = json.load(f)
        self.head.update({k: old[k] for k in ('start', 'pretrained') if k in old})
        # a segment that saved beyond the resume point keeps its time (spent) but not the steps done again
        self.segments = [dict(s, end_step=min(int(s['end_step']), int(start_step))) for s in old.get('segments', [])
                         if int(s['start_step']) <= start_step]
      except (OSError, ValueError, KeyError, TypeError) as e:
        logging.warning('%s is unreadable (%s): the compute of earlier segments is not counted', self.path, e)
    self.current = {'how': how, 'start_step': int(start_step), 'end_step': int(start_step),
                    'setup_seconds': float(setup_seconds), 'loop_seconds': 0., 'wall_seconds': float(setup_seconds),
                    'processes': int(processes)}
    self.loop_started = time.time()

  def write(self, step):
    """Records the segment up to ``step`` and writes the file."""
    c = self.current
    c['end_step'] = int(step)
    c['loop_seconds'] = time.time() - self.loop_started
    c['wall_seconds'] = c['setup_seconds'] + c['loop_seconds']
    segments = self.segments + [dict(c)]
    steps = sum(s['end_step'] - s['start_step'] for s in segments)
    loop = sum(s['loop_seconds'] for s in segments)
    out = dict(self.head, step=int(step), steps=int(steps), wall_seconds=sum(s['wall_seconds'] for s in segments),
               setup_seconds=sum(s['setup_seconds'] for s in segments), loop_seconds=loop,
               steps_per_second=steps / loop if loop > 0 else None, segments=segments)
    utils.atomic_write_text(self.path, json.dumps(out, indent=2))


def require_score_model(state, path, what):
  """Refuses (one ``ValueError`` line) a one-step generator checkpoint (SFD's, ``utils.EXTRA_ENTRIES``) where
  ``what`` needs a score model."""
  if state.get('generator') is not None:
    raise ValueError(f'{path} is a one-step generator ({state["generator"].get("method", "?")}), not a score model: '
                     f'{what} needs a score model')


def latest_checkpoint(workdir):
  """The path and step of the most advanced checkpoint: the kept one with the largest K in
  W/checkpoints/checkpoint_K.pth or the resume checkpoint W/checkpoints-meta/checkpoint.pth, whichever
  holds the later step (None if there is none). Only those two files are read, so a damaged older
  checkpoint does not stand in the way; a damaged candidate raises ``utils.CheckpointError``."""
  candidates = []
  folder = os.path.join(workdir, 'checkpoints')
  if os.path.isdir(folder):
    kept = []
    for name in os.listdir(folder):
      stem = name[len('checkpoint_'):-len('.pth')] if name.startswith('checkpoint_') and name.endswith('.pth') else ''
      if stem.isdigit():
        kept.append((int(stem), os.path.join(folder, name)))
    if kept:
      candidates.append(max(kept)[1])
  meta = os.path.join(workdir, 'checkpoints-meta', 'checkpoint.pth')
  if os.path.exists(meta):
    candidates.append(meta)
  best = None
  for path in candidates:
    step = int(utils.load_file(path, verify=False).get('step', -1))
    if best is None or step > best[1]:
      best = (path, step)
  return best
