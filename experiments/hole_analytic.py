"""Expected NLLs of the hole form's *intended* density on the 2-D toy, with a given density ratio.

  python -m experiments.hole_analytic W/noisy_classifier/noisy_classifier.pth [--seed 42] \
      [--depth 45 --log_ratio 3.7 --sharpness 20] [--t0 1e-3]

The hole form (``unlearning.obtuse.obtuse_hole_loss``) aims at q ∝ p_g · exp(−Φ(ℓ)), Φ = ``unlearning.hole.hole_potential``.
This computes that q's NLL_g and NLL_f in expectation (exact p_g and p_f, a 2-D grid, no test points), with
ℓ(x) = the classifier's logit at a small time ``t0`` (or ``exact``: the toy's true log p_f/p_g). What a
trained model reaches through the probability-flow ODE can then be compared with what the potential and
the classifier allow (docs/unlearning.md, "Measured in expectation").
"""
import argparse
import copy
import math

import torch

import datasets
import sde_lib
from configs.toy.gmm2d import get_config
from evaluation import frontier
from unlearning import hole, noisy_classifier


def grid(step=0.02, limit=9.):
  """Grid points ``[N, 2]`` (float64) and the cell area."""
  g = torch.arange(-limit, limit + 1e-9, step, dtype=torch.float64)
  x1, x2 = torch.meshgrid(g, g, indexing='ij')
  return torch.stack([x1.flatten(), x2.flatten()], 1), step * step


def _log_densities(x):
  """log p_g(x), log p_f(x) of the toy (nats), from ``evaluation.frontier``'s 1-D densities along s."""
  x = x.numpy()
  s, v = (x[:, 0] + x[:, 1]) / math.sqrt(2.), (x[:, 0] - x[:, 1]) / math.sqrt(2.)
  perp = -0.5 * v ** 2 - 0.5 * math.log(2. * math.pi)
  return torch.from_numpy(frontier.log_pg_1d(s) + perp), torch.from_numpy(frontier.log_pf_1d(s) + perp)


def hole_nll(log_ratio, depth, threshold, sharpness, x, area):
  """``(NLL_g, NLL_f)`` in nats of q = p_g e^{−Φ(ℓ)} / Z on grid points ``x`` [N, 2] with cell ``area``;
  ``log_ratio`` [N] is ℓ at those points (nats). Both as CE(·, p_g) + E[Φ] + log Z."""
  log_pg, log_pf = _log_densities(x)
  phi = hole.hole_potential(log_ratio.double(), depth, threshold, sharpness)
  pg, pf = log_pg.exp() * area, log_pf.exp() * area
  pg, pf = pg / pg.sum(), pf / pf.sum()
  log_z = torch.log((pg * torch.exp(-phi)).sum())
  return (float((pg * (phi - log_pg)).sum() + log_z), float((pf * (phi - log_pg)).sum() + log_z))


def log_ratio_on_grid(log_ratio_fn, x, t0, batch=100000):
  """ℓ(x, t0) of a ``log_ratio_fn(x, t) -> [B]`` at every grid point, float64 ``[N]``."""
  with torch.no_grad():
    out = [log_ratio_fn(xb.float(), torch.full((len(xb),), t0)).double() for xb in x.split(batch)]
  return torch.cat(out)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('classifier', help="a noisy classifier file, or 'exact'")
  parser.add_argument('--seed', type=int, default=42)
  parser.add_argument('--depth', type=float, nargs='+', default=[40., 45., 50., 60.])
  parser.add_argument('--log_ratio', type=float, nargs='+', default=[3.5, 3.6, 3.7, 3.8])
  parser.add_argument('--sharpness', type=float, default=20.)
  parser.add_argument('--t0', type=float, default=1e-3)
  args = parser.parse_args()
  config = get_config()
  config.seed = args.seed
  config.unlearn.obtuse_form, config.unlearn.forget_t_max = 'hole', args.t0
  sde = sde_lib.get_sde(config)
  data = datasets.get_dataset(config)
  if args.classifier == 'exact':
    fn = noisy_classifier.mixture_log_ratio_fn(data.density, data.forget_indices, sde)
  else:
    fn = noisy_classifier.load_log_ratio_fn(args.classifier, copy.deepcopy(config), sde, data, 'cpu')
  x, area = grid()
  ell = log_ratio_on_grid(fn, x, args.t0)
  paper = frontier.to_paper_scale
  print(f'p_g: {paper(frontier.entropy_retain()):.3f} / '
        f'{paper(frontier.cross_entropy(frontier.log_pf_1d, frontier.log_pg_1d)):.3f} (paper scale)')
  for threshold in args.log_ratio:
    cells = []
    for depth in args.depth:
      g, f = hole_nll(ell, depth, threshold, args.sharpness, x, area)
      cells.append(f'c {depth:g}: {paper(g):.3f} / {paper(f):.2f}')
    print(f'ℓ* {threshold:g}, β {args.sharpness:g}: ' + ' | '.join(cells))


if __name__ == '__main__':
  main()
