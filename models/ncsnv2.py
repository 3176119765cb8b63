"""NCSN / NCSNv2 RefineNet score networks for the discrete VE (SMLD) setting.

Registered names:
  * ``ncsnv2_64``  (NCSNv2 for images up to ~64 px: CIFAR-10, CelebA 64, MNIST 28),
  * ``ncsnv2_128`` (one more resolution level, LSUN 128 px),
  * ``ncsnv2_256`` (two more levels, 256 px),
  * ``ncsn``       (NCSNv1: the ``ncsnv2_64`` layout with conditional instance normalisation).

Call: ``model(x, labels)`` with images ``x`` [B, C, H, W] (``H = W = config.data.image_size``,
``C = config.data.num_channels``; in [0, 1] unless ``config.data.centered``, then in [-1, 1]) and
``labels`` [B], integer indices into the descending noise levels ``models.utils.get_sigmas(config)``
(index 0 is σ_max), i.e. ``VESDE.model_labels(t, continuous=False)``. Returns the score estimate,
shape of ``x``. NCSNv2 is not conditioned on the label except through the output scaling: it returns
``h(x) / σ_label`` with the noise levels held in the ``sigmas`` buffer (always, whatever
``config.model.scale_by_sigma`` says, as in the original code). NCSN returns its output unscaled; the
label enters through its conditional normalisations (``num_scales`` classes).

Module and buffer names and the parameter order follow score_sde_pytorch's ``models/ncsnv2.py``, so its
checkpoints (model, EMA and optimiser state) load. Differences from that file: dilated 3x3 convolutions
are padded by their dilation (size-preserving, as in the original NCSNv2 code; parameter shapes are
unchanged), the ``sigmas`` buffer is float32 (a float64 checkpoint value is converted on load), the
image channels come from ``config.data.num_channels``, and ``config.model.interpolation`` selects the
resize mode of the fusion blocks (bilinear, the original behaviour, by default).
"""
import torch
from torch import nn

from models import utils
from models.ncsnv2_layers import RefineBlock, ResidualBlock, get_act, get_interpolation
from models.normalization import get_normalization


class _RefineNet(nn.Module):
  """Shared body: a residual encoder (``STAGES``, fine to coarse) and a RefineNet decoder.

  Each stage is ``(res_name, refine_name, channel multiplier of nf, resample, dilation)`` and holds two
  residual blocks (the first one resamples / changes channels). The decoder runs from the coarsest stage
  back to the finest, each RefineBlock fusing that stage's feature with the previous refined one.
  """

  NAME = ''
  STAGES = ()
  CONDITIONAL = False   # conditional normalisations (NCSN) instead of the 1/σ output scaling (NCSNv2)

  def __init__(self, config):
    super().__init__()
    nf = int(config.model.nf)
    channels = int(config.data.num_channels)
    image_size = int(config.data.image_size)
    factor = 2 ** sum(1 for s in self.STAGES if s[3] == 'down' and s[4] == 1)
    if image_size < factor or image_size % factor:
      raise ValueError(f'{self.NAME} halves the resolution {factor.bit_length() - 1} times, so '
                       f'config.data.image_size must be a positive multiple of {factor}; got {image_size}')
    self.centered = bool(config.data.centered)
    self.act = act = get_act(config)
    norm = get_normalization(config, conditional=self.CONDITIONAL)
    interpolation = get_interpolation(config)
    cond_norm = norm if self.CONDITIONAL else None
    if not self.CONDITIONAL:
      self.register_buffer('sigmas', torch.tensor(utils.get_sigmas(config), dtype=torch.float32))

    self.begin_conv = nn.Conv2d(channels, nf, 3, stride=1, padding=1)
    self.normalizer = norm(nf)
    self.end_conv = nn.Conv2d(nf, channels, 3, stride=1, padding=1)

    stage_channels = []
    in_ch = nf
    for res_name, _, mult, resample, dilation in self.STAGES:
      out_ch = mult * nf
      self.add_module(res_name, nn.ModuleList([
        ResidualBlock(in_ch, out_ch, act, norm, resample=resample, dilation=dilation),
        ResidualBlock(out_ch, out_ch, act, norm, resample=None, dilation=dilation)]))
      stage_channels.append(out_ch)
      in_ch = out_ch

    # Decoder block of stage k: fuses [stage k feature, refined feature] (both stage_channels[k]) into the
    # channel count of stage k-1 (nf for the finest stage); the coarsest block has the stage's feature only.
    last = len(self.STAGES) - 1
    refines = {}
    for k in range(last, -1, -1):
      c = stage_channels[k]
      refines[self.STAGES[k][1]] = RefineBlock(
        [c] if k == last else [c, c], stage_channels[k - 1] if k > 0 else nf, act, interpolation,
        start=k == last, end=k == 0, cond_norm=cond_norm)
    # The original modules are created in name order (refine1, refine2, refine3, refine31, ...); keep it
    # so that the parameter order (optimiser and EMA state) matches.
    for name in sorted(refines):
      self.add_module(name, refines[name])

  def forward(self, x, labels):
    """Score estimate [B, C, H, W] from images ``x`` [B, C, H, W] and noise-level indices ``labels`` [B]."""
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
      raise ValueError(f'{self.NAME} takes integer noise-level indices into the descending sigmas '
                       f'(discrete VE, training.continuous=False), got labels of dtype {labels.dtype}')
    y = labels if self.CONDITIONAL else None
    h = x if self.centered else 2. * x - 1.
    h = self.begin_conv(h)
    features = []
    for res_name, *_ in self.STAGES:
      for block in getattr(self, res_name):
        h = block(h, y)
      features.append(h)

    refined = None
    for k in range(len(self.STAGES) - 1, -1, -1):
      inputs = [features[k]] if refined is None else [features[k], refined]
      refined = getattr(self, self.STAGES[k][1])(inputs, features[k].shape[2:], y)

    out = self.normalizer(refined) if y is None else self.normalizer(refined, y)
    out = self.end_conv(self.act(out))
    if self.CONDITIONAL:
      return out
    used_sigmas = self.sigmas[labels.to(self.sigmas.device)].to(device=out.device, dtype=out.dtype)
    return out / used_sigmas.reshape((-1,) + (1,) * (out.ndim - 1))


@utils.register_model(name='ncsnv2_64')
class NCSNv2(_RefineNet):
  """NCSNv2 for small images: 4 levels at H, H/2, H/2 (dilation 2), H/2 (dilation 4); H even.

  Channels nf, 2nf, 2nf, 2nf.
  """

  NAME = 'ncsnv2_64'
  STAGES = (('res1', 'refine4', 1, None, 1),
            ('res2', 'refine3', 2, 'down', 1),
            ('res3', 'refine2', 2, 'down', 2),
            ('res4', 'refine1', 2, 'down', 4))


@utils.register_model(name='ncsnv2_128')
class NCSNv2_128(_RefineNet):
  """NCSNv2 for 96-128 px: 5 levels at H, H/2, H/4, H/4 (dil. 2), H/4 (dil. 4); H divisible by 4.

  Channels nf, 2nf, 2nf, 4nf, 4nf.
  """

  NAME = 'ncsnv2_128'
  STAGES = (('res1', 'refine5', 1, None, 1),
            ('res2', 'refine4', 2, 'down', 1),
            ('res3', 'refine3', 2, 'down', 1),
            ('res4', 'refine2', 4, 'down', 2),
            ('res5', 'refine1', 4, 'down', 4))


@utils.register_model(name='ncsnv2_256')
class NCSNv2_256(_RefineNet):
  """NCSNv2 for 256 px: 6 levels at H .. H/8, then H/8 dilated twice; H divisible by 8 (so not 28).

  Channels nf, 2nf, 2nf, 2nf, 4nf, 4nf (levels res1, res2, res3, res31, res4, res5).
  """

  NAME = 'ncsnv2_256'
  STAGES = (('res1', 'refine5', 1, None, 1),
            ('res2', 'refine4', 2, 'down', 1),
            ('res3', 'refine3', 2, 'down', 1),
            ('res31', 'refine31', 2, 'down', 1),
            ('res4', 'refine2', 4, 'down', 2),
            ('res5', 'refine1', 4, 'down', 4))


@utils.register_model(name='ncsn')
class NCSN(_RefineNet):
  """NCSNv1: the ``ncsnv2_64`` layout with label-conditional normalisations and no 1/σ output scaling.

  ``num_scales`` classes; no ``sigmas`` buffer. Use with ``config.model.scale_by_sigma = False``.
  """

  NAME = 'ncsn'
  STAGES = NCSNv2.STAGES
  CONDITIONAL = True
