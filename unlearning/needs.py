"""What methods need besides the data, built once per run: a frozen reference model, a frozen copy of the
starting (pretrained) model, and files cached in the work directory with their SHA-256."""
import contextlib
import os

import torch
from absl import logging

import runtime
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
  """A frozen copy of ``model`` (eval mode, no gradients): the anchor that training moves away from. It
  remembers which parameters were trainable (``trainable`` and ``differentiable`` use them)."""
  import copy
  anchor = copy.deepcopy(model).eval()
  anchor.trainable_names = [n for n, p in model.named_parameters() if p.requires_grad]
  for p in anchor.parameters():
    p.requires_grad_(False)
  return anchor


@contextlib.contextmanager
def differentiable(model):
  """Within the block, the trainable parameters of a frozen copy take gradients again."""
  params = [p for _, p in trainable(model)]
  for p in params:
    p.requires_grad_(True)
  try:
    with torch.enable_grad():
      yield model
  finally:
    for p in params:
      p.requires_grad_(False)


ANCHOR_FILE = 'anchor.pth'


def anchor_model(ctx):
  """A frozen copy of the weights this run started from: the pretrained model's raw weights when
  fine-tuning (``training.pretrained``), else the run's initial weights. A fresh run that needs one writes
  it to ``W/anchor.pth`` so that a resume uses the same anchor; a resume reads it back (or, fine-tuning,
  the pretrained file again)."""
  path = os.path.join(ctx.workdir, ANCHOR_FILE) if ctx.workdir else None
  have_file = path is not None and os.path.isfile(path)
  anchor = frozen_copy(ctx.model)
  if ctx.start == 'resumed':
    pretrained = ctx.config.training.pretrained
    if have_file:
      utils.load_model_state(anchor, utils.load_file(path)['model'], path)
    elif pretrained and os.path.isfile(pretrained):
      loaded = train_state.load_frozen_model(ctx.config, pretrained, ctx.device, weights='raw')
      anchor.load_state_dict(loaded.state_dict())
    else:
      raise NeedError(f'cannot resume: this method needs the weights the run started from ({path}), and they are '
                      'gone; start the run again in a new work directory')
    return anchor
  if ctx.start == 'fresh' and path is not None and ctx.train and runtime.is_main_process():
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
  """Writes ``{'metadata', 'tensors', 'sha256'}`` atomically (no-op without a path, and on the processes of a
  torchrun group other than rank 0, which compute the same tensors); returns the digest."""
  if not path or not runtime.is_main_process():
    return None
  obj = _with_digest({'metadata': metadata, 'tensors': {k: v.detach().cpu() for k, v in tensors.items()}})
  utils.atomic_torch_save(obj, path)
  return obj['sha256']


def weights_digest(model):
  """SHA-256 of a model's state dict: identifies the weights a cached quantity was computed from."""
  return utils.tensors_sha256({k: v for k, v in model.state_dict().items()})


def trainable(model):
  """``(name, parameter)`` of the trainable parameters, in ``named_parameters`` order (for a ``frozen_copy``:
  those of the model it was copied from)."""
  names = getattr(model, 'trainable_names', None)
  if names is None:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
  params = dict(model.named_parameters())
  return [(n, params[n]) for n in names]


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


POOL_FILE = 'generated_pool.pt'


def generated_pool(ctx, model, n):
  """``n`` samples of ``model`` (the frozen starting model) with the run's sampler, in data space ([0, 1] for
  images), each starting from noise seeded by its index; cached in ``W/generated_pool.pt`` (keyed by the
  weights' digest, n, the sampler settings, the batch size — each batch's sampler noise is seeded by its start —
  and the seed). ``[n, ...]`` on the CPU."""
  import datasets
  import sampling
  config, sde = ctx.config, ctx.sde
  s = config.sampling
  meta = {'weights': weights_digest(model), 'n': int(n), 'seed': int(config.seed),
          'batch_size': int(config.eval.batch_size),
          'sampler': [s.method, s.predictor, s.corrector, float(s.snr), int(s.n_steps_each), float(s.ode_rtol),
                      int(config.model.num_scales)]}
  path = os.path.join(ctx.workdir, POOL_FILE) if ctx.workdir else None
  cached = load_cache(path, meta)
  if cached is not None:
    return cached['samples']
  shape = tuple(ctx.data.shape)
  inverse = datasets.get_data_inverse_scaler(config)
  eps = config.sampling.eps if config.sampling.eps > 0 else sde.default_sampling_eps
  bs = max(1, int(config.eval.batch_size))
  out = []
  logging.info('drawing %d samples from the starting model (cached in %s)', n, path)
  for start in range(0, int(n), bs):
    size = min(bs, int(n) - start)
    z = torch.stack([sde.prior_sampling(shape, generator=torch.Generator().manual_seed(
      datasets.derive_seed(config.seed, 'pool', start + i))) for i in range(size)]).to(ctx.device)
    fn = sampling.get_sampling_fn(config, sde, (size,) + shape, inverse, eps)
    gen = torch.Generator(device=ctx.device).manual_seed(datasets.derive_seed(config.seed, 'pool-sampler', start))
    with torch.no_grad():
      x, _ = fn(model, z=z, generator=gen)
    out.append(x.detach().cpu())
  samples = torch.cat(out)
  if not torch.isfinite(samples).all():
    raise NeedError('the starting model draws samples that are not finite: it cannot be unlearned from')
  save_cache(path, meta, {'samples': samples})
  return samples


def step_batches(items, batch_size, seed, device):
  """``batches(step) -> x``: a batch of ``batch_size`` rows of ``items`` [N, ...] drawn with a generator seeded
  from ``(seed, step)`` (with replacement), so that a resumed run draws what an uninterrupted one would."""
  import datasets
  n = len(items)
  if n == 0:
    raise NeedError('there are no items to draw batches from')

  def batches(step):
    gen = torch.Generator().manual_seed(datasets.derive_seed(seed, int(step)))
    return items[torch.randint(0, n, (min(batch_size, n),), generator=gen)].to(device)

  return batches
