"""The paper's MNIST table (VESDE, forget 3 / 7 / 3 and 7): NCSN++ on 28×28 digits, continuous VE SDE.

28 px allows three resolutions (28, 14, 7), so ch_mult has three entries; attention at 14.
"""
from configs import architectures as arch
from configs.default_mnist_configs import get_default_configs


def get_config():
  config = get_default_configs()
  config.training.sde = 'vesde'
  config.training.continuous = True
  arch.set_pc(config.sampling, 'reverse_diffusion', 'langevin')
  arch.ncsnpp_ve(config.model, nf=64, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(14,))
  return config
