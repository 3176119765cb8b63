"""The paper's 2-D toy (its first table): Standard, Unseen, Orthogonal and Obtuse on the Gaussian mixture.

  python -m experiments.toy_gmm2d --workdir runs/toy [--tasks standard,unseen,orthogonal,obtuse]
      [--presets toy-best,toy-ratio] [--config configs/toy/gmm2d.py] [--config.training.n_iters=...]

Trains one model per task in ``W/<task>/`` and one per preset (``unlearning/presets.py``) in ``W/<preset>/`` (a
preset that needs a reference model gets the Unseen run of ``W/unseen/``, and one that needs a noisy
classifier gets ``W/noisy_classifier/``, each trained first if needed; a finished run is reused, an
interrupted one resumed), evaluates the NLL of the held-out D_g and D_f test
points with the probability-flow ODE (exact divergence), draws samples, and writes ``W/toy_table.md``, ``W/toy_table.csv``, ``W/toy_results.json``
and ``W/toy_figure.png`` (samples and score field of each model beside the true and retain-only
densities). NLL is given in nats per sample and on the paper's scale (score_sde's bits/dim for
uncentred data, ``nats / (2 ln 2) + 8``). Rows "p_data" and "p_g" are the exact densities.
"""
import copy
import json
import math
import os
import sys

import torch
from absl import app, flags, logging
from ml_collections.config_flags import config_flags

import datasets
import run_lib
import sde_lib
import unlearning
import utils
from evaluation import frontier
from evaluation.stats import mean_sem
from experiments import tables
from evaluation import run as evaluation_run
from models import utils as mutils
from unlearning import noisy_classifier

FLAGS = flags.FLAGS


def define_flags():
  """The command-line flags (defined only when run as a program, so the module can be imported)."""
  config_flags.DEFINE_config_file('config', 'configs/toy/gmm2d.py', 'The toy configuration.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Folder for the runs, table and figure.')
  flags.DEFINE_string('tasks', 'standard,unseen,orthogonal,obtuse', 'Comma-separated tasks to train and compare.')
  flags.DEFINE_string('presets', 'toy-best,toy-ratio',
                      'Comma-separated presets (unlearning/presets.py) to train beside the tasks.')
  flags.DEFINE_float('field_time', 0.05, 'Time t at which the score fields are drawn.')
  flags.DEFINE_boolean('progress', True, 'Show progress bars.')


# The paper's toy table (its scale): D_g and D_f NLL of each model; the MSGM column is listed for both forms.
PAPER = {'standard': (10.91, 10.73), 'unseen': (10.63, 11.59), 'orthogonal': (10.64, 39.01),
         'obtuse': (10.64, 39.01)}


def sample_statistics(samples, density):
  """Share (%) of samples whose most probable component under ``density`` is the centre, and beyond |x| = 8."""
  post = density.posterior(samples)
  centre = (post.argmax(dim=1) == 1).double().mean().item() * 100
  far = (samples.norm(dim=1) > 8).double().mean().item() * 100
  return {'centre_percent': centre, 'beyond_8_percent': far}


def evaluate_run(config, workdir, task, data, progress):
  """NLL of the D_g and D_f test points (nats and bits/dim), samples and their statistics, through
  ``evaluation.run.evaluate`` (which also writes W/<task>/eval/results.json)."""
  cfg = copy.deepcopy(config)
  ev = cfg.eval
  ev.enable_bpd, ev.enable_sampling, ev.enable_fid, ev.enable_loss = True, True, False, False
  ev.begin_ckpt = ev.end_ckpt = 0
  r = evaluation_run.evaluate(cfg, workdir, task, 'eval', progress=progress, keep_samples=True)
  out = {'checkpoint': r['checkpoint'], 'step': r['step'], 'nfe': r['sampler']['nfe'],
         'unlearning_ratio': r['unlearning_ratio'], 'samples': r['samples']}
  for part in ('retain', 'forget'):
    out[part] = {'nats': r['nll_nats'][part], 'bpd': r['nll_bpd'][part]}
  out.update(sample_statistics(out['samples'], data.density))
  return out


def analytic_rows(data):
  test = {part: torch.stack([data.test.part(part)[i][0] for i in range(len(data.test.part(part)))])
          for part in ('retain', 'forget')}
  rows = {}
  for name, density in (('p_data (exact)', data.density),
                        ('p_g (exact)', data.density.restrict(list(data.retain_indices)))):
    rows[name] = {part: {'nats': mean_sem(-density.log_prob(x.double())).to_dict()} for part, x in test.items()}
    samples, _ = density.sample(int(4000), generator=7)
    rows[name].update(sample_statistics(samples.double(), data.density))
  return rows


def _distance(g, f):
  """Room left below the best reachable D_f at this D_g (paper scale, ± its standard error)."""
  rep = frontier.frontier_report(g['mean'], f['mean'], g['sem'], f['sem'])
  sem = rep['distance_sem'] / (2 * math.log(2.))
  note = ' (D_g < H(p_g))' if rep['clipped'] else ''
  return f"{rep['distance_paper']:.2f} ± {sem:.2f}{note}"


def table_rows(results):
  rows = []
  for name, r in results.items():
    g, f = r['retain']['nats'], r['forget']['nats']
    rows.append({
      'model': name,
      'NLL D_g (nats)': f"{g['mean']:.3f} ± {g['sem']:.3f}",
      'NLL D_f (nats)': f"{f['mean']:.3f} ± {f['sem']:.3f}",
      'NLL D_g (paper scale)': f"{frontier.to_paper_scale(g['mean']):.2f}",
      'NLL D_f (paper scale)': f"{frontier.to_paper_scale(f['mean']):.2f}",
      'to frontier (paper)': _distance(g, f),
      'centre samples %': f"{r['centre_percent']:.1f}",
      'beyond |x|=8 %': f"{r['beyond_8_percent']:.2f}",
      'paper D_g / D_f': ' / '.join(f'{v:.2f}' for v in PAPER[name]) if name in PAPER else '',
    })
  return rows


def draw_figure(results, data, config, path, field_time):
  """Top row: samples; bottom row: the score field at ``field_time`` (arrows normalised, colour = norm)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  names = list(results)
  fig, axes = plt.subplots(2, len(names) + 1, figsize=(3.2 * (len(names) + 1), 6.4), squeeze=False)
  nats = {n: (results[n]['retain']['nats'], results[n]['forget']['nats']) for n in names if 'density' not in results[n]}
  frontier.plot_frontier(axes[0, -1], {n: (g['mean'], f['mean'], g['sem'], f['sem']) for n, (g, f) in nats.items()})
  axes[1, -1].axis('off')
  grid = torch.linspace(-5, 5, 21, dtype=torch.float64)
  gx, gy = torch.meshgrid(grid, grid, indexing='xy')
  points = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
  sde = sde_lib.get_sde(config)
  t = torch.full((points.shape[0],), field_time, dtype=torch.float64)
  mean_coeff, std = sde.marginal_prob(torch.ones(1, 2, dtype=torch.float64), t[:1])
  fields = []
  for name in names:
    r = results[name]
    if 'density' in r:
      field = r['density'].perturbed(mean_coeff[0, 0].item(), std[0].item()).score(points)
    else:
      model, _ = run_lib.load_ema_model(config, r['checkpoint'], 'cpu')
      score_fn = mutils.get_score_fn(sde, model, train=False, continuous=config.training.continuous)
      with torch.no_grad():
        field = score_fn(points.float(), t.float()).double()
    fields.append(field)
  log_norms = torch.cat([f.norm(dim=1).clamp(min=1e-12).log() for f in fields])
  colour = matplotlib.colors.Normalize(vmin=log_norms.min().item(), vmax=log_norms.max().item())
  for j, (name, field) in enumerate(zip(names, fields)):
    r = results[name]
    s = r['samples'][:2000]
    ax = axes[0, j]
    ax.scatter(s[:, 0], s[:, 1], s=1.5, alpha=0.4)
    ax.set_xlim(-6, 6)
    ax.set_ylim(-6, 6)
    ax.set_aspect('equal')
    ax.set_title(name, fontsize=10)
    ax = axes[1, j]
    norm = field.norm(dim=1, keepdim=True).clamp(min=1e-12)
    unit = field / norm
    ax.quiver(points[:, 0], points[:, 1], unit[:, 0], unit[:, 1], norm[:, 0].log(), cmap='viridis', norm=colour,
              scale=30)
    ax.set_xlim(-5.5, 5.5)
    ax.set_ylim(-5.5, 5.5)
    ax.set_aspect('equal')
    ax.set_title(f'score at t={field_time} (colour: log norm)', fontsize=8)
  fig.tight_layout()
  tmp = path + '.tmp.png'
  fig.savefig(tmp, dpi=90)
  plt.close(fig)
  os.replace(tmp, path)


def noisy_classifier_path(config, workdir, progress=True):
  """``W/noisy_classifier/noisy_classifier.pth`` (D_f against D_g on noisy data), trained here if absent."""
  path = os.path.join(workdir, 'noisy_classifier', noisy_classifier.FILENAME)
  if not os.path.exists(path):
    meta = noisy_classifier.train_noisy_classifier(copy.deepcopy(config), path, progress=progress)
    logging.info('noisy classifier %s: balanced test accuracy %.4f', path, meta['test_balanced_accuracy'])
  return path


def preset_runs(config, workdir, names, progress=True):
  """``[(row name, task, config, run dir)]`` for each preset; a preset needing a reference model gets the
  latest checkpoint of ``W/unseen`` (trained on D_g only, here first if it is not there yet), one needing a
  noisy classifier gets ``W/noisy_classifier`` (likewise)."""
  runs = []
  for name in names:
    known = unlearning.all_presets()
    if name not in known:
      raise ValueError(f"unknown preset '{name}'; valid: {', '.join(sorted(known))}")
    method, preset = known[name]
    cfg = copy.deepcopy(config)
    cfg.unlearn.preset = name
    if preset.get('reference') and not cfg.unlearn.reference:
      unseen_dir = os.path.join(workdir, 'unseen')
      run_lib.train(copy.deepcopy(config), unseen_dir, 'unseen', progress=progress)
      cfg.unlearn.reference = run_lib.latest_checkpoint(unseen_dir)[0]
    if preset.get('classifier') and not cfg.unlearn.classifier:
      cfg.unlearn.classifier = noisy_classifier_path(config, workdir, progress)
    task = method.name
    runs.append((f'{task} + {name}', task, cfg, os.path.join(workdir, name)))
  return runs


def run_toy(config, workdir, tasks, field_time=0.05, progress=True, preset_names=()):
  """Trains (or reuses) each task's and each preset's run, evaluates all of them, writes the table and
  the figure."""
  os.makedirs(workdir, exist_ok=True)
  data = datasets.get_dataset(config, evaluation=True)
  if data.density is None:
    raise ValueError(f'the toy experiment needs the GMM2D data set, not {config.data.dataset}')
  results = {}
  for name, row in analytic_rows(data).items():
    row['density'] = data.density if name.startswith('p_data') else data.density.restrict(list(data.retain_indices))
    row['samples'], _ = row['density'].sample(2000, generator=11)
    results[name] = row
  runs = [(task, task, config, os.path.join(workdir, task)) for task in tasks]
  for name, task, cfg, run_dir in runs + preset_runs(config, workdir, preset_names, progress):
    run_lib.train(cfg, run_dir, task, progress=progress)
    results[name] = evaluate_run(cfg, run_dir, task, data, progress)
  md = tables.write_table(table_rows(results), workdir, 'toy_table')
  summary = {name: {k: v for k, v in r.items() if k not in ('samples', 'density')}
             for name, r in results.items()}
  utils.atomic_write_text(os.path.join(workdir, 'toy_results.json'),
                            json.dumps({'config': json.loads(utils.config_to_json(config)), 'results': summary},
                                       indent=2, default=float))
  draw_figure(results, data, config, os.path.join(workdir, 'toy_figure.png'), field_time)
  return md, results


def main(argv):
  del argv
  if not FLAGS.workdir:
    print('error: --workdir is required', file=sys.stderr)
    sys.exit(1)
  tasks = [t.strip() for t in FLAGS.tasks.split(',') if t.strip()]
  try:
    tasks = [unlearning.get_method(t).name for t in tasks]
    names = [p.strip() for p in FLAGS.presets.split(',') if p.strip()]
    md, _ = run_toy(FLAGS.config, FLAGS.workdir, tasks, FLAGS.field_time, FLAGS.progress, names)
  except (ValueError, run_lib.TrainingError, utils.CheckpointError, datasets.DatasetUnavailableError) as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  print(md)
  print(f'written: {os.path.join(FLAGS.workdir, "toy_table.md")}, toy_table.csv, toy_results.json, toy_figure.png')


if __name__ == '__main__':
  define_flags()
  app.run(main)
