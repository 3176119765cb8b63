"""MSGM's forget terms (Orthogonal, Obtuse and its forms, the official erase, the hole) against hand-computed
values (score form), their schedule, switches, refusals and presets, through the ``unlearning`` registry."""
import math

import pytest
import torch

import datasets
import losses
import sde_lib
import unlearning
from configs.default_configs import get_base_config
from models.ema import ExponentialMovingAverage
from test_losses import GRAD, S, SS, Z, LinearNet, perturbed, reduce
from toy_configs import tiny_toy_config
from unlearning import erase, hole, obtuse, orthogonal
from unlearning.base import Context


def context(config=None, continuous=True, data=None, model=None):
  """A build context on the CPU with the tiny toy data (or ``data``) and a LinearNet."""
  config = config or get_base_config()
  config.training.continuous = continuous
  config.training.reduce_mean = True
  return Context(config, sde_lib.VPSDE(), data, torch.device('cpu'), model or LinearNet())


def obtuse_fn(config, continuous=True, reference=None, tilt_fn=None):
  """The Obtuse forget loss of ``config.unlearn`` with a given reference network and tilt."""
  ctx = context(config, continuous)
  return ctx.loss_fn(obtuse.obtuse_term(config.unlearn, True), t_range=unlearning.base.forget_time_range(config.unlearn),
                     reference=reference, tilt_fn=tilt_fn)


class RecordingNet(LinearNet):
  def forward(self, x, labels):
    self.seen = labels.detach().clone()
    return super().forward(x, labels)



@pytest.mark.parametrize('reduce_mean', [True, False])
@pytest.mark.parametrize('lw', [False, True])
def test_obtuse_term_both_signs(reduce_mean, lw):
  lam = 4. if lw else 0.25
  dot = (S * GRAD).sum().item()          # 2·(-6) + 4·2 + 0 = -4
  assert dot == -4.
  paper = obtuse.obtuse_loss(perturbed(lw), reduce_mean, 'paper').item()
  official = obtuse.obtuse_loss(perturbed(lw), reduce_mean, 'official').item()
  assert paper == pytest.approx(reduce(lam * dot, reduce_mean))
  assert official == pytest.approx(-paper)
  # The official code's unweighted form is R(score·σ·z) = -R(ε̂·z): check that literal expression.
  if not lw:
    assert official == pytest.approx(reduce((S * 0.5 * Z).sum().item(), reduce_mean))


@pytest.mark.parametrize('reduce_mean', [True, False])
@pytest.mark.parametrize('lw', [False, True])
def test_orthogonal_dot_vs_elementwise(reduce_mean, lw):
  lam = 4. if lw else 0.25
  dot = orthogonal.orthogonal_loss(perturbed(lw), reduce_mean, 'dot', lw).item()
  elem = orthogonal.orthogonal_loss(perturbed(lw), reduce_mean, 'elementwise', lw).item()
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
  got = erase.erase_loss(perturbed(False), True, torch.Generator().manual_seed(3)).item()
  assert got == pytest.approx(expected)


def test_bad_switches_are_refused():
  with pytest.raises(ValueError, match='obtuse_sign'):
    obtuse.obtuse_loss(perturbed(False), True, 'backwards')
  with pytest.raises(ValueError, match='orthogonal_product'):
    orthogonal.orthogonal_loss(perturbed(False), True, 'cross')
  with pytest.raises(ValueError, match="unknown task 'forget'.*square"):
    unlearning.get_method('forget')
  assert unlearning.get_method('square') is unlearning.get_method('orthogonal')
  assert unlearning.get_method('no_u').retain_data == 'retain'
  assert unlearning.get_method('normal').retain_data == 'full'


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
  net = LinearNet()
  state = _state(net, config)
  objective = unlearning.get_method(task).build(context(config, continuous, model=net))
  step_fn = unlearning.get_step_fn(objective, True, losses.optimization_manager(config))
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
  net = LinearNet()
  state = _state(net, config)
  step_fn = unlearning.get_step_fn(unlearning.get_method('standard').build(context(config, model=net)), True,
                                   losses.optimization_manager(config))
  out = step_fn(state, torch.randn(4, 3))
  assert out['loss'].item() == out['loss_g'].item()
  square = unlearning.get_step_fn(unlearning.get_method('square').build(context(config, model=net)), True,
                                  losses.optimization_manager(config))
  state['step'] = 8
  with pytest.raises(ValueError, match='forget batch'):
    square(state, torch.randn(4, 3))


# ---- extensions (docs/unlearning.md) ----

@pytest.mark.parametrize('reduce_mean', [True, False])
def test_obtuse_target_form_by_hand(reduce_mean):
  """λ ‖s − s_ref − κ(−∇)‖² in score form, σ = 0.5: s = [2, 4, 0], −∇ = z/σ = [6, −2, 4]."""
  kappa = 2.
  no_ref = obtuse.obtuse_target_loss(perturbed(False), reduce_mean, kappa).item()
  # s − κ z/σ = [2 − 12, 4 + 4, 0 − 8] = [−10, 8, −8]; squares 100 + 64 + 64 = 228; λ = σ² = 0.25 -> 57
  assert no_ref == pytest.approx(reduce(57., reduce_mean))
  p = perturbed(False)
  p.reference = torch.tensor([[0.5, 0.5, 0.5]])      # σ s_ref: s_ref = [1, 1, 1]
  with_ref = obtuse.obtuse_target_loss(p, reduce_mean, kappa).item()
  # s − s_ref − κ z/σ = [−11, 7, −9]: 121 + 49 + 81 = 251 -> 62.75
  assert with_ref == pytest.approx(reduce(62.75, reduce_mean))


@pytest.mark.parametrize('reduce_mean', [True, False])
def test_obtuse_ratio_form_by_hand(reduce_mean):
  """λ ‖s − s_ref − κ(s_ref − ∇)‖², σ = 0.5: s = [2, 4, 0], s_ref = [1, 1, 1], ∇ = [−6, 2, −4], κ = 2."""
  p = perturbed(False)
  with pytest.raises(ValueError, match="needs a reference model"):
    obtuse.obtuse_ratio_loss(p, reduce_mean, 2.)
  p.reference = torch.tensor([[0.5, 0.5, 0.5]])
  # s − 3 s_ref + 2 ∇ = [2 − 3 − 12, 4 − 3 + 4, 0 − 3 − 8] = [−13, 5, −11]: 169 + 25 + 121 = 315; λ = 0.25
  assert obtuse.obtuse_ratio_loss(p, reduce_mean, 2.).item() == pytest.approx(reduce(78.75, reduce_mean))
  # κ = 0 regresses onto the reference (λ‖s − s_ref‖² = 0.25 · 11); κ = −1 is plain denoising score matching
  assert obtuse.obtuse_ratio_loss(p, reduce_mean, 0.).item() == pytest.approx(reduce(2.75, reduce_mean))
  assert obtuse.obtuse_ratio_loss(p, reduce_mean, -1.).item() == pytest.approx(losses.dsm_loss(p, reduce_mean).item())


def test_hole_potential_by_hand():
  """Φ(ℓ) = c·sigmoid(β(ℓ − ℓ*)): c/2 at the threshold, c/(1 + e^{−βΔ}) elsewhere."""
  ell = torch.tensor([1., 1.5, 0., 3.])
  phi = hole.hole_potential(ell, 10., 1., 2.)
  expected = [5., 10. / (1. + math.exp(-1.)), 10. / (1. + math.exp(2.)), 10. / (1. + math.exp(-4.))]
  torch.testing.assert_close(phi, torch.tensor(expected))


def test_hole_tilt_of_a_linear_log_ratio():
  """ℓ(x) = a·x: ∇Φ = c β sig(1 − sig) a, scaled by σ; no gradient reaches the ratio's inputs."""
  a = torch.tensor([2., -1.])
  tilt_fn = hole.get_hole_tilt_fn(lambda x, t: x @ a, depth=3., threshold=0.5, sharpness=4.)
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
    obtuse.obtuse_hole_loss(p, reduce_mean)
  p.reference = torch.tensor([[0.5, 0.5, 0.5]])
  p.tilt = torch.tensor([[2., 0., -1.]])
  # s − s_ref + ∇Φ = [2 − 1 + 4, 4 − 1 + 0, 0 − 1 − 2] = [5, 3, −3]: 25 + 9 + 9 = 43; λ = 0.25 -> 10.75
  assert obtuse.obtuse_hole_loss(p, reduce_mean).item() == pytest.approx(reduce(10.75, reduce_mean))
  p.tilt = torch.zeros_like(SS)          # no hole: distils the reference
  assert obtuse.obtuse_hole_loss(p, reduce_mean).item() == pytest.approx(reduce(0.25 * 11., reduce_mean))


def test_obtuse_hole_form_refusals(tmp_path):
  import run_lib
  config = tiny_toy_config(n_iters=2)
  data = datasets.get_dataset(config)
  config.unlearn.obtuse_form = 'hole'
  with pytest.raises(ValueError, match="obtuse_form='hole' needs a reference model"):
    obtuse.build(context(config, data=data))
  run_lib.train(tiny_toy_config(n_iters=2), str(tmp_path / 'ref'), 'unseen', progress=False)
  config.unlearn.reference = run_lib.latest_checkpoint(str(tmp_path / 'ref'))[0]
  with pytest.raises(ValueError, match="needs a noisy density ratio: set unlearn.classifier"):
    obtuse.build(context(config, data=data))
  config.unlearn.classifier = 'exact'
  with pytest.raises(ValueError, match='needs continuous training'):
    obtuse.build(context(config, continuous=False, data=data))
  config.unlearn.hole_sharpness = 0.
  with pytest.raises(ValueError, match='hole_sharpness > 0'):
    obtuse.build(context(config, data=data))


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
  fn = obtuse_fn(config, reference=ref, tilt_fn=hole.hole_tilt(config, lambda x, t: x @ a))
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
  neg = obtuse.negative_dsm_loss(p, True).item()
  assert neg == pytest.approx(-losses.dsm_loss(p, True).item())
  # −λ‖s − ∇‖² = 2 λ⟨s, ∇⟩ − λ‖s‖² − λ‖∇‖²: λ = 0.25, ⟨s,∇⟩ = −4, ‖s‖² = 20, ‖∇‖² = 56 -> −21 (sum form)
  assert neg == pytest.approx((2 * 0.25 * -4 - 0.25 * 20 - 0.25 * 56) / 3)


def test_orthogonal_acts_on_the_change_from_the_reference():
  p = perturbed(False)
  p.reference = SS.clone()          # s = s_ref: nothing left to make orthogonal
  assert orthogonal.orthogonal_loss(p, True, 'dot').item() == 0.
  p.reference = torch.tensor([[0.5, 0., 0.]])   # s − s_ref = [1, 4, 0]; ⟨., ∇⟩ = −6 + 8 = 2; λ·4 = 1
  assert orthogonal.orthogonal_loss(p, False, 'dot').item() == pytest.approx(0.5 * 1.)


def test_forget_time_range_and_frozen_reference():
  config = get_base_config()
  config.unlearn.forget_t_min, config.unlearn.forget_t_max = 0.1, 0.3
  net, ref = RecordingNet(), RecordingNet()
  for q in ref.parameters():
    q.requires_grad_(False)
  fn = obtuse_fn(config, reference=ref)
  loss = fn(net, torch.randn(256, 2)).mean()
  t = net.seen / 999.
  assert t.min() >= 0.1 and t.max() <= 0.3 and t.max() - t.min() > 0.15
  torch.testing.assert_close(ref.seen, net.seen)          # the reference sees the same (x_t, t)
  loss.backward()
  assert net.a.grad is not None and ref.a.grad is None
  g = unlearning.base.dsm_term(context(config))
  g(net, torch.randn(256, 2))
  assert (net.seen / 999.).max() > 0.5                   # L_g keeps the whole time range
  config.unlearn.forget_t_min = 0.5
  with pytest.raises(ValueError, match='forget_t_min/forget_t_max'):
    obtuse_fn(config)
  config.unlearn.forget_t_min = 0.1
  with pytest.raises(ValueError, match='needs continuous training'):
    obtuse_fn(config, continuous=False)


class CallsNet(LinearNet):
  """A zero score network (a = b = 0) that keeps the times of every call."""

  def __init__(self):
    super().__init__()
    self.a.data.zero_()
    self.b.data.zero_()
    self.calls = []

  def forward(self, x, labels):
    self.calls.append(labels.detach().clone() / 999.)
    return super().forward(x, labels)


def test_low_noise_term_adds_the_target_form_at_low_noise():
  """With a zero score and no reference the paper's linear term is 0 and the added target term is
  w R((κ' z)²) = κ'² mean(z²) (VP, w = λ/σ² = 1), i.e. κ'² ± a few hundredths over 4,096 dimensions; it
  draws its own t on [0, low_noise_t_max] while the form's term keeps its range."""
  config = get_base_config()
  config.unlearn.forget_t_min, config.unlearn.forget_t_max = 0.2, 0.7
  config.unlearn.low_noise_push, config.unlearn.low_noise_t_max = 2., 0.05
  net = CallsNet()
  objective = obtuse.build(context(config, model=net))
  rows = objective.forget_fn(net, torch.randn(32, 4096), torch.Generator().manual_seed(0))
  assert rows.shape == (32,)
  torch.testing.assert_close(rows, torch.full((32,), 4.), atol=0.25, rtol=0.)
  assert len(net.calls) == 2
  form_t, low_t = net.calls
  assert form_t.min() >= 0.2 and form_t.max() <= 0.7
  assert low_t.max() <= 0.05 and low_t.min() >= 0.
  config.unlearn.low_noise_push = 0.             # the default: the form's term alone
  net = CallsNet()
  rows = obtuse.build(context(config, model=net)).forget_fn(net, torch.randn(32, 4096))
  assert len(net.calls) == 1 and torch.all(rows == 0.)


def test_low_noise_term_refusals():
  config = get_base_config()
  config.unlearn.low_noise_push = -1.
  with pytest.raises(ValueError, match='low_noise_push must be >= 0'):
    obtuse.build(context(config))
  config.unlearn.low_noise_push, config.unlearn.low_noise_t_max = 1., 0.
  with pytest.raises(ValueError, match=r'low_noise_t_max in \(0, 1\]'):
    obtuse.build(context(config))
  config.unlearn.low_noise_t_max = 0.05
  with pytest.raises(ValueError, match='low_noise_push needs continuous training'):
    obtuse.build(context(config, continuous=False))


def test_obtuse_form_switch_and_refusals():
  config = get_base_config()
  config.unlearn.obtuse_form = 'hinge'
  with pytest.raises(ValueError, match="obtuse_form 'hinge'; valid: linear, target, ratio, negative_dsm, hole"):
    obtuse.build(context(config))
  config.unlearn.obtuse_form = 'ratio'
  with pytest.raises(ValueError, match="obtuse_form='ratio' needs a reference model"):
    obtuse.build(context(config))
  assert obtuse_fn(config, reference=LinearNet()) is not None
  config.unlearn.obtuse_form = 'target'
  config.unlearn.obtuse_sign = 'official'
  with pytest.raises(ValueError, match="obtuse_sign='official' applies to obtuse_form='linear'"):
    obtuse.build(context(config))


def test_preset_conflicts_lists_the_flags_a_preset_would_overwrite():
  conflicts = unlearning.preset_conflicts
  # toy-ratio: ratio form, push 16, alpha 0.98, every step, t in [0, 0.1]
  assert conflicts('toy-ratio', {}) == []
  assert conflicts('toy-ratio', {'unlearn.push': 16., 'unlearn.alpha': 0.98}) == []      # the preset's own values
  assert conflicts('toy-ratio', {'unlearn.reference': 'u.pth', 'training.n_iters': 9}) == []  # keys it leaves alone
  assert conflicts('toy-ratio', {'unlearn.push': 2., 'unlearn.forget_t_max': 0.7, 'unlearn.alpha': 0.98}) == [
    'unlearn.push=2.0 (preset toy-ratio sets 16.0)', 'unlearn.forget_t_max=0.7 (preset toy-ratio sets 0.1)']
  assert conflicts('mnist-nll', {'unlearn.low_noise_push': 4.}) == [
    'unlearn.low_noise_push=4.0 (preset mnist-nll sets 2.0)']
  assert conflicts('', {'unlearn.push': 2.}) == [] and conflicts('best-ever', {'unlearn.push': 2.}) == []


def test_presets():
  presets = unlearning
  config = get_base_config()
  config.unlearn.preset = 'toy-best'
  with pytest.raises(ValueError, match="needs a reference model"):
    presets.apply_preset(config, 'norm')
  config.unlearn.reference = 'unseen.pth'
  with pytest.raises(ValueError, match="needs a noisy classifier .*--mode train_noisy_classifier"):
    presets.apply_preset(config, 'norm')
  config.unlearn.classifier = 'nc.pth'
  presets.apply_preset(config, 'norm')
  for key, value in unlearning.all_presets()['toy-best'][1]['unlearn'].items():
    assert config.unlearn[key] == value
  assert config.unlearn.obtuse_form == 'hole'
  with pytest.raises(ValueError, match="builds on --task obtuse"):
    presets.apply_preset(config, 'square')
  config = get_base_config()
  config.unlearn.preset, config.unlearn.reference = 'toy-ratio', 'unseen.pth'
  presets.apply_preset(config, 'obtuse')      # the ratio form needs no classifier
  assert config.unlearn.obtuse_form == 'ratio' and config.unlearn.push == 16.
  config.unlearn.preset = 'best-ever'
  with pytest.raises(ValueError, match="unknown unlearn.preset 'best-ever'; valid: mnist-best, mnist-nll, toy-best, "
                     "toy-ratio"):
    presets.apply_preset(config, 'obtuse')
  config.unlearn.preset = 'mnist-nll'                # mnist-best's ratio term plus the low-noise term
  presets.apply_preset(config, 'obtuse')
  u = config.unlearn
  assert (u.obtuse_form, u.push, u.forget_t_min, u.forget_t_max, u.low_noise_push, u.low_noise_t_max) == \
    ('ratio', 1., 0.2, 0.7, 2., 0.05)
