"""Per-image restoration metrics: PSNR and SSIM (torchmetrics), classifier accuracy, CLIP embedding distance.

Images are ``[B, C, H, W]`` in ``[0, 1]`` (data range 1). Every function returns one value per image
(float64, CPU) so that the caller can report a mean with its standard error.

  * ``psnr``: 10 log10(1 / MSE) in dB over the whole image, or over a ``region`` (True = pixels that
    count, e.g. the unknown pixels of an inpainting mask); torchmetrics' ``peak_signal_noise_ratio``.
  * ``ssim``: torchmetrics' ``structural_similarity_index_measure`` (Gaussian window σ = 1.5, 11 px,
    K1 = 0.01, K2 = 0.03, reflection padding; images of at least 6 px), averaged over the image or over the
    SSIM map's pixels in ``region`` (each map value describes the window centred on its pixel).
  * ``correct``: whether the evaluation classifier gives each image its true label (classes), or every
    forget attribute's true presence (attribute data such as CelebA Bangs).
  * ``ClipEmbedder`` / ``clip_distance``: CLIP image embeddings from local weights (transformers'
    ``CLIPModel`` folder or an open_clip checkpoint) and the L2 distance / cosine similarity between the
    embeddings of a restored image and of its original.
"""
import os
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from evaluation.stats import mean_sem, wilson_interval

DATA_RANGE = 1.0
#: CLIP's image normalisation (the mean and std of its training images, as published with the model).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _check_pair(restored: torch.Tensor, original: torch.Tensor):
  if restored.shape != original.shape or restored.ndim != 4:
    raise ValueError(f'restored and original images must both be [B, C, H, W] of one shape, got '
                     f'{tuple(restored.shape)} and {tuple(original.shape)}')
  return restored.detach().cpu().double(), original.detach().cpu().double()


def _region(region: Optional[torch.Tensor], like: torch.Tensor) -> Optional[torch.Tensor]:
  if region is None:
    return None
  region = region.detach().cpu().bool().expand_as(like)
  if not region.reshape(like.shape[0], -1).any(dim=1).all():
    raise ValueError('the region is empty for some image: nothing to measure there')
  return region


def psnr(restored: torch.Tensor, original: torch.Tensor, region: Optional[torch.Tensor] = None) -> torch.Tensor:
  """PSNR in dB per image [B] (float64): ``10 log10(1 / MSE)`` over all pixels and channels, or over the
  pixels where ``region`` (broadcastable to the images) is True; +inf for identical pixels."""
  restored, original = _check_pair(restored, original)
  region = _region(region, restored)
  if region is None:
    return peak_signal_noise_ratio(restored, original, data_range=DATA_RANGE, reduction='none', dim=(1, 2, 3))
  return torch.stack([peak_signal_noise_ratio(r[m], o[m], data_range=DATA_RANGE)
                      for r, o, m in zip(restored, original, region)])


def ssim(restored: torch.Tensor, original: torch.Tensor, region: Optional[torch.Tensor] = None) -> torch.Tensor:
  """SSIM per image [B] (float64): the mean of torchmetrics' SSIM map over the whole image (its own
  per-image value), or over the map's values at the pixels (and channels) where ``region`` is True."""
  restored, original = _check_pair(restored, original)
  if min(restored.shape[-2:]) < 6:
    raise ValueError(f'SSIM needs images of at least 6×6 pixels (its 11-px window is reflected), got '
                     f'{tuple(restored.shape[-2:])}')
  whole, full = structural_similarity_index_measure(restored, original, data_range=DATA_RANGE, reduction='none',
                                                    return_full_image=True)
  region = _region(region, restored)
  if region is None:
    return whole
  m = region.double()
  return (full * m).sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3))


def correct(classifier, images: torch.Tensor, labels: torch.Tensor, forget_indices: Sequence[int]) -> torch.Tensor:
  """bool [B]: the classifier's prediction for each image matches its true label. Class data: the class;
  attribute data (``labels`` [B, A] in {0, 1}): every forget attribute's presence."""
  pred = classifier.predict(images).cpu()
  labels = labels.cpu()
  if classifier.label_type == 'attribute':
    idx = list(forget_indices)
    return (pred[:, idx].bool() == labels[:, idx].bool()).all(dim=1)
  return pred == labels.long()


def summarise_accuracy(ok: torch.Tensor) -> dict:
  """``{'percent', 'sem', 'ci95', 'correct', 'n'}`` of a bool vector: the accuracy in %, its binomial
  standard error 100·√(p(1−p)/n) and its 95 % Wilson interval (percent)."""
  n = int(ok.numel())
  k = int(ok.sum())
  p = k / n
  lo, hi = wilson_interval(k, n)
  return {'percent': 100. * p, 'sem': 100. * (p * (1. - p) / n) ** 0.5, 'ci95': [100. * lo, 100. * hi],
          'correct': k, 'n': n}


def summarise(values: torch.Tensor) -> dict:
  """``{'mean', 'sem', 'n'}`` of per-image values (``mean_sem``); infinite values (identical images) give
  ``{'mean': None, 'sem': None, 'n', 'infinite': k}`` since a mean with them is not a number."""
  values = values.detach().cpu().double().reshape(-1)
  infinite = int(torch.isinf(values).sum())
  if infinite:
    return {'mean': None, 'sem': None, 'n': int(values.numel()), 'infinite': infinite}
  return mean_sem(values).to_dict()


# ----------------------------------------------------------------------------------------------
# CLIP


class ClipUnavailable(ValueError):
  """``eval.clip_weights`` is set but cannot be loaded (missing path, library or a bad file)."""


class ClipEmbedder:
  """CLIP image embeddings ``[B, D]`` (float64, CPU; the projected, unnormalised embedding) of images
  ``[B, C, H, W]`` in ``[0, 1]`` (grey repeated to 3 channels, bicubic resize to the model's input size,
  CLIP's normalisation). ``path``: a transformers ``CLIPModel`` folder (``config.json`` inside) or an
  open_clip checkpoint file, whose architecture is ``arch`` (e.g. ``ViT-B-32``)."""

  def __init__(self, path: str, device='cpu', arch: str = 'ViT-B-32'):
    path = os.fspath(path)
    if not os.path.exists(path):
      raise ClipUnavailable(f'eval.clip_weights={path!r} does not exist: give a local transformers CLIPModel folder '
                            'or an open_clip checkpoint file (leave it empty to skip the CLIP metric)')
    self.path, self.device = path, torch.device(device)
    if os.path.isdir(path):
      try:
        from transformers import CLIPModel
      except ImportError:
        raise ClipUnavailable(f'eval.clip_weights={path!r} is a folder, read with transformers, which is not '
                              'installed: pip install transformers') from None
      try:
        model = CLIPModel.from_pretrained(path, local_files_only=True)
      except (OSError, ValueError) as e:
        raise ClipUnavailable(f'cannot load a CLIPModel from {path}: {" ".join(str(e).split())[:300]}') from None
      self.size = int(model.config.vision_config.image_size)
      self.library = 'transformers'
      self._embed = lambda x: _as_tensor(model.get_image_features(pixel_values=x))
    else:
      try:
        import open_clip
      except ImportError:
        raise ClipUnavailable(f'eval.clip_weights={path!r} is a file, read with open_clip, which is not installed: '
                              'pip install open_clip_torch (or give a transformers CLIPModel folder)') from None
      try:
        model = open_clip.create_model(arch, pretrained=path)
      except (OSError, RuntimeError, ValueError, KeyError) as e:
        raise ClipUnavailable(f'cannot load open_clip {arch} from {path}: {" ".join(str(e).split())[:300]}') from None
      size = model.visual.image_size
      self.size = int(size[0] if isinstance(size, (tuple, list)) else size)
      self.library = 'open_clip'
      self._embed = model.encode_image
    self.arch = arch if self.library == 'open_clip' else model.config.vision_config.model_type
    self.model = model.eval().to(self.device)

  @torch.no_grad()
  def __call__(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    out = []
    mean = torch.tensor(CLIP_MEAN, device=self.device).reshape(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=self.device).reshape(1, 3, 1, 1)
    for chunk in images.split(int(batch_size)):
      x = chunk.to(self.device, torch.float32).clamp(0., 1.)
      if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
      x = F.interpolate(x, size=(self.size, self.size), mode='bicubic', align_corners=False).clamp(0., 1.)
      out.append(self._embed((x - mean) / std).double().cpu())
    return torch.cat(out)

  def describe(self) -> dict:
    return {'path': self.path, 'library': self.library, 'arch': self.arch, 'input_size': self.size}


def _as_tensor(out):
  """transformers may return a model output object instead of the embedding tensor."""
  if torch.is_tensor(out):
    return out
  for name in ('image_embeds', 'pooler_output'):
    value = getattr(out, name, None)
    if torch.is_tensor(value):
      return value
  raise TypeError(f'unexpected CLIP output {type(out).__name__}')


def clip_distance(embedder: ClipEmbedder, restored: torch.Tensor, original: torch.Tensor):
  """``(distance [B], cosine [B])``: the L2 distance and cosine similarity of the CLIP image embeddings of
  each restored image and its original (float64)."""
  a, b = embedder(restored), embedder(original)
  return torch.linalg.vector_norm(a - b, dim=1), F.cosine_similarity(a, b, dim=1)
