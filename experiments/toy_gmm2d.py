"""The paper's 2-D toy (its first table): Standard, Unseen, Orthogonal and Obtuse on the Gaussian mixture.

  python -m experiments.toy_gmm2d --workdir runs/toy [--tasks standard,unseen,orthogonal,obtuse]
      [--presets toy-best,toy-ratio] [--methods all] [--method_steps 2000] [--num_test 5000]
      [--num_samples 1000] [--jobs 0] [--config configs/toy/gmm2d.py]
      [--config.training.n_iters=...]

Trains one model per task in ``W/<task>/`` and one per preset (declared by the method modules) in
``W/<preset>/`` (a preset that needs a reference model gets the Unseen run of ``W/unseen/``, and one that
needs a noisy classifier gets ``W/noisy_classifier/``, each trained first if needed), and one per
``--methods`` method in ``W/ft-<method>/``, fine-tuning the Standard run with the method's defaults (a
finished run is reused, an interrupted one resumed), evaluates the NLL of the same ``--num_test`` held-out D_g and D_f test
points for every row with the probability-flow ODE (exact divergence), draws ``--num_samples`` samples of
each, and writes ``W/toy_table.md``, ``W/toy_table.csv``, ``W/toy_results.json`` and ``W/toy_figure.png``
(samples and score field of each model beside the true and retain-only densities, and every run against
the frontier of ``evaluation/frontier.py``). NLL is given in nats per sample and on the paper's scale
(score_sde's bits/dim for uncentred data, ``nats / (2 ln 2) + 8``). Rows "p_data" and "p_g" are the exact
densities. The frontier column is in words where the test set cannot resolve a distance
(``evaluation.frontier.frontier_verdict``).
"""
import copy
import json
import math
import os
import sys
import time

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
from experiments import pool
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
  flags.DEFINE_integer('num_test', NUM_TEST, 'Test points (D_g and D_f together, 4:1) on which every row\'s NLL '
                       'is measured; replaces config.data.num_test for the evaluation (training is unchanged); '
                       '0 keeps the config\'s.')
  flags.DEFINE_integer('num_samples', NUM_SAMPLES, 'Samples drawn from each model (sample statistics, figure); '
                       'replaces config.eval.num_samples; 0 keeps the config\'s.')
  flags.DEFINE_string('methods', '', 'Comma-separated methods of unlearning/ (or all: every one but standard and '
                      'unseen) that each fine-tune W/standard for --method_steps steps with their defaults, in '
                      'W/ft-<method>; rows "<method> (ft)".')
  flags.DEFINE_integer('method_steps', METHOD_STEPS, 'Fine-tuning steps of each --methods run.')
  flags.DEFINE_float('field_time', 0.05, 'Time t at which the score fields are drawn.')
  flags.DEFINE_boolean('progress', True, 'Show progress bars (of a run of --jobs=1).')
  flags.DEFINE_integer('jobs', 0, 'Runs trained and evaluated side by side, each in a process of one thread '
                       '(0: one per CPU core, at most 4; 1: all in this process, with torch\'s default threads). '
                       'The toy\'s small MLP gains nothing from a second thread per run.')


#: test points of the main job's NLLs (4,000 D_g + 1,000 D_f; the same for every row): as many as keep the job
#: at about 10 minutes on two CPU cores. A hole's D_g cost falls on the ~0.5% of retained points in its band,
#: so resolving it needs ``--num_test=20000`` (docs/unlearning.md); with fewer, the table says "within error".
NUM_TEST = 5000
#: samples per model for the sample statistics and the figure.
NUM_SAMPLES = 1000
#: fine-tuning steps of each ``--methods`` run (a quarter of the toy's 8,000 training steps).
METHOD_STEPS = 2000

# The paper's toy table (its scale): D_g and D_f NLL of each model; the MSGM column is listed for both forms.
PAPER = {'standard': (10.91, 10.73), 'unseen': (10.63, 11.59), 'orthogonal': (10.64, 39.01),
         'obtuse': (10.64, 39.01)}


def sample_statistics(samples, density):
  """Share (%) of samples whose most probable component under ``density`` is the centre, and beyond |x| = 8."""
  post = density.posterior(samples)
  centre = (post.argmax(dim=1) == 1).double().mean().item() * 100
  far = (samples.norm(dim=1) > 8).double().mean().item() * 100
  return {'centre_percent': centre, 'beyond_8_percent': far}


def evaluation_config(config, num_test=0, num_samples=0):
  """A copy of ``config`` with ``data.num_test`` and ``eval.num_samples`` replaced where given (> 0)."""
  cfg = copy.deepcopy(config)
  if num_test:
    cfg.data.num_test = int(num_test)
  if num_samples:
    cfg.eval.num_samples = int(num_samples)
  return cfg


def evaluate_run(config, workdir, task, data, progress, num_test=0, num_samples=0):
  """NLL of the D_g and D_f test points (nats and bits/dim), samples and their statistics, through
  ``evaluation.run.evaluate`` (which also writes W/<task>/eval/results.json). ``num_test``,
  ``num_samples``: as ``evaluation_config``."""
  cfg = evaluation_config(config, num_test, num_samples)
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


def analytic_rows(data, num_samples=4000):
  """The exact rows: p_data and p_g on the same test points, and ``num_samples`` samples of each."""
  test = {part: torch.stack([data.test.part(part)[i][0] for i in range(len(data.test.part(part)))])
          for part in ('retain', 'forget')}
  rows = {}
  for name, density in (('p_data (exact)', data.density),
                        ('p_g (exact)', data.density.restrict(list(data.retain_indices)))):
    rows[name] = {part: {'nats': mean_sem(-density.log_prob(x.double())).to_dict()} for part, x in test.items()}
    samples, _ = density.sample(int(num_samples), generator=7)
    rows[name].update(sample_statistics(samples.double(), data.density))
    rows[name]['density'] = density
    rows[name]['samples'] = samples.double()
  return rows


def frontier_cell(g, f):
  """The "to frontier (paper)" cell of a row from its D_g and D_f ``{'mean', 'sem'}`` (nats): the distance
  below the frontier ± one SE (paper scale), or in words where the ±2 SE interval reaches the frontier
  ("on the frontier (within error)"), where D_g is below H(p_g), or (flagged) beyond the frontier."""
  return frontier.frontier_verdict(g['mean'], f['mean'], g['sem'], f['sem'])['text']


def table_rows(results):
  rows = []
  for name, r in results.items():
    g, f = r['retain']['nats'], r['forget']['nats']
    rows.append({
      'model': name,
      'NLL D_g (nats)': f"{g['mean']:.3f} ± {g['sem']:.3f}",
      'NLL D_f (nats)': f"{f['mean']:.3f} ± {f['sem']:.3f}",
      'NLL D_g (paper scale)': f"{frontier.to_paper_scale(g['mean']):.3f}",
      'NLL D_f (paper scale)': f"{frontier.to_paper_scale(f['mean']):.2f}",
      'to frontier (paper)': frontier_cell(g, f),
      'centre samples %': f"{r['centre_percent']:.1f}",
      'beyond |x|=8 %': f"{r['beyond_8_percent']:.2f}",
      'paper D_g / D_f': ' / '.join(f'{v:.2f}' for v in PAPER[name]) if name in PAPER else '',
    })
  return rows


def table_note(num_retain, num_forget, num_samples, ode_tol):
  """The lines printed under the table: what its numbers are measured on and how to read the frontier column."""
  return (f'NLL: mean ± SE over {num_retain:,} D_g and {num_forget:,} D_f test points (the same for every row; '
          f'probability-flow ODE, exact divergence, tolerance {ode_tol:g}); paper scale = nats / (2 ln 2) + 8. '
          f'Samples: {num_samples:,} per model. "to frontier": how far D_f lies below the most any density reaches at this D_g '
          '(evaluation/frontier.py, docs/frontier.md), ± one SE; "within error" = the ±2 SE interval reaches '
          'the frontier; "D_g below H(p_g)": a test mean under the least expected D_g of any density, where '
          'the frontier is vertical and no retain cost can be measured. The exact rows are the densities '
          'themselves on the same test points.')


def score_fields(results, config, field_time, extent=5., n=61):
  """The score s(x, t) of each row on an ``n`` × ``n`` grid of [−extent, extent]² at t = ``field_time``
  (exact rows: the perturbed density's score; runs: the EMA network). Returns (xs [n], {name: [n, n, 2]}),
  s in units of 1 / (unit of x), float64, indexed [y, x]."""
  xs = torch.linspace(-extent, extent, n, dtype=torch.float64)
  gx, gy = torch.meshgrid(xs, xs, indexing='xy')
  points = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
  sde = sde_lib.get_sde(config)
  t = torch.full((points.shape[0],), field_time, dtype=torch.float64)
  mean_coeff, std = sde.marginal_prob(torch.ones(1, 2, dtype=torch.float64), t[:1])
  fields = {}
  for name, r in results.items():
    if 'density' in r:
      field = r['density'].perturbed(mean_coeff[0, 0].item(), std[0].item()).score(points)
    else:
      model, _ = run_lib.load_ema_model(config, r['checkpoint'], 'cpu')
      score_fn = mutils.get_score_fn(sde, model, train=False, continuous=config.training.continuous)
      with torch.no_grad():
        field = score_fn(points.float(), t.float()).double()
    fields[name] = field.reshape(n, n, 2)
  return xs, fields


def zoom_box(runs, width=0.03, se_bars=2.):
  """Paper-scale limits ``((x0, x1), (y0, y1))`` of a zoom on the runs crowded near H(p_g) (D_g within
  ``width`` paper units of it, with their ±``se_bars`` SE bars, and the frontier's arc), or None if fewer
  than two runs are there. ``runs``: ``{name: (g, f, sem_g, sem_f)}`` in nats."""
  per_unit = 2 * math.log(2.)
  h = frontier.to_paper_scale(frontier.entropy_retain())
  near = [(frontier.to_paper_scale(g), frontier.to_paper_scale(f), se_bars * sg / per_unit, se_bars * sf / per_unit)
          for g, f, sg, sf in runs.values() if frontier.to_paper_scale(g) < h + width]
  if len(near) < 2:
    return None
  ends = frontier.frontier_end()
  ref_g = frontier.to_paper_scale(frontier.reference_points()['p_g'][0])
  x0 = min([x - sx for x, _, sx, _ in near] + [h, ref_g])
  x1 = max([x + sx for x, _, sx, _ in near] + [frontier.to_paper_scale(ends['nll_g_end'])])
  y0 = min([y - sy for _, y, _, sy in near] + [frontier.to_paper_scale(ends['nll_f_min'])])
  y1 = max([y + sy for _, y, _, sy in near] + [frontier.to_paper_scale(ends['nll_f_end'])])
  px, py = 0.08 * (x1 - x0), 0.08 * (y1 - y0)
  return (x0 - px, x1 + px), (y0 - py, y1 + py)


def off_scale(runs, limit=1.0):
  """Names of the runs whose D_g (nats) exceeds the entropy of p_g by more than ``limit`` nats: they would
  stretch the frontier panel until the other runs merge (e.g. a model that ascent broke); the figure lists
  them beside it instead. ``runs``: ``{name: (g, f, ...)}`` in nats."""
  h = frontier.entropy_retain()
  return [name for name, (g, *_) in runs.items() if g > h + limit]


def draw_figure(results, data, config, path, field_time, num_retain=None, num_forget=None):
  """One figure: samples of every row (top), the score field at ``field_time`` coloured by its norm with a
  colour bar (middle), and the runs against the frontier, labelled in a legend with their verdicts (bottom).
  Written atomically to ``path`` (PNG)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from matplotlib import colors, gridspec, patches
  names = list(results)
  n = len(names)
  xs, fields = score_fields(results, config, field_time)
  norms = {k: v.norm(dim=-1).numpy() for k, v in fields.items()}
  hi = max(float(v.max()) for v in norms.values())
  lo = max(min(float(v.min()) for v in norms.values()), hi * 1e-3)
  cnorm = colors.LogNorm(vmin=lo, vmax=hi)
  fig = plt.figure(figsize=(1.95 * n + 0.9, 10.8))
  outer = gridspec.GridSpec(3, n + 1, figure=fig, height_ratios=[1., 1., 2.25], width_ratios=[1.] * n + [0.07],
                            hspace=0.32, wspace=0.12, left=0.05, right=0.95, top=0.91, bottom=0.06)
  mesh = None
  for j, name in enumerate(names):
    r = results[name]
    title = name.replace(' + ', ' +\n') if len(name) > 16 else name
    ax = fig.add_subplot(outer[0, j])
    s = r['samples'][:2000]
    ax.scatter(s[:, 0], s[:, 1], s=1., alpha=0.35, color='k', rasterized=True)
    ax.add_patch(patches.Circle((0, 0), 2., fill=False, ls='--', lw=1., color='tab:red'))
    ax.set_xlim(-6, 6)
    ax.set_ylim(-6, 6)
    ax.set_xticks([-4, 0, 4])
    ax.set_yticks([-4, 0, 4])
    ax.set_aspect('equal')
    ax.set_title(f"{title}\ncentre {r['centre_percent']:.1f}%", fontsize=9)
    ax.tick_params(labelsize=7)
    if j == 0:
      ax.set_ylabel('samples\nx₂', fontsize=9)
    else:
      ax.set_yticklabels([])
    ax.set_xlabel('x₁', fontsize=8, labelpad=1)
    ax = fig.add_subplot(outer[1, j])
    field = fields[name].numpy()
    mesh = ax.pcolormesh(xs.numpy(), xs.numpy(), norms[name], norm=cnorm, cmap='viridis', shading='auto',
                         rasterized=True)
    ax.streamplot(xs.numpy(), xs.numpy(), field[..., 0], field[..., 1], color='w', linewidth=0.6, density=0.7,
                  arrowsize=0.7)
    ax.set_xlim(-5, 5)
    ax.set_ylim(-5, 5)
    ax.set_xticks([-4, 0, 4])
    ax.set_yticks([-4, 0, 4])
    ax.set_aspect('equal')
    ax.tick_params(labelsize=7)
    if j == 0:
      ax.set_ylabel(f'score at t = {field_time:g}\nx₂', fontsize=9)
    else:
      ax.set_yticklabels([])
    ax.set_xlabel('x₁', fontsize=8, labelpad=1)
  cax = fig.add_subplot(outer[1, n])
  bar = fig.colorbar(mesh, cax=cax)
  bar.set_label('|s(x, t)| = |∇ log p_t(x)|  (per unit of x)', fontsize=8)
  bar.ax.tick_params(labelsize=7)
  fig.text(0.05, 0.99, f'Top: {len(results[names[0]]["samples"]):,} samples of each model (dashed: 2σ circle of the '
           'forgotten centre component; "centre": share of samples nearest it).\nMiddle: score field at '
           f't = {field_time:g} (white: direction; colour: norm). Bottom: test NLLs against the most D_f any '
           'density reaches at each D_g (docs/frontier.md).', fontsize=10, va='top')
  runs = {k: (v['retain']['nats']['mean'], v['forget']['nats']['mean'], v['retain']['nats']['sem'],
              v['forget']['nats']['sem']) for k, v in results.items() if 'density' not in v}
  far = off_scale(runs)
  far_text = [f'{k}: D_g {frontier.to_paper_scale(runs[k][0]):.2f}, D_f {frontier.to_paper_scale(runs[k][1]):.2f}'
              for k in far]
  runs = {k: v for k, v in runs.items() if k not in far}
  box = zoom_box(runs)
  bottom = gridspec.GridSpecFromSubplotSpec(1, 3, subplot_spec=outer[2, :], width_ratios=[1.5, 0.85, 0.95],
                                            wspace=0.22)
  ax = fig.add_subplot(bottom[0, 0])
  frontier.plot_frontier(ax, runs, labels='legend', se_bars=2., legend=False)
  handles, labels = ax.get_legend_handles_labels()
  points = ''
  if num_retain and num_forget:
    points = f' on {num_retain:,} D_g / {num_forget:,} D_f test points'
  ax.set_title(f'Each run against the frontier (bars: ±2 SE{points})', fontsize=10)
  ax.grid(alpha=0.3)
  if far_text:
    ax.text(0.98, 0.02, 'off scale (D_g > H(p_g) + 1 nat; paper scale):\n' + '\n'.join(far_text),
            transform=ax.transAxes, ha='right', va='bottom', fontsize=8,
            bbox=dict(boxstyle='round', facecolor='white', alpha=0.9, edgecolor='0.6'))
  if box is not None:
    (x0, x1), (y0, y1) = box
    ax.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1., color='0.3'))
    zax = fig.add_subplot(bottom[0, 1])
    frontier.plot_frontier(zax, runs, labels='legend', se_bars=2., legend=False, n=200)
    zax.set_xlim(x0, x1)
    zax.set_ylim(y0, y1)
    zax.set_title('zoom on the boxed corner', fontsize=10)
    zax.tick_params(labelsize=8)
    zax.set_ylabel('')
    zax.grid(alpha=0.3)
  lax = fig.add_subplot(bottom[0, 2])
  lax.axis('off')
  lax.legend(handles, labels, loc='center left', fontsize=9, frameon=False,
             title='distance below the frontier,\npaper scale (± 1 SE)', title_fontsize=9)
  tmp = path + '.tmp.png'
  fig.savefig(tmp, dpi=100)
  plt.close(fig)
  os.replace(tmp, path)


def noisy_classifier_path(config, workdir, progress=True):
  """``W/noisy_classifier/noisy_classifier.pth`` (D_f against D_g on noisy data), trained here if absent."""
  path = os.path.join(workdir, 'noisy_classifier', noisy_classifier.FILENAME)
  if not os.path.exists(path):
    meta = noisy_classifier.train_noisy_classifier(copy.deepcopy(config), path, progress=progress)
    logging.info('noisy classifier %s: balanced test accuracy %.4f', path, meta['test_balanced_accuracy'])
  return path


def resolve_presets(config, names):
  """``[(name, method, preset)]`` for the preset names (``ValueError`` for an unknown one)."""
  known = unlearning.all_presets()
  for name in names:
    if name not in known:
      raise ValueError(f"unknown preset '{name}'; valid: {', '.join(sorted(known))}")
  return [(name, known[name][0], known[name][1]) for name in names]


def preset_runs(config, workdir, presets):
  """``[(row name, task, config, run dir)]`` for each resolved preset; one needing a reference model gets the
  latest checkpoint of ``W/unseen`` (trained on D_g only), one needing a noisy classifier gets
  ``W/noisy_classifier``: both must be there (``run_toy`` trains them first)."""
  runs = []
  for name, method, preset in presets:
    cfg = copy.deepcopy(config)
    cfg.unlearn.preset = name
    if preset.get('reference') and not cfg.unlearn.reference:
      cfg.unlearn.reference = run_lib.latest_checkpoint(os.path.join(workdir, 'unseen'))[0]
    if preset.get('classifier') and not cfg.unlearn.classifier:
      cfg.unlearn.classifier = os.path.join(workdir, 'noisy_classifier', noisy_classifier.FILENAME)
    runs.append((f'{method.name} + {name}', method.name, cfg, os.path.join(workdir, name)))
  return runs


def method_runs(config, workdir, names, steps):
  """``[(row name, method, config, run dir)]``: each method fine-tunes the Standard run ``W/standard`` (which
  must be there: ``run_toy`` trains it first) for ``steps`` steps with its defaults."""
  if not names:
    return []
  pretrained = run_lib.latest_checkpoint(os.path.join(workdir, 'standard'))[0]
  runs = []
  for name in names:
    cfg = copy.deepcopy(config)
    t = cfg.training
    t.pretrained, t.n_iters, t.snapshot_freq = pretrained, int(steps), int(steps)
    t.snapshot_freq_for_preemption = min(int(t.snapshot_freq_for_preemption), int(steps))
    runs.append((f'{name} (ft)', name, cfg, os.path.join(workdir, f'ft-{name}')))
  return runs


def run_stage(kind, *args):
  """One stage of the job (a module-level function, so that ``experiments.pool`` can run it in another
  process): ``('train', config, run dir, task, progress)`` → seconds of training (a finished run is reused,
  an interrupted one resumed); ``('classifier', config, workdir, progress)`` → seconds;
  ``('evaluate', config, run dir, task, progress, num_test, num_samples)`` → (``evaluate_run``'s result,
  seconds)."""
  start = time.time()
  if kind == 'train':
    cfg, run_dir, task, progress = args
    run_lib.train(cfg, run_dir, task, finetune=bool(cfg.training.pretrained), progress=progress)
    return time.time() - start
  if kind == 'classifier':
    noisy_classifier_path(*args)
    return time.time() - start
  if kind == 'evaluate':
    cfg, run_dir, task, progress, num_test, num_samples = args
    data = datasets.get_dataset(evaluation_config(cfg, num_test, num_samples), evaluation=True)
    out = evaluate_run(cfg, run_dir, task, data, progress, num_test, num_samples)
    return out, time.time() - start
  raise ValueError(f'unknown stage {kind!r}')


def method_names(spec, tasks=()):
  """``--methods``: comma-separated names, or ``all`` (every registered method but standard, unseen and those that
  need a class-conditional model)."""
  if spec.strip() == 'all':
    return [m.name for m in unlearning.registered() if m.name not in ('standard', 'unseen') and m.unconditional]
  return [unlearning.get_method(n.strip()).name for n in spec.split(',') if n.strip()]


def run_toy(config, workdir, tasks, field_time=0.05, progress=True, preset_names=(), num_test=0, num_samples=0,
            methods=(), method_steps=METHOD_STEPS, jobs=1):
  """Trains (or reuses) each task's, each preset's and each fine-tuning method's run, evaluates all of them
  on the same test points, writes the table and the figure. ``num_test`` (test points, D_g and D_f together)
  and ``num_samples`` (samples per model) replace the config's for the evaluation where > 0; training is
  unchanged. ``jobs`` > 1: independent runs side by side in that many processes of one thread each
  (``experiments.pool``): first the tasks with what the presets and methods need (W/unseen, the noisy
  classifier, W/standard), then the presets and methods, then every evaluation."""
  os.makedirs(workdir, exist_ok=True)
  ecfg = evaluation_config(config, num_test, num_samples)
  data = datasets.get_dataset(ecfg, evaluation=True)
  if data.density is None:
    raise ValueError(f'the toy experiment needs the GMM2D data set, not {config.data.dataset}')
  presets = resolve_presets(config, preset_names)
  results = analytic_rows(data, ecfg.eval.num_samples)
  bars = progress and jobs <= 1   # progress bars of processes side by side would garble each other

  runs = [(task, task, config, os.path.join(workdir, task)) for task in tasks]
  first = list(runs)
  needed = [('unseen', any(p.get('reference') for _, _, p in presets) and not config.unlearn.reference),
            ('standard', bool(methods))]
  for task, wanted in needed:
    if wanted and task not in tasks:
      first.append((task, task, config, os.path.join(workdir, task)))
  stages = [('train', cfg, run_dir, task, bars) for _, task, cfg, run_dir in first]
  if any(p.get('classifier') for _, _, p in presets) and not config.unlearn.classifier:
    stages.append(('classifier', copy.deepcopy(config), workdir, bars))
  seconds = dict(zip([name for name, *_ in first], pool.map_runs(run_stage, stages, jobs)))

  later = preset_runs(config, workdir, presets) + method_runs(config, workdir, methods, method_steps)
  stages = [('train', cfg, run_dir, task, bars) for _, task, cfg, run_dir in later]
  seconds.update(zip([name for name, *_ in later], pool.map_runs(run_stage, stages, jobs)))

  rows = runs + later
  stages = [('evaluate', cfg, run_dir, task, bars, num_test, num_samples) for _, task, cfg, run_dir in rows]
  timing = {}
  for (name, *_), (result, took) in zip(rows, pool.map_runs(run_stage, stages, jobs)):
    results[name] = result
    timing[name] = {'train': seconds[name], 'evaluate': took}
    logging.info('%s: training (or reuse) %.0f s, evaluation %.0f s', name, *timing[name].values())
  seconds = timing
  n_g, n_f = len(data.test.retain), len(data.test.forget)
  note = table_note(n_g, n_f, int(ecfg.eval.num_samples), ecfg.sampling.ode_rtol)
  md = tables.write_table(table_rows(results), workdir, 'toy_table', note=note)
  summary = {name: {k: v for k, v in r.items() if k not in ('samples', 'density')}
             for name, r in results.items()}
  for name, r in results.items():
    g, f = r['retain']['nats'], r['forget']['nats']
    summary[name]['frontier'] = frontier.frontier_verdict(g['mean'], f['mean'], g['sem'], f['sem'])
    if name in seconds:
      summary[name]['seconds'] = seconds[name]
  utils.atomic_write_text(os.path.join(workdir, 'toy_results.json'),
                          json.dumps({'config': json.loads(utils.config_to_json(config)),
                                      'num_test': {'retain': n_g, 'forget': n_f},
                                      'num_samples': int(ecfg.eval.num_samples),
                                      'ode_tol': {'rtol': ecfg.sampling.ode_rtol, 'atol': ecfg.sampling.ode_atol},
                                      'results': summary},
                                     indent=2, default=float))
  draw_figure(results, data, config, os.path.join(workdir, 'toy_figure.png'), field_time, n_g, n_f)
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
    md, _ = run_toy(FLAGS.config, FLAGS.workdir, tasks, FLAGS.field_time, FLAGS.progress, names, FLAGS.num_test,
                    FLAGS.num_samples, method_names(FLAGS.methods), FLAGS.method_steps,
                    FLAGS.jobs if FLAGS.jobs > 0 else pool.default_jobs())
  except (ValueError, run_lib.TrainingError, utils.CheckpointError, datasets.DatasetUnavailableError) as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  print(md)
  print(f'written: {os.path.join(FLAGS.workdir, "toy_table.md")}, toy_table.csv, toy_results.json, toy_figure.png')


if __name__ == '__main__':
  define_flags()
  app.run(main)
