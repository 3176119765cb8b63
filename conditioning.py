"""Class-conditional score models: the class labels they take, the null label of classifier-free guidance,
and the labels that sampling asks for.

Conventions:
  * class labels ``y`` are int64 ``[B]`` in ``0 .. K-1`` (K = ``config.model.num_classes``); the index ``K`` is
    the *null label* (no class: the unconditional branch), learnt by replacing a share
    ``config.training.label_dropout`` of the training labels with it;
  * classifier-free guidance with scale w (``config.sampling.guidance``) mixes the two branches as

        s_w(x, t, y) = s(x, t, ∅) + w · (s(x, t, y) − s(x, t, ∅)),

    so w = 0 is the unconditional branch, w = 1 the plain conditional model (the default: one network pass)
    and w > 1 guides beyond it (Ho & Salimans' scale is w − 1 in this convention). The mix is applied to the
    raw network outputs, which every SDE maps linearly to scores, so it is the same mix of scores;
  * ``config.sampling.labels``: '' = every class in turn (sample i asks for class i mod K, so each class is
    asked for equally often), or a comma list of class names or indices, cycled the same way.
"""
import torch


def num_classes(config):
  """K of a class-conditional config, 0 for an unconditional one; a bad setting raises ``ValueError``."""
  m = config.model
  if not bool(m.get('class_conditional', False)):
    return 0
  k = int(m.get('num_classes', 0))
  if k < 2:
    raise ValueError(f'config.model.class_conditional=True needs config.model.num_classes >= 2 (the number of '
                     f'classes of the data set), got {k}')
  if not bool(m.get('conditional', True)):
    raise ValueError('config.model.class_conditional=True adds the label embedding to the time embedding: it needs '
                     'config.model.conditional=True')
  return k


def check_sampling(config):
  """Refuses ``sampling.labels`` or a guidance scale other than 1 for an unconditional config (they would be
  ignored), and a negative guidance scale."""
  s = config.sampling
  w = float(s.get('guidance', 1.))
  if w < 0:
    raise ValueError(f'config.sampling.guidance must be >= 0 (0: unconditional, 1: conditional), got {w}')
  if not num_classes(config) and (str(s.get('labels', '')).strip() or w != 1.):
    raise ValueError('config.sampling.labels and config.sampling.guidance apply to class-conditional models; this '
                     'config is unconditional (config.model.class_conditional=False)')


def model_num_classes(model):
  """K of a network built by ``models`` (0: unconditional). Works on frozen copies and wrappers alike."""
  return int(getattr(model, 'num_classes', 0) or 0)


def check_data(config, data):
  """Refuses a class-conditional config whose data set has no class labels or another number of classes."""
  k = num_classes(config)
  if not k:
    return 0
  if data.label_type != 'class':
    raise ValueError(f'config.model.class_conditional=True needs class labels, but {data.name} has '
                     f'{data.label_type} labels')
  if k != data.num_classes:
    raise ValueError(f'config.model.num_classes={k} but {data.name} has {data.num_classes} classes: set '
                     f'--config.model.num_classes={data.num_classes}')
  p = float(config.training.get('label_dropout', 0.))
  if not 0. <= p < 1.:
    raise ValueError(f'config.training.label_dropout must be in [0, 1), got {p}')
  return k


def parse_labels(spec, class_names):
  """The class indices of ``spec`` (names or indices, comma-separated; '' = every class), a list."""
  k = len(class_names)
  text = str(spec).strip()
  if not text:
    return list(range(k))
  norm = {str(n).lower(): i for i, n in enumerate(class_names)}
  out = []
  for tok in (t.strip() for t in text.split(',')):
    if not tok:
      continue
    if tok.lower() in norm:
      out.append(norm[tok.lower()])
      continue
    try:
      idx = int(tok)
    except ValueError:
      raise ValueError(f"unknown class {tok!r} in config.sampling.labels={spec!r}; valid: "
                       f"{', '.join(str(n) for n in class_names)} or 0..{k - 1}") from None
    if not 0 <= idx < k:
      raise ValueError(f'class index {idx} in config.sampling.labels={spec!r} is out of range 0..{k - 1}')
    out.append(idx)
  if not out:
    raise ValueError(f'config.sampling.labels={spec!r} names no class')
  return out


def sampling_labels(config, count, start=0, class_names=None, device=None):
  """The class labels int64 ``[count]`` that samples ``start .. start + count − 1`` ask for (cycled
  ``config.sampling.labels``), or None for an unconditional config. ``class_names`` default '0'..'K-1'."""
  k = num_classes(config)
  if not k:
    return None
  names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
  if len(names) != k:
    raise ValueError(f'{len(names)} class names for config.model.num_classes={k}')
  wanted = torch.tensor(parse_labels(config.sampling.get('labels', ''), names), dtype=torch.long)
  index = torch.arange(int(start), int(start) + int(count)) % len(wanted)
  return wanted[index].to(device) if device is not None else wanted[index]


def check_labels(y, k):
  """Refuses class labels outside ``0 .. k`` (``k`` = the null label) with one line."""
  if y is None:
    return None
  if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
    raise ValueError(f'class labels must be integers, got {y.dtype}')
  if y.numel() and (int(y.min()) < 0 or int(y.max()) > k):
    raise ValueError(f'class labels out of range 0..{k - 1} (null label {k}): min {int(y.min())}, '
                     f'max {int(y.max())}')
  return y.long()


def drop_labels(y, p, null, generator=None):
  """``y`` with each label replaced by ``null`` with probability ``p`` (classifier-free guidance training)."""
  if p <= 0:
    return y
  drop = torch.rand(y.shape, device=y.device, generator=generator) < p
  return torch.where(drop, torch.full_like(y, null), y)


def guided(model_fn, x, labels, y, guidance, null):
  """The network output under classifier-free guidance (see the module docstring): ``[B, ...]``.

  ``model_fn(x, labels, class_labels)``; ``y`` [B] the requested classes; w = ``guidance``. w = 1 and w = 0
  take one pass (conditional and null branch); otherwise both branches run as one batch of 2B.
  """
  w = float(guidance)
  if w == 1.:
    return model_fn(x, labels, y)
  y_null = torch.full_like(y, null)
  if w == 0.:
    return model_fn(x, labels, y_null)
  out = model_fn(torch.cat([x, x]), torch.cat([labels, labels]), torch.cat([y, y_null]))
  cond, uncond = out.chunk(2)
  return uncond + w * (cond - uncond)
