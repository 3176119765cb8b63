"""The engine's denoising score matching against hand-computed values (score form), its factories and the
optimiser."""
import math

import pytest
import torch
from torch import nn

import losses
import sde_lib
from configs.default_configs import get_base_config

# One sample, D = 3. Score form: s = ŝ/σ = [2, 4, 0]; ∇ = -z/σ = [-6, 2, -4]; σ = 0.5, g² = 4.
SS = torch.tensor([[1., 2., 0.]])
Z = torch.tensor([[3., -1., 2.]])
STD = torch.tensor([0.5])
G2 = torch.tensor([4.])
S = SS / 0.5
GRAD = -Z / 0.5


def perturbed(likelihood_weighting):
  weight = G2 / STD ** 2 if likelihood_weighting else torch.ones(1)
  return losses.Perturbed(SS, Z, STD, weight, G2)


def reduce(total, reduce_mean, dim=3):
  return total / dim if reduce_mean else 0.5 * total


@pytest.mark.parametrize('reduce_mean', [True, False])
@pytest.mark.parametrize('lw', [False, True])
def test_dsm_term(reduce_mean, lw):
  lam = 4. if lw else 0.25
  expected = reduce(lam * ((S - GRAD) ** 2).sum().item(), reduce_mean)   # λ ‖s − ∇‖²
  assert losses.dsm_loss(perturbed(lw), reduce_mean).item() == pytest.approx(expected)
  # by hand: (s − ∇) = [8, 2, 4]; σ² · 84 = 21
  if not lw:
    assert expected == pytest.approx(reduce(21., reduce_mean))


class LinearNet(nn.Module):
  """out = a·x + b·label (a deterministic stand-in for a score network)."""

  def __init__(self):
    super().__init__()
    self.a = nn.Parameter(torch.tensor(0.3))
    self.b = nn.Parameter(torch.tensor(0.01))

  def forward(self, x, labels):
    return self.a * x + self.b * labels.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


@pytest.mark.parametrize('sde', [sde_lib.VPSDE(), sde_lib.subVPSDE(), sde_lib.VESDE()])
@pytest.mark.parametrize('lw', [False, True])
def test_continuous_dsm_matches_score_sde_formula(sde, lw):
  """The per-sample loss equals score_sde's expression written with get_score_fn."""
  from models.utils import get_score_fn
  net = LinearNet()
  x0 = torch.randn(5, 2, 4, 4)
  t = torch.tensor([0.01, 0.2, 0.5, 0.8, 1.0])
  z = torch.randn_like(x0)
  p = losses.perturb_continuous(sde, net, x0, False, lw, t=t, z=z)
  got = losses.dsm_loss(p, reduce_mean=True)
  mean, std = sde.marginal_prob(x0, t)
  x_t = mean + std[:, None, None, None] * z
  score = get_score_fn(sde, net, continuous=True)(x_t, t)
  if lw:
    g2 = sde.sde(torch.zeros_like(x0), t)[1] ** 2
    expected = ((score + z / std[:, None, None, None]) ** 2).reshape(5, -1).mean(1) * g2
  else:
    expected = ((score * std[:, None, None, None] + z) ** 2).reshape(5, -1).mean(1)
  torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_ddpm_and_smld_discrete_losses():
  net = LinearNet()
  x0 = torch.randn(3, 1, 2, 2)
  z = torch.randn_like(x0)
  idx = torch.tensor([0, 500, 999])
  vp = sde_lib.VPSDE()
  p = losses.perturb_discrete(vp, net, x0, False, index=idx, z=z)
  ab = torch.cumprod(1 - torch.linspace(0.1 / 1000, 20 / 1000, 1000, dtype=torch.float64), 0)[idx].float()
  x_t = ab.sqrt()[:, None, None, None] * x0 + (1 - ab).sqrt()[:, None, None, None] * z
  eps_hat = net(x_t, idx)
  torch.testing.assert_close(losses.dsm_loss(p, True), ((eps_hat - z) ** 2).reshape(3, -1).mean(1))
  ve = sde_lib.VESDE()
  p = losses.perturb_discrete(ve, net, x0, False, index=idx, z=z)
  sig = torch.exp(torch.linspace(math.log(50.), math.log(0.01), 1000, dtype=torch.float64))[idx].float()
  noise = sig[:, None, None, None] * z
  score = net(x0 + noise, idx)
  target = -noise / sig[:, None, None, None] ** 2
  expected = 0.5 * ((score - target) ** 2).reshape(3, -1).sum(1) * sig ** 2   # SMLD: reduce_mean=False
  torch.testing.assert_close(losses.dsm_loss(p, False), expected, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='continuous=True'):
    losses.get_loss_fn(sde_lib.subVPSDE(), True, True, continuous=False, likelihood_weighting=False)
  with pytest.raises(ValueError, match='likelihood weighting'):
    losses.get_loss_fn(vp, True, True, continuous=False, likelihood_weighting=True)


def test_optimization_manager_warmup_and_clip():
  config = get_base_config()
  config.optim.warmup = 10
  config.optim.grad_clip = 1.
  p = nn.Parameter(torch.zeros(3))
  opt = losses.get_optimizer(config, [p])
  p.grad = torch.tensor([30., 40., 0.])         # norm 50 -> clipped to 1
  losses.optimization_manager(config)(opt, [p], step=5)
  assert opt.param_groups[0]['lr'] == pytest.approx(2e-4 * 0.5)
  assert isinstance(opt.param_groups[0]['lr'], float)
  torch.testing.assert_close(p.grad, torch.tensor([0.6, 0.8, 0.]))


def test_too_few_vp_steps_are_refused_where_discrete_steps_are_used():
  vp = sde_lib.VPSDE(beta_max=20., N=10)
  vp.sde(torch.zeros(2, 3), torch.full((2,), 0.5))            # continuous time: fine
  with pytest.raises(ValueError, match='num_scales'):
    vp.discretize(torch.zeros(2, 3), torch.full((2,), 0.5))
  with pytest.raises(ValueError, match='num_scales'):
    losses.get_loss_fn(vp, True, True, continuous=False, likelihood_weighting=False)(LinearNet(), torch.zeros(2, 3))
  with pytest.raises(ValueError, match='num_scales'):
    sde_lib.subVPSDE(beta_max=20., N=20).langevin_alpha(torch.full((2,), 0.5))
