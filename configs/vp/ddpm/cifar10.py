"""MSGM CIFAR-10: DDPM UNet, discrete DDPM training on the VP schedule, ancestral sampling."""
from configs import architectures as arch
from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = get_default_configs()
  arch.set_vp(config.training, continuous=False)
  arch.set_pc(config.sampling, 'ancestral_sampling', 'none')
  config.data.centered = True
  arch.ddpm_unet(config.model)
  return config
