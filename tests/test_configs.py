"""Every config file loads, builds its SDE and network, and refuses unknown keys; the official files hold the
MSGM fork's key values, and score_sde's setup stays reachable by the documented overrides."""
import importlib
import json
import pathlib

import pytest
import torch

import sde_lib
from models import utils as mutils

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(str(p.relative_to(ROOT).with_suffix('')).replace('/', '.')
                 for p in (ROOT / 'configs').rglob('*.py')
                 if p.name != '__init__.py' and not p.name.startswith('default') and p.name != 'architectures.py'
                 and p.name != 'small.py')


def test_config_files_found():
  for name in ('configs.vp.ddpm.cifar10', 'configs.vp.ddpm.cifar10_continuous', 'configs.vp.ddpm.stl10_continuous',
               'configs.vp.ddpm.celeba_continuous', 'configs.vp.cifar10_ddpmpp_continuous',
               'configs.ve.cifar10_ncsnpp_continuous', 'configs.subvp.cifar10_ncsnpp_continuous',
               'configs.ve.mnist_ncsnpp_continuous', 'configs.toy.gmm2d', 'configs.mnist.mnist5k_small',
               'configs.mnist.fashion_mnist_small'):
    assert name in CONFIGS


@pytest.mark.parametrize('name', CONFIGS)
def test_config_builds(name):
  config = importlib.import_module(name).get_config()
  config.lock()
  sde = sde_lib.get_sde(config)
  if config.model.name in ('ddpm', 'ncsnpp') and config.model.nf >= 64:
    config.model.nf = 32                  # the architecture is what is checked, not the size
    config.model.num_res_blocks = 1
  model = mutils.create_model(config)
  shape = (2, config.data.num_channels) if config.data.dataset == 'GMM2D' else \
    (2, config.data.num_channels, config.data.image_size, config.data.image_size)
  t = torch.full((2,), 0.5)
  with torch.no_grad():
    out = mutils.get_score_fn(sde, model, continuous=config.training.continuous)(torch.randn(shape), t)
  assert out.shape == shape
  with pytest.raises(AttributeError, match='nff'):
    config.model.nff = 3


# ----------------------------------------------------------------------------------------------
# The official experiment files against the MSGM fork (d48987f), key by key (docs/configs.md). The
# expected values are the fork's resolved configs written out by hand, not read from configs/.

_OPTIM = {'optim.optimizer': 'Adam', 'optim.lr': 2e-4, 'optim.beta1': 0.9, 'optim.eps': 1e-8,
          'optim.warmup': 5000, 'optim.grad_clip': 1., 'optim.weight_decay': 0., 'seed': 42}
_SAMPLING = {'sampling.n_steps_each': 1, 'sampling.noise_removal': True, 'sampling.probability_flow': False,
             'sampling.snr': 0.16}
_TRAINING = {'training.likelihood_weighting': False, 'training.snapshot_sampling': True,
             'training.log_freq': 40, 'training.eval_freq': 40}
_EVAL = {'eval.num_samples': 50000, 'eval.bpd_dataset': 'test', 'eval.enable_loss': False,
         'eval.enable_sampling': True}
_NOISE = {'model.beta_min': 0.1, 'model.beta_max': 20., 'model.sigma_min': 0.01, 'model.num_scales': 1000,
          'model.dropout': 0.1}
_SHARED = {**_OPTIM, **_SAMPLING, **_TRAINING, **_EVAL, **_NOISE, 'data.uniform_dequantization': False,
           'data.num_channels': 3}

_CIFAR10 = {**_SHARED, 'data.dataset': 'CIFAR10', 'data.image_size': 32, 'data.random_flip': True,
            'training.n_iters': 660000, 'training.snapshot_freq': 20000,
            'training.snapshot_freq_for_preemption': 10000, 'eval.batch_size': 200, 'eval.enable_bpd': True}

_UNET = {'model.normalization': 'GroupNorm', 'model.nonlinearity': 'swish', 'model.nf': 128,
         'model.ch_mult': (1, 2, 2, 2), 'model.attn_resolutions': (16,), 'model.resamp_with_conv': True,
         'model.conditional': True}
_DDPM = {**_UNET, 'model.name': 'ddpm', 'model.scale_by_sigma': False, 'model.ema_rate': 0.9999,
         'model.num_res_blocks': 2, 'model.embedding_type': 'fourier'}
_NCSNPP = {**_UNET, 'model.name': 'ncsnpp', 'model.num_res_blocks': 4, 'model.fir_kernel': (1, 3, 3, 1),
           'model.skip_rescale': True, 'model.resblock_type': 'biggan', 'model.progressive': 'none',
           'model.progressive_combine': 'sum', 'model.attention_type': 'ddpm', 'model.init_scale': 0.,
           'model.fourier_scale': 16., 'model.conv_size': 3}

OFFICIAL = {
  'configs.vp.ddpm.cifar10_continuous': {
    **_CIFAR10, **_DDPM, 'data.centered': True,
    'training.sde': 'vpsde', 'training.continuous': True, 'training.reduce_mean': True, 'model.sigma_max': 50.,
    'training.batch_size': 400, 'training.batch_size_un': 400,
    'sampling.method': 'ode', 'sampling.predictor': 'euler_maruyama', 'sampling.corrector': 'none'},
  'configs.vp.ddpm.cifar10': {
    **_CIFAR10, **_DDPM, 'data.centered': True,
    'training.sde': 'vpsde', 'training.continuous': False, 'training.reduce_mean': True, 'model.sigma_max': 50.,
    'training.batch_size': 400, 'training.batch_size_un': 400,
    'sampling.method': 'pc', 'sampling.predictor': 'ancestral_sampling', 'sampling.corrector': 'none'},
  'configs.vp.ddpm.stl10_continuous': {
    **_SHARED, **_DDPM, 'data.dataset': 'STL10', 'data.image_size': 64, 'data.random_flip': True,
    'data.centered': True,
    'training.sde': 'vpsde', 'training.continuous': True, 'training.reduce_mean': True, 'model.sigma_max': 50.,
    'training.batch_size': 200, 'training.batch_size_un': 100,
    'training.n_iters': 1300001, 'training.snapshot_freq': 20000, 'training.snapshot_freq_for_preemption': 10000,
    'eval.batch_size': 500, 'eval.enable_bpd': False,
    'sampling.method': 'pc', 'sampling.predictor': 'euler_maruyama', 'sampling.corrector': 'none'},
  'configs.vp.ddpm.celeba_continuous': {
    **_SHARED, **_DDPM, 'data.dataset': 'CELEBA', 'data.image_size': 64, 'data.random_flip': False,
    'data.centered': True,
    'training.sde': 'vpsde', 'training.continuous': True, 'training.reduce_mean': True, 'model.sigma_max': 90.,
    'training.batch_size': 150, 'training.batch_size_un': 150,
    'training.n_iters': 1300001, 'training.snapshot_freq': 2000, 'training.snapshot_freq_for_preemption': 1000,
    'eval.batch_size': 200, 'eval.enable_bpd': False,
    'sampling.method': 'pc', 'sampling.predictor': 'euler_maruyama', 'sampling.corrector': 'none'},
  'configs.vp.cifar10_ddpmpp_continuous': {
    **_CIFAR10, **_NCSNPP, 'data.centered': True,
    'training.sde': 'vpsde', 'training.continuous': True, 'training.reduce_mean': True, 'model.sigma_max': 50.,
    'training.batch_size': 400, 'training.batch_size_un': 400,
    'sampling.method': 'pc', 'sampling.predictor': 'euler_maruyama', 'sampling.corrector': 'none',
    'model.scale_by_sigma': False, 'model.ema_rate': 0.9999, 'model.fir': False,
    'model.embedding_type': 'positional', 'model.progressive_input': 'none'},
  'configs.ve.cifar10_ncsnpp_continuous': {
    **_CIFAR10, **_NCSNPP, 'data.centered': True,   # score_sde: False
    'training.sde': 'vesde', 'training.continuous': True, 'training.reduce_mean': False, 'model.sigma_max': 50.,
    'training.batch_size': 400, 'training.batch_size_un': 400,
    'sampling.method': 'pc', 'sampling.predictor': 'reverse_diffusion', 'sampling.corrector': 'langevin',
    'model.scale_by_sigma': True, 'model.ema_rate': 0.999, 'model.fir': True,
    'model.embedding_type': 'fourier', 'model.progressive_input': 'residual'},
  'configs.subvp.cifar10_ncsnpp_continuous': {
    **_CIFAR10, **_NCSNPP, 'data.centered': True,
    'training.sde': 'subvpsde', 'training.continuous': True, 'training.reduce_mean': True, 'model.sigma_max': 50.,
    'training.batch_size': 400, 'training.batch_size_un': 400,
    'sampling.method': 'pc', 'sampling.predictor': 'euler_maruyama', 'sampling.corrector': 'none',
    'model.scale_by_sigma': False, 'model.ema_rate': 0.9999, 'model.fir': True,
    'model.embedding_type': 'positional', 'model.progressive_input': 'residual'},
}


def _flat(config, prefix=''):
  """``{'section.key': value}`` of a ConfigDict, lists as tuples."""
  out = {}
  for key, value in config.items():
    if hasattr(value, 'items'):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[prefix + key] = tuple(value) if isinstance(value, list) else value
  return out


@pytest.mark.parametrize('name', sorted(OFFICIAL))
def test_official_config_key_values(name):
  """Every official key of the file has the fork's value."""
  flat = _flat(importlib.import_module(name).get_config())
  wrong = {key: (flat.get(key, '<missing>'), want) for key, want in OFFICIAL[name].items()
           if key not in flat or flat[key] != want or isinstance(flat[key], bool) != isinstance(want, bool)}
  assert not wrong, f'{name}: (ours, fork) {wrong}'


def test_official_table_is_complete():
  """Each file's expectation covers the keys the issue names: data, SDE range, batches, schedule, sampler, eval."""
  named = ('data.centered', 'training.sde', 'model.beta_min', 'model.beta_max', 'model.sigma_min',
           'model.sigma_max', 'model.num_scales', 'training.batch_size', 'training.batch_size_un',
           'training.n_iters', 'training.snapshot_freq', 'training.snapshot_freq_for_preemption', 'model.name',
           'model.nf', 'model.ch_mult', 'model.ema_rate', 'sampling.method', 'sampling.predictor',
           'sampling.corrector', 'sampling.snr', 'eval.batch_size', 'eval.enable_bpd', 'eval.num_samples')
  for name, table in OFFICIAL.items():
    assert not [k for k in named if k not in table], name


def _score_sde_fixture(fixture):
  from official_fixtures import _fixture
  with open(_fixture(f'config_{fixture}.json')) as f:
    return json.load(f)


@pytest.mark.parametrize('fixture, name, overrides', [
  ('ncsnpp_ve', 'configs.ve.cifar10_ncsnpp_continuous', {'data.centered': False}),
  ('ddpmpp_vp', 'configs.vp.cifar10_ddpmpp_continuous', {}),
])
def test_score_sde_setup_reachable_by_override(fixture, name, overrides):
  """With the overrides docs/configs.md names, the file's data, network, SDE and sampler keys equal those of
  the config score_sde's checkpoint fixture was made with (bar the fixture's own size changes)."""
  ref = _score_sde_fixture(fixture)
  config = importlib.import_module(name).get_config()
  flat = _flat(config)
  want = {k: v for k, v in _flat(ref['config']).items()
          if k.split('.')[0] in ('data', 'model') or k in (
            'training.sde', 'training.continuous', 'training.reduce_mean', 'sampling.method',
            'sampling.predictor', 'sampling.corrector', 'sampling.snr')}
  for key in ref['overrides']:
    want.pop(key)
  differ = sorted(k for k, v in want.items() if flat[k] != v)
  assert differ == sorted(overrides)
  for key, value in overrides.items():
    section, leaf = key.split('.')
    config[section][leaf] = value
  flat = _flat(config)
  assert {k: flat[k] for k in want} == want
