"""Loss terms against hand-computed values (score form), the schedule, and the factories."""
import math

import pytest
import torch
from torch import nn

import losses
import sde_lib
from configs.default_configs import get_base_config
from models.ema import ExponentialMovingAverage

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


@pytest.mark.parametrize('reduce_mean', [True, False])
@pytest.mark.parametrize('lw', [False, True])
def test_obtuse_term_both_signs(reduce_mean, lw):
  lam = 4. if lw else 0.25
  dot = (S * GRAD).sum().item()          # 2·(-6) + 4·2 + 0 = -4
  assert dot == -4.
  paper = losses.obtuse_loss(perturbed(lw), reduce_mean, 'paper').item()
  official = losses.obtuse_loss(perturbed(lw), reduce_mean, 'official').item()
  assert paper == pytest.approx(reduce(lam * dot, reduce_mean))
  assert official == pytest.approx(-paper)
  # The official code's unweighted form is R(score·σ·z) = -R(ε̂·z): check that literal expression.
  if not lw:
    assert official == pytest.approx(reduce((S * 0.5 * Z).sum().item(), reduce_mean))


@pytest.mark.parametrize('reduce_mean', [True, False])
@pytest.mark.parametrize('lw', [False, True])
def test_orthogonal_dot_vs_elementwise(reduce_mean, lw):
  lam = 4. if lw else 0.25
  dot = losses.orthogonal_loss(perturbed(lw), reduce_mean, 'dot', lw).item()
  elem = losses.orthogonal_loss(perturbed(lw), reduce_mean, 'elementwise', lw).item()
  # paper: λ ⟨s, ∇⟩² = λ · 16
  assert dot == pytest.approx(reduce(lam * 16., reduce_mean))
  # official: Σ (s_i ∇_i)² = 144 + 64 + 0 = 208, weighted by σ⁴ (no LW) or g² (LW)
  weight = 4. if lw else 0.5 ** 4
  assert elem == pytest.approx(reduce(weight * 208., reduce_mean))
  # and the official code's literal expressions
  if lw:
    official = reduce(((S * Z / 0.5) ** 2).sum().item(), reduce_mean) * 4.
  else:
    official = reduce(((S * 0.5 * Z) ** 2).sum().item(), reduce_mean)
  assert elem == pytest.approx(official)


def test_erase_term_regresses_onto_uniform_noise():
  g = torch.Generator().manual_seed(3)
  u = torch.rand(Z.shape, generator=g)
  expected = ((S * 0.5 + u) ** 2).mean().item()
  got = losses.erase_loss(perturbed(False), True, torch.Generator().manual_seed(3)).item()
  assert got == pytest.approx(expected)


def test_bad_switches_are_refused():
  with pytest.raises(ValueError, match='obtuse_sign'):
    losses.obtuse_loss(perturbed(False), True, 'backwards')
  with pytest.raises(ValueError, match='orthogonal_product'):
    losses.orthogonal_loss(perturbed(False), True, 'cross')
  with pytest.raises(ValueError, match="unknown task 'forget'.*square"):
    losses.get_task('forget')
  assert losses.get_task('square') is losses.get_task('orthogonal')
  assert losses.get_task('no_u').retain_data == 'retain'
  assert losses.get_task('normal').retain_data == 'full'


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


def _state(net, config):
  return dict(model=net, optimizer=losses.get_optimizer(config, net.parameters()),
              ema=ExponentialMovingAverage(net.parameters(), 0.99), step=0)


@pytest.mark.parametrize('continuous', [True, False])
@pytest.mark.parametrize('task', ['orthogonal', 'obtuse', 'erase'])
def test_forget_every_fourth_step(continuous, task):
  """Official schedule: L_f on steps 0, 4, 8; other steps use α·L_g alone (forget batch not needed)."""
  config = get_base_config()
  config.optim.warmup = 0
  config.unlearn.forget_every = 4
  sde = sde_lib.VPSDE()
  net = LinearNet()
  state = _state(net, config)
  step_fn = losses.get_msgm_step_fn(sde, True, losses.get_task(task), config.unlearn,
                                    losses.optimization_manager(config), reduce_mean=True, continuous=continuous)
  used = []
  for _ in range(10):
    needs = step_fn.needs_forget_batch(state['step'])
    out = step_fn(state, torch.randn(4, 3), torch.randn(4, 3) if needs else None)
    used.append(not math.isnan(out['loss_f'].item()))
    if used[-1]:
      assert out['loss'].item() == pytest.approx(0.99 * out['loss_g'].item() + 0.01 * out['loss_f'].item(),
                                                 rel=1e-5)
    else:
      assert out['loss'].item() == pytest.approx(0.99 * out['loss_g'].item(), rel=1e-6)
  assert used == [True, False, False, False, True, False, False, False, True, False]
  assert state['step'] == 10


def test_standard_task_is_plain_dsm_and_missing_forget_batch_is_refused():
  config = get_base_config()
  sde = sde_lib.VPSDE()
  net = LinearNet()
  state = _state(net, config)
  step_fn = losses.get_msgm_step_fn(sde, True, losses.get_task('standard'), config.unlearn,
                                    losses.optimization_manager(config))
  out = step_fn(state, torch.randn(4, 3))
  assert out['loss'].item() == out['loss_g'].item()
  square = losses.get_msgm_step_fn(sde, True, losses.get_task('square'), config.unlearn,
                                   losses.optimization_manager(config))
  state['step'] = 8
  with pytest.raises(ValueError, match='forget batch'):
    square(state, torch.randn(4, 3))


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


# ---- extensions (docs/unlearning.md) ----

@pytest.mark.parametrize('reduce_mean', [True, False])
def test_obtuse_target_form_by_hand(reduce_mean):
  """λ ‖s − s_ref − κ(−∇)‖² in score form, σ = 0.5: s = [2, 4, 0], −∇ = z/σ = [6, −2, 4]."""
  kappa = 2.
  no_ref = losses.obtuse_target_loss(perturbed(False), reduce_mean, kappa).item()
  # s − κ z/σ = [2 − 12, 4 + 4, 0 − 8] = [−10, 8, −8]; squares 100 + 64 + 64 = 228; λ = σ² = 0.25 -> 57
  assert no_ref == pytest.approx(reduce(57., reduce_mean))
  p = perturbed(False)
  p.reference = torch.tensor([[0.5, 0.5, 0.5]])      # σ s_ref: s_ref = [1, 1, 1]
  with_ref = losses.obtuse_target_loss(p, reduce_mean, kappa).item()
  # s − s_ref − κ z/σ = [−11, 7, −9]: 121 + 49 + 81 = 251 -> 62.75
  assert with_ref == pytest.approx(reduce(62.75, reduce_mean))


@pytest.mark.parametrize('reduce_mean', [True, False])
def test_obtuse_ratio_form_by_hand(reduce_mean):
  """λ ‖s − s_ref − κ(s_ref − ∇)‖², σ = 0.5: s = [2, 4, 0], s_ref = [1, 1, 1], ∇ = [−6, 2, −4], κ = 2."""
  p = perturbed(False)
  with pytest.raises(ValueError, match="needs a reference model"):
    losses.obtuse_ratio_loss(p, reduce_mean, 2.)
  p.reference = torch.tensor([[0.5, 0.5, 0.5]])
  # s − 3 s_ref + 2 ∇ = [2 − 3 − 12, 4 − 3 + 4, 0 − 3 − 8] = [−13, 5, −11]: 169 + 25 + 121 = 315; λ = 0.25
  assert losses.obtuse_ratio_loss(p, reduce_mean, 2.).item() == pytest.approx(reduce(78.75, reduce_mean))
  # κ = 0 regresses onto the reference (λ‖s − s_ref‖² = 0.25 · 11); κ = −1 is plain denoising score matching
  assert losses.obtuse_ratio_loss(p, reduce_mean, 0.).item() == pytest.approx(reduce(2.75, reduce_mean))
  assert losses.obtuse_ratio_loss(p, reduce_mean, -1.).item() == pytest.approx(losses.dsm_loss(p, reduce_mean).item())


def test_hole_potential_by_hand():
  """Φ(ℓ) = c·sigmoid(β(ℓ − ℓ*)): c/2 at the threshold, c/(1 + e^{−βΔ}) elsewhere."""
  ell = torch.tensor([1., 1.5, 0., 3.])
  phi = losses.hole_potential(ell, 10., 1., 2.)
  expected = [5., 10. / (1. + math.exp(-1.)), 10. / (1. + math.exp(2.)), 10. / (1. + math.exp(-4.))]
  torch.testing.assert_close(phi, torch.tensor(expected))


def test_hole_tilt_of_a_linear_log_ratio():
  """ℓ(x) = a·x: ∇Φ = c β sig(1 − sig) a, scaled by σ; no gradient reaches the ratio's inputs."""
  a = torch.tensor([2., -1.])
  tilt_fn = losses.get_hole_tilt_fn(lambda x, t: x @ a, depth=3., threshold=0.5, sharpness=4.)
  x = torch.tensor([[0.25, 0.], [1., 1.]], requires_grad=True)
  std = torch.tensor([0.5, 0.1])
  tilt = tilt_fn(x, torch.zeros(2), std)
  for i, ell in enumerate([0.5, 1.]):
    sig = 1. / (1. + math.exp(-4. * (ell - 0.5)))
    torch.testing.assert_close(tilt[i], std[i] * 3. * 4. * sig * (1. - sig) * a)
  assert not tilt.requires_grad


@pytest.mark.parametrize('reduce_mean', [True, False])
def test_obtuse_hole_form_by_hand(reduce_mean):
  """λ ‖s − (s_ref − ∇Φ)‖², σ = 0.5: s = [2, 4, 0], s_ref = [1, 1, 1], ∇Φ = [4, 0, −2] (σ∇Φ = [2, 0, −1])."""
  p = perturbed(False)
  with pytest.raises(ValueError, match="needs a reference model"):
    losses.obtuse_hole_loss(p, reduce_mean)
  p.reference = torch.tensor([[0.5, 0.5, 0.5]])
  p.tilt = torch.tensor([[2., 0., -1.]])
  # s − s_ref + ∇Φ = [2 − 1 + 4, 4 − 1 + 0, 0 − 1 − 2] = [5, 3, −3]: 25 + 9 + 9 = 43; λ = 0.25 -> 10.75
  assert losses.obtuse_hole_loss(p, reduce_mean).item() == pytest.approx(reduce(10.75, reduce_mean))
  p.tilt = torch.zeros_like(SS)          # no hole: distils the reference
  assert losses.obtuse_hole_loss(p, reduce_mean).item() == pytest.approx(reduce(0.25 * 11., reduce_mean))


def test_obtuse_hole_form_refusals():
  config = get_base_config()
  sde = sde_lib.VPSDE()
  config.unlearn.obtuse_form = 'hole'
  ratio = lambda x, t: x.sum(dim=1)
  with pytest.raises(ValueError, match="obtuse_form='hole' needs a reference model"):
    losses.get_loss_fn(sde, True, True, True, False, term='obtuse', unlearn=config.unlearn, log_ratio_fn=ratio)
  with pytest.raises(ValueError, match="needs a noisy density ratio: set unlearn.classifier"):
    losses.get_loss_fn(sde, True, True, True, False, term='obtuse', unlearn=config.unlearn, reference=LinearNet())
  with pytest.raises(ValueError, match='needs continuous training'):
    losses.get_loss_fn(sde, True, True, False, False, term='obtuse', unlearn=config.unlearn, reference=LinearNet())
  config.unlearn.hole_sharpness = 0.
  with pytest.raises(ValueError, match='hole_sharpness > 0'):
    losses.get_loss_fn(sde, True, True, True, False, term='obtuse', unlearn=config.unlearn, reference=LinearNet(),
                       log_ratio_fn=ratio)


def test_obtuse_hole_loss_fn_end_to_end():
  """Through ``get_loss_fn``: the tilt is σ_t ∇Φ(ℓ(x_t, t)) at the model's own (x_t, t)."""
  config = get_base_config()
  config.unlearn.obtuse_form = 'hole'
  config.unlearn.hole_depth, config.unlearn.hole_log_ratio, config.unlearn.hole_sharpness = 2., 0., 1.
  sde = sde_lib.VPSDE()
  net, ref = RecordingNet(), RecordingNet()
  for q in ref.parameters():
    q.requires_grad_(False)
  a = torch.tensor([1., -2.])
  fn = losses.get_loss_fn(sde, True, True, True, False, term='obtuse', unlearn=config.unlearn, reference=ref,
                          log_ratio_fn=lambda x, t: x @ a)
  gen = torch.Generator().manual_seed(0)
  x0 = torch.randn(64, 2)
  loss = fn(net, x0, gen)
  # Redo by hand with the same draws: t then z from the generator.
  gen = torch.Generator().manual_seed(0)
  t = torch.rand(64, generator=gen) * (1. - 1e-5) + 1e-5
  z = torch.randn(64, 2, generator=gen)
  mean, std = sde.marginal_prob(x0, t)
  x_t = mean + std[:, None] * z
  torch.testing.assert_close(net.seen, t * 999.)
  sig = torch.sigmoid(x_t @ a)
  tilt = std[:, None] * (2. * sig * (1. - sig))[:, None] * a
  ss = -net(x_t, t * 999.).detach()
  ss_ref = -ref(x_t, t * 999.)
  torch.testing.assert_close(loss.detach(), ((ss - ss_ref + tilt) ** 2).mean(dim=1), rtol=1e-5, atol=1e-6)


def test_negative_dsm_is_twice_obtuse_minus_score_norm():
  p = perturbed(False)
  neg = losses.negative_dsm_loss(p, True).item()
  assert neg == pytest.approx(-losses.dsm_loss(p, True).item())
  # −λ‖s − ∇‖² = 2 λ⟨s, ∇⟩ − λ‖s‖² − λ‖∇‖²: λ = 0.25, ⟨s,∇⟩ = −4, ‖s‖² = 20, ‖∇‖² = 56 -> −21 (sum form)
  assert neg == pytest.approx((2 * 0.25 * -4 - 0.25 * 20 - 0.25 * 56) / 3)


def test_orthogonal_acts_on_the_change_from_the_reference():
  p = perturbed(False)
  p.reference = SS.clone()          # s = s_ref: nothing left to make orthogonal
  assert losses.orthogonal_loss(p, True, 'dot').item() == 0.
  p.reference = torch.tensor([[0.5, 0., 0.]])   # s − s_ref = [1, 4, 0]; ⟨., ∇⟩ = −6 + 8 = 2; λ·4 = 1
  assert losses.orthogonal_loss(p, False, 'dot').item() == pytest.approx(0.5 * 1.)


class RecordingNet(LinearNet):
  def forward(self, x, labels):
    self.seen = labels.detach().clone()
    return super().forward(x, labels)


def test_forget_time_range_and_frozen_reference():
  config = get_base_config()
  config.unlearn.forget_t_min, config.unlearn.forget_t_max = 0.1, 0.3
  sde = sde_lib.VPSDE()
  net, ref = RecordingNet(), RecordingNet()
  for q in ref.parameters():
    q.requires_grad_(False)
  fn = losses.get_loss_fn(sde, True, True, True, False, term='obtuse', unlearn=config.unlearn, reference=ref)
  loss = fn(net, torch.randn(256, 2)).mean()
  t = net.seen / 999.
  assert t.min() >= 0.1 and t.max() <= 0.3 and t.max() - t.min() > 0.15
  torch.testing.assert_close(ref.seen, net.seen)          # the reference sees the same (x_t, t)
  loss.backward()
  assert net.a.grad is not None and ref.a.grad is None
  g = losses.get_loss_fn(sde, True, True, True, False, term='dsm', unlearn=config.unlearn)
  g(net, torch.randn(256, 2))
  assert (net.seen / 999.).max() > 0.5                   # L_g keeps the whole time range
  config.unlearn.forget_t_min = 0.5
  with pytest.raises(ValueError, match='forget_t_min/forget_t_max'):
    losses.get_loss_fn(sde, True, True, True, False, term='obtuse', unlearn=config.unlearn)
  config.unlearn.forget_t_min = 0.1
  with pytest.raises(ValueError, match='need continuous training'):
    losses.get_loss_fn(sde, True, True, False, False, term='obtuse', unlearn=config.unlearn)


def test_obtuse_form_switch_and_refusals():
  config = get_base_config()
  sde = sde_lib.VPSDE()
  config.unlearn.obtuse_form = 'hinge'
  with pytest.raises(ValueError, match="obtuse_form 'hinge'; valid: linear, target, ratio, negative_dsm, hole"):
    losses.get_loss_fn(sde, True, True, True, False, term='obtuse', unlearn=config.unlearn)
  config.unlearn.obtuse_form = 'ratio'
  with pytest.raises(ValueError, match="obtuse_form='ratio' needs a reference model"):
    losses.get_loss_fn(sde, True, True, True, False, term='obtuse', unlearn=config.unlearn)
  assert losses.get_loss_fn(sde, True, True, True, False, term='obtuse', unlearn=config.unlearn,
                            reference=LinearNet()) is not None
  config.unlearn.obtuse_form = 'target'
  config.unlearn.obtuse_sign = 'official'
  with pytest.raises(ValueError, match="obtuse_sign='official' applies to obtuse_form='linear'"):
    losses.get_loss_fn(sde, True, True, True, False, term='obtuse', unlearn=config.unlearn)


def test_presets():
  import presets
  config = get_base_config()
  config.unlearn.preset = 'toy-best'
  with pytest.raises(ValueError, match="needs a reference model"):
    presets.apply_preset(config, 'norm')
  config.unlearn.reference = 'unseen.pth'
  with pytest.raises(ValueError, match="needs a noisy classifier .*--mode train_noisy_classifier"):
    presets.apply_preset(config, 'norm')
  config.unlearn.classifier = 'nc.pth'
  presets.apply_preset(config, 'norm')
  for key, value in presets.PRESETS['toy-best']['unlearn'].items():
    assert config.unlearn[key] == value
  assert config.unlearn.obtuse_form == 'hole'
  with pytest.raises(ValueError, match="builds on --task obtuse"):
    presets.apply_preset(config, 'square')
  config = get_base_config()
  config.unlearn.preset, config.unlearn.reference = 'toy-ratio', 'unseen.pth'
  presets.apply_preset(config, 'obtuse')      # the ratio form needs no classifier
  assert config.unlearn.obtuse_form == 'ratio' and config.unlearn.push == 16.
  config.unlearn.preset = 'best-ever'
  with pytest.raises(ValueError, match="unknown unlearn.preset 'best-ever'; valid: mnist-best, toy-best, toy-ratio"):
    presets.apply_preset(config, 'obtuse')
