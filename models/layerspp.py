"""Blocks of NCSN++ / DDPM++: Fourier features, skip combiners, attention, resampling and residual blocks.

Tensors are ``[B, C, H, W]``; ``temb`` is ``[B, temb_dim]``. Group norms use ``min(C // 4, 32)``
groups. Sub-module names follow the official checkpoints. With ``fir=True`` resampling uses the FIR
filter ``fir_kernel`` (``up_or_down_sampling``); otherwise nearest-neighbour / average pooling.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from models import layers
from models import up_or_down_sampling as updown

conv1x1 = layers.ddpm_conv1x1
conv3x3 = layers.ddpm_conv3x3
NIN = layers.NIN
default_init = layers.default_init


class GaussianFourierProjection(nn.Module):
  """Random Fourier features of a scalar: ``[B] -> [B, 2 * embedding_size]`` = ``[sin | cos](2π x W)``.

  ``W`` ~ N(0, scale²) is a frozen ``nn.Parameter`` (``requires_grad=False``): it is saved in the
  state dict but is not trained (nor tracked by the EMA). NCSN++ feeds it ``log σ``.
  """

  def __init__(self, embedding_size=256, scale=1.0):
    super().__init__()
    self.W = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

  def forward(self, x):
    proj = x[:, None] * self.W[None, :] * 2 * math.pi
    return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class Combine(nn.Module):
  """Merges the input pyramid ``x`` [B, dim1, H, W] into features ``y`` [B, dim2, H, W].

  ``x`` is projected to ``dim2`` channels by a 1x1 conv, then added (``sum``) or concatenated
  (``cat``, giving ``2 * dim2`` channels).
  """

  METHODS = ('sum', 'cat')

  def __init__(self, dim1, dim2, method='cat'):
    super().__init__()
    if method not in self.METHODS:
      raise ValueError(f"unknown combine method '{method}'; valid: {', '.join(self.METHODS)}")
    self.Conv_0 = conv1x1(dim1, dim2)
    self.method = method

  def forward(self, x, y):
    h = self.Conv_0(x)
    return h + y if self.method == 'sum' else torch.cat([h, y], dim=1)


class AttnBlockpp(layers.AttnBlock):
  """Self-attention block of NCSN++ (``min(C // 4, 32)`` groups, optional sqrt(2) rescaled residual)."""

  def __init__(self, channels, skip_rescale=False, init_scale=0.):
    super().__init__(channels, num_groups=None, skip_rescale=skip_rescale, init_scale=init_scale)


class Upsample(nn.Module):
  """Upsampling by 2 from ``in_ch`` to ``out_ch`` (default ``in_ch``) channels.

  ``fir``: FIR upsampling (``with_conv``: fused with a 3x3 conv, ``Conv2d_0``); otherwise nearest
  neighbour (``with_conv``: followed by a 3x3 conv, ``Conv_0``).
  """

  def __init__(self, in_ch=None, out_ch=None, with_conv=False, fir=False, fir_kernel=(1, 3, 3, 1)):
    super().__init__()
    out_ch = out_ch or in_ch
    if with_conv:
      if fir:
        self.Conv2d_0 = updown.Conv2d(in_ch, out_ch, kernel=3, up=True, resample_kernel=fir_kernel,
                                      use_bias=True, kernel_init=default_init())
      else:
        self.Conv_0 = conv3x3(in_ch, out_ch)
    self.fir = fir
    self.with_conv = with_conv
    self.fir_kernel = fir_kernel
    self.register_buffer('fir_kernel_2d', updown.fir_kernel_buffer(fir_kernel), persistent=False)
    self.out_ch = out_ch

  def forward(self, x):
    if self.fir:
      if self.with_conv:
        return self.Conv2d_0(x)
      return updown.upsample_2d(x, self.fir_kernel_2d, factor=2)
    h = F.interpolate(x, scale_factor=2, mode='nearest')
    return self.Conv_0(h) if self.with_conv else h


class Downsample(nn.Module):
  """Downsampling by 2 from ``in_ch`` to ``out_ch`` (default ``in_ch``) channels.

  ``fir``: FIR downsampling (``with_conv``: fused with a 3x3 conv, ``Conv2d_0``); otherwise a
  stride-2 3x3 conv with TF 'SAME' padding (``Conv_0``) or 2x2 average pooling.
  """

  def __init__(self, in_ch=None, out_ch=None, with_conv=False, fir=False, fir_kernel=(1, 3, 3, 1)):
    super().__init__()
    out_ch = out_ch or in_ch
    if with_conv:
      if fir:
        self.Conv2d_0 = updown.Conv2d(in_ch, out_ch, kernel=3, down=True, resample_kernel=fir_kernel,
                                      use_bias=True, kernel_init=default_init())
      else:
        self.Conv_0 = conv3x3(in_ch, out_ch, stride=2, padding=0)
    self.fir = fir
    self.with_conv = with_conv
    self.fir_kernel = fir_kernel
    self.register_buffer('fir_kernel_2d', updown.fir_kernel_buffer(fir_kernel), persistent=False)
    self.out_ch = out_ch

  def forward(self, x):
    if self.fir:
      if self.with_conv:
        return self.Conv2d_0(x)
      return updown.downsample_2d(x, self.fir_kernel_2d, factor=2)
    if self.with_conv:
      return self.Conv_0(F.pad(x, (0, 1, 0, 1)))
    return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResnetBlockDDPMpp(layers.ResnetBlockDDPM):
  """The DDPM residual block with ``min(C // 4, 32)`` groups, ``init_scale`` and ``skip_rescale`` options."""

  def __init__(self, act, in_ch, out_ch=None, temb_dim=None, conv_shortcut=False, dropout=0.1,
               skip_rescale=False, init_scale=0.):
    super().__init__(act, in_ch, out_ch=out_ch, temb_dim=temb_dim, conv_shortcut=conv_shortcut,
                     dropout=dropout, skip_rescale=skip_rescale, init_scale=init_scale, num_groups=None)


class ResnetBlockBigGANpp(nn.Module):
  """BigGAN-style residual block, optionally resampling by 2 (``up`` or ``down``) inside the block.

  Main path: GN -> act -> [resample] -> conv -> (+ dense(act(temb))) -> GN -> act -> dropout -> conv.
  Shortcut: [resample] -> 1x1 conv (``Conv_2``) when the channels change or the block resamples,
  else the identity. Resampling is FIR with ``fir`` and nearest / average pooling otherwise.
  ``Conv_1`` is initialised with ``init_scale``; with ``skip_rescale`` the sum is divided by sqrt(2).
  """

  def __init__(self, act, in_ch, out_ch=None, temb_dim=None, up=False, down=False, dropout=0.1, fir=False,
               fir_kernel=(1, 3, 3, 1), skip_rescale=True, init_scale=0.):
    super().__init__()
    if up and down:
      raise ValueError('ResnetBlockBigGANpp: up and down cannot both be set')
    out_ch = out_ch or in_ch
    self.GroupNorm_0 = layers.group_norm(in_ch)
    self.Conv_0 = conv3x3(in_ch, out_ch)
    self.Dense_0 = layers.dense(temb_dim, out_ch) if temb_dim is not None else None
    self.GroupNorm_1 = layers.group_norm(out_ch)
    self.Dropout_0 = nn.Dropout(dropout)
    self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
    self.has_shortcut = in_ch != out_ch or up or down
    if self.has_shortcut:
      self.Conv_2 = conv1x1(in_ch, out_ch)
    self.act = act
    self.up, self.down = up, down
    self.fir, self.fir_kernel = fir, fir_kernel
    self.register_buffer('fir_kernel_2d', updown.fir_kernel_buffer(fir_kernel), persistent=False)
    self.in_ch, self.out_ch = in_ch, out_ch
    self.skip_rescale = skip_rescale

  def _resample(self, x):
    if self.up:
      return updown.upsample_2d(x, self.fir_kernel_2d, factor=2) if self.fir else updown.naive_upsample_2d(x, 2)
    if self.down:
      return (updown.downsample_2d(x, self.fir_kernel_2d, factor=2) if self.fir
              else updown.naive_downsample_2d(x, 2))
    return x

  def forward(self, x, temb=None):
    h = self._resample(self.act(self.GroupNorm_0(x)))
    x = self._resample(x)
    h = self.Conv_0(h)
    if temb is not None and self.Dense_0 is not None:
      h = h + self.Dense_0(self.act(temb))[:, :, None, None]
    h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
    if self.has_shortcut:
      x = self.Conv_2(x)
    return (x + h) / math.sqrt(2.) if self.skip_rescale else x + h
