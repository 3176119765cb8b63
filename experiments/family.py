"""Every method of the family on one data set: fine-tune a Standard model with each, evaluate, attack.

  python -m experiments.family --workdir W --pretrained STANDARD.pth --classifier C/classifier.pth \
      [--config configs/mnist/mnist5k_small.py] [--methods all] [--steps 500] [--unseen W_unseen] \
      [--jobs 1] [--config.key=value ...]

For each method M (``--methods``: comma-separated ``--task`` names, or ``all`` = every registered method but
``standard`` and ``unseen``): ``W/M`` fine-tunes ``--pretrained`` for ``--steps`` steps with M's defaults;
then ``--mode eval`` (Unlearning Ratio with ``--classifier``, NLL of D_g and D_f, the membership test) and
``--mode relearn`` (the relearning attack) into ``W/M/eval``. ``W/standard`` evaluates and attacks the
pretrained model itself, ``W/unseen`` a model trained on D_g only (``--unseen``: an existing run folder, else
trained here for as many steps as the config says). Every stage is skipped when its output is there and
resumes when it was interrupted; the tables (``evaluation.report``) are written to ``W/family.md``/``.csv``.
"""
import copy
import os
import sys
import time

from absl import app, flags, logging
from ml_collections.config_flags import config_flags

import run_lib
import unlearning
import utils
from evaluation import relearn
from evaluation import report
from evaluation import run as evaluation_run
from experiments import pool

FLAGS = flags.FLAGS


def define_flags():
  config_flags.DEFINE_config_file('config', 'configs/mnist/mnist5k_small.py', 'The experiment config.',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Folder for the runs and the tables.')
  flags.DEFINE_string('pretrained', None, 'The Standard checkpoint every method fine-tunes.')
  flags.DEFINE_string('classifier', None, 'The Unlearning-Ratio classifier (--mode train_classifier).')
  flags.DEFINE_string('methods', 'all', 'Comma-separated methods, or all.')
  flags.DEFINE_integer('steps', 500, 'Fine-tuning steps of every method.')
  flags.DEFINE_string('unseen', '', 'An existing Unseen run folder (else one is trained in W/unseen).')
  flags.DEFINE_boolean('relearn', True, 'Run the relearning attack on every model.')
  flags.DEFINE_boolean('progress', True, 'Show progress bars (with --jobs=1).')
  flags.DEFINE_integer('jobs', 1, 'Models fine-tuned, evaluated and attacked side by side, each in a process of '
                       'one thread (1: one after another in this process, with torch\'s default threads).')
  flags.mark_flags_as_required(['workdir', 'pretrained', 'classifier'])


def method_names(spec):
  """The methods of ``spec`` (``all``: every registered one but the two baselines and those that need a
  class-conditional model), in registry order."""
  if spec == 'all':
    return [m.name for m in unlearning.registered() if m.name not in ('standard', 'unseen') and m.unconditional]
  return [unlearning.get_method(name.strip()).name for name in spec.split(',') if name.strip()]


def fine_tune_config(config, pretrained, steps):
  cfg = copy.deepcopy(config)
  t = cfg.training
  t.pretrained, t.n_iters, t.snapshot_freq = pretrained, steps, steps
  t.snapshot_freq_for_preemption = min(int(t.snapshot_freq_for_preemption), steps)
  return cfg


def eval_config(config, classifier):
  cfg = copy.deepcopy(config)
  e = cfg.eval
  e.classifier, e.enable_sampling, e.enable_bpd, e.enable_mia = classifier, True, True, True
  e.begin_ckpt = e.end_ckpt = 0
  return cfg


def evaluate(config, workdir, task, classifier, attack, progress):
  """``--mode eval`` and ``--mode relearn`` of ``workdir`` unless their results for its latest checkpoint exist."""
  cfg = eval_config(config, classifier)
  latest = run_lib.latest_checkpoint(workdir)
  results = report.load_results(workdir) if os.path.exists(os.path.join(workdir, 'eval', 'results.json')) else None
  if results is None or results.get('step') != latest[1]:
    t0 = time.time()
    evaluation_run.evaluate(cfg, workdir, task, progress=progress)
    logging.info('%s: evaluated in %.0f s', workdir, time.time() - t0)
  done = relearn.load(workdir)
  if attack and (done is None or done.get('step') != latest[1]):
    t0 = time.time()
    relearn.run_relearn(cfg, workdir, task, progress=progress)
    logging.info('%s: relearning attack in %.0f s', workdir, time.time() - t0)


def standard_folder(workdir, pretrained):
  """``W/standard``: the pretrained checkpoint as a run folder of its own (a copy, so nothing writes to it)."""
  folder = os.path.join(workdir, 'standard')
  path = os.path.join(folder, 'checkpoints', 'checkpoint_1.pth')
  if not os.path.exists(path):
    utils.load_file(pretrained)   # refuses a damaged file before copying it
    os.makedirs(os.path.dirname(path), exist_ok=True)
    utils.atomic_write(path, lambda f: f.write(open(pretrained, 'rb').read()))
  return folder


def method_stage(config, folder, name, pretrained, steps, classifier, attack, progress):
  """Fine-tunes ``pretrained`` with method ``name`` into ``folder`` (reused when finished), then evaluates and
  attacks it; a module-level function, so that ``experiments.pool`` can run it in another process."""
  cfg = fine_tune_config(config, pretrained, steps)
  cfg.eval.classifier = classifier   # Selective Amnesia's replay filter uses it
  t0 = time.time()
  run_lib.train(cfg, folder, name, finetune=True, progress=progress)
  logging.info('%s: trained in %.0f s', name, time.time() - t0)
  evaluate(config, folder, name, classifier, attack, progress)
  return folder


def baseline_stage(config, folder, task, classifier, attack, progress, train):
  """Trains ``folder`` from scratch first when ``train`` (Unseen), then evaluates and attacks it."""
  if train:
    run_lib.train(copy.deepcopy(config), folder, task, progress=progress)
  evaluate(config, folder, task, classifier, attack, progress)
  return folder


def run(config, workdir, pretrained, classifier, methods, steps, unseen='', attack=True, progress=True, jobs=1):
  """Runs every stage (skipping finished ones); returns the report table of all the runs. ``jobs`` > 1: the
  models side by side, each in a process of one thread (``experiments.pool``)."""
  bars = progress and jobs <= 1
  calls = [(config, standard_folder(workdir, pretrained), 'standard', classifier, attack, bars, False),
           (config, unseen or os.path.join(workdir, 'unseen'), 'unseen', classifier, attack, bars, not unseen)]
  calls = [(baseline_stage,) + c for c in calls]
  calls += [(method_stage, config, os.path.join(workdir, name), name, pretrained, steps, classifier, attack, bars)
            for name in methods]
  folders = pool.map_runs(call, calls, jobs)
  return report.report(folders, workdir, name='family')


def call(fn, *args):
  return fn(*args)


def main(argv):
  del argv
  try:
    table = run(FLAGS.config, FLAGS.workdir, FLAGS.pretrained, FLAGS.classifier, method_names(FLAGS.methods),
                FLAGS.steps, FLAGS.unseen, FLAGS.relearn, FLAGS.progress, FLAGS.jobs)
  except (ValueError, OSError, RuntimeError) as e:
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
    sys.exit(1)
  print(report.to_markdown(table))


if __name__ == '__main__':
  define_flags()
  app.run(main)
