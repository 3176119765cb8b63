"""Inpainting masks given as fractions of the image, so that every image size is masked.

A mask is a bool tensor ``[B, 1, H, W]`` that is True on **known** pixels and False on the pixels to fill
(score_sde's convention: 1 = known), the same for every channel. Kinds (``MASKS``):

  * ``band``: the rows ``[⌊start·H⌉, ⌊end·H⌉)`` are unknown (⌊·⌉: rounded half up to whole pixels),
    full width. The default ``(0.5, 0.75)`` is the paper's 64×16 band on 64×64 CelebA (rows 32–48);
    on 32×32 it is rows 16–24 (the official code's fixed rows 32:48 mask nothing there).
  * ``box``: a centred square of side ``⌊box·H⌉`` × ``⌊box·W⌉`` is unknown.
  * ``left`` / ``right`` / ``top`` / ``bottom``: that half is unknown (the first ``W//2`` columns for
    ``left``, the last ``W - W//2`` for ``right``; rows alike).
  * ``random``: exactly ``⌊share·H·W⌉`` pixels of each image are unknown, chosen by a permutation
    seeded per image (``seeds``), so a mask does not depend on the batch an image is in.

``nominal_share`` is the share of unknown pixels a spec says; ``make_mask`` refuses a spec that masks no
pixel or every pixel at the given size.
"""
import dataclasses
import math
from typing import Optional, Sequence

import torch

MASKS = ('band', 'box', 'left', 'right', 'top', 'bottom', 'random')


class MaskError(ValueError):
  """An unknown mask kind or fractions outside their ranges."""


@dataclasses.dataclass(frozen=True)
class MaskSpec:
  """What to mask: ``kind`` (one of ``MASKS``) and its fractions (see the module docstring)."""
  kind: str = 'band'
  band_start: float = 0.5
  band_end: float = 0.75
  box: float = 0.5
  share: float = 0.25

  def validate(self) -> 'MaskSpec':
    """Returns self, or raises ``MaskError`` with one line naming the bad value and the valid range."""
    if self.kind not in MASKS:
      raise MaskError(f"unknown inpainting mask {self.kind!r}; valid: {', '.join(MASKS)}")
    if self.kind == 'band':
      a, b = float(self.band_start), float(self.band_end)
      if not (0. <= a < b <= 1.) or b - a >= 1.:
        raise MaskError(f'eval.inpaint_band_start/end = {a:g}/{b:g}: the masked band must satisfy '
                        '0 <= start < end <= 1 and cover a share in (0, 1) of the rows')
    elif self.kind == 'box':
      if not 0. < float(self.box) < 1.:
        raise MaskError(f'eval.inpaint_box = {float(self.box):g}: the box side is a fraction of the image side '
                        'and must lie in (0, 1)')
    elif self.kind == 'random':
      if not 0. < float(self.share) < 1.:
        raise MaskError(f'eval.inpaint_share = {float(self.share):g}: the share of masked pixels must lie in (0, 1)')
    return self

  @property
  def nominal_share(self) -> float:
    """The share of unknown pixels the spec asks for (before rounding to whole pixels)."""
    if self.kind == 'band':
      return float(self.band_end) - float(self.band_start)
    if self.kind == 'box':
      return float(self.box) ** 2
    if self.kind == 'random':
      return float(self.share)
    return 0.5

  def describe(self) -> dict:
    """The results.json entry of the spec (only the fractions its kind uses)."""
    out = {'name': self.kind, 'nominal_share': self.nominal_share}
    if self.kind == 'band':
      out['rows'] = [float(self.band_start), float(self.band_end)]
    elif self.kind == 'box':
      out['box'] = float(self.box)
    elif self.kind == 'random':
      out['share'] = float(self.share)
    return out


def spec_from_config(config) -> MaskSpec:
  """The validated ``MaskSpec`` of ``config.eval.inpaint_*``."""
  ev = config.eval
  return MaskSpec(str(ev.inpaint_mask).lower(), float(ev.inpaint_band_start), float(ev.inpaint_band_end),
                  float(ev.inpaint_box), float(ev.inpaint_share)).validate()


def _px(fraction: float, size: int) -> int:
  """``fraction · size`` rounded half up to whole pixels."""
  return int(math.floor(float(fraction) * size + 0.5))


def _unknown_region(spec: MaskSpec, height: int, width: int) -> torch.Tensor:
  """The unknown pixels [H, W] (bool) of a deterministic kind."""
  unknown = torch.zeros(height, width, dtype=torch.bool)
  if spec.kind == 'band':
    unknown[_px(spec.band_start, height):_px(spec.band_end, height), :] = True
  elif spec.kind == 'box':
    h, w = _px(spec.box, height), _px(spec.box, width)
    top, left = (height - h) // 2, (width - w) // 2
    unknown[top:top + h, left:left + w] = True
  elif spec.kind == 'left':
    unknown[:, :width // 2] = True
  elif spec.kind == 'right':
    unknown[:, width // 2:] = True
  elif spec.kind == 'top':
    unknown[:height // 2, :] = True
  elif spec.kind == 'bottom':
    unknown[height // 2:, :] = True
  return unknown


def make_mask(spec: MaskSpec, height: int, width: int, seeds: Optional[Sequence[int]] = None,
              batch: int = 1) -> torch.Tensor:
  """Known-pixel mask ``[B, 1, H, W]`` (bool, CPU) for ``spec`` at ``height`` × ``width``.

  ``random`` needs one seed per image (``seeds``, B = len(seeds)); the other kinds give the same mask for
  all ``batch`` images (B = ``batch``, or len(seeds) when given). Raises ``MaskError`` when the spec
  masks no pixel, or every pixel, at this size.
  """
  spec.validate()
  n = len(seeds) if seeds is not None else int(batch)
  if spec.kind == 'random':
    if seeds is None:
      raise MaskError('the random mask needs one seed per image')
    count = _px(spec.share, height * width)
    unknown = torch.zeros(n, height * width, dtype=torch.bool)
    for i, seed in enumerate(seeds):
      perm = torch.randperm(height * width, generator=torch.Generator().manual_seed(int(seed)))
      unknown[i, perm[:count]] = True
    unknown = unknown.reshape(n, 1, height, width)
  else:
    unknown = _unknown_region(spec, height, width).reshape(1, 1, height, width).expand(n, 1, height, width)
    count = int(unknown[0].sum())
  if count == 0 or count == height * width:
    what = 'no pixel' if count == 0 else 'every pixel'
    raise MaskError(f'the {spec.kind!r} mask {spec.describe()} masks {what} of a {height}×{width} image: choose '
                    'larger (smaller) fractions')
  return ~unknown.contiguous()


def unknown_share(mask: torch.Tensor) -> float:
  """The share of unknown (False) pixels of a known-pixel mask, over all images."""
  return float((~mask.bool()).double().mean())
