"""Downstream tasks end to end (evaluation/downstream.py): inpainting and reconstruction of D_g and D_f test
digits, results.json, grids, Tables 5/6 in the report, the Clean column, and the refusals of bad input."""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch

import datasets
import run_lib
import sde_lib
from configs.default_configs import get_base_config
from evaluation import classifier as C
from evaluation import downstream as D
from evaluation import fid as fid_lib
from evaluation import report as R
from evaluation import run as E

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digits_config(root):
  """8×8 digits, forget 3, a tiny NCSN++ on a VP SDE with 30 steps (as tests/test_eval_run.py)."""
  config = get_base_config()
  config.data.dataset, config.data.root, config.data.image_size, config.data.num_channels = 'DIGITS8X8', str(root), 8, 1
  config.data.centered, config.data.random_flip = True, False
  config.unlearn.forget = '3'
  m = config.model
  m.name, m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions = 'ncsnpp', 16, (1, 2), 1, ()
  m.embedding_type, m.num_scales, m.dropout, m.beta_max = 'positional', 30, 0., 10.
  t = config.training
  t.n_iters, t.snapshot_freq, t.snapshot_freq_for_preemption, t.batch_size, t.batch_size_un = 4, 4, 4, 16, 16
  t.snapshot_sampling, t.eval_freq = False, 0
  config.eval.batch_size, config.eval.enable_sampling = 8, False
  config.eval.downstream_num_images = 10
  config.sampling.ode_rtol = config.sampling.ode_atol = 1e-2
  config.device = 'cpu'
  return config


def projection_features():
  """A stand-in for Inception: a fixed random projection of the pixels (the real network is slow on a CPU)."""
  proj = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))

  def features(x):
    return x.mean(dim=1).reshape(len(x), -1) @ proj

  features.backend = 'test-projection'
  return features


@pytest.fixture(scope='module')
def digits_run(tmp_path_factory):
  """A 4-step model and a one-epoch classifier on the 8×8 digits; FID through the stand-in features."""
  tmp = tmp_path_factory.mktemp('downstream')
  config = digits_config(tmp / 'data')
  run_lib.train(config, str(tmp / 'run'), 'obtuse', progress=False)
  data = datasets.get_dataset(config, evaluation=True)
  arch = C.default_architecture(8, 1, 10)
  arch['kwargs']['width'] = 8
  net, meta = C.fit_classifier(data, 0, architecture=arch, progress=False, epochs=2)
  config.eval.classifier = str(tmp / 'classifier.pth')
  meta = C.save_classifier(net, meta, config.eval.classifier)
  return config, str(tmp / 'run'), meta


@pytest.fixture(autouse=True)
def stand_in_inception(monkeypatch):
  features = projection_features()
  monkeypatch.setattr(fid_lib, 'get_inception_features', lambda *a, **k: features)


def test_both_tasks_write_their_entries_grids_and_tables(digits_run, tmp_path):
  config, workdir, meta = digits_run
  results = D.evaluate_downstream(copy.deepcopy(config), workdir, 'obtuse', tasks=('inpainting', 'reconstruction'),
                                  progress=False)
  saved = json.load(open(os.path.join(workdir, 'eval', 'results.json')))
  assert saved == json.loads(json.dumps(results))
  assert saved['task'] == 'obtuse' and saved['step'] == 4 and saved['unlearning_ratio'] is None
  for task in D.TASKS:
    e = saved[task]
    assert e['num_images'] == {'retain': 10, 'forget': 10} and e['classifier']['sha256'] == meta['sha256']
    assert e['fid_backend'] == 'test-projection' and 'skipped' in e['clip']
    for part in D.PARTS:
      m = e[part]
      assert m['acc']['n'] == 10 and 0 <= m['acc']['percent'] <= 100
      assert m['psnr']['n'] == 10 and m['ssim']['mean'] <= 1
      assert (m['fid'] is not None) == (part == 'retain')
      assert os.path.isfile(os.path.join(workdir, 'eval', e['grids'][part]))
    assert e['clean']['retain']['fid']['num_samples'] == 10 and e['clean']['forget']['fid'] is None
  inp = saved['inpainting']
  assert inp['mask']['name'] == 'band' and inp['mask']['unknown_share'] == {'retain': 0.25, 'forget': 0.25}
  assert inp['sampler']['nfe'] == {'retain': 60, 'forget': 60}      # 2 batches × 30 Euler–Maruyama steps
  for part in D.PARTS:   # known pixels count in the whole-image values only: the masked ones are lower
    assert inp[part]['psnr_masked']['mean'] < inp[part]['psnr']['mean']
  assert saved['reconstruction']['t'] == 0.02 and saved['reconstruction']['perturbation']['std'] > 0
  assert os.path.isfile(os.path.join(workdir, 'eval', 'downstream.md'))
  # the report adds Tables 5 and 6 (Clean column + the run's column)
  table = R.report([workdir], str(tmp_path))
  for stem in ('table5', 'table6'):
    text = open(tmp_path / f'{stem}.md').read()
    assert '| Metric | Clean | Obt |' in text and 'ACC (%) D_f (↓)' in text
    assert (tmp_path / f'{stem}.csv').read_text().startswith('metric,Clean,Obt')
  assert 'PSNR of D_g, masked pixels' in open(tmp_path / 'table5.md').read()
  assert table.columns == ['Obt']


def test_known_pixels_are_the_originals_and_results_do_not_depend_on_the_batch_size(digits_run, tmp_path):
  config, workdir, _ = digits_run
  config = copy.deepcopy(config)
  config.eval.inpaint_mask, config.eval.inpaint_share = 'random', 0.4
  data = datasets.get_dataset(config, evaluation=True)
  sde = sde_lib.get_sde(config)
  model, _ = run_lib.load_ema_model(config, os.path.join(workdir, 'checkpoints', 'checkpoint_1.pth'), 'cpu')
  prepared = D.prepare(config, data, sde, 'cpu', ('inpainting',))
  a = prepared.inpaint(model, sde, str(tmp_path), 4, keep_images=True)
  for part in D.PARTS:
    x, mask, restored = a['images'][part]
    known = mask.expand_as(x)
    assert torch.equal(restored[known], x[known]) and not torch.equal(restored, x)
    assert abs((~mask).double().mean().item() - 0.4) < 1 / 64
  config.eval.batch_size = 10    # one batch instead of two: the same masks and prior draws per image
  b = D.prepare(config, data, sde, 'cpu', ('inpainting',)).inpaint(model, sde, str(tmp_path), 4, keep_images=True)
  for part in D.PARTS:
    assert torch.equal(a['images'][part][1], b['images'][part][1])


def test_identity_restoration_scores_the_classifier_accuracy(digits_run):
  """ACC of "restored" images that are the originals, over every test digit (D_g and D_f), is the test
  accuracy the classifier recorded when it was trained."""
  config, _, meta = digits_run
  config = copy.deepcopy(config)
  config.eval.downstream_num_images = 0
  data = datasets.get_dataset(config, evaluation=True)
  prepared = D.prepare(config, data, sde_lib.get_sde(config), 'cpu', ('reconstruction',))
  clean = prepared.clean()
  correct = clean['retain']['acc']['correct'] + clean['forget']['acc']['correct']
  n = clean['retain']['acc']['n'] + clean['forget']['acc']['n']
  assert n == len(data.test.full)
  assert correct / n == pytest.approx(meta['test_accuracy'], abs=1e-12)
  x, y, _ = prepared.images['forget']
  assert prepared._metrics(x, x, y, 'forget')['acc'] == clean['forget']['acc']


def test_eval_mode_adds_the_entries_and_inpaint_mode_keeps_the_other_results(digits_run):
  config, workdir, _ = digits_run
  config = copy.deepcopy(config)
  config.eval.enable_sampling, config.eval.num_samples = True, 8
  config.eval.reconstruct = True
  results = E.evaluate(config, workdir, 'obtuse', eval_folder='full', progress=False)
  assert results['unlearning_ratio']['num_samples'] == 8
  assert 'reconstruction' in results and 'inpainting' not in results
  # --mode inpaint afterwards adds its entry and keeps the Unlearning Ratio and the reconstruction
  config.eval.reconstruct = False
  D.evaluate_downstream(config, workdir, 'obtuse', eval_folder='full', tasks=('inpainting',), progress=False)
  saved = json.load(open(os.path.join(workdir, 'full', 'results.json')))
  assert {'unlearning_ratio', 'reconstruction', 'inpainting'} <= set(saved)
  assert saved['unlearning_ratio'] == json.loads(json.dumps(results['unlearning_ratio']))
  assert json.load(open(os.path.join(workdir, 'full', 'results_4.json'))) == saved


def run_cli(*args):
  return subprocess.run([sys.executable, 'main.py', *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_refuses_bad_input_with_one_line_and_writes_nothing(digits_run, tmp_path):
  """An unknown mask name, a share outside (0, 1), a classifier made for another data set."""
  digits_classifier = digits_run[0].eval.classifier
  base = ['--config', 'configs/mnist/mnist5k_small.py', '--workdir', str(tmp_path / 'w'), '--progress=false']
  cases = [
    (['--mode', 'inpaint', '--config.eval.inpaint_mask=ring'],
     "error: unknown inpainting mask 'ring'; valid: band, box, left, right, top, bottom, random"),
    (['--mode', 'inpaint', '--config.eval.inpaint_mask=random', '--config.eval.inpaint_share=1.5'],
     'error: eval.inpaint_share = 1.5: the share of masked pixels must lie in (0, 1)'),
    (['--mode', 'reconstruct', f'--config.eval.classifier={digits_classifier}'],
     'cannot classify this data: it was trained on DIGITS8X8, but the config\'s data set is MNIST5K'),
  ]
  for extra, expected in cases:
    r = run_cli(*base, *extra)
    assert r.returncode == 1, r.stderr
    assert expected in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not os.path.exists(tmp_path / 'w')


def test_eval_mode_refuses_bad_downstream_settings_before_writing(digits_run):
  config, workdir, _ = digits_run
  for key, value, match in (('inpaint_box', 0., r'eval.inpaint_box = 0: .* \(0, 1\)'),
                            ('inpaint_mask', 'ring', 'unknown inpainting mask'),
                            ('downstream_num_images', -1, 'downstream_num_images = -1')):
    bad = copy.deepcopy(config)
    bad.eval.inpaint, bad.eval.inpaint_mask = True, 'box'
    bad.eval[key] = value
    with pytest.raises(ValueError, match=match):
      E.evaluate(bad, workdir, 'obtuse', eval_folder='refused', progress=False)
  bad = copy.deepcopy(config)
  bad.eval.reconstruct, bad.eval.reconstruct_t = True, 2.
  with pytest.raises(D.DownstreamError, match=r'reconstruct_t = 2: .* \[0, T = 1\]'):
    E.evaluate(bad, workdir, 'obtuse', eval_folder='refused', progress=False)
  bad.eval.reconstruct_t, bad.data.dataset, bad.unlearn.forget = 0.02, 'GMM2D', 'centre'
  with pytest.raises(D.DownstreamError, match='need image data'):
    D.prepare(bad, datasets.get_dataset(bad, evaluation=True), sde_lib.get_sde(bad), 'cpu', ('reconstruction',))
  with pytest.raises(D.DownstreamError, match='unknown downstream task'):
    D.requested_tasks(config, ('denoising',))
  assert not os.path.exists(os.path.join(workdir, 'refused'))
