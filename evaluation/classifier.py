"""The classifier behind the Unlearning Ratio: trained once per data set, recorded, and checked on load.

Training (``train_classifier``) uses the whole training split D (every class, ``data.train.full``) and
reports the accuracy on the whole test split. Architectures (``default_architecture``):

  * ``SmallCNN`` for images of at most 28 px (MNIST-type, 8×8 digits): five 3×3 conv-BN-ReLU layers
    (width w, w, 2w, 2w, 4w; two 2×2 max-pools), global average pooling, dropout, linear;
  * ``SmallResNet`` for larger images (32 px, 64 px): a 3×3 stem (stride 2 from 64 px on) and three
    stages of two pre-activation-free basic residual blocks (w, 2w, 4w; stride 2 between stages).

Both take ``x [B, C, H, W]`` in ``[0, 1]`` (clamped; mapped to ``[-1, 1]`` inside). Class data
(``label_type == 'class'``) get one logit per class and cross-entropy; attribute data (CelebA,
``'attribute'``) one logit per attribute and binary cross-entropy.

File (``utils.atomic_torch_save``; readable with ``torch.load(weights_only=True)``)::

  {'state_dict': {name: tensor}, 'metadata': {'dataset', 'label_names', 'label_type', 'image_size',
   'num_channels', 'architecture': {'name', 'kwargs'}, 'test_accuracy', 'per_class_accuracy', 'seed',
   'sha256', ...}}

``sha256`` (see ``state_dict_sha256``) is the SHA-256 of the raw bytes of the state-dict tensors,
concatenated in lexicographic key order. ``load_classifier`` rebuilds the network from the metadata,
recomputes that digest and refuses (``ClassifierError``, a ``ValueError``) a missing, unreadable or
tampered file, or one made for another data set, label set, image size or channel count.

The 2-D toy (``GMM2D``) needs no training: ``GMMClassifier`` assigns each point the mixture component
with the highest posterior under the true density (the Bayes classifier). ``get_classifier`` returns
the right one for a config.
"""
import hashlib
import math
import os
import time
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from absl import logging
from tqdm import tqdm

import datasets
import utils
from configs import default_configs

#: the file name ``--mode train_classifier`` writes in the work directory.
CLASSIFIER_FILENAME = 'classifier.pth'
FORMAT_VERSION = 1
#: images of at most this many pixels a side get the ``SmallCNN``; larger ones the ``SmallResNet``.
CNN_MAX_SIZE = 28
#: data sets trained without random horizontal flips (a mirrored digit is no digit).
FLIP_FREE = ('MNIST', 'MNIST5K', 'DIGITS8X8')

REQUIRED_METADATA = ('dataset', 'label_names', 'label_type', 'image_size', 'num_channels', 'architecture',
                     'sha256')


class ClassifierError(ValueError):
  """A classifier file is missing, unreadable, tampered with, or made for other data."""


def how_to_make(path: str = '') -> str:
  """The command that writes a classifier file (for error messages)."""
  if path and os.path.basename(path) == CLASSIFIER_FILENAME:
    workdir = os.path.dirname(path) or '.'
    return (f'make one with: python main.py --config <the same config file> --workdir {workdir} '
            f'--mode train_classifier (it writes {path})')
  return ('make one with: python main.py --config <the same config file> --workdir <workdir> --mode '
          f'train_classifier (it writes <workdir>/{CLASSIFIER_FILENAME}), then pass '
          f'--config.eval.classifier=<workdir>/{CLASSIFIER_FILENAME}')


# ----------------------------------------------------------------------------------------------
# Architectures


def _conv_bn_relu(cin: int, cout: int, stride: int = 1):
  return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
          nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
  """A VGG-style CNN for small grey or colour images (any size >= 1 px): ``[B, C, H, W]`` in ``[0, 1]``
  -> logits ``[B, num_outputs]``. About 0.14 M parameters at ``width = 32``."""

  def __init__(self, num_channels: int, num_outputs: int, width: int = 32, dropout: float = 0.2):
    super().__init__()
    w = int(width)
    pool = lambda: nn.MaxPool2d(2, ceil_mode=True)  # noqa: E731 (ceil: 1-px maps stay 1 px)
    self.features = nn.Sequential(
      *_conv_bn_relu(num_channels, w), *_conv_bn_relu(w, w), pool(),
      *_conv_bn_relu(w, 2 * w), *_conv_bn_relu(2 * w, 2 * w), pool(),
      *_conv_bn_relu(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * w, num_outputs))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.head(self.features(x * 2. - 1.))


class BasicBlock(nn.Module):
  """Two 3×3 conv-BN layers with a (1×1 conv-BN when the shape changes) shortcut, then ReLU."""

  def __init__(self, cin: int, cout: int, stride: int = 1):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.shortcut = nn.Identity()
    if stride != 1 or cin != cout:
      self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = F.relu(self.bn1(self.conv1(x)))
    return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class SmallResNet(nn.Module):
  """A CIFAR-style ResNet (3 stages × ``blocks_per_stage`` basic blocks, widths w, 2w, 4w):
  ``[B, C, H, W]`` in ``[0, 1]`` -> logits ``[B, num_outputs]``. ``stem_stride = 2`` halves 64-px inputs
  first. About 0.70 M parameters at ``width = 32`` and 2 blocks per stage."""

  def __init__(self, num_channels: int, num_outputs: int, width: int = 32, blocks_per_stage: int = 2,
               stem_stride: int = 1, dropout: float = 0.):
    super().__init__()
    w = int(width)
    layers = _conv_bn_relu(num_channels, w, stride=int(stem_stride))
    cin = w
    for stage, cout in enumerate((w, 2 * w, 4 * w)):
      for b in range(int(blocks_per_stage)):
        layers.append(BasicBlock(cin, cout, stride=2 if (stage > 0 and b == 0) else 1))
        cin = cout
    self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(cin, num_outputs))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.head(self.features(x * 2. - 1.))


ARCHITECTURES = {'SmallCNN': SmallCNN, 'SmallResNet': SmallResNet}


def default_architecture(image_size: int, num_channels: int, num_outputs: int) -> dict:
  """``{'name', 'kwargs'}`` of the classifier for images ``[num_channels, image_size, image_size]``."""
  kwargs = {'num_channels': int(num_channels), 'num_outputs': int(num_outputs), 'width': 32}
  if int(image_size) <= CNN_MAX_SIZE:
    return {'name': 'SmallCNN', 'kwargs': kwargs}
  kwargs.update(blocks_per_stage=2, stem_stride=2 if int(image_size) >= 64 else 1)
  return {'name': 'SmallResNet', 'kwargs': kwargs}


def build_architecture(spec: dict) -> nn.Module:
  """The network of ``spec = {'name', 'kwargs'}`` (freshly initialised from the global torch RNG)."""
  name = spec.get('name') if isinstance(spec, dict) else None
  if name not in ARCHITECTURES:
    raise ClassifierError(f'unknown classifier architecture {name!r}; known: {", ".join(ARCHITECTURES)}')
  try:
    return ARCHITECTURES[name](**dict(spec.get('kwargs', {})))
  except TypeError as e:
    raise ClassifierError(f'cannot build the classifier architecture {spec}: {e}') from None


# ----------------------------------------------------------------------------------------------
# The weights' digest


def state_dict_sha256(state_dict: Dict[str, torch.Tensor]) -> str:
  """Hex SHA-256 of the state dict's tensors: for each key in sorted (lexicographic) order, the raw
  bytes of the tensor (CPU, contiguous, its own dtype, native = little-endian byte order), concatenated.
  Key names and shapes are not hashed (the architecture in the metadata fixes them)."""
  h = hashlib.sha256()
  for key in sorted(state_dict):
    t = state_dict[key]
    if not torch.is_tensor(t):
      raise ClassifierError(f'state-dict entry {key!r} is a {type(t).__name__}, not a tensor')
    h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
  return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Classifiers at evaluation time


class _ClassifierBase:
  """Common interface: ``predict_proba(x) -> [B, K]``, ``predict(x) -> labels``, ``describe()``.

  ``label_type == 'class'``: ``predict`` gives int64 ``[B]`` classes in ``0..K-1``; ``'attribute'``:
  bool ``[B, A]`` (attribute present). Outputs lie on ``x``'s device.
  """
  label_names: Tuple[str, ...] = ()
  label_type: str = 'class'
  metadata: dict = {}
  path: Optional[str] = None

  @property
  def num_labels(self) -> int:
    return len(self.label_names)

  @property
  def sha256(self) -> Optional[str]:
    return self.metadata.get('sha256')

  @property
  def test_accuracy(self) -> Optional[float]:
    return self.metadata.get('test_accuracy')

  def predict_proba(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    raise NotImplementedError

  def predict(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    p = self.predict_proba(x, batch_size)
    if self.label_type == 'attribute':
      return p > 0.5
    return p.argmax(dim=1)

  def __call__(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    return self.predict(x, batch_size)

  def describe(self) -> dict:
    """``{'path', 'sha256', 'test_accuracy'}``: the ``classifier`` entry of results.json."""
    return {'path': self.path, 'sha256': self.sha256, 'test_accuracy': self.test_accuracy}


class Classifier(_ClassifierBase):
  """A trained network with its metadata. ``x``: ``[B, C, H, W]`` in ``[0, 1]`` (clamped), any device;
  evaluated in chunks of ``batch_size`` on the classifier's device."""

  def __init__(self, net: nn.Module, metadata: dict, path: Optional[str] = None):
    self.net = net.eval()
    self.metadata = dict(metadata)
    self.path = path
    self.label_names = tuple(metadata['label_names'])
    self.label_type = metadata['label_type']
    self.input_shape = (int(metadata['num_channels']), int(metadata['image_size']), int(metadata['image_size']))

  @property
  def device(self) -> torch.device:
    return next(self.net.parameters()).device

  @torch.no_grad()
  def logits(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits ``[B, K]`` (float32, on ``x``'s device)."""
    if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
      raise ValueError(f'the classifier takes images [B, {", ".join(map(str, self.input_shape))}], '
                       f'got shape {tuple(x.shape)}')
    out = [self.net(chunk.to(self.device, torch.float32).clamp(0., 1.)).to(x.device)
           for chunk in x.split(int(batch_size))]
    return torch.cat(out) if out else x.new_zeros((0, self.num_labels))

  def predict_proba(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Class probabilities (softmax) ``[B, K]``, or attribute probabilities (sigmoid) ``[B, A]``."""
    z = self.logits(x, batch_size)
    return torch.sigmoid(z) if self.label_type == 'attribute' else torch.softmax(z, dim=1)


class GMMClassifier(_ClassifierBase):
  """The exact (Bayes) classifier of a Gaussian mixture: ``x [B, D]`` -> the component with the highest
  posterior ``p(k | x)`` under ``density`` (``datasets.GaussianMixture``)."""

  def __init__(self, density, dataset: str = 'GMM2D', label_names: Optional[Sequence[str]] = None):
    self.density = density
    self.label_names = tuple(label_names if label_names is not None else density.names)
    if len(self.label_names) != len(density.weights):
      raise ValueError(f'{len(self.label_names)} label names for {len(density.weights)} components')
    self.label_type = 'class'
    self.path = None
    self.metadata = {'dataset': dataset, 'label_names': list(self.label_names), 'label_type': 'class',
                     'architecture': {'name': 'exact-gmm-posterior', 'kwargs': {}}, 'sha256': None,
                     'test_accuracy': None}

  @torch.no_grad()
  def predict_proba(self, x: torch.Tensor, batch_size: int = 0) -> torch.Tensor:
    """Posterior ``p(k | x)`` ``[B, K]`` (float, on ``x``'s device)."""
    if x.ndim != 2 or x.shape[1] != self.density.dim:
      raise ValueError(f'the mixture classifier takes points [B, {self.density.dim}], got {tuple(x.shape)}')
    return self.density.posterior(x)

  def with_test_accuracy(self, data) -> 'GMMClassifier':
    """Records the Bayes accuracy on ``data.test.full`` (for the report); returns self."""
    x, y = _all_items(data.test.full)
    acc, per = _accuracy(self.predict(x), y, self.label_names, 'class')
    self.metadata.update(test_accuracy=acc, per_class_accuracy=per)
    return self


def classify(classifier: _ClassifierBase, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
  """Labels of ``x`` (images ``[B, C, H, W]`` in ``[0, 1]`` or points ``[B, D]``): int64 ``[B]`` classes
  or bool ``[B, A]`` attributes, on ``x``'s device."""
  return classifier.predict(x, batch_size)


# ----------------------------------------------------------------------------------------------
# Training


def _all_items(dataset) -> Tuple[torch.Tensor, torch.Tensor]:
  """Every ``(x, y)`` of a (small, in-memory) data set stacked: ``x [N, ...]``, ``y [N]`` / ``[N, A]``."""
  it = datasets.get_data_iterator(dataset, max(len(dataset), 1), 0, shuffle=False, drop_last=False,
                                  infinite=False)
  xs, ys = zip(*it) if len(dataset) else ((torch.zeros(0),), (torch.zeros(0, dtype=torch.long),))
  return torch.cat(xs), torch.cat(ys)


def random_translate(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
  """Shifts each image of ``x [B, C, H, W]`` by an integer offset in ``[-max_shift, max_shift]`` per axis
  (drawn from ``generator``), filling with zeros; returns a new tensor."""
  if max_shift <= 0:
    return x
  b, _, h, w = x.shape
  s = int(max_shift)
  shifts = torch.randint(0, 2 * s + 1, (2, b), generator=generator, device=generator.device).to(x.device)
  padded = F.pad(x, (s, s, s, s))
  rows = shifts[0][:, None] + torch.arange(h, device=x.device)[None]   # [B, H]
  cols = shifts[1][:, None] + torch.arange(w, device=x.device)[None]   # [B, W]
  bidx = torch.arange(b, device=x.device)[:, None, None]
  out = padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
  return out.permute(0, 3, 1, 2).contiguous()


def default_training_settings(dataset: str, num_train: int, image_size: int, num_channels: int = 1) -> dict:
  """Epochs, batch size, learning rate and augmentation used when not given.

  Batch 128. Grey data: at least 1,000 optimiser steps and 5 epochs (MNIST5K: 33 epochs of 31 steps;
  Fashion-MNIST and MNIST: 5 epochs of 468 steps). Colour data: at least 15,000 steps and 4 epochs, at
  most 100 epochs (CIFAR-10: 39 epochs). Augmentation: random shifts of ``image_size / 14`` px
  (2 px at 28 px), plus horizontal flips for all but digits (``FLIP_FREE``). See docs/evaluation.md
  for the accuracies reached.
  """
  batch_size = 128
  steps_per_epoch = max(int(num_train) // batch_size, 1)
  min_steps, min_epochs = (1000, 5) if int(num_channels) == 1 else (15000, 4)
  epochs = int(min(max(math.ceil(min_steps / steps_per_epoch), min_epochs), 100))
  return {'epochs': epochs, 'batch_size': batch_size, 'lr': 2e-3, 'weight_decay': 5e-4,
          'label_smoothing': 0.1, 'max_shift': max(1, round(int(image_size) / 14)),
          'random_flip': dataset not in FLIP_FREE}


def _accuracy(pred: torch.Tensor, y: torch.Tensor, names: Sequence[str], label_type: str):
  """Overall accuracy and per-label accuracy (class recall, or per-attribute accuracy)."""
  if label_type == 'attribute':
    correct = (pred.bool() == y.bool()).double()
    per = {n: float(correct[:, i].mean()) for i, n in enumerate(names)}
    return float(correct.mean()), per
  correct = (pred == y).double()
  per = {}
  for i, n in enumerate(names):
    sel = y == i
    per[n] = float(correct[sel].mean()) if sel.any() else None
  return float(correct.mean()), per


@torch.no_grad()
def evaluate_accuracy(net: nn.Module, dataset, names: Sequence[str], label_type: str, device,
                      batch_size: int = 500) -> Tuple[float, dict]:
  """Accuracy of ``net`` on ``dataset`` (in stored order): ``(overall, {label name: accuracy})``."""
  net.eval()
  preds, ys = [], []
  for x, y in datasets.get_data_iterator(dataset, batch_size, 0, shuffle=False, drop_last=False, infinite=False):
    z = net(x.to(device).clamp(0., 1.)).cpu()
    preds.append(z > 0 if label_type == 'attribute' else z.argmax(1))
    ys.append(y)
  if not preds:
    raise ClassifierError('the test split is empty: cannot measure the classifier accuracy')
  return _accuracy(torch.cat(preds), torch.cat(ys), names, label_type)


def fit_classifier(data, seed: int, device='cpu', progress: bool = True, architecture: Optional[dict] = None,
                   **settings) -> Tuple[nn.Module, dict]:
  """Trains a classifier on ``data.train.full`` (a ``datasets.DataBundle`` of images).

  ``settings`` override ``default_training_settings`` (epochs, batch_size, lr, weight_decay,
  label_smoothing, max_shift, random_flip). AdamW with a 5 % linear warm-up and cosine decay; every
  random choice (initialisation, batch order, augmentation, dropout) follows ``seed``, and the global
  RNG state is restored afterwards. Returns the network (eval mode, on ``device``) and its metadata
  (everything but ``sha256``).
  """
  if not data.is_image:
    raise ClassifierError(f'{data.name} is not an image data set: use GMMClassifier (get_classifier) instead')
  device = torch.device(device)
  num_channels, image_size = int(data.shape[0]), int(data.shape[-1])
  n_train = len(data.train.full)
  opts = default_training_settings(data.name, n_train, image_size, num_channels)
  unknown = set(settings) - set(opts)
  if unknown:
    raise ValueError(f'unknown classifier training settings {sorted(unknown)}; known: {sorted(opts)}')
  opts.update({k: v for k, v in settings.items() if v is not None})
  arch = architecture or default_architecture(image_size, num_channels, data.num_classes)
  bs = int(opts['batch_size'])
  steps_per_epoch = n_train // bs
  if steps_per_epoch == 0:
    raise ClassifierError(f'{n_train} training images are fewer than one batch of {bs}')
  total = int(opts['epochs']) * steps_per_epoch
  warmup = max(1, total // 20)
  attribute = data.label_type == 'attribute'

  fork_devices = [device] if device.type == 'cuda' else []
  t0 = time.time()
  with torch.random.fork_rng(devices=fork_devices):
    torch.manual_seed(datasets.derive_seed(seed, 'classifier-init'))
    if device.type == 'cuda':
      torch.cuda.manual_seed(datasets.derive_seed(seed, 'classifier-init'))
    net = build_architecture(arch).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=float(opts['lr']), weight_decay=float(opts['weight_decay']))
    def lr_factor(s):  # linear warm-up, then cosine decay to 0
      if s < warmup:
        return (s + 1) / warmup
      return 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(total - warmup, 1)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    batches = datasets.get_data_iterator(data.train.full, bs, datasets.derive_seed(seed, 'classifier-batches'),
                                         shuffle=True, drop_last=True, infinite=True, num_workers=data.num_workers,
                                         random_flip=bool(opts['random_flip']))
    shift_gen = torch.Generator().manual_seed(datasets.derive_seed(seed, 'classifier-shifts'))
    net.train()
    bar = tqdm(range(total), disable=not progress, desc=f'classifier {data.name}', dynamic_ncols=True)
    running = None
    for step in bar:
      x, y = next(batches)
      x = random_translate(x, int(opts['max_shift']), shift_gen).to(device)
      y = y.to(device)
      z = net(x)
      if attribute:
        loss = F.binary_cross_entropy_with_logits(z, y.float())
      else:
        loss = F.cross_entropy(z, y, label_smoothing=float(opts['label_smoothing']))
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      sched.step()
      running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
      if not math.isfinite(running):
        raise ClassifierError(f'the classifier loss became {running} at step {step}; lower the learning rate')
      if step % 50 == 0 or step == total - 1:
        bar.set_postfix(loss=f'{running:.4f}')
  train_seconds = time.time() - t0
  acc, per = evaluate_accuracy(net, data.test.full, data.class_names, data.label_type, device)
  logging.info('classifier for %s: %d steps in %.0f s, test accuracy %.4f', data.name, total, train_seconds, acc)
  metadata = {
    'format_version': FORMAT_VERSION,
    'dataset': data.name,
    'label_names': list(data.class_names),
    'label_type': data.label_type,
    'image_size': image_size,
    'num_channels': num_channels,
    'architecture': {'name': arch['name'], 'kwargs': dict(arch['kwargs'])},
    'test_accuracy': acc,
    'per_class_accuracy': per,
    'num_test': len(data.test.full),
    'num_train': n_train,
    'seed': int(seed),
    'training': {k: (float(v) if isinstance(v, float) else v) for k, v in opts.items()},
    'steps': total,
    'train_seconds': round(train_seconds, 1),
    'device': str(device),
    'source': data.source,
  }
  return net.eval(), metadata


def _resolve_device(name) -> torch.device:
  if name in (None, '', 'auto'):
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  return torch.device(name)


def _config_for_all_classes(config):
  """The config itself, or (when no forget set is given) a copy forgetting class 0: the classifier
  uses D = ``train.full`` only, which does not depend on the forget set."""
  if str(config.unlearn.forget).strip():
    return config
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.unlearn.forget = '0'
  return config


def save_classifier(net: nn.Module, metadata: dict, out_path: str) -> dict:
  """Writes ``{'state_dict', 'metadata'}`` atomically, with ``metadata['sha256']`` filled in; returns
  the metadata written."""
  state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
  metadata = dict(metadata, sha256=state_dict_sha256(state))
  utils.atomic_torch_save({'state_dict': state, 'metadata': metadata}, out_path)
  return metadata


def train_classifier(config, out_path: str, progress: bool = True, device=None, **settings) -> dict:
  """Trains the Unlearning-Ratio classifier of ``config.data`` on all classes and saves it to
  ``out_path``; returns its metadata (with test accuracy, per-class accuracy and ``sha256``).

  Seeded from ``config.seed``; ``settings`` (or the optional config keys ``eval.classifier_epochs``,
  ``eval.classifier_batch_size``, ``eval.classifier_lr``, 0 = default) override
  ``default_training_settings``; ``device`` defaults to ``config.device``. Raises ``ClassifierError``
  for the 2-D toy (its classifier is exact).
  """
  config = default_configs.with_defaults(config)
  data = datasets.get_dataset(_config_for_all_classes(config), evaluation=True)
  if not data.is_image:
    raise ClassifierError(f'{data.name} needs no trained classifier: its Unlearning Ratio uses the exact '
                          'mixture posterior (evaluation.classifier.GMMClassifier)')
  device = _resolve_device(device if device is not None else config.get('device', 'auto'))
  for key in ('epochs', 'batch_size', 'lr'):  # optional config keys eval.classifier_<key> (0 = default)
    value = config.eval.get(f'classifier_{key}', 0)
    if value and settings.get(key) is None:
      settings[key] = value
  net, metadata = fit_classifier(data, int(config.seed), device=device, progress=progress, **settings)
  metadata = save_classifier(net, metadata, out_path)
  logging.info('classifier written to %s (sha256 %s)', out_path, metadata['sha256'])
  return metadata


# ----------------------------------------------------------------------------------------------
# Loading


def read_classifier_file(path: str) -> Tuple[dict, dict]:
  """``(state_dict, metadata)`` of a classifier file, read safely and integrity-checked (sha256)."""
  path = os.fspath(path) if path else ''
  if not path:
    raise ClassifierError('no classifier file given (config.eval.classifier is empty); ' + how_to_make())
  if not os.path.isfile(path):
    raise ClassifierError(f'no classifier file at {path}; ' + how_to_make(path))
  try:
    obj = utils.load_file(path)
  except utils.CheckpointError as e:
    raise ClassifierError(f'{e}; ' + how_to_make(path)) from None
  if not isinstance(obj.get('state_dict'), dict) or not isinstance(obj.get('metadata'), dict):
    raise ClassifierError(f'{path} is not a classifier file: it lacks state_dict/metadata (keys: {sorted(obj)})')
  state, meta = obj['state_dict'], obj['metadata']
  missing = [k for k in REQUIRED_METADATA if k not in meta]
  if missing:
    raise ClassifierError(f'{path}: the classifier metadata lacks {missing}')
  digest = state_dict_sha256(state)
  if digest != meta['sha256']:
    raise ClassifierError(f'{path}: the weights do not match their recorded sha256 (file {digest[:16]}…, '
                          f'recorded {str(meta["sha256"])[:16]}…): the file was modified or damaged; '
                          + how_to_make(path))
  return state, meta


def check_compatible(metadata: dict, data, path: str = 'classifier') -> None:
  """Raises ``ClassifierError`` unless the classifier was made for ``data`` (a ``DataBundle``): same data
  set, label names (in order), label type, image size and channel count."""
  problems = []
  if metadata['dataset'] != data.name:
    problems.append(f"it was trained on {metadata['dataset']}, but the config's data set is {data.name}")
  if list(metadata['label_names']) != list(data.class_names):
    problems.append(f"its labels {list(metadata['label_names'])} differ from the data's {list(data.class_names)}")
  if metadata['label_type'] != data.label_type:
    problems.append(f"its label type {metadata['label_type']!r} differs from the data's {data.label_type!r}")
  if data.is_image:
    c, s = int(data.shape[0]), int(data.shape[-1])
    if (int(metadata['num_channels']), int(metadata['image_size'])) != (c, s):
      problems.append(f"it takes {metadata['num_channels']}×{metadata['image_size']}×{metadata['image_size']} "
                      f'images, the data are {c}×{s}×{s}')
  if problems:
    raise ClassifierError(f'{path} cannot classify this data: ' + '; '.join(problems) + '. Train one for this '
                          'config: ' + how_to_make())


def load_classifier(path: str, config=None, device='cpu', data=None) -> Classifier:
  """Loads a classifier file for ``config``'s data (``data``: its ``DataBundle`` if already loaded,
  else ``datasets.get_dataset(config)`` is called) onto ``device``.

  Refuses with ``ClassifierError`` (a ``ValueError``): no file (the message gives the command that
  makes one), an unreadable or unsafe file, weights that do not match their sha256, or a file made for
  another data set / label set / image size. ``config=None`` and ``data=None`` skip the data check.
  """
  state, meta = read_classifier_file(path)
  if data is None and config is not None:
    data = datasets.get_dataset(_config_for_all_classes(config), evaluation=True)
  if data is not None:
    check_compatible(meta, data, path)
  net = build_architecture(meta['architecture'])
  try:
    utils.load_model_state(net, state, path)
  except utils.CheckpointError as e:
    raise ClassifierError(str(e)) from None
  return Classifier(net.to(device).eval(), meta, path=os.fspath(path))


def get_classifier(config, device='cpu', data=None, path: Optional[str] = None) -> _ClassifierBase:
  """The Unlearning-Ratio classifier of ``config``: the exact ``GMMClassifier`` for the 2-D toy
  (with its Bayes test accuracy), else the file ``path`` (default ``config.eval.classifier``) via
  ``load_classifier``."""
  config = default_configs.with_defaults(config)
  if data is None:
    data = datasets.get_dataset(_config_for_all_classes(config), evaluation=True)
  if data.density is not None:
    given = path if path is not None else config.eval.classifier
    if given:
      logging.warning('eval.classifier=%s is not used: %s is drawn from a known density, so its exact (Bayes) '
                      'classifier gives the Unlearning Ratio', given, data.name)
    return GMMClassifier(data.density, data.name, data.class_names).with_test_accuracy(data)
  return load_classifier(path if path is not None else config.eval.classifier, config, device, data)
