"""Damaged and hostile input: non-finite weights are never loaded or saved, checkpoints carry a SHA-256, one
run per folder, and every bad command line ends with one error line and exit status 1."""
import json
import logging as py_logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import datasets
import run_lib
import utils
from evaluation import run as evaluation_run
from evaluation import unlearning_ratio as ur_lib
from evaluation.classifier import GMMClassifier
from configs.toy.gmm2d import get_config

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(n_iters=6, every=6):
  config = get_config()
  t = config.training
  t.n_iters, t.snapshot_freq, t.snapshot_freq_for_preemption = n_iters, every, every
  t.log_freq, t.eval_freq, t.snapshot_sampling = 3, 0, False
  t.batch_size, t.batch_size_un = 64, 32
  config.model.hidden_dims = (16, 16)
  config.model.embedding_dim = 8
  config.model.num_scales = 50
  config.data.num_train, config.data.num_test = 400, 100
  config.eval.num_samples, config.eval.batch_size = 50, 50
  config.sampling.ode_rtol = config.sampling.ode_atol = 1e-3
  config.device = 'cpu'
  return config


def cli(*args, cwd=ROOT, timeout=120, **kw):
  """Runs main.py; returns (exit status, stdout, stderr)."""
  p = subprocess.run([sys.executable, str(ROOT / 'main.py'), *args], cwd=cwd, capture_output=True, text=True,
                     timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS='1'), **kw)
  return p.returncode, p.stdout, p.stderr


def one_error_line(stderr):
  """The single ``error:`` line of a refused command (no traceback, printed once)."""
  assert 'Traceback' not in stderr, stderr
  errors = [line for line in stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1, stderr
  assert stderr.count(errors[0][len('error: '):][:40]) == 1, stderr   # not repeated by a logger
  return errors[0]


TOY = ['--config', str(ROOT / 'configs/toy/gmm2d.py'), '--mode', 'train', '--progress=false',
       '--config.training.n_iters=4', '--config.training.snapshot_freq=2',
       '--config.training.snapshot_freq_for_preemption=2', '--config.training.snapshot_sampling=False',
       '--config.data.num_train=400', '--config.data.num_test=100', '--config.model.hidden_dims=(16,16)',
       '--config.device=cpu']


# ----------------------------------------------------------------------------------------------------------
# Non-finite state


def poison(path, where, value, index=0):
  """Rewrites the checkpoint at ``path`` with ``value`` at one entry of its model or EMA weights."""
  ckpt = torch.load(path, weights_only=True)
  if where == 'model':
    key = sorted(ckpt['model'])[index]
    ckpt['model'][key].view(-1)[0] = value
  else:
    ckpt['ema']['shadow_params'][index].view(-1)[0] = value
  ckpt.pop('sha256', None)   # as a tool that edits weights would leave it: no (stale) digest
  torch.save(ckpt, path)
  return key[len(utils.MODULE_PREFIX):] if where == 'model' else None


@pytest.mark.parametrize('where,value', [('model', float('nan')), ('model', float('inf')), ('ema', float('-inf')),
                                         ('ema', 1e30)])
def test_non_finite_checkpoint_is_refused_by_resume_finetune_and_eval(tmp_path, where, value):
  run_lib.train(tiny_config(6), str(tmp_path / 'src'), 'standard', progress=False)
  src = tmp_path / 'src' / 'checkpoints' / 'checkpoint_1.pth'
  key = poison(src, where, value)
  named = f"'{key}'" if key else "'ema:"
  # --finetune
  config = tiny_config(6)
  config.training.pretrained = str(src)
  with pytest.raises(utils.CheckpointError, match=f"refusing .*checkpoint_1.pth: {named}"):
    run_lib.train(config, str(tmp_path / 'ft'), 'orthogonal', finetune=True, progress=False)
  assert not (tmp_path / 'ft').exists()   # the refused start left no work directory
  # --mode eval
  config = tiny_config(6)
  config.eval.enable_sampling, config.eval.enable_bpd = True, False
  (tmp_path / 'src' / 'checkpoints-meta' / 'checkpoint.pth').unlink()
  with pytest.raises(utils.CheckpointError, match='blown up|NaN|inf'):
    evaluation_run.evaluate(config, str(tmp_path / 'src'), 'standard', progress=False)
  assert not (tmp_path / 'src' / 'eval').exists()
  # resume
  resume = tmp_path / 'src' / 'checkpoints-meta' / 'checkpoint.pth'
  resume.parent.mkdir(exist_ok=True)
  resume.write_bytes(src.read_bytes())
  with pytest.raises(utils.CheckpointError, match='refusing'):
    run_lib.train(tiny_config(12), str(tmp_path / 'src'), 'standard', progress=False)
  assert resume.read_bytes() == src.read_bytes()


def test_weights_problem_names_the_tensor():
  ok = torch.ones(3)
  assert utils.weights_problem([('a', ok), ('b', torch.arange(3))]) is None
  bad = torch.tensor([1., float('nan'), float('nan'), float('inf')])
  assert utils.weights_problem([('a', ok), ('b', bad)]) == "'b' holds 2 NaN and 1 ±inf (of 4 values)"
  assert 'magnitude 2e+10' in utils.weights_problem([('c', torch.tensor([2e10]))])
  assert utils.weights_problem([('c', torch.tensor([2e10]))], limit=None) is None


def test_exploding_learning_rate_never_writes_a_bad_checkpoint_and_resumes_with_a_sane_one(tmp_path):
  """lr = 1e30 with a checkpoint after every step: the first step has lr 0 (warm-up), the second blows the
  weights to ~1e26 with a finite loss; only finite checkpoints are on disk, and a sane lr resumes."""
  config = tiny_config(6, every=1)
  config.optim.lr, config.optim.warmup = 1e30, 5
  with pytest.raises(run_lib.TrainingError, match='weights are not finite after step 2 .*blown up'):
    run_lib.train(config, str(tmp_path), 'standard', progress=False)
  files = sorted((tmp_path / 'checkpoints').iterdir()) + [tmp_path / 'checkpoints-meta' / 'checkpoint.pth']
  assert [f.name for f in files[:-1]] == ['checkpoint_1.pth']
  for f in files:
    ckpt = utils.load_file(f)
    assert ckpt['step'] == 1
    assert utils.weights_problem(ckpt['model'].items()) is None
  sane = tiny_config(6, every=1)
  state = run_lib.train(sane, str(tmp_path), 'standard', progress=False)
  assert state['step'] == 6 and utils.state_problem(state) is None
  assert 'the weights are not finite after step 2' in (tmp_path / 'stdout.txt').read_text()


def test_loss_monitor_on_hand_made_losses():
  monitor = run_lib.LossMonitor(decay=0.5, jump=100.)
  for step, loss in enumerate([4., 2., 3., 1000., 2.]):
    monitor.update(torch.tensor(loss), step)
  # running |loss| before step 3: 4 → 0.5·4 + 0.5·2 = 3 → 0.5·3 + 0.5·3 = 3; 1000 / 3 > 100
  bad, jumps = monitor.check()
  assert bad is None and jumps == [(3, pytest.approx(1000. / 3.), 1000.)]
  assert monitor.check() == (None, [])   # a new window
  monitor.update(torch.tensor(float('nan')), 7)
  monitor.update(torch.tensor(float('inf')), 8)
  bad, _ = monitor.check()
  assert bad == 7 and monitor.bad_value != monitor.bad_value   # the first non-finite step, its value NaN


def test_a_finite_blow_up_is_warned_about_with_its_step(tmp_path):
  config = tiny_config(12, every=12)
  config.optim.lr, config.optim.warmup, config.optim.grad_clip = 30., 0, -1.
  try:
    run_lib.train(config, str(tmp_path), 'standard', progress=False)
  except run_lib.TrainingError:
    pass   # it may also end in non-finite weights; the warning comes first
  log = (tmp_path / 'stdout.txt').read_text()
  assert 'times its running average: the run may be diverging' in log
  assert any(line.split(' WARNING step ')[1].split(':')[0].isdigit()
             for line in log.splitlines() if ' WARNING step ' in line)


def test_non_finite_samples_are_counted_not_classified():
  data = datasets.get_dataset(tiny_config())
  clf = GMMClassifier(data.density, data.name, data.class_names)
  points = torch.tensor([[0., 0.], [0.1, -0.1], [2., 2.], [float('nan'), 0.], [float('inf'), 1.]])
  out = ur_lib.unlearning_ratio_of_samples(points, clf, [1])
  assert out['non_finite'] == 2 and out['num_samples'] == 3
  assert out['num_forget'] == 2 and out['percent'] == pytest.approx(200. / 3)
  assert out['class_histogram'] == {'left': 0, 'centre': 2, 'right': 1}
  with pytest.raises(ValueError, match='all 2 samples'):
    ur_lib.unlearning_ratio_of_samples(points[3:], clf, [1])


class NaNOutput(torch.nn.Module):
  """A network with finite weights whose output is NaN: what a broken model gives the sampler/ODE."""

  def __init__(self, net):
    super().__init__()
    self.net = net

  def forward(self, x, labels):
    return self.net(x, labels) * float('nan')


def test_evaluation_of_a_broken_model_fails_with_one_line_and_writes_no_ratio(tmp_path, monkeypatch):
  run_lib.train(tiny_config(6), str(tmp_path), 'standard', progress=False)
  original = run_lib.load_ema_model

  def broken(config, path, device):
    model, state = original(config, path, device)
    return NaNOutput(model), state

  monkeypatch.setattr(run_lib, 'load_ema_model', broken)
  config = tiny_config(6)
  config.eval.enable_sampling, config.eval.enable_bpd = True, False
  with pytest.raises(evaluation_run.EvaluationError, match=r'50 of 50 samples of .*checkpoint.* hold NaN'):
    evaluation_run.evaluate(config, str(tmp_path), 'standard', progress=False)
  assert not (tmp_path / 'eval').exists()
  config.eval.enable_sampling, config.eval.enable_bpd = False, True
  with pytest.raises(evaluation_run.EvaluationError,
                     match=r'^the NLL of D_g cannot be computed with .*checkpoint.*\.pth: underflow'):
    evaluation_run.evaluate(config, str(tmp_path), 'standard', progress=False)
  assert not (tmp_path / 'eval').exists()


# ----------------------------------------------------------------------------------------------------------
# SHA-256


def test_checkpoints_record_a_sha256_and_a_flipped_bit_is_refused(tmp_path):
  run_lib.train(tiny_config(6), str(tmp_path), 'standard', progress=False)
  path = tmp_path / 'checkpoints' / 'checkpoint_1.pth'
  ckpt = torch.load(path, weights_only=True)
  assert ckpt['sha256'] == utils.tensors_sha256({k: v for k, v in ckpt.items() if k != 'sha256'})
  key = sorted(ckpt['model'])[0]
  t = ckpt['model'][key]
  t.view(torch.int32).view(-1)[0] ^= 1   # one bit of one weight
  torch.save(ckpt, path)
  with pytest.raises(utils.CheckpointError, match='damaged: its contents do not match the SHA-256'):
    utils.load_file(path)
  ckpt.pop('sha256')   # a file without a digest (as the official ones) loads as it is
  torch.save(ckpt, path)
  assert utils.load_file(path)['step'] == 6


def test_tensors_sha256_sees_values_dtypes_shapes_and_structure():
  a = {'w': torch.zeros(2, 3), 'n': 1, 'l': [torch.ones(2)]}
  digest = utils.tensors_sha256(a)
  assert digest == utils.tensors_sha256({'l': [torch.ones(2)], 'n': 1, 'w': torch.zeros(2, 3)})
  for other in ({'w': torch.zeros(3, 2), 'n': 1, 'l': [torch.ones(2)]},
                {'w': torch.zeros(2, 3, dtype=torch.float64), 'n': 1, 'l': [torch.ones(2)]},
                {'w': torch.zeros(2, 3), 'n': 2, 'l': [torch.ones(2)]},
                {'w': torch.zeros(2, 3), 'n': 1, 'l': [torch.ones(2), 0]}):
    assert utils.tensors_sha256(other) != digest


# ----------------------------------------------------------------------------------------------------------
# Unreadable files


def test_random_bytes_are_not_a_checkpoint_and_no_unsafe_advice_is_given(tmp_path):
  gen = torch.Generator().manual_seed(0)
  for name, head in (('random.pth', b''), ('pickle-like.pth', b'\x80\x02'), ('zip-like.pth', b'PK\x03\x04')):
    path = tmp_path / name
    path.write_bytes(head + torch.randint(0, 256, (4000,), generator=gen, dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(utils.CheckpointError) as info:
      utils.load_file(path)
    message = str(info.value)
    assert 'not a checkpoint' in message or 'truncated, corrupt' in message, message
    assert 'weights_only' not in message and 'Python objects' not in message and '\n' not in message
  (tmp_path / 'empty.pth').write_bytes(b'')
  with pytest.raises(utils.CheckpointError, match='is empty'):
    utils.load_file(tmp_path / 'empty.pth')


def test_a_damaged_older_checkpoint_does_not_block_the_latest(tmp_path):
  run_lib.train(tiny_config(12, every=4), str(tmp_path), 'standard', progress=False)
  older = tmp_path / 'checkpoints' / 'checkpoint_1.pth'
  older.write_bytes(older.read_bytes()[:100])
  assert run_lib.latest_checkpoint(str(tmp_path))[1] == 12
  config = tiny_config(12, every=4)
  config.eval.enable_sampling, config.eval.enable_bpd = True, False
  results = evaluation_run.evaluate(config, str(tmp_path), 'standard', progress=False)
  assert results['step'] == 12 and results['unlearning_ratio']['non_finite'] == 0


def test_classifier_given_for_the_toy_is_reported_as_unused(tmp_path, caplog):
  run_lib.train(tiny_config(6), str(tmp_path), 'standard', progress=False)
  config = tiny_config(6)
  config.eval.enable_sampling, config.eval.enable_bpd = True, False
  config.eval.classifier = str(tmp_path / 'some_classifier.pth')
  with caplog.at_level(py_logging.WARNING):
    evaluation_run.evaluate(config, str(tmp_path), 'standard', progress=False)
  hits = [r for r in caplog.records if 'eval.classifier=' in r.getMessage() and 'is not used' in r.getMessage()]
  assert len(hits) == 1


# ----------------------------------------------------------------------------------------------------------
# One run per folder


def test_a_second_run_in_a_locked_folder_is_refused_naming_the_holder(tmp_path):
  with utils.FolderLock(tmp_path, 'training run'):
    with pytest.raises(utils.WorkdirBusyError, match=f'in use by another training run \\(PID {os.getpid()} on host'):
      run_lib.train(tiny_config(6), str(tmp_path), 'standard', progress=False)
  assert not (tmp_path / 'checkpoints').exists() and not (tmp_path / 'config.json').exists()
  run_lib.train(tiny_config(6), str(tmp_path), 'standard', progress=False)   # released: runs


def test_evaluation_folder_is_locked_too(tmp_path):
  run_lib.train(tiny_config(6), str(tmp_path), 'standard', progress=False)
  (tmp_path / 'eval').mkdir()
  config = tiny_config(6)
  config.eval.enable_sampling, config.eval.enable_bpd = True, False
  with utils.FolderLock(tmp_path / 'eval', 'evaluation'):
    with pytest.raises(utils.WorkdirBusyError, match='in use by another evaluation'):
      evaluation_run.evaluate(config, str(tmp_path), 'standard', progress=False)
  evaluation_run.evaluate(config, str(tmp_path), 'standard', 'eval2', progress=False)   # another folder: fine


def test_a_stale_lock_file_and_orphan_temporary_files(tmp_path):
  run_lib.train(tiny_config(6), str(tmp_path), 'standard', progress=False)
  (tmp_path / utils.LOCK_NAME).write_text('training run (PID 999999 on host gone, since 2020-01-01 00:00:00)\n')
  orphans = [tmp_path / 'checkpoints' / '.tmp-abc.pth', tmp_path / 'checkpoints-meta' / '.tmp-def.pth',
             tmp_path / '.tmp-ghi.json']
  for path in orphans:
    path.write_bytes(b'partial')
  keep = tmp_path / 'checkpoints' / 'notes-tmp.txt'
  keep.write_text('mine')
  state = run_lib.train(tiny_config(12), str(tmp_path), 'standard', progress=False)
  assert state['step'] == 12
  assert not any(p.exists() for p in orphans) and keep.exists()
  assert f'PID {os.getpid()}' in (tmp_path / utils.LOCK_NAME).read_text()


def test_two_concurrent_cli_runs_the_second_is_refused_and_a_killed_run_resumes(tmp_path):
  work = tmp_path / 'w'
  slow = TOY + ['--workdir', str(work), '--task', 'standard', '--config.training.n_iters=100000',
                '--config.training.snapshot_freq=50', '--config.training.snapshot_freq_for_preemption=50',
                '--config.training.log_freq=50']
  first = subprocess.Popen([sys.executable, str(ROOT / 'main.py'), *slow], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS='1'))
  try:
    meta = work / 'checkpoints-meta' / 'checkpoint.pth'
    deadline = time.time() + 60
    while not meta.exists() and time.time() < deadline:
      time.sleep(0.2)
    assert meta.exists()
    code, _, err = cli(*TOY, '--workdir', str(work), '--task', 'square', '--config.seed=7')
    assert code == 1
    line = one_error_line(err)
    assert f'PID {first.pid} on host' in line and 'in use by another training run' in line
    assert json.loads((work / 'config.json').read_text())['seed'] == 42
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  # the lock died with the process: the same command (to a nearer end) resumes from where it was killed
  reached = utils.load_file(work / 'checkpoints-meta' / 'checkpoint.pth')['step']
  code, _, err = cli(*TOY, '--workdir', str(work), '--task', 'standard', f'--config.training.n_iters={reached + 100}',
                     '--config.training.snapshot_freq=50', '--config.training.snapshot_freq_for_preemption=50')
  assert code == 0, err
  assert utils.load_file(work / 'checkpoints-meta' / 'checkpoint.pth')['step'] == reached + 100
  assert f'resuming from {work}/checkpoints-meta/checkpoint.pth at step {reached}' in (work / 'stdout.txt').read_text()


# ----------------------------------------------------------------------------------------------------------
# One error line for every bad command line


@pytest.mark.parametrize('extra,expected', [
  (['--config.training.nonsense=1'], "unknown config key 'nonsense'"),
  (['--config.training.n_iters=abc'], 'invalid literal'),
  (['--task=forgetting'], "unknown task 'forgetting'"),
  (['--task=obtuse', '--config.unlearn.preset=toy-ratio', '--config.unlearn.reference=u.pth',
    '--config.unlearn.push=2'], 'unlearn.push=2.0 (preset toy-ratio sets 16.0): a preset sets its keys itself'),
])
def test_bad_command_lines_give_one_line(tmp_path, extra, expected):
  code, out, err = cli(*TOY, '--workdir', str(tmp_path / 'w'), *extra)
  assert code == 1
  assert expected in one_error_line(err)
  assert not (tmp_path / 'w').exists()


def test_missing_config_file_and_workdir_that_is_a_file(tmp_path):
  code, _, err = cli('--config', str(tmp_path / 'nothere.py'), '--workdir', str(tmp_path / 'w'), '--mode', 'train')
  assert code == 1 and 'cannot load the config file: No such file or directory' in one_error_line(err)
  afile = tmp_path / 'afile'
  afile.write_text('keep me')
  code, _, err = cli(*TOY, '--workdir', str(afile))
  assert code == 1 and 'is a file, not a folder' in one_error_line(err)
  assert afile.read_text() == 'keep me'
  for workdir, expected in ((tmp_path / ('x' * 300), 'longer than the file system allows'),
                            (afile / 'sub', 'a part of the path is a file, not a folder')):
    with pytest.raises(utils.WriteError, match=expected):
      run_lib.train(tiny_config(), str(workdir), 'standard', progress=False)
  assert sorted(os.listdir(tmp_path)) == ['afile']


def test_read_only_workdir(tmp_path):
  """Non-root: a folder without write permission. Root writes anywhere, so there a read-only tmpfs stands in
  (needs mount rights; skipped without them)."""
  work = tmp_path / 'ro'
  work.mkdir()
  if os.geteuid() != 0:
    work.chmod(0o555)
    try:
      code, _, err = cli(*TOY, '--workdir', str(work))
    finally:
      work.chmod(0o755)
    assert code == 1 and 'no permission' in one_error_line(err)
    assert os.listdir(work) == []
    return
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'ro,size=64k', 'tmpfs', str(work)],
                    capture_output=True).returncode != 0:
    pytest.skip('root, and no mount rights for a read-only tmpfs')
  try:
    code, _, err = cli(*TOY, '--workdir', str(work))
    assert code == 1 and 'read-only' in one_error_line(err)
    code, _, err = cli(*TOY, '--workdir', str(work / 'sub'))
    assert code == 1 and 'read-only' in one_error_line(err)
    assert os.listdir(work) == []
  finally:
    subprocess.run(['umount', str(work)], capture_output=True)


def test_full_disk_leaves_the_previous_checkpoint_intact(tmp_path):
  """A small tmpfs (needs root and mount rights) fills during a save: one line, exit 1, the resume
  checkpoint written before is unchanged."""
  mnt = tmp_path / 'small'
  mnt.mkdir()
  if os.geteuid() != 0 or subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', str(mnt)],
                                         capture_output=True).returncode != 0:
    pytest.skip('cannot mount a small tmpfs here (needs root and mount rights)')
  try:
    work = mnt / 'w'
    args = TOY + ['--workdir', str(work), '--config.training.snapshot_freq=1000']
    code, _, err = cli(*args)
    assert code == 0, err
    meta = work / 'checkpoints-meta' / 'checkpoint.pth'
    before = meta.read_bytes()
    filler = mnt / 'filler'
    free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
    filler.write_bytes(b'\0' * max(free - len(before) // 2, 0))
    code, _, err = cli(*args[:-1], '--config.training.n_iters=8', '--config.training.snapshot_freq=1000')
    assert code == 1
    assert 'the disk is full' in one_error_line(err)
    assert meta.read_bytes() == before
    assert not [f for f in os.listdir(meta.parent) if f.startswith(utils.TMP_PREFIX)]
  finally:
    subprocess.run(['umount', str(mnt)], capture_output=True)


def test_a_file_size_limit_mid_save_is_one_line(tmp_path):
  """The same failure without mount rights: a file-size limit makes the write stop part-way."""
  import resource

  def limit():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))

  code, _, err = cli(*TOY, '--workdir', str(tmp_path / 'w'), preexec_fn=limit)
  assert code == 1
  line = one_error_line(err)
  assert 'cannot write' in line and 'checkpoint' in line and 'unchanged' in line
