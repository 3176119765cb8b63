"""FIR resampling (models/up_or_down_sampling.py) against naive numpy references written here.

The reference upfirdn2d inserts zeros explicitly, pads (or crops), and convolves with nested loops
(a true convolution: the kernel is flipped), then keeps every ``down``-th sample; the fused
conv+resampling ops are checked against FIR filtering followed by a looped valid correlation.
"""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import up_or_down_sampling as updown


def naive_upfirdn2d(x, k, up, down, p0, p1):
  """x [N, C, H, W], k [kh, kw] numpy float64 -> numpy, by explicit loops."""
  n, c, h, w = x.shape
  kh, kw = k.shape
  upsampled = np.zeros((n, c, h * up, w * up))
  for i in range(h):
    for j in range(w):
      upsampled[:, :, i * up, j * up] = x[:, :, i, j]
  # pad / crop: row r of the padded image is row r - p0 of the upsampled one (zero outside).
  hp, wp = h * up + p0 + p1, w * up + p0 + p1
  padded = np.zeros((n, c, hp, wp))
  for r in range(hp):
    for s in range(wp):
      src_r, src_s = r - p0, s - p0
      if 0 <= src_r < h * up and 0 <= src_s < w * up:
        padded[:, :, r, s] = upsampled[:, :, src_r, src_s]
  # direct convolution: out[r, s] = sum_{a, b} padded[r + a, s + b] * k[kh-1-a, kw-1-b].
  oh, ow = hp - kh + 1, wp - kw + 1
  out = np.zeros((n, c, oh, ow))
  for a in range(kh):
    for b in range(kw):
      out += padded[:, :, a:a + oh, b:b + ow] * k[kh - 1 - a, kw - 1 - b]
  return out[:, :, ::down, ::down]


def naive_correlate(x, w, stride=1):
  """Valid cross-correlation (what F.conv2d computes) of x [N, Cin, H, W] with w [Cout, Cin, kh, kw]."""
  n, _, h, wd = x.shape
  co, _, kh, kw = w.shape
  oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
  out = np.zeros((n, co, oh, ow))
  for r in range(oh):
    for s in range(ow):
      patch = x[:, :, r * stride:r * stride + kh, s * stride:s * stride + kw]
      out[:, :, r, s] = np.einsum('nchw,ochw->no', patch, w)
  return out


def normalised(k):
  k = np.asarray(k, dtype=np.float64)
  k = np.outer(k, k) if k.ndim == 1 else k
  return k / k.sum()


KERNELS = {
  'fir1331': [1, 3, 3, 1],
  'fir121': [1, 2, 1],
  'box2': [1, 1],
  'single': [1],
  'asym2d': [[1., 2.], [3., 4.]],  # not symmetric: catches a missing / double kernel flip
  'binom5': [1, 4, 6, 4, 1],
}
PADS = [(0, 0), (1, 2), (2, 1), (-1, 1), (3, 3), (1, -1)]


@pytest.mark.parametrize('up,down', list(itertools.product([1, 2], [1, 2])))
@pytest.mark.parametrize('kname', list(KERNELS))
def test_upfirdn2d_matches_naive_reference(up, down, kname):
  gen = torch.Generator().manual_seed(up * 10 + down)
  x = torch.randn(2, 3, 5, 6, generator=gen, dtype=torch.float64)  # non-square: catches axis swaps
  k = normalised(KERNELS[kname]) * 3.  # an arbitrary gain
  for p0, p1 in PADS:
    oh = (5 * up + p0 + p1 - k.shape[0]) // down + 1
    if oh < 1:
      continue
    ref = naive_upfirdn2d(x.numpy(), k, up, down, p0, p1)
    out = updown.upfirdn2d(x, torch.from_numpy(k), up=up, down=down, pad=(p0, p1))
    assert tuple(out.shape) == ref.shape, (p0, p1)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-12, err_msg=f'pad={(p0, p1)}')
    # float32 agrees to round-off.
    out32 = updown.upfirdn2d(x.float(), torch.from_numpy(k).float(), up=up, down=down, pad=(p0, p1))
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(out32.double().numpy(), ref, rtol=0, atol=2e-6)


@pytest.mark.parametrize('kname', ['fir1331', 'fir121', 'box2', 'binom5'])
def test_upsample_and_downsample_2d(kname):
  kern = KERNELS[kname]
  x = torch.randn(1, 2, 6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
  k = normalised(kern)
  p = k.shape[0] - 2
  up = updown.upsample_2d(x, kern, factor=2)
  assert up.shape == (1, 2, 12, 8)
  np.testing.assert_allclose(up.numpy(), naive_upfirdn2d(x.numpy(), k * 4, 2, 1, (p + 1) // 2 + 1, p // 2),
                             atol=1e-12)
  down = updown.downsample_2d(x, kern, factor=2)
  assert down.shape == (1, 2, 3, 2)
  np.testing.assert_allclose(down.numpy(), naive_upfirdn2d(x.numpy(), k, 1, 2, (p + 1) // 2, p // 2), atol=1e-12)
  # A constant image stays constant away from the zero-padded border (the kernel is normalised).
  ones = torch.ones(1, 1, 16, 16, dtype=torch.float64)
  m = k.shape[0]
  up_ones = updown.upsample_2d(ones, kern)[..., m:-m, m:-m]
  torch.testing.assert_close(up_ones, torch.ones_like(up_ones))
  down_ones = updown.downsample_2d(ones, kern)[..., 2:-2, 2:-2]
  assert down_ones.shape == (1, 1, 4, 4)
  torch.testing.assert_close(down_ones, torch.ones_like(down_ones))


def test_default_kernels_are_nearest_and_average_pooling():
  x = torch.randn(2, 3, 4, 6)
  torch.testing.assert_close(updown.upsample_2d(x), F.interpolate(x, scale_factor=2, mode='nearest'))
  torch.testing.assert_close(updown.downsample_2d(x), F.avg_pool2d(x, 2))
  torch.testing.assert_close(updown.naive_upsample_2d(x), F.interpolate(x, scale_factor=2, mode='nearest'))
  torch.testing.assert_close(updown.naive_downsample_2d(x), F.avg_pool2d(x, 2))


@pytest.mark.parametrize('kname', ['fir1331', 'fir121', 'box2', 'binom5'])
def test_fused_conv_resampling(kname):
  kern = KERNELS[kname]
  gen = torch.Generator().manual_seed(3)
  x = torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=gen)
  w = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=gen)
  k = normalised(kern)
  p = k.shape[0] - 2

  # conv + FIR down, fused: FIR filtering with the combined padding, then a stride-2 valid conv.
  pd = p + 2
  ref = naive_correlate(naive_upfirdn2d(x.numpy(), k, 1, 1, (pd + 1) // 2, pd // 2), w.numpy(), stride=2)
  out = updown.conv_downsample_2d(x, w, k=kern)
  assert out.shape == (2, 4, 3, 3)
  np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)

  # FIR up + conv, fused: FIR upsampling with the padding widened by the conv's half-width, then a
  # valid 3x3 conv.
  ref = naive_correlate(naive_upfirdn2d(x.numpy(), k * 4, 2, 1, (p + 1) // 2 + 2, p // 2 + 1), w.numpy())
  out = updown.upsample_conv_2d(x, w, k=kern)
  assert out.shape == (2, 4, 12, 12)
  np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)

  # Away from the border the fused ops equal the unfused compositions (checks the alignment).
  unfused = F.conv2d(updown.upsample_2d(x, kern), w, padding=1)
  torch.testing.assert_close(out[..., 4:-4, 4:-4], unfused[..., 4:-4, 4:-4])
  unfused = updown.downsample_2d(F.conv2d(x, w, padding=1), kern)
  torch.testing.assert_close(updown.conv_downsample_2d(x, w, k=kern)[..., 2:-2, 2:-2], unfused[..., 2:-2, 2:-2])


def test_conv2d_module():
  conv = updown.Conv2d(3, 5, kernel=3, up=True, resample_kernel=(1, 3, 3, 1))
  assert [n for n, _ in conv.named_parameters()] == ['weight', 'bias']
  assert conv.weight.shape == (5, 3, 3, 3)
  x = torch.randn(2, 3, 8, 8)
  assert updown.Conv2d(3, 5, 3, up=True)(x).shape == (2, 5, 16, 16)
  assert updown.Conv2d(3, 5, 3, down=True)(x).shape == (2, 5, 4, 4)
  plain = updown.Conv2d(3, 5, 3, use_bias=False)
  torch.testing.assert_close(plain(x), F.conv2d(x, plain.weight, padding=1))
  with pytest.raises(ValueError, match='up and down'):
    updown.Conv2d(3, 5, 3, up=True, down=True)
  with pytest.raises(ValueError, match='odd'):
    updown.Conv2d(3, 5, 2)


def test_upfirdn2d_gradients():
  x = torch.randn(1, 1, 3, 3, dtype=torch.float64, requires_grad=True)
  k = torch.tensor(normalised([1, 3, 3, 1]))
  assert torch.autograd.gradcheck(lambda t: updown.upfirdn2d(t, k, up=2, down=1, pad=(2, 1)), (x,))
  assert torch.autograd.gradcheck(lambda t: updown.upfirdn2d(t, k, up=1, down=2, pad=(1, 1)), (x,))
  assert torch.autograd.gradgradcheck(lambda t: updown.upfirdn2d(t, k, up=2, down=2, pad=(1, 2)), (x,))


def test_upfirdn2d_rejects_bad_factors():
  with pytest.raises(ValueError, match='up and down'):
    updown.upfirdn2d(torch.zeros(1, 1, 4, 4), torch.ones(2, 2), up=0)
  with pytest.raises(ValueError, match='factor'):
    updown.upsample_2d(torch.zeros(1, 1, 4, 4), factor=1.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA is not available')
def test_upfirdn2d_cuda_matches_cpu():
  x = torch.randn(2, 3, 9, 7)
  k = torch.tensor(normalised([1, 3, 3, 1]), dtype=torch.float32)
  for up, down, pad in [(2, 1, (2, 1)), (1, 2, (1, 1)), (2, 2, (0, 3))]:
    cpu = updown.upfirdn2d(x, k, up=up, down=down, pad=pad)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
      gpu = updown.upfirdn2d(x.cuda(), k.cuda(), up=up, down=down, pad=pad)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-5)
