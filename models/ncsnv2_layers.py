"""Building blocks of the NCSN / NCSNv2 RefineNets (residual encoder blocks and RefineNet decoder blocks).

Tensors are ``[B, C, H, W]``. A block built with a conditional normaliser (``cond_norm``, see
``models.normalization.get_normalization(config, conditional=True)``) also takes the integer noise-level
indices ``y`` [B]; NCSNv2's unconditional blocks are called with ``y=None``. Sub-module names and their
creation order follow score_sde_pytorch, so its state dicts and parameter lists (optimiser and EMA state)
line up with these modules.

3x3 convolutions are padded by their dilation, so every convolution here keeps the spatial size
(only ``ConvMeanPool`` halves it).
"""
from torch import nn
import torch.nn.functional as F

_ACTIVATIONS = {
  'elu': nn.ELU,
  'relu': nn.ReLU,
  'lrelu': lambda: nn.LeakyReLU(negative_slope=0.2),
  'swish': nn.SiLU,
}

_INTERPOLATIONS = ('bilinear', 'bicubic', 'nearest')


def get_act(config):
  """The activation module named by ``config.model.nonlinearity`` (case-insensitive)."""
  name = str(config.model.nonlinearity).lower()
  if name not in _ACTIVATIONS:
    raise ValueError(f"unknown nonlinearity '{config.model.nonlinearity}' (config.model.nonlinearity); "
                     f"valid: {', '.join(sorted(_ACTIVATIONS))}")
  return _ACTIVATIONS[name]()


def get_interpolation(config):
  """The resize mode of the multi-resolution fusion, ``config.model.interpolation`` (default bilinear)."""
  mode = config.model.get('interpolation', 'bilinear')
  if mode not in _INTERPOLATIONS:
    raise ValueError(f"unknown interpolation '{mode}' (config.model.interpolation); "
                     f"valid: {', '.join(_INTERPOLATIONS)}")
  return mode


def conv3x3(in_planes, out_planes, bias=True, dilation=1):
  """3x3 convolution, stride 1, padded by ``dilation`` so that H and W are kept."""
  return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=1, padding=dilation, dilation=dilation,
                   bias=bias)


def conv1x1(in_planes, out_planes, bias=True):
  """1x1 convolution."""
  return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=1, padding=0, bias=bias)


def _normalise(layer, x, y):
  """Applies a normalisation layer, passing the labels only to conditional ones (``y`` not None)."""
  return layer(x) if y is None else layer(x, y)


class ConvMeanPool(nn.Module):
  """Same-size convolution followed by 2x2 mean pooling: [B, Cin, H, W] -> [B, Cout, H/2, W/2].

  ``adjust_padding`` first pads one row on top and one column on the left (H, W odd -> even); the
  convolution then sits at ``conv.1`` inside a Sequential, as in the original code.
  """

  def __init__(self, input_dim, output_dim, kernel_size=3, bias=True, adjust_padding=False):
    super().__init__()
    conv = nn.Conv2d(input_dim, output_dim, kernel_size, stride=1, padding=kernel_size // 2, bias=bias)
    self.conv = nn.Sequential(nn.ZeroPad2d((1, 0, 1, 0)), conv) if adjust_padding else conv

  def forward(self, x):
    return F.avg_pool2d(self.conv(x), kernel_size=2, stride=2)


class ResidualBlock(nn.Module):
  """Pre-activation residual block: norm, act, conv1, norm, act, conv2, plus a (projected) shortcut.

  ``resample='down'`` halves H and W when ``dilation == 1`` (mean pooling after conv2 and in the
  shortcut); with ``dilation > 1`` it keeps the size and the dilated convolutions widen the receptive field
  instead (the NCSNv2 design). The shortcut is a projection whenever the block resamples or changes
  the channel count: ConvMeanPool(1x1) when downsampling, a dilated 3x3 when dilated, else a 1x1.
  ``norm`` is a factory ``norm(C)``; pass ``y`` to forward iff it is conditional.
  """

  def __init__(self, input_dim, output_dim, act, norm, resample=None, dilation=1, adjust_padding=False):
    super().__init__()
    if resample not in (None, 'down'):
      raise ValueError(f"invalid resample '{resample}'; valid: None, 'down'")
    self.input_dim = input_dim
    self.output_dim = output_dim
    self.resample = resample
    self.non_linearity = act
    down = resample == 'down'
    mid = input_dim if down else output_dim
    # Creation order (conv1, normalize2, conv2, shortcut, normalize1) fixes the parameter order.
    self.conv1 = conv3x3(input_dim, mid, dilation=dilation)
    self.normalize2 = norm(mid)
    if down and dilation == 1:
      self.conv2 = ConvMeanPool(mid, output_dim, 3, adjust_padding=adjust_padding)
      shortcut = lambda: ConvMeanPool(input_dim, output_dim, 1, adjust_padding=adjust_padding)
    else:
      self.conv2 = conv3x3(mid, output_dim, dilation=dilation)
      if dilation > 1:
        shortcut = lambda: conv3x3(input_dim, output_dim, dilation=dilation)
      else:
        shortcut = lambda: conv1x1(input_dim, output_dim)
    self.has_shortcut = down or input_dim != output_dim
    if self.has_shortcut:
      self.shortcut = shortcut()
    self.normalize1 = norm(input_dim)

  def forward(self, x, y=None):
    h = self.non_linearity(_normalise(self.normalize1, x, y))
    h = self.conv1(h)
    h = self.non_linearity(_normalise(self.normalize2, h, y))
    h = self.conv2(h)
    return (self.shortcut(x) if self.has_shortcut else x) + h


class RCUBlock(nn.Module):
  """Residual convolution unit: ``n_blocks`` times ``x += (act -> conv3x3){n_stages}(x)``.

  With ``cond_norm`` each stage starts with a conditional normalisation. Convolutions carry no bias and
  are named ``'{block}_{stage}_conv'`` (norms ``'{block}_{stage}_norm'``), 1-based.
  """

  def __init__(self, features, n_blocks, n_stages, act, cond_norm=None):
    super().__init__()
    self.n_blocks = n_blocks
    self.n_stages = n_stages
    self.act = act
    self.conditional = cond_norm is not None
    for i in range(1, n_blocks + 1):
      for j in range(1, n_stages + 1):
        if self.conditional:
          self.add_module(f'{i}_{j}_norm', cond_norm(features))
        self.add_module(f'{i}_{j}_conv', conv3x3(features, features, bias=False))

  def forward(self, x, y=None):
    for i in range(1, self.n_blocks + 1):
      h = x
      for j in range(1, self.n_stages + 1):
        if self.conditional:
          h = getattr(self, f'{i}_{j}_norm')(h, y)
        h = getattr(self, f'{i}_{j}_conv')(self.act(h))
      x = x + h
    return x


class CRPBlock(nn.Module):
  """Chained residual pooling: ``x = act(x)``, then ``n_stages`` times ``p = conv(pool(p)); x += p``.

  The pools are 5x5, stride 1 (max pooling unconditionally, average pooling with ``cond_norm``, which
  also normalises ``p`` before each pool). Size-preserving.
  """

  def __init__(self, features, n_stages, act, cond_norm=None):
    super().__init__()
    self.n_stages = n_stages
    self.act = act
    self.conditional = cond_norm is not None
    self.convs = nn.ModuleList([conv3x3(features, features, bias=False) for _ in range(n_stages)])
    if self.conditional:
      self.norms = nn.ModuleList([cond_norm(features) for _ in range(n_stages)])
      self.pool = nn.AvgPool2d(kernel_size=5, stride=1, padding=2)
    else:
      self.pool = nn.MaxPool2d(kernel_size=5, stride=1, padding=2)

  def forward(self, x, y=None):
    x = self.act(x)
    path = x
    for i in range(self.n_stages):
      if self.conditional:
        path = self.norms[i](path, y)
      path = self.convs[i](self.pool(path))
      x = x + path
    return x


class MSFBlock(nn.Module):
  """Multi-resolution fusion: sum over inputs of resize(conv3x3(x_i)) -> [B, features, *shape]."""

  def __init__(self, in_planes, features, interpolation='bilinear', cond_norm=None):
    super().__init__()
    self.features = features
    self.interpolation = interpolation
    self.conditional = cond_norm is not None
    self.convs = nn.ModuleList([conv3x3(c, features, bias=True) for c in in_planes])
    if self.conditional:
      self.norms = nn.ModuleList([cond_norm(c) for c in in_planes])

  def _resize(self, h, shape):
    if tuple(h.shape[2:]) == tuple(shape):
      return h
    align = None if self.interpolation == 'nearest' else True
    return F.interpolate(h, size=tuple(shape), mode=self.interpolation, align_corners=align)

  def forward(self, xs, shape, y=None):
    out = 0.
    for i, x in enumerate(xs):
      h = self.norms[i](x, y) if self.conditional else x
      out = out + self._resize(self.convs[i](h), shape)
    return out


class RefineBlock(nn.Module):
  """RefineNet block: per-input RCUs (``adapt_convs``), fusion (``msf``), CRP (``crp``), output RCU.

  ``in_planes`` are the channel counts of the inputs (the encoder feature first, then the coarser
  refined feature); the output is [B, features, *output_shape]. The first (coarsest) block has a single
  input (``start=True``, which needs ``in_planes == [features]``); the last one (``end=True``) has three
  output RCU blocks instead of one.
  """

  def __init__(self, in_planes, features, act, interpolation='bilinear', start=False, end=False,
               cond_norm=None):
    super().__init__()
    in_planes = list(in_planes)
    if start and in_planes != [features]:
      raise ValueError(f'a start RefineBlock takes one input with {features} channels, got {in_planes}')
    if not start and len(in_planes) < 2:
      raise ValueError(f'a RefineBlock that is not the start fuses >= 2 inputs, got {in_planes}')
    self.start = start
    self.adapt_convs = nn.ModuleList([RCUBlock(c, 2, 2, act, cond_norm) for c in in_planes])
    self.output_convs = RCUBlock(features, 3 if end else 1, 2, act, cond_norm)
    if not start:
      self.msf = MSFBlock(in_planes, features, interpolation, cond_norm)
    self.crp = CRPBlock(features, 2, act, cond_norm)

  def forward(self, xs, output_shape, y=None):
    if len(xs) != len(self.adapt_convs):
      raise ValueError(f'expected {len(self.adapt_convs)} inputs, got {len(xs)}')
    hs = [adapt(x, y) for adapt, x in zip(self.adapt_convs, xs)]
    h = hs[0] if self.start else self.msf(hs, output_shape, y)
    h = self.crp(h, y)
    return self.output_convs(h, y)
