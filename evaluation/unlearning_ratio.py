"""The Unlearning Ratio: the share of generated samples that a classifier assigns to the forget set.

Class data: UR = 100 · #{samples classified as a forget class} / #{samples}. Attribute data (CelebA):
UR = 100 · #{samples with any forget attribute predicted present} / #{samples} (the same rule that
puts a training image into D_f). Lower is better. The 95 % interval is the Wilson score interval of
that binomial proportion (``evaluation.stats.wilson_interval``); it covers the sampling noise of a
finite number of samples, not the classifier's own errors (see docs/evaluation.md).
"""
from typing import Optional, Sequence

import torch

from evaluation.stats import Z95, wilson_interval


def unlearning_ratio(labels_pred: torch.Tensor, forget_indices: Sequence[int], num_classes: Optional[int] = None,
                     class_names: Optional[Sequence[str]] = None, z: float = Z95) -> dict:
  """The Unlearning Ratio of predicted labels.

  ``labels_pred``: int ``[N]`` classes in ``0..K-1``, or 0/1 (bool) ``[N, A]`` predicted attributes.
  ``forget_indices``: the forget classes (attributes). ``num_classes`` K (or A), else
  ``len(class_names)``, else inferred (max label + 1, or A). ``class_names`` default ``'0'..'K-1'``.

  Returns ``{'percent', 'ci95': [lo, hi] (percent), 'num_samples', 'num_forget', 'class_histogram':
  {name: count}, 'forget_samples': [indices]}``; for attributes the histogram counts the samples with each
  attribute present. ``forget_samples``: the (sorted) positions of the samples counted as forgotten-class ones,
  for a test paired by sample between two models (``evaluation.compare``: McNemar's).
  Raises ``ValueError`` for no samples, labels out of range, or forget indices out of range.
  """
  labels = torch.as_tensor(labels_pred).detach().cpu()
  if labels.ndim not in (1, 2):
    raise ValueError(f'labels_pred must be [N] classes or [N, A] attributes, got shape {tuple(labels.shape)}')
  n = int(labels.shape[0])
  if n == 0:
    raise ValueError('the Unlearning Ratio needs at least one sample')
  if num_classes is None:
    if class_names is not None:
      num_classes = len(class_names)
    elif labels.ndim == 2:
      num_classes = labels.shape[1]
    else:
      num_classes = int(labels.max()) + 1
  num_classes = int(num_classes)
  names = [str(c) for c in (class_names if class_names is not None else range(num_classes))]
  if len(names) != num_classes:
    raise ValueError(f'{len(names)} class names for {num_classes} classes')
  forget = sorted({int(i) for i in forget_indices})
  if not forget:
    raise ValueError('the forget set is empty')
  if forget[0] < 0 or forget[-1] >= num_classes:
    raise ValueError(f'forget indices {forget} out of range 0..{num_classes - 1}')
  if labels.ndim == 1:
    labels = labels.long()
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
      raise ValueError(f'predicted labels out of range 0..{num_classes - 1}: '
                       f'min {int(labels.min())}, max {int(labels.max())}')
    counts = torch.bincount(labels, minlength=num_classes)
    hit = torch.isin(labels, torch.tensor(forget))
    hits = int(hit.sum())
  else:
    if labels.shape[1] != num_classes:
      raise ValueError(f'{labels.shape[1]} predicted attributes but {num_classes} attribute names')
    present = labels.bool()
    counts = present.sum(dim=0)
    hit = present[:, forget].any(dim=1)
    hits = int(hit.sum())
  lo, hi = wilson_interval(hits, n, z)
  return {'percent': 100. * hits / n, 'ci95': [100. * lo, 100. * hi], 'num_samples': n, 'num_forget': hits,
          'class_histogram': {name: int(c) for name, c in zip(names, counts.tolist())},
          'forget_samples': hit.nonzero().flatten().tolist()}


def unlearning_ratio_of_samples(samples: torch.Tensor, classifier, forget_indices: Sequence[int],
                                batch_size: int = 512, z: float = Z95) -> dict:
  """Classifies ``samples`` (images ``[N, C, H, W]`` in ``[0, 1]``, or points ``[N, D]``) with
  ``classifier`` (``evaluation.classifier``) and returns ``unlearning_ratio`` of the predictions, with
  the classifier's label names in the histogram, plus ``'non_finite'``: the number of samples holding a
  NaN or ±inf. Those are classified as nothing — neither forget nor retained — and the ratio is over the
  finite samples only (``num_samples``); an evaluation must not report a ratio when any are present
  (``evaluation.run`` refuses). All samples non-finite: ``ValueError``."""
  finite = torch.isfinite(samples.reshape(samples.shape[0], -1)).all(dim=1)
  bad = int((~finite).sum())
  if bad == samples.shape[0]:
    raise ValueError(f'all {bad} samples hold NaN or ±inf: there is nothing to classify')
  labels = classifier.predict(samples[finite.to(samples.device)], batch_size)
  out = unlearning_ratio(labels, forget_indices, len(classifier.label_names), classifier.label_names, z)
  positions = finite.cpu().nonzero().flatten()   # back to positions among all the samples
  out['forget_samples'] = positions[out['forget_samples']].tolist()
  out['non_finite'] = bad
  return out


def per_label(labels_pred: torch.Tensor, requested: torch.Tensor, forget_indices: Sequence[int],
              class_names: Sequence[str], z: float = Z95) -> dict:
  """The Unlearning Ratio per requested class, for samples of a class-conditional model.

  ``labels_pred`` int ``[N]``: the classifier's classes; ``requested`` int ``[N]``: the classes the samples
  were asked for. For each requested class c: ``percent`` = 100 · #{asked for c, classified as c} / #{asked
  for c} (for a forget class this is its Unlearning Ratio; SFD's "unlearning accuracy" is ``100 − percent``,
  recorded as ``unlearning_accuracy``), its Wilson 95% interval and the histogram of the classes assigned.
  ``forget``: the same pooled over the requests of every forget class; ``retain``: pooled over the retained
  classes (the share of retained requests that come out as asked). Raises ``ValueError`` on bad input.
  """
  pred = torch.as_tensor(labels_pred).detach().cpu().long()
  req = torch.as_tensor(requested).detach().cpu().long()
  k = len(class_names)
  if pred.ndim != 1 or pred.shape != req.shape or not len(pred):
    raise ValueError(f'predicted and requested labels must be [N] of the same N >= 1, got {tuple(pred.shape)} '
                     f'and {tuple(req.shape)}')
  for name, t in (('predicted', pred), ('requested', req)):
    if int(t.min()) < 0 or int(t.max()) >= k:
      raise ValueError(f'{name} labels out of range 0..{k - 1}')
  forget = sorted({int(i) for i in forget_indices})

  def share(mask):
    n = int(mask.sum())
    hits = int((mask & (pred == req)).sum())
    lo, hi = wilson_interval(hits, n, z)
    return {'num_samples': n, 'num_assigned': hits, 'percent': 100. * hits / n, 'ci95': [100. * lo, 100. * hi]}

  out = {}
  for c in sorted(set(req.tolist())):
    mask = req == c
    row = dict(share(mask), forget=c in forget,
               histogram={class_names[j]: int(v) for j, v in enumerate(torch.bincount(pred[mask], minlength=k))})
    if c in forget:
      row['unlearning_accuracy'] = 100. - row['percent']
    out[str(class_names[c])] = row
  result = {'per_label': out, 'forget': None, 'retain': None}
  is_forget = torch.isin(req, torch.tensor(forget, dtype=torch.long))
  if bool(is_forget.any()):
    pooled = share(is_forget)
    pooled['unlearning_accuracy'] = 100. - pooled['percent']
    result['forget'] = pooled
  if bool((~is_forget).any()):
    result['retain'] = share(~is_forget)
  return result


def per_label_of_samples(samples: torch.Tensor, requested: torch.Tensor, classifier, forget_indices: Sequence[int],
                         batch_size: int = 512, z: float = Z95) -> dict:
  """``per_label`` of ``samples`` (finite ones only, as ``unlearning_ratio_of_samples``) classified by
  ``classifier``; ``requested`` [N] the classes they were asked for."""
  finite = torch.isfinite(samples.reshape(samples.shape[0], -1)).all(dim=1)
  if not bool(finite.any()):
    raise ValueError('all samples hold NaN or ±inf: there is nothing to classify')
  labels = classifier.predict(samples[finite.to(samples.device)], batch_size)
  return per_label(labels, torch.as_tensor(requested)[finite.cpu()], forget_indices, classifier.label_names, z)
