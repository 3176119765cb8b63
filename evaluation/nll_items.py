"""Per-item NLLs of an evaluation (``W/<eval_folder>/nll_items_<step>.npz``), for paired comparisons.

Arrays (float64, data-set order of ``eval.bpd_dataset``'s D_g / D_f parts): ``retain_bpd``, ``forget_bpd``
(bits/dim) and ``retain_nats``, ``forget_nats`` (nats per item). Written atomically, read without pickles.
"""
import os

import numpy as np

import utils

PARTS = ('retain', 'forget')
UNITS = ('bpd', 'nats')


def items_filename(step: int) -> str:
  """The file name of a checkpoint's per-item NLLs: ``nll_items_<step>.npz``."""
  return f'nll_items_{int(step)}.npz'


def save_items(path, nll):
  """Writes ``nll[part]['items_bpd' | 'items_nats']`` (``evaluation.nll.dataset_nll``'s output per part)."""
  arrays = {f'{part}_{unit}': np.asarray(nll[part][f'items_{unit}'], dtype=np.float64)
            for part in PARTS for unit in UNITS}
  utils.atomic_write(path, lambda f: np.savez(f, **arrays))


def load_items(path):
  """``{'retain_bpd': [n_g], 'forget_bpd': [n_f], 'retain_nats': ..., 'forget_nats': ...}`` from ``path``.

  Raises ``ValueError`` for a missing, unreadable or incomplete file.
  """
  if not os.path.isfile(path):
    raise ValueError(f'no per-item NLL file {path} (evaluate the run with --config.eval.enable_bpd=True)')
  try:
    with np.load(path, allow_pickle=False) as f:
      out = {k: np.asarray(f[k], dtype=np.float64) for k in f.files}
  except Exception as err:  # zipfile.BadZipFile, OSError, ValueError: a damaged file
    raise ValueError(f'cannot read per-item NLLs from {path}: {err}') from err
  missing = [f'{p}_{u}' for p in PARTS for u in UNITS if f'{p}_{u}' not in out]
  if missing:
    raise ValueError(f'{path} lacks {", ".join(missing)}')
  return out
