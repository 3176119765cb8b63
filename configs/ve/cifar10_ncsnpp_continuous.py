"""NCSN++ (continuous VE SDE) on CIFAR-10, as in score_sde: reverse-diffusion predictor + Langevin corrector."""
from configs import architectures as arch
from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = get_default_configs()
  config.training.sde = 'vesde'
  config.training.continuous = True
  arch.set_pc(config.sampling, 'reverse_diffusion', 'langevin')
  config.data.centered = False
  arch.ncsnpp_ve(config.model)
  return config
