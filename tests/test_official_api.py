"""Code written against score_sde's API runs unchanged: every entry point accepts a config that holds the
official keys alone (score_sde's sections and keys, no key this project added), with the official
defaults (RK45, tolerances 1e-5, the paper's MSGM settings) for what it lacks."""
import math

import ml_collections
import pytest
import torch

import datasets
import likelihood
import losses
import run_lib
import sampling
import sde_lib
from configs.default_configs import get_base_config, with_defaults
from evaluation import run as evaluation_run
from models import utils as mutils
from models.ema import ExponentialMovingAverage


def official_config(dataset='DIGITS8X8', model='ncsnpp'):
  """score_sde's config layout and keys (configs/default_cifar10_configs.py + vp/cifar10_ddpmpp_continuous.py),
  with CPU-sized values."""
  c = ml_collections.ConfigDict()
  c.training = t = ml_collections.ConfigDict()
  t.batch_size, t.n_iters, t.snapshot_freq, t.log_freq, t.eval_freq = 16, 2, 2, 1, 1
  t.snapshot_freq_for_preemption, t.snapshot_sampling = 2, False
  t.likelihood_weighting, t.continuous, t.reduce_mean, t.sde = False, True, True, 'vpsde'
  c.sampling = s = ml_collections.ConfigDict()
  s.n_steps_each, s.noise_removal, s.probability_flow, s.snr = 1, True, False, 0.16
  s.method, s.predictor, s.corrector = 'ode', 'euler_maruyama', 'none'
  c.eval = e = ml_collections.ConfigDict()
  e.begin_ckpt, e.end_ckpt, e.batch_size, e.enable_sampling, e.num_samples = 0, 0, 8, False, 8
  e.enable_loss, e.enable_bpd, e.bpd_dataset = False, True, 'test'
  c.data = d = ml_collections.ConfigDict()
  d.dataset, d.image_size, d.random_flip, d.centered, d.uniform_dequantization, d.num_channels = \
    dataset, 8, True, True, False, 1
  c.model = m = ml_collections.ConfigDict()
  m.sigma_min, m.sigma_max, m.num_scales, m.beta_min, m.beta_max, m.dropout = 0.01, 50, 100, 0.1, 20., 0.
  m.embedding_type, m.name, m.scale_by_sigma, m.ema_rate = 'positional', model, False, 0.999
  m.normalization, m.nonlinearity, m.nf, m.ch_mult, m.num_res_blocks = 'GroupNorm', 'swish', 16, (1, 2), 1
  m.attn_resolutions, m.resamp_with_conv, m.conditional, m.fir, m.fir_kernel = (), True, True, False, [1, 3, 3, 1]
  m.skip_rescale, m.resblock_type, m.progressive, m.progressive_input = True, 'biggan', 'none', 'none'
  m.progressive_combine, m.attention_type, m.init_scale, m.fourier_scale, m.conv_size = 'sum', 'ddpm', 0., 16, 3
  c.optim = o = ml_collections.ConfigDict()
  o.weight_decay, o.optimizer, o.lr, o.beta1, o.eps, o.warmup, o.grad_clip = 0, 'Adam', 2e-4, 0.9, 1e-8, 5000, 1.
  c.seed = 42
  c.device = torch.device('cpu')   # score_sde keeps a torch.device here
  return c


def added_keys(config):
  """The (section.key) paths of ``config`` that score_sde does not have."""
  official = official_config()
  out = []
  for section, value in config.items():
    if section not in official:
      out.append(section)
    elif isinstance(value, ml_collections.ConfigDict):
      out += [f'{section}.{key}' for key in value if key not in official[section]]
  return out


def test_the_official_config_lacks_the_added_keys():
  """The test config really is official-only, and the project's base config really adds keys to it."""
  added = added_keys(get_base_config())
  for path in ('sampling.ode_method', 'sampling.ode_rtol', 'sampling.eps', 'training.batch_size_un', 'unlearn',
               'eval.classifier', 'data.root'):
    assert path in added
  for path in added:
    section, _, key = path.partition('.')
    assert (key or section) not in (official_config()[section] if key else official_config())


def test_with_defaults_fills_missing_keys_only_and_keeps_a_locked_config_locked():
  config = official_config()
  config.sampling.method = 'pc'
  config.lock()
  out = with_defaults(config)
  assert out is config
  assert (out.sampling.ode_method, out.sampling.ode_rtol, out.sampling.ode_atol) == ('RK45', 1e-5, 1e-5)
  assert out.unlearn.alpha == 0.99 and out.unlearn.forget_every == 4
  assert out.sampling.method == 'pc' and out.eval.batch_size == 8 and out.device == torch.device('cpu')
  with pytest.raises(AttributeError):
    out.sampling.nonsense = 1
  frozen = ml_collections.FrozenConfigDict(official_config())
  filled = with_defaults(frozen)
  assert filled.sampling.ode_method == 'RK45' and filled.training.batch_size == 16


def test_get_sampling_fn_ode_and_pc_from_official_keys():
  torch.manual_seed(0)
  config = official_config()
  sde = sde_lib.VPSDE(beta_min=config.model.beta_min, beta_max=config.model.beta_max, N=config.model.num_scales)
  model = mutils.create_model(config)
  inverse = datasets.get_data_inverse_scaler(config)
  shape = (2, 1, 8, 8)
  for method in ('ode', 'pc'):
    config.sampling.method = method
    fn = sampling.get_sampling_fn(config, sde, shape, inverse, 1e-3)
    x, nfe = fn(model)
    assert x.shape == shape and torch.isfinite(x).all() and nfe > 0
  assert 'ode_method' not in config.sampling or config.sampling.ode_method == 'RK45'


def test_likelihood_score_loss_and_step_functions_from_official_keys():
  torch.manual_seed(0)
  config = official_config()
  sde = sde_lib.get_sde(config)
  model = mutils.create_model(config)
  x = torch.rand(3, 1, 8, 8) * 2 - 1
  score = mutils.get_score_fn(sde, model, train=False, continuous=True)(x, torch.full((3,), 0.5))
  assert score.shape == x.shape
  bpd, z, nfe = likelihood.get_likelihood_fn(sde, datasets.get_data_inverse_scaler(config))(model, x)
  assert bpd.shape == (3,) and torch.isfinite(bpd).all() and z.shape == x.shape and nfe > 0
  optimizer = losses.get_optimizer(config, model.parameters())
  state = dict(model=model, optimizer=optimizer, step=0,
               ema=ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate))
  step_fn = losses.get_step_fn(sde, True, losses.optimization_manager(config), config.training.reduce_mean,
                               config.training.continuous, config.training.likelihood_weighting)
  loss = step_fn(state, x)
  assert state['step'] == 1 and math.isfinite(float(loss))


@pytest.mark.parametrize('task', ['standard', 'square'])
def test_train_and_evaluate_from_official_keys(tmp_path, task):
  config = official_config()
  state = run_lib.train(config, str(tmp_path), task, progress=False)
  assert state['step'] == 2
  config = official_config()
  config.eval.enable_bpd, config.eval.enable_loss = False, True   # the NLL path is tested above
  results = evaluation_run.evaluate(config, str(tmp_path), task, progress=False)
  assert results['step'] == 2 and math.isfinite(results['loss']['loss'])
  assert results['forget'] == ['3']   # the paper's forget set of the data set (no unlearn section given)
