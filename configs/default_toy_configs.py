"""Defaults for the paper's 2-D toy: p ∝ 4/5·N((−2,−2), I) + 2/5·N((0,0), I) + 4/5·N((2,2), I), D_f = centre.

Sized for a CPU: a 3×128 MLP trains at a few hundred steps per second here.
"""
from configs.default_configs import get_base_config


def get_default_configs():
  config = get_base_config()
  training = config.training
  training.batch_size = 512
  training.batch_size_un = 512
  training.n_iters = 8000
  training.snapshot_freq = 8000
  training.snapshot_freq_for_preemption = 2000
  training.log_freq = 1000
  training.eval_freq = 1000
  training.snapshot_sampling = False     # the toy experiment draws its own samples after training
  training.snapshot_num_samples = 2000
  training.reduce_mean = True
  evaluate = config.eval
  evaluate.batch_size = 2000
  evaluate.num_samples = 2000
  evaluate.enable_bpd = True
  evaluate.enable_sampling = True
  data = config.data
  data.dataset = 'GMM2D'
  data.num_channels = 2
  data.image_size = 0
  data.centered = False          # identity scaler: bits/dim carry score_sde's +8 offset, as in the paper
  data.random_flip = False
  data.uniform_dequantization = False
  data.num_train = 20000
  data.num_test = 2000
  model = config.model
  model.name = 'mlp'
  model.hidden_dims = (128, 128, 128)
  model.embedding_dim = 64
  model.ema_rate = 0.999
  model.dropout = 0.
  optim = config.optim
  optim.lr = 1e-3
  optim.warmup = 100
  optim.grad_clip = 1.
  config.unlearn.forget = 'centre'
  return config
