"""--mode eval end to end (toy and tiny images), dataset NLL against an exact Gaussian, and the CLI's refusals."""
import copy
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import datasets
import likelihood
import run_lib
from configs.default_configs import get_base_config
from evaluation import classifier as C
from evaluation import fid as fid_lib
from evaluation import nll as nll_lib
from evaluation import nll_items
from evaluation import run as E
from toy_configs import tiny_toy_config
from gaussian_models import GaussianScoreModel, log_density, make_sde

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = {'task', 'dataset', 'forget', 'checkpoint', 'step', 'unlearning_ratio', 'nll_bpd', 'fid', 'sampler',
          'classifier'}


def tiny_toy(n_iters=30):
  return tiny_toy_config(n_iters)


def test_dataset_nll_of_exact_gaussian_model():
  """Continuous data, exact score: the ODE NLL equals -log N(x) averaged over the points (within 1%)."""
  mean, cov = torch.tensor([0.5, -1.]), torch.tensor([[1.0, 0.3], [0.3, 0.5]])
  sde = make_sde('vp')
  x = mean + torch.randn(200, 2, generator=torch.Generator().manual_seed(0)) @ torch.linalg.cholesky(cov).T
  dataset = datasets.TensorPairDataset(x, torch.zeros(200, dtype=torch.long))
  ll_fn = likelihood.get_log_likelihood_fn(sde, eps=1e-5)
  ident = lambda v: v  # noqa: E731
  got = nll_lib.dataset_nll(ll_fn, GaussianScoreModel(sde, mean, cov), dataset, ident, ident, batch_size=64,
                            seed=1, dequantize=False)
  exact = -log_density(x, mean, cov).mean().item()
  assert got['nats']['mean'] == pytest.approx(exact, rel=0.01)
  assert got['nats']['n'] == 200
  assert got['bpd']['mean'] == pytest.approx(got['nats']['mean'] / (2 * math.log(2)) + 8, rel=1e-9)


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('toy'))
  config = tiny_toy()
  run_lib.train(config, workdir, 'obtuse', progress=False)
  return config, workdir


def test_toy_eval_writes_every_result(toy_run):
  config, workdir = toy_run
  config.eval.enable_bpd = True
  config.eval.enable_sampling = True
  config.eval.enable_loss = True
  results = E.evaluate(config, workdir, 'norm', progress=False, keep_samples=True)
  saved = json.load(open(os.path.join(workdir, 'eval', 'results.json')))
  assert SCHEMA <= set(saved)
  assert saved['task'] == 'obtuse' and saved['dataset'] == 'GMM2D' and saved['forget'] == ['centre']
  assert saved['step'] == 30
  assert {'percent', 'ci95', 'num_samples', 'class_histogram'} <= set(saved['unlearning_ratio'])
  assert saved['unlearning_ratio']['num_samples'] == 300
  assert sum(saved['unlearning_ratio']['class_histogram'].values()) == 300
  # the exact classifier: the share of samples whose highest-posterior component is the centre
  data = datasets.get_dataset(config, evaluation=True)
  centre = (data.density.posterior(results['samples'].double()).argmax(1) == 1).double().mean().item() * 100
  assert saved['unlearning_ratio']['percent'] == pytest.approx(centre)
  lo, hi = saved['unlearning_ratio']['ci95']
  assert lo <= saved['unlearning_ratio']['percent'] <= hi
  for part, n in (('retain', 160), ('forget', 40)):
    assert saved['nll_bpd'][part]['n'] == n
    assert saved['nll_bpd'][part]['mean'] == pytest.approx(saved['nll_nats'][part]['mean'] / (2 * math.log(2)) + 8)
  assert saved['sampler']['method'] == 'pc' and saved['sampler']['nfe'] == 100 * 3   # 3 batches of 100 steps
  assert saved['classifier']['sha256'] is None and saved['fid'] is None
  assert math.isfinite(saved['loss']['loss'])
  for name in ('results.md', 'results_30.json', 'samples_30.png'):
    assert os.path.exists(os.path.join(workdir, 'eval', name))
  # per-item NLLs for paired comparisons: their means are the reported ones, in both units
  items = nll_items.load_items(os.path.join(workdir, 'eval', 'nll_items_30.npz'))
  for part, n in (('retain', 160), ('forget', 40)):
    assert items[f'{part}_bpd'].shape == (n,)
    assert items[f'{part}_bpd'].mean() == pytest.approx(saved['nll_bpd'][part]['mean'], rel=1e-12)
    assert items[f'{part}_nats'].mean() == pytest.approx(saved['nll_nats'][part]['mean'], rel=1e-12)


def test_eval_loss_of_a_hole_run_uses_its_reference_and_ratio(tmp_path):
  """The test loss of ``obtuse_form='hole'`` needs the reference model and the density ratio, as training does."""
  run_lib.train(tiny_toy(4), str(tmp_path / 'ref'), 'unseen', progress=False)
  config = tiny_toy(4)
  config.unlearn.obtuse_form, config.unlearn.classifier = 'hole', 'exact'
  config.unlearn.reference = str(tmp_path / 'ref' / 'checkpoints' / 'checkpoint_1.pth')
  config.unlearn.hole_depth, config.unlearn.hole_log_ratio = 30., 3.5
  run_lib.train(config, str(tmp_path / 'run'), 'obtuse', progress=False)
  config.eval.enable_bpd = config.eval.enable_sampling = False
  config.eval.enable_loss = True
  with_hole = E.evaluate(config, str(tmp_path / 'run'), 'obtuse', 'eval_a', progress=False)['loss']
  config.unlearn.hole_depth = 0.        # no hole: the forget term only distils the reference
  without = E.evaluate(config, str(tmp_path / 'run'), 'obtuse', 'eval_b', progress=False)['loss']
  assert math.isfinite(with_hole['loss_f']) and with_hole['loss_f'] > without['loss_f']
  assert with_hole['loss_g'] == pytest.approx(without['loss_g'])


def test_samples_do_not_depend_on_the_batch_size(toy_run):
  """Each sample's starting noise is seeded by its index; a deterministic sampler (probability-flow PC)
  then gives the same samples whatever the batch size."""
  config, workdir = toy_run
  config.sampling.method, config.sampling.predictor, config.sampling.corrector = 'pc', 'reverse_diffusion', 'none'
  config.sampling.probability_flow = True
  config.eval.enable_bpd = False
  config.eval.num_samples = 40
  config.eval.batch_size = 40
  a = E.evaluate(config, workdir, 'obtuse', eval_folder='a', progress=False, keep_samples=True)['samples']
  config.eval.batch_size = 16
  b = E.evaluate(config, workdir, 'obtuse', eval_folder='b', progress=False, keep_samples=True)['samples']
  torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_resumed_evaluation_reuses_what_an_interrupted_one_left_and_gets_the_same_results(toy_run, monkeypatch):
  """``resume=True``: the per-item NLLs and the samples of an evaluation killed after them are reused (the
  functions that compute them are not called again), and the results equal those of an evaluation in one go."""
  config, workdir = toy_run
  config = copy.deepcopy(config)
  config.eval.enable_bpd = config.eval.enable_sampling = True
  config.eval.enable_loss = False
  whole = E.evaluate(config, workdir, 'obtuse', eval_folder='whole', progress=False)
  out = os.path.join(workdir, 'cut')

  def killed(*args, **kwargs):
    raise KeyboardInterrupt('killed after sampling')
  with monkeypatch.context() as m:
    m.setattr(E.ur_lib, 'unlearning_ratio_of_samples', killed)
    with pytest.raises(KeyboardInterrupt):
      E.evaluate(config, workdir, 'obtuse', eval_folder='cut', progress=False, resume=True)
  assert os.path.isfile(os.path.join(out, 'nll_items_30.npz')) and os.path.isfile(os.path.join(out, 'samples_30_all.pt'))
  assert not os.path.exists(os.path.join(out, 'results.json'))
  # leftovers of another config (any key) are not reused
  other = copy.deepcopy(config)
  other.mia.num_draws = int(config.mia.num_draws) + 1
  calls = []
  real_nll, real_samples = E.nll_lib.dataset_nll, E.generate_samples
  with monkeypatch.context() as m:
    m.setattr(E.nll_lib, 'dataset_nll', lambda *a, **k: calls.append('nll') or real_nll(*a, **k))
    m.setattr(E, 'generate_samples', lambda *a, **k: calls.append('samples') or real_samples(*a, **k))
    m.setattr(E.ur_lib, 'unlearning_ratio_of_samples', killed)
    with pytest.raises(KeyboardInterrupt):
      E.evaluate(other, workdir, 'obtuse', eval_folder='cut', progress=False, resume=True)
  assert calls == ['nll', 'nll', 'samples']
  with monkeypatch.context() as m:   # the original config again: its leftovers were overwritten, so compute once more
    m.setattr(E.ur_lib, 'unlearning_ratio_of_samples', killed)
    with pytest.raises(KeyboardInterrupt):
      E.evaluate(config, workdir, 'obtuse', eval_folder='cut', progress=False, resume=True)

  def again(*args, **kwargs):
    raise AssertionError('computed again')
  with monkeypatch.context() as m:
    m.setattr(E.nll_lib, 'dataset_nll', again)
    m.setattr(E, 'generate_samples', again)
    resumed = E.evaluate(config, workdir, 'obtuse', eval_folder='cut', progress=False, resume=True)
  for key in ('unlearning_ratio', 'nll_bpd', 'nll_nats'):
    assert resumed[key] == whole[key], key
  assert resumed['sampler']['nfe'] == whole['sampler']['nfe']
  assert not os.path.exists(os.path.join(out, 'samples_30_all.pt'))     # removed once the results are written
  assert not os.path.exists(os.path.join(out, 'resume_30.tag'))
  # a finished checkpoint is not evaluated again under resume ...
  with monkeypatch.context() as m:
    m.setattr(E.nll_lib, 'dataset_nll', again)
    m.setattr(E, 'generate_samples', again)
    assert E.evaluate(config, workdir, 'obtuse', eval_folder='cut', progress=False,
                      resume=True)['unlearning_ratio'] == whole['unlearning_ratio']
  # ... unless its mark is gone; a damaged or mismatched leftover is then computed again, not trusted
  os.remove(os.path.join(out, 'done_30.tag'))
  torch.save({'samples': torch.zeros(3, 2), 'nfe': 1}, os.path.join(out, 'samples_30_all.pt'))
  with open(os.path.join(out, 'nll_items_30.npz'), 'wb') as f:
    f.write(b'not a zip')
  again = E.evaluate(config, workdir, 'obtuse', eval_folder='cut', progress=False, resume=True)
  assert again['unlearning_ratio'] == whole['unlearning_ratio'] and again['nll_bpd'] == whole['nll_bpd']


def test_an_evaluation_stopped_during_the_nll_of_d_f_resumes_without_computing_d_g_again(toy_run, monkeypatch):
  """``resume=True``: D_g's per-item NLLs are kept as soon as they are computed, so an evaluation killed during D_f's
  computes only D_f's when resumed, and its results equal those of an evaluation in one go; a leftover of another
  config or a damaged one is computed again."""
  config, workdir = toy_run
  config = copy.deepcopy(config)
  config.eval.enable_bpd, config.eval.enable_sampling, config.eval.enable_loss = True, False, False
  config.eval.enable_fid = False
  whole = E.evaluate(config, workdir, 'obtuse', eval_folder='whole_nll', progress=False)
  out = os.path.join(workdir, 'cut_nll')
  real_nll = E.nll_lib.dataset_nll
  calls = []

  def kill_at_forget(*args, desc='', **kwargs):
    calls.append(desc)
    if desc == 'NLL forget':
      raise KeyboardInterrupt('killed during the NLL of D_f')
    return real_nll(*args, desc=desc, **kwargs)
  with monkeypatch.context() as m:
    m.setattr(E.nll_lib, 'dataset_nll', kill_at_forget)
    with pytest.raises(KeyboardInterrupt):
      E.evaluate(config, workdir, 'obtuse', eval_folder='cut_nll', progress=False, resume=True)
    assert calls == ['NLL retain', 'NLL forget']
    assert os.path.isfile(os.path.join(out, 'nll_part_30_retain.npz'))
    assert not os.path.exists(os.path.join(out, 'nll_items_30.npz'))
    calls.clear()   # another config does not reuse the kept D_g part
    other = copy.deepcopy(config)
    other.mia.num_draws = int(config.mia.num_draws) + 1
    with pytest.raises(KeyboardInterrupt):
      E.evaluate(other, workdir, 'obtuse', eval_folder='cut_nll', progress=False, resume=True)
    assert calls == ['NLL retain', 'NLL forget']
    calls.clear()   # its own config again (the leftover was overwritten by the other config's)
    with pytest.raises(KeyboardInterrupt):
      E.evaluate(config, workdir, 'obtuse', eval_folder='cut_nll', progress=False, resume=True)
    assert calls == ['NLL retain', 'NLL forget']
  calls.clear()
  with monkeypatch.context() as m:
    m.setattr(E.nll_lib, 'dataset_nll', lambda *a, desc='', **k: calls.append(desc) or real_nll(*a, desc=desc, **k))
    resumed = E.evaluate(config, workdir, 'obtuse', eval_folder='cut_nll', progress=False, resume=True)
  assert calls == ['NLL forget']
  for key in ('nll_bpd', 'nll_nats'):
    assert resumed[key] == whole[key], key
  assert not os.path.exists(os.path.join(out, 'nll_part_30_retain.npz'))   # removed once the results are written
  assert not os.path.exists(os.path.join(out, 'nll_part_30_forget.npz'))
  # a damaged part leftover is computed again, not trusted
  with open(os.path.join(out, 'nll_part_30_retain.npz'), 'wb') as f:
    f.write(b'not a zip')
  os.remove(os.path.join(out, 'done_30.tag'))
  calls.clear()
  with monkeypatch.context() as m:
    m.setattr(E.nll_lib, 'dataset_nll', lambda *a, desc='', **k: calls.append(desc) or real_nll(*a, desc=desc, **k))
    again = E.evaluate(config, workdir, 'obtuse', eval_folder='cut_nll', progress=False, resume=True)
  assert calls == ['NLL retain', 'NLL forget'] and again['nll_bpd'] == whole['nll_bpd']


def test_a_resumed_evaluation_of_several_checkpoints_starts_at_the_first_unfinished_one(tmp_path, monkeypatch):
  """eval.begin_ckpt..end_ckpt under ``resume=True``: killed during the second checkpoint, the evaluation resumes
  there (the first is not evaluated again) and ends with the same results as one in a go; a changed config
  evaluates both again."""
  config = tiny_toy(n_iters=20)
  config.training.snapshot_freq = 10
  workdir = str(tmp_path)
  run_lib.train(config, workdir, 'obtuse', progress=False)
  config.eval.begin_ckpt, config.eval.end_ckpt = 1, 2
  config.eval.enable_bpd, config.eval.enable_sampling, config.eval.enable_loss = False, True, False
  whole = E.evaluate(config, workdir, 'obtuse', eval_folder='whole', progress=False)
  assert whole['step'] == 20
  real = E.generate_samples
  calls = []

  def killed_at_20(*args, **kwargs):
    calls.append('samples')
    if len(calls) == 2:
      raise KeyboardInterrupt('killed during the second checkpoint')
    return real(*args, **kwargs)
  with monkeypatch.context() as m:
    m.setattr(E, 'generate_samples', killed_at_20)
    with pytest.raises(KeyboardInterrupt):
      E.evaluate(config, workdir, 'obtuse', eval_folder='cut', progress=False, resume=True)
  out = os.path.join(workdir, 'cut')
  assert os.path.isfile(os.path.join(out, 'results_10.json')) and not os.path.exists(os.path.join(out, 'results_20.json'))
  calls.clear()
  with monkeypatch.context() as m:
    m.setattr(E, 'generate_samples', lambda *a, **k: calls.append('samples') or real(*a, **k))
    resumed = E.evaluate(config, workdir, 'obtuse', eval_folder='cut', progress=False, resume=True)
    assert calls == ['samples']   # step 20 only
    assert resumed['unlearning_ratio'] == whole['unlearning_ratio'] and resumed['step'] == 20
    with open(os.path.join(out, 'results_10.json')) as f, open(os.path.join(workdir, 'whole', 'results_10.json')) as g:
      assert json.load(f)['unlearning_ratio'] == json.load(g)['unlearning_ratio']
    calls.clear()
    other = copy.deepcopy(config)
    other.eval.num_samples = int(config.eval.num_samples) + 1
    E.evaluate(other, workdir, 'obtuse', eval_folder='cut', progress=False, resume=True)
    assert calls == ['samples', 'samples']


def test_missing_checkpoints_are_refused_and_nothing_is_written(tmp_path, toy_run):
  config = tiny_toy()
  with pytest.raises(E.EvaluationError, match='no checkpoint'):
    E.evaluate(config, str(tmp_path), 'obtuse', progress=False)
  assert os.listdir(tmp_path) == []
  _, workdir = toy_run
  config.eval.begin_ckpt, config.eval.end_ckpt = 1, 3
  with pytest.raises(E.EvaluationError, match='checkpoint_2.pth, .*checkpoint_3.pth'):
    E.evaluate(config, workdir, 'obtuse', eval_folder='range', progress=False)
  assert not os.path.exists(os.path.join(workdir, 'range'))


def test_ode_budget_stops_the_evaluation_before_results_are_written(toy_run):
  config, workdir = toy_run
  config = copy.deepcopy(config)
  config.eval.enable_bpd, config.eval.enable_sampling = True, False
  config.sampling.ode_max_nfe = 3
  with pytest.raises(ValueError, match='needed more than 3 evaluations'):
    E.evaluate(config, workdir, 'obtuse', eval_folder='budget', progress=False)
  assert not os.path.exists(os.path.join(workdir, 'budget', 'results.json'))


def digits_config(root):
  config = get_base_config()
  config.data.dataset = 'DIGITS8X8'
  config.data.root = str(root)
  config.data.image_size = 8
  config.data.num_channels = 1
  config.data.centered = True
  config.data.random_flip = False
  config.unlearn.forget = '3'
  m = config.model
  m.name, m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions = 'ncsnpp', 16, (1, 2), 1, ()
  m.embedding_type, m.num_scales, m.dropout = 'positional', 30, 0.
  config.training.sde = 'vpsde'
  config.model.beta_max = 10.
  t = config.training
  t.n_iters, t.snapshot_freq, t.snapshot_freq_for_preemption, t.batch_size, t.batch_size_un = 4, 4, 4, 16, 16
  t.snapshot_sampling = False
  t.eval_freq = 0
  config.eval.num_samples, config.eval.batch_size, config.eval.bpd_num_samples = 20, 20, 10
  config.sampling.ode_rtol = config.sampling.ode_atol = 1e-2
  config.device = 'cpu'
  return config


def test_mnist_best_preset_trains_an_image_model_against_its_reference(tmp_path):
  import unlearning
  config = digits_config(tmp_path / 'data')
  run_lib.train(copy.deepcopy(config), str(tmp_path / 'unseen'), 'unseen', progress=False)
  config.unlearn.preset = 'mnist-best'
  config.unlearn.reference = str(tmp_path / 'unseen' / 'checkpoints' / 'checkpoint_1.pth')
  state = run_lib.train(config, str(tmp_path / 'run'), 'obtuse', progress=False)
  assert state['step'] == 4
  saved = json.load(open(tmp_path / 'run' / 'config.json'))['unlearn']
  assert {k: saved[k] for k in unlearning.all_presets()['mnist-best'][1]['unlearn']} == unlearning.all_presets()['mnist-best'][1]['unlearn']


def test_image_eval_with_classifier_and_fid(tmp_path, monkeypatch):
  config = digits_config(tmp_path / 'data')
  workdir = str(tmp_path / 'run')
  run_lib.train(config, workdir, 'square', progress=False)
  # without a classifier the evaluation refuses before writing anything
  with pytest.raises(C.ClassifierError, match='train_classifier'):
    E.evaluate(config, workdir, 'square', progress=False)
  assert not os.path.exists(os.path.join(workdir, 'eval'))
  data = datasets.get_dataset(config, evaluation=True)
  arch = C.default_architecture(8, 1, 10)
  arch['kwargs']['width'] = 8
  net, meta = C.fit_classifier(data, 0, architecture=arch, progress=False, epochs=1)
  config.eval.classifier = str(tmp_path / 'classifier.pth')
  meta = C.save_classifier(net, meta, config.eval.classifier)
  # a stand-in Inception: a fixed random projection of the pixels (the real one is slow on a CPU)
  proj = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))

  def features(images):
    return images.mean(dim=1).reshape(len(images), -1) @ proj

  features.backend = 'test-projection'

  monkeypatch.setattr(fid_lib, 'get_inception_features', lambda *a, **k: features)
  config.eval.enable_fid = True
  config.eval.enable_bpd = True
  config.data.root = str(tmp_path / 'data')
  results = E.evaluate(config, workdir, 'square', progress=False)
  assert SCHEMA <= set(results)
  assert results['classifier']['sha256'] == meta['sha256']
  assert results['unlearning_ratio']['num_samples'] == 20
  assert results['fid']['num_samples'] == 20 and results['fid']['value'] >= 0
  assert results['nll_bpd']['retain']['n'] == 10 and results['nll_bpd']['forget']['n'] == 10
  assert 'nll_nats' not in results
  assert results['fid']['backend'] == 'test-projection'


def run_cli(*args, cwd=ROOT):
  return subprocess.run([sys.executable, 'main.py', *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_refusals(tmp_path):
  r = run_cli('--config', 'configs/toy/gmm2d.py', '--workdir', str(tmp_path / 'w'), '--mode', 'eval')
  assert r.returncode == 1 and 'error: no checkpoint' in r.stderr
  r = run_cli('--config', 'configs/toy/gmm2d.py', '--workdir', str(tmp_path / 'w'), '--mode', 'train',
              '--task', 'forget_everything')
  assert r.returncode == 1 and "unknown task 'forget_everything'" in r.stderr
  r = run_cli('--config', 'configs/toy/gmm2d.py', '--workdir', str(tmp_path / 'w'), '--mode', 'train',
              '--config.model.nff=3')
  assert r.returncode != 0 and 'nff' in r.stderr
  r = run_cli('--config', 'configs/toy/gmm2d.py', '--workdir', str(tmp_path / 'w'), '--mode', 'train',
              '--config.unlearn.forget=middle')
  assert r.returncode == 1 and 'centre' in r.stderr
  r = run_cli('--config', 'configs/mnist/mnist5k_small.py', '--workdir', str(tmp_path / 'w'), '--mode', 'train',
              '--config.data.dataset=MNIST', f'--config.data.root={tmp_path}/nodata', '--config.data.download=False')
  assert r.returncode == 1 and 'MNIST5K' in r.stderr and 'Traceback' not in r.stderr
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')


def test_cli_noisy_classifier_and_hole_refusals(tmp_path):
  args = ['--config', 'configs/toy/gmm2d.py', '--workdir', str(tmp_path / 'nc'), '--mode', 'train_noisy_classifier',
          '--config.noisy_classifier.n_iters=5', '--config.data.num_train=500', '--progress=false']
  r = run_cli(*args)
  assert r.returncode == 0 and 'noisy classifier written to' in r.stdout, r.stderr
  written = os.path.getmtime(tmp_path / 'nc' / 'noisy_classifier.pth')
  r = run_cli(*args)
  assert r.returncode == 1 and 'exists already' in r.stderr and 'Traceback' not in r.stderr
  assert os.path.getmtime(tmp_path / 'nc' / 'noisy_classifier.pth') == written
  hole = ['--config', 'configs/toy/gmm2d.py', '--workdir', str(tmp_path / 'w'), '--mode', 'train', '--task', 'obtuse',
          '--config.unlearn.obtuse_form=hole', '--config.training.n_iters=2', '--progress=false']
  r = run_cli(*hole, f'--config.unlearn.reference={tmp_path}/nc/noisy_classifier.pth')
  assert r.returncode == 1 and 'not a score-model checkpoint' in r.stderr and 'Traceback' not in r.stderr
  r = run_cli('--config', 'configs/toy/gmm2d.py', '--workdir', str(tmp_path / 'ref'), '--mode', 'train', '--task',
              'unseen', '--config.training.n_iters=2', '--config.training.snapshot_freq=2', '--progress=false')
  assert r.returncode == 0, r.stderr
  hole.append(f'--config.unlearn.reference={tmp_path}/ref/checkpoints/checkpoint_1.pth')
  r = run_cli(*hole)
  assert r.returncode == 1 and 'needs a noisy density ratio' in r.stderr and 'Traceback' not in r.stderr
  r = run_cli(*hole, f'--config.unlearn.classifier={tmp_path}/missing.pth')
  assert r.returncode == 1 and 'no checkpoint file' in r.stderr and 'train_noisy_classifier' in r.stderr
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')
