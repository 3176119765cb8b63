"""DDPM++ (continuous VP SDE) on CIFAR-10, as in score_sde."""
from configs import architectures as arch
from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = get_default_configs()
  arch.set_vp(config.training)
  arch.set_pc(config.sampling, 'euler_maruyama', 'none')
  config.data.centered = True
  arch.ddpmpp(config.model)
  return config
