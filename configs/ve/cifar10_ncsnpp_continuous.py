"""NCSN++ (continuous VE SDE) on CIFAR-10: reverse-diffusion predictor + Langevin corrector.

As in the MSGM fork, the data are centred ([-1, 1], the fork's CIFAR-10 default). score_sde trained this
file on [0, 1]; ``--config.data.centered=False`` restores that, e.g. to load its released VE checkpoints
(docs/configs.md).
"""
from configs import architectures as arch
from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = get_default_configs()
  config.training.sde = 'vesde'
  config.training.continuous = True
  arch.set_pc(config.sampling, 'reverse_diffusion', 'langevin')
  config.data.centered = True
  arch.ncsnpp_ve(config.model)
  return config
