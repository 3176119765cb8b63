"""PSNR, SSIM (torchmetrics), classifier accuracy and the CLIP distance against their closed forms."""
import math
import types

import pytest
import torch

from evaluation import image_metrics as M


def images(n=3, c=1, size=16, seed=0):
  g = torch.Generator().manual_seed(seed)
  return 0.2 + 0.6 * torch.rand(n, c, size, size, generator=g, dtype=torch.float64)


def test_identical_images():
  x = images(c=3)
  assert torch.isinf(M.psnr(x, x)).all()
  torch.testing.assert_close(M.ssim(x, x), torch.ones(3, dtype=torch.float64))
  region = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
  region[..., 4:9, :] = True
  torch.testing.assert_close(M.ssim(x, x, region), torch.ones(3, dtype=torch.float64))
  assert M.summarise(M.psnr(x, x)) == {'mean': None, 'sem': None, 'n': 3, 'infinite': 3}


@pytest.mark.parametrize('delta', [0.1, 0.05, -0.02])
def test_psnr_of_a_constant_shift_is_10_log10_of_one_over_delta_squared(delta):
  x = images()
  expected = 10 * math.log10(1. / delta ** 2)
  torch.testing.assert_close(M.psnr(x + delta, x), torch.full((3,), expected, dtype=torch.float64))
  # shifted only inside a region: PSNR over the region is the same, over the image the MSE shrinks by its share
  region = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
  region[..., 8:12, :] = True                      # a quarter of the pixels
  y = torch.where(region, x + delta, x)
  torch.testing.assert_close(M.psnr(y, x, region), torch.full((3,), expected, dtype=torch.float64))
  torch.testing.assert_close(M.psnr(y, x), torch.full((3,), 10 * math.log10(4. / delta ** 2), dtype=torch.float64))


@pytest.mark.parametrize('c,delta', [(0.4, 0.1), (0.7, -0.3), (0.05, 0.5)])
def test_ssim_of_shifted_constant_images_is_the_luminance_term(c, delta):
  """Constant images: every window has σ = 0, so contrast·structure = C2/C2 = 1 and SSIM is the luminance
  term (2 μx μy + C1) / (μx² + μy² + C1) with C1 = (0.01 · 1)²."""
  x = torch.full((2, 3, 12, 12), c, dtype=torch.float64)
  c1 = 0.01 ** 2
  expected = (2 * c * (c + delta) + c1) / (c ** 2 + (c + delta) ** 2 + c1)
  torch.testing.assert_close(M.ssim(x + delta, x), torch.full((2,), expected, dtype=torch.float64))
  region = torch.zeros(2, 1, 12, 12, dtype=torch.bool)
  region[0, :, :3] = True
  region[1, :, 5] = True
  torch.testing.assert_close(M.ssim(x + delta, x, region), torch.full((2,), expected, dtype=torch.float64))


def test_metrics_refuse_mismatched_or_too_small_images():
  with pytest.raises(ValueError, match='one shape'):
    M.psnr(images(size=16), images(size=8))
  with pytest.raises(ValueError, match='at least 6'):
    M.ssim(images(size=4), images(size=4))
  with pytest.raises(ValueError, match='region is empty'):
    M.psnr(images(), images(), torch.zeros(1, 1, 16, 16, dtype=torch.bool))


def test_accuracy_summary_and_attribute_labels():
  s = M.summarise_accuracy(torch.tensor([True, True, True, False]))
  assert s['percent'] == 75. and s['correct'] == 3 and s['n'] == 4
  assert s['sem'] == pytest.approx(100 * math.sqrt(0.75 * 0.25 / 4))
  assert s['ci95'][0] < 75. < s['ci95'][1]
  # attribute data: only the forget attributes' presence counts
  clf = types.SimpleNamespace(label_type='attribute',
                              predict=lambda x: torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 0]], dtype=torch.bool))
  labels = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 0]])
  assert M.correct(clf, torch.zeros(3, 1, 8, 8), labels, [0]).tolist() == [True, False, False]
  assert M.correct(clf, torch.zeros(3, 1, 8, 8), labels, [2]).tolist() == [True, True, True]
  assert M.correct(clf, torch.zeros(3, 1, 8, 8), labels, [0, 1]).tolist() == [False, False, False]


def test_clip_weights_that_are_not_there_are_refused():
  with pytest.raises(M.ClipUnavailable, match='does not exist'):
    M.ClipEmbedder('/nonexistent/clip')


def test_clip_distance_with_a_tiny_transformers_clip(tmp_path):
  transformers = pytest.importorskip('transformers')
  config = transformers.CLIPConfig(
    text_config={'hidden_size': 16, 'intermediate_size': 32, 'num_hidden_layers': 1, 'num_attention_heads': 2,
                 'vocab_size': 100, 'max_position_embeddings': 16},
    vision_config={'hidden_size': 16, 'intermediate_size': 32, 'num_hidden_layers': 1, 'num_attention_heads': 2,
                   'image_size': 32, 'patch_size': 8}, projection_dim=8)
  torch.manual_seed(0)
  transformers.CLIPModel(config).save_pretrained(tmp_path / 'clip')
  embedder = M.ClipEmbedder(str(tmp_path / 'clip'))
  x = images(c=1, size=16)
  dist, cos = M.clip_distance(embedder, x, x)
  torch.testing.assert_close(dist, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-5)
  torch.testing.assert_close(cos, torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-5)
  dist, _ = M.clip_distance(embedder, images(c=1, size=16, seed=1), x)
  assert (dist > 0).all()
  assert embedder.describe()['library'] == 'transformers' and embedder.describe()['input_size'] == 32
