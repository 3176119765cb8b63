"""Negative log-likelihood of a data set under a score model (probability-flow ODE).

Images: each pass dequantises the 8-bit data uniformly, ``x ← (255 x + u) / 256`` with ``u ~ U[0, 1)``
(the same way for D_g and D_f), scales it like the training data, and converts the ODE log-density to
score_sde's bits/dim (offset ``7 - inverse_scaler(-1)``). Continuous data (the 2-D toy) is neither
dequantised nor binned: its NLL is reported in nats per sample, and in bits/dim with the same offset,
which is the scale of the paper's toy table (``nats / (D ln 2) + 8`` for uncentred data).
"""
import math

import torch
from tqdm import tqdm

import datasets
import likelihood
import runtime
from evaluation.stats import mean_sem


def dataset_nll(log_likelihood_fn, model, dataset, scaler, inverse_scaler, *, batch_size, seed, num_repeats=1,
                dequantize=True, max_items=0, device='cpu', progress=False, desc='nll', shard=False):
  """NLL of ``dataset`` (items ``(x in [0, 1] or R^D, y)``) under ``model``.

  Returns ``{'bpd': {'mean', 'sem', 'n'}, 'nats': {...}, 'repeats': [mean bpd of each pass], 'nfe': mean
  network evaluations per batch, 'items_bpd': float64 [n], 'items_nats': float64 [n]}``; the SEM is over
  items (each item's NLL averaged over the passes); ``items_*`` are those per-item NLLs, in data-set order.
  ``max_items > 0`` evaluates the first ``max_items`` items only. ``shard``: every process of a torchrun
  group calls this, each computes every K-th batch, and all get every item's NLL (each batch's noise is
  seeded by its position, so the numbers are those of one process).
  """
  n = len(dataset) if max_items <= 0 else min(max_items, len(dataset))
  if n == 0:
    raise ValueError('cannot evaluate the NLL of an empty data set')
  offset = likelihood.bpd_offset(inverse_scaler)
  per_item = torch.zeros(num_repeats, n, dtype=torch.float64)
  k, me = (runtime.world_size(), runtime.rank()) if shard else (1, 0)
  done, error = [], None   # (pass, first item, -logp [b], nfe) of the batches this process computed
  total = num_repeats * math.ceil(n / batch_size)
  with tqdm(total=total, disable=not progress, desc=desc, dynamic_ncols=True) as bar:
    try:
      for r in range(num_repeats):
        batches = datasets.get_data_iterator(dataset, batch_size, seed, shuffle=False, drop_last=False,
                                             infinite=False)
        start = 0
        for i, (x, _) in enumerate(batches):
          if start >= n:
            break
          x = x[: n - start]
          if i % k == me:
            x = x.to(device)
            gen = torch.Generator().manual_seed(datasets.derive_seed(seed, 'nll', r, start))
            if dequantize:
              x = datasets.uniform_dequantize(x.cpu(), gen).to(device)
            probe_gen = torch.Generator(device=device).manual_seed(datasets.derive_seed(seed, 'probe', r, start))
            logp, _, nfe = log_likelihood_fn(model, scaler(x), probe_gen)
            done.append((r, start, -logp.detach().double().cpu(), nfe))
          start += x.shape[0]
          bar.update(1)
    except Exception as e:   # noqa: BLE001  (a group shares it before raising)
      if k == 1:
        raise
      error = e
  if k > 1:
    done = runtime.gather_lists(done, error)
  nfes = []
  for r, start, values, nfe in sorted(done, key=lambda item: item[:2]):
    per_item[r, start:start + values.shape[0]] = values
    nfes.append(nfe)
  dims = 1
  for s in dataset[0][0].shape:
    dims *= s
  nats = per_item.mean(dim=0)
  bpd = nats / (dims * math.log(2.)) + offset
  return {
    'bpd': mean_sem(bpd).to_dict(),
    'nats': mean_sem(nats).to_dict(),
    'repeats': [(per_item[r] / (dims * math.log(2.)) + offset).mean().item() for r in range(num_repeats)],
    'nfe': sum(nfes) / len(nfes),
    'items_bpd': bpd,
    'items_nats': nats,
  }
