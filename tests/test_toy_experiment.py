"""The 2-D toy experiment end to end on a tiny budget, and its exact reference rows."""
import json
import os

import pytest

from configs.toy.gmm2d import get_config
from experiments import toy_gmm2d


def test_paper_scale_conversion():
  from evaluation.frontier import to_paper_scale
  # nats / (2 ln 2) + 8: the MSGM.md pairs 3.625 nats -> 10.62 and 5.153 -> 11.72
  assert to_paper_scale(3.625) == pytest.approx(10.615, abs=1e-3)
  assert to_paper_scale(5.153) == pytest.approx(11.717, abs=1e-3)


def test_toy_runs_end_to_end(tmp_path):
  config = get_config()
  t = config.training
  t.n_iters = 40
  t.snapshot_freq = 40
  t.snapshot_freq_for_preemption = 20
  t.log_freq = 20
  t.eval_freq = 20
  t.snapshot_sampling = False
  config.model.hidden_dims = (32, 32)
  config.model.num_scales = 50
  config.data.num_train = 2000
  config.data.num_test = 300
  config.eval.num_samples = 200
  config.eval.batch_size = 300
  config.sampling.ode_rtol = config.sampling.ode_atol = 1e-3
  config.device = 'cpu'
  config.noisy_classifier.n_iters = 40
  md, results = toy_gmm2d.run_toy(config, str(tmp_path), ['standard', 'orthogonal'], progress=False,
                                  preset_names=['toy-best'])
  for name in ('toy_table.md', 'toy_table.csv', 'toy_results.json', 'toy_figure.png'):
    assert os.path.getsize(tmp_path / name) > 0
  assert '| standard |' in md and '| orthogonal |' in md and '| p_g (exact) |' in md
  assert 'to frontier (paper)' in md
  # the preset's run uses the Unseen run and a noisy classifier (both trained for it)
  assert '| obtuse + toy-best |' in md
  preset_cfg = json.load(open(tmp_path / 'toy-best' / 'config.json'))['unlearn']
  assert preset_cfg['obtuse_form'] == 'hole'
  assert preset_cfg['reference'] == str(tmp_path / 'unseen' / 'checkpoints' / 'checkpoint_1.pth')
  assert preset_cfg['classifier'] == str(tmp_path / 'noisy_classifier' / 'noisy_classifier.pth')
  saved = json.load(open(tmp_path / 'toy_results.json'))['results']
  assert saved['standard']['step'] == 40
  assert saved['orthogonal']['retain']['nats']['n'] == 240 and saved['orthogonal']['forget']['nats']['n'] == 60
  # the exact rows: under p_data D_g and D_f cost about 3.6 and 3.9 nats, under p_g D_f is much dearer
  exact, retain_only = saved['p_data (exact)'], saved['p_g (exact)']
  assert exact['retain']['nats']['mean'] == pytest.approx(3.62, abs=0.25)
  assert exact['forget']['nats']['mean'] == pytest.approx(3.87, abs=0.25)
  assert retain_only['forget']['nats']['mean'] == pytest.approx(5.15, abs=0.35)
  # a second call reuses the finished runs (nothing retrained): same checkpoint step
  toy_gmm2d.run_toy(config, str(tmp_path), ['standard'], progress=False)
  assert json.load(open(tmp_path / 'toy_results.json'))['results']['standard']['step'] == 40
