"""Noisy density ratios ℓ(x, t) = log p_f,t(x) − log p_g,t(x) (nats) for ``unlearn.obtuse_form='hole'``.

``p_f,t`` and ``p_g,t`` are the forget and retain data perturbed by the forward SDE to time t. Two sources:

  * ``mixture_log_ratio_fn``: exact, for data drawn from a known Gaussian mixture (the 2-D toy,
    ``unlearn.classifier='exact'``);
  * a noisy-data classifier (``NoisyClassifier``), trained with class-balanced binary cross-entropy on
    D_f (label 1) against D_g (label 0) at times t ~ U[t_min, t_max]: its logit estimates ℓ
    (balanced classes, so no prior term).

Every ``log_ratio_fn(x, t) -> [B]`` is differentiable in ``x``.
"""
import hashlib
import math
import os

import torch
from absl import logging
from tqdm import tqdm

import datasets
import runtime
import sde_lib
import utils
from models import utils as mutils
from models.ema import ExponentialMovingAverage
from tensor_utils import append_dims
from configs import default_configs


def mixture_log_ratio_fn(density, forget_components, sde):
  """Exact ℓ(x, t) for data from ``density`` (a ``datasets.GaussianMixture``) whose ``forget_components``
  form D_f and the rest D_g, perturbed by ``sde`` (x_t = m_t x_0 + σ_t z): ``fn(x [B, D], t [B]) -> [B]``."""
  forget = sorted(int(k) for k in forget_components)
  retain = [k for k in range(len(density.weights)) if k not in forget]
  if not forget or not retain:
    raise ValueError(f'the density ratio needs forget and retain components, got forget={forget}')
  parts = density.restrict(forget), density.restrict(retain)

  def log_prob(mix, x, m, s):
    var = append_dims((m * mix.std) ** 2 + s ** 2, 2)                       # [B, 1]
    means = mix.means.to(x)                                                  # [K, D]
    sq = ((x[:, None, :] - m[:, None, None] * means[None]) ** 2).sum(-1)     # [B, K]
    comp = -0.5 * sq / var - 0.5 * x.shape[1] * torch.log(2 * torch.pi * var)
    return torch.logsumexp(comp + torch.log(mix.weights.to(x)), dim=1)

  def fn(x, t):
    xd = x.to(torch.float64)
    mean, std = sde.marginal_prob(torch.ones_like(xd[:, :1]), t.to(torch.float64))
    m = mean[:, 0]
    return (log_prob(parts[0], xd, m, std) - log_prob(parts[1], xd, m, std)).to(x.dtype)

  return fn


def threshold_for_fraction(log_ratio_fn, x0, sde, t_range, fraction, generator=None, repeats=4, batch_size=1000):
  """ℓ* such that a share ``fraction`` of the forget term's inputs have ℓ(x_t, t) ≥ ℓ*.

  Each of the items ``x0`` [N, ...] (scaled forget data) is drawn ``repeats`` times at t ~ U[t_range]
  (``(t, t)`` for one time), x_t = m_t x0 + σ_t z, with t and z from ``generator``; ℓ* is the
  (1 − fraction)-quantile of ``log_ratio_fn(x_t, t)`` (nats) over those draws. A hole thresholded there
  covers a fixed share of what the forget term sees, whatever the classifier's calibration: a monotone
  change of ℓ moves ℓ* with it. Raises ``ValueError`` unless 0 < fraction < 1 and there are items.
  """
  if not 0. < float(fraction) < 1.:
    raise ValueError(f'unlearn.hole_forget_fraction must lie in (0, 1), got {fraction}')
  if len(x0) == 0:
    raise ValueError('the hole threshold needs forget data, and D_f is empty')
  lo, hi = float(t_range[0]), float(t_range[1])
  values = []
  with torch.no_grad():
    for _ in range(int(repeats)):
      for xb in x0.split(batch_size):
        tb = (lo + (hi - lo) * torch.rand(xb.shape[0], generator=generator, dtype=xb.dtype)).to(xb.device)
        z = torch.randn(xb.shape, generator=generator, dtype=xb.dtype).to(xb.device)
        mean, std = sde.marginal_prob(xb, tb)
        values.append(log_ratio_fn(mean + append_dims(std, xb.ndim) * z, tb).double().cpu())
  return float(torch.quantile(torch.cat(values), 1. - float(fraction)))


# ----------------------------------------------------------------------------------------------------------
# The learned ratio: a time-conditioned classifier of D_f against D_g


FILENAME = 'noisy_classifier.pth'


class NoisyClassifierError(ValueError):
  """A noisy-classifier file is missing, unreadable, tampered with, or made for another setting."""


class NoisyClassifier(torch.nn.Module):
  """``logit(x_t [B, ...], labels [B]) -> [B]``: the score architecture of ``config.model`` (same time
  conditioning, ``sde.model_labels``) with its output averaged over the data dimensions. Trained with
  class-balanced cross-entropy, the logit estimates ℓ = log p_f,t / p_g,t."""

  def __init__(self, config):
    super().__init__()
    self.net = mutils.get_model(config.model.name)(config)

  def forward(self, x, labels):
    out = self.net(x, labels)
    return out.reshape(out.shape[0], -1).mean(dim=1)


def classifier_loss(logits_g, logits_f):
  """Per-sample binary cross-entropy (nats): D_g items (label 0) ``[B_g]`` and D_f items (label 1) ``[B_f]``."""
  bce = torch.nn.functional.binary_cross_entropy_with_logits
  return (bce(logits_g, torch.zeros_like(logits_g), reduction='none'),
          bce(logits_f, torch.ones_like(logits_f), reduction='none'))


def get_log_ratio_fn(classifier, sde):
  """``fn(x, t) -> [B]``: the classifier's logit at ``(x, sde.model_labels(t))``, i.e. ℓ(x, t) in nats."""

  def fn(x, t):
    return classifier(x, sde.model_labels(t, True))

  return fn


def _time_range(config, sde):
  lo, hi = float(config.noisy_classifier.t_min), float(config.noisy_classifier.t_max)
  if not 0. <= lo < hi <= sde.T:
    raise NoisyClassifierError(f'noisy_classifier.t_min/t_max must satisfy 0 <= t_min < t_max <= T, got {lo}, {hi}')
  return max(lo, float(config.training.eps)), hi


def _metadata(config, data, sde, lo, hi):
  return {'dataset': data.name, 'forget_indices': [int(i) for i in data.forget_indices],
          'model': config.model.name, 'sde': type(sde).__name__, 'shape': [int(s) for s in data.shape],
          't_min': lo, 't_max': hi}


def train_noisy_classifier(config, out_path, progress=True):
  """Trains the noisy classifier of D_f against D_g for ``config`` and writes it to ``out_path`` (atomically;
  an existing file is refused). Returns its metadata with the balanced test accuracy and cross-entropy.

  Each step draws a D_g batch (``training.batch_size``) and a D_f batch (``training.batch_size_un``), times
  t ~ U[t_min, t_max] (``config.noisy_classifier``) and x_t from the forward SDE; the loss is the mean
  cross-entropy of each class, summed (balanced); AdamW (``noisy_classifier.weight_decay``) with a cosine
  learning-rate decay to zero; the EMA of the weights (``noisy_classifier.ema_rate``) is saved. Seeded from
  ``config.seed``.
  """
  config = default_configs.with_defaults(config)
  if os.path.exists(out_path):
    raise NoisyClassifierError(f'{out_path} exists already; remove it or choose another --workdir')
  nc = config.noisy_classifier
  device = runtime.resolve_device(config.device)
  runtime.seed_everything(config.seed)
  sde = sde_lib.get_sde(config)
  lo, hi = _time_range(config, sde)
  data = datasets.get_dataset(config)
  if len(data.train.forget) == 0 or len(data.train.retain) == 0:
    raise NoisyClassifierError('the noisy classifier needs forget and retain data (config.unlearn.forget)')
  scaler = datasets.get_data_scaler(config)
  model = NoisyClassifier(config).to(device)
  optimizer = torch.optim.AdamW(model.parameters(), lr=float(nc.lr), weight_decay=float(nc.weight_decay))
  n_iters = int(nc.n_iters)
  schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 0.5 * (1 + math.cos(math.pi * k / n_iters)))
  ema = ExponentialMovingAverage(model.parameters(), decay=float(nc.ema_rate))
  seed = datasets.derive_seed(config.seed, 'noisy-classifier')
  bs = {part: min(int(n), len(data.train.part(part)))
        for part, n in (('retain', config.training.batch_size), ('forget', config.training.batch_size_un))}
  iters = {part: data.iterator('train', part, bs[part], datasets.derive_seed(seed, part)) for part in bs}
  gen = torch.Generator(device=device).manual_seed(seed)

  def noised(x):
    x = scaler(x.to(device))
    t = torch.rand(x.shape[0], device=device, generator=gen) * (hi - lo) + lo
    mean, std = sde.marginal_prob(x, t)
    z = torch.randn(x.shape, device=device, generator=gen)
    return mean + append_dims(std, x.ndim) * z, sde.model_labels(t, True)

  model.train()
  for step in tqdm(range(n_iters), disable=not progress, desc='noisy classifier', dynamic_ncols=True):
    xg, lg = noised(next(iters['retain'])[0])
    xf, lf = noised(next(iters['forget'])[0])
    per_g, per_f = classifier_loss(model(xg, lg), model(xf, lf))
    loss = per_g.mean() + per_f.mean()
    if not torch.isfinite(loss):
      raise NoisyClassifierError(f'the classifier loss became {loss.item()} at step {step}; lower noisy_classifier.lr')
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()
    ema.update(model.parameters())
    if (step + 1) % max(n_iters // 10, 1) == 0:
      logging.info('noisy classifier step %d: balanced cross-entropy %.5f', step + 1, loss.item() / 2)
  ema.copy_to(model.parameters())
  model.eval()
  meta = _metadata(config, data, sde, lo, hi)
  meta.update(evaluate(model, data, sde, scaler, lo, hi, seed, device), n_iters=n_iters)
  state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
  meta['sha256'] = _sha256(state)
  utils.atomic_torch_save({'state_dict': state, 'metadata': meta, 'config': utils.config_to_json(config)}, out_path)
  return meta


@torch.no_grad()
def evaluate(model, data, sde, scaler, lo, hi, seed, device, batch_size=1000):
  """Balanced accuracy and cross-entropy (nats) on the test split, one noise draw per item."""
  gen = torch.Generator(device=device).manual_seed(datasets.derive_seed(seed, 'test'))
  out = {}
  for part, label in (('retain', 0.), ('forget', 1.)):
    ds = data.test.part(part)
    losses, correct = [], []
    for start in range(0, len(ds), batch_size):
      x = torch.stack([ds[i][0] for i in range(start, min(start + batch_size, len(ds)))])
      x = scaler(x.to(device))
      t = torch.rand(x.shape[0], device=device, generator=gen) * (hi - lo) + lo
      mean, std = sde.marginal_prob(x, t)
      x_t = mean + append_dims(std, x.ndim) * torch.randn(x.shape, device=device, generator=gen)
      logit = model(x_t, sde.model_labels(t, True))
      target = torch.full_like(logit, label)
      losses.append(torch.nn.functional.binary_cross_entropy_with_logits(logit, target, reduction='none'))
      correct.append(((logit > 0).float() == target).float())
    out[part] = (torch.cat(losses).mean().item(), torch.cat(correct).mean().item()) if losses else (float('nan'),) * 2
  return {'test_cross_entropy': (out['retain'][0] + out['forget'][0]) / 2,
          'test_balanced_accuracy': (out['retain'][1] + out['forget'][1]) / 2}


def _sha256(state_dict):
  digest = hashlib.sha256()
  for key in sorted(state_dict):
    digest.update(key.encode())
    digest.update(state_dict[key].contiguous().cpu().numpy().tobytes())
  return digest.hexdigest()


def load_log_ratio_fn(path, config, sde, data, device):
  """``log_ratio_fn`` of the noisy classifier at ``path`` (frozen, eval mode), checked against the run:
  same data set, forget set, architecture, SDE and item shape, and a time range that covers the forget
  term's ``[unlearn.forget_t_min, unlearn.forget_t_max]``. Raises ``NoisyClassifierError``."""
  how = ('train one with `python main.py --config CONFIG --workdir C --mode train_noisy_classifier` and set '
         f'--config.unlearn.classifier=C/{FILENAME}')
  try:
    obj = utils.load_file(path)
  except utils.CheckpointError as e:
    raise NoisyClassifierError(f'unlearn.classifier: {e}; {how}') from None
  state, meta = obj.get('state_dict'), obj.get('metadata')
  if not isinstance(state, dict) or not isinstance(meta, dict) or 'sha256' not in meta:
    raise NoisyClassifierError(f'{path} is not a noisy-classifier file (keys: {sorted(obj)}); {how}')
  if _sha256(state) != meta['sha256']:
    raise NoisyClassifierError(f'{path}: the weights do not match their recorded sha256 (modified or damaged); {how}')
  lo, hi = float(config.unlearn.forget_t_min), float(config.unlearn.forget_t_max)
  wanted = _metadata(config, data, sde, meta.get('t_min'), meta.get('t_max'))
  problems = [f'{k}: file {meta.get(k)!r}, run {v!r}' for k, v in wanted.items() if meta.get(k) != v]
  if max(lo, float(config.training.eps)) < float(meta['t_min']) - 1e-12 or hi > float(meta['t_max']) + 1e-12:
    problems.append(f"it was trained on t in [{meta['t_min']}, {meta['t_max']}], the forget term uses [{lo}, {hi}]")
  if problems:
    raise NoisyClassifierError(f'{path} was made for another setting: ' + '; '.join(problems))
  model = NoisyClassifier(config).to(device)
  try:
    model.load_state_dict(state)
  except RuntimeError as e:
    raise NoisyClassifierError(f'{path}: the weights do not fit config.model ({str(e).splitlines()[0]})') from None
  model.eval()
  for p in model.parameters():
    p.requires_grad_(False)
  return get_log_ratio_fn(model, sde)
