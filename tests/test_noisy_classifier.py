"""The noisy density ratio of ``obtuse_form='hole'``: the exact mixture ratio and the trained classifier."""
import math
import os
import types

import pytest
import torch

import datasets
from unlearning import hole, noisy_classifier
import run_lib
import sde_lib
import utils
from tests.toy_configs import tiny_toy_config


def test_mixture_log_ratio_matches_the_perturbed_mixtures():
  """ℓ(x, t) = log p_f,t − log p_g,t against ``GaussianMixture.perturbed`` at each t separately."""
  density = datasets.gmm2d_density()
  sde = sde_lib.VPSDE()
  fn = noisy_classifier.mixture_log_ratio_fn(density, [1], sde)
  x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0)) * 2
  t = torch.tensor([1e-5, 0.01, 0.1, 0.3, 0.7, 1.])
  got = fn(x.double(), t.double())
  for i in range(6):
    mean, std = sde.marginal_prob(torch.ones(1, 1, dtype=torch.float64), t[i:i + 1].double())
    pf = density.restrict([1]).perturbed(float(mean), float(std))
    pg = density.restrict([0, 2]).perturbed(float(mean), float(std))
    expected = pf.log_prob(x[i:i + 1].double()) - pg.log_prob(x[i:i + 1].double())
    torch.testing.assert_close(got[i:i + 1], expected)
  # at t → 0 it is the toy's closed form 4 − log cosh(2(x₁ + x₂)) (docs/frontier.md)
  closed = 4. - torch.log(torch.cosh(2. * (x[:, 0] + x[:, 1]).double()))
  torch.testing.assert_close(fn(x.double(), torch.full((6,), 1e-9, dtype=torch.float64)), closed, atol=1e-6, rtol=0)
  with pytest.raises(ValueError, match='forget and retain components'):
    noisy_classifier.mixture_log_ratio_fn(density, [], sde)


def test_exact_ratio_refused_for_data_without_a_density():
  config = tiny_toy_config()
  config.unlearn.obtuse_form, config.unlearn.classifier = 'hole', 'exact'
  data = types.SimpleNamespace(density=None, name='MNIST5K')
  with pytest.raises(ValueError, match="classifier='exact' needs data from a known density"):
    hole.load_log_ratio(config, data, sde_lib.VPSDE(), 'cpu')


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  config = tiny_toy_config(num_train=4000, num_test=1000, width=64)
  config.noisy_classifier.n_iters = 600
  config.unlearn.forget_t_max = 0.1
  path = str(tmp_path_factory.mktemp('nc') / noisy_classifier.FILENAME)
  meta = noisy_classifier.train_noisy_classifier(config, path, progress=False)
  return config, path, meta


def test_trained_classifier_estimates_the_log_ratio(trained):
  """The logit against the exact ratio on noisy points of both classes: close where the data are."""
  config, path, meta = trained
  assert meta['t_min'] == pytest.approx(config.training.eps) and meta['t_max'] == 0.1
  # The Bayes balanced accuracy on the toy is about 0.89 (docs); a classifier far from the ratio falls short.
  assert meta['test_balanced_accuracy'] > 0.85
  sde = sde_lib.get_sde(config)
  data = datasets.get_dataset(config)
  learned = noisy_classifier.load_log_ratio_fn(path, config, sde, data, 'cpu')
  exact = noisy_classifier.mixture_log_ratio_fn(data.density, data.forget_indices, sde)
  x0, _ = data.density.sample(2000, generator=3)
  t = torch.rand(2000, generator=torch.Generator().manual_seed(4)) * 0.1
  mean, std = sde.marginal_prob(x0, t)
  x = mean + std[:, None] * torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
  with torch.no_grad():
    err = learned(x, t) - exact(x, t).float()
  near = exact(x, t).abs() < 4.     # where both classes have data (|ℓ| < 4 nats)
  assert err[near].abs().mean() < 0.3
  assert torch.corrcoef(torch.stack([learned(x, t)[near].detach(), exact(x, t)[near].float()]))[0, 1] > 0.97


def test_classifier_file_refusals(trained, tmp_path):
  config, path, _ = trained
  sde = sde_lib.get_sde(config)
  data = datasets.get_dataset(config)
  with pytest.raises(noisy_classifier.NoisyClassifierError, match='exists already'):
    noisy_classifier.train_noisy_classifier(config, path, progress=False)
  wide = config
  wide.unlearn.forget_t_max = 0.5                # the forget term reaches beyond the classifier's times
  with pytest.raises(noisy_classifier.NoisyClassifierError, match=r'trained on t in \[1e-05, 0.1\]'):
    noisy_classifier.load_log_ratio_fn(path, wide, sde, data, 'cpu')
  wide.unlearn.forget_t_max = 0.1
  other = types.SimpleNamespace(name=data.name, forget_indices=(0,), shape=data.shape)
  with pytest.raises(noisy_classifier.NoisyClassifierError, match='forget_indices'):
    noisy_classifier.load_log_ratio_fn(path, config, sde, other, 'cpu')
  obj = utils.load_file(path)
  key = sorted(obj['state_dict'])[0]
  obj['state_dict'][key] = obj['state_dict'][key] + 1.
  tampered = str(tmp_path / 'tampered.pth')
  torch.save(obj, tampered)
  with pytest.raises(noisy_classifier.NoisyClassifierError, match='do not match their recorded sha256'):
    noisy_classifier.load_log_ratio_fn(tampered, config, sde, data, 'cpu')
  truncated = str(tmp_path / 'truncated.pth')
  with open(path, 'rb') as f, open(truncated, 'wb') as g:
    g.write(f.read()[:200])
  with pytest.raises(noisy_classifier.NoisyClassifierError, match='truncated, corrupt'):
    noisy_classifier.load_log_ratio_fn(truncated, config, sde, data, 'cpu')
  with pytest.raises(noisy_classifier.NoisyClassifierError, match='no checkpoint file'):
    noisy_classifier.load_log_ratio_fn(str(tmp_path / 'missing.pth'), config, sde, data, 'cpu')
  assert os.path.getsize(path) > 0


def test_training_is_seeded(tmp_path):
  """The same config gives the same weights (same SHA-256); another seed gives others."""
  config = tiny_toy_config(num_train=500, num_test=100)
  config.noisy_classifier.n_iters = 15
  a = noisy_classifier.train_noisy_classifier(config, str(tmp_path / 'a.pth'), progress=False)
  b = noisy_classifier.train_noisy_classifier(config, str(tmp_path / 'b.pth'), progress=False)
  config.seed = 7
  c = noisy_classifier.train_noisy_classifier(config, str(tmp_path / 'c.pth'), progress=False)
  assert a['sha256'] == b['sha256'] != c['sha256']


def test_ratio_error_report(trained):
  """``experiments.noisy_ratio_error`` measures the trained logit against the exact ratio near the edge."""
  from experiments import noisy_ratio_error
  config, path, _ = trained
  r = noisy_ratio_error.ratio_error(path, seed=config.seed, t_max=0.02, n=4000, config=config)
  assert r['band_n'] > 1000                       # most forget points at small t have 3 < ℓ < 4.1
  assert abs(r['band_bias']) <= r['band_mae'] < 1. and r['mae'] < 0.5   # a 600-step classifier: rough at the edge


def test_hole_analytic_matches_one_dimensional_quadrature():
  """``experiments.hole_analytic`` (a 2-D grid) against ``frontier.tilted_nll`` (1-D adaptive quadrature along
  s) for q ∝ p_g e^{−Φ(ℓ)} with the toy's exact t = 0 ratio ℓ(s) = 4 − log cosh(2√2 s)."""
  from evaluation import frontier
  from experiments import hole_analytic
  depth, threshold, sharpness = 30., 3.5, 2.
  x, area = hole_analytic.grid(step=0.02, limit=9.)
  log_pg, log_pf = hole_analytic._log_densities(x)
  got = hole_analytic.hole_nll(log_pf - log_pg, depth, threshold, sharpness, x, area)

  def log_tilt(s):
    ell = 4. - math.log(math.cosh(2. * math.sqrt(2.) * s))
    return -depth / (1. + math.exp(-sharpness * (ell - threshold)))

  expected = frontier.tilted_nll(log_tilt)
  assert got[0] == pytest.approx(expected[0], abs=2e-3)
  assert got[1] == pytest.approx(expected[1], abs=2e-3)
  # the hole costs D_g and raises D_f against p_g itself
  assert got[0] > frontier.entropy_retain() + 0.01 and got[1] > frontier.cross_entropy(
      frontier.log_pf_1d, frontier.log_pg_1d) + 1.
  # the exact noisy ratio at a tiny t is the t = 0 ratio on the grid
  sde = sde_lib.VPSDE()
  fn = noisy_classifier.mixture_log_ratio_fn(datasets.gmm2d_density(), [1], sde)
  near = hole_analytic.log_ratio_on_grid(lambda z, t: fn(z.double(), t.double()), x[::997], 1e-6)
  torch.testing.assert_close(near, (log_pf - log_pg)[::997], atol=1e-3, rtol=0)


def _toy_exact_ratio():
  return noisy_classifier.mixture_log_ratio_fn(datasets.gmm2d_density(), [1], sde_lib.VPSDE())


def test_threshold_for_fraction_by_hand():
  """Forget points x ~ N(0, I) at t ≈ 0, where ℓ = 4 − log cosh(2√2 s), s = (x₁ + x₂)/√2 ~ N(0, 1): a share q
  has ℓ ≥ ℓ* exactly when |s| ≤ Φ⁻¹((1 + q)/2), so ℓ* = 4 − log cosh(2√2 Φ⁻¹((1 + q)/2))."""
  from scipy.stats import norm
  fn = _toy_exact_ratio()
  x0 = torch.randn(40000, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
  for q in (0.07, 0.2, 0.5):
    got = noisy_classifier.threshold_for_fraction(fn, x0, sde_lib.VPSDE(), (1e-6, 1e-6), q,
                                                   torch.Generator().manual_seed(0), repeats=1)
    s = norm.ppf((1 + q) / 2)
    expected = 4. - math.log(math.cosh(2 * math.sqrt(2) * s))
    # the quantile's sampling error: dℓ/ds · sd(s quantile) ≈ 2√2 tanh(2√2 s) · √(q(1−q)/n) / (2 φ(s)) < 0.01
    assert got == pytest.approx(expected, abs=0.01)


def test_threshold_for_fraction_follows_a_monotone_recalibration():
  """A classifier whose logit is 0.7 ℓ − 0.4 gets the threshold 0.7 ℓ* − 0.4: the same forget points are in the hole."""
  fn = _toy_exact_ratio()
  x0 = torch.randn(5000, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
  sde = sde_lib.VPSDE()
  exact = noisy_classifier.threshold_for_fraction(fn, x0, sde, (1e-3, 0.1), 0.1, torch.Generator().manual_seed(1))
  shrunk = noisy_classifier.threshold_for_fraction(lambda x, t: 0.7 * fn(x, t) - 0.4, x0, sde, (1e-3, 0.1), 0.1,
                                                   torch.Generator().manual_seed(1))
  assert shrunk == pytest.approx(0.7 * exact - 0.4, abs=1e-9)
  for bad in (0., 1., -0.1, 1.5):
    with pytest.raises(ValueError, match=r'hole_forget_fraction must lie in \(0, 1\)'):
      noisy_classifier.threshold_for_fraction(fn, x0, sde, (1e-3, 0.1), bad)
  with pytest.raises(ValueError, match='D_f is empty'):
    noisy_classifier.threshold_for_fraction(fn, x0[:0], sde, (1e-3, 0.1), 0.1)


def test_hole_forget_fraction_sets_and_records_the_threshold(tmp_path):
  """A hole run with ``unlearn.hole_forget_fraction`` trains with the resolved ℓ* and writes it to W/config.json;
  a bad fraction is refused before anything is written."""
  import json
  ref_dir = str(tmp_path / 'ref')
  run_lib.train(tiny_toy_config(4), ref_dir, 'unseen', progress=False)
  config = tiny_toy_config(3)
  u = config.unlearn
  u.obtuse_form, u.classifier, u.forget_every, u.forget_t_max = 'hole', 'exact', 1, 0.1
  u.reference = os.path.join(ref_dir, 'checkpoints', 'checkpoint_1.pth')
  u.hole_forget_fraction = 0.2
  run_lib.train(config, str(tmp_path / 'run'), 'obtuse', progress=False)
  saved = json.load(open(tmp_path / 'run' / 'config.json'))['unlearn']
  # independently: the toy's 200 forget training points (1,000 × 0.2) at t ~ U[eps, 0.1], with the same draws
  data = datasets.get_dataset(tiny_toy_config(3))
  x0 = torch.stack([data.train.forget[i][0] for i in range(len(data.train.forget))])
  gen = torch.Generator().manual_seed(datasets.derive_seed(config.seed, 'hole-threshold'))
  expected = noisy_classifier.threshold_for_fraction(_toy_exact_ratio(), x0, sde_lib.VPSDE(),
                                                     (config.training.eps, 0.1), 0.2, gen)
  assert saved['hole_log_ratio'] == pytest.approx(expected, abs=1e-6) and saved['hole_forget_fraction'] == 0.2
  # below the t = 0 value for 20% of N(0, 1) forget points (3.762): the ratio falls with t (max 4 m_t²)
  assert 3. < saved['hole_log_ratio'] < 3.76
  config = tiny_toy_config(3)
  config.unlearn.update({k: u[k] for k in ('obtuse_form', 'classifier', 'forget_every', 'forget_t_max', 'reference')})
  config.unlearn.hole_forget_fraction = 1.
  with pytest.raises(ValueError, match=r'hole_forget_fraction must lie in \(0, 1\)'):
    run_lib.train(config, str(tmp_path / 'bad'), 'obtuse', progress=False)
  assert not os.path.exists(tmp_path / 'bad' / 'checkpoints')
