"""PC inpainting and probability-flow reconstruction (controllable_generation.py) with exact-score Gaussian models."""
import math

import pytest
import torch

import controllable_generation as cg
import likelihood
import sampling
from evaluation import image_metrics
from gaussian_models import GaussianScoreModel, flow_map, make_sde, random_covariance
from models import utils as mutils


def gaussian_images(n, size=4, seed=0, std=0.1):
  """``n`` images [n, 1, size, size] from N(0.5, Σ) with a random Σ of std about ``std``, and (μ, Σ)."""
  g = torch.Generator().manual_seed(seed)
  dim = size * size
  mean = torch.full((dim,), 0.5, dtype=torch.float64)
  cov = random_covariance(dim, g, scale=std)
  x = mean + torch.randn(n, dim, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
  return x.reshape(n, 1, size, size).float(), mean, cov


def band_mask(n, size):
  mask = torch.ones(n, 1, size, size, dtype=torch.bool)
  mask[:, :, size // 2:size * 3 // 4] = False
  return mask


@pytest.mark.parametrize('sde_name,predictor,corrector', [
  ('vp', 'euler_maruyama', 'none'), ('vp', 'reverse_diffusion', 'langevin'), ('vp', 'ancestral_sampling', 'none'),
  ('ve', 'reverse_diffusion', 'langevin'), ('subvp', 'euler_maruyama', 'ald')])
@pytest.mark.parametrize('denoise', [True, False])
def test_known_pixels_are_exactly_the_data_after_the_final_step(sde_name, predictor, corrector, denoise):
  sde = make_sde(sde_name, N=30)
  data, mean, cov = gaussian_images(6, size=8)
  model = GaussianScoreModel(sde, mean, cov)
  score_fn = mutils.get_score_fn(sde, model, train=False, continuous=True)
  mask = band_mask(6, 8)
  out, nfe = cg.sample_pc_inpaint(score_fn, sde, data, mask, sampling.get_time_grid(sde, 1e-3), predictor=predictor,
                                  corrector=corrector, denoise=denoise, generator=torch.Generator().manual_seed(1))
  assert torch.equal(out[mask.expand_as(out)], data[mask.expand_as(data)])
  assert torch.isfinite(out).all() and not torch.equal(out, data)   # the unknown pixels were filled
  per_step = (predictor != 'none') + (corrector != 'none')
  assert nfe == 30 * per_step


def test_get_pc_inpainter_keeps_known_pixels_and_is_seeded():
  sde = make_sde('vp', N=30)
  data, mean, cov = gaussian_images(4, size=8)
  model = GaussianScoreModel(sde, mean, cov)
  mask = band_mask(1, 8)                      # one mask broadcast over the batch
  inpainter = cg.get_pc_inpainter(sde, 'euler_maruyama', 'langevin', lambda v: v, snr=0.16, continuous=True, eps=1e-3)
  a, nfe = inpainter(model, data, mask, generator=torch.Generator().manual_seed(3))
  b, _ = inpainter(model, data, mask, generator=torch.Generator().manual_seed(3))
  assert torch.equal(a, b) and nfe == 60
  known = mask.expand_as(data)
  assert torch.equal(a[known], data[known])
  with pytest.raises(ValueError, match='subVPSDE'):
    cg.get_pc_inpainter(make_sde('subvp'), 'ancestral_sampling', 'none', lambda v: v, snr=0.16)


def test_inpainting_with_an_independent_gaussian_samples_its_marginal():
  """With a diagonal covariance the pixels are independent, so re-imposing the known pixels leaves the
  unknown ones sampling their own marginal N(μ_u, λ_u): the inpainted values have that mean and variance."""
  sde = make_sde('vp', N=200)
  dim, n = 16, 3000
  mean = torch.linspace(-0.5, 0.5, dim, dtype=torch.float64)
  lam = torch.linspace(0.05, 0.5, dim, dtype=torch.float64)
  model = GaussianScoreModel(sde, mean, torch.diag(lam))
  score_fn = mutils.get_score_fn(sde, model, train=False, continuous=True)
  data = torch.zeros(n, 1, 4, 4, dtype=torch.float64) + 3.    # known values far from the mean: no effect
  mask = band_mask(1, 4)
  out, _ = cg.sample_pc_inpaint(score_fn, sde, data, mask, sampling.get_time_grid(sde, 1e-3),
                                generator=torch.Generator().manual_seed(0))
  unknown = ~mask.reshape(-1)
  got = out.reshape(n, -1)[:, unknown]
  se_mean = torch.sqrt(lam[unknown] / n)
  assert ((got.mean(0) - mean[unknown]).abs() < 5 * se_mean + 0.01).all()
  assert torch.allclose(got.var(0), lam[unknown], rtol=0.12)


def test_encode_ode_is_the_exact_probability_flow_and_the_likelihood_latent():
  sde = make_sde('vp')
  data, mean, cov = gaussian_images(8, size=4)
  model = GaussianScoreModel(sde, mean, cov)
  score_fn = mutils.get_score_fn(sde, model, train=False, continuous=True)
  z, nfe = cg.encode_ode(score_fn, sde, data.double(), 1e-5)
  exact = flow_map(sde, data, 1e-5, 1., mean, cov)
  torch.testing.assert_close(z, exact, rtol=2e-4, atol=2e-4)
  _, z_ll, _ = likelihood.get_log_likelihood_fn(sde, eps=1e-5)(model, data.double())
  torch.testing.assert_close(z, z_ll, rtol=2e-4, atol=2e-4)
  assert nfe > 0


def test_perturb_latent_is_the_official_marginal():
  sde = make_sde('vp')
  z = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
  noise = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(1))
  log_m = -0.25 * 0.02 ** 2 * (20. - 0.1) - 0.5 * 0.02 * 0.1
  expected = math.exp(log_m) * z + math.sqrt(1 - math.exp(2 * log_m)) * noise
  torch.testing.assert_close(cg.perturb_latent(sde, z, 0.02, noise), expected)


@pytest.mark.parametrize('sde_name', ['vp', 've'])
def test_reconstruction_returns_the_input_at_small_t_and_degrades_monotonically(sde_name):
  """Exact score: encode → perturb at t → decode is the identity as t → 0 (PSNR > 40 dB) and loses
  fidelity as t grows (the same noise for every t)."""
  sde = make_sde(sde_name)
  data, mean, cov = gaussian_images(64, size=4)
  model = GaussianScoreModel(sde, mean, cov)
  recon = {}
  noise = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(5))
  times = [1e-6, 0.02, 0.1, 0.3, 0.6, 1.0]
  for t in times:
    fn = cg.get_reconstructor(sde, lambda v: v, t, eps=1e-3)
    out, nfe = fn(model, data, noise=noise)
    recon[t] = image_metrics.psnr(out.clamp(0, 1), data.clamp(0, 1)).mean().item()
    assert nfe > 0
  assert recon[1e-6] > 40.
  psnrs = [recon[t] for t in times]
  assert all(a > b for a, b in zip(psnrs, psnrs[1:])), psnrs
