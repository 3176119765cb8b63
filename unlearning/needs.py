"""What methods need besides the data, built once per run: a frozen reference model, a frozen copy of the
starting (pretrained) model, and files cached in the work directory with their SHA-256."""
import os

import torch
from absl import logging

import train_state
import utils


class NeedError(ValueError):
  """Something a method needs is missing or does not fit the run."""


def load_reference(config, device):
  """The frozen reference network of ``config.unlearn.reference`` (EMA weights), or None when unset."""
  path = config.unlearn.reference
  if not path:
    return None
  if not os.path.isfile(path):
    raise NeedError(f'no reference checkpoint at config.unlearn.reference={path}')
  return train_state.load_frozen_model(config, path, device, weights='ema')


def frozen_copy(model):
  """A frozen copy of ``model`` (eval mode, no gradients): the anchor that training moves away from."""
  import copy
  anchor = copy.deepcopy(model).eval()
  for p in anchor.parameters():
    p.requires_grad_(False)
  return anchor


ANCHOR_FILE = 'anchor.pth'


def anchor_model(ctx):
  """A frozen copy of the weights this run started from: the pretrained model's raw weights when
  fine-tuning (``training.pretrained``), else the run's initial weights. A fresh run that needs one writes
  it to ``W/anchor.pth`` so that a resume uses the same anchor; a resume reads it back."""
  path = os.path.join(ctx.workdir, ANCHOR_FILE) if ctx.workdir else None
  if ctx.start == 'resumed':
    if ctx.config.training.pretrained and os.path.isfile(ctx.config.training.pretrained):
      return train_state.load_frozen_model(ctx.config, ctx.config.training.pretrained, ctx.device, weights='raw')
    if path is None or not os.path.isfile(path):
      raise NeedError(f'cannot resume: this method needs the weights the run started from ({path}), and they are '
                      'gone; start the run again in a new work directory')
    anchor = frozen_copy(ctx.model)
    saved = utils.load_file(path)
    utils.load_model_state(anchor, saved['model'], path)
    return anchor
  anchor = frozen_copy(ctx.model)
  if ctx.start == 'fresh' and path is not None and ctx.train:
    utils.atomic_torch_save(_with_digest({'model': {k: v.detach().cpu() for k, v in anchor.state_dict().items()}}),
                            path)
    logging.info('the starting weights are kept in %s (the anchor of this method)', path)
  return anchor


def _with_digest(obj):
  obj = dict(obj)
  obj['sha256'] = utils.tensors_sha256(obj)
  return obj


def load_cache(path, metadata):
  """The tensors cached at ``path`` when the file exists, is intact and was made with exactly ``metadata``
  (a dict of plain values); else None (the caller recomputes and ``save_cache`` overwrites it)."""
  if not path or not os.path.isfile(path):
    return None
  try:
    obj = utils.load_file(path)
  except utils.CheckpointError as e:
    logging.warning('ignoring the cache %s (%s): it is computed again', path, e)
    return None
  if obj.get('metadata') != metadata:
    logging.info('the cache %s was made for another setting: it is computed again', path)
    return None
  return obj.get('tensors')


def save_cache(path, metadata, tensors):
  """Writes ``{'metadata', 'tensors', 'sha256'}`` atomically (no-op without a path); returns the digest."""
  if not path:
    return None
  obj = _with_digest({'metadata': metadata, 'tensors': {k: v.detach().cpu() for k, v in tensors.items()}})
  utils.atomic_torch_save(obj, path)
  return obj['sha256']


def weights_digest(model):
  """SHA-256 of a model's state dict: identifies the weights a cached quantity was computed from."""
  return utils.tensors_sha256({k: v for k, v in model.state_dict().items()})


def trainable(model):
  """``(name, parameter)`` of the trainable parameters, in ``named_parameters`` order."""
  return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def forget_batches(ctx, batch_size, count, seed_name):
  """``count`` scaled D_f training batches of ``batch_size`` on the run's device, drawn with a seed derived
  from ``config.seed`` and ``seed_name`` (the same batches on every start)."""
  import datasets
  data, config = ctx.data, ctx.config
  n = len(data.train.forget)
  if n == 0:
    raise NeedError('this method needs forget data, but D_f is empty')
  it = data.iterator('train', 'forget', min(batch_size, n), datasets.derive_seed(config.seed, seed_name),
                     random_flip=False, uniform_dequantization=False)
  scaler = datasets.get_data_scaler(config)
  return [scaler(next(it)[0].to(ctx.device)) for _ in range(count)]


def generator(ctx, *names):
  """A generator on the run's device seeded from ``config.seed`` and ``names``."""
  import datasets
  return torch.Generator(device=ctx.device).manual_seed(datasets.derive_seed(ctx.config.seed, *names))
