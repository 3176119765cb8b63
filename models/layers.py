"""Building blocks shared by the DDPM and NCSN++ score networks.

Tensors are ``[B, C, H, W]``; ``temb`` is the ``[B, temb_dim]`` time/noise embedding. Parameter and
sub-module names (``GroupNorm_0``, ``Conv_0``, ``Dense_0``, ``NIN_0.W`` ...) follow the official
score_sde_pytorch checkpoints, so their state dicts load unchanged.

Initialisation follows DDPM: convolutions and dense layers are re-drawn from a fan-average uniform
variance-scaling distribution (``default_init``) with zero biases. The layers are first built by
``torch.nn`` (which draws its own initial values) and then overwritten, as in the official code, so
that a given ``torch.manual_seed`` produces the same initial weights.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS = {
  'elu': nn.ELU,
  'relu': nn.ReLU,
  'lrelu': lambda: nn.LeakyReLU(negative_slope=0.2),
  'swish': nn.SiLU,
}


def get_act(config):
  """The activation module named by ``config.model.nonlinearity`` (elu | relu | lrelu | swish)."""
  name = str(config.model.nonlinearity).lower()
  if name not in _ACTIVATIONS:
    raise ValueError(f"unknown config.model.nonlinearity '{config.model.nonlinearity}'; "
                     f"valid: {', '.join(_ACTIVATIONS)}")
  return _ACTIVATIONS[name]()


def variance_scaling(scale, mode, distribution, in_axis=1, out_axis=0, dtype=torch.float32, device='cpu'):
  """An initialiser ``init(shape)`` drawing with variance ``scale / fan`` (JAX's ``variance_scaling``).

  ``mode`` picks the fan (fan_in | fan_out | fan_avg), where the fans of a ``[out, in, kh, kw]``
  weight are ``in*kh*kw`` and ``out*kh*kw``; ``distribution`` is normal | uniform.
  """
  if mode not in ('fan_in', 'fan_out', 'fan_avg'):
    raise ValueError(f"invalid variance-scaling mode '{mode}'; valid: fan_in, fan_out, fan_avg")
  if distribution not in ('normal', 'uniform'):
    raise ValueError(f"invalid variance-scaling distribution '{distribution}'; valid: normal, uniform")

  def init(shape, dtype=dtype, device=device):
    receptive = float(np.prod(shape)) / shape[in_axis] / shape[out_axis]
    fan_in, fan_out = shape[in_axis] * receptive, shape[out_axis] * receptive
    fan = {'fan_in': fan_in, 'fan_out': fan_out, 'fan_avg': (fan_in + fan_out) / 2}[mode]
    variance = scale / fan
    if distribution == 'normal':
      return torch.randn(*shape, dtype=dtype, device=device) * math.sqrt(variance)
    return (torch.rand(*shape, dtype=dtype, device=device) * 2. - 1.) * math.sqrt(3 * variance)

  return init


def default_init(scale=1.):
  """DDPM's initialiser: uniform, fan-average variance scaling; ``scale=0`` means 1e-10 (near zero)."""
  return variance_scaling(1e-10 if scale == 0 else scale, 'fan_avg', 'uniform')


def _ddpm_reinit(module, init_scale=1.):
  module.weight.data = default_init(init_scale)(module.weight.shape)
  if module.bias is not None:
    nn.init.zeros_(module.bias)
  return module


def dense(in_features, out_features, init_scale=1.):
  """``nn.Linear`` with DDPM initialisation."""
  return _ddpm_reinit(nn.Linear(in_features, out_features), init_scale)


def ddpm_conv1x1(in_planes, out_planes, stride=1, bias=True, init_scale=1., padding=0):
  """1x1 convolution with DDPM initialisation."""
  conv = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=padding, bias=bias)
  return _ddpm_reinit(conv, init_scale)


def ddpm_conv3x3(in_planes, out_planes, stride=1, bias=True, dilation=1, init_scale=1., padding=1):
  """3x3 convolution with DDPM initialisation ('same' size for the default stride and padding)."""
  conv = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=padding, dilation=dilation,
                   bias=bias)
  return _ddpm_reinit(conv, init_scale)


def ncsn_conv1x1(in_planes, out_planes, stride=1, bias=True, dilation=1, init_scale=1., padding=0):
  """1x1 convolution with PyTorch's initialisation multiplied by ``init_scale`` (NCSN v1/v2)."""
  conv = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=bias, dilation=dilation,
                   padding=padding)
  return _rescale(conv, init_scale)


def ncsn_conv3x3(in_planes, out_planes, stride=1, bias=True, dilation=1, init_scale=1., padding=1):
  """3x3 convolution with PyTorch's initialisation multiplied by ``init_scale`` (NCSN v1/v2)."""
  conv = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, bias=bias, dilation=dilation,
                   padding=padding)
  return _rescale(conv, init_scale)


def _rescale(conv, init_scale):
  init_scale = 1e-10 if init_scale == 0 else init_scale
  conv.weight.data *= init_scale
  if conv.bias is not None:
    conv.bias.data *= init_scale
  return conv


def group_norm(channels, num_groups=None):
  """GroupNorm with eps 1e-6; ``num_groups=None`` picks NCSN++'s ``min(channels // 4, 32)``."""
  groups = min(channels // 4, 32) if num_groups is None else num_groups
  return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6)


def get_timestep_embedding(timesteps, embedding_dim, max_positions=10000, dtype=torch.float32):
  """Transformer sinusoidal embedding of the labels ``timesteps`` [B] -> [B, embedding_dim].

  Frequencies ``max_positions^(-i / (half - 1))``, i < half = embedding_dim // 2; the output is
  ``[sin | cos]`` (zero-padded by one column when ``embedding_dim`` is odd). Integer or float labels
  are accepted; the computation is done in ``dtype`` (float32 as the official code).
  """
  if timesteps.ndim != 1:
    raise ValueError(f'timesteps must be a 1-D tensor [B], got shape {tuple(timesteps.shape)}')
  half = embedding_dim // 2
  log_step = math.log(max_positions) / (half - 1)
  freqs = torch.exp(torch.arange(half, dtype=dtype, device=timesteps.device) * -log_step)
  args = timesteps.to(dtype)[:, None] * freqs[None, :]
  emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
  if embedding_dim % 2 == 1:
    emb = F.pad(emb, (0, 1))
  return emb


class NIN(nn.Module):
  """Per-pixel linear map over channels ("network in network"): ``[B, in, H, W] -> [B, out, H, W]``.

  Parameters ``W`` [in_dim, num_units] and ``b`` [num_units].
  """

  def __init__(self, in_dim, num_units, init_scale=0.1):
    super().__init__()
    self.W = nn.Parameter(default_init(scale=init_scale)((in_dim, num_units)))
    self.b = nn.Parameter(torch.zeros(num_units))

  def forward(self, x):
    return torch.einsum('bihw,io->bohw', x, self.W) + self.b[None, :, None, None]


class AttnBlock(nn.Module):
  """Single-head self-attention over the ``H*W`` positions, with a residual connection.

  ``q, k, v`` are NIN projections of the group-normalised input; the output projection ``NIN_3`` is
  initialised with ``init_scale`` (0: near zero). With ``skip_rescale`` the residual sum is divided
  by sqrt(2). ``num_groups=None`` uses ``min(C // 4, 32)`` groups (NCSN++); DDPM uses 32.
  """

  def __init__(self, channels, num_groups=32, skip_rescale=False, init_scale=0.):
    super().__init__()
    self.GroupNorm_0 = group_norm(channels, num_groups)
    self.NIN_0 = NIN(channels, channels)
    self.NIN_1 = NIN(channels, channels)
    self.NIN_2 = NIN(channels, channels)
    self.NIN_3 = NIN(channels, channels, init_scale=init_scale)
    self.skip_rescale = skip_rescale

  def forward(self, x):
    b, c, h, w = x.shape
    normed = self.GroupNorm_0(x)
    q = self.NIN_0(normed).reshape(b, c, h * w)
    k = self.NIN_1(normed).reshape(b, c, h * w)
    v = self.NIN_2(normed).reshape(b, c, h * w)
    # weights[b, p, s]: how much query position p attends to key position s.
    weights = torch.softmax(torch.bmm(q.transpose(1, 2), k) * (int(c) ** (-0.5)), dim=-1)
    out = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, h, w)
    out = x + self.NIN_3(out)
    return out / math.sqrt(2.) if self.skip_rescale else out


class Upsample(nn.Module):
  """DDPM upsampling: nearest neighbour x2, then an optional 3x3 conv (``Conv_0``)."""

  def __init__(self, channels, with_conv=False):
    super().__init__()
    if with_conv:
      self.Conv_0 = ddpm_conv3x3(channels, channels)
    self.with_conv = with_conv

  def forward(self, x):
    h = F.interpolate(x, scale_factor=2, mode='nearest')
    return self.Conv_0(h) if self.with_conv else h


class Downsample(nn.Module):
  """DDPM downsampling by 2: a stride-2 3x3 conv with TF 'SAME' padding (right/bottom), or 2x2 average pooling."""

  def __init__(self, channels, with_conv=False):
    super().__init__()
    if with_conv:
      self.Conv_0 = ddpm_conv3x3(channels, channels, stride=2, padding=0)
    self.with_conv = with_conv

  def forward(self, x):
    if self.with_conv:
      return self.Conv_0(F.pad(x, (0, 1, 0, 1)))
    return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResnetBlockDDPM(nn.Module):
  """DDPM residual block: GN -> act -> conv -> (+ dense(act(temb))) -> GN -> act -> dropout -> conv.

  The shortcut is the identity, or when the channel count changes a 3x3 conv (``conv_shortcut``,
  ``Conv_2``) or a NIN (``NIN_0``). ``Conv_1`` is initialised with ``init_scale`` (0: near zero).
  With ``skip_rescale`` the sum is divided by sqrt(2). ``num_groups=None`` uses ``min(C // 4, 32)``
  groups (DDPM++); DDPM uses 32. ``Dense_0`` exists only when ``temb_dim`` is given.
  """

  def __init__(self, act, in_ch, out_ch=None, temb_dim=None, conv_shortcut=False, dropout=0.1,
               skip_rescale=False, init_scale=0., num_groups=32):
    super().__init__()
    out_ch = out_ch or in_ch
    self.GroupNorm_0 = group_norm(in_ch, num_groups)
    self.Conv_0 = ddpm_conv3x3(in_ch, out_ch)
    self.Dense_0 = dense(temb_dim, out_ch) if temb_dim is not None else None
    self.GroupNorm_1 = group_norm(out_ch, num_groups)
    self.Dropout_0 = nn.Dropout(dropout)
    self.Conv_1 = ddpm_conv3x3(out_ch, out_ch, init_scale=init_scale)
    if in_ch != out_ch:
      if conv_shortcut:
        self.Conv_2 = ddpm_conv3x3(in_ch, out_ch)
      else:
        self.NIN_0 = NIN(in_ch, out_ch)
    self.act = act
    self.in_ch, self.out_ch = in_ch, out_ch
    self.conv_shortcut = conv_shortcut
    self.skip_rescale = skip_rescale

  def forward(self, x, temb=None):
    h = self.Conv_0(self.act(self.GroupNorm_0(x)))
    if temb is not None and self.Dense_0 is not None:
      h = h + self.Dense_0(self.act(temb))[:, :, None, None]
    h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
    if self.in_ch != self.out_ch:
      x = self.Conv_2(x) if self.conv_shortcut else self.NIN_0(x)
    return (x + h) / math.sqrt(2.) if self.skip_rescale else x + h


def level_resolutions(config):
  """Spatial size of each U-Net level, ``image_size // 2**i`` for i < len(ch_mult).

  Raises ValueError when ``config.data.image_size`` is not divisible by ``2**(len(ch_mult) - 1)``,
  since the skip connections of the decoder would then not line up with the encoder.
  """
  size, num_levels = int(config.data.image_size), len(config.model.ch_mult)
  if num_levels < 1:
    raise ValueError('config.model.ch_mult must have at least one entry')
  factor = 2 ** (num_levels - 1)
  if size < factor or size % factor:
    raise ValueError(f'config.data.image_size={size} must be divisible by 2**(len(config.model.ch_mult) - 1)'
                     f' = {factor} (ch_mult={tuple(config.model.ch_mult)} has {num_levels} levels)')
  return [size // 2 ** i for i in range(num_levels)]


def config_choice(config, key, valid):
  """``config.model.<key>`` lower-cased, or a ValueError naming the key and the valid values."""
  value = str(getattr(config.model, key)).lower()
  if value not in valid:
    raise ValueError(f"unknown config.model.{key} '{getattr(config.model, key)}'; valid: {', '.join(valid)}")
  return value


def check_exhausted(modules, owner):
  """Raises if the iterator over a network's flat module list still has modules left."""
  if next(modules, None) is not None:
    raise RuntimeError(f'{owner}.forward left modules of all_modules unused: construction and forward disagree')
