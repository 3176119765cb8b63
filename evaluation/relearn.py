"""The relearning attack: does the forgetting last, or was the forget set only hidden?

    python main.py --config CONFIG --workdir W --task TASK --mode relearn [--eval_folder eval]

An attacker who holds the released model (the checkpoint's **EMA weights**, the weights ``--mode eval``
judges) and k items of D_f fine-tunes it on them with the plain denoising score-matching loss of the run
(``losses.get_loss_fn`` with ``training.continuous``, ``reduce_mean``, ``likelihood_weighting``, ``eps``;
dropout as in training), Adam at ``relearn.lr`` (0: ``optim.lr``; ``optim.beta1``, ``eps``,
``weight_decay`` and ``grad_clip`` of the run, no warm-up, no EMA: the attacked raw weights are sampled).
After each listed number of steps (``relearn.steps``) the attacked model draws ``relearn.num_samples``
samples with the config's sampler, from the same per-image seeded starting noise as ``--mode eval``
(``evaluation.run.generate_samples``), and the evaluation classifier gives the Unlearning Ratio (UR). A
model that removed the class relearns it no faster than Unseen, which never saw it; a model that only hid
it returns towards Standard within a few hundred steps.

The k items are the first k of one seeded permutation of the D_f *training* items (seed from
``config.seed``), so the attack sets are nested (the 8 lie inside the 32, inside the 128) and every model
of a data set and forget set is attacked with the same items, batches, noise draws and sampling noise:
curves of different runs differ only through their weights. Step 0 is the unattacked model; with the
same number of samples it reproduces ``--mode eval``'s Unlearning Ratio.

The area under the UR-vs-steps curve is the trapezoid rule over the listed steps, in %·steps, and the
same divided by the step range (a mean UR over the attack, in %).

Writes ``W/<eval_folder>/relearn.json`` (a file of its own: ``--mode eval`` rewrites results.json, and the
two are run separately; ``evaluation.report`` and ``evaluation.compare`` read both) and
``W/<eval_folder>/relearn.png``.
"""
import copy
import json
import math
import os
import time
from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from absl import logging

import conditioning
import datasets
import losses
import run_lib
import sampling
import sde_lib
import unlearning
import utils
from configs import default_configs
from evaluation import classifier as classifier_lib
from evaluation import unlearning_ratio as ur_lib

RESULTS_FILENAME = 'relearn.json'
PLOT_FILENAME = 'relearn.png'


class RelearnSettings(NamedTuple):
  """The attack as configured: ``k`` (item counts, increasing), ``steps`` (measurement points, strictly
  increasing), ``lr``, ``batch_size`` (items per step, at most k) and ``num_samples`` (per UR measurement)."""
  k: Tuple[int, ...]
  steps: Tuple[int, ...]
  lr: float
  batch_size: int
  num_samples: int


def parse_int_list(text, key, minimum=0) -> Tuple[int, ...]:
  """``'8,32,128'`` (or a sequence of ints) -> ``(8, 32, 128)``; ``ValueError`` naming ``key`` for an empty
  list, a non-integer or a value below ``minimum``."""
  if isinstance(text, (list, tuple)):
    parts = [str(p) for p in text]
  else:
    parts = [p.strip() for p in str(text).split(',') if p.strip()]
  if not parts:
    raise ValueError(f'{key} is empty: give comma-separated integers, e.g. {key}=0,50,100')
  out = []
  for p in parts:
    try:
      value = int(p)
    except ValueError:
      raise ValueError(f'{key} must be comma-separated integers, got {text!r}') from None
    if value < minimum:
      raise ValueError(f'{key} must hold integers >= {minimum}, got {value} in {text!r}')
    out.append(value)
  return tuple(out)


def get_settings(config, num_forget_train) -> RelearnSettings:
  """The validated ``config.relearn`` for a data set with ``num_forget_train`` D_f training items; every bad
  value is one ``ValueError`` line (k above |D_f train|, repeated k, steps not strictly increasing, ...)."""
  r = config.relearn
  k = parse_int_list(r.k, 'relearn.k', minimum=1)
  if len(set(k)) != len(k):
    raise ValueError(f'relearn.k repeats a value: {r.k!r}')
  k = tuple(sorted(k))
  if k[-1] > num_forget_train:
    raise ValueError(f'relearn.k={r.k!r} asks for {k[-1]} D_f training items, but the training split holds '
                     f'{num_forget_train}')
  steps = parse_int_list(r.steps, 'relearn.steps', minimum=0)
  if any(b <= a for a, b in zip(steps, steps[1:])):
    raise ValueError(f'relearn.steps must be strictly increasing, got {r.steps!r}')
  lr = float(r.lr) if float(r.lr) != 0 else float(config.optim.lr)
  if not (math.isfinite(lr) and lr > 0):
    raise ValueError(f'relearn.lr must be positive (0 = optim.lr), got {r.lr} (optim.lr {config.optim.lr})')
  batch_size = int(r.batch_size)
  if batch_size < 1:
    raise ValueError(f'relearn.batch_size must be positive, got {r.batch_size}')
  num_samples = int(r.num_samples) or int(config.eval.num_samples)
  if num_samples < 1:
    raise ValueError(f'relearn.num_samples must be positive (0 = eval.num_samples), got {num_samples}')
  if int(config.eval.batch_size) < 1:
    raise ValueError(f'eval.batch_size must be positive, got {config.eval.batch_size}')
  return RelearnSettings(k, steps, lr, batch_size, num_samples)


def attack_items(num_forget, k_max, seed) -> torch.Tensor:
  """int64 ``[k_max]``: positions in D_f train of the attacker's items, the head of a permutation seeded by
  ``seed`` (so the sets for growing k are nested)."""
  perm = torch.randperm(int(num_forget), generator=torch.Generator().manual_seed(int(seed)))
  return perm[:int(k_max)]


def curve_area(steps: Sequence[int], percents: Sequence[float]) -> dict:
  """Area under the UR-vs-steps curve by the trapezoid rule over the listed points.

  Returns ``{'percent_steps': area in %·steps, 'mean_percent': area / (last − first step), in %}``; one
  point has no area (0) and its mean is its UR."""
  s = np.asarray(steps, dtype=np.float64)
  p = np.asarray(percents, dtype=np.float64)
  if s.shape != p.shape or s.size == 0:
    raise ValueError(f'curve_area needs as many URs as steps (>= 1), got {p.size} and {s.size}')
  if s.size == 1:
    return {'percent_steps': 0., 'mean_percent': float(p[0])}
  area = float(np.trapezoid(p, s))
  return {'percent_steps': area, 'mean_percent': area / float(s[-1] - s[0])}


def load_items(dataset, batch_size=256) -> torch.Tensor:
  """Every ``x`` of ``dataset`` in order, float32 ``[N, ...]`` on the CPU (no flips, no dequantisation)."""
  it = datasets.get_data_iterator(dataset, batch_size, 0, shuffle=False, drop_last=False, infinite=False)
  return torch.cat([x for x, _ in it])


def ur_measure(config, sde, data, classifier, device, num_samples, progress=False, name='the model'):
  """``measure(model) -> (UR dict, sampler nfe)``: ``num_samples`` samples of ``model`` drawn as
  ``--mode eval`` draws them (``generate_samples``: the i-th sample's starting noise seeded by i), classified.
  Samples holding NaN or ±inf stop it with ``EvaluationError`` naming ``name``."""
  from evaluation import run as eval_run
  cfg = copy.deepcopy(config)
  cfg.eval.num_samples = int(num_samples)
  inverse = datasets.get_data_inverse_scaler(config)

  def measure(model, label=''):
    samples, nfe = eval_run.generate_samples(cfg, sde, model, data.shape, inverse, device, progress)
    bad = int((~torch.isfinite(samples.reshape(samples.shape[0], -1)).all(dim=1)).sum())
    if bad:
      raise eval_run.EvaluationError(f'{bad} of {len(samples)} samples of {name}{label} hold NaN or ±inf: the '
                                     'model is broken (a diverged attack? lower relearn.lr), so no Unlearning '
                                     'Ratio is reported')
    return ur_lib.unlearning_ratio_of_samples(samples, classifier, data.forget_indices), nfe

  return measure


def optimizer_for(config, params, lr):
  """Adam at ``lr`` with the run's β₁, ε, weight decay and AMSGrad flag (``optim.*``)."""
  o = config.optim
  return torch.optim.Adam(params, lr=lr, betas=(o.beta1, 0.999), eps=o.eps, weight_decay=o.weight_decay,
                          amsgrad=o.get('amsgrad', False))


def attack(model, loss_fn, batches, steps, measure, optimizer, grad_clip=-1., generator=None, first=None):
  """Fine-tunes ``model`` in place on ``batches`` (an iterator of scaled batches on its device) and measures
  it after each count in ``steps``.

  ``loss_fn(model, x, generator) -> [B]`` per-sample losses (their mean is minimised); ``measure(model) ->
  (value, nfe)``; ``first``: an already measured value for step 0 (shared by every k). Returns one dict per
  listed step: ``{'step', 'value', 'nfe', 'loss'}`` with ``loss`` the mean training loss of the steps since the
  previous point (None at step 0). A non-finite loss or weights raise ``FloatingPointError`` with the step."""
  points, done = [], 0
  params = [p for p in model.parameters() if p.requires_grad]
  for target in steps:
    total = None
    start = done
    model.train()
    while done < target:
      x = next(batches)
      loss = loss_fn(model, x, generator).mean()
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      if grad_clip >= 0:
        torch.nn.utils.clip_grad_norm_(params, max_norm=grad_clip)
      optimizer.step()
      total = loss.detach() if total is None else total + loss.detach()
      done += 1
    mean_loss = None if total is None else float(total) / (done - start)
    if mean_loss is not None and not math.isfinite(mean_loss):
      raise FloatingPointError(f'the attack loss became {mean_loss} between steps {start} and {done}')
    problem = utils.weights_problem(model.named_parameters())
    if problem is not None:
      raise FloatingPointError(f'the weights are not finite after {done} attack steps ({problem})')
    model.eval()
    if target == 0 and first is not None:
      value, nfe = first
    else:
      value, nfe = measure(model)
    points.append({'step': int(target), 'value': value, 'nfe': nfe, 'loss': mean_loss})
  return points


def relearning(config, model, sde, data, classifier, device, progress=False, name='the model'):
  """The attack on ``model`` (its current weights are the start; they are not changed) for every k of
  ``config.relearn``: the body of relearn.json (``settings``, ``items``, ``curves``, ``sampler``)."""
  config = default_configs.with_defaults(config)
  n_forget = len(data.train.forget)
  s = get_settings(config, n_forget)
  tc = config.training
  loss_fn = losses.get_loss_fn(sde, True, tc.reduce_mean, tc.continuous, tc.likelihood_weighting, tc.eps)
  scaler = datasets.get_data_scaler(config)
  idx = attack_items(n_forget, s.k[-1], datasets.derive_seed(config.seed, 'relearn', 'items'))
  items = load_items(datasets.IndexView(data.train.forget, idx))
  measure = ur_measure(config, sde, data, classifier, device, s.num_samples, progress, name)
  first = measure(model) if s.steps[0] == 0 else None
  curves, nfe = [], 0
  for k in s.k:
    attacked = copy.deepcopy(model)
    for p in attacked.parameters():
      p.requires_grad_(True)
    bs = min(s.batch_size, k)
    raw = datasets.get_data_iterator(datasets.TensorPairDataset(items[:k], torch.zeros(k, dtype=torch.long)), bs,
                                     datasets.derive_seed(config.seed, 'relearn', 'batches', k),
                                     random_flip=data.random_flip, uniform_dequantization=data.uniform_dequantization)
    batches = (scaler(x.to(device)) for x, _ in raw)
    gen = torch.Generator(device=device).manual_seed(datasets.derive_seed(config.seed, 'relearn', 'noise', k))
    logging.info('relearning attack with k = %d D_f items: steps %s', k, ', '.join(map(str, s.steps)))
    points = attack(attacked, loss_fn, batches, s.steps, lambda m: measure(m, f' after the attack (k = {k})'),
                    optimizer_for(config, [p for p in attacked.parameters()], s.lr), float(config.optim.grad_clip),
                    gen, first)
    out = []
    for p in points:
      ur = p['value']
      out.append({'step': p['step'], 'percent': ur['percent'], 'ci95': ur['ci95'], 'num_samples': ur['num_samples'],
                  'num_forget': ur['num_forget'], 'class_histogram': ur['class_histogram'], 'loss': p['loss']})
      nfe = p['nfe']
      logging.info('k = %d, attack step %d: Unlearning Ratio %.2f%% [%.2f, %.2f]', k, p['step'], ur['percent'],
                   *ur['ci95'])
    curves.append({'k': k, 'batch_size': bs, 'points': out,
                   'area': curve_area([p['step'] for p in out], [p['percent'] for p in out])})
    del attacked
  smp = config.sampling
  return {
    'settings': {'k': list(s.k), 'steps': list(s.steps), 'lr': s.lr, 'batch_size': s.batch_size,
                 'num_samples': s.num_samples, 'optimizer': 'Adam', 'grad_clip': float(config.optim.grad_clip),
                 'weight_decay': float(config.optim.weight_decay), 'start_weights': 'ema', 'sampled_weights': 'raw',
                 'loss': 'dsm', 'continuous': bool(tc.continuous), 'seed': int(config.seed)},
    'items': {'split': 'train', 'part': 'forget', 'num_available': n_forget, 'positions': idx.tolist()},
    'curves': curves,
    'sampler': {'method': smp.method, 'predictor': smp.predictor, 'corrector': smp.corrector,
                'steps': sde.N if smp.method == 'pc' else None, 'nfe_per_measurement': nfe},
    'classifier': classifier.describe(),
  }


def check_inputs(config, workdir, data):
  """Everything ``run_relearn`` refuses, before it writes: settings, checkpoint, sampler. Returns
  ``(settings, (checkpoint path, step))``."""
  from evaluation import run as eval_run
  s = get_settings(config, len(data.train.forget))
  ckpt = eval_run.checkpoints_to_evaluate(config, workdir)[-1]
  sde = sde_lib.get_sde(config)
  sampling.get_sampling_fn(config, sde, (1,) + tuple(data.shape), lambda x: x, run_lib.sampling_eps(config, sde))
  return s, ckpt


def run_relearn(config, workdir, task='standard', eval_folder='eval', progress=True):
  """``--mode relearn``: attacks the latest checkpoint of ``workdir`` (or the last of ``eval.begin_ckpt …
  end_ckpt``) and writes ``W/<eval_folder>/relearn.json`` and ``relearn.png``; returns the written dict.
  Bad input (settings, checkpoint, classifier, sampler) is refused before anything is written."""
  from evaluation import run as eval_run
  config = default_configs.with_defaults(config)
  method = unlearning.get_method(task)
  device = run_lib.resolve_device(config.device)
  run_lib.seed_everything(config.seed)
  data = datasets.get_dataset(config)
  _, (path, step) = check_inputs(config, workdir, data)
  sde = sde_lib.get_sde(config)
  classifier = classifier_lib.get_classifier(config, device, data=data)
  model, state = run_lib.load_ema_model(config, path, device)
  run_lib.require_score_model(state, path, 'the relearning attack')
  if conditioning.model_num_classes(model):
    raise ValueError('--mode relearn does not attack class-conditional models yet (its fine-tuning feeds no labels)')
  out_dir = os.path.join(workdir, eval_folder)
  created = utils.make_run_folder(out_dir)
  ok = False
  try:
    with utils.FolderLock(out_dir, 'relearning attack'):
      utils.remove_tmp_files([out_dir])
      handler = run_lib.add_log_file(out_dir)
      try:
        t0 = time.time()
        logging.info('relearning attack on %s (step %d)', path, step)
        try:
          body = relearning(config, model, sde, data, classifier, device, progress, name=path)
        except (AssertionError, FloatingPointError, sampling.ODEBudgetError) as e:
          reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
          raise eval_run.EvaluationError(f'the relearning attack on {path} failed: {reason}') from None
        result = {'task': method.name, 'dataset': data.name, 'forget': list(data.forget_names), 'checkpoint': path,
                  'step': step, **body, 'wall_seconds': time.time() - t0}
        utils.atomic_write_text(os.path.join(out_dir, RESULTS_FILENAME), json.dumps(result, indent=2, default=float))
        plot_curves([(f'k = {c["k"]}', c['points']) for c in result['curves']], os.path.join(out_dir, PLOT_FILENAME),
                    f'{method.name} on {data.name}, forget {", ".join(data.forget_names)}: relearning attack')
        ok = True
        return result
      except Exception as e:
        run_lib.log_to_file(handler, str(e))
        raise
      finally:
        logging.get_absl_logger().removeHandler(handler)
        handler.close()
  finally:
    if not ok:
      utils.remove_if_unused(out_dir, created)


def markdown(result) -> str:
  """relearn.json as a short Markdown table: UR (%) with its 95 % interval at every attack step, per k."""
  steps = result['settings']['steps']
  lines = [f"# Relearning attack on {result['task']} ({result['dataset']}, forget {', '.join(result['forget'])})",
           '', f"checkpoint `{result['checkpoint']}` (step {result['step']}); Adam lr {result['settings']['lr']:g}, "
           f"{result['settings']['num_samples']} samples per point", '',
           '| k | ' + ' | '.join(f'UR % after {s}' for s in steps) + ' | mean UR % (area / steps) |',
           '|---|' + '---|' * (len(steps) + 1)]
  for c in result['curves']:
    cells = [f"{p['percent']:.1f} [{p['ci95'][0]:.1f}, {p['ci95'][1]:.1f}]" for p in c['points']]
    lines.append(f"| {c['k']} | " + ' | '.join(cells) + f" | {c['area']['mean_percent']:.2f} |")
  return '\n'.join(lines) + '\n'


def plot_curves(series, path, title='', ax=None):
  """UR (%) against attack steps: one line per ``(label, points)`` (points as in relearn.json: ``step``,
  ``percent``, ``ci95``) with its Wilson 95 % interval as a band; written atomically to ``path`` (PNG), or
  drawn on ``ax`` when given (``path`` None)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  own = ax is None
  if own:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for label, points in series:
    x = [p['step'] for p in points]
    y = [p['percent'] for p in points]
    line, = ax.plot(x, y, marker='o', ms=3, label=label)
    ax.fill_between(x, [p['ci95'][0] for p in points], [p['ci95'][1] for p in points], color=line.get_color(),
                    alpha=0.2, lw=0)
  ax.set_xlabel('attack steps')
  ax.set_ylabel('Unlearning Ratio (%)')
  ax.set_ylim(bottom=0)
  if title:
    ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  if own:
    try:
      if path is not None:
        utils.atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=110, bbox_inches='tight'))
    finally:
      plt.close(fig)


def relearning_of_checkpoint(config, ckpt_path, device=None, progress=False) -> dict:
  """The attack on one checkpoint without writing anything (for benchmarks): ``relearning``'s dict plus the
  checkpoint, its step and the data set."""
  config = default_configs.with_defaults(config)
  device = run_lib.resolve_device(config.device if device is None else device)
  data = datasets.get_dataset(config)
  sde = sde_lib.get_sde(config)
  classifier = classifier_lib.get_classifier(config, device, data=data)
  model, state = run_lib.load_ema_model(config, ckpt_path, device)
  run_lib.require_score_model(state, ckpt_path, 'the relearning attack')
  body = relearning(config, model, sde, data, classifier, device, progress, name=ckpt_path)
  return {'dataset': data.name, 'forget': list(data.forget_names), 'checkpoint': ckpt_path,
          'step': int(state['step']), **body}


def load(workdir, eval_folder='eval') -> Optional[dict]:
  """The parsed ``W/<eval_folder>/relearn.json``, or None when there is none; ``ValueError`` if unreadable."""
  path = os.path.join(workdir, eval_folder, RESULTS_FILENAME)
  if not os.path.isfile(path):
    return None
  out = utils.read_json(path)
  if not isinstance(out, dict):
    raise ValueError(f'{path} does not hold a relearning result')
  return out
