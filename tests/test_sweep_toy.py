"""The toy sweep: grid parsing, and a tiny grid end to end (table, JSON, figure)."""
import json
import os

import pytest

from toy_configs import tiny_toy_config
from experiments import sweep_toy


def tiny():
  return tiny_toy_config(20, width=16, num_scales=30, num_train=600, num_test=100, num_samples=100, eval_batch=100)


def test_parse_grid_types_and_refusals():
  config = tiny()
  axes = sweep_toy.parse_grid(['unlearn.alpha=0.9,0.95', 'unlearn.forget_every=1,4',
                               'unlearn.obtuse_form=linear,target'], config)
  assert axes == [('unlearn.alpha', [0.9, 0.95]), ('unlearn.forget_every', [1, 4]),
                  ('unlearn.obtuse_form', ['linear', 'target'])]
  assert len(list(sweep_toy.combinations(axes))) == 8
  with pytest.raises(ValueError, match="unknown config key 'unlearn.alfa'"):
    sweep_toy.parse_grid(['unlearn.alfa=1'], config)
  with pytest.raises(ValueError, match='not of the form'):
    sweep_toy.parse_grid(['unlearn.alpha'], config)


def test_tiny_sweep_end_to_end(tmp_path):
  rows = sweep_toy.sweep(tiny(), str(tmp_path), 'norm',
                         sweep_toy.parse_grid(['unlearn.obtuse_form=linear,target'], tiny()))
  assert [r['run'] for r in rows] == ['obtuse_form=linear', 'obtuse_form=target']
  for name in ('sweep_table.md', 'sweep_table.csv', 'sweep_results.json', 'sweep_figure.png'):
    assert os.path.getsize(tmp_path / name) > 0
  saved = json.load(open(tmp_path / 'sweep_results.json'))['rows']
  assert saved[1]['unlearn.obtuse_form'] == 'target'
  # the run really used the swept value
  assert json.load(open(tmp_path / 'obtuse_form=target' / 'config.json'))['unlearn']['obtuse_form'] == 'target'
  for r, run in zip(saved, ('obtuse_form=linear', 'obtuse_form=target')):
    assert r['D_g paper'] == pytest.approx(r['D_g nats'] / (2 * 0.6931471805599453) + 8)
    # standard errors on the paper scale: the run's own evaluation (nats) divided by 2 ln 2
    ev = json.load(open(tmp_path / run / 'eval' / 'results.json'))['nll_nats']
    assert r['D_g sem paper'] == pytest.approx(ev['retain']['sem'] / (2 * 0.6931471805599453))
    assert r['D_f sem paper'] == pytest.approx(ev['forget']['sem'] / (2 * 0.6931471805599453))
