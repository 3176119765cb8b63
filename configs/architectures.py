"""The network settings of the official experiment files, shared by the configs that use them."""


def _unet(model, name, scale_by_sigma, ema_rate, nf, ch_mult, num_res_blocks, attn_resolutions):
  """The keys DDPM and NCSN++ share: size, normalisation, activation, conditioning."""
  model.name = name
  model.scale_by_sigma = scale_by_sigma
  model.ema_rate = ema_rate
  model.normalization = 'GroupNorm'
  model.nonlinearity = 'swish'
  model.nf = nf
  model.ch_mult = ch_mult
  model.num_res_blocks = num_res_blocks
  model.attn_resolutions = attn_resolutions
  model.resamp_with_conv = True
  model.conditional = True


def ddpm_unet(model, nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,)):
  """DDPM's UNet (``model.name = 'ddpm'``), as in configs/vp/ddpm/*.py."""
  _unet(model, 'ddpm', False, 0.9999, nf, ch_mult, num_res_blocks, attn_resolutions)


def ncsnpp(model, *, fir, scale_by_sigma, ema_rate, embedding_type, progressive_input, nf=128,
           ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,)):
  """NCSN++ / DDPM++ (``model.name = 'ncsnpp'``) with BigGAN blocks, as in the official CIFAR-10 configs."""
  _unet(model, 'ncsnpp', scale_by_sigma, ema_rate, nf, ch_mult, num_res_blocks, attn_resolutions)
  model.fir = fir
  model.fir_kernel = [1, 3, 3, 1]
  model.skip_rescale = True
  model.resblock_type = 'biggan'
  model.progressive = 'none'
  model.progressive_input = progressive_input
  model.progressive_combine = 'sum'
  model.attention_type = 'ddpm'
  model.init_scale = 0.
  model.embedding_type = embedding_type
  model.fourier_scale = 16
  model.conv_size = 3


def ddpmpp(model, **sizes):
  """DDPM++ (VP / sub-VP): positional embedding, no FIR, no progressive paths."""
  ncsnpp(model, fir=False, scale_by_sigma=False, ema_rate=0.9999, embedding_type='positional',
         progressive_input='none', **sizes)


def ncsnpp_ve(model, **sizes):
  """NCSN++ (VE): Fourier embedding, FIR, residual input path, outputs divided by σ."""
  ncsnpp(model, fir=True, scale_by_sigma=True, ema_rate=0.999, embedding_type='fourier',
         progressive_input='residual', **sizes)


def set_pc(sampling, predictor, corrector):
  sampling.method = 'pc'
  sampling.predictor = predictor
  sampling.corrector = corrector


def set_vp(training, continuous=True):
  training.sde = 'vpsde'
  training.continuous = continuous
  training.reduce_mean = True
