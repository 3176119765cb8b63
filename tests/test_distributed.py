"""torchrun on the CPU (gloo): two processes train and evaluate like one process with the same global batch and
seed — the same weights (to float tolerance), one log and one TensorBoard file, checkpoints that resume with
another number of processes, the same evaluation numbers — and a refused start stops both with one line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import run_lib
from configs.toy.gmm2d import get_config as toy_config
from evaluation import run as evaluation_run

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
  not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
  reason='torch.distributed with the gloo backend is not available')

# The toy: a 32-32 MLP, 12 steps of --task square (retain and forget terms), a snapshot with samples at step 6.
TOY = {'device': 'cpu', 'training.n_iters': 12, 'training.snapshot_freq': 6,
       'training.snapshot_freq_for_preemption': 6, 'training.log_freq': 3, 'training.eval_freq': 4,
       'training.batch_size': 64, 'training.batch_size_un': 32, 'training.snapshot_sampling': True,
       'training.snapshot_num_samples': 16, 'data.num_train': 1000, 'data.num_test': 200,
       'model.hidden_dims': (32, 32), 'model.num_scales': 50, 'eval.num_samples': 100, 'eval.batch_size': 32,
       'eval.enable_bpd': True, 'eval.bpd_num_samples': 64, 'sampling.ode_rtol': 1e-3, 'sampling.ode_atol': 1e-3}
# The 8x8 digits (configs/mnist/mnist5k_small.py on DIGITS8X8): a DDPM++ of nf 8, random flips and
# dequantisation (each process augments its rows).
DIGITS = {'device': 'cpu', 'data.dataset': 'DIGITS8X8', 'data.image_size': 8, 'data.num_channels': 1,
          'data.random_flip': True, 'data.uniform_dequantization': True, 'model.nf': 8, 'model.ch_mult': (1, 2),
          'model.num_res_blocks': 1, 'model.num_scales': 50, 'model.dropout': 0., 'training.n_iters': 4,
          'training.snapshot_freq': 2, 'training.snapshot_freq_for_preemption': 2, 'training.log_freq': 1,
          'training.eval_freq': 0, 'training.batch_size': 16, 'training.batch_size_un': 8,
          'training.snapshot_sampling': False}


def make_config(base, overrides, **more):
  config = base()
  for key, value in dict(overrides, **more).items():
    section, _, name = key.rpartition('.')
    (config[section] if section else config)[name] = value
  return config


def digits_base():
  from configs.mnist.mnist5k_small import get_config
  return get_config()


def flags(overrides, **more):
  return [f'--config.{k}={v}' for k, v in dict(overrides, **more).items()]


def launch(config_file, workdir, mode, overrides, task='square', extra=(), nproc=2, **more):
  """``torchrun --nproc_per_node=2 --standalone main.py …`` on the CPU; returns the finished process."""
  cmd = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={nproc}', '--standalone',
         'main.py', f'--config={config_file}', f'--workdir={workdir}', f'--mode={mode}', f'--task={task}',
         '--progress=false', *extra, *flags(overrides, **more)]
  env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def ok(proc):
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
  return proc


def weights(path):
  saved = torch.load(path, weights_only=True)
  return saved['model'], saved['ema']['shadow_params'], saved


def assert_same_weights(a, b, atol=1e-6):
  (ma, ea, _), (mb, eb, _) = weights(a), weights(b)
  assert list(ma) == list(mb)   # the same keys (module. prefix of the official layout), in the same order
  for key in ma:
    torch.testing.assert_close(ma[key], mb[key], rtol=0, atol=atol, msg=key)
  for x, y in zip(ea, eb, strict=True):
    torch.testing.assert_close(x, y, rtol=0, atol=atol)


@pytest.fixture(scope='module')
def toy_runs(tmp_path_factory):
  """One process for 12 steps, and two processes for 6 steps resumed by one process to 12."""
  root = tmp_path_factory.mktemp('toy')
  run_lib.train(make_config(toy_config, TOY), str(root / 'one'), 'square', progress=False)
  proc = ok(launch('configs/toy/gmm2d.py', root / 'two', 'train', TOY, **{'training.n_iters': 6}))
  return root, proc


def test_two_processes_train_like_one(toy_runs):
  root, proc = toy_runs
  assert_same_weights(root / 'two' / 'checkpoints' / 'checkpoint_1.pth', root / 'one' / 'checkpoints' / 'checkpoint_1.pth')
  two = root / 'two'
  assert len(os.listdir(two / 'tensorboard')) == 1          # rank 0 alone writes TensorBoard …
  log = (two / 'stdout.txt').read_text()
  assert log.count('world size 2, per-rank batch 32 (global 64), per-rank forget batch 16 (global 32)') == 1
  assert log.count('step 6: loss') == 1 and log.count('step 4: eval_loss') == 1   # … and the log, once
  one_log = (root / 'one' / 'stdout.txt').read_text()
  line = [s for s in log.splitlines() if 'step 6: loss' in s][0].split('INFO ')[1]
  assert line in one_log                                     # the logged loss is the batch's (same digits)
  assert proc.stderr.count('step 6: loss') == 1                # rank 1 does not log to the console either
  assert sorted(os.listdir(two / 'samples')) == ['iter_6']
  stats = json.loads((two / run_lib.STATS_FILENAME).read_text())
  assert stats['segments'][0]['processes'] == 2


def test_a_two_process_checkpoint_resumes_in_one_process(toy_runs):
  root, _ = toy_runs
  state = run_lib.train(make_config(toy_config, TOY), str(root / 'two'), 'square', progress=False)
  assert state['step'] == 12
  assert_same_weights(root / 'two' / 'checkpoints' / 'checkpoint_2.pth', root / 'one' / 'checkpoints' / 'checkpoint_2.pth')


def test_distributed_evaluation_equals_one_process(toy_runs):
  root, _ = toy_runs
  one = evaluation_run.evaluate(make_config(toy_config, TOY), str(root / 'one'), 'square', 'eval1', progress=False)
  ok(launch('configs/toy/gmm2d.py', root / 'one', 'eval', TOY, extra=['--eval_folder=eval2']))
  two = json.loads((root / 'one' / 'eval2' / 'results.json').read_text())
  ur1, ur2 = one['unlearning_ratio'], two['unlearning_ratio']
  assert ur2['num_samples'] == ur1['num_samples'] == 100
  assert (ur2['num_forget'], ur2['class_histogram']) == (ur1['num_forget'], ur1['class_histogram'])
  for part in ('retain', 'forget'):
    assert two['nll_bpd'][part]['n'] == one['nll_bpd'][part]['n'] == {'retain': 64, 'forget': 40}[part]
    assert two['nll_bpd'][part]['mean'] == pytest.approx(one['nll_bpd'][part]['mean'], rel=1e-9, abs=1e-9)
  assert two['sampler']['nfe'] == one['sampler']['nfe']
  assert len(os.listdir(root / 'one' / 'eval2' / 'tensorboard')) == 1


def test_a_one_process_checkpoint_resumes_in_two_on_the_digits(tmp_path):
  """A tiny image config: 2 steps in one process, then 2 more in two processes (flips, dequantisation and the
  draws of t and z are the batch's in both), against 4 steps in one process."""
  run_lib.train(make_config(digits_base, DIGITS), str(tmp_path / 'one'), 'obtuse', progress=False)
  run_lib.train(make_config(digits_base, DIGITS, **{'training.n_iters': 2}), str(tmp_path / 'mixed'), 'obtuse',
                progress=False)
  ok(launch('configs/mnist/mnist5k_small.py', tmp_path / 'mixed', 'train', DIGITS, task='obtuse'))
  assert_same_weights(tmp_path / 'mixed' / 'checkpoints' / 'checkpoint_2.pth',
                      tmp_path / 'one' / 'checkpoints' / 'checkpoint_2.pth', atol=1e-5)
  log = (tmp_path / 'mixed' / 'stdout.txt').read_text()
  assert log.count('world size 2, per-rank batch 8 (global 16)') == 1 and log.count('world size 1') == 1


def test_exit_now_flushes_the_output_and_keeps_the_status():
  """A process of a group leaves without the interpreter's teardown: what it printed and logged (buffered,
  since stdout is a pipe) still arrives, and the exit status is the one asked for."""
  code = ('import sys; from absl import logging; import runtime; print("printed", end=""); '
          'sys.stderr.write("written"); logging.get_absl_handler(); logging.warning("logged"); '
          'runtime.exit_now(3); print("never")')
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONUNBUFFERED'}
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                        env=env)
  assert proc.returncode == 3
  assert proc.stdout == 'printed'
  assert 'written' in proc.stderr and 'logged' in proc.stderr
