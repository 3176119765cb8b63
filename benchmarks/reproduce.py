"""Reproduce the paper's unlearning tables on real data on this CPU: every method, several seeds, cached stages.

    python3 benchmarks/reproduce.py --workdir runs/repro --part mnist [--dry-run] [--only 'eval/*/3/s42']
        [--results docs/results] [--set training.n_iters=2000 ...] [--jobs 2] [--noprogress]

Parts (``--part``, comma-separated): ``mnist`` (the real MNIST-5k subset; forget digit 3, and separately 3
and 7), ``fashion`` (full Fashion-MNIST from Debian's package; forget Trouser, and Trouser and Bag), ``tiny``
(the 2-D toy at a few steps) and ``tiny-digits`` (scikit-learn's 8×8 digits, a DDPM++ of width 8, a few steps;
no FID): the plan's machinery in seconds, for tests.

The plan, per part (``experiments/stages.py``: each stage cached by a hash of the config it reads —
``train_key``, ``eval_key``, ``attack_key`` — so a rerun recomputes only what changed, and an interrupted
stage resumes in its folder — a training from its last checkpoint, an evaluation from its NLLs and samples; paths in the records are relative to the part's folder, so a workdir can move),
in the order it runs:

* ``classifier/<part>``: the Unlearning-Ratio classifier (its test accuracy and SHA-256 are recorded; the
  page flags one under the issue's bar, 98 % MNIST, 90 % Fashion-MNIST);
* the targets' models, every seed (first seed first): ``standard/<part>/s<seed>`` (on D; the same for every
  forget set) and per forget set ``unseen``, the paper's ``orthogonal`` and ``obtuse`` from scratch (Table 1's
  protocol), ``mnist-best`` (the ratio preset, with that seed's Unseen as reference) and ``mnist-nll-ft``
  (``mnist-nll``, i.e. mnist-best plus the low-noise term, fine-tuning that seed's Standard for 1,000 steps with
  the same reference; not on the 2-D toy), each evaluated;
* the relearning attack on those (first seed; at the other seeds on Standard, Unseen and the two presets, the
  relearning target's models, so that its test pools over the seeds);
* first seed: the paper's forms on a CPU-sized VE SDE (``ve-*``, MNIST), evaluated and attacked;
* first seed: Orthogonal and Obtuse fine-tuning Standard (Table 2) and the official-code variants
  (elementwise Orthogonal, the official Obtuse sign);
* first seed: every other method of the family fine-tuning Standard (SFD is left out: it distils a
  class-conditional teacher), then the attack on these and the variants (first forget set only);
* last, first seed and forget set: the downstream tasks (``downstream/…``: inpainting and reconstruction of D_g
  and D_f test images, the paper's Tables 5 and 6; ``Part.downstream``) of Standard, Unseen, Obtuse and the
  best preset.

Every evaluation: Unlearning Ratio on ``--samples`` samples, NLL of D_g and D_f, FID against D_g, the
membership AUC. The attack (``ATTACK``): k = 32 forget images, the UR after 0, 10, 25, 50 steps on 250 samples.

``--dry-run`` prints the plan with each stage's estimated time (from the speeds measured on this machine with
two stages at once, ``SPEED``) and the total; ``--only`` runs the stages whose names match (shell patterns, with what they
need). ``--results DIR`` copies every evaluation's, attack's and downstream stage's results to ``DIR/<part>/<name>.json``
as its stage finishes (small files: no checkpoints). docs/RESULTS.md is written from those files by
``experiments/results_page.py``. A stage whose results are already in ``--results`` under its current hash counts
as done even when the workdir is new (another machine, a lost disk): it is left out of the run unless a stage still
to run needs its outputs (a published training that an unpublished evaluation reads is trained again, checkpoints
not being published); ``--rerun-published`` runs such stages again. A training's record carries ``ema_sha256``,
the digest of the weights it samples with, so such a retrained model can be checked against the published one.
"""
import argparse
import dataclasses
import importlib
import json
import os
import shutil
import sys
import time
from typing import Dict, List, Optional, Sequence

if __package__ in (None, ''):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # noqa: E402

import utils  # noqa: E402
from configs import default_configs  # noqa: E402
from experiments import stages  # noqa: E402


@dataclasses.dataclass
class Part:
  """One data set of the benchmark: its config module, forget sets, seeds and the classifier's bar."""
  config: str
  forget_sets: Sequence[str]
  seeds: Sequence[int]
  classifier_bar: float
  ve_config: Optional[str] = None
  overrides: Dict[str, object] = dataclasses.field(default_factory=dict)
  family: bool = True
  fid: bool = True
  #: settings of the downstream stages only (inpainting and reconstruction, docs/downstream.md); None: none
  downstream: Optional[Dict[str, object]] = None


#: the relearning attack of the real-data parts: one attacker (k = 32 forget images, Adam at lr 1e-3), the UR
#: after 0, 10, 25 and 50 steps on 250 samples each. docs/unlearning.md's family section attacked for 100 and
#: 200 steps and found every model, Unseen included, at 81-98 % after 100 (the attacked model generates mostly
#: its 32 images): what separates hiding from removal happens in the first tens of steps. (The config's default,
#: k = 8, 32, 128 at 0, 50, 100, 200 steps on eval.num_samples, costs about 16 times as much per model.)
ATTACK = {'relearn.k': '32', 'relearn.steps': '0,10,25,50', 'relearn.num_samples': 250}

#: the downstream tasks of the real-data parts (the paper's Tables 5 and 6): inpainting (the band of rows 14-21)
#: and reconstruction of 200 D_g test images and up to 200 D_f ones, as docs/downstream.md measured them.
DOWNSTREAM = {'eval.inpaint': True, 'eval.reconstruct': True, 'eval.downstream_num_images': 200}

PARTS = {
  'mnist': Part('configs.mnist.mnist5k_small', ('3', '3,7'), (42, 43, 44), 0.98, 'configs.mnist.mnist5k_small_ve',
                overrides=dict(ATTACK), downstream=dict(DOWNSTREAM)),
  'fashion': Part('configs.mnist.fashion_mnist_small', ('Trouser', 'Trouser,Bag'), (42, 43, 44), 0.90,
                  overrides=dict(ATTACK), downstream=dict(DOWNSTREAM)),
  'tiny': Part('configs.toy.gmm2d', ('centre',), (42, 43), 0.,
               overrides={'training.n_iters': 40, 'training.snapshot_freq': 40,
                          'training.snapshot_freq_for_preemption': 20, 'training.snapshot_sampling': False,
                          'model.hidden_dims': (16, 16), 'model.num_scales': 50, 'data.num_train': 400,
                          'data.num_test': 100, 'eval.num_samples': 100, 'eval.batch_size': 100,
                          'sampling.ode_rtol': 1e-3, 'sampling.ode_atol': 1e-3, 'relearn.k': '8',
                          'relearn.steps': '0,5', 'relearn.num_samples': 50, 'mia.num_items': 20,
                          'mia.num_draws': 2, 'sa.samples': 20, 'sa.fisher_times': 1, 'vdu.samples': 20,
                          'vdu.fisher_times': 1, 'noisy_classifier.n_iters': 20, 'device': 'cpu'}),
  # (model.num_scales 25: the downstream inpainter's discrete steps need β_max/N < 1)
  'tiny-digits': Part('configs.mnist.mnist5k_small', ('3',), (42, 43), 0., fid=False,
                      overrides={'data.dataset': 'DIGITS8X8', 'data.image_size': 8, 'model.nf': 8,
                                 'model.ch_mult': (1, 2), 'model.num_scales': 25, 'training.n_iters': 8,
                                 'training.snapshot_freq': 8, 'training.snapshot_freq_for_preemption': 4,
                                 'training.snapshot_sampling': False, 'training.eval_freq': 0,
                                 'training.batch_size': 16, 'training.batch_size_un': 8, 'eval.num_samples': 32,
                                 'eval.batch_size': 32, 'eval.bpd_num_samples': 8, 'eval.classifier_epochs': 1,
                                 'sampling.ode_rtol': 1e-2, 'sampling.ode_atol': 1e-2, 'relearn.k': '8',
                                 'relearn.steps': '0,2', 'relearn.num_samples': 16, 'mia.num_items': 8,
                                 'mia.num_draws': 2, 'device': 'cpu'},
                      downstream={'eval.inpaint': True, 'eval.reconstruct': True, 'eval.downstream_num_images': 4,
                                  'eval.downstream_fid': False}),
}

#: seconds per training step and per evaluation/attack of one stage on this 2-core CPU while another stage runs
#: beside it (--jobs 2, one thread each), for the ETA; ``STEP_FACTOR`` scales the step per task. Measured on
#: MNIST-5k (seed 42): an evaluation at 1,000 samples with NLL, FID and the membership test 820-915 s; the
#: attack 250-550 s (docs/unlearning.md's family section); the classifier 571 s. Fashion-MNIST (seeds 42-44,
#: two machines): Standard's 3,000 steps 810-1,600 s, an evaluation 960-1,660 s (about 1,500 with two at once on
#: the slower machine), the attack 350-660 s.
SPEED = {'mnist': {'step': 0.3, 'start': 15., 'eval': 920., 'relearn': 450., 'classifier': 570., 'downstream': 2700.},
         'fashion': {'step': 0.4, 'start': 60., 'eval': 1500., 'relearn': 550., 'classifier': 600.,
                     'downstream': 3300.},
         'tiny': {'step': 0.005, 'start': 1., 'eval': 3., 'relearn': 3., 'classifier': 0.1, 'downstream': 3.},
         'tiny-digits': {'step': 0.05, 'start': 1., 'eval': 5., 'relearn': 5., 'classifier': 5., 'downstream': 5.}}

#: a training step's time relative to ``SPEED[...]['step']`` (measured on MNIST-5k, seed 42: Standard and
#: Unseen 0.25 s, Orthogonal and Obtuse 0.3 s, the ratio preset, which also runs its reference model, 0.6 s; the
#: likelihood preset, which adds its low-noise term, 1.27 s; the family's 1,000-step fine-tunes, from their
#: recorded times at seed 42 on digit 3 and on 3 and 7: 0.36-1.42 s).
STEP_FACTOR = {'standard': 0.85, 'unseen': 0.85, 'reference': 2., 'likelihood': 4.2,
               'finetune': 1.2, 'siss': 1.2, 'erase': 1.5, 'neggrad': 2.4, 'salun': 2.4, 'erasediff': 2.5,
               'vdu': 2.6, 'sa': 4.4}
#: an evaluation's and an attack's time relative to ``SPEED[...]`` when the sampler runs a corrector step at
#: each level (twice the network evaluations; measured on the VE SDE's Standard, digit 3: 1,040 s and 790 s).
CORRECTOR_FACTOR = {'eval': 1.15, 'relearn': 1.75}

#: the best preset of each part (docs/unlearning.md), with the task it builds on.
BEST = {'mnist': 'mnist-best', 'fashion': 'mnist-best', 'tiny': 'toy-ratio', 'tiny-digits': 'mnist-best'}
#: the preset aimed at the likelihood targets on images (mnist-best plus the low-noise term), fine-tuning each
#: seed's Standard for FINE_TUNE_STEPS with that seed's Unseen as reference (its stages: ``<preset>-ft``); none
#: on the 2-D toy.
LIKELIHOOD_BEST = {'mnist': 'mnist-nll', 'fashion': 'mnist-nll', 'tiny-digits': 'mnist-nll'}
FINE_TUNE_STEPS = 1000


def load_config(module, overrides):
  """``module.get_config()`` with ``overrides`` (``{'section.key': value}``) applied; unknown keys refused."""
  config = default_configs.with_defaults(importlib.import_module(module).get_config())
  for path, value in overrides.items():
    section, _, key = path.rpartition('.')
    target = config
    for part in section.split('.') if section else []:
      target = target[part]
    if key not in target:
      raise ValueError(f'unknown config key {path!r}')
    target[key] = value
  return config


#: config keys added after stages of the plan had finished, with their defaults: a key at its default is left out
#: of the hash, so adding a key to the config recomputes no finished stage (setting it does).
LATER_KEYS = {('unlearn', 'low_noise_push'): 0., ('unlearn', 'low_noise_t_max'): 0.05}


def config_key(config, drop=()):
  """The resolved config as plain JSON data (what a stage's hash covers), without the sections ``drop`` and
  without the ``LATER_KEYS`` that hold their defaults."""
  key = json.loads(utils.config_to_json(config))
  for (section, name), default in LATER_KEYS.items():
    if section in key and key[section].get(name, default) == default:
      key[section].pop(name, None)
  return {k: v for k, v in key.items() if k not in drop}


#: sections a training run does not read (evaluation settings): left out of training stages' hashes.
EVAL_SECTIONS = ('eval', 'relearn', 'mia')
#: the ``eval`` keys the relearning attack reads (the rest — NLL, FID, membership — only the evaluation).
ATTACK_EVAL_KEYS = ('num_samples', 'batch_size', 'classifier', 'classifier_epochs', 'classifier_batch_size',
                    'classifier_lr', 'begin_ckpt', 'end_ckpt')
#: config sections of one method each beyond the section named after it (Obtuse's hole form trains a noisy
#: classifier).
OWN_SECTIONS = {'obtuse': ('noisy_classifier',)}


#: the ``eval`` keys a method's training reads (Selective Amnesia and VDU draw their pool of generated samples
#: in batches of ``eval.batch_size``, each batch's sampler noise seeded by its start).
TRAIN_EVAL_KEYS = {'sa': ('batch_size',), 'vdu': ('batch_size',)}
#: the methods whose training draws samples with ``config.sampling`` (a pool from the starting model, a one-step
#: generator's teacher); every other training reads the sampler only for its snapshot images (their own noise,
#: not the training's), so a sampler setting does not retrain it.
TRAIN_SAMPLES = ('sa', 'vdu', 'sfd')


def methods_read(config, task):
  """The methods whose config sections ``task``'s training reads: itself, and for SalUn its base method."""
  out = {task}
  if task == 'salun':
    out.add(str(config.salun.base))
  return out


def method_sections(config, task=None):
  """The config sections that belong to one method of the family each (``sa``, ``vdu``, …), but not those
  ``task``'s training reads (``methods_read``)."""
  import unlearning
  keep = methods_read(config, task) if task else set()
  out = []
  for m in unlearning.registered():
    if m.name in keep:
      continue
    out += [name for name in (m.name,) + OWN_SECTIONS.get(m.name, ()) if name in config]
  return tuple(out)


def train_key(config, task):
  """What a training stage's hash covers: the config without the evaluation's sections, without the other
  methods' sections and, unless the method samples while it trains (``TRAIN_SAMPLES``), without the sampler's,
  so a change to one method's settings (or a new key of one) retrains that method only and a sampler setting
  retrains nothing that does not sample."""
  samples = any(m in TRAIN_SAMPLES for m in methods_read(config, task))
  key = config_key(config, EVAL_SECTIONS + method_sections(config, task) + (() if samples else ('sampling',)))
  read = sorted({k for m in methods_read(config, task) for k in TRAIN_EVAL_KEYS.get(m, ())})
  if read:
    key['eval'] = {k: config_key(config)['eval'][k] for k in read}
  return key


def eval_key(config):
  """What an evaluation's hash covers: the config without the attack's section and the methods' sections
  (training settings an evaluation never reads)."""
  return config_key(config, ('relearn',) + method_sections(config))


def attack_key(config):
  """What a relearning attack's hash covers: the config without the membership test and the methods'
  sections, and of ``eval`` only what the attack reads (``ATTACK_EVAL_KEYS``)."""
  key = config_key(config, ('mia',) + method_sections(config))
  key['eval'] = {k: v for k, v in key['eval'].items() if k in ATTACK_EVAL_KEYS}
  return key


def classifier_key(config):
  """What the classifier reads (the rest takes its defaults): the data (every class, so not the forget
  set), its own training settings, the seed and the device."""
  key = config_key(config)
  return {'data': key['data'], 'seed': key['seed'], 'device': key['device'],
          'eval': {k: key['eval'][k] for k in ('classifier_epochs', 'classifier_batch_size', 'classifier_lr')}}


def from_key(key):
  """A full config from a stage's (possibly partial) config data: missing keys take their defaults."""
  return default_configs.with_defaults(ml_collections.ConfigDict(key))


# ----------------------------------------------------------------------------------------------------------
# What each kind of stage does. Paths in a stage's outputs are relative to the plan's root (the parent of every
# stage folder), so a workdir can be moved or used from another directory.


def _relative(folder, path):
  """``path`` relative to the plan's root (the parent of ``folder``)."""
  return os.path.relpath(os.path.abspath(path), os.path.dirname(os.path.abspath(folder)))


def at_root(root, path):
  """A path from a stage's outputs, usable here (``root``: the plan's root)."""
  return path if not path or os.path.isabs(path) else os.path.join(os.path.abspath(root), path)


def run_classifier(stage, folder, inputs):
  from evaluation import classifier
  path = os.path.join(folder, classifier.CLASSIFIER_FILENAME)
  config = from_key(stage.key['config'])
  if config.data.dataset == 'GMM2D':
    return {'path': '', 'test_accuracy': None, 'sha256': None, 'exact': True}
  if os.path.exists(path):
    os.remove(path)   # a run killed after writing it: train it again (cheap) rather than trust it half-checked
  meta = classifier.train_classifier(config, path, progress=False)
  return {'path': _relative(folder, path), 'test_accuracy': meta['test_accuracy'], 'sha256': meta['sha256']}


def run_train(stage, folder, inputs):
  import run_lib
  config = from_key(stage.key['config'])
  root = os.path.dirname(os.path.abspath(folder))
  finetune = bool(stage.key.get('pretrained_from'))
  if finetune:
    config.training.pretrained = at_root(root, inputs[stage.key['pretrained_from']]['checkpoint'])
  if stage.key.get('reference_from'):
    config.unlearn.reference = at_root(root, inputs[stage.key['reference_from']]['checkpoint'])
  clf = stage.key.get('classifier_from')
  if clf and inputs[clf]['path']:
    config.eval.classifier = at_root(root, inputs[clf]['path'])
  run_lib.train(config, folder, stage.key['task'], finetune=finetune, progress=False)
  path, step = run_lib.latest_checkpoint(folder)
  stats = os.path.join(folder, 'train_stats.json')
  return {'checkpoint': _relative(folder, path), 'step': step, 'workdir': _relative(folder, folder),
          'ema_sha256': weights_sha256(config, path),
          'train_stats': json.load(open(stats)) if os.path.exists(stats) else None}


def weights_sha256(config, path):
  """Hex SHA-256 of the network a checkpoint samples with (its EMA weights; ``state_dict_sha256``'s digest of
  the model's state dict): equal digests mean the same model bit for bit, so a stage trained again, on another
  machine or after its workdir was lost, can be checked against its published record."""
  import train_state
  from evaluation import classifier
  model, _ = train_state.load_ema_model(config, path, 'cpu')
  return classifier.state_dict_sha256(model.state_dict())


def model_read(config, stage, run):
  """What an evaluation, attack or downstream stage read: the training stage (``run_from``), the step of the
  run's latest checkpoint and its ``weights_sha256``, so that a result can be checked against its training's
  published record (``experiments.results_page``)."""
  import run_lib
  path, step = run_lib.latest_checkpoint(run)
  return {'stage': stage.key['run_from'], 'step': step, 'ema_sha256': weights_sha256(config, path)}


def _eval_config(stage, folder, inputs):
  config = from_key(stage.key['config'])
  clf = inputs[stage.key['classifier_from']]
  config.eval.classifier = at_root(os.path.dirname(os.path.abspath(folder)), clf['path'] or '')
  return config


def run_eval(stage, folder, inputs):
  from evaluation import run as evaluation_run
  config = _eval_config(stage, folder, inputs)
  run = at_root(os.path.dirname(os.path.abspath(folder)), inputs[stage.key['run_from']]['workdir'])
  # an absolute folder: evaluate() places eval_folder under the run's workdir when it is relative
  # resume: the stage's folder belongs to its config alone, so an interrupted evaluation's NLLs and samples count
  results = evaluation_run.evaluate(config, run, stage.key['task'], eval_folder=os.path.abspath(folder),
                                    progress=False, resume=True)
  return {'results': _relative(folder, os.path.join(folder, 'results.json')), 'step': results['step'],
          'model': model_read(config, stage, run)}


def run_relearn(stage, folder, inputs):
  from evaluation import relearn
  config = _eval_config(stage, folder, inputs)
  run = at_root(os.path.dirname(os.path.abspath(folder)), inputs[stage.key['run_from']]['workdir'])
  relearn.run_relearn(config, run, stage.key['task'], eval_folder=os.path.abspath(folder), progress=False)
  return {'results': _relative(folder, os.path.join(folder, relearn.RESULTS_FILENAME)),
          'model': model_read(config, stage, run)}


def run_downstream(stage, folder, inputs):
  from evaluation import downstream
  config = _eval_config(stage, folder, inputs)
  run = at_root(os.path.dirname(os.path.abspath(folder)), inputs[stage.key['run_from']]['workdir'])
  results = downstream.evaluate_downstream(config, run, stage.key['task'], eval_folder=os.path.abspath(folder),
                                           progress=False)
  return {'results': _relative(folder, os.path.join(folder, 'results.json')), 'step': results['step'],
          'model': model_read(config, stage, run)}


RUNNERS = {'classifier': run_classifier, 'train': run_train, 'eval': run_eval, 'relearn': run_relearn,
           'downstream': run_downstream}


# ----------------------------------------------------------------------------------------------------------
# The plan


#: the order of the plan's groups: what the issue's targets need first, at every seed, then the rest.
CORE, CORE_ATTACK, VE, VARIANTS, FAMILY, FAMILY_ATTACK, DOWNSTREAM_TASKS = range(7)
CORE_MODELS = ('standard', 'unseen', 'orthogonal', 'obtuse')


def build_plan(part_name, overrides=None, samples=1000):
  """The stages of one part (see the module docstring), in the order they should run: the classifier and the
  core models of the targets (Standard, Unseen, Orthogonal, Obtuse, the best preset; every seed, first seed
  first) with their evaluations; the attack on those (at the first seed; at the others on Standard, Unseen and the
  best preset, the relearning target's models); the VE SDE's; the official variants and Table 2's
  fine-tuned forms; the rest of the family; the attack on those (first forget set only). ``overrides`` apply
  to every config."""
  part = PARTS[part_name]
  overrides = dict(part.overrides, **(overrides or {}))
  speed = SPEED[part_name]
  plan: List[stages.Stage] = []
  order: Dict[str, tuple] = {}
  types: Dict[str, str] = {}

  def add(name, kind, key, depends, estimate, rank):
    plan.append(stages.Stage(name, kind, key, RUNNERS[kind], tuple(depends), float(estimate)))
    order[name] = rank + (len(plan),)
    return name

  def configured(module, forget, seed, extra=None):
    config = load_config(module, dict(overrides, **(extra or {})))
    if config.eval.enable_loss:   # it would need each method's training settings in the evaluation's hash
      raise ValueError('eval.enable_loss is not part of the benchmark\'s evaluation')
    config.seed = int(seed)
    config.unlearn.forget = forget
    if not part_name.startswith('tiny'):
      config.eval.num_samples = int(samples)
    config.eval.enable_bpd = config.eval.enable_sampling = config.eval.enable_mia = True
    config.eval.enable_fid = part.fid and config.data.dataset != 'GMM2D'
    return config

  def train(name, config, task, rank, n_iters=None, **links):
    if n_iters:
      t = config.training
      t.n_iters, t.snapshot_freq = int(n_iters), int(n_iters)
      t.snapshot_freq_for_preemption = min(int(t.snapshot_freq_for_preemption), int(n_iters))
    if not any(m in TRAIN_SAMPLES for m in methods_read(config, task)):
      config.training.snapshot_sampling = False   # the sampler is left out of its hash: no snapshot images
    key = dict(config=train_key(config, task), task=task, **links)
    deps = [v for v in links.values() if v]
    if config.unlearn.preset and config.unlearn.preset in LIKELIHOOD_BEST.values():
      factor = STEP_FACTOR['likelihood']
    elif links.get('reference_from'):
      factor = STEP_FACTOR['reference']
    else:
      factor = STEP_FACTOR.get(task, 1.)
    stage = add(f'train/{name}', 'train', key, deps,
                factor * speed['step'] * int(config.training.n_iters) + speed['start'], rank)
    types[stage] = task
    return stage

  def evaluate(name, config, run, rank, attack_rank=None):
    links = dict(task=types[run], run_from=run, classifier_from=clf)
    factor = (lambda kind: CORRECTOR_FACTOR[kind] if config.sampling.corrector != 'none' else 1.)   # noqa: E731
    add(f'eval/{name}', 'eval', dict(config=eval_key(config), **links), (run, clf), factor('eval') * speed['eval'],
        rank)
    if attack_rank is not None:
      add(f'relearn/{name}', 'relearn', dict(config=attack_key(config), **links), (run, clf),
          factor('relearn') * speed['relearn'], attack_rank)

  base = configured(part.config, part.forget_sets[0], part.seeds[0])
  clf = add(f'classifier/{part_name}', 'classifier', {'config': classifier_key(base)}, (), speed['classifier'],
            (CORE, -1))
  first = part.seeds[0]
  best = BEST[part_name]
  for i, seed in enumerate(part.seeds):
    core = (CORE, i)
    # Standard trains on D: one model per seed for every forget set (its config names the first forget set).
    std = train(f'standard/{part_name}/s{seed}', configured(part.config, part.forget_sets[0], seed), 'standard',
                core)
    ve_std = None
    if part.ve_config and seed == first:
      ve_std = train(f've-standard/{part_name}/s{seed}', configured(part.ve_config, part.forget_sets[0], seed),
                     'standard', (VE, i))
    for j, forget in enumerate(part.forget_sets):
      tag = f'{part_name}/{forget.replace(",", "+")}/s{seed}'
      cfg = lambda extra=None: configured(part.config, forget, seed, extra)   # noqa: E731
      runs = {'standard': std}
      for task in CORE_MODELS[1:]:
        runs[task] = train(f'{task}/{tag}', cfg(), task, core)
      runs[best] = train(f'{best}/{tag}', cfg({'unlearn.preset': best}), 'obtuse', core,
                         reference_from=runs['unseen'])
      nll = LIKELIHOOD_BEST.get(part_name)
      if nll:
        runs[f'{nll}-ft'] = train(f'{nll}-ft/{tag}', cfg({'unlearn.preset': nll}), 'obtuse', core, FINE_TUNE_STEPS,
                                  pretrained_from=std, reference_from=runs['unseen'])
      # the attack: every core model at the first seed; the relearning target's models (Standard, Unseen and the
      # two presets, either of which the targets may take as the best setting) at every seed, so that its test
      # pools over the seeds
      attacked = set(runs if seed == first else ('standard', 'unseen', best) + ((f'{nll}-ft',) if nll else ()))
      for name, run in runs.items():
        evaluate(f'{name}/{tag}', cfg(), run, core, (CORE_ATTACK, i) if name in attacked else None)
      if seed != first:
        continue
      if part.downstream and j == 0:   # inpainting and reconstruction: the first seed's first forget set, last
        for name in ('standard', 'unseen', 'obtuse', best):
          add(f'downstream/{name}/{tag}', 'downstream',
              dict(config=eval_key(cfg(part.downstream)), task=types[runs[name]], run_from=runs[name],
                   classifier_from=clf), (runs[name], clf), speed['downstream'], (DOWNSTREAM_TASKS, j))
      if ve_std:
        ve = lambda: configured(part.ve_config, forget, seed)   # noqa: E731
        ve_runs = {'ve-standard': ve_std}
        for task in CORE_MODELS[1:]:
          ve_runs[f've-{task}'] = train(f've-{task}/{tag}', ve(), task, (VE, j))
        for name, run in ve_runs.items():
          evaluate(f'{name}/{tag}', ve(), run, (VE, j), (VE, j))
      variants = {
        'orthogonal-ft': train(f'orthogonal-ft/{tag}', cfg(), 'orthogonal', (VARIANTS, j), FINE_TUNE_STEPS,
                               pretrained_from=std),
        'obtuse-ft': train(f'obtuse-ft/{tag}', cfg(), 'obtuse', (VARIANTS, j), FINE_TUNE_STEPS, pretrained_from=std),
        'orthogonal-official': train(f'orthogonal-official/{tag}', cfg({'unlearn.orthogonal_product': 'elementwise'}),
                                     'orthogonal', (VARIANTS, j)),
        'obtuse-official': train(f'obtuse-official/{tag}', cfg({'unlearn.obtuse_sign': 'official'}), 'obtuse',
                                 (VARIANTS, j)),
      }
      family = {}
      if part.family:
        import unlearning
        for m in unlearning.registered():
          # SFD distils a class-conditional teacher: it has no place among unconditional models
          if m.name in CORE_MODELS or not m.unconditional:
            continue
          family[m.name] = train(f'{m.name}-ft/{tag}', cfg(), m.name, (FAMILY, j), FINE_TUNE_STEPS,
                                 pretrained_from=std, classifier_from=clf)
      for group, runs_of in ((VARIANTS, variants), (FAMILY, family)):
        for name, run in runs_of.items():
          evaluate(f'{name}/{tag}', cfg(), run, (group, j), (FAMILY_ATTACK, j) if j == 0 else None)
  plan.sort(key=lambda s: order[s.name])
  return stages.resolve_hashes(plan)


PLAN_FILE = 'plan.json'


def write_plan_settings(results_dir, part_name, overrides, samples):
  """``results_dir/<part>/plan.json``: the ``--set`` overrides and ``--samples`` of the run, so that the
  results page rebuilds the same plan (to tell current result files from stale ones)."""
  if not results_dir:
    return
  os.makedirs(os.path.join(results_dir, part_name), exist_ok=True)
  utils.atomic_write_text(os.path.join(results_dir, part_name, PLAN_FILE),
                          json.dumps({'overrides': overrides, 'samples': int(samples)}, indent=2, default=str))


def read_plan_settings(results_dir, part_name):
  """``(overrides, samples)`` of ``write_plan_settings`` (the defaults when there is no such file)."""
  path = os.path.join(results_dir, part_name, PLAN_FILE)
  if not os.path.isfile(path):
    return {}, 1000
  with open(path) as f:
    body = json.load(f)
  return dict(body.get('overrides') or {}), int(body.get('samples', 1000))


def copy_results(root, plan, results_dir, part_name):
  """Copies each finished evaluation's and attack's JSON to ``results_dir/<part>/<stage name>.json``."""
  if not results_dir:
    return 0
  n = 0
  for stage in plan:
    n += copy_result(root, stage, results_dir, part_name)
  return n


def copy_result(root, stage, results_dir, part_name):
  """``copy_results`` of one stage; returns 1 when its JSON was written.

  Writes ``<stage name with / as __>.json``: an evaluation's results.json, an attack's relearn.json, a
  classifier's or a training's outputs (with its train_stats), each with a ``stage`` entry (name, hash, wall
  seconds). An evaluation also leaves its per-item NLLs (``.nll.npz``, for paired comparisons) and its sample
  grid (``.png``) beside it, a downstream stage its grids (``.inpaint_retain.png``, …): small files, no
  checkpoints."""
  if not results_dir or stage.kind not in ('eval', 'relearn', 'classifier', 'train', 'downstream'):
    return 0
  record = stages.record_of(root, stage)
  if record is None:
    return 0
  stem = os.path.join(results_dir, part_name, stage.name.replace('/', '__'))
  body = record['outputs']
  os.makedirs(os.path.dirname(stem), exist_ok=True)
  extras = {}
  if stage.kind in ('eval', 'relearn', 'downstream'):
    with open(at_root(root, record['outputs']['results'])) as f:
      body = json.load(f)
    folder = os.path.dirname(at_root(root, record['outputs']['results']))
    if record['outputs'].get('model'):   # the weights it read (records made before this field lack it)
      body = dict(body, model=record['outputs']['model'])
  if stage.kind == 'eval':
    from evaluation import nll_items
    extras = {nll_items.items_filename(body['step']): '.nll.npz', f'samples_{body["step"]}.png': '.png'}
  if stage.kind == 'relearn':
    from evaluation import relearn
    extras = {relearn.PLOT_FILENAME: '.png'}
  if stage.kind == 'downstream':   # rows: original, masked, inpainted / original, reconstructed
    extras = {f'{task}_{part}_{body["step"]}.png': f'.{task}_{part}.png'
              for task in ('inpaint', 'reconstruct') for part in ('retain', 'forget')}
  for name, suffix in extras.items():
    if os.path.isfile(os.path.join(folder, name)):
      shutil.copyfile(os.path.join(folder, name), stem + suffix + '.tmp')
      os.replace(stem + suffix + '.tmp', stem + suffix)
  if stage.kind == 'train':
    body = {k: v for k, v in body.items() if k != 'workdir'}
  body = dict(body, stage={'name': stage.name, 'hash': stage.hash, 'seconds': record['seconds']})
  utils.atomic_write_text(stem + '.json', json.dumps(body, indent=2, default=float))
  return 1


def published(results_dir, part_name, plan):
  """The ``(name, hash)`` of each stage of ``plan`` whose results ``copy_result`` wrote to ``results_dir`` under
  that stage's current hash (a file that does not parse, or names another hash, does not count)."""
  out = set()
  if not results_dir:
    return out
  for stage in plan:
    path = os.path.join(results_dir, part_name, stage.name.replace('/', '__') + '.json')
    try:
      with open(path) as f:
        body = json.load(f)
    except (OSError, ValueError):
      continue
    if isinstance(body, dict) and isinstance(body.get('stage'), dict) and body['stage'].get('hash') == stage.hash:
      out.add((stage.name, stage.hash))
  return out


def _names(plan, pattern):
  """Whether the shell pattern ``pattern`` names a stage of ``plan``."""
  import fnmatch
  return any(fnmatch.fnmatchcase(s.name, pattern) for s in plan)


def parse_sets(items):
  out = {}
  for item in items or ():
    key, sep, value = item.partition('=')
    if not sep:
      raise ValueError(f'--set needs KEY=VALUE, got {item!r}')
    try:
      out[key] = json.loads(value)
    except json.JSONDecodeError:
      out[key] = value
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True, help='folder of the stages')
  parser.add_argument('--part', default='mnist', help='mnist, fashion, tiny (comma-separated)')
  parser.add_argument('--dry-run', action='store_true', help='print the plan and its estimated time')
  parser.add_argument('--only', default='', help='comma-separated shell patterns of stage names to run')
  parser.add_argument('--results', default='', help='copy every finished evaluation JSON to RESULTS/<part>/')
  parser.add_argument('--samples', type=int, default=1000, help='samples per Unlearning Ratio (not on tiny)')
  parser.add_argument('--set', action='append', default=[], help='config override KEY=VALUE for every stage')
  parser.add_argument('--jobs', type=int, default=1,
                      help='stages at once, each in its own process with one CPU thread (2 on a 2-core machine)')
  parser.add_argument('--rerun-published', action='store_true',
                      help='run again the stages whose results are in --results under their current hash (by default '
                           'they count as done, and only what an unpublished stage needs is recomputed)')
  parser.add_argument('--noprogress', action='store_true')
  args = parser.parse_args(argv)
  try:
    overrides = parse_sets(args.set)
    if args.jobs < 1:
      raise ValueError(f'--jobs must be at least 1, got {args.jobs}')
    parts = [p.strip() for p in args.part.split(',') if p.strip()]
    for p in parts:
      if p not in PARTS:
        raise ValueError(f"unknown part '{p}'; valid: {', '.join(PARTS)}")
    if args.samples < 1000 and not all(p.startswith('tiny') for p in parts):
      raise ValueError(f'--samples {args.samples}: the Unlearning Ratio of the real-data parts is measured on at '
                       'least 1,000 samples')
    plans = {p: build_plan(p, overrides, args.samples) for p in parts}
    if args.only:   # which part a pattern names: refuse one that names no stage before anything runs
      patterns = [x.strip() for x in args.only.split(',') if x.strip()]
      for pattern in patterns:
        if not any(_names(plan, pattern) for plan in plans.values()):
          raise ValueError(f'--only {pattern!r} names no stage of the plan of {", ".join(parts)}')
    for p in parts:
      plan = plans[p]
      if args.only:
        patterns = [x for x in args.only.split(',') if x.strip() and _names(plan, x.strip())]
        if not patterns:
          continue
        plan = stages.select(plan, ','.join(patterns))
      root = os.path.abspath(os.path.join(args.workdir, p))
      if args.results and not args.rerun_published:
        kept = stages.prune_published(plan, published(args.results, p, plan))
        if len(kept) < len(plan):
          print(f'{p}: {len(plan) - len(kept)} stages whose results are in {os.path.join(args.results, p)} are left '
                'out (--rerun-published runs them again)', file=sys.stderr if not args.dry_run else sys.stdout)
        plan = kept
      if args.dry_run:
        print(stages.describe(root, plan, args.jobs))
        continue
      write_plan_settings(args.results, p, overrides, args.samples)
      copy_results(root, plan, args.results, p)   # what finished earlier, under the stages' current hashes
      start = time.time()
      ran = stages.run_plan(root, plan, progress=not args.noprogress,
                            log=lambda m: print(m, file=sys.stderr, flush=True),
                            on_done=lambda s, p=p, root=root: copy_result(root, s, args.results, p),
                            jobs=args.jobs)
      copied = copy_results(root, plan, args.results, p)
      print(f'{p}: {len(ran)} stages ran in {(time.time() - start) / 60:.1f} min; {copied} result files in '
            f'{args.results or "(not copied)"}')
  except (ValueError, OSError, RuntimeError) as e:
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
