"""The methods of the family besides MSGM (finetune, neggrad, salun, sa, erasediff, siss, vdu): their losses
against hand-computed values and their papers' formulas, their update rules, and a few training steps of
every method on the 2-D toy and the 8×8 digits (continuous and discrete, from scratch and fine-tuning)."""
import copy
import math

import pytest
import torch
from torch import nn

import datasets
import losses
import run_lib
import sde_lib
import unlearning
import utils
from configs.default_configs import get_base_config
from test_losses import SS, STD, Z, LinearNet, perturbed
from toy_configs import tiny_toy_config
from unlearning import erasediff, fisher, needs, neggrad, sa, salun, siss, vdu
from unlearning.base import Context


def toy(n_iters=6):
  config = tiny_toy_config(n_iters=n_iters, num_train=400, num_test=100, width=16)
  config.training.snapshot_sampling = False
  config.training.batch_size, config.training.batch_size_un = 64, 32
  config.sa.samples = config.vdu.samples = 40
  config.sa.fisher_times = config.vdu.fisher_times = 2
  return config


# ----------------------------------------------------------------------------------------------------------
# NegGrad+


def test_neggrad_loss_by_hand_and_its_ceiling():
  """−min(λ‖s − ∇‖², c·L_0), L_0 = λ‖∇‖² (the zero score): ‖s − ∇‖² σ² = 21, ‖∇‖² σ² = ‖z‖² = 14 (sum form)."""
  p = perturbed(False)
  assert neggrad.zero_score_loss(p, False).item() == pytest.approx(0.5 * 14.)
  assert neggrad.neggrad_loss(p, False, ceiling=2.).item() == pytest.approx(-0.5 * 21.)   # below 2·14: plain ascent
  assert neggrad.neggrad_loss(p, False, ceiling=1.).item() == pytest.approx(-0.5 * 14.)   # cut at the ceiling
  assert neggrad.neggrad_loss(p, False, ceiling=0.).item() == pytest.approx(-0.5 * 21.)   # no ceiling
  # at the ceiling the item gives no gradient: the ascent stops there
  ss = SS.clone().requires_grad_(True)
  q = losses.Perturbed(ss, Z, STD, torch.ones(1), torch.ones(1))
  neggrad.neggrad_loss(q, False, ceiling=1.).sum().backward()
  assert torch.count_nonzero(ss.grad) == 0
  ss.grad = None
  neggrad.neggrad_loss(q, False, ceiling=2.).sum().backward()
  torch.testing.assert_close(ss.grad, -(SS + Z))     # −½·2(ŝ + z)


# ----------------------------------------------------------------------------------------------------------
# SalUn


class TwoLayer(nn.Module):
  def __init__(self):
    super().__init__()
    self.a = nn.Parameter(torch.tensor([1., 2., 3., 4.]))
    self.b = nn.Parameter(torch.tensor([0.5, -0.5]))
    self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)


def test_saliency_mask_keeps_the_share_with_the_largest_summed_clipped_gradient():
  model = TwoLayer()
  # loss(x) = Σ_i x_i a_i + 10 b_0 (per batch x): ∇a = x, ∇b = [10, 0]
  loss_fn = lambda m, x, g: (x * m.a).sum() + 10. * m.b[0] + 0. * m.b[1]
  batches = [torch.tensor([0.1, 0., 0., 0.]), torch.tensor([0., 0., 0.3, 0.])]
  # batch 1: g = [0.1, 0, 0, 0, 10, 0], norm ≈ 10 -> clipped to [0.01, 0, 0, 0, 1, 0] (approx.)
  # batch 2: g = [0, 0, 0.3, 0, 10, 0], norm ≈ 10.0045 -> [0, 0, 0.03, 0, 0.9996, 0]; sum: a = [.01, 0, .03, 0]
  mask = salun.saliency_mask(model, lambda m, x, g: loss_fn(m, x, g), batches, share=0.5)
  assert set(mask) == {'a', 'b'}                    # only trainable parameters
  assert mask['a'].tolist() == [True, False, True, False] and mask['b'].tolist() == [True, False]
  one = salun.saliency_mask(model, lambda m, x, g: loss_fn(m, x, g), batches, share=1 / 6)
  assert sum(int(m.sum()) for m in one.values()) == 1 and one['b'][0]
  with pytest.raises(ValueError, match='salun.share'):
    salun.saliency_mask(model, loss_fn, batches, share=0.)


def test_salun_moves_exactly_the_masked_weights(tmp_path):
  config = toy(6)
  run_lib.train(copy.deepcopy(config), str(tmp_path / 'pre'), 'standard', progress=False)
  config.training.pretrained = run_lib.latest_checkpoint(str(tmp_path / 'pre'))[0]
  config.optim.weight_decay = 1e-2     # even a decay that would move every weight leaves the unmasked ones
  config.salun.share = 0.3
  state = run_lib.train(config, str(tmp_path / 'run'), 'salun', finetune=True, progress=False)
  start = utils.strip_module_prefix(utils.load_file(config.training.pretrained)['model'])
  mask = utils.load_file(tmp_path / 'run' / salun.MASK_FILE)['tensors']
  moved = total = 0
  for name, p in state['model'].named_parameters():
    if not p.requires_grad:
      continue
    m = mask[name]
    assert torch.equal(p.detach()[~m], start[name][~m]), name     # unmasked: exactly the pretrained values
    moved += int((p.detach()[m] != start[name][m]).sum())
    total += int(m.sum())
  assert total > 0 and moved > 0.9 * total
  share = total / sum(v.numel() for v in mask.values())
  assert share == pytest.approx(0.3, abs=1e-3)


# ----------------------------------------------------------------------------------------------------------
# Selective Amnesia: Fisher, penalty, replay filter


class Quadratic(nn.Module):
  """out = w ⊙ x + c (a network of 3 weights on 2-D data)."""

  def __init__(self):
    super().__init__()
    self.w = nn.Parameter(torch.tensor([0.7, -1.2]))
    self.c = nn.Parameter(torch.tensor([0.3]))

  def forward(self, x, labels):
    return self.w * x + self.c


def test_diagonal_fisher_matches_central_differences():
  torch.manual_seed(0)
  model = Quadratic()
  items = torch.randn(5, 2)
  t = torch.tensor([0.2, 0.7, 0.4])
  z = torch.randn(3, 2)
  sde = sde_lib.VPSDE()

  def loss_fn(m, x, generator):   # fixed draws: deterministic per item
    p = losses.perturb_continuous(sde, m, x, False, t=t, z=z)
    return losses.dsm_loss(p, True)

  got = fisher.diagonal_fisher(model, loss_fn, items, times=3, scale=10.)
  h = 1e-3
  expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
  with torch.no_grad():
    for name, param in model.named_parameters():
      for j in range(param.numel()):
        for x in items:
          xs = x[None].expand(3, 2)
          param.view(-1)[j] += h
          up = 10. * loss_fn(model, xs, None).mean()
          param.view(-1)[j] -= 2 * h
          down = 10. * loss_fn(model, xs, None).mean()
          param.view(-1)[j] += h
          expected[name].view(-1)[j] += ((up - down) / (2 * h)) ** 2 / len(items)
  for name in expected:
    torch.testing.assert_close(got[name], expected[name], rtol=2e-3, atol=1e-6)


def test_quadratic_penalty_and_its_gradient():
  model = Quadratic()
  centre = {'w': torch.tensor([0.5, -1.]), 'c': torch.tensor([0.])}
  prec = {'w': torch.tensor([2., 3.]), 'c': torch.tensor([4.])}
  value = fisher.quadratic_penalty(model, centre, prec)
  assert value.item() == pytest.approx(2 * 0.2 ** 2 + 3 * 0.2 ** 2 + 4 * 0.3 ** 2)
  value.backward()
  torch.testing.assert_close(model.w.grad, 2 * torch.tensor([2., 3.]) * torch.tensor([0.2, -0.2]))


def test_replay_keeps_retained_classes_and_penalty_scale():
  labels = torch.tensor([0, 3, 7, 3, 9])
  assert sa.retained_rows(labels, [3]).tolist() == [True, False, True, False, True]
  attrs = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
  assert sa.retained_rows(attrs, [1, 2]).tolist() == [True, False, False]
  config = get_base_config()
  data = type('D', (), {'shape': (1, 28, 28)})()
  config.training.reduce_mean = True
  assert sa.penalty_scale(config, data) == 784.
  config.training.reduce_mean = False
  assert sa.penalty_scale(config, data) == 2.


def test_sa_replays_only_retained_samples_of_the_pretrained_model(tmp_path):
  pre = toy(400)
  pre.model.hidden_dims = (64, 64)
  run_lib.train(pre, str(tmp_path / 'pre'), 'standard', progress=False)
  config = toy(6)
  config.model.hidden_dims = (64, 64)
  config.training.pretrained = run_lib.latest_checkpoint(str(tmp_path / 'pre'))[0]
  state = run_lib.train(copy.deepcopy(config), str(tmp_path / 'run'), 'sa', finetune=True, progress=False)
  assert state['step'] == 6
  pool = utils.load_file(tmp_path / 'run' / needs.POOL_FILE)['tensors']['samples']
  assert pool.shape == (40, 2)
  data = datasets.get_dataset(config)
  kept = pool[data.density.posterior(pool).argmax(1) != 1]
  assert 0 < len(kept) < len(pool)          # some centre samples were drawn and dropped
  fim = utils.load_file(tmp_path / 'run' / fisher.FISHER_FILE)['tensors']
  assert set(fim) == {n for n, p in state['model'].named_parameters() if p.requires_grad}
  assert all((f >= 0).all() and torch.isfinite(f).all() for f in fim.values())
  # a second start (resume) reuses the cached pool and Fisher: same files, same bytes
  before = (tmp_path / 'run' / fisher.FISHER_FILE).read_bytes()
  cfg = copy.deepcopy(config)
  cfg.training.n_iters = 8
  run_lib.train(cfg, str(tmp_path / 'run'), 'sa', finetune=True, progress=False)
  assert (tmp_path / 'run' / fisher.FISHER_FILE).read_bytes() == before


# ----------------------------------------------------------------------------------------------------------
# EraseDiff


def test_erasediff_dynamic_barrier_by_hand():
  obj = erasediff.EraseDiffObjective(None, None, eta=0.1, fixed_lambda=-1.)
  g_r = [torch.tensor([1., 0.]), torch.tensor([2.])]       # ∇F
  g_f = [torch.tensor([0., 1.]), torch.tensor([-1.])]      # ∇q: ⟨∇F, ∇q⟩ = −2, ‖∇q‖² = 2 -> λ = 0.1 + 1 = 1.1
  lam, d = obj.combine(g_r, g_f)
  assert lam.item() == pytest.approx(1.1)
  torch.testing.assert_close(d[0], torch.tensor([1., 1.1])) and torch.testing.assert_close(d[1], torch.tensor([0.9]))
  # the barrier holds: ⟨d, ∇q⟩ = η ‖∇q‖² after the update's correction
  assert (d[0] @ g_f[0] + d[1] @ g_f[1]).item() == pytest.approx(0.1 * 2.)
  lam, _ = obj.combine([torch.tensor([0., 5.]), torch.tensor([0.])], g_f)   # ⟨∇F, ∇q⟩ = 5 > η‖∇q‖²: λ = 0
  assert lam.item() == 0.
  fixed = erasediff.EraseDiffObjective(None, None, eta=0.1, fixed_lambda=0.1)
  assert fixed.combine(g_r, g_f)[0].item() == pytest.approx(0.1)


def test_surrogate_noise_builds_x_t_and_target_from_uniform_noise():
  """EraseDiff's f: x_t = μ_t x + σ_t u and target u, u ~ U[0, 1) (the engine's noise='uniform')."""
  sde = sde_lib.VPSDE()
  net = LinearNet()
  x0 = torch.randn(6, 3)
  fn = losses.get_loss_fn(sde, False, True, True, False, noise='uniform')
  got = fn(net, x0, torch.Generator().manual_seed(5))
  g = torch.Generator().manual_seed(5)
  t = torch.rand(6, generator=g) * (1 - 1e-5) + 1e-5
  u = torch.rand(6, 3, generator=g)
  assert (u >= 0).all() and (u < 1).all()
  mean, std = sde.marginal_prob(x0, t)
  eps_hat = net(mean + std[:, None] * u, t * 999)
  torch.testing.assert_close(got, ((eps_hat - u) ** 2).mean(1))


def test_erasediff_step_applies_the_combined_gradient():
  torch.manual_seed(0)
  config = get_base_config()
  config.training.reduce_mean = True
  config.optim.warmup, config.optim.grad_clip, config.optim.lr = 0, -1., 1e-2
  net = LinearNet()
  ctx = Context(config, sde_lib.VPSDE(), None, torch.device('cpu'), net)
  obj = erasediff.build(ctx)
  xg, xf = torch.randn(8, 3), torch.randn(8, 3)
  lg, lf = obj.terms(net, 0, xg, xf, torch.Generator().manual_seed(1))
  g_r = torch.autograd.grad(lg.mean(), list(net.parameters()), retain_graph=True)
  g_f = torch.autograd.grad(lf.mean(), list(net.parameters()), retain_graph=True)
  dot = sum((a * b).sum() for a, b in zip(g_r, g_f))
  norm2 = sum((b * b).sum() for b in g_f)
  lam = max(0.1 - float(dot / norm2), 0.)
  obj.backward(net, obj.total(net, lg, lf), lg, lf)
  for p, a, b in zip(net.parameters(), g_r, g_f):
    torch.testing.assert_close(p.grad, a + lam * b)
  assert obj.last_lambda.item() == pytest.approx(lam)


# ----------------------------------------------------------------------------------------------------------
# SISS


def test_siss_importance_weights_by_hand():
  """w_x = N(m; μx) / q_λ with q_λ = (1 − λ) N(m; μx) + λ N(m; μa): d = ‖ε‖²/2."""
  eps_x, eps_a = torch.tensor([[1., 0.]]), torch.tensor([[0., 2.]])    # d_x = 0.5, d_a = 2
  w_x, w_a = siss.importance_weights(eps_x, eps_a, 0.3)
  nx, na = math.exp(-0.5), math.exp(-2.)
  q = 0.7 * nx + 0.3 * na
  assert w_x.item() == pytest.approx(nx / q) and w_a.item() == pytest.approx(na / q)
  # (1 − λ) w_x + λ w_a = 1 for every m_t
  assert (0.7 * w_x + 0.3 * w_a).item() == pytest.approx(1.)


class Affine(nn.Module):
  def __init__(self):
    super().__init__()
    self.w = nn.Parameter(torch.tensor([[0.6, -0.2], [0.1, 0.9]]))
    self.b = nn.Parameter(torch.tensor([0.05, -0.1]))

  def forward(self, x, labels):
    return x @ self.w.T + self.b + 0.001 * labels[:, None]


def test_siss_is_unbiased_for_the_retained_data_loss():
  """E over pairs (x ~ X, a ~ A), t and the mixture of the SISS objective = the DSM loss on X∖A (s = 1)."""
  X = torch.tensor([[-2., -2.], [0., 0.], [2., 2.], [1., -1.]])
  A = X[1:2]
  config = get_base_config()
  config.training.reduce_mean = True
  config.siss.mixture = 0.5
  sde, net = sde_lib.VPSDE(), Affine()
  ctx = Context(config, sde, None, torch.device('cpu'), net, train=False)
  obj = siss.SISSObjective(ctx, n=len(X), k=len(A))
  gen = torch.Generator().manual_seed(0)
  total, draws = 0., 0
  with torch.no_grad():
    for _ in range(40):
      idx = torch.randint(0, len(X), (5000,), generator=gen)
      lg, lf = obj.terms(net, 0, X[idx], A.expand(5000, 2), gen, train=False)
      total, draws = total + (lg + lf).double().sum().item(), draws + 5000
    retained = X[[0, 2, 3]]
    dsm = ctx.loss_fn()
    ref = sum(dsm(net, retained.repeat(20000, 1), gen).double().mean().item() for _ in range(10)) / 10
  est = total / draws
  assert est == pytest.approx(ref, rel=0.03), (est, ref)


# ----------------------------------------------------------------------------------------------------------
# VDU


def test_vdu_moments_over_several_checkpoints(tmp_path):
  config = toy(4)
  paths = []
  for seed in (1, 2, 3):
    cfg = copy.deepcopy(config)
    cfg.seed = seed
    run_lib.train(cfg, str(tmp_path / f's{seed}'), 'standard', progress=False)
    paths.append(run_lib.latest_checkpoint(str(tmp_path / f's{seed}'))[0])
  model = run_lib.create_state(config, 'cpu')['model']
  ctx = Context(config, sde_lib.get_sde(config), None, torch.device('cpu'), model)
  mean, precision = vdu.checkpoint_moments(ctx, paths, floor=1e-8)
  name = 'out.weight'
  values = []
  for p in paths:
    ckpt = utils.load_file(p)
    names = [n for n, q in model.named_parameters() if q.requires_grad]
    values.append(ckpt['ema']['shadow_params'][names.index(name)])
  stacked = torch.stack(values)
  torch.testing.assert_close(mean[name], stacked.mean(0))
  torch.testing.assert_close(precision[name], 1. / (stacked.var(0, unbiased=False) + 1e-8))
  with pytest.raises(ValueError, match='two or more'):
    vdu.checkpoint_moments(ctx, paths[:1], 1e-8)


class Untouchable(torch.utils.data.Dataset):
  """A data set whose items may not be read (its length may)."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    raise AssertionError('D_g was read')


def test_vdu_never_reads_retained_data(tmp_path, monkeypatch):
  config = toy(6)
  run_lib.train(copy.deepcopy(config), str(tmp_path / 'pre'), 'standard', progress=False)
  config.training.pretrained = run_lib.latest_checkpoint(str(tmp_path / 'pre'))[0]
  real = datasets.get_dataset

  def guarded(cfg, *args, **kwargs):
    import dataclasses
    data = real(cfg, *args, **kwargs)
    hide = lambda split: dataclasses.replace(split, retain=Untouchable(len(split.retain)),
                                             full=Untouchable(len(split.full)))
    return dataclasses.replace(data, train=hide(data.train), test=hide(data.test))

  monkeypatch.setattr(datasets, 'get_dataset', guarded)
  state = run_lib.train(config, str(tmp_path / 'vdu'), 'vdu', finetune=True, progress=False)
  assert state['step'] == 6
  with pytest.raises(AssertionError, match='D_g was read'):     # the guard is real: unseen reads D_g
    run_lib.train(toy(2), str(tmp_path / 'unseen'), 'unseen', progress=False)
  assert 'single-checkpoint fallback' in (tmp_path / 'vdu' / 'vdu.json').read_text()
  line = [s for s in (tmp_path / 'vdu' / 'stdout.txt').read_text().splitlines() if 'step 6: loss' in s][0]
  assert 'loss_f' in line and 'loss_g' not in line     # no retain term: nothing to log for it


# ----------------------------------------------------------------------------------------------------------
# Every method trains: toy (continuous, discrete; scratch, fine-tune) and 8×8 digits


METHODS = [m.name for m in unlearning.registered() if m.unconditional]   # sfd: tests/test_sfd.py


@pytest.fixture(scope='module')
def pretrained_toy(tmp_path_factory):
  root = tmp_path_factory.mktemp('pre')
  paths = {}
  for continuous in (True, False):
    config = toy(6)
    config.training.continuous = continuous
    run_lib.train(config, str(root / str(continuous)), 'standard', progress=False)
    paths[continuous] = run_lib.latest_checkpoint(str(root / str(continuous)))[0]
  return paths


@pytest.mark.parametrize('method', METHODS)
@pytest.mark.parametrize('continuous', [True, False])
def test_every_method_trains_on_the_toy(tmp_path, method, continuous, pretrained_toy):
  for finetune in (False, True):
    config = toy(4)
    config.training.eval_freq = 2   # the evaluation loss too (its retain term reads D_g test data for every method)
    config.training.continuous = continuous
    config.training.pretrained = pretrained_toy[continuous]
    state = run_lib.train(config, str(tmp_path / str(finetune)), method, finetune=finetune, progress=False)
    assert state['step'] == 4 and utils.state_problem(state) is None


def digits_config(root):
  config = tiny_toy_config()
  from configs.mnist.small import get_small_config
  config = get_small_config('DIGITS8X8', '3')
  config.data.image_size, config.data.num_channels, config.data.root = 8, 1, str(root)
  config.model.nf, config.model.ch_mult, config.model.num_res_blocks = 8, (1, 2), 1
  config.model.num_scales = 50
  t = config.training
  t.n_iters, t.snapshot_freq, t.snapshot_freq_for_preemption, t.log_freq, t.eval_freq = 3, 3, 3, 1, 0
  t.batch_size = t.batch_size_un = 16
  t.snapshot_sampling = False
  config.sa.replay, config.sa.samples, config.sa.fisher_times = 'data', 8, 1
  config.vdu.samples, config.vdu.fisher_times = 8, 1
  config.eval.batch_size = 8
  config.sampling.predictor = 'euler_maruyama'
  config.device = 'cpu'
  return config


@pytest.mark.parametrize('method', METHODS)
def test_every_method_fine_tunes_on_the_8x8_digits(tmp_path_factory, method):
  root = tmp_path_factory.getbasetemp() / 'digits'
  config = digits_config(root / 'data')
  pre = root / 'pre'
  if not (pre / 'checkpoints-meta' / 'checkpoint.pth').exists():
    run_lib.train(copy.deepcopy(config), str(pre), 'standard', progress=False)
  config.training.pretrained = run_lib.latest_checkpoint(str(pre))[0]
  work = tmp_path_factory.mktemp(method)
  state = run_lib.train(config, str(work), method, finetune=True, progress=False)
  assert state['step'] == 3 and utils.state_problem(state) is None


def test_the_docs_table_lists_every_method_as_registered():
  import pathlib
  text = (pathlib.Path(__file__).resolve().parents[1] / 'docs' / 'unlearning.md').read_text()
  assert unlearning.methods_table() in text
  assert set(METHODS) >= {'standard', 'unseen', 'finetune', 'orthogonal', 'obtuse', 'erase', 'neggrad', 'salun',
                          'sa', 'erasediff', 'siss', 'vdu'}


def test_toy_job_places_fine_tuning_methods_beside_the_tasks(tmp_path):
  from experiments import toy_gmm2d
  config = toy(20)
  md, results = toy_gmm2d.run_toy(config, str(tmp_path), ['standard'], progress=False, num_test=100, num_samples=50,
                                  methods=['neggrad', 'vdu'], method_steps=5)
  assert {'standard', 'neggrad (ft)', 'vdu (ft)'} <= set(results)
  assert '| neggrad (ft) |' in md and '| vdu (ft) |' in md
  for name in ('neggrad', 'vdu'):   # each fine-tuned the Standard run for 5 steps
    ckpt = utils.load_file(tmp_path / f'ft-{name}' / 'checkpoints-meta' / 'checkpoint.pth')
    assert ckpt['step'] == 5
  assert toy_gmm2d.method_names('all') == [m for m in METHODS if m not in ('standard', 'unseen')]
  assert (tmp_path / 'toy_figure.png').exists()


@pytest.mark.parametrize('method', ['sa', 'salun', 'vdu'])
def test_a_start_that_finds_the_cache_trains_as_one_that_computes_it(tmp_path, method, pretrained_toy):
  # A run stopped before its first checkpoint starts again from step 0 with its cached setup (samples, Fisher,
  # saliency mask): it must train the same weights as the start that computed them.
  config = toy(4)
  config.training.pretrained = pretrained_toy[True]
  first = run_lib.train(copy.deepcopy(config), str(tmp_path / 'first'), method, finetune=True, progress=False)
  caches = [f for f in (needs.POOL_FILE, fisher.FISHER_FILE, salun.MASK_FILE) if (tmp_path / 'first' / f).exists()]
  assert caches
  (tmp_path / 'again').mkdir()
  for f in caches:
    (tmp_path / 'again' / f).write_bytes((tmp_path / 'first' / f).read_bytes())
  stamps = {f: (tmp_path / 'again' / f).stat().st_mtime_ns for f in caches}
  again = run_lib.train(copy.deepcopy(config), str(tmp_path / 'again'), method, finetune=True, progress=False)
  assert {f: (tmp_path / 'again' / f).stat().st_mtime_ns for f in caches} == stamps   # read, not computed again
  for (name, a), b in zip(first['model'].state_dict().items(), again['model'].state_dict().values()):
    assert torch.equal(a, b), name
