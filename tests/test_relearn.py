"""The relearning attack (evaluation/relearn.py, --mode relearn): settings and their refusals, the area under
the curve, the attack's step bookkeeping, the files it writes, and on the 2-D toy that it brings back the forget
component of a model that only hid it faster than Unseen learns it."""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from scipy.integrate import trapezoid

import datasets
import run_lib
from evaluation import relearn as R
from evaluation import run as E
from configs.toy.gmm2d import get_config
from toy_configs import tiny_toy_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_settings_and_their_refusals():
  config = tiny_toy_config()
  s = R.get_settings(config, 200)
  assert s == R.RelearnSettings((8, 32, 128), (0, 50, 100, 200), config.optim.lr, 32, config.eval.num_samples)
  config.relearn.k, config.relearn.lr, config.relearn.num_samples = '32, 8', 1e-4, 50
  assert R.get_settings(config, 200)[::2] == ((8, 32), 1e-4, 50)
  bad = [('k', '8,300', 'holds 200'), ('k', '8,8', 'repeats'), ('k', '0', '>= 1'), ('k', '8,a', 'integers'),
         ('k', ' , ', 'empty'), ('steps', '0,50,50', 'strictly increasing'), ('steps', '100,50', 'strictly'),
         ('steps', '-5,10', '>= 0'), ('steps', '0,1.5', 'integers'), ('lr', -1., 'relearn.lr'),
         ('batch_size', 0, 'relearn.batch_size')]
  for key, value, message in bad:
    c = tiny_toy_config()
    c.relearn[key] = value
    with pytest.raises(ValueError, match=message):
      R.get_settings(c, 200)


def test_area_under_the_curve():
  area = R.curve_area([0, 50, 100, 200], [10., 20., 20., 40.])
  assert area['percent_steps'] == pytest.approx(50 * 15 + 50 * 20 + 100 * 30)   # 4750 %·steps
  assert area['mean_percent'] == pytest.approx(4750 / 200)
  steps, ur = [5, 7, 30, 31, 90], [3., 9., 1., 50., 7.]
  assert R.curve_area(steps, ur)['percent_steps'] == pytest.approx(trapezoid(ur, steps))
  assert R.curve_area([100], [12.5]) == {'percent_steps': 0., 'mean_percent': 12.5}
  assert R.curve_area([0, 10], [30., 30.])['mean_percent'] == pytest.approx(30.)   # a flat curve: its value
  with pytest.raises(ValueError):
    R.curve_area([0, 1], [1.])


def test_attack_items_are_seeded_nested_and_distinct():
  a = R.attack_items(200, 128, seed=7)
  assert torch.equal(a, R.attack_items(200, 128, seed=7)) and len(set(a.tolist())) == 128
  assert not torch.equal(a, R.attack_items(200, 128, seed=8))
  assert torch.equal(R.attack_items(200, 8, seed=7), a[:8])       # the 8 items lie inside the 128


class Counter:
  """An endless batch iterator that counts the batches taken."""

  def __init__(self):
    self.taken = 0

  def __iter__(self):
    return self

  def __next__(self):
    self.taken += 1
    return torch.ones(4, 3)


def test_attack_bookkeeping():
  """The model is measured after exactly the listed numbers of optimiser steps; step 0 reuses a given value."""
  model = torch.nn.Linear(3, 1)
  batches, log = Counter(), []

  def measure(m):
    log.append(batches.taken)
    return {'after': batches.taken}, 7

  loss_fn = lambda m, x, g: (m(x) ** 2).mean(dim=1)  # noqa: E731
  opt = torch.optim.SGD(model.parameters(), lr=0.01)
  points = R.attack(model, loss_fn, batches, (0, 3, 10), measure, opt, grad_clip=1.,
                    first=({'after': 'shared'}, 0))
  assert [p['step'] for p in points] == [0, 3, 10] and log == [3, 10] and batches.taken == 10
  assert points[0]['value'] == {'after': 'shared'} and points[0]['loss'] is None
  assert points[1]['value'] == {'after': 3} and points[1]['loss'] > points[2]['loss'] > 0   # it trains
  points = R.attack(torch.nn.Linear(3, 1), loss_fn, Counter(), (2, 5), measure, opt)
  assert [p['step'] for p in points] == [2, 5]                     # no step 0: nothing shared
  nan_loss = lambda m, x, g: m(x).mean(dim=1) * float('nan')  # noqa: E731
  with pytest.raises(FloatingPointError, match='between steps 0 and 4'):
    R.attack(torch.nn.Linear(3, 1), nan_loss, Counter(), (0, 4), measure, opt)


@pytest.fixture(scope='module')
def small_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('relearn'))
  config = tiny_toy_config(20)
  run_lib.train(config, workdir, 'standard', progress=False)
  return config, workdir


def small_attack(config):
  config = copy.deepcopy(config)
  config.relearn.k, config.relearn.steps, config.relearn.lr = '4,16', '0,3,6', 1e-3
  config.eval.num_samples = 64
  return config


def test_mode_writes_the_curve_the_plot_and_matches_eval_at_step_0(small_run):
  config, workdir = small_run
  config = small_attack(config)
  out = R.run_relearn(config, workdir, 'standard', progress=False)
  saved = json.load(open(os.path.join(workdir, 'eval', 'relearn.json')))
  assert saved['task'] == 'standard' and saved['dataset'] == 'GMM2D' and saved['step'] == 20
  assert [c['k'] for c in saved['curves']] == [4, 16] and saved['settings']['steps'] == [0, 3, 6]
  assert saved['items']['positions'] == R.attack_items(200, 16, datasets.derive_seed(42, 'relearn', 'items')).tolist()
  for c in saved['curves']:
    assert [p['step'] for p in c['points']] == [0, 3, 6] and c['batch_size'] == min(32, c['k'])
    for p in c['points']:
      assert p['ci95'][0] <= p['percent'] <= p['ci95'][1] and p['num_samples'] == 64
    assert c['area'] == R.curve_area([0, 3, 6], [p['percent'] for p in c['points']])
  assert saved['curves'][0]['points'][0] == saved['curves'][1]['points'][0]       # one unattacked model
  assert os.path.getsize(os.path.join(workdir, 'eval', 'relearn.png')) > 1000
  assert out['curves'] == saved['curves']
  # step 0 is the evaluated model, sampled from the same noise as --mode eval
  config.eval.enable_bpd = False
  ev = E.evaluate(config, workdir, 'standard', 'eval_ur', progress=False)
  assert ev['unlearning_ratio']['percent'] == saved['curves'][0]['points'][0]['percent']
  # each point says what the samples were read as: the same counts as --mode eval at step 0, all samples counted
  assert ev['unlearning_ratio']['class_histogram'] == saved['curves'][0]['points'][0]['class_histogram']
  assert all(sum(p['class_histogram'].values()) == p['num_samples'] for c in saved['curves'] for p in c['points'])
  # the same seed gives the same curves
  again = R.relearning_of_checkpoint(config, saved['checkpoint'])
  assert again['curves'] == saved['curves']
  assert '| 4 |' in R.markdown(saved)


def test_mode_refuses_bad_input_before_writing(small_run, tmp_path):
  config, workdir = small_run
  config = small_attack(config)
  config.relearn.k = '8,500'
  with pytest.raises(ValueError, match='holds 200'):
    R.run_relearn(config, workdir, 'standard', 'refused', progress=False)
  assert not os.path.exists(os.path.join(workdir, 'refused'))
  with pytest.raises(E.EvaluationError, match='no checkpoint'):
    R.run_relearn(small_attack(config), str(tmp_path / 'empty'), 'standard', progress=False)
  assert not os.path.exists(tmp_path / 'empty')


def test_cli_relearn(tmp_path):
  base = ['--config', 'configs/toy/gmm2d.py', '--workdir', str(tmp_path / 'w'), '--progress=false',
          '--config.training.n_iters=2', '--config.training.snapshot_freq=2', '--config.data.num_train=500',
          '--config.model.num_scales=50']
  config = get_config()   # the same run as --mode train with these overrides, in this process
  t = config.training
  t.n_iters, t.snapshot_freq, config.data.num_train, config.model.num_scales = 2, 2, 500, 50
  run_lib.train(config, str(tmp_path / 'w'), 'standard', progress=False)
  attack = ['--mode', 'relearn', '--config.relearn.steps=0,2', '--config.relearn.num_samples=20',
            '--config.relearn.k=4']   # refusals: tested in-process above (main.py prints a ValueError as one line)
  r = subprocess.run([sys.executable, 'main.py', *base, *attack], cwd=ROOT, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr
  assert '# Relearning attack on standard' in r.stdout
  assert json.load(open(tmp_path / 'w' / 'eval' / 'relearn.json'))['curves'][0]['k'] == 4


def test_the_attack_brings_back_what_a_model_only_hid(tmp_path):
  """A Standard model fine-tuned with NegGrad+ for 100 steps stops generating the centre component (its UR falls
  below Unseen's), but its weights still hold it: fine-tuning on 8 D_f training items brings the component
  back, and faster than Unseen (trained as long as Standard, on D_g) learns it from the same items, batches and
  noise. On this toy a 2-layer MLP learns a Gaussian blob from scratch within tens of steps, so the gap is
  modest: over 50 steps the hider's UR rises 17.5, 7.1, 7.2 and 7.5 points more than Unseen's (config.seed 42, 1,
  2, 3; from 5.2 to 53.8 % against 14.4 to 45.6 % with seed 42), and the margin asserted is 3 points."""
  def config_of(n_iters):
    c = tiny_toy_config(n_iters, width=64)
    c.model.ema_rate = 0.98    # an EMA that follows a few hundred steps
    return c

  run_lib.train(config_of(400), str(tmp_path / 'standard'), 'standard', progress=False)
  run_lib.train(config_of(400), str(tmp_path / 'unseen'), 'unseen', progress=False)
  hider = config_of(100)
  hider.training.pretrained = str(tmp_path / 'standard' / 'checkpoints' / 'checkpoint_1.pth')
  run_lib.train(hider, str(tmp_path / 'hidden'), 'neggrad', finetune=True, progress=False)
  attack = config_of(400)
  attack.relearn.k, attack.relearn.steps, attack.relearn.lr = '8', '0,25,50', 3e-4
  attack.eval.num_samples = attack.eval.batch_size = 2000
  curve = {}
  for name, task in (('hidden', 'neggrad'), ('unseen', 'unseen')):
    out = R.run_relearn(attack, str(tmp_path / name), task, progress=False)
    curve[name] = [p['percent'] for p in out['curves'][0]['points']]
  hid, uns = curve['hidden'], curve['unseen']
  assert hid[0] < uns[0] - 3                       # it hides: fewer centre samples than a model that never saw one
  assert hid[-1] - hid[0] > 30                      # the attack brings the component back
  assert (hid[-1] - hid[0]) - (uns[-1] - uns[0]) > 3   # faster than Unseen learns it
