"""The probability-flow likelihood against closed forms for Gaussian data (see gaussian_models.py).

For data N(μ, Σ) the ODE computes log p_eps(x) = log p_T(z) + ∫ div: with the SDE's prior N(0, I) or
N(0, σ_max² I) in place of the true p_T the result differs from the analytic log p_eps(x) by
log p_T(z) − prior_logp(z) only, so the ODE part is checked exactly by swapping the prior term for the
true p_T, and the returned value (with the SDE's prior, as used in practice) within 1%.
"""
import math

import pytest
import torch

from gaussian_models import GaussianScoreModel, flow_map, log_density, make_sde, marginal, random_covariance

import likelihood

D = 3
MEAN = torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64)
COV = random_covariance(D, torch.Generator().manual_seed(0))
EPS = 1e-5


def data_at_eps(sde, n, seed, device, dtype=torch.float64):
  """n draws of p_eps = the perturbed data distribution at t = eps (≈ the data)."""
  mean, cov = marginal(sde, EPS, MEAN, COV)
  gen = torch.Generator().manual_seed(seed)
  x = mean + torch.randn(n, D, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
  return x.to(device=device, dtype=dtype)


@pytest.mark.parametrize('sde_name', ['vp', 'subvp', 've'])
@pytest.mark.parametrize('solver', ['torchdiffeq', 'scipy'])
def test_exact_divergence_matches_the_gaussian_density(sde_name, solver, device):
  sde = make_sde(sde_name)
  model = GaussianScoreModel(sde, MEAN, COV).to(device)
  x = data_at_eps(sde, 32, 1, device)
  fn = likelihood.get_log_likelihood_fn(sde, eps=EPS, solver=solver, cuda_graph=False)  # D = 3 → exact divergence
  logp, z, nfe = fn(model, x)
  assert logp.shape == (32,) and z.shape == x.shape and logp.device.type == device.type
  assert nfe == model.calls and model.backward_calls == D * nfe  # one forward, D VJPs per evaluation
  reference = log_density(x, *marginal(sde, EPS, MEAN, COV))
  # the ODE part, exact up to the solver tolerance
  true_prior = log_density(z, *marginal(sde, sde.T, MEAN, COV))
  ode_part = logp.cpu() - sde.prior_logp(z).cpu() + true_prior
  torch.testing.assert_close(ode_part, reference, rtol=0, atol=2e-3)
  torch.testing.assert_close(z.cpu(), flow_map(sde, x, EPS, sde.T, MEAN, COV), rtol=1e-3, atol=2e-3)
  # what is returned (with the SDE's prior in place of p_T): within 1% on average; per point for VP and
  # sub-VP, whose prior matches p_T to e^-5 (VE's N(0, σ_max²) misses p_T's mean by |μ|/σ_max = 0.1 sd)
  rel = (logp.cpu() - reference) / reference.abs()
  assert rel.mean().abs() < 0.01
  if sde_name != 've':
    assert rel.abs().max() < 0.01


@pytest.mark.parametrize('sde_name, solver, hutchinson_type', [
  ('vp', 'torchdiffeq', 'Rademacher'), ('subvp', 'torchdiffeq', 'Gaussian'), ('ve', 'torchdiffeq', 'Rademacher'),
  ('vp', 'scipy', 'Gaussian')])
def test_hutchinson_estimate_is_unbiased(sde_name, solver, hutchinson_type, device):
  """One probe per data point: the per-point errors have mean ≈ 0; their average over n points is within
  4 standard errors of 0, and n is large enough (per-point sd ≤ 0.6 nats) that 4 standard errors are
  under 1% of the analytic log-density, so the 1% statement follows from unbiasedness, whatever the seed."""
  n = 8192
  sde = make_sde(sde_name)
  model = GaussianScoreModel(sde, MEAN, COV).to(device)
  x = data_at_eps(sde, n, 2, device)
  fn = likelihood.get_log_likelihood_fn(sde, hutchinson_type=hutchinson_type, eps=EPS, solver=solver,
                                        exact_divergence=False, cuda_graph=False)
  logp, z, nfe = fn(model, x, generator=torch.Generator(device).manual_seed(3))
  assert nfe == model.calls == model.backward_calls  # ONE forward and ONE VJP per evaluation
  ode_part = logp.cpu() - sde.prior_logp(z).cpu() + log_density(z, *marginal(sde, sde.T, MEAN, COV))
  reference = log_density(x, *marginal(sde, EPS, MEAN, COV))
  err = ode_part - reference
  four_se = 4 * err.std() / math.sqrt(n)
  assert four_se < 0.01 * reference.mean().abs()
  assert err.mean().abs() < four_se + 1e-3
  assert (err.mean() / reference.mean()).abs() < 0.01
  assert ((logp.cpu() - reference).mean() / reference.mean()).abs() < 0.01


def test_probe_is_seeded_and_default_divergence_depends_on_dimension(device, monkeypatch):
  sde = make_sde('vp')
  gen = lambda s: torch.Generator(device).manual_seed(s)
  # D = 17 > 16: Hutchinson by default (depends on the seed, reproducible given it). A non-isotropic
  # covariance, since with Σ ∝ I the Jacobian is ∝ I and a Rademacher probe gives its trace exactly.
  cov17 = random_covariance(17, torch.Generator().manual_seed(1))
  model17 = GaussianScoreModel(sde, torch.zeros(17), cov17).to(device)
  x17 = torch.randn(4, 17, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(device)
  fn = likelihood.get_log_likelihood_fn(sde, eps=EPS, rtol=1e-3, atol=1e-3)
  draws = []
  monkeypatch.setattr(likelihood, 'draw_probe',
                      lambda *args, _draw=likelihood.draw_probe: draws.append(1) or _draw(*args))
  a, b, c = (fn(model17, x17, generator=gen(s))[0] for s in (1, 1, 2))
  torch.testing.assert_close(a, b, rtol=0, atol=0)
  assert not torch.allclose(a, c)
  assert len(draws) == 3  # one probe per call, kept for the whole integration
  # D = 16: exact by default (no randomness at all)
  model16 = GaussianScoreModel(sde, torch.zeros(16), cov17[:16, :16]).to(device)
  x16 = x17[:, :16].contiguous()
  a, c = (fn(model16, x16, generator=gen(s))[0] for s in (1, 2))
  torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_image_shaped_data_gives_the_vector_result(device):
  """Rank-agnostic: the same data as [B, 3] and [B, 3, 1, 1] give the same log-likelihood and latent."""
  sde = make_sde('subvp')
  model = GaussianScoreModel(sde, MEAN, COV).to(device)
  x = data_at_eps(sde, 8, 4, device)
  fn = likelihood.get_log_likelihood_fn(sde, eps=EPS)
  logp_v, z_v, _ = fn(model, x)
  logp_i, z_i, _ = fn(model, x.reshape(8, 3, 1, 1))
  torch.testing.assert_close(logp_i, logp_v)
  torch.testing.assert_close(z_i.reshape(8, 3), z_v)


def test_dtype_follows_the_data(device):
  sde = make_sde('vp')
  model = GaussianScoreModel(sde, MEAN, COV).to(device)
  x = data_at_eps(sde, 8, 5, device, torch.float32)
  bpd, z, _ = likelihood.get_likelihood_fn(sde, lambda v: v, eps=EPS)(model, x)
  assert bpd.dtype == z.dtype == torch.float32 and bpd.device.type == device.type


def test_bpd_conversion_by_hand(device):
  """Centred data ([-1, 1]: inverse scaler (x+1)/2) gets offset 7, uncentred ([0, 1]) offset 8; bpd is
  -logp / (D ln 2) + offset, e.g. logp = -3 nats with D = 2 gives 3/(2 ln 2) + 7 = 9.16404... bits/dim."""
  centred, uncentred = (lambda v: (v + 1.) / 2.), (lambda v: v)
  assert likelihood.bpd_offset(centred) == 7. and likelihood.bpd_offset(uncentred) == 8.
  logp = torch.tensor([-3., 0.], device=device)
  torch.testing.assert_close(likelihood.logp_to_bpd(logp, 2, 7.),
                             torch.tensor([9.164042561333445, 7.], device=device))
  # likelihood_fn = the nats function followed by that conversion
  sde = make_sde('ve')
  model = GaussianScoreModel(sde, MEAN, COV).to(device)
  x = data_at_eps(sde, 4, 6, device)
  logp, z, nfe = likelihood.get_log_likelihood_fn(sde, eps=EPS)(model, x)
  bpd, z2, nfe2 = likelihood.get_likelihood_fn(sde, centred, eps=EPS)(model, x)
  torch.testing.assert_close(bpd, -logp / (D * math.log(2.)) + 7.)
  torch.testing.assert_close(z2, z)
  assert nfe2 == nfe


def test_drift_and_divergence_on_a_nonlinear_function():
  """Exact divergence = trace of the Jacobian (by torch.func); Hutchinson averages to it."""
  torch.manual_seed(0)
  w = torch.randn(4, 4, dtype=torch.float64)
  fn = lambda x, t: torch.tanh(x @ w) * t[:, None]
  x, t = torch.randn(3, 4, dtype=torch.float64), torch.tensor([0.5, 1., 2.], dtype=torch.float64)
  jac = torch.func.vmap(torch.func.jacrev(lambda xi, ti: fn(xi[None], ti[None])[0]))(x, t)
  trace = jac.diagonal(dim1=1, dim2=2).sum(1)
  drift, div = likelihood.drift_and_divergence(fn, x, t)
  torch.testing.assert_close(drift, fn(x, t))
  torch.testing.assert_close(div, trace)
  reps = 4000  # 4000 independent probes per point, as one batch
  x_rep, t_rep = x.repeat(reps, 1), t.repeat(reps)
  for kind in ('Rademacher', 'Gaussian'):
    probe = likelihood.draw_probe(x_rep, kind, torch.Generator().manual_seed(1))
    est = likelihood.drift_and_divergence(fn, x_rep, t_rep, probe)[1].reshape(reps, 3)
    se = est.std(0) / math.sqrt(reps)
    assert ((est.mean(0) - trace).abs() < 4 * se + 1e-9).all(), (est.mean(0), trace, se)
  assert set(likelihood.draw_probe(x, 'rademacher').unique().tolist()) <= {-1., 1.}
  with pytest.raises(ValueError, match='Hutchinson'):
    likelihood.draw_probe(x, 'Cauchy')
