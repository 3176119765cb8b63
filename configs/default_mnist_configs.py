"""Defaults for MNIST (28×28×1, torchvision; downloads when online): forget digit 3."""
from configs.default_configs import get_base_config


def get_default_configs():
  config = get_base_config()
  training = config.training
  training.batch_size = 128
  training.batch_size_un = 128
  training.n_iters = 200001
  training.snapshot_freq = 10000
  training.log_freq = 50
  training.eval_freq = 500
  evaluate = config.eval
  evaluate.batch_size = 500
  evaluate.num_samples = 10000
  evaluate.enable_bpd = True
  data = config.data
  data.dataset = 'MNIST'
  data.image_size = 28
  data.num_channels = 1
  data.random_flip = False
  data.centered = False
  config.unlearn.forget = '3'
  return config
