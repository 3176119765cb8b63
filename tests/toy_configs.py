"""Tiny CPU versions of configs/toy/gmm2d.py for end-to-end tests (seconds, not minutes)."""
from configs.toy.gmm2d import get_config


def tiny_toy_config(n_iters=30, width=32, num_scales=100, num_train=1000, num_test=200, num_samples=300,
                    eval_batch=128):
  """The toy config with a small MLP, ``n_iters`` steps (one checkpoint at the end) and loose ODE tolerances."""
  config = get_config()
  t = config.training
  t.n_iters, t.snapshot_freq, t.snapshot_freq_for_preemption, t.log_freq, t.eval_freq = n_iters, n_iters, n_iters, 10, 0
  config.model.hidden_dims = (width, width)
  config.model.num_scales = num_scales
  config.data.num_train, config.data.num_test = num_train, num_test
  config.eval.num_samples, config.eval.batch_size = num_samples, eval_batch
  config.sampling.ode_rtol = config.sampling.ode_atol = 1e-3
  config.device = 'cpu'
  return config
