"""Speed options of the training step (``training.precision``, ``channels_last``, ``compile``, ``optim.fused``,
``pin_memory``): what they compute on the CPU, the refusals of those a device or data set cannot use, and no
value read back to the host inside the step; on a GPU, the fast combination, fp16 loss scaling and a step
without host synchronisation."""
import os
import sys

import pytest
import torch

import losses
import run_lib
import runtime
import sde_lib
import unlearning
import utils
from configs import default_configs
from toy_configs import tiny_toy_config
from train_state import create_state

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA is not available')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def toy(n_iters=6, **options):
  config = tiny_toy_config(n_iters=n_iters, num_train=400, num_test=100, width=16)
  t = config.training
  t.snapshot_sampling, t.eval_freq, t.log_freq, t.batch_size, t.batch_size_un = False, 0, 3, 64, 32
  return _with(config, options)


def digits(n_iters=2, **options):
  from configs.mnist.mnist5k_small import get_config
  config = get_config()
  config.data.dataset, config.data.image_size, config.data.num_channels = 'DIGITS8X8', 8, 1
  config.model.nf, config.model.ch_mult, config.model.num_res_blocks, config.model.num_scales = 8, (1, 2), 1, 50
  config.model.dropout = 0.
  t = config.training
  t.n_iters = t.snapshot_freq = t.snapshot_freq_for_preemption = n_iters
  t.log_freq, t.eval_freq, t.batch_size, t.batch_size_un, t.snapshot_sampling = 1, 0, 16, 8, False
  config.device = 'cpu'
  return _with(config, options)


def _with(config, options):
  for key, value in options.items():
    section, name = key.split('.')
    config[section][name] = value
  return config


def params(state):
  return [p.detach().clone() for p in state['model'].parameters()]


def close(a, b, atol):
  for x, y in zip(a, b, strict=True):
    torch.testing.assert_close(x, y, rtol=0, atol=atol)


@pytest.mark.parametrize('options, message', [
  ({'training.precision': 'fp16'}, "precision='fp16' needs a CUDA device"),
  ({'training.precision': 'fp64'}, "unknown training.precision 'fp64'; valid: fp32, bf16, fp16"),
  ({'training.channels_last': True}, 'channels_last applies to image data'),
  ({'training.pin_memory': True}, 'pin_memory needs a CUDA device'),
  ({'training.compile': 'fastest'}, "unknown training.compile 'fastest'"),
])
def test_options_this_device_or_data_cannot_use_are_refused(tmp_path, options, message):
  with pytest.raises(ValueError, match=message):
    run_lib.train(toy(2, **options), str(tmp_path / 'w'), 'square', progress=False)
  assert not (tmp_path / 'w').exists()


def test_bf16_autocast_on_the_cpu_trains_close_to_fp32(tmp_path):
  fp32 = run_lib.train(toy(6), str(tmp_path / 'a'), 'square', progress=False)
  bf16 = run_lib.train(toy(6, **{'training.precision': 'bf16'}), str(tmp_path / 'b'), 'square', progress=False)
  assert utils.state_problem(bf16) is None
  assert all(p.dtype == torch.float32 for p in bf16['model'].parameters())   # weights and optimiser stay fp32
  close(params(fp32), params(bf16), atol=5e-3)
  assert 'precision bf16' in open(tmp_path / 'b' / 'stdout.txt').read()


def test_channels_last_gives_the_same_weights_and_checkpoints_that_resume_without_it(tmp_path):
  plain = run_lib.train(digits(3), str(tmp_path / 'plain'), 'obtuse', progress=False)
  fast = run_lib.train(digits(2, **{'training.channels_last': True}), str(tmp_path / 'cl'), 'obtuse', progress=False)
  conv = [p for p in fast['model'].parameters() if p.ndim == 4][0]
  assert conv.is_contiguous(memory_format=torch.channels_last)
  saved = torch.load(tmp_path / 'cl' / 'checkpoints-meta' / 'checkpoint.pth', weights_only=True)
  reference = torch.load(tmp_path / 'plain' / 'checkpoints' / 'checkpoint_1.pth', weights_only=True)
  assert list(saved['model']) == list(reference['model'])
  resumed = run_lib.train(digits(3), str(tmp_path / 'cl'), 'obtuse', progress=False)   # channels_last off now
  close(params(plain), params(resumed), atol=1e-5)


def test_fused_adam_matches_the_default_and_resumes_either_way(tmp_path):
  plain = run_lib.train(toy(6), str(tmp_path / 'plain'), 'square', progress=False)
  run_lib.train(toy(3, **{'optim.fused': True}), str(tmp_path / 'mixed'), 'square', progress=False)
  mixed = run_lib.train(toy(6), str(tmp_path / 'mixed'), 'square', progress=False)   # fused checkpoint, plain run
  assert mixed['optimizer'].param_groups[0]['fused'] in (None, False)
  close(params(plain), params(mixed), atol=1e-6)
  run_lib.train(toy(3), str(tmp_path / 'back'), 'square', progress=False)
  back = run_lib.train(toy(6, **{'optim.fused': True}), str(tmp_path / 'back'), 'square', progress=False)
  assert back['optimizer'].param_groups[0]['fused'] is True
  close(params(plain), params(back), atol=1e-6)


def test_compile_wraps_the_network_and_computes_the_same(tmp_path, monkeypatch):
  """``training.compile`` hands the network to ``torch.compile`` with its mode (here with dynamo's eager
  backend, so that the test does not wait for code generation)."""
  modes, compile_ = [], torch.compile

  def spy(module, mode=None, **kwargs):
    modes.append(mode)
    return compile_(module, backend='eager')

  monkeypatch.setattr(torch, 'compile', spy)
  plain = run_lib.train(toy(4), str(tmp_path / 'a'), 'square', progress=False)
  compiled = run_lib.train(toy(4, **{'training.compile': 'max-autotune'}), str(tmp_path / 'b'), 'square',
                           progress=False)
  assert modes == ['max-autotune']
  close(params(plain), params(compiled), atol=1e-6)


def _count_reads(monkeypatch):
  """Counts the project's reads of tensor values to the host (``item``, ``tolist``, ``float()``, ``int()``,
  ``bool()``); PyTorch's own internals are not counted."""
  counts = {'n': 0}
  project = [os.path.join(ROOT, name) for name in ('run_lib.py', 'runtime.py', 'losses.py', 'unlearning',
                                                    'models', 'sde_lib.py', 'datasets.py')]

  def wrap(name):
    original = getattr(torch.Tensor, name)

    def counted(self, *args, **kwargs):
      caller = sys._getframe(1).f_code.co_filename
      if any(caller.startswith(p) for p in project):
        counts['n'] += 1
      return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, name, counted)

  for name in ('item', 'tolist', '__float__', '__int__', '__bool__'):
    wrap(name)
  return counts


@pytest.mark.parametrize('options', [{}, {'training.precision': 'bf16'}])
def test_the_training_step_reads_nothing_back_to_the_host(tmp_path, monkeypatch, options):
  """The loss is checked on the device and read at log and save points only: a run of 40 steps reads as many
  values as a run of 20 with the same log and save points."""
  counts = _count_reads(monkeypatch)
  reads = []
  for n in (20, 40):
    config = toy(n, **options)
    t = config.training
    t.log_freq = t.snapshot_freq = t.snapshot_freq_for_preemption = n
    counts['n'] = 0
    run_lib.train(config, str(tmp_path / str(n)), 'square', progress=False)
    reads.append(counts['n'])
  assert reads[0] == reads[1]


# ----------------------------------------------------------------------------------------------------------
# CUDA


def _cuda_digits(**options):
  config = digits(3, **options)
  config.device = 'cuda'
  return config


@cuda
def test_cuda_bf16_channels_last_compile_fused_trains(tmp_path):
  options = {'training.precision': 'bf16', 'training.channels_last': True, 'training.compile': 'default',
             'optim.fused': True, 'training.pin_memory': True}
  plain = run_lib.train(_cuda_digits(), str(tmp_path / 'a'), 'obtuse', progress=False)
  fast = run_lib.train(_cuda_digits(**options), str(tmp_path / 'b'), 'obtuse', progress=False)
  assert utils.state_problem(fast) is None and fast['step'] == 3
  close(params(plain), params(fast), atol=2e-2)


@cuda
def test_cuda_fp16_scales_the_loss(tmp_path):
  state = run_lib.train(_cuda_digits(**{'training.precision': 'fp16'}), str(tmp_path / 'a'), 'obtuse', progress=False)
  assert utils.state_problem(state) is None and state['step'] == 3
  config = _cuda_digits(**{'training.precision': 'fp16'})
  with pytest.raises(run_lib.TrainingError, match="fp16' cannot scale the gradients that --task erasediff"):
    run_lib.train(config, str(tmp_path / 'b'), 'erasediff', progress=False)


@cuda
@pytest.mark.parametrize('options', [{}, {'training.precision': 'bf16', 'optim.fused': True},
                                     {'training.precision': 'fp16', 'optim.fused': True}])
def test_cuda_training_step_does_not_synchronise(options):
  """No host synchronisation inside a training step (``torch.cuda.set_sync_debug_mode('error')``)."""
  config = default_configs.with_defaults(_cuda_digits(**options))
  device = torch.device('cuda')
  state = create_state(config, device)
  sde = sde_lib.get_sde(config)
  objective = unlearning.build_objective('standard', config, sde, None, device, state['model'])
  engine = runtime.StepEngine(state['model'], device, config.training.precision) if runtime.needs_engine(config) \
    else None
  step_fn = unlearning.get_step_fn(objective, True, losses.optimization_manager(config), engine)
  monitor = run_lib.LossMonitor()
  x = torch.rand(16, 1, 8, 8, device=device) * 2 - 1
  for i in range(2):   # warm-up: lazy initialisations may synchronise once
    monitor.update(step_fn(state, x)['loss'], i)
  torch.cuda.synchronize()
  torch.cuda.set_sync_debug_mode('error')
  try:
    for i in range(2, 6):
      monitor.update(step_fn(state, x)['loss'], i)
  finally:
    torch.cuda.set_sync_debug_mode(0)
  assert monitor.check()[0] is None


def test_the_throughput_benchmark_runs_and_reports_each_contender(tmp_path):
  """``benchmarks/throughput.py`` on the toy, shrunk: every contender gets a positive rate and the same step
  count, and the JSON holds what the table printed."""
  sys.path.insert(0, ROOT)
  from benchmarks import throughput
  out = tmp_path / 'throughput.json'
  report = throughput.main(['--configs', 'toy', '--variants', 'official,fp32,bf16', '--steps', '2', '--warmup', '1',
                            '--repeats', '1', '--sample-steps', '5', '--rtol', '1e-2', '--json', str(out)])
  assert set(report['training']['toy']) == {'official', 'fp32', 'bf16'}
  assert all(r['rate'] > 0 for r in report['training']['toy'].values())
  for kind in ('sampling', 'likelihood'):
    assert report[kind]['toy']['official']['rate'] > 0 and report[kind]['toy']['fp32']['rate'] > 0
  assert report['sampling']['toy']['steps'] == 5
  import json
  assert json.loads(out.read_text())['training']['toy']['fp32']['rate'] == report['training']['toy']['fp32']['rate']
