"""CPU-sized image runs shared by the small MNIST-5k and Fashion-MNIST configs.

A ~0.3M-parameter DDPM++ (nf 16, resolutions 28/14/7, no attention) on a continuous VP SDE; a few
thousand steps take minutes on two CPU cores. Sampling uses 200 Euler–Maruyama steps.
"""
from configs import architectures as arch
from configs.default_mnist_configs import get_default_configs


def get_small_config(dataset, forget):
  config = get_default_configs()
  training = config.training
  arch.set_vp(training)
  training.batch_size = 64
  training.batch_size_un = 64
  training.n_iters = 3000
  training.snapshot_freq = 1000
  training.snapshot_freq_for_preemption = 500
  training.log_freq = 100
  training.eval_freq = 500
  training.snapshot_num_samples = 64
  arch.set_pc(config.sampling, 'euler_maruyama', 'none')
  evaluate = config.eval
  evaluate.batch_size = 250
  evaluate.num_samples = 500
  evaluate.bpd_num_samples = 200
  data = config.data
  data.dataset = dataset
  data.centered = True
  config.unlearn.forget = forget
  arch.ddpmpp(config.model, nf=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=())
  config.model.ema_rate = 0.999
  config.model.num_scales = 200
  config.model.dropout = 0.
  config.optim.lr = 1e-3
  config.optim.warmup = 200
  return config
