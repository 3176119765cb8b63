"""Normalisation layers of the NCSN / NCSNv2 RefineNets.

Every layer maps ``[B, C, H, W] -> [B, C, H, W]``. The conditional variants also take integer noise-level
indices ``y`` ``[B]`` (``0 <= y < num_classes``) and look their affine parameters up in one embedding table.

``get_normalization(config, conditional)`` turns ``config.model.normalization`` into a factory
``norm(num_features) -> nn.Module``; parameter names (``alpha``, ``gamma``, ``beta``, ``embed``) follow
score_sde_pytorch so that its checkpoints load.
"""
import torch
from torch import nn
import torch.nn.functional as F

_EPS = 1e-5


def standardised_channel_means(x):
  """Spatial means of each channel of ``x`` [B, C, H, W], standardised over the channels: [B, C].

  This is the extra term of InstanceNorm++: instance normalisation removes the per-channel means, so
  their (normalised) relative values are fed back in. The variance over channels is the unbiased one.
  """
  mu = x.mean(dim=(2, 3))
  return (mu - mu.mean(dim=1, keepdim=True)) / torch.sqrt(mu.var(dim=1, keepdim=True) + _EPS)


def _instance_norm(x):
  """Per-sample, per-channel normalisation over H, W (no affine part)."""
  return F.instance_norm(x, eps=_EPS)


def _per_channel(v):
  """A [C] or [B, C] tensor reshaped to broadcast against [B, C, H, W]."""
  return v.reshape(v.shape + (1, 1)) if v.ndim == 2 else v.reshape(1, -1, 1, 1)


class InstanceNorm2dPlus(nn.Module):
  """InstanceNorm++: ``gamma * (IN(x) + alpha * m(x)) + beta``, m the standardised channel means."""

  def __init__(self, num_features, bias=True):
    super().__init__()
    self.num_features = num_features
    self.bias = bias
    self.alpha = nn.Parameter(torch.empty(num_features).normal_(1., 0.02))
    self.gamma = nn.Parameter(torch.empty(num_features).normal_(1., 0.02))
    if bias:
      self.beta = nn.Parameter(torch.zeros(num_features))

  def forward(self, x):
    h = _instance_norm(x) + _per_channel(self.alpha) * _per_channel(standardised_channel_means(x))
    out = _per_channel(self.gamma) * h
    return out + _per_channel(self.beta) if self.bias else out


class VarianceNorm2d(nn.Module):
  """Divides each channel by its spatial standard deviation (means kept), then scales by ``alpha``."""

  def __init__(self, num_features, bias=False):
    super().__init__()
    self.num_features = num_features
    self.bias = bias  # kept for signature parity; the layer has no shift
    self.alpha = nn.Parameter(torch.empty(num_features).normal_(1., 0.02))

  def forward(self, x):
    h = x / torch.sqrt(x.var(dim=(2, 3), keepdim=True) + _EPS)
    return _per_channel(self.alpha) * h


class ConditionalInstanceNorm2dPlus(nn.Module):
  """InstanceNorm++ whose ``gamma, alpha, beta`` are rows of ``embed`` [num_classes, 3C] picked by ``y``.

  Without ``bias`` the table is [num_classes, 2C] (``gamma, alpha``).
  """

  def __init__(self, num_features, num_classes, bias=True):
    super().__init__()
    self.num_features = num_features
    self.bias = bias
    self.embed = nn.Embedding(num_classes, num_features * (3 if bias else 2))
    with torch.no_grad():
      self.embed.weight[:, :2 * num_features].normal_(1., 0.02)
      self.embed.weight[:, 2 * num_features:].zero_()

  def forward(self, x, y):
    params = self.embed(y).chunk(3 if self.bias else 2, dim=-1)
    gamma, alpha = params[0], params[1]
    h = _instance_norm(x) + _per_channel(alpha) * _per_channel(standardised_channel_means(x))
    out = _per_channel(gamma) * h
    return out + _per_channel(params[2]) if self.bias else out


class ConditionalInstanceNorm2d(nn.Module):
  """Instance normalisation with a label-dependent scale (and shift): ``embed`` [num_classes, 2C]."""

  def __init__(self, num_features, num_classes, bias=True):
    super().__init__()
    self.num_features = num_features
    self.bias = bias
    self.embed = nn.Embedding(num_classes, num_features * (2 if bias else 1))
    with torch.no_grad():
      self.embed.weight[:, :num_features].normal_(1., 0.02)
      self.embed.weight[:, num_features:].zero_()

  def forward(self, x, y):
    params = self.embed(y)
    out = _per_channel(params[:, :self.num_features]) * _instance_norm(x)
    return out + _per_channel(params[:, self.num_features:]) if self.bias else out


class ConditionalVarianceNorm2d(nn.Module):
  """VarianceNorm2d with a label-dependent scale ``embed`` [num_classes, C]."""

  def __init__(self, num_features, num_classes, bias=False):
    super().__init__()
    self.num_features = num_features
    self.bias = bias  # kept for signature parity; the layer has no shift
    self.embed = nn.Embedding(num_classes, num_features)
    with torch.no_grad():
      self.embed.weight.normal_(1., 0.02)

  def forward(self, x, y):
    h = x / torch.sqrt(x.var(dim=(2, 3), keepdim=True) + _EPS)
    return _per_channel(self.embed(y)) * h


def group_count(num_features, max_groups=32):
  """Largest number of groups <= min(max_groups, C // 4) that divides C (at least 1)."""
  g = max(1, min(max_groups, num_features // 4))
  while num_features % g:
    g -= 1
  return g


def _group_norm(num_features):
  return nn.GroupNorm(group_count(num_features), num_features, eps=1e-6)


def _instance_norm_layer(num_features):
  return nn.InstanceNorm2d(num_features, affine=False, track_running_stats=False)


# name -> factory(num_features); conditional factories also take num_classes.
UNCONDITIONAL_NORMS = {
  'InstanceNorm': _instance_norm_layer,
  'InstanceNorm++': InstanceNorm2dPlus,
  'VarianceNorm': VarianceNorm2d,
  'GroupNorm': _group_norm,
}
CONDITIONAL_NORMS = {
  'InstanceNorm': ConditionalInstanceNorm2d,
  'InstanceNorm++': ConditionalInstanceNorm2dPlus,
  'VarianceNorm': ConditionalVarianceNorm2d,
}


def get_normalization(config, conditional=False):
  """Factory ``norm(num_features) -> nn.Module`` for ``config.model.normalization``.

  Conditional layers are built with ``num_classes = config.model.num_scales`` and are called as
  ``layer(x, y)``; unconditional ones as ``layer(x)``. An unknown name raises a ValueError listing the
  valid ones.
  """
  name = config.model.normalization
  table = CONDITIONAL_NORMS if conditional else UNCONDITIONAL_NORMS
  if name not in table:
    kind = 'conditional ' if conditional else ''
    raise ValueError(f"unknown {kind}normalization '{name}' (config.model.normalization); "
                     f"valid: {', '.join(sorted(table))}")
  factory = table[name]
  if conditional:
    num_classes = int(config.model.num_scales)
    return lambda num_features: factory(num_features, num_classes)
  return factory
