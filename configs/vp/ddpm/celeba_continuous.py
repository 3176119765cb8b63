"""MSGM CelebA (64×64, forget Bangs): DDPM UNet, continuous VP SDE, Euler–Maruyama sampler."""
from configs import architectures as arch
from configs.default_celeba_configs import get_default_configs


def get_config():
  config = get_default_configs()
  arch.set_vp(config.training)
  arch.set_pc(config.sampling, 'euler_maruyama', 'none')
  config.data.centered = True
  arch.ddpm_unet(config.model)
  return config
