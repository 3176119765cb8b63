"""Every config file loads, builds its SDE and network, and refuses unknown keys."""
import importlib
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
