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
  {name: count}}``; for attributes the histogram counts the samples with each attribute present.
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
    hits = int(counts[forget].sum())
  else:
    if labels.shape[1] != num_classes:
      raise ValueError(f'{labels.shape[1]} predicted attributes but {num_classes} attribute names')
    present = labels.bool()
    counts = present.sum(dim=0)
    hits = int(present[:, forget].any(dim=1).sum())
  lo, hi = wilson_interval(hits, n, z)
  return {'percent': 100. * hits / n, 'ci95': [100. * lo, 100. * hi], 'num_samples': n, 'num_forget': hits,
          'class_histogram': {name: int(c) for name, c in zip(names, counts.tolist())}}


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
  out['non_finite'] = bad
  return out
