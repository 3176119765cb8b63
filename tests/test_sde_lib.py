"""sde_lib against formulas written out independently here, and against a numerical integration of the
moment ODEs of the forward SDE (dm/dt = f-coefficient · m, dv/dt = 2 f-coefficient · v + g²)."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate

from gaussian_models import make_sde

import sde_lib

B0, B1 = 0.1, 20.
SMIN, SMAX = 0.01, 10.
SDE_NAMES = ['vp', 'subvp', 've']


# ---- the formulas, written independently of sde_lib (floats in, floats out) ----

def beta(t):
  return B0 + t * (B1 - B0)


def int_beta(t):
  """∫_0^t β(s) ds."""
  return B0 * t + 0.5 * (B1 - B0) * t ** 2


def ve_sigma(t):
  return SMIN * (SMAX / SMIN) ** t


def ref_sde(name, t):
  """(drift coefficient a with f = a·x, diffusion g) at float t."""
  if name == 'vp':
    return -0.5 * beta(t), math.sqrt(beta(t))
  if name == 'subvp':
    return -0.5 * beta(t), math.sqrt(beta(t) * (1. - math.exp(-2. * int_beta(t))))
  return 0., ve_sigma(t) * math.sqrt(2. * math.log(SMAX / SMIN))


def ref_marginal(name, t):
  """(mean coefficient, std) of p_0t."""
  if name == 'vp':
    return math.exp(-t ** 2 * (B1 - B0) / 4. - t * B0 / 2.), math.sqrt(1. - math.exp(-int_beta(t)))
  if name == 'subvp':
    return math.exp(-0.5 * int_beta(t)), 1. - math.exp(-int_beta(t))
  return 1., ve_sigma(t)


def times(device, dtype=torch.float32):
  return torch.tensor([1e-5, 1e-3, 0.1, 0.37, 0.5, 0.9, 1.], device=device, dtype=dtype)


# ---- continuous-time quantities ----

@pytest.mark.parametrize('name', SDE_NAMES)
def test_sde_drift_diffusion_marginal(name, device):
  sde = make_sde(name)
  t = times(device, torch.float64)
  x = torch.randn(len(t), 3, 2, 2, dtype=torch.float64, device=device)
  drift, diffusion = sde.sde(x, t)
  mean, std = sde.marginal_prob(x, t)
  for k, tk in enumerate(t.tolist()):
    a, g = ref_sde(name, tk)
    m, s = ref_marginal(name, tk)
    torch.testing.assert_close(drift[k], a * x[k], rtol=1e-12, atol=1e-12)
    assert diffusion[k].item() == pytest.approx(g, rel=1e-10)
    torch.testing.assert_close(mean[k], m * x[k], rtol=1e-12, atol=1e-12)
    assert std[k].item() == pytest.approx(s, rel=1e-9)


@pytest.mark.parametrize('name', SDE_NAMES)
def test_marginal_prob_solves_the_moment_odes(name):
  """Mean scale m(t) and variance v(t) of p_0t obey dm/dt = a(t) m and dv/dt = 2 a(t) v + g(t)², with
  m(0) = 1 and v(0) = 0 (VP, sub-VP) or σ_min² (VE: σ(0) = σ_min by convention)."""
  sde = make_sde(name)

  def rhs(t, y):
    # drift coefficient and diffusion taken from sde_lib, so that sde() and marginal_prob() are checked
    # for consistency with each other (test_sde_drift_diffusion_marginal checks them against formulas)
    x, tt = torch.ones(1, 1, dtype=torch.float64), torch.tensor([t], dtype=torch.float64)
    f, g = sde.sde(x, tt)
    a, g = f.item(), g.item()
    return [a * y[0], 2. * a * y[1] + g ** 2]

  v0 = SMIN ** 2 if name == 've' else 0.
  grid = [1e-3, 0.05, 0.3, 0.6, 1.]
  sol = integrate.solve_ivp(rhs, (0., 1.), [1., v0], t_eval=grid, rtol=1e-11, atol=1e-13, method='DOP853')
  ones = torch.ones(len(grid), 1, dtype=torch.float64)
  mean, std = sde.marginal_prob(ones, torch.tensor(grid, dtype=torch.float64))
  np.testing.assert_allclose(mean[:, 0].numpy(), sol.y[0], rtol=1e-7)
  np.testing.assert_allclose((std ** 2).numpy(), sol.y[1], rtol=1e-6, atol=1e-12)


def test_vp_moments_match_monte_carlo_simulation():
  """A fine Euler–Maruyama simulation of the VP SDE from a point mass reproduces marginal_prob."""
  sde = make_sde('vp')
  gen = torch.Generator().manual_seed(0)
  n, steps, t_end = 20000, 400, 0.3
  x0 = torch.full((n, 1), 2., dtype=torch.float64)
  x, dt = x0.clone(), t_end / steps
  for k in range(steps):
    t = torch.full((n,), k * dt, dtype=torch.float64)
    f, g = sde.sde(x, t)
    x = x + f * dt + g[:, None] * math.sqrt(dt) * torch.randn(x.shape, generator=gen, dtype=torch.float64)
  mean, std = sde.marginal_prob(x0[:1], torch.tensor([t_end], dtype=torch.float64))
  se_mean = std.item() / math.sqrt(n)
  assert abs(x.mean().item() - mean.item()) < 5 * se_mean + 2e-3  # + Euler bias O(dt)
  assert x.std().item() == pytest.approx(std.item(), rel=5 * math.sqrt(0.5 / n) + 5e-3)


@pytest.mark.parametrize('name', SDE_NAMES)
def test_prior_logp_and_sampling(name, device):
  sde = make_sde(name)
  scale = SMAX if name == 've' else 1.
  z = torch.randn(4, 3, 5, 5, dtype=torch.float64, device=device) * scale
  expected = torch.distributions.Normal(0., scale).log_prob(z.cpu()).reshape(4, -1).sum(1)
  torch.testing.assert_close(sde.prior_logp(z).cpu(), expected)
  assert sde.prior_logp(z).dtype == torch.float64
  a = sde.prior_sampling((3000, 4), generator=torch.Generator(device).manual_seed(1), device=device)
  b = sde.prior_sampling((3000, 4), generator=torch.Generator(device).manual_seed(1), device=device)
  torch.testing.assert_close(a, b, rtol=0, atol=0)
  assert a.device.type == device.type and a.shape == (3000, 4)
  assert a.std().item() == pytest.approx(scale, rel=0.05)


# ---- discretisation and reverse process ----

def ref_discretize(name, x, t, N):
  """Independent discretisation: DDPM (VP), SMLD (VE), Euler–Maruyama with dt = 1/N (sub-VP)."""
  i = int(math.floor(t * (N - 1)))
  if name == 'vp':
    b = B0 / N + i * (B1 - B0) / (N * (N - 1))
    return (math.sqrt(1. - b) - 1.) * x, math.sqrt(b)
  if name == 've':
    sig = lambda j: SMIN * (SMAX / SMIN) ** (j / (N - 1))
    prev = 0. if i == 0 else sig(i - 1)
    return torch.zeros_like(x), math.sqrt(sig(i) ** 2 - prev ** 2)
  a, g = ref_sde(name, t)
  return a * x / N, g / math.sqrt(N)


@pytest.mark.parametrize('name', SDE_NAMES)
def test_discretize(name, device):
  N = 50
  sde = make_sde(name, N=N)
  t = torch.tensor([0., 0.01, 0.3, 0.5, 0.999, 1.], dtype=torch.float64, device=device)
  x = torch.randn(len(t), 2, dtype=torch.float64, device=device)
  f, G = sde.discretize(x, t)
  assert f.dtype == G.dtype == torch.float64 and f.device.type == device.type
  for k, tk in enumerate(t.tolist()):
    rf, rg = ref_discretize(name, x[k], tk, N)
    torch.testing.assert_close(f[k], rf, rtol=1e-10, atol=1e-12)
    assert G[k].item() == pytest.approx(rg, rel=1e-9)


@pytest.mark.parametrize('name', SDE_NAMES)
def test_langevin_alpha(name, device):
  N = 50
  sde = make_sde(name, N=N)
  t = torch.tensor([0., 0.3, 1.], dtype=torch.float64, device=device)
  alpha = sde.langevin_alpha(t)
  for k, tk in enumerate(t.tolist()):
    i = int(math.floor(tk * (N - 1)))
    expected = 1. if name == 've' else 1. - (B0 / N + i * (B1 - B0) / (N * (N - 1)))
    assert alpha[k].item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize('name', SDE_NAMES)
@pytest.mark.parametrize('probability_flow', [False, True])
def test_reverse_sde_and_discretize(name, probability_flow, device):
  sde = make_sde(name, N=100)
  x = torch.randn(3, 1, 2, 3, dtype=torch.float64, device=device)
  t = torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64, device=device)
  score_fn = lambda y, s: torch.sin(y) * (1. + s.reshape(-1, 1, 1, 1))  # any function of (x, t)
  rev = sde.reverse(score_fn, probability_flow)
  drift, diffusion = rev.sde(x, t)
  rf, rg = rev.discretize(x, t)
  c = 0.5 if probability_flow else 1.
  score = score_fn(x, t)
  f, g = sde.sde(x, t)
  fd, gd = sde.discretize(x, t)
  for k in range(3):
    torch.testing.assert_close(drift[k], f[k] - c * g[k] ** 2 * score[k])
    torch.testing.assert_close(rf[k], fd[k] - c * gd[k] ** 2 * score[k])
    assert diffusion[k].item() == (0. if probability_flow else g[k].item())
    assert rg[k].item() == (0. if probability_flow else gd[k].item())
  assert rev.N == sde.N and rev.T == sde.T


# ---- network parameterisation ----

@pytest.mark.parametrize('name', SDE_NAMES)
@pytest.mark.parametrize('continuous', [True, False])
def test_labels_and_score_parameterisation(name, continuous, device):
  N = 1000
  sde = make_sde(name, N=N)
  t = torch.tensor([1e-3, 0.25, 0.8], dtype=torch.float64, device=device)
  out = torch.randn(3, 2, dtype=torch.float64, device=device)
  labels, score = sde.model_labels(t, continuous), sde.output_to_score(out, t, continuous)
  for k, tk in enumerate(t.tolist()):
    if name == 've':
      exp_label = ve_sigma(tk) if continuous else round((1. - tk) * (N - 1))
      exp_score = out[k]
    else:
      exp_label = 999. * tk if (continuous or name == 'subvp') else tk * (N - 1)
      if continuous or name == 'subvp':
        std = ref_marginal(name, tk)[1]
      else:
        i = int(tk * (N - 1))
        bs = np.linspace(B0 / N, B1 / N, N)
        std = math.sqrt(1. - np.prod(1. - bs[:i + 1]))
      exp_score = -out[k] / std
    assert labels[k].item() == pytest.approx(exp_label, rel=1e-9)
    torch.testing.assert_close(score[k], exp_score)
  assert sde.predicts_noise == (name != 've')


def test_vp_discrete_tables_approximate_the_continuous_marginal():
  sde = make_sde('vp', N=1000)
  i = torch.arange(0, 1000, 37)
  t = ((i + 1) / 1000.).double()
  cont = sde.marginal_prob(torch.ones(len(t), 1, dtype=torch.float64), t)[0][:, 0]
  torch.testing.assert_close(sde.sqrt_alphas_cumprod[i], cont, rtol=2e-2, atol=1e-4)


# ---- dtype, device and rank ----

@pytest.mark.parametrize('name', SDE_NAMES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_dtype_device_and_rank_follow_the_input(name, dtype, device):
  sde = make_sde(name, N=100)
  t = torch.tensor([0.2, 0.7], dtype=dtype, device=device)
  img = torch.randn(2, 3, 4, 4, dtype=dtype, device=device)
  vec = img.reshape(2, -1)
  outputs = {}
  for label, x in [('img', img), ('vec', vec)]:
    f, g = sde.sde(x, t)
    mean, std = sde.marginal_prob(x, t)
    fd, gd = sde.discretize(x, t)
    rev = sde.reverse(lambda y, s: -y, probability_flow=True).sde(x, t)[0]
    for v in (f, g, mean, std, fd, gd, rev, sde.prior_logp(x), sde.langevin_alpha(t)):
      assert v.dtype == dtype and v.device.type == device.type
    for v in (f, mean, fd, rev):
      assert v.shape == x.shape
    outputs[label] = [v.reshape(2, -1) for v in (f, mean, fd, rev)] + [g, std, gd, sde.prior_logp(x)]
  for a, b in zip(outputs['img'], outputs['vec']):
    torch.testing.assert_close(a, b)


def test_invalid_construction():
  with pytest.raises(ValueError):
    sde_lib.VPSDE(N=0)
