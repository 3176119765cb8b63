"""NCSN++ (continuous sub-VP SDE) on CIFAR-10, as in score_sde: positional embedding, FIR, residual input."""
from configs import architectures as arch
from configs.default_cifar10_configs import get_default_configs


def get_config():
  config = get_default_configs()
  arch.set_vp(config.training)
  config.training.sde = 'subvpsde'
  arch.set_pc(config.sampling, 'euler_maruyama', 'none')
  config.data.centered = True
  arch.ncsnpp(config.model, fir=True, scale_by_sigma=False, ema_rate=0.9999, embedding_type='positional',
              progressive_input='residual')
  return config
