"""Defaults for STL-10 (labelled splits, resized to 64×64), as in the MSGM code: forget airplane (class 0)."""
from configs.default_configs import get_base_config


def get_default_configs():
  config = get_base_config()
  training = config.training
  training.batch_size = 200
  training.batch_size_un = 100          # the fork's key; its STL-10 loader reads 200 for both (docs/configs.md)
  training.n_iters = 1300001
  training.snapshot_freq = 20000
  training.log_freq = 40
  training.eval_freq = 40
  evaluate = config.eval
  evaluate.batch_size = 500
  evaluate.num_samples = 50000
  data = config.data
  data.dataset = 'STL10'
  data.image_size = 64
  data.num_channels = 3
  data.centered = True
  config.unlearn.forget = 'airplane'
  return config
