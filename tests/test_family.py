"""experiments.family end to end on the 2-D toy: every stage (the pretrained copy, Unseen trained here, two
methods fine-tuned, each evaluated and attacked), the report's columns, reuse of finished stages, and the
same numbers when the models run side by side (--jobs 2) as in one process."""
import json
import os

from experiments import family
import run_lib
from toy_configs import tiny_toy_config


def small_config():
  config = tiny_toy_config(20, num_samples=64)
  config.relearn.k, config.relearn.steps, config.relearn.num_samples = '4', '0,3', 32
  config.mia.num_items, config.mia.num_draws = 40, 2
  return config


def numbers(folder):
  r = json.load(open(os.path.join(folder, 'eval', 'results.json')))
  curves = json.load(open(os.path.join(folder, 'eval', 'relearn.json')))['curves']
  return (r['step'], r['unlearning_ratio']['percent'], r['nll_bpd']['retain']['mean'],
          r['nll_bpd']['forget']['mean'], r['membership']['auc'],
          [(p['percent'], p['loss']) for c in curves for p in c['points']])


def test_family_runs_every_stage_and_side_by_side_gives_the_same_numbers(tmp_path):
  config = small_config()
  pre = str(tmp_path / 'pre')
  run_lib.train(config, pre, 'standard', progress=False)
  pretrained = run_lib.latest_checkpoint(pre)[0]
  methods = ['finetune', 'neggrad']
  tables = {}
  for jobs in (1, 2):
    tables[jobs] = family.run(config, str(tmp_path / f'w{jobs}'), pretrained, '', methods, 5, progress=False,
                              jobs=jobs)
  for name in ('standard', 'unseen', 'finetune', 'neggrad'):
    one, two = numbers(tmp_path / 'w1' / name), numbers(tmp_path / 'w2' / name)
    assert one == two, name
  assert numbers(tmp_path / 'w1' / 'standard')[0] == 20 and numbers(tmp_path / 'w1' / 'finetune')[0] == 5
  md = open(tmp_path / 'w2' / 'family.md').read()
  for column in ('Standard', 'Unseen', 'FT', 'NegGrad+'):
    assert column in md
  # a second call finds every stage done: nothing is trained, evaluated or attacked again
  stamp = {p: os.path.getmtime(p) for p in (tmp_path / 'w2' / 'finetune' / 'eval' / 'results.json',
                                            tmp_path / 'w2' / 'neggrad' / 'eval' / 'relearn.json')}
  family.run(config, str(tmp_path / 'w2'), pretrained, '', methods, 5, progress=False, jobs=2)
  assert {p: os.path.getmtime(p) for p in stamp} == stamp
