"""Samplers driven by the exact score of Gaussian data (see gaussian_models.py).

Tolerances. With n samples of a D = 2 Gaussian, the sample mean has standard error sd/sqrt(n) and a
covariance entry, relative to sd_i sd_j, at most sqrt(2/n). Each check allows 4 standard errors plus a
bias budget for what is not Monte-Carlo noise, measured with 2·10⁵ samples at N = 500:
  * predictor-only SDE samplers: ≤ 0.3% (VP, sub-VP) and ≤ 2% (VE: RD/ancestral) on the covariance, and
    ≤ 0.013 sd on the mean for VE (the N(0, σ_max²) prior misses p_T's mean by 0.1 sd at σ_max = 10
    and the sampler does not forget all of it);
  * with the Langevin corrector (snr 0.16): +3% variance, the stationary bias of unadjusted Langevin
    with step ε = 2 snr² ‖z‖²/‖s‖² (≈ ε/(2v));
  * corrector-only Langevin: 1.2 sd-% on the mean, 2.6% on the covariance (one step per noise level).
The probability-flow predictors are deterministic and checked against the exact flow map instead
(first-order convergence in N), and corrector-only ALD — which with one step per level does not
equilibrate (as in NCSN it needs many steps per level) — is checked at a fixed time instead.
"""
import math

import pytest
import torch

from gaussian_models import (GaussianScoreModel, flow_map, make_sde, marginal, random_covariance,
                             sample_moments)

import sampling
import sde_lib
from tensor_utils import append_dims
from configs.default_configs import get_base_config

MEAN = torch.tensor([1.0, -0.5], dtype=torch.float64)
COV = random_covariance(2, torch.Generator().manual_seed(0))


def make_config(method='pc', predictor='euler_maruyama', corrector='none', probability_flow=False,
                noise_removal=True, solver='torchdiffeq', n_steps=1, snr=0.16, cuda_graph=False):
  config = get_base_config()
  s = config.sampling
  s.cuda_graph = cuda_graph  # eager by default here: the tests count the model's Python calls
  s.method, s.predictor, s.corrector = method, predictor, corrector
  s.probability_flow, s.noise_removal, s.ode_solver = probability_flow, noise_removal, solver
  s.n_steps_each, s.snr = n_steps, snr
  config.training.continuous = True
  return config


def identity(x):
  return x


def check_moments(x, mean, cov, mean_bias, cov_bias):
  """Sample mean/covariance of x against (mean, cov) within 4 standard errors plus the bias budgets."""
  n = x.shape[0]
  m, c = sample_moments(x)
  sd = torch.sqrt(torch.diagonal(cov))
  mean_err = ((m - mean) / sd).abs().max().item()
  cov_err = ((c - cov) / torch.outer(sd, sd)).abs().max().item()
  assert mean_err < 4 / math.sqrt(n) + mean_bias, (mean_err, m, mean)
  assert cov_err < 4 * math.sqrt(2 / n) + cov_bias, (cov_err, c, cov)


def score_fn_of(sde, model):
  return lambda x, t: sde.output_to_score(model(x, sde.model_labels(t, True)), t, True)


# ---- registries and refusals ----

def test_registries():
  assert {'euler_maruyama', 'reverse_diffusion', 'ancestral_sampling', 'none'} <= set(sampling._PREDICTORS)
  assert {'langevin', 'ald', 'none'} <= set(sampling._CORRECTORS)
  assert sampling.get_predictor('Reverse_Diffusion') is sampling.ReverseDiffusionPredictor
  with pytest.raises(ValueError, match='valid: ancestral_sampling, euler_maruyama, none, reverse_diffusion'):
    sampling.get_predictor('heun')
  with pytest.raises(ValueError, match='valid: ald, langevin, none'):
    sampling.get_corrector('mala')
  with pytest.raises(ValueError, match='already registered'):
    sampling.register_corrector(sampling.LangevinCorrector, name='langevin')


@pytest.mark.parametrize('config, sde_name, message', [
  (make_config(predictor='ancestral_sampling'), 'subvp', 'only for the DDPM .VPSDE. and SMLD .VESDE.'),
  (make_config(predictor='ancestral_sampling', probability_flow=True), 'vp', 'no probability-flow'),
  (make_config(predictor='none', corrector='none'), 've', "predictor='none' with corrector='none'"),
  (make_config(method='sde'), 'vp', 'unknown sampling method'),
  (make_config(predictor='leapfrog'), 'vp', 'unknown predictor'),
])
def test_invalid_combinations_are_refused_at_construction(config, sde_name, message):
  with pytest.raises(ValueError, match=message):
    sampling.get_sampling_fn(config, make_sde(sde_name), (4, 2), identity)


def test_unknown_ode_method_is_refused():
  config = make_config(method='ode')
  config.sampling.ode_method = 'Radau'
  with pytest.raises(ValueError, match="need solver='scipy'"):
    sampling.get_sampling_fn(config, make_sde('vp'), (4, 2), identity)
  config.sampling.ode_solver = 'scipy'
  sampling.get_sampling_fn(config, make_sde('vp'), (4, 2), identity)  # fine with scipy
  assert sampling.resolve_ode_method('RK23', 'torchdiffeq') == 'bosh3'
  assert sampling.resolve_ode_method('dopri5', 'scipy') == 'RK45'


@pytest.mark.parametrize('solver', ['torchdiffeq', 'scipy'])
def test_ode_evaluation_budget(solver):
  """dy/dt = −y on [0, 1]: y(1) = e⁻¹; a budget below the solver's need stops it with a message."""
  y0 = torch.ones(3, dtype=torch.float64)
  y1, nfe = sampling.solve_ode(lambda t, y: -y, y0, 0., 1., solver=solver, max_nfe=0)
  torch.testing.assert_close(y1, torch.full((3,), math.exp(-1.), dtype=torch.float64), rtol=1e-4, atol=0)
  assert nfe > 6
  same, nfe_again = sampling.solve_ode(lambda t, y: -y, y0, 0., 1., solver=solver, max_nfe=nfe)
  assert nfe_again == nfe                                   # a budget equal to the need is enough
  with pytest.raises(sampling.ODEBudgetError, match=f'needed more than {nfe - 1} evaluations.*ode_max_nfe'):
    sampling.solve_ode(lambda t, y: -y, y0, 0., 1., solver=solver, max_nfe=nfe - 1)


# ---- one step of each update rule against formulas written out here ----

N_SMALL, B0, B1, SMIN, SMAX = 100, 0.1, 20., 0.01, 10.


def _beta_i(i):
  return B0 / N_SMALL + i * (B1 - B0) / (N_SMALL * (N_SMALL - 1))


def _sigma_i(i):
  return 0. if i < 0 else SMIN * (SMAX / SMIN) ** (i / (N_SMALL - 1))


def _expected_step(sde_name, rule, x, s, z, t, snr=0.16):
  """(x, x_mean) of one step, from the formulas of score_sde (float t, i = floor(t (N-1)))."""
  i = math.floor(t * (N_SMALL - 1))
  beta_t = B0 + t * (B1 - B0)
  if rule in ('euler_maruyama', 'euler_maruyama_pf'):  # VP drift -β x/2, diffusion sqrt(β); dt = -1/N
    c = 0.5 if rule.endswith('pf') else 1.
    x_mean = x - (-0.5 * beta_t * x - c * beta_t * s) / N_SMALL
    return (x_mean if c == 0.5 else x_mean + math.sqrt(beta_t / N_SMALL) * z), x_mean
  if rule == 'reverse_diffusion':
    if sde_name == 'vp':  # DDPM: f = (sqrt(1 - β_i) - 1) x, G = sqrt(β_i)
      b = _beta_i(i)
      x_mean = x - (math.sqrt(1. - b) - 1.) * x + b * s
      return x_mean + math.sqrt(b) * z, x_mean
    if sde_name == 've':  # SMLD: f = 0, G² = σ_i² - σ_{i-1}²
      g2 = _sigma_i(i) ** 2 - _sigma_i(i - 1) ** 2
      return x + g2 * s + math.sqrt(g2) * z, x + g2 * s
    # sub-VP: Euler–Maruyama discretisation f = drift/N, G = g/sqrt(N)
    g2 = beta_t * (1. - math.exp(-2. * B0 * t - (B1 - B0) * t ** 2)) / N_SMALL
    x_mean = x + 0.5 * beta_t * x / N_SMALL + g2 * s
    return x_mean + math.sqrt(g2) * z, x_mean
  if rule == 'ancestral_sampling':
    if sde_name == 'vp':
      b = _beta_i(i)
      x_mean = (x + b * s) / math.sqrt(1. - b)
      return x_mean + math.sqrt(b) * z, x_mean
    sig, prev = _sigma_i(i), _sigma_i(i - 1)
    x_mean = x + (sig ** 2 - prev ** 2) * s
    return x_mean + math.sqrt(prev ** 2 * (sig ** 2 - prev ** 2) / sig ** 2) * z, x_mean
  alpha = 1. if sde_name == 've' else 1. - _beta_i(i)
  if rule == 'langevin':
    ratio = snr * z.reshape(len(z), -1).norm(dim=1).mean() / s.reshape(len(s), -1).norm(dim=1).mean()
    step = 2. * alpha * ratio ** 2
  else:  # ald, with the marginal std σ_t
    std = {'vp': math.sqrt(1. - math.exp(-(B0 * t + 0.5 * (B1 - B0) * t ** 2))),
           'subvp': 1. - math.exp(-(B0 * t + 0.5 * (B1 - B0) * t ** 2)),
           've': SMIN * (SMAX / SMIN) ** t}[sde_name]
    step = 2. * alpha * (snr * std) ** 2
  return x + step * s + torch.sqrt(torch.as_tensor(2. * step, dtype=x.dtype)) * z, x + step * s


@pytest.mark.parametrize('sde_name, rule', [
  ('vp', 'euler_maruyama'), ('vp', 'euler_maruyama_pf'), ('vp', 'reverse_diffusion'), ('ve', 'reverse_diffusion'),
  ('subvp', 'reverse_diffusion'), ('vp', 'ancestral_sampling'), ('ve', 'ancestral_sampling'),
  ('vp', 'langevin'), ('subvp', 'langevin'), ('ve', 'langevin'), ('vp', 'ald'), ('subvp', 'ald'), ('ve', 'ald')])
@pytest.mark.parametrize('t', [0.55, 1.0, 1e-3])
def test_single_step_update_rules(sde_name, rule, t, device):
  """One predictor or corrector step, with a known score and the generator's noise, equals the formula."""
  sde = make_sde(sde_name, N=N_SMALL)
  x = torch.randn(6, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(device)
  score_fn = lambda y, tt: torch.cos(y) - append_dims(tt, y.ndim) * y  # any smooth function of (x, t)
  vec_t = sampling.batch_time(t, x)
  if rule in ('langevin', 'ald'):
    step = sampling.get_corrector(rule)(sde, score_fn, snr=0.16, n_steps=1)
  else:
    step = sampling.get_predictor(rule.replace('_pf', ''))(sde, score_fn, probability_flow=rule.endswith('_pf'))
  out, out_mean = step.update_fn(x, vec_t, torch.Generator().manual_seed(1))
  z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype).to(device)
  exp, exp_mean = _expected_step(sde_name, rule, x, score_fn(x, vec_t), z, t)
  torch.testing.assert_close(out_mean, exp_mean, rtol=1e-10, atol=1e-12)
  torch.testing.assert_close(out, exp, rtol=1e-10, atol=1e-12)


# ---- distributions ----

STOCHASTIC_COMBINATIONS = [
  # (sde, predictor, corrector, mean bias, covariance bias)
  *[(s, p, 'none', 0.02, 0.03) for s in ('vp', 'subvp', 've') for p in ('euler_maruyama', 'reverse_diffusion')],
  ('vp', 'ancestral_sampling', 'none', 0.02, 0.03),
  ('ve', 'ancestral_sampling', 'none', 0.02, 0.03),
  *[(s, p, 'langevin', 0.02, 0.05) for s in ('vp', 'subvp', 've') for p in ('euler_maruyama', 'reverse_diffusion')],
  ('vp', 'ancestral_sampling', 'langevin', 0.02, 0.05),
  ('ve', 'ancestral_sampling', 'langevin', 0.02, 0.05),
  *[(s, p, 'ald', 0.02, 0.03) for s in ('vp', 'subvp', 've') for p in ('euler_maruyama', 'reverse_diffusion')],
  ('vp', 'ancestral_sampling', 'ald', 0.02, 0.03),
  ('ve', 'ancestral_sampling', 'ald', 0.02, 0.03),
  *[(s, 'none', 'langevin', 0.03, 0.05) for s in ('vp', 'subvp', 've')],
]


@pytest.mark.parametrize('sde_name, predictor, corrector, mean_bias, cov_bias', STOCHASTIC_COMBINATIONS)
def test_pc_sampler_reproduces_the_data_distribution(sde_name, predictor, corrector, mean_bias, cov_bias, device):
  n, N = 4000, 500
  sde = make_sde(sde_name, N=N)
  model = GaussianScoreModel(sde, MEAN, COV).to(device)
  sampling_fn = sampling.get_sampling_fn(make_config(predictor=predictor, corrector=corrector), sde, (n, 2),
                                         identity)
  x, nfe = sampling_fn(model, generator=torch.Generator(device).manual_seed(1))
  assert x.shape == (n, 2) and x.device.type == device.type
  # target: p_eps (≈ the data; differs by σ_eps² ≤ 1e-4 in variance)
  check_moments(x, *marginal(sde, sde.default_sampling_eps, MEAN, COV), mean_bias, cov_bias)


@pytest.mark.parametrize('sde_name, t', [('vp', 0.3), ('subvp', 0.3), ('ve', 0.7)])
@pytest.mark.parametrize('corrector', ['langevin', 'ald'])
def test_corrector_converges_to_the_marginal_at_fixed_time(sde_name, t, corrector, device):
  """Many corrector steps at one time t: the chain's law approaches p_t (up to the ULA step bias ≤ snr²)."""
  n = 4000
  sde = make_sde(sde_name)
  model = GaussianScoreModel(sde, MEAN, COV).to(device)
  corr = sampling.get_corrector(corrector)(sde, score_fn_of(sde, model), snr=0.16, n_steps=400)
  gen = torch.Generator(device).manual_seed(2)
  x = 3. * torch.randn(n, 2, generator=gen, device=device, dtype=torch.float64)
  x, _ = corr.update_fn(x, sampling.batch_time(t, x), gen)
  assert model.calls == 400
  check_moments(x, *marginal(sde, t, MEAN, COV), 0.02, 0.05)


@pytest.mark.parametrize('sde_name', ['vp', 'subvp', 've'])
@pytest.mark.parametrize('predictor', ['euler_maruyama', 'reverse_diffusion'])
def test_probability_flow_predictors_converge_to_the_exact_flow(sde_name, predictor, device):
  """Deterministic PC (probability_flow=True) from z follows the exact affine flow map from T to eps,
  with a first-order error: doubling N at least roughly halves it."""
  z = make_sde(sde_name).prior_sampling((200, 2), generator=torch.Generator().manual_seed(3),
                                        dtype=torch.float64).to(device)
  errors = []
  for N in (100, 200):
    sde = make_sde(sde_name, N=N)
    model = GaussianScoreModel(sde, MEAN, COV).to(device)
    x, _ = sampling.sample_pc(score_fn_of(sde, model), sde, z, sampling.get_time_grid(sde, 1e-3), predictor,
                              'none', probability_flow=True, denoise=False)
    ref = flow_map(sde, z, sde.T, 1e-3, MEAN, COV)
    errors.append(((x.cpu() - ref).norm(dim=1) / ref.norm(dim=1)).mean().item())
  assert errors[1] < 0.15 and errors[1] < 0.6 * errors[0], errors


@pytest.mark.parametrize('sde_name', ['vp', 'subvp', 've'])
@pytest.mark.parametrize('solver', ['torchdiffeq', 'scipy'])
def test_ode_sampler_is_the_exact_flow_map(sde_name, solver, device):
  """The ODE sampler maps a given z to the exact probability-flow image (deterministically); nfe counts
  the solver's evaluations and, with noise_removal, the final denoising step."""
  sde = make_sde(sde_name)
  model = GaussianScoreModel(sde, MEAN, COV).to(device)
  z = sde.prior_sampling((64, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64).to(device)
  for noise_removal in (False, True):
    model.calls = 0
    fn = sampling.get_sampling_fn(make_config(method='ode', solver=solver, noise_removal=noise_removal), sde,
                                  (64, 2), identity)
    x, nfe = fn(model, z=z)
    assert nfe == model.calls and nfe > 10
    x2, nfe2 = fn(model, z=z)
    torch.testing.assert_close(x2, x, rtol=0, atol=0)
    ref = flow_map(sde, z, sde.T, sde.default_sampling_eps, MEAN, COV)
    # rtol = atol = 1e-5 in the solver; the denoising step moves x by at most g(eps)² |s| / N ≈ 1e-4
    torch.testing.assert_close(x.cpu(), ref, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize('sde_name', ['vp', 'subvp', 've'])
@pytest.mark.parametrize('solver', ['torchdiffeq', 'scipy'])
def test_ode_sampler_reproduces_the_data_distribution(sde_name, solver, device):
  """Started from the exact marginal p_T (so that the prior mismatch does not enter), the ODE sampler's
  output has the data's moments up to Monte-Carlo error."""
  n = 4000
  sde = make_sde(sde_name)
  model = GaussianScoreModel(sde, MEAN, COV).to(device)
  mean_T, cov_T = marginal(sde, sde.T, MEAN, COV)
  gen = torch.Generator().manual_seed(5)
  z = (mean_T + torch.randn(n, 2, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(cov_T).T).to(device)
  fn = sampling.get_sampling_fn(make_config(method='ode', solver=solver), sde, (n, 2), identity)
  x, _ = fn(model, z=z)
  check_moments(x, *marginal(sde, sde.default_sampling_eps, MEAN, COV), 0.005, 0.005)


# ---- bookkeeping: nfe, seeds, dtype, rank, scaler ----

@pytest.mark.parametrize('predictor, corrector, n_steps, per_step', [
  ('euler_maruyama', 'none', 1, 1), ('reverse_diffusion', 'langevin', 2, 3), ('none', 'ald', 3, 3),
  ('ancestral_sampling', 'ald', 1, 2), ('euler_maruyama', 'langevin', 0, 1)])
def test_pc_nfe_is_the_true_number_of_network_evaluations(predictor, corrector, n_steps, per_step, device):
  sde = sde_lib.VPSDE(beta_min=0.1, beta_max=10., N=20)   # β_max/N < 1: the DDPM steps are defined
  model = GaussianScoreModel(sde, MEAN, COV).to(device)
  fn = sampling.get_sampling_fn(make_config(predictor=predictor, corrector=corrector, n_steps=n_steps), sde,
                                (8, 2), identity)
  _, nfe = fn(model)
  assert nfe == model.calls == 20 * per_step


@pytest.mark.parametrize('sde_name', ['vp', 'subvp', 've'])
def test_seeded_generator_gives_identical_samples(sde_name, device):
  sde = make_sde(sde_name, N=30)
  model = GaussianScoreModel(sde, MEAN, COV).to(device)
  fn = sampling.get_sampling_fn(make_config(predictor='reverse_diffusion', corrector='langevin'), sde, (16, 2),
                                identity)
  a, _ = fn(model, generator=torch.Generator(device).manual_seed(7))
  b, _ = fn(model, generator=torch.Generator(device).manual_seed(7))
  c, _ = fn(model, generator=torch.Generator(device).manual_seed(8))
  torch.testing.assert_close(a, b, rtol=0, atol=0)
  assert not torch.allclose(a, c)
  # a CPU generator gives the same draws whatever device the data lives on
  d, _ = fn(model.cpu(), generator=torch.Generator().manual_seed(7))
  e, _ = fn(model.to(device), generator=torch.Generator().manual_seed(7))
  torch.testing.assert_close(d, e.cpu())


def test_image_shaped_data_and_inverse_scaler(device):
  """Rank-agnostic: [B, 1, 2, 2] data (D = 4) through PC and ODE samplers; samples pass through the
  inverse scaler; the dtype of z is kept."""
  n = 4000
  mean4 = torch.tensor([0.5, -1., 0., 2.], dtype=torch.float64)
  cov4 = random_covariance(4, torch.Generator().manual_seed(9))
  sde = make_sde('vp', N=500)
  model = GaussianScoreModel(sde, mean4, cov4).to(device)
  scaler = lambda x: 2. * x + 1.
  fn = sampling.get_sampling_fn(make_config(predictor='reverse_diffusion', corrector='langevin'), sde,
                                (n, 1, 2, 2), scaler)
  x, _ = fn(model, generator=torch.Generator(device).manual_seed(10))
  assert x.shape == (n, 1, 2, 2)
  check_moments((x - 1.) / 2., *marginal(sde, 1e-3, mean4, cov4), 0.02, 0.05)
  ode = sampling.get_sampling_fn(make_config(method='ode'), sde, (8, 1, 2, 2), scaler)
  z = torch.randn(8, 1, 2, 2, device=device, dtype=torch.float32)
  x, _ = ode(model.float(), z=z)
  assert x.dtype == torch.float32 and x.shape == z.shape
  torch.testing.assert_close((x.cpu().double() - 1.) / 2., flow_map(sde, z, 1., 1e-3, mean4, cov4), rtol=5e-3,
                             atol=5e-3)


def test_eps_resolution():
  config = make_config()
  assert sampling.resolve_eps(config, make_sde('ve')) == 1e-5
  assert sampling.resolve_eps(config, make_sde('vp')) == 1e-3
  config.sampling.eps = 1e-2
  assert sampling.resolve_eps(config, make_sde('vp')) == 1e-2
  assert sampling.resolve_eps(config, make_sde('vp'), eps=0.05) == 0.05
  grid = sampling.get_time_grid(make_sde('vp', N=11), 0.1)
  torch.testing.assert_close(grid, torch.linspace(1., 0.1, 11, dtype=torch.float64))


def test_z_with_wrong_shape_is_refused():
  sde = make_sde('vp', N=5)
  fn = sampling.get_sampling_fn(make_config(), sde, (4, 2), identity)
  with pytest.raises(ValueError, match='expected'):
    fn(GaussianScoreModel(sde, MEAN, COV), z=torch.zeros(3, 2))
