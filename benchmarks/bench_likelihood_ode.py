"""Likelihood and ODE-sampler speed: this project versus the official score_sde approach.

Usage (from the repository root):
    python3 benchmarks/bench_likelihood_ode.py            # DDPM U-Net, 28×28×1, batch 8, rtol = atol = 1e-5
    python3 benchmarks/bench_likelihood_ode.py --quick    # smaller batch, rtol = atol = 1e-3
    python3 benchmarks/bench_likelihood_ode.py --model ncsnpp --image-size 32 --channels 3 --device cuda

Both sides use the same network (weights fixed by ``--seed``), the same dequantised inputs, the same
Hutchinson probe, eps and tolerances:
  * ours: ``likelihood.get_likelihood_fn`` (torchdiffeq dopri5 on the data's device, one network forward
    and one vector–Jacobian product per right-hand-side evaluation) and the ``ode`` sampler of
    ``sampling.get_sampling_fn``; also the same right-hand side integrated by scipy, to separate the
    solver from the forward/VJP saving;
  * official: a re-implementation, in this file, of score_sde's ``likelihood.py``/``sampling.py`` ODE
    paths: ``scipy.integrate.solve_ivp`` (RK45) on a float64 host vector, a numpy → torch → numpy round trip
    per evaluation, and for the likelihood two network passes per evaluation (the drift under no_grad,
    then the drift again with grad enabled for the divergence).

The network is randomly initialised; its zero-initialised output layer is perturbed so that the drift
is not trivially linear. Timings are wall-clock, best of ``--repeats`` (alternating the contenders).

On CUDA our right-hand side is, by default, replayed from a captured CUDA graph (``sampling.cuda_graph``):
a small network at a small batch is bound by kernel launches on the host, which a replay issues at once.
The row 'ours, eager (no CUDA graph)' is the same path without the graph.

What to expect on a CPU: per evaluation ours costs one forward F plus one backward B, the official approach
2F + B plus host copies, so the per-evaluation gain is at most (2F + B)/(F + B), about 1.3–1.5× when B
costs 1–2 forwards, plus whatever the host round trips cost (negligible on a CPU). The wall-clock
ratio also depends on the number of evaluations, which differs slightly between torchdiffeq's dopri5
and scipy's RK45 step-size controllers (same Runge–Kutta pair, same error norm, different step rules).
"""
import argparse
import math
import os
import sys
import time

import numpy as np
import torch
from scipy import integrate

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import likelihood  # noqa: E402
import sampling  # noqa: E402
import sde_lib  # noqa: E402
from configs.default_configs import get_base_config  # noqa: E402
from models import utils as mutils  # noqa: E402


# ----------------------------------------------------------------------------------------------------
# The official approach (re-implemented here for comparison only)
# ----------------------------------------------------------------------------------------------------

def official_likelihood(sde, model, data, probe, inverse_scaler, rtol, atol, method, eps):
  """score_sde-style likelihood: scipy on the host, drift and divergence from two separate passes."""
  score_fn = mutils.get_score_fn(sde, model, train=False, continuous=True)
  rsde = sde.reverse(score_fn, probability_flow=True)
  shape, batch = data.shape, data.shape[0]

  def drift(x, t):
    return rsde.sde(x, t)[0]

  def divergence(x, t):
    with torch.enable_grad():
      x = x.detach().requires_grad_(True)
      grad, = torch.autograd.grad((drift(x, t) * probe).sum(), x)
    return (grad * probe).reshape(batch, -1).sum(1)

  def ode_func(t, y):
    x = torch.from_numpy(y[:-batch]).reshape(shape).to(data.device).float()
    vec_t = torch.full((batch,), t, device=data.device)
    with torch.no_grad():
      dx = drift(x, vec_t).detach().cpu().numpy().reshape(-1)
    dlogp = divergence(x, vec_t).detach().cpu().numpy().reshape(-1)
    return np.concatenate([dx, dlogp])

  init = np.concatenate([data.detach().cpu().numpy().reshape(-1), np.zeros(batch)])
  sol = integrate.solve_ivp(ode_func, (eps, sde.T), init, rtol=rtol, atol=atol, method=method)
  z = torch.from_numpy(sol.y[:-batch, -1]).reshape(shape).to(data.device).float()
  delta = torch.from_numpy(sol.y[-batch:, -1]).to(data.device).float()
  dims = data[0].numel()
  bpd = -(sde.prior_logp(z) + delta) / math.log(2.) / dims + 7. - float(inverse_scaler(torch.tensor(-1.)))
  return bpd, z, sol.nfev


def official_ode_sampler(sde, model, z, rtol, atol, method, eps, denoise=True):
  """score_sde-style ODE sampler: scipy on the host, then one reverse-diffusion denoising step."""
  score_fn = mutils.get_score_fn(sde, model, train=False, continuous=True)
  rsde = sde.reverse(score_fn, probability_flow=True)
  shape = z.shape

  def ode_func(t, y):
    x = torch.from_numpy(y).reshape(shape).to(z.device).float()
    with torch.no_grad():
      return rsde.sde(x, torch.full((shape[0],), t, device=z.device))[0].cpu().numpy().reshape(-1)

  sol = integrate.solve_ivp(ode_func, (sde.T, eps), z.detach().cpu().numpy().reshape(-1), rtol=rtol, atol=atol,
                            method=method)
  x = torch.from_numpy(sol.y[:, -1]).reshape(shape).to(z.device).float()
  nfe = sol.nfev
  if denoise:
    with torch.no_grad():
      _, x = sampling.ReverseDiffusionPredictor(sde, score_fn).update_fn(x, torch.full((shape[0],), eps,
                                                                                      device=z.device))
    nfe += 1
  return x, nfe


# ----------------------------------------------------------------------------------------------------

def build(args):
  config = get_base_config()
  config.training.sde = args.sde
  config.training.continuous = True
  config.data.image_size = args.image_size
  config.data.num_channels = args.channels
  config.data.centered = True
  m = config.model
  m.name = args.model
  m.dropout = 0.
  m.num_scales = 1000
  if args.model == 'mlp':
    config.data.num_channels = args.channels * args.image_size ** 2  # flattened images
    m.hidden_dims = (args.nf * 8,) * 3
  else:
    m.update(dict(nf=args.nf, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(args.image_size // 2,),
                  scale_by_sigma=args.sde == 'vesde', conditional=True))
    if args.model == 'ncsnpp':
      m.update(dict(embedding_type='fourier' if args.sde == 'vesde' else 'positional', fir=False,
                    resblock_type='biggan', progressive='none', progressive_input='none', init_scale=0.))
  torch.manual_seed(args.seed)
  model = mutils.create_model(config, device=args.device).eval()
  with torch.no_grad():  # perturb the (near-)zero-initialised layers so the drift is not trivially linear
    for p in model.parameters():
      if p.abs().max() < 1e-6:
        p.add_(0.02 * torch.randn_like(p))
  sde = sde_lib.get_sde(config)
  shape = ((args.batch, config.data.num_channels) if args.model == 'mlp'
           else (args.batch, args.channels, args.image_size, args.image_size))
  gen = torch.Generator().manual_seed(args.seed + 1)
  pixels = torch.randint(0, 256, shape, generator=gen).double()
  x01 = ((pixels + torch.rand(shape, generator=gen, dtype=torch.float64)) / 256.).float()  # dequantised
  data = (2. * x01 - 1.).to(args.device)  # centred: scaler x ↦ 2x - 1
  return config, model, sde, data


def timed(fn, device):
  if device.type == 'cuda':
    torch.cuda.synchronize()
  start = time.perf_counter()
  out = fn()
  if device.type == 'cuda':
    torch.cuda.synchronize()
  return time.perf_counter() - start, out


def main(argv=None):
  available = mutils.registered_models()
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='auto', help=f"auto (ddpm if registered, else mlp) or one of {available}")
  parser.add_argument('--sde', default='vpsde', choices=['vpsde', 'subvpsde', 'vesde'])
  parser.add_argument('--image-size', type=int, default=28)
  parser.add_argument('--channels', type=int, default=1)
  parser.add_argument('--nf', type=int, default=32)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--rtol', type=float, default=1e-5)
  parser.add_argument('--atol', type=float, default=1e-5)
  parser.add_argument('--eps', type=float, default=1e-5, help='likelihood eps (the sampler uses the SDE default)')
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--device', default='auto')
  parser.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: leave as is)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--skip-sampler', action='store_true')
  parser.add_argument('--quick', action='store_true', help='batch 2, rtol = atol = 1e-3')
  args = parser.parse_args(argv)
  if args.quick:
    args.batch, args.rtol, args.atol = 2, 1e-3, 1e-3
  if args.model == 'auto':
    args.model = 'ddpm' if 'ddpm' in available else 'mlp'
  if args.device == 'auto':
    args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
  args.device = torch.device(args.device)
  if args.threads:
    torch.set_num_threads(args.threads)

  config, model, sde, data = build(args)
  inverse_scaler = lambda x: (x + 1.) / 2.
  params = sum(p.numel() for p in model.parameters())
  print(f'model={args.model} ({params / 1e6:.2f}M params) sde={args.sde} data={tuple(data.shape)} '
        f'device={args.device} threads={torch.get_num_threads()} rtol={args.rtol} atol={args.atol} eps={args.eps}')

  probe = likelihood.draw_probe(data, 'Rademacher', torch.Generator().manual_seed(args.seed + 2))
  ours_fn = likelihood.get_likelihood_fn(sde, inverse_scaler, rtol=args.rtol, atol=args.atol, eps=args.eps,
                                         exact_divergence=False)
  ours_scipy_fn = likelihood.get_likelihood_fn(sde, inverse_scaler, rtol=args.rtol, atol=args.atol, eps=args.eps,
                                               solver='scipy', exact_divergence=False)
  # Same probe for every contender: the probe generator is re-seeded identically for ours.
  probe_gen = lambda: torch.Generator().manual_seed(args.seed + 2)
  contenders = {
    'ours (torchdiffeq, 1 fwd + 1 VJP)': lambda: ours_fn(model, data, probe_gen()),
    'ours RHS, scipy solver': lambda: ours_scipy_fn(model, data, probe_gen()),
    'official (scipy, 2 fwd + 1 VJP)': lambda: official_likelihood(sde, model, data, probe, inverse_scaler,
                                                                   args.rtol, args.atol, 'RK45', args.eps),
  }
  if args.device.type == 'cuda':  # the default above replays a CUDA graph; this is the same without it
    ours_eager_fn = likelihood.get_likelihood_fn(sde, inverse_scaler, rtol=args.rtol, atol=args.atol, eps=args.eps,
                                                 exact_divergence=False, cuda_graph=False)
    contenders['ours, eager (no CUDA graph)'] = lambda: ours_eager_fn(model, data, probe_gen())
  warm_up(model, sde, data)
  results = run_contenders(contenders, args)
  ref = results['official (scipy, 2 fwd + 1 VJP)']
  print('\nLikelihood (bits/dim)')
  for name, (sec, (bpd, _, nfe)) in results.items():
    diff = (bpd.float().cpu() - ref[1][0].float().cpu()).abs()
    print(f'  {name:36s} {sec:8.2f} s  nfe {nfe:4d}  {sec / nfe * 1e3:7.1f} ms/eval  mean bpd {bpd.mean():.4f}  '
          f'|Δbpd| vs official max {diff.max():.2e}  speed-up ×{ref[0] / sec:.2f} '
          f'(per eval ×{ref[0] / ref[1][2] / (sec / nfe):.2f})')

  if not args.skip_sampler:
    z = sde.prior_sampling(tuple(data.shape), generator=torch.Generator().manual_seed(args.seed + 3)).to(args.device)
    eps = sde.default_sampling_eps
    cfg = config
    cfg.sampling.method, cfg.sampling.noise_removal = 'ode', True
    cfg.sampling.ode_rtol, cfg.sampling.ode_atol = args.rtol, args.atol
    fns = {}
    for solver, graph in (('torchdiffeq', True), ('scipy', True), ('torchdiffeq', False)):
      cfg.sampling.ode_solver, cfg.sampling.cuda_graph = solver, graph
      fns[solver, graph] = sampling.get_sampling_fn(cfg, sde, tuple(data.shape), lambda x: x, eps)
    contenders = {
      'ours (torchdiffeq)': lambda: fns['torchdiffeq', True](model, z=z),
      'ours, scipy solver': lambda: fns['scipy', True](model, z=z),
      'official (scipy)': lambda: official_ode_sampler(sde, model, z, args.rtol, args.atol, 'RK45', eps),
    }
    if args.device.type == 'cuda':
      contenders['ours, eager (no CUDA graph)'] = lambda: fns['torchdiffeq', False](model, z=z)
    results = run_contenders(contenders, args)
    ref = results['official (scipy)']
    print('\nODE sampler')
    for name, (sec, (x, nfe)) in results.items():
      diff = (x.float().cpu() - ref[1][0].float().cpu()).abs().max()
      print(f'  {name:36s} {sec:8.2f} s  nfe {nfe:4d}  {sec / nfe * 1e3:7.1f} ms/eval  '
            f'max |Δx| vs official {diff:.2e}  speed-up ×{ref[0] / sec:.2f} '
            f'(per eval ×{ref[0] / ref[1][1] / (sec / nfe):.2f})')


def warm_up(model, sde, data):
  """One forward, one VJP and one tiny torchdiffeq solve, so that first-call costs time nobody."""
  labels = sde.model_labels(torch.full((data.shape[0],), 0.5, device=data.device), True)
  x = data.detach().clone().requires_grad_(True)
  torch.autograd.grad(model(x, labels).sum(), x)
  sampling.solve_ode(lambda t, y: -y, torch.ones(3, device=data.device), 0., 1.)


def run_contenders(contenders, args):
  """Best wall time of ``args.repeats`` alternating runs and the last output of each contender."""
  best = {name: (float('inf'), None) for name in contenders}
  for _ in range(args.repeats):
    for name, fn in contenders.items():
      sec, out = timed(fn, args.device)
      best[name] = (min(best[name][0], sec), out)
  return best


if __name__ == '__main__':
  main()
