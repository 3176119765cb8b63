"""MSGM CIFAR-10 (the paper's VPSDE runs): DDPM UNet, continuous VP SDE, probability-flow ODE sampler."""
from configs import architectures as arch
from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = get_default_configs()
  arch.set_vp(config.training)
  arch.set_pc(config.sampling, 'euler_maruyama', 'none')
  config.sampling.method = 'ode'
  config.data.centered = True
  arch.ddpm_unet(config.model)
  return config
