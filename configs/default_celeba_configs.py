"""Defaults for CelebA (CenterCrop 140 → 64×64), as in the MSGM code: forget the Bangs attribute."""
from configs.default_configs import get_base_config


def get_default_configs():
  config = get_base_config()
  training = config.training
  training.batch_size = 150
  training.batch_size_un = 150
  training.n_iters = 1300001
  training.snapshot_freq = 2000
  training.snapshot_freq_for_preemption = 1000
  training.log_freq = 40
  training.eval_freq = 40
  config.sampling.snr = 0.16
  evaluate = config.eval
  evaluate.batch_size = 200
  evaluate.num_samples = 50000
  data = config.data
  data.dataset = 'CELEBA'
  data.image_size = 64
  data.num_channels = 3
  data.random_flip = False
  data.centered = True
  model = config.model
  model.sigma_max = 90.
  config.unlearn.forget = 'Bangs'
  return config
