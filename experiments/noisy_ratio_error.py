"""How far a toy noisy classifier's logit is from the exact log density ratio, near the hole's edge.

  python -m experiments.noisy_ratio_error W/noisy_classifier/noisy_classifier.pth [--seed 42] [--t_max 0.02]

Draws 20,000 forget points of the 2-D toy (``datasets.gmm2d_density``, centre component), noises them to
t ~ U[0, t_max] and compares the classifier's logit with ``noisy_classifier.mixture_log_ratio_fn`` (nats):
the bias and mean absolute error where the exact ratio lies in (3, 4.1), the band where toy presets put
the edge, and the mean absolute error over all points. ``--seed`` must be the config seed the classifier
was trained with (it is checked against the file).
"""
import argparse
import copy

import torch

import datasets
import sde_lib
from configs.toy.gmm2d import get_config
from unlearning import noisy_classifier


def ratio_error(path, seed=42, t_max=0.02, n=20000, config=None):
  """``{'band_n', 'band_bias', 'band_mae', 'mae'}`` (nats) of the classifier at ``path`` on the toy
  (``config``: the toy config it was trained with, default ``configs/toy/gmm2d.py`` with ``seed``)."""
  config = copy.deepcopy(config) if config is not None else get_config()
  config.seed = seed
  config.unlearn.obtuse_form, config.unlearn.forget_t_max = 'hole', t_max
  sde = sde_lib.get_sde(config)
  data = datasets.get_dataset(config)
  exact = noisy_classifier.mixture_log_ratio_fn(data.density, data.forget_indices, sde)
  learned = noisy_classifier.load_log_ratio_fn(path, config, sde, data, 'cpu')
  x0, _ = data.density.restrict(list(data.forget_indices)).sample(n, generator=1)
  t = torch.rand(n, generator=torch.Generator().manual_seed(2)) * t_max
  mean, std = sde.marginal_prob(x0, t)
  x = mean + std[:, None] * torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
  with torch.no_grad():
    e, l = exact(x, t).float(), learned(x, t)
  band = (e > 3.) & (e < 4.1)
  d = (l - e)[band]
  return {'band_n': int(band.sum()), 'band_bias': d.mean().item(), 'band_mae': d.abs().mean().item(),
          'mae': (l - e).abs().mean().item()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('path')
  parser.add_argument('--seed', type=int, default=42)
  parser.add_argument('--t_max', type=float, default=0.02)
  args = parser.parse_args()
  r = ratio_error(args.path, args.seed, args.t_max)
  print(f"{args.path}: {r['band_n']} points with 3 < ℓ < 4.1: bias {r['band_bias']:+.3f} nats, mean |error| "
        f"{r['band_mae']:.3f}; all points: mean |error| {r['mae']:.3f}")


if __name__ == '__main__':
  main()
