"""The 2-D toy on a VP SDE (continuous DSM, MLP score network)."""
from configs.default_toy_configs import get_default_configs


def get_config():
  config = get_default_configs()
  training = config.training
  training.sde = 'vpsde'
  training.continuous = True
  sampling = config.sampling
  sampling.method = 'pc'
  sampling.predictor = 'euler_maruyama'
  sampling.corrector = 'none'
  return config
