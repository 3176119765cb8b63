"""``shrink(config, data_root)``: any experiment config made CPU-tiny (tests/test_readme_commands.py)."""


def shrink(config, data_root):
  """A few steps of a small network on offline data, few samples, loose ODE tolerances; in place."""
  if config.data.dataset not in ('MNIST5K', 'DIGITS8X8', 'GMM2D'):   # needs a download: the 8×8 digits instead
    config.data.dataset, config.data.image_size, config.data.num_channels = 'DIGITS8X8', 8, 1
    config.unlearn.forget = '3'
  config.data.root = data_root
  m = config.model
  if m.name in ('ncsnpp', 'ddpm'):
    m.nf = 32 if m.name == 'ddpm' else 8
    m.ch_mult, m.num_res_blocks, m.attn_resolutions = (1, 2), 1, ()
  m.num_scales = min(int(m.num_scales), 50)
  t = config.training
  t.n_iters, t.snapshot_freq, t.snapshot_freq_for_preemption, t.log_freq, t.eval_freq = 3, 3, 3, 1, 0
  t.batch_size = t.batch_size_un = 16
  t.snapshot_sampling = False
  e = config.eval
  e.num_samples, e.batch_size, e.bpd_num_samples, e.fid_num_samples, e.fid_num_reference = 8, 8, 4, 8, 8
  e.classifier_epochs, e.classifier_batch_size = 1, 64
  e.downstream_num_images = 8
  config.sampling.ode_rtol = config.sampling.ode_atol = 1e-2
  config.device = 'cpu'
  return config
