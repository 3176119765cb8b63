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


def tiny_config():
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
  return config


def test_toy_runs_end_to_end(tmp_path):
  config = tiny_config()
  # the evaluation's test set and sample count replace the config's (400 points: 320 D_g + 80 D_f)
  md, results = toy_gmm2d.run_toy(config, str(tmp_path), ['standard', 'orthogonal'], progress=False,
                                  preset_names=['toy-best'], num_test=400, num_samples=150)
  for name in ('toy_table.md', 'toy_table.csv', 'toy_results.json', 'toy_figure.png'):
    assert os.path.getsize(tmp_path / name) > 0
  assert '| standard |' in md and '| orthogonal |' in md and '| p_g (exact) |' in md
  assert 'to frontier (paper)' in md
  assert 'inf' not in md and '320 D_g and 80 D_f test points' in md and '150 per model' in md
  # the preset's run uses the Unseen run and a noisy classifier (both trained for it)
  assert '| obtuse + toy-best |' in md
  preset_cfg = json.load(open(tmp_path / 'toy-best' / 'config.json'))['unlearn']
  assert preset_cfg['obtuse_form'] == 'hole'
  assert preset_cfg['reference'] == str(tmp_path / 'unseen' / 'checkpoints' / 'checkpoint_1.pth')
  assert preset_cfg['classifier'] == str(tmp_path / 'noisy_classifier' / 'noisy_classifier.pth')
  saved = json.load(open(tmp_path / 'toy_results.json'))['results']
  assert saved['standard']['step'] == 40
  assert saved['orthogonal']['retain']['nats']['n'] == 320 and saved['orthogonal']['forget']['nats']['n'] == 80
  assert json.load(open(tmp_path / 'toy_results.json'))['num_test'] == {'retain': 320, 'forget': 80}
  assert json.load(open(tmp_path / 'toy_results.json'))['ode_tol'] == {'rtol': 1e-3, 'atol': 1e-3}
  assert len(results['standard']['samples']) == 150 and len(results['p_g (exact)']['samples']) == 150
  for name in ('standard', 'orthogonal', 'obtuse + toy-best', 'p_data (exact)', 'p_g (exact)'):
    assert saved[name]['frontier']['status'] in ('below', 'within', 'below_entropy', 'beyond')
  # the training configs keep the config's test set size (only the evaluation changes)
  assert json.load(open(tmp_path / 'standard' / 'config.json'))['data']['num_test'] == 300
  # the exact rows: under p_data D_g and D_f cost about 3.6 and 3.9 nats, under p_g D_f is much dearer
  exact, retain_only = saved['p_data (exact)'], saved['p_g (exact)']
  assert exact['retain']['nats']['mean'] == pytest.approx(3.62, abs=0.25)
  assert exact['forget']['nats']['mean'] == pytest.approx(3.87, abs=0.25)
  assert retain_only['forget']['nats']['mean'] == pytest.approx(5.15, abs=0.35)
  # a second call reuses the finished runs (nothing retrained): same checkpoint step
  toy_gmm2d.run_toy(config, str(tmp_path), ['standard'], progress=False)
  saved = json.load(open(tmp_path / 'toy_results.json'))
  assert saved['results']['standard']['step'] == 40
  assert saved['results']['standard']['retain']['nats']['n'] == 240     # without num_test: the config's 300


def _row(g, f, sem_g, sem_f):
  return {'retain': {'nats': {'mean': g, 'sem': sem_g}}, 'forget': {'nats': {'mean': f, 'sem': sem_f}},
          'centre_percent': 5., 'beyond_8_percent': 0.}


def test_table_formatter_words_for_within_error_and_below_the_entropy():
  """Hand-made rows: one clearly inside, one whose ±2 SE interval crosses the frontier, one with D_g under
  H(p_g), one beyond it by far more than its error: no signed distance beyond the frontier, no inf."""
  from evaluation import frontier as fr
  g = fr.from_paper_scale(10.70)
  F = fr.max_forget_nll(g)
  h = fr.entropy_retain()
  results = {'inside': _row(g, F - 5., 0.005, 0.05), 'crossing': _row(g, F + 0.3, 0.005, 0.05),
             'low': _row(h - 0.003, 5.0, 0.008, 0.05), 'broken': _row(g, F + 5., 0.005, 0.05)}
  cells = {r['model']: r['to frontier (paper)'] for r in toy_gmm2d.table_rows(results)}
  assert cells['inside'] == '3.61 ± 0.20 below'
  assert cells['crossing'] == 'on the frontier (within error)'
  assert cells['low'] == 'D_g below H(p_g): no cost measurable'
  assert cells['broken'].startswith('CHECK: 3.61 ± 0.20 beyond the frontier')
  assert not any('inf' in c or c.startswith('-') or c.startswith('−') for c in cells.values())


def test_table_note_names_the_test_points():
  note = toy_gmm2d.table_note(16000, 4000, 1000, 1e-4)
  assert '16,000 D_g and 4,000 D_f test points' in note and '1,000 per model' in note and 'tolerance 0.0001' in note
  assert 'within error' in note


def test_runs_far_beyond_the_retain_entropy_are_listed_off_scale():
  """A run whose D_g is more than a nat above H(p_g) (ascent that broke the model) is kept out of the frontier
  panel; runs near the frontier stay."""
  from evaluation import frontier
  from experiments import toy_gmm2d
  h = frontier.entropy_retain()
  runs = {'near': (h + 0.02, 5.0, 0.01, 0.03), 'edge': (h + 0.99, 6.0, 0.02, 0.05), 'broken': (h + 5.7, 11.6, 0.02, 0.01)}
  assert toy_gmm2d.off_scale(runs) == ['broken']


def test_runs_side_by_side_give_the_same_table(tmp_path):
  """--jobs 2 (processes of one thread) trains and evaluates exactly what one process does (one thread, as in
  the tests): the preset waits for its reference model, the fine-tuned method for the Standard run."""
  config = tiny_config()
  kwargs = dict(progress=False, preset_names=['toy-ratio'], num_test=200, num_samples=50, methods=['finetune'],
                method_steps=10)
  _, one = toy_gmm2d.run_toy(config, str(tmp_path / 'one'), ['standard'], jobs=1, **kwargs)
  _, two = toy_gmm2d.run_toy(config, str(tmp_path / 'two'), ['standard'], jobs=2, **kwargs)
  assert set(one) == set(two) == {'p_data (exact)', 'p_g (exact)', 'standard', 'obtuse + toy-ratio',
                                  'finetune (ft)'}
  for name in ('standard', 'obtuse + toy-ratio', 'finetune (ft)'):
    for part in ('retain', 'forget'):
      assert two[name][part]['nats']['mean'] == one[name][part]['nats']['mean']
    assert (two[name]['samples'] == one[name]['samples']).all()
  preset_cfg = json.load(open(tmp_path / 'two' / 'toy-ratio' / 'config.json'))['unlearn']
  assert preset_cfg['reference'] == str(tmp_path / 'two' / 'unseen' / 'checkpoints' / 'checkpoint_1.pth')
  assert json.load(open(tmp_path / 'two' / 'ft-finetune' / 'config.json'))['training']['pretrained'] == \
      str(tmp_path / 'two' / 'standard' / 'checkpoints' / 'checkpoint_1.pth')
