"""Training, sampling and likelihood throughput of this project against the official code path, side by side.

Usage (from the repository root):
    python3 benchmarks/throughput.py --quick                  # CPU, a few minutes: the CPU configs (2-D toy,
                                                              # MNIST DDPM++) and the CIFAR-10 configs at batch 2
    python3 benchmarks/throughput.py --device cuda            # GPU: the CIFAR-10 configs at batch 128, every
                                                              # option, model FLOPs utilisation (MFU)
    python3 benchmarks/throughput.py --configs ddpmpp --device cuda --json out.json

Contenders, all in the same process, from the same weights and batches (rates: best of ``--repeats``
interleaved rounds, after warm-up steps that are not timed; a compiled variant's warm-up time is printed):
  * ``official`` (the baseline, implemented in this file): the straightforward path of score_sde and the MSGM
    fork — fp32, the network wrapped in ``nn.DataParallel``, Adam with PyTorch's default implementation, the
    EMA updated tensor by tensor and ``loss.item()`` read every step; sampling with the predictor loop written
    out op by op; likelihoods with scipy's RK45 on the host (two network passes per evaluation,
    ``benchmarks/bench_likelihood_ode.py``);
  * ``fp32``: this project's training step (``run_lib``: ``unlearning.get_step_fn`` with the loss watched on the
    device, nothing read back), its samplers (``sampling.get_sampling_fn``) and likelihood
    (``likelihood.get_likelihood_fn``: torchdiffeq on the device, one forward and one VJP per evaluation);
  * the speed options alone (``bf16``, ``fp16`` (CUDA), ``channels_last`` (images), ``compile``, ``fused``) and
    together (``fast``: bf16 + channels_last + compile + fused Adam; ``fast-eager``: the same without compile).

The training task is ``standard`` (the objective of score_sde). Sampling uses Euler–Maruyama without corrector
on both sides with ``--sample-steps`` steps (a per-step cost: images/s scale with 1/steps). On CUDA the MFU
is the FLOPs of one training step (forward + backward, counted by ``torch.utils.flop_counter``) times the
steps per second, over the device's bf16 matrix-multiply rate measured in the same job.
"""
import argparse
import importlib
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import likelihood  # noqa: E402
import losses  # noqa: E402
import run_lib  # noqa: E402
import runtime  # noqa: E402
import sampling  # noqa: E402
import sde_lib  # noqa: E402
import unlearning  # noqa: E402
from configs import default_configs  # noqa: E402
from models import utils as mutils  # noqa: E402
from tensor_utils import append_dims  # noqa: E402
from train_state import create_state  # noqa: E402

CONFIGS = {
  'toy': ('configs.toy.gmm2d', '2-D toy, MLP 128x3'),
  'mnist': ('configs.mnist.mnist5k_small', 'MNIST 28x28, DDPM++ nf 16'),
  'ddpm': ('configs.vp.ddpm.cifar10', 'CIFAR-10 DDPM (discrete VP)'),
  'ddpmpp': ('configs.vp.cifar10_ddpmpp_continuous', 'CIFAR-10 DDPM++ (continuous VP)'),
  'ncsnpp': ('configs.ve.cifar10_ncsnpp_continuous', 'CIFAR-10 NCSN++ (continuous VE)'),
}
CPU_CONFIGS = ('toy', 'mnist')

OPTIONS = {
  'fp32': {},
  'bf16': {'training.precision': 'bf16'},
  'fp16': {'training.precision': 'fp16'},
  'channels_last': {'training.channels_last': True},
  'compile': {'training.compile': 'default'},
  'fused': {'optim.fused': True},
  'fast-eager': {'training.precision': 'bf16', 'training.channels_last': True, 'optim.fused': True},
  'fast': {'training.precision': 'bf16', 'training.channels_last': True, 'training.compile': 'default',
           'optim.fused': True},
}


def load_config(name, device, batch=None, sample_steps=None):
  config = importlib.import_module(CONFIGS[name][0]).get_config()
  config = default_configs.with_defaults(config)
  config.device = device.type
  if batch:
    config.training.batch_size = config.training.batch_size_un = batch
  if sample_steps and config.training.continuous:   # a discrete model keeps its N (β_max/N < 1)
    config.model.num_scales = sample_steps
  return config


def with_options(config, options):
  """A copy of ``config`` with a variant's options (channels_last left out for the 2-D toy: it has no images)."""
  config = default_configs.with_defaults(config.copy_and_resolve_references())
  for key, value in options.items():
    if key == 'training.channels_last' and len(item_shape(config)) != 3:
      continue
    section, name = key.split('.')
    config[section][name] = value
  return config


def item_shape(config):
  if config.data.dataset.upper() == 'GMM2D':
    return (config.data.num_channels,)
  return (config.data.num_channels, config.data.image_size, config.data.image_size)


def sync(device):
  if device.type == 'cuda':
    torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------------------
# The baseline: the official code path (score_sde / MSGM fork), written out here


class OfficialTrainer:
  """score_sde's training step as its code runs it: DataParallel, PyTorch's default Adam, linear warm-up and
  clipping, a per-tensor EMA, ``loss.item()`` after every step."""

  def __init__(self, config, device):
    self.config, self.device = config, device
    net = mutils.get_model(config.model.name)(config).to(device)
    self.net = net
    self.model = torch.nn.DataParallel(net)
    self.sde = sde_lib.get_sde(config)
    o = config.optim
    self.optimizer = torch.optim.Adam(net.parameters(), lr=o.lr, betas=(o.beta1, 0.999), eps=o.eps,
                                      weight_decay=o.weight_decay)
    self.ema = [p.clone().detach() for p in net.parameters() if p.requires_grad]
    self.step_count = 0
    self.losses = []

  def loss(self, batch):
    c, sde = self.config.training, self.sde
    b = batch.shape[0]
    reduce = (lambda v: v.mean(dim=-1)) if c.reduce_mean else (lambda v: 0.5 * v.sum(dim=-1))
    if c.continuous:
      score_fn = mutils.get_score_fn(sde, self.model, train=True, continuous=True)
      t = torch.rand(b, device=batch.device) * (sde.T - c.eps) + c.eps
      z = torch.randn_like(batch)
      mean, std = sde.marginal_prob(batch, t)
      score = score_fn(mean + append_dims(std, batch.ndim) * z, t)
      per_sample = torch.square(score * append_dims(std, batch.ndim) + z)
    else:   # the DDPM (VP) / SMLD (VE) losses on the discrete noise levels
      index = torch.randint(0, sde.N, (b,), device=batch.device)
      coeff, std = sde.discrete_marginal(index)
      z = torch.randn_like(batch)
      noisy = append_dims(coeff.float(), batch.ndim) * batch + append_dims(std.float(), batch.ndim) * z
      self.model.train(True)
      out = self.model(noisy, index)
      per_sample = torch.square(out - z) if sde.predicts_noise else torch.square(out * append_dims(std, batch.ndim) + z)
    return torch.mean(reduce(per_sample.reshape(b, -1)))

  def step(self, batch):
    o = self.config.optim
    loss = self.loss(batch)
    self.optimizer.zero_grad()
    loss.backward()
    if o.warmup > 0:
      for g in self.optimizer.param_groups:
        g['lr'] = o.lr * np.minimum(self.step_count / o.warmup, 1.0)
    if o.grad_clip >= 0:
      torch.nn.utils.clip_grad_norm_(self.net.parameters(), max_norm=o.grad_clip)
    self.optimizer.step()
    self.step_count += 1
    decay = min(self.config.model.ema_rate, (1 + self.step_count) / (10 + self.step_count))
    with torch.no_grad():
      for s, p in zip(self.ema, [p for p in self.net.parameters() if p.requires_grad]):
        s.sub_((1 - decay) * (s - p))
    self.losses.append(loss.item())


def official_sampler(sde, model, z, eps, continuous):
  """The Euler–Maruyama predictor loop of score_sde's ``pc_sampler`` (no corrector), op by op."""
  score_fn = mutils.get_score_fn(sde, model, train=False, continuous=continuous)
  rsde = sde.reverse(score_fn, probability_flow=False)
  with torch.no_grad():
    x = z
    timesteps = torch.linspace(sde.T, eps, sde.N, device=z.device)
    x_mean = x
    for i in range(sde.N):
      vec_t = torch.ones(z.shape[0], device=z.device) * timesteps[i]
      dt = -1. / sde.N
      noise = torch.randn_like(x)
      drift, diffusion = rsde.sde(x, vec_t)
      x_mean = x + drift * dt
      x = x_mean + append_dims(diffusion, x.ndim) * np.sqrt(-dt) * noise
    return x_mean


# ----------------------------------------------------------------------------------------------------------
# This project's paths


class OurTrainer:
  """run_lib's step: ``unlearning.get_step_fn`` (with a ``runtime.StepEngine`` for the options) and the device-side
  ``run_lib.LossMonitor``; nothing is read back to the host."""

  def __init__(self, config, device):
    self.state = create_state(config, device)
    sde = sde_lib.get_sde(config)
    objective = unlearning.build_objective('standard', config, sde, None, device, self.state['model'])
    s = runtime.check_speed_options(config, device, len(item_shape(config)) == 3)
    engine = None
    if runtime.needs_engine(config):
      engine = runtime.StepEngine(self.state['model'], device, s['precision'], s['channels_last'], s['compile'],
                                  config.seed, self.state['optimizer'])
    self.step_fn = unlearning.get_step_fn(objective, True, losses.optimization_manager(config), engine)
    self.monitor = run_lib.LossMonitor()
    self.net = self.state['model']

  def step(self, batch):
    out = self.step_fn(self.state, batch)
    self.monitor.update(out['loss'], int(self.state['step']))


# ----------------------------------------------------------------------------------------------------------
# Measurements


def make_batches(config, batch, device, count=4, seed=0):
  g = torch.Generator().manual_seed(seed)
  scaler = (lambda x: 2. * x - 1.) if config.data.centered else (lambda x: x)
  return [scaler(torch.rand((batch,) + item_shape(config), generator=g)).to(device) for _ in range(count)]


def training_flops(trainer, batch):
  """FLOPs of one forward + backward pass of the network on ``batch`` (matrix multiplies and convolutions)."""
  from torch.utils.flop_counter import FlopCounterMode
  counter = FlopCounterMode(display=False)
  with counter:
    trainer.loss(batch).backward()
  trainer.optimizer.zero_grad()
  return counter.get_total_flops()


def matmul_peak(device, n=8192, iters=20):
  """Measured bf16 matrix-multiply rate of the device (FLOP/s)."""
  a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
  b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
  for _ in range(3):
    a @ b
  sync(device)
  start = time.perf_counter()
  for _ in range(iters):
    a @ b
  sync(device)
  return 2. * n ** 3 * iters / (time.perf_counter() - start)


def bench_training(name, config, variants, device, steps, warmup, repeats, log):
  """``{variant: {'rate': steps/s, 'warmup_s', 'params'} or {'error'}}`` for one config."""
  batches = make_batches(config, config.training.batch_size, device)
  trainers, results = {}, {}
  for variant in variants:
    try:
      torch.manual_seed(config.seed)
      if variant == 'official':
        trainer = OfficialTrainer(config, device)
      else:
        trainer = OurTrainer(with_options(config, OPTIONS[variant]), device)
      start = time.perf_counter()
      for i in range(warmup):
        trainer.step(batches[i % len(batches)])
      sync(device)
      results[variant] = {'warmup_s': time.perf_counter() - start}
      trainers[variant] = trainer
    except Exception as e:   # noqa: BLE001  (a variant this machine cannot run is reported, not fatal)
      results[variant] = {'error': ' '.join(str(e).split())[:200]}
      log(f'  {name}: {variant} not measured: {results[variant]["error"]}')
  for _ in range(repeats):
    for variant, trainer in trainers.items():
      sync(device)
      start = time.perf_counter()
      for i in range(steps):
        trainer.step(batches[i % len(batches)])
      sync(device)
      rate = steps / (time.perf_counter() - start)
      results[variant]['rate'] = max(results[variant].get('rate', 0.), rate)
  if device.type == 'cuda' and 'official' in trainers:
    flops = training_flops(trainers['official'], batches[0])
    for r in results.values():
      r['flops_per_step'] = flops
  return results


def perturbed_model(config, device, seed):
  """A network whose zero-initialised layers are perturbed, so that its drift is not trivially linear."""
  torch.manual_seed(seed)
  model = mutils.create_model(config, device).eval()
  with torch.no_grad():
    for p in model.parameters():
      if p.abs().max() < 1e-6:
        p.add_(0.02 * torch.randn_like(p))
  return model


def bench_sampling(config, batch, device, repeats, seed=0):
  cfg = config.copy_and_resolve_references()
  cfg.sampling.method, cfg.sampling.predictor, cfg.sampling.corrector = 'pc', 'euler_maruyama', 'none'
  sde = sde_lib.get_sde(cfg)
  model = perturbed_model(cfg, device, seed)
  eps = sampling.resolve_eps(cfg, sde)
  shape = (batch,) + item_shape(cfg)
  z = sde.prior_sampling(shape, generator=torch.Generator().manual_seed(seed + 1)).to(device)
  ours = sampling.get_sampling_fn(cfg, sde, shape, lambda x: x, eps)
  contenders = {'official': lambda: official_sampler(sde, model, z, eps, cfg.training.continuous),
                'fp32': lambda: ours(model, z=z)}
  return _interleaved(contenders, batch, device, repeats), sde.N


def bench_likelihood(config, batch, device, repeats, rtol, seed=0):
  import bench_likelihood_ode
  sde = sde_lib.get_sde(config)
  model = perturbed_model(config, device, seed)
  inverse = (lambda x: (x + 1.) / 2.) if config.data.centered else (lambda x: x)
  g = torch.Generator().manual_seed(seed + 2)
  data = ((2. * torch.rand((batch,) + item_shape(config), generator=g) - 1.) if config.data.centered else
          torch.rand((batch,) + item_shape(config), generator=g)).to(device)
  probe = likelihood.draw_probe(data, 'Rademacher', torch.Generator().manual_seed(seed + 3))
  ours = likelihood.get_likelihood_fn(sde, inverse, rtol=rtol, atol=rtol, eps=1e-5, exact_divergence=False)
  contenders = {
    'official': lambda: bench_likelihood_ode.official_likelihood(sde, model, data, probe, inverse, rtol, rtol, 'RK45',
                                                                 1e-5),
    'fp32': lambda: ours(model, data, torch.Generator().manual_seed(seed + 3)),
  }
  return _interleaved(contenders, batch, device, repeats)


def _interleaved(contenders, batch, device, repeats):
  out = {name: {'rate': 0.} for name in contenders}
  for name, fn in contenders.items():   # warm-up (first-call costs, CUDA graph capture)
    fn()
  for _ in range(repeats):
    for name, fn in contenders.items():
      sync(device)
      start = time.perf_counter()
      fn()
      sync(device)
      out[name]['rate'] = max(out[name]['rate'], batch / (time.perf_counter() - start))
  return out


# ----------------------------------------------------------------------------------------------------------


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--device', default='cpu', help='cpu | cuda')
  parser.add_argument('--quick', action='store_true', help='CPU-sized: the CIFAR-10 configs at batch 2, few steps, '
                                                           'no compile')
  parser.add_argument('--configs', default='', help=f'comma-separated, of {", ".join(CONFIGS)} (default: all)')
  parser.add_argument('--variants', default='', help=f'training variants, of official, {", ".join(OPTIONS)} '
                                                     '(default: every one the device supports)')
  parser.add_argument('--compile-configs', default=None,
                      help='configs whose compiled variants are measured (default: all; --quick: none)')
  parser.add_argument('--batch', type=int, default=0, help='training batch (default: the config\'s; --quick: 2 for '
                                                          'CIFAR-10)')
  parser.add_argument('--steps', type=int, default=0, help='timed training steps per round')
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--sample-steps', type=int, default=0, help='sampler steps (default 100; --quick: 20)')
  parser.add_argument('--skip-sampling', action='store_true')
  parser.add_argument('--skip-likelihood', action='store_true')
  parser.add_argument('--rtol', type=float, default=0., help='likelihood tolerances (default 1e-5; --quick: 1e-3)')
  parser.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: as is)')
  parser.add_argument('--json', default='', help='write the results to this file')
  args = parser.parse_args(argv)
  device = torch.device(args.device)
  if device.type == 'cuda' and not torch.cuda.is_available():
    parser.error('--device cuda: CUDA is not available')
  if args.threads:
    torch.set_num_threads(args.threads)
  names = [n for n in args.configs.split(',') if n] or list(CONFIGS)
  unknown = [n for n in names if n not in CONFIGS]
  if unknown:
    parser.error(f'unknown configs {unknown}; valid: {", ".join(CONFIGS)}')
  compile_configs = (args.compile_configs.split(',') if args.compile_configs is not None else
                     ([] if args.quick else names))
  sample_steps = args.sample_steps or (20 if args.quick else 100)
  rtol = args.rtol or (1e-3 if args.quick else 1e-5)

  def log(msg):
    print(msg, flush=True)

  dev_name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU ({os.cpu_count()} cores, ' \
    f'{torch.get_num_threads()} torch threads)'
  log(f'device: {dev_name}; torch {torch.__version__}; quick={args.quick}')
  peak = matmul_peak(device) if device.type == 'cuda' else None
  if peak:
    log(f'measured bf16 matmul rate (8192^3): {peak / 1e12:.1f} TFLOP/s')
  report = {'device': dev_name, 'torch': torch.__version__, 'argv': sys.argv[1:], 'peak_bf16_flops': peak,
            'training': {}, 'sampling': {}, 'likelihood': {}}
  for name in names:
    small = name in CPU_CONFIGS
    batch = args.batch or (2 if args.quick and not small else 0)
    config = load_config(name, device, batch or None, sample_steps)
    variants = [v for v in args.variants.split(',') if v] or ['official'] + list(OPTIONS)
    variants = [v for v in variants if v == 'official' or _applies(v, config, device, name in compile_configs)]
    steps = args.steps or ({'toy': 100, 'mnist': 10}.get(name, 3) if args.quick else
                           (50 if device.type == 'cuda' else {'toy': 200, 'mnist': 20}.get(name, 3)))
    log(f'\n[{name}] {CONFIGS[name][1]}: training batch {config.training.batch_size}, {steps} steps x '
        f'{args.repeats} rounds; variants {", ".join(variants)}')
    report['training'][name] = bench_training(name, config, variants, device, steps, args.warmup, args.repeats, log)
    log('  training steps/s: ' + ', '.join(f"{v} {r['rate']:.3g}" for v, r in report['training'][name].items()
                                          if 'rate' in r))
    if small or not args.quick:
      if not args.skip_sampling:
        sbatch = {'toy': 512, 'mnist': 16}.get(name, 2) if args.quick else \
          ({'toy': 2000, 'mnist': 128}.get(name, 128) if device.type == 'cuda' else {'toy': 512}.get(name, 8))
        res, n = bench_sampling(config, sbatch, device, args.repeats)
        report['sampling'][name] = dict(res, batch=sbatch, steps=n)
        log('  sampling images/s: ' + ', '.join(f"{v} {res[v]['rate']:.3g}" for v in ('official', 'fp32')))
      if not args.skip_likelihood:
        lbatch = {'toy': 256, 'mnist': 4}.get(name, 2) if args.quick else \
          ({'toy': 1000}.get(name, 64) if device.type == 'cuda' else {'toy': 256}.get(name, 4))
        report['likelihood'][name] = dict(bench_likelihood(config, lbatch, device, args.repeats, rtol), batch=lbatch,
                                          rtol=rtol)
        log('  likelihood images/s: ' + ', '.join(f"{v} {report['likelihood'][name][v]['rate']:.3g}"
                                                  for v in ('official', 'fp32')))
  print_table(report, log)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(report, f, indent=2)
  return report


def _applies(variant, config, device, compile_ok):
  options = OPTIONS[variant]
  if options.get('training.precision') == 'fp16' and device.type != 'cuda':
    return False
  if options.get('training.channels_last') and len(item_shape(config)) != 3:
    return variant.startswith('fast')   # the fast sets leave channels_last out on 2-D data (with_options)
  if options.get('training.compile') and not compile_ok:
    return False
  return True


def print_table(report, log):
  log('\n| config | measure | variant | rate | x official | x fp32 | MFU |')
  log('|---|---|---|---|---|---|---|')
  peak = report.get('peak_bf16_flops')
  best = {}
  for name, results in report['training'].items():
    base, plain = results.get('official', {}).get('rate'), results.get('fp32', {}).get('rate')
    for variant, r in results.items():
      if 'rate' not in r:
        log(f'| {name} | training | {variant} | — ({r.get("error", "not run")}) | | | |')
        continue
      mfu = f'{100 * r["flops_per_step"] * r["rate"] / peak:.1f}%' if peak and r.get('flops_per_step') else ''
      note = f' (warm-up {r["warmup_s"]:.0f} s)' if 'compile' in variant or variant == 'fast' else ''
      log(f'| {name} | training steps/s | {variant}{note} | {r["rate"]:.3g} | {_ratio(r["rate"], base)} | '
          f'{_ratio(r["rate"], plain)} | {mfu} |')
      if variant != 'official' and base:
        best[name] = max(best.get(name, (0., ''))[:2], (r['rate'] / base, variant))
  for kind, unit in (('sampling', 'images/s'), ('likelihood', 'images/s')):
    for name, results in report[kind].items():
      base = results['official']['rate']
      extra = f"{results['steps']} steps" if kind == 'sampling' else f"rtol {results['rtol']}"
      for variant in ('official', 'fp32'):
        rate = results[variant]['rate']
        log(f'| {name} | {kind} {unit} (batch {results["batch"]}, {extra}) | {variant} | {rate:.3g} | '
            f'{_ratio(rate, base)} | | |')
  log('\nTargets (training, this project against official):')
  cuda = peak is not None
  for name, (ratio, variant) in best.items():
    goal = 1.5 if cuda else 1.0
    log(f'  {name}: best {variant} {ratio:.2f}x (target >= {goal}x on {"a GPU" if cuda else "the CPU"}): '
        f'{"met" if ratio >= goal else "NOT met"}')
  if cuda and 'ddpmpp' in report['training']:
    r = report['training']['ddpmpp']
    fast = r.get('fast', {})
    if fast.get('rate') and fast.get('flops_per_step'):
      mfu = fast['flops_per_step'] * fast['rate'] / peak
      log(f'  ddpmpp: MFU of fast {100 * mfu:.1f}% (target >= 40% on an H100): {"met" if mfu >= 0.4 else "NOT met"}')


def _ratio(value, base):
  return f'{value / base:.2f}' if base else ''


if __name__ == '__main__':
  main()
