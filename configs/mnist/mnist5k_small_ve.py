"""Offline MNIST-5k, forget digit 3, on a continuous VE SDE (the paper's MNIST table uses a VESDE), CPU-sized.

The small VP config's budget and data with score_sde's VE choices: NCSN++ with a Fourier embedding, FIR
resampling and outputs divided by σ (nf 16, resolutions 28/14/7, no attention), σ ∈ [0.01, 50], uncentred
data, and score_sde's VE sampler: the reverse-diffusion predictor with one Langevin corrector step (snr 0.16) at
each of 200 noise levels. Without the corrector this small model leaves salt noise on about two thirds of its
samples (the MNIST classifier reads 66.5 % of 200 samples of the seed-42 Standard model as an 8; with it, 6 %).
"""
from configs import architectures as arch
from configs.mnist.small import get_small_config


def get_config():
  config = get_small_config('MNIST5K', '3')
  config.training.sde = 'vesde'
  config.training.continuous = True
  config.data.centered = False
  arch.set_pc(config.sampling, 'reverse_diffusion', 'langevin')
  config.sampling.snr = 0.16
  arch.ncsnpp_ve(config.model, nf=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=())
  config.model.ema_rate = 0.999
  config.model.num_scales = 200
  config.model.sigma_min, config.model.sigma_max = 0.01, 50.
  config.model.dropout = 0.
  return config
