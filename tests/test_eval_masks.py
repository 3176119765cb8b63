"""Inpainting masks (evaluation/masks.py): every kind masks the share it says at 8, 28, 32 and 64 px."""
import pytest
import torch

from configs.default_configs import get_base_config
from evaluation import masks as M

SIZES = (8, 28, 32, 64)


@pytest.mark.parametrize('size', SIZES)
@pytest.mark.parametrize('kind', M.MASKS)
def test_default_masks_hide_exactly_their_share_at_every_size(kind, size):
  spec = M.MaskSpec(kind)
  mask = M.make_mask(spec, size, size, seeds=[1, 2, 3])
  assert mask.shape == (3, 1, size, size) and mask.dtype == torch.bool
  # the defaults (band 1/2–3/4, box side 1/2, halves, random 1/4) are whole pixels at these sizes
  assert spec.nominal_share == {'band': 0.25, 'box': 0.25, 'random': 0.25}.get(kind, 0.5)
  for image in mask:
    assert (~image).sum().item() == spec.nominal_share * size * size
  assert M.unknown_share(mask) == spec.nominal_share


@pytest.mark.parametrize('size', SIZES)
@pytest.mark.parametrize('kind,kwargs', [('band', {'band_start': 0.1, 'band_end': 0.4}), ('box', {'box': 0.3}),
                                         ('random', {'share': 0.3}), ('random', {'share': 0.07})])
def test_other_fractions_are_rounded_to_the_nearest_whole_pixels(kind, kwargs, size):
  spec = M.MaskSpec(kind, **kwargs)
  share = M.unknown_share(M.make_mask(spec, size, size, seeds=[0]))
  if kind == 'band':     # whole rows: each end is off by at most half a row
    assert abs(share - spec.nominal_share) <= 1 / size + 1e-12
  elif kind == 'box':    # a square of side round(0.3 · size)
    side = int(0.3 * size + 0.5)
    assert share == side * side / size ** 2
  else:
    assert abs(share - spec.nominal_share) <= 0.5 / size ** 2 + 1e-12


def test_the_paper_band_is_rows_32_to_48_of_64_and_the_halves_are_where_they_say():
  unknown = ~M.make_mask(M.MaskSpec('band'), 64, 64)[0, 0]
  assert unknown.any(dim=1).nonzero().flatten().tolist() == list(range(32, 48)) and unknown[32:48].all()
  assert (~M.make_mask(M.MaskSpec('left'), 8, 8)[0, 0])[:, :4].all()
  assert M.make_mask(M.MaskSpec('left'), 8, 8)[0, 0][:, 4:].all()
  assert (~M.make_mask(M.MaskSpec('bottom'), 8, 8)[0, 0])[4:].all()
  box = ~M.make_mask(M.MaskSpec('box'), 32, 32)[0, 0]
  assert box[8:24, 8:24].all() and box.sum() == 256


def test_random_masks_are_seeded_per_image():
  spec = M.MaskSpec('random', share=0.5)
  a = M.make_mask(spec, 28, 28, seeds=[7, 8, 9])
  b = M.make_mask(spec, 28, 28, seeds=[9, 7])
  assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0])     # the same seed gives the same mask, in any batch
  assert not torch.equal(a[0], a[1])


@pytest.mark.parametrize('spec,match', [
  (M.MaskSpec('ring'), "unknown inpainting mask 'ring'; valid: band, box, left, right, top, bottom, random"),
  (M.MaskSpec('random', share=0.), r'inpaint_share = 0: .* \(0, 1\)'),
  (M.MaskSpec('random', share=1.), r'inpaint_share = 1: .* \(0, 1\)'),
  (M.MaskSpec('random', share=-0.2), r'\(0, 1\)'),
  (M.MaskSpec('box', box=1.5), r'inpaint_box = 1.5: .* \(0, 1\)'),
  (M.MaskSpec('band', band_start=0.6, band_end=0.4), 'start < end'),
  (M.MaskSpec('band', band_start=0., band_end=1.), r'share in \(0, 1\)')])
def test_bad_specs_are_refused_with_one_line(spec, match):
  with pytest.raises(M.MaskError, match=match) as e:
    M.make_mask(spec, 8, 8, seeds=[0])
  assert '\n' not in str(e.value)


def test_a_mask_that_hides_nothing_at_this_size_is_refused():
  with pytest.raises(M.MaskError, match='masks no pixel of a 8×8 image'):
    M.make_mask(M.MaskSpec('band', band_start=0.5, band_end=0.52), 8, 8)
  with pytest.raises(M.MaskError, match='masks every pixel'):
    M.make_mask(M.MaskSpec('random', share=0.999), 8, 8, seeds=[0])


def test_spec_from_config():
  config = get_base_config()
  assert M.spec_from_config(config) == M.MaskSpec('band', 0.5, 0.75, 0.5, 0.25)
  config.eval.inpaint_mask, config.eval.inpaint_share = 'Random', 0.1
  assert M.spec_from_config(config).kind == 'random' and M.spec_from_config(config).nominal_share == 0.1
  config.eval.inpaint_share = 2.
  with pytest.raises(M.MaskError, match=r'\(0, 1\)'):
    M.spec_from_config(config)
