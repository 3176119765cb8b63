"""NCSN++ and DDPM++ (``config.model.name = 'ncsnpp'``), the U-Net score networks of score_sde.

``NCSNpp(config)(x, time_cond)`` maps images ``x`` [B, C, H, W] and per-sample conditioning
``time_cond`` [B] to ``[B, C, H, W]``:

* ``embedding_type='fourier'`` (NCSN++, VE): ``time_cond`` is the noise level σ > 0, embedded through
  Gaussian Fourier features of ``log σ``;
* ``embedding_type='positional'`` (DDPM++, VP/sub-VP): ``time_cond`` is a time label (``t * 999`` or
  a discrete index), embedded sinusoidally.

The output is a score (VE) or a noise prediction (VP/sub-VP); ``sde_lib`` turns it into a score.
With ``model.scale_by_sigma`` the output is divided by σ: the label itself for Fourier embeddings,
``sigmas[int(label)]`` for positional ones. When ``data.centered`` is False the input is taken to be
in [0, 1] and mapped to [-1, 1] first.

State-dict layout (identical to the official checkpoints): a float64 buffer ``sigmas``
[num_scales] (``models.utils.get_sigmas``), then every layer in one flat ``nn.ModuleList``
``all_modules`` in the order the forward pass uses them, which the forward pass consumes with a
single iterator. A class-conditional config (``model.class_conditional``) adds ``label_embedding``
[num_classes + 1, 4 nf] outside that list, added to the time embedding (the last row is the null label);
unconditional state dicts are unchanged.
"""
import math

import torch
from torch import nn

import conditioning
from models import layers, layerspp, utils

RESBLOCK_TYPES = ('ddpm', 'biggan')
PROGRESSIVE = ('none', 'output_skip', 'residual')
PROGRESSIVE_INPUT = ('none', 'input_skip', 'residual')
PROGRESSIVE_COMBINE = ('sum', 'cat')
EMBEDDING_TYPES = ('fourier', 'positional')
ATTENTION_TYPES = ('ddpm',)


@utils.register_model(name='ncsnpp')
class NCSNpp(nn.Module):
  """NCSN++ / DDPM++ U-Net (see the module docstring). Configured by ``config.model`` and ``config.data``.

  Architecture options: ``resblock_type`` (ddpm: DDPM blocks with separate resampling layers;
  biggan: blocks that resample inside), ``progressive`` (decoder output pyramid: none, output_skip,
  residual), ``progressive_input`` (encoder input pyramid: none, input_skip, residual),
  ``progressive_combine`` (sum | cat, for input_skip), ``fir`` / ``fir_kernel`` (FIR resampling),
  ``skip_rescale`` (residual sums divided by sqrt(2)), ``init_scale`` (scale of the last conv of each
  block), ``fourier_scale``; invalid values raise ValueError at construction.
  """

  supports_class_labels = True

  def __init__(self, config):
    super().__init__()
    m = config.model
    self.resblock_type = layers.config_choice(config, 'resblock_type', RESBLOCK_TYPES)
    self.progressive = layers.config_choice(config, 'progressive', PROGRESSIVE)
    self.progressive_input = layers.config_choice(config, 'progressive_input', PROGRESSIVE_INPUT)
    combine_method = layers.config_choice(config, 'progressive_combine', PROGRESSIVE_COMBINE)
    self.embedding_type = layers.config_choice(config, 'embedding_type', EMBEDDING_TYPES)
    layers.config_choice(config, 'attention_type', ATTENTION_TYPES)
    if self.embedding_type == 'fourier' and not config.training.continuous:
      raise ValueError("config.model.embedding_type='fourier' embeds log σ and needs continuous noise levels "
                       "(config.training.continuous=True); use embedding_type='positional' for discrete labels")
    self.act = act = layers.get_act(config)
    resolutions = layers.level_resolutions(config)

    self.register_buffer('sigmas', torch.tensor(utils.get_sigmas(config)))
    self.nf = nf = int(m.nf)
    ch_mult = tuple(m.ch_mult)
    self.num_resolutions = num_levels = len(ch_mult)
    self.num_res_blocks = num_res_blocks = int(m.num_res_blocks)
    self.attn_resolutions = tuple(m.attn_resolutions)
    self.attn_levels = [res in self.attn_resolutions for res in resolutions]
    self.conditional = bool(m.conditional)
    self.centered = bool(config.data.centered)
    self.scale_by_sigma = bool(m.scale_by_sigma)
    self.skip_rescale = skip_rescale = bool(m.skip_rescale)
    fir, fir_kernel = bool(m.fir), m.fir_kernel
    init_scale, dropout = m.init_scale, m.dropout
    channels = config.data.num_channels
    temb_dim = 4 * nf
    biggan = self.resblock_type == 'biggan'

    def resblock(in_ch, out_ch=None, up=False, down=False):
      if biggan:
        return layerspp.ResnetBlockBigGANpp(act, in_ch, out_ch, temb_dim=temb_dim, up=up, down=down,
                                            dropout=dropout, fir=fir, fir_kernel=fir_kernel,
                                            skip_rescale=skip_rescale, init_scale=init_scale)
      return layerspp.ResnetBlockDDPMpp(act, in_ch, out_ch, temb_dim=temb_dim, dropout=dropout,
                                        skip_rescale=skip_rescale, init_scale=init_scale)

    def attention(ch):
      return layerspp.AttnBlockpp(ch, skip_rescale=skip_rescale, init_scale=init_scale)

    def output_head(in_ch, out_ch, **conv_kwargs):
      # GroupNorm -> (act, applied in forward) -> 3x3 conv.
      return [layers.group_norm(in_ch), layerspp.conv3x3(in_ch, out_ch, **conv_kwargs)]

    def resample(in_ch, out_ch=None, up=False, with_conv=m.resamp_with_conv):
      cls = layerspp.Upsample if up else layerspp.Downsample
      return cls(in_ch=in_ch, out_ch=out_ch, with_conv=with_conv, fir=fir, fir_kernel=fir_kernel)

    # Parameter-free pyramid resamplers (outside all_modules, as in the official layout).
    if self.progressive == 'output_skip':
      self.pyramid_upsample = layerspp.Upsample(fir=fir, fir_kernel=fir_kernel, with_conv=False)
    if self.progressive_input == 'input_skip':
      self.pyramid_downsample = layerspp.Downsample(fir=fir, fir_kernel=fir_kernel, with_conv=False)

    modules = []
    # Noise-level / time embedding.
    if self.embedding_type == 'fourier':
      modules.append(layerspp.GaussianFourierProjection(embedding_size=nf, scale=m.fourier_scale))
      embed_dim = 2 * nf
    else:
      embed_dim = nf
    if self.conditional:
      modules += [layers.dense(embed_dim, temb_dim), layers.dense(temb_dim, temb_dim)]

    # Encoder. ``skip_chs`` records the channels of every feature map kept for the decoder.
    modules.append(layerspp.conv3x3(channels, nf))
    skip_chs = [nf]
    ch, pyramid_in_ch = nf, channels
    for level in range(num_levels):
      for _ in range(num_res_blocks):
        modules.append(resblock(ch, nf * ch_mult[level]))
        ch = nf * ch_mult[level]
        if self.attn_levels[level]:
          modules.append(attention(ch))
        skip_chs.append(ch)
      if level != num_levels - 1:
        modules.append(resblock(ch, down=True) if biggan else resample(ch))
        if self.progressive_input == 'input_skip':
          modules.append(layerspp.Combine(pyramid_in_ch, ch, method=combine_method))
          if combine_method == 'cat':
            ch *= 2
        elif self.progressive_input == 'residual':
          modules.append(resample(pyramid_in_ch, ch, with_conv=True))
          pyramid_in_ch = ch
        skip_chs.append(ch)

    # Bottleneck.
    modules += [resblock(ch), attention(ch), resblock(ch)]

    # Decoder.
    pyramid_ch = 0
    for level in reversed(range(num_levels)):
      for _ in range(num_res_blocks + 1):
        modules.append(resblock(ch + skip_chs.pop(), nf * ch_mult[level]))
        ch = nf * ch_mult[level]
      if self.attn_levels[level]:
        modules.append(attention(ch))
      if self.progressive == 'output_skip':
        modules += output_head(ch, channels, init_scale=init_scale)
        pyramid_ch = channels
      elif self.progressive == 'residual':
        if level == num_levels - 1:
          modules += output_head(ch, ch)
        else:
          modules.append(resample(pyramid_ch, ch, up=True, with_conv=True))
        pyramid_ch = ch
      if level != 0:
        modules.append(resblock(ch, up=True) if biggan else resample(ch, up=True))
    assert not skip_chs, 'encoder/decoder skip bookkeeping is inconsistent'

    if self.progressive != 'output_skip':
      modules += output_head(ch, channels, init_scale=init_scale)

    self.all_modules = nn.ModuleList(modules)
    self.num_classes = conditioning.num_classes(config)
    if self.num_classes:
      self.label_embedding = utils.label_embedding(config, temb_dim)

  def _merge(self, a, b):
    """Residual sum of two paths, divided by sqrt(2) with ``skip_rescale``."""
    return (a + b) / math.sqrt(2.) if self.skip_rescale else a + b

  def _head(self, modules, h):
    """GroupNorm -> act -> conv, taking the two layers from the module iterator."""
    norm, conv = next(modules), next(modules)
    return conv(self.act(norm(h)))

  def forward(self, x, time_cond, class_labels=None):
    """``x`` [B, C, H, W], ``time_cond`` [B] (σ for Fourier embeddings, time label otherwise), ``class_labels``
    [B] (class-conditional networks; None: the null label) -> [B, C, H, W]."""
    modules = iter(self.all_modules)

    # Embedding.
    if self.embedding_type == 'fourier':
      temb = next(modules)(torch.log(time_cond.to(x.dtype)))
    else:
      temb = layers.get_timestep_embedding(time_cond, self.nf, dtype=x.dtype)
    if self.conditional:
      temb = next(modules)(temb)
      temb = next(modules)(self.act(temb))
      temb = utils.add_label_embedding(self, temb, class_labels)
    else:
      temb = None

    if not self.centered:
      x = 2 * x - 1.  # [0, 1] -> [-1, 1]

    # Encoder.
    pyramid_in = x
    hs = [next(modules)(x)]
    for level in range(self.num_resolutions):
      for _ in range(self.num_res_blocks):
        h = next(modules)(hs[-1], temb)
        if self.attn_levels[level]:
          h = next(modules)(h)
        hs.append(h)
      if level != self.num_resolutions - 1:
        down = next(modules)
        h = down(hs[-1], temb) if self.resblock_type == 'biggan' else down(hs[-1])
        if self.progressive_input == 'input_skip':
          pyramid_in = self.pyramid_downsample(pyramid_in)
          h = next(modules)(pyramid_in, h)
        elif self.progressive_input == 'residual':
          pyramid_in = self._merge(next(modules)(pyramid_in), h)
          h = pyramid_in
        hs.append(h)

    # Bottleneck.
    h = next(modules)(hs[-1], temb)
    h = next(modules)(h)
    h = next(modules)(h, temb)

    # Decoder.
    pyramid = None
    for level in reversed(range(self.num_resolutions)):
      for _ in range(self.num_res_blocks + 1):
        h = next(modules)(torch.cat([h, hs.pop()], dim=1), temb)
      if self.attn_levels[level]:
        h = next(modules)(h)
      if self.progressive == 'output_skip':
        out = self._head(modules, h)
        pyramid = out if pyramid is None else self.pyramid_upsample(pyramid) + out
      elif self.progressive == 'residual':
        if level == self.num_resolutions - 1:
          pyramid = self._head(modules, h)
        else:
          pyramid = self._merge(next(modules)(pyramid), h)
          h = pyramid
      if level != 0:
        up = next(modules)
        h = up(h, temb) if self.resblock_type == 'biggan' else up(h)

    h = pyramid if self.progressive == 'output_skip' else self._head(modules, h)
    layers.check_exhausted(modules, type(self).__name__)

    if self.scale_by_sigma:
      if self.embedding_type == 'fourier':
        used_sigmas = time_cond
      else:
        # Positional labels are indices into the descending σ list (discrete NCSN training).
        used_sigmas = self.sigmas[time_cond.long()]
      h = h / used_sigmas.to(h.dtype).reshape((-1,) + (1,) * (h.ndim - 1))
    return h
