"""FIR up/down-sampling of images (the StyleGAN2 resampling used by NCSN++), in plain PyTorch.

Images are ``[N, C, H, W]``. A FIR kernel is given as a 1-D list (made separable with an outer
product) or a 2-D square array, and is normalised to sum to one, so that a constant image keeps
its value (times ``gain``). Everything here is built from ``F.pad`` and depthwise (grouped)
convolutions: no compiled extension is needed and autograd works to any order, on any device.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
  """Upsample by zero insertion, pad, filter with ``kernel`` (true convolution), then subsample.

  Args:
    x: ``[N, C, H, W]``.
    kernel: ``[kh, kw]`` tensor (cast to ``x``'s dtype and device).
    up, down: integer factors (the same along both axes).
    pad: ``(p0, p1)`` added before / after each spatial axis of the upsampled image; a negative
      value crops.

  Returns:
    ``[N, C, (H*up + p0 + p1 - kh) // down + 1, (W*up + p0 + p1 - kw) // down + 1]``. This is the
    reference ``upfirdn2d_native`` of score_sde_pytorch: sample ``i`` of the input sits at
    position ``i*up`` of the upsampled grid, followed by ``up - 1`` zeros.
  """
  up, down = int(up), int(down)
  if up < 1 or down < 1:
    raise ValueError(f'upfirdn2d: up and down must be integers >= 1, got up={up}, down={down}')
  p0, p1 = (int(p) for p in pad)
  n, c, h, w = x.shape
  kernel = torch.as_tensor(kernel).to(device=x.device, dtype=x.dtype)
  kh, kw = kernel.shape

  if up > 1:
    # [N, C, H, 1, W, 1] -> zeros appended after every sample along both axes.
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
    x = x.reshape(n, c, h * up, w * up)

  # Positive pads add zeros; negative pads crop (done separately so that F.pad only ever grows).
  x = F.pad(x, (max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)))
  hp, wp = x.shape[-2:]
  x = x[:, :, max(-p0, 0):hp - max(-p1, 0), max(-p0, 0):wp - max(-p1, 0)]

  # F.conv2d is a cross-correlation: flip the kernel to get a convolution; one filter per channel.
  weight = torch.flip(kernel, (0, 1)).expand(c, 1, kh, kw).contiguous()
  return F.conv2d(x, weight, stride=down, groups=c)


def setup_kernel(k):
  """A 1-D (made separable) or 2-D square FIR kernel as a float64 numpy array summing to one."""
  k = np.asarray(k, dtype=np.float64)
  if k.ndim == 1:
    k = np.outer(k, k)
  if k.ndim != 2 or k.shape[0] != k.shape[1]:
    raise ValueError(f'FIR kernel must be 1-D or a square 2-D array, got shape {k.shape}')
  return k / np.sum(k)


def fir_kernel_buffer(k) -> torch.Tensor:
  """The normalised 2-D kernel of ``k`` (see ``setup_kernel``) as a float32 tensor, for a module's
  non-persistent buffer: passed as ``k`` it moves with the module, so no forward builds the kernel on the
  host and copies it to the device (a copy that also rules out CUDA-graph capture)."""
  return torch.as_tensor(setup_kernel(k), dtype=torch.float32)


def _kernel_tensor(k, factor, scale, x):
  """The normalised kernel times ``scale`` on ``x``'s device and dtype; defaults to a box. A tensor ``k``
  is taken as already normalised and 2-D (``fir_kernel_buffer``)."""
  if torch.is_tensor(k):
    return k.to(device=x.device, dtype=x.dtype) * scale
  k = setup_kernel([1] * factor if k is None else k) * scale
  return torch.as_tensor(k, device=x.device, dtype=x.dtype)


def upsample_2d(x, k=None, factor=2, gain=1):
  """FIR upsampling ``[N, C, H, W] -> [N, C, H*factor, W*factor]`` (default kernel: nearest neighbour)."""
  _check_factor(factor)
  kernel = _kernel_tensor(k, factor, gain * factor ** 2, x)
  p = kernel.shape[0] - factor
  return upfirdn2d(x, kernel, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x, k=None, factor=2, gain=1):
  """FIR downsampling ``[N, C, H, W] -> [N, C, H//factor, W//factor]`` (default kernel: average pooling)."""
  _check_factor(factor)
  kernel = _kernel_tensor(k, factor, gain, x)
  p = kernel.shape[0] - factor
  return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


def upsample_conv_2d(x, w, k=None, factor=2, gain=1):
  """``upsample_2d`` followed by a 'same' convolution with ``w`` [out, in, kh, kw], fused.

  A strided transposed convolution (zero insertion + full convolution) followed by one FIR pass
  whose padding also accounts for the conv border. Output ``[N, out, H*factor, W*factor]``.
  """
  _check_factor(factor)
  out_ch, in_ch, conv_h, conv_w = w.shape
  if conv_h != conv_w:
    raise ValueError(f'upsample_conv_2d needs a square conv kernel, got {conv_h}x{conv_w}')
  if x.shape[1] != in_ch:
    raise ValueError(f'upsample_conv_2d: input has {x.shape[1]} channels, weight expects {in_ch}')
  kernel = _kernel_tensor(k, factor, gain * factor ** 2, x)
  p = (kernel.shape[0] - factor) - (conv_w - 1)
  # conv_transpose2d takes [in, out, kh, kw] and scatters the kernel; flipping it makes the op a
  # zero-insertion followed by a (full) cross-correlation with ``w``, as TF's conv2d_transpose.
  w_t = torch.flip(w, (2, 3)).transpose(0, 1)
  x = F.conv_transpose2d(x, w_t, stride=factor)
  return upfirdn2d(x, kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(x, w, k=None, factor=2, gain=1):
  """A 'same' convolution with ``w`` [out, in, kh, kw] followed by ``downsample_2d``, fused.

  The FIR filter is applied first with the combined padding, then a strided valid convolution.
  Output ``[N, out, H//factor, W//factor]``.
  """
  _check_factor(factor)
  conv_h, conv_w = w.shape[-2:]
  if conv_h != conv_w:
    raise ValueError(f'conv_downsample_2d needs a square conv kernel, got {conv_h}x{conv_w}')
  kernel = _kernel_tensor(k, factor, gain, x)
  p = (kernel.shape[0] - factor) + (conv_w - 1)
  x = upfirdn2d(x, kernel, pad=((p + 1) // 2, p // 2))
  return F.conv2d(x, w, stride=factor)


def naive_upsample_2d(x, factor=2):
  """Nearest-neighbour upsampling: every pixel repeated ``factor`` x ``factor`` times."""
  return x.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


def naive_downsample_2d(x, factor=2):
  """Average pooling over non-overlapping ``factor`` x ``factor`` blocks."""
  n, c, h, w = x.shape
  return x.reshape(n, c, h // factor, factor, w // factor, factor).mean(dim=(3, 5))


def _check_factor(factor):
  if not isinstance(factor, int) or factor < 1:
    raise ValueError(f'resampling factor must be an integer >= 1, got {factor!r}')


class Conv2d(nn.Module):
  """Square ``kernel`` x ``kernel`` convolution, optionally fused with FIR up- or down-sampling by 2.

  Parameters ``weight`` [out_ch, in_ch, k, k] and ``bias`` [out_ch] (official key names). Without
  resampling it is a 'same' convolution.
  """

  def __init__(self, in_ch, out_ch, kernel, up=False, down=False, resample_kernel=(1, 3, 3, 1),
               use_bias=True, kernel_init=None):
    super().__init__()
    if up and down:
      raise ValueError('Conv2d: up and down cannot both be set')
    if kernel < 1 or kernel % 2 != 1:
      raise ValueError(f'Conv2d: kernel size must be odd and >= 1, got {kernel}')
    self.weight = nn.Parameter(torch.zeros(out_ch, in_ch, kernel, kernel))
    if kernel_init is not None:
      self.weight.data = kernel_init(self.weight.shape)
    self.register_parameter('bias', nn.Parameter(torch.zeros(out_ch)) if use_bias else None)
    self.up = up
    self.down = down
    self.resample_kernel = resample_kernel
    self.register_buffer('fir_kernel_2d', fir_kernel_buffer(resample_kernel), persistent=False)
    self.kernel = kernel

  def forward(self, x):
    if self.up:
      h = upsample_conv_2d(x, self.weight, k=self.fir_kernel_2d)
    elif self.down:
      h = conv_downsample_2d(x, self.weight, k=self.fir_kernel_2d)
    else:
      h = F.conv2d(x, self.weight, padding=self.kernel // 2)
    if self.bias is not None:
      h = h + self.bias.reshape(1, -1, 1, 1)
    return h
