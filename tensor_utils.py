"""Rank-agnostic tensor helpers shared by the SDEs, losses, samplers and likelihoods.

Every function here works for images ``[B, C, H, W]`` and for low-dimensional data ``[B, D]``
alike, so that the 2-D toy and the image models share one code path.
"""
import torch


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
  """Appends trailing singleton dimensions to a per-sample tensor ``v`` ([B] or scalar) up to ``ndim``."""
  if v.ndim > ndim:
    raise ValueError(f'cannot broadcast a tensor of rank {v.ndim} to rank {ndim}')
  return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def sum_flat(x: torch.Tensor) -> torch.Tensor:
  """Sums over every dimension but the first: ``[B, ...] -> [B]``."""
  return x.reshape(x.shape[0], -1).sum(dim=1)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
  """Averages over every dimension but the first: ``[B, ...] -> [B]``."""
  return x.reshape(x.shape[0], -1).mean(dim=1)


def num_dims(x: torch.Tensor) -> int:
  """Number of data dimensions of one sample of ``x`` (``C*H*W`` for images, ``D`` for vectors)."""
  n = 1
  for s in x.shape[1:]:
    n *= s
  return n
