"""The DDPM U-Net of Ho et al. (2020) (``config.model.name = 'ddpm'``), in score_sde's PyTorch layout.

``DDPM(config)(x, labels)`` maps images ``x`` [B, C, H, W] and time labels ``labels`` [B] (``t * 999``
or discrete indices; sinusoidal embedding) to ``[B, C, H, W]``, the noise prediction for VP/sub-VP
SDEs. ``config.model.embedding_type`` is ignored (the embedding is always sinusoidal). With
``model.scale_by_sigma`` the output is divided by ``sigmas[int(label)]``. When ``data.centered`` is
False the input is taken to be in [0, 1] and mapped to [-1, 1] first.

Group norms have 32 groups, so ``model.nf`` must be a multiple of 32. State-dict layout as in the
official checkpoints: a float64 buffer ``sigmas`` [num_scales], then a flat ``all_modules`` list
consumed in order by the forward pass. A class-conditional config (``model.class_conditional``) adds
``label_embedding`` [num_classes + 1, 4 nf] outside that list (added to the time embedding; the last row
is the null label); unconditional state dicts are unchanged.
"""
import torch
from torch import nn

import conditioning
from models import layers, utils

NUM_GROUPS = 32


@utils.register_model(name='ddpm')
class DDPM(nn.Module):
  """DDPM U-Net: ``num_res_blocks`` residual blocks per level (``nf * ch_mult[i]`` channels), attention at
  ``attn_resolutions``, conv or pooling resampling (``resamp_with_conv``), time conditioning when
  ``conditional``; class labels with ``class_conditional``."""

  supports_class_labels = True

  def __init__(self, config):
    super().__init__()
    m = config.model
    nf = int(m.nf)
    if nf % NUM_GROUPS:
      raise ValueError(f'config.model.nf={nf} must be a multiple of {NUM_GROUPS} for the DDPM model '
                       f'(its GroupNorm layers use {NUM_GROUPS} groups)')
    self.act = act = layers.get_act(config)
    resolutions = layers.level_resolutions(config)

    self.register_buffer('sigmas', torch.tensor(utils.get_sigmas(config)))
    self.nf = nf
    ch_mult = tuple(m.ch_mult)
    self.num_resolutions = num_levels = len(ch_mult)
    self.num_res_blocks = num_res_blocks = int(m.num_res_blocks)
    self.attn_resolutions = tuple(m.attn_resolutions)
    self.attn_levels = [res in self.attn_resolutions for res in resolutions]
    self.conditional = bool(m.conditional)
    self.centered = bool(config.data.centered)
    self.scale_by_sigma = bool(m.scale_by_sigma)
    channels = config.data.num_channels
    temb_dim = 4 * nf
    with_conv = m.resamp_with_conv

    def resblock(in_ch, out_ch=None):
      return layers.ResnetBlockDDPM(act, in_ch, out_ch, temb_dim=temb_dim, dropout=m.dropout,
                                    num_groups=NUM_GROUPS)

    modules = []
    if self.conditional:
      modules += [layers.dense(nf, temb_dim), layers.dense(temb_dim, temb_dim)]

    # Encoder.
    modules.append(layers.ddpm_conv3x3(channels, nf))
    skip_chs = [nf]
    ch = nf
    for level in range(num_levels):
      for _ in range(num_res_blocks):
        modules.append(resblock(ch, nf * ch_mult[level]))
        ch = nf * ch_mult[level]
        if self.attn_levels[level]:
          modules.append(layers.AttnBlock(ch, num_groups=NUM_GROUPS))
        skip_chs.append(ch)
      if level != num_levels - 1:
        modules.append(layers.Downsample(ch, with_conv=with_conv))
        skip_chs.append(ch)

    # Bottleneck.
    modules += [resblock(ch), layers.AttnBlock(ch, num_groups=NUM_GROUPS), resblock(ch)]

    # Decoder.
    for level in reversed(range(num_levels)):
      for _ in range(num_res_blocks + 1):
        modules.append(resblock(ch + skip_chs.pop(), nf * ch_mult[level]))
        ch = nf * ch_mult[level]
      if self.attn_levels[level]:
        modules.append(layers.AttnBlock(ch, num_groups=NUM_GROUPS))
      if level != 0:
        modules.append(layers.Upsample(ch, with_conv=with_conv))
    assert not skip_chs, 'encoder/decoder skip bookkeeping is inconsistent'

    modules += [layers.group_norm(ch, NUM_GROUPS), layers.ddpm_conv3x3(ch, channels, init_scale=0.)]
    self.all_modules = nn.ModuleList(modules)
    self.num_classes = conditioning.num_classes(config)
    if self.num_classes:
      self.label_embedding = utils.label_embedding(config, temb_dim)

  def forward(self, x, labels, class_labels=None):
    """``x`` [B, C, H, W], ``labels`` [B] time labels, ``class_labels`` [B] (class-conditional networks; None:
    the null label) -> [B, C, H, W]."""
    modules = iter(self.all_modules)
    if self.conditional:
      temb = layers.get_timestep_embedding(labels, self.nf, dtype=x.dtype)
      temb = next(modules)(temb)
      temb = next(modules)(self.act(temb))
      temb = utils.add_label_embedding(self, temb, class_labels)
    else:
      temb = None

    h = x if self.centered else 2 * x - 1.  # [0, 1] -> [-1, 1] for uncentred data

    # Encoder.
    hs = [next(modules)(h)]
    for level in range(self.num_resolutions):
      for _ in range(self.num_res_blocks):
        h = next(modules)(hs[-1], temb)
        if self.attn_levels[level]:
          h = next(modules)(h)
        hs.append(h)
      if level != self.num_resolutions - 1:
        hs.append(next(modules)(hs[-1]))

    # Bottleneck.
    h = next(modules)(hs[-1], temb)
    h = next(modules)(h)
    h = next(modules)(h, temb)

    # Decoder.
    for level in reversed(range(self.num_resolutions)):
      for _ in range(self.num_res_blocks + 1):
        h = next(modules)(torch.cat([h, hs.pop()], dim=1), temb)
      if self.attn_levels[level]:
        h = next(modules)(h)
      if level != 0:
        h = next(modules)(h)

    norm, conv = next(modules), next(modules)
    h = conv(self.act(norm(h)))
    layers.check_exhausted(modules, type(self).__name__)

    if self.scale_by_sigma:
      used_sigmas = self.sigmas[labels.long()]
      h = h / used_sigmas.to(h.dtype).reshape((-1,) + (1,) * (h.ndim - 1))
    return h
