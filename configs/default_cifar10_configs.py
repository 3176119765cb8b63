"""Defaults for CIFAR-10 (32×32×3), as in the MSGM code: retain and forget batches of 400, centred data.

Where these differ from score_sde's CIFAR-10 defaults, and why, is listed in docs/configs.md.
"""
from configs.default_configs import get_base_config


def get_default_configs():
  config = get_base_config()
  training = config.training
  training.batch_size = 400
  training.batch_size_un = 400
  training.n_iters = 660000
  training.snapshot_freq = 20000
  training.log_freq = 40
  training.eval_freq = 40
  training.snapshot_freq_for_preemption = 10000
  config.sampling.snr = 0.16
  evaluate = config.eval
  evaluate.batch_size = 200
  evaluate.num_samples = 50000
  evaluate.enable_bpd = True
  data = config.data
  data.dataset = 'CIFAR10'
  data.image_size = 32
  data.num_channels = 3
  data.centered = True
  config.unlearn.forget = 'automobile'
  return config
