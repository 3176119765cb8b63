"""A grid of MSGM settings on the 2-D toy → one table and one figure.

  python -m experiments.sweep_toy --workdir runs/sweep --task obtuse \
      --grid unlearn.alpha=0.9,0.95 --grid unlearn.obtuse_form=linear,target [--config.training.n_iters=...]

Every combination of the ``--grid`` values (``section.key=v1,v2,...``; repeat the flag for more keys)
is trained in ``W/<key=value,...>/`` (a finished run is reused) and evaluated like the toy table (NLL
of D_g and D_f test points, samples); the rows go to ``W/sweep_table.md`` / ``.csv`` / ``sweep_results.json``,
and ``W/sweep_figure.png`` places every run on the best reachable (D_g, D_f) frontier beside its samples.
"""
import copy
import itertools
import json
import os
import sys

from absl import app, flags, logging
from ml_collections.config_flags import config_flags

import datasets
import run_lib
import unlearning
import utils
from evaluation import frontier
from experiments import tables, toy_gmm2d

FLAGS = flags.FLAGS


def define_flags():
  """The command-line flags (defined only when run as a program, so the module can be imported)."""
  config_flags.DEFINE_config_file('config', 'configs/toy/gmm2d.py', 'The toy configuration.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Folder for the runs, table and figure.')
  flags.DEFINE_string('task', 'obtuse', 'The task every run trains (readable or official name).')
  flags.DEFINE_multi_string('grid', [], 'section.key=v1,v2,...: values of one config key (repeatable).')
  flags.DEFINE_boolean('progress', False, 'Show progress bars.')


def parse_grid(specs, config):
  """``['unlearn.alpha=0.9,0.95', ...]`` → ``[('unlearn.alpha', [0.9, 0.95]), ...]`` typed like the config."""
  axes = []
  for spec in specs:
    if '=' not in spec:
      raise ValueError(f"--grid '{spec}' is not of the form section.key=v1,v2,...")
    key, values = spec.split('=', 1)
    parts = key.split('.')
    if len(parts) != 2 or parts[0] not in config or parts[1] not in config[parts[0]]:
      raise ValueError(f"--grid: unknown config key '{key}'")
    current = config[parts[0]][parts[1]]
    kind = type(current)
    out = []
    for v in values.split(','):
      v = v.strip()
      if kind is bool:
        out.append(v.lower() in ('1', 'true', 'yes'))
      elif kind in (int, float):
        out.append(kind(float(v)) if kind is int else float(v))
      else:
        out.append(v)
    axes.append((key, out))
  return axes


def combinations(axes):
  """Every assignment ``{key: value}`` of the grid, in order."""
  keys = [k for k, _ in axes]
  for values in itertools.product(*[v for _, v in axes]):
    yield dict(zip(keys, values))


def run_name(assignment):
  return ','.join(f'{k.split(".")[1]}={v}' for k, v in assignment.items()) or 'base'


def configured(config, assignment):
  cfg = copy.deepcopy(config)
  for key, value in assignment.items():
    section, name = key.split('.')
    cfg[section][name] = value
  return cfg


def sweep(config, workdir, task, axes, progress=False):
  """Trains and evaluates every grid point; returns the rows (dicts) and writes table, JSON and figure."""
  task = unlearning.get_method(task).name
  os.makedirs(workdir, exist_ok=True)
  data = datasets.get_dataset(config, evaluation=True)
  if data.density is None:
    raise ValueError(f'the toy sweep needs the GMM2D data set, not {config.data.dataset}')
  rows, samples = [], {}
  for assignment in combinations(axes):
    name = run_name(assignment)
    cfg = unlearning.apply_preset(configured(config, assignment), task)
    run_dir = os.path.join(workdir, name)
    run_lib.train(cfg, run_dir, task, progress=progress)
    r = toy_gmm2d.evaluate_run(cfg, run_dir, task, data, progress)
    g, f = r['retain']['nats']['mean'], r['forget']['nats']['mean']
    unit = frontier.to_paper_scale(1.) - frontier.to_paper_scale(0.)     # paper-scale units per nat
    rows.append({'run': name, **{k: v for k, v in assignment.items()},
                 'D_g nats': g, 'D_f nats': f, 'D_g paper': frontier.to_paper_scale(g),
                 'D_g sem paper': r['retain']['nats']['sem'] * unit, 'D_f paper': frontier.to_paper_scale(f),
                 'D_f sem paper': r['forget']['nats']['sem'] * unit, 'frontier D_f paper': _frontier_paper(g),
                 'centre %': r['centre_percent'], 'beyond 8 %': r['beyond_8_percent']})
    samples[name] = r['samples']
    logging.info('%s: D_g %.3f, D_f %.3f nats', name, g, f)
  _write(rows, samples, workdir, config)
  return rows


def _frontier_paper(nll_g):
  try:
    return frontier.to_paper_scale(frontier.max_forget_nll(nll_g))
  except ValueError:
    return float('nan')


def _fmt(v):
  return f'{v:.3f}' if isinstance(v, float) else str(v)


def _write(rows, samples, workdir, config):
  text = tables.write_table(rows, workdir, 'sweep_table', _fmt)
  utils.atomic_write_text(os.path.join(workdir, 'sweep_results.json'),
                          json.dumps({'config': json.loads(utils.config_to_json(config)), 'rows': rows},
                                     indent=2, default=float))
  _figure(rows, samples, os.path.join(workdir, 'sweep_figure.png'))
  return text


def _figure(rows, samples, path):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  n = len(rows)
  fig, axes = plt.subplots(1, n + 1, figsize=(4.5 + 2.6 * n, 4.2), squeeze=False,
                           gridspec_kw={'width_ratios': [1.8] + [1] * n})
  unit = frontier.to_paper_scale(1.) - frontier.to_paper_scale(0.)
  frontier.plot_frontier(axes[0, 0], {r['run']: (r['D_g nats'], r['D_f nats'], r['D_g sem paper'] / unit,
                                                 r['D_f sem paper'] / unit) for r in rows})
  for j, r in enumerate(rows, start=1):
    ax = axes[0, j]
    s = samples[r['run']][:2000]
    ax.scatter(s[:, 0], s[:, 1], s=1, alpha=0.4)
    ax.set_xlim(-6, 6)
    ax.set_ylim(-6, 6)
    ax.set_aspect('equal')
    ax.set_title(r['run'], fontsize=7)
  fig.tight_layout()
  tmp = path + '.tmp.png'
  fig.savefig(tmp, dpi=90)
  plt.close(fig)
  os.replace(tmp, path)


def main(argv):
  del argv
  if not FLAGS.workdir:
    print('error: --workdir is required', file=sys.stderr)
    sys.exit(1)
  try:
    rows = sweep(FLAGS.config, FLAGS.workdir, FLAGS.task, parse_grid(FLAGS.grid, FLAGS.config), FLAGS.progress)
  except (ValueError, run_lib.TrainingError, utils.CheckpointError) as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  print(open(os.path.join(FLAGS.workdir, 'sweep_table.md')).read())
  print(f'written: {FLAGS.workdir}/sweep_table.md, sweep_table.csv, sweep_results.json, sweep_figure.png '
        f'({len(rows)} runs)')


if __name__ == '__main__':
  define_flags()
  app.run(main)
