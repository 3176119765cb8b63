"""The reproduction benchmark's plan and caching on a tiny grid: a second run recomputes nothing, a changed key
recomputes only its stages, a killed stage resumes, and --only / --dry-run do what they say."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import run_lib
from benchmarks import reproduce
from experiments import stages
from toy_configs import tiny_toy_config

ROOT = Path(__file__).resolve().parents[1]


def test_hashes_follow_keys_and_dependencies():
  calls = []
  run = lambda s, folder, inputs: calls.append(s.name) or {'n': len(calls)}   # noqa: E731
  plan = lambda b: stages.resolve_hashes([stages.Stage('a', 'x', {'v': 1}, run),                # noqa: E731
                                          stages.Stage('b', 'x', {'v': b}, run, ('a',)),
                                          stages.Stage('c', 'x', {'v': 3}, run, ('b',)),
                                          stages.Stage('d', 'x', {'v': 4}, run, ('a',))])
  one, two = plan(2), plan(5)
  assert [s.hash == t.hash for s, t in zip(one, two)] == [True, False, False, True]
  with pytest.raises(ValueError, match='do not come before'):
    stages.resolve_hashes([stages.Stage('b', 'x', {}, run, ('a',)), stages.Stage('a', 'x', {}, run)])
  with pytest.raises(ValueError, match='two stages are named'):
    stages.resolve_hashes([stages.Stage('a', 'x', {}, run), stages.Stage('a', 'x', {}, run)])
  assert [s.name for s in stages.select(one, 'c')] == ['a', 'b', 'c']
  with pytest.raises(ValueError, match='names no stage'):
    stages.select(one, 'zzz')


def test_tiny_grid_runs_once_then_recomputes_only_what_changed(tmp_path):
  only = 'eval/unseen/*s42,eval/toy-ratio/*s42'
  plan = stages.select(reproduce.build_plan('tiny'), only)
  assert [s.name for s in plan] == ['classifier/tiny', 'train/unseen/tiny/centre/s42', 'train/toy-ratio/tiny/centre/s42',
                                    'eval/unseen/tiny/centre/s42', 'eval/toy-ratio/tiny/centre/s42']
  root = str(tmp_path / 'tiny')
  ran = stages.run_plan(root, plan, progress=False, log=lambda m: None)
  assert ran == [s.name for s in plan]
  with open(reproduce.at_root(root, stages.record_of(root, plan[3])['outputs']['results'])) as f:
    assert json.load(f)['nll_bpd']['forget']['n'] > 0
  assert stages.run_plan(root, plan, progress=False, log=lambda m: None) == []          # nothing to redo
  changed = stages.select(reproduce.build_plan('tiny', {'eval.bpd_num_samples': 30}), only)
  assert stages.run_plan(root, changed, progress=False, log=lambda m: None) == \
    ['eval/unseen/tiny/centre/s42', 'eval/toy-ratio/tiny/centre/s42']                    # the trainings are kept
  retrained = stages.select(reproduce.build_plan('tiny', {'optim.lr': 5e-4}), 'eval/unseen/*s42')
  assert stages.run_plan(root, retrained, progress=False, log=lambda m: None) == \
    ['train/unseen/tiny/centre/s42', 'eval/unseen/tiny/centre/s42']
  assert 'stages to run' in stages.describe(root, changed)
  out = reproduce.copy_results(root, changed, str(tmp_path / 'results'), 'tiny')
  assert out == 5 and (tmp_path / 'results' / 'tiny' / 'eval__unseen__tiny__centre__s42.json').exists()
  assert (tmp_path / 'results' / 'tiny' / 'eval__unseen__tiny__centre__s42.nll.npz').exists()   # paired tests
  trained = json.loads((tmp_path / 'results' / 'tiny' / 'train__unseen__tiny__centre__s42.json').read_text())
  assert trained['step'] == 40 and trained['stage']['seconds'] > 0
  # the fingerprint of the trained weights: the same stage trained again elsewhere gives the same digest, another
  # learning rate another one
  again = str(tmp_path / 'again')
  stages.run_plan(again, plan[1:2], progress=False, log=lambda m: None)
  digest = stages.record_of(again, plan[1])['outputs']['ema_sha256']
  assert len(digest) == 64 and digest == trained['ema_sha256']
  other = next(s for s in retrained if s.name.startswith('train/'))
  assert stages.record_of(root, other)['outputs']['ema_sha256'] != digest
  # an evaluation names the weights it read: its training's digest (the first config's, not the retrained one's)
  evaluated = json.loads((tmp_path / 'results' / 'tiny' / 'eval__unseen__tiny__centre__s42.json').read_text())
  assert evaluated['model'] == {'stage': 'train/unseen/tiny/centre/s42', 'step': 40,
                                'ema_sha256': trained['ema_sha256']}


def test_a_killed_training_stage_resumes(tmp_path):
  args = [sys.executable, str(ROOT / 'benchmarks' / 'reproduce.py'), '--workdir', str(tmp_path), '--part', 'tiny',
          '--only', 'train/unseen/*s42', '--noprogress', '--set', 'training.n_iters=3000', '--set',
          'training.snapshot_freq=3000', '--set', 'training.snapshot_freq_for_preemption=100']
  p = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=dict(os.environ, OMP_NUM_THREADS='1'))
  plan = stages.select(reproduce.build_plan('tiny', {'training.n_iters': 3000, 'training.snapshot_freq': 3000,
                                                     'training.snapshot_freq_for_preemption': 100}),
                       'train/unseen/*s42')
  meta = Path(stages.folder_of(str(tmp_path / 'tiny'), plan[-1])) / 'checkpoints-meta' / 'checkpoint.pth'
  try:
    deadline = time.time() + 90
    while not meta.exists() and time.time() < deadline:
      time.sleep(0.2)
    assert meta.exists()
  finally:
    p.send_signal(signal.SIGKILL)
    p.wait()
  assert stages.record_of(str(tmp_path / 'tiny'), plan[-1]) is None      # killed: not done
  assert subprocess.run(args, cwd=ROOT, capture_output=True, env=dict(os.environ, OMP_NUM_THREADS='1'),
                        timeout=300).returncode == 0
  record = stages.record_of(str(tmp_path / 'tiny'), plan[-1])
  assert record['outputs']['step'] == 3000
  log = (meta.parent.parent / 'stdout.txt').read_text()
  assert 'resuming from' in log


def test_dry_run_prints_the_plan_and_bad_input_is_one_line(tmp_path, capsys):
  assert reproduce.main(['--workdir', str(tmp_path), '--part', 'tiny', '--dry-run']) == 0
  out = capsys.readouterr().out
  assert 'train/standard/tiny/s42' in out and 'relearn/vdu/tiny/centre/s42' in out and 'stages to run' in out
  assert reproduce.main(['--workdir', str(tmp_path), '--part', 'cifar']) == 1
  assert "unknown part 'cifar'" in capsys.readouterr().err
  assert reproduce.main(['--workdir', str(tmp_path), '--part', 'tiny', '--set', 'training.nonsense=1',
                         '--dry-run']) == 1
  assert "unknown config key 'training.nonsense'" in capsys.readouterr().err


def _meet(stage, folder, inputs):
  """A stage that marks its start and waits for its partner's start: it can only finish when both run at once."""
  Path(folder, 'started').write_text('1')
  partner = Path(stage.key['partner'])
  deadline = time.time() + 60
  while not partner.exists():
    if time.time() > deadline:
      raise TimeoutError(f'{stage.name}: its partner never started')
    time.sleep(0.05)
  return {'got': sorted(inputs), 'name': stage.name}


def _sum(stage, folder, inputs):
  return {'got': sorted(inputs), 'n': len(inputs)}


def _fail(stage, folder, inputs):
  raise RuntimeError('stage broke')


def _slow(stage, folder, inputs):
  time.sleep(1.)
  return {'slow': True}


def test_independent_stages_run_at_once_and_dependents_wait(tmp_path):
  root = str(tmp_path)
  head = stages.Stage('a', 'x', {'v': 1}, _sum)
  b = stages.Stage('b', 'x', {'partner': ''}, _meet, ('a',))
  c = stages.Stage('c', 'x', {'partner': ''}, _meet, ('a',))
  d = stages.Stage('d', 'x', {'v': 4}, _sum, ('b', 'c'))
  plan = stages.resolve_hashes([head, b, c, d])
  # a stage's folder is named by its hash, and the hash covers the key: fix the two hashes, then point each at
  # the other's folder
  b.hash, c.hash = 'b' * 64, 'c' * 64
  b.key['partner'], c.key['partner'] = (os.path.join(stages.folder_of(root, s), 'started') for s in (c, b))
  ran = stages.run_plan(root, plan, progress=False, log=lambda m: None, jobs=2)
  assert ran[0] == 'a' and sorted(ran[1:3]) == ['b', 'c'] and ran[3] == 'd'
  assert stages.record_of(root, d)['outputs'] == {'got': ['b', 'c'], 'n': 2}
  assert stages.record_of(root, b)['outputs']['got'] == ['a']
  assert stages.run_plan(root, plan, progress=False, log=lambda m: None, jobs=2) == []


def test_a_failing_stage_stops_the_plan_after_the_running_ones_are_recorded(tmp_path):
  root = str(tmp_path)
  plan = stages.resolve_hashes([stages.Stage('slow', 'x', {}, _slow), stages.Stage('bad', 'x', {}, _fail),
                                stages.Stage('after', 'x', {}, _sum, ('bad',)),
                                stages.Stage('other', 'x', {'v': 2}, _sum)])
  with pytest.raises(RuntimeError, match='stage broke'):
    stages.run_plan(root, plan, progress=False, log=lambda m: None, jobs=2)
  assert stages.record_of(root, plan[0])['outputs'] == {'slow': True}   # running when 'bad' failed: kept
  assert [stages.record_of(root, s) for s in plan[1:]] == [None, None, None]


def test_the_mnist_plan_runs_the_targets_first_and_leaves_sfd_out():
  names = [s.name for s in reproduce.build_plan('mnist')]
  core_end = names.index('eval/mnist-best/mnist/3+7/s44')
  assert all(n.startswith(('classifier/', 'train/', 'eval/')) for n in names[:core_end + 1])
  assert all(('s42' in n or 's43' in n or 's44' in n) for n in names[1:core_end + 1])
  assert core_end < names.index('relearn/unseen/mnist/3/s42') < names.index('train/ve-standard/mnist/s42') \
    < names.index('train/orthogonal-official/mnist/3/s42') < names.index('train/salun-ft/mnist/3/s42')
  assert not [n for n in names if 'sfd' in n]                   # SFD needs a class-conditional teacher
  attacks = [n for n in names if n.startswith('relearn/')]
  later = {n for n in attacks if not n.endswith('s42')}         # the relearning target's models at every seed
  assert later == {f'relearn/{m}/mnist/{f}/s{seed}' for m in ('standard', 'unseen', 'mnist-best', 'mnist-nll-ft')
                   for f in ('3', '3+7') for seed in (43, 44)}
  assert 'relearn/salun/mnist/3/s42' in attacks and 'relearn/salun/mnist/3+7/s42' not in attacks
  assert 'relearn/mnist-best/mnist/3+7/s42' in attacks
  assert names.count('train/ve-standard/mnist/s42') == 1 and names.count('train/standard/mnist/s43') == 1
  # the likelihood preset fine-tunes each seed's Standard with that seed's Unseen as reference, among the targets'
  # models, and is attacked at every seed as the other target models are
  plan = {s.name: s for s in reproduce.build_plan('mnist')}
  for f in ('3', '3+7'):
    for seed in (42, 43, 44):
      stage = plan[f'train/mnist-nll-ft/mnist/{f}/s{seed}']
      assert stage.key['pretrained_from'] == f'train/standard/mnist/s{seed}'
      assert stage.key['reference_from'] == f'train/unseen/mnist/{f}/s{seed}'
      assert reproduce.from_key(stage.key['config']).training.n_iters == reproduce.FINE_TUNE_STEPS
      assert names.index(f'eval/mnist-nll-ft/mnist/{f}/s{seed}') < names.index('relearn/unseen/mnist/3/s42')
  assert {'relearn/mnist-nll-ft/mnist/3/s42', 'relearn/mnist-nll-ft/mnist/3/s44'} <= set(attacks)
  assert 'relearn/mnist-nll-ft/mnist/3+7/s42' in attacks
  # last: inpainting and reconstruction (Tables 5 and 6) of the core models and the best preset, first seed and set
  downstream = [n for n in names if n.startswith('downstream/')]
  assert names[-len(downstream):] == downstream == [f'downstream/{m}/mnist/3/s42' for m in
                                                     ('standard', 'unseen', 'obtuse', 'mnist-best')]


def test_the_digits_grid_runs_in_two_processes_once_and_feeds_the_page(tmp_path, capsys):
  from experiments import results_page
  args = ['--workdir', str(tmp_path / 'w'), '--part', 'tiny-digits', '--only',
          'eval/standard/*s42,eval/unseen/*s42,relearn/unseen/*s42', '--jobs', '2', '--results', str(tmp_path / 'res'),
          '--noprogress']
  assert reproduce.main(args) == 0
  assert 'tiny-digits: 6 stages ran' in capsys.readouterr().out   # classifier, 2 trainings, 2 evaluations, attack...
  assert reproduce.main(args) == 0
  assert 'tiny-digits: 0 stages ran' in capsys.readouterr().out      # ...and nothing the second time
  text = results_page.page(str(tmp_path / 'res'), str(tmp_path / 'RESULTS.md'))
  assert '### tiny-digits: forget 3' in text and '| unseen | 1 |' in text and '| standard | 1 |' in text
  assert 'Relearning attack' in text and '| unseen | 42 | 8 | 0:' in text


def test_the_likelihood_preset_fine_tunes_standard_with_the_low_noise_term(tmp_path, capsys):
  args = ['--workdir', str(tmp_path / 'w'), '--part', 'tiny-digits', '--only', 'train/mnist-nll-ft/*s42',
          '--noprogress']
  assert reproduce.main(args) == 0
  assert 'tiny-digits: 3 stages ran' in capsys.readouterr().out       # Standard, Unseen, the fine-tuning
  folder = next((tmp_path / 'w' / 'tiny-digits').glob('train_mnist-nll-ft_*'))
  config = json.loads((folder / 'config.json').read_text())
  assert config['unlearn']['low_noise_push'] == 2. and config['unlearn']['obtuse_form'] == 'ratio'
  assert config['unlearn']['reference'].endswith('checkpoint_1.pth') and 'train_unseen_' in config['unlearn']['reference']
  assert 'train_standard_' in config['training']['pretrained']


def test_the_downstream_stage_runs_on_the_digits_and_feeds_the_page(tmp_path, capsys):
  from experiments import results_page
  args = ['--workdir', str(tmp_path / 'w'), '--part', 'tiny-digits', '--only', 'downstream/unseen/*s42',
          '--results', str(tmp_path / 'res'), '--noprogress']
  assert reproduce.main(args) == 0
  assert 'tiny-digits: 3 stages ran' in capsys.readouterr().out       # classifier, Unseen, its downstream tasks
  body = json.loads((tmp_path / 'res' / 'tiny-digits' / 'downstream__unseen__tiny-digits__3__s42.json').read_text())
  for task in ('inpainting', 'reconstruction'):
    assert body[task]['num_images'] == {'retain': 4, 'forget': 4} and body[task]['retain']['fid'] is None
    assert 0 <= body[task]['forget']['acc']['percent'] <= 100
  assert (tmp_path / 'res' / 'tiny-digits' / 'downstream__unseen__tiny-digits__3__s42.inpaint_forget.png').is_file()
  (tmp_path / 'res' / 'tiny-digits' / 'eval__unseen__tiny-digits__3__s42.json').write_text(json.dumps(
    {'unlearning_ratio': None, 'stage': {'name': 'eval/unseen/tiny-digits/3/s42', 'seconds': 1.}}))
  text = results_page.page(str(tmp_path / 'res'), str(tmp_path / 'RESULTS.md'))
  assert '#### Table 5 layout: inpainting' in text and '#### Table 6 layout: reconstruction' in text
  assert '| Metric | Clean | unseen |' in text
  assert 'downstream__unseen__tiny-digits__3__s42.inpaint_forget.png' in text


def test_a_relative_workdir_keeps_each_evaluation_in_its_stage_folder(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  only = 'eval/unseen/*s42,relearn/unseen/*s42'
  args = ['--workdir', 'w', '--part', 'tiny', '--only', only, '--results', 'res', '--noprogress']
  assert reproduce.main(args) == 0, capsys.readouterr().err
  plan = stages.select(reproduce.build_plan('tiny'), only)
  assert [s.kind for s in plan[-2:]] == ['eval', 'relearn']
  for stage in plan[-2:]:
    record = stages.record_of('w/tiny', stage)
    path = reproduce.at_root('w/tiny', record['outputs']['results'])
    assert os.path.isfile(path) and not os.path.isabs(record['outputs']['results'])
    assert os.path.samefile(os.path.dirname(path), stages.folder_of('w/tiny', stage))
  assert (tmp_path / 'res' / 'tiny' / 'relearn__unseen__tiny__centre__s42.json').exists()
  # the workdir moves and is used from elsewhere: nothing reruns, and a new stage finds its inputs
  os.rename('w', 'moved')
  (tmp_path / 'res' / 'tiny' / 'relearn__unseen__tiny__centre__s42.json').unlink()
  monkeypatch.chdir('/')
  moved = ['--workdir', str(tmp_path / 'moved'), '--part', 'tiny', '--results', str(tmp_path / 'res'), '--noprogress']
  assert reproduce.main(moved + ['--only', only]) == 0
  assert 'tiny: 0 stages ran' in capsys.readouterr().out
  assert (tmp_path / 'res' / 'tiny' / 'relearn__unseen__tiny__centre__s42.json').exists()   # copied again
  assert reproduce.main(moved + ['--only', 'eval/standard/*s42']) == 0
  assert 'tiny: 2 stages ran' in capsys.readouterr().out       # Standard's training and evaluation, same classifier


def test_a_stage_hash_covers_what_the_stage_reads_and_nothing_else():
  def hashes(**overrides):
    return {s.name: s.hash for s in reproduce.build_plan('tiny', overrides)}
  base = hashes()
  changed = lambda h: {n for n in base if h[n] != base[n]}   # noqa: E731
  # the attack's steps: the attacks only
  assert changed(hashes(**{'relearn.steps': '0,7'})) == {n for n in base if n.startswith('relearn/')}
  # the NLL's items: the evaluations only, not the attacks (which read no NLL setting)
  assert changed(hashes(**{'eval.bpd_num_samples': 9})) == {n for n in base if n.startswith('eval/')}
  # one method's setting: that method's training and what follows from it
  sa = changed(hashes(**{'sa.samples': 7}))
  assert sa == {'train/sa-ft/tiny/centre/s42', 'eval/sa/tiny/centre/s42', 'relearn/sa/tiny/centre/s42'}
  # Obtuse's noisy classifier: the Obtuse trainings (its forms and presets) only
  hole = changed(hashes(**{'noisy_classifier.n_iters': 7}))
  assert hole and all(n.split('/')[1] in ('obtuse', 'obtuse-ft', 'obtuse-official', 'toy-ratio') for n in hole)
  # a training setting: every stage but the classifier
  assert changed(hashes(**{'optim.lr': 1e-4})) == set(base) - {'classifier/tiny'}
  # NegGrad's setting: NegGrad, and SalUn, whose default objective inside its mask is NegGrad's
  neg = changed(hashes(**{'neggrad.alpha': 0.3}))
  assert {n.split('/')[1] for n in neg} == {'neggrad-ft', 'neggrad', 'salun-ft', 'salun'}
  salun = next(s for s in reproduce.build_plan('tiny', {'neggrad.alpha': 0.3}) if s.name.startswith('train/salun'))
  assert reproduce.from_key(salun.key['config']).neggrad.alpha == 0.3      # and it reaches the training
  # the batch size of the samples Selective Amnesia and VDU draw from the starting model
  batch = changed(hashes(**{'eval.batch_size': 50}))
  assert {n.split('/')[1] for n in batch if n.startswith('train/')} == {'sa-ft', 'vdu-ft'}
  sa = next(s for s in reproduce.build_plan('tiny', {'eval.batch_size': 50}) if s.name.startswith('train/sa-ft'))
  assert reproduce.from_key(sa.key['config']).eval.batch_size == 50
  # a sampler setting: every evaluation and attack, and of the trainings only those that sample while they train
  sampler = changed(hashes(**{'sampling.corrector': 'langevin'}))
  assert {n for n in sampler if n.startswith(('eval/', 'relearn/'))} == {n for n in base if n.startswith(('eval/', 'relearn/'))}
  assert {n.split('/')[1] for n in sampler if n.startswith('train/')} == {'sa-ft', 'vdu-ft'}
  with pytest.raises(ValueError, match='enable_loss'):
    reproduce.build_plan('tiny', {'eval.enable_loss': True})


def test_a_key_added_later_leaves_finished_hashes_alone_until_it_is_set():
  """``LATER_KEYS``: a stage recorded before a key existed keeps its hash while the key holds its default."""
  plan = reproduce.build_plan('tiny', {})
  for (section, name), default in reproduce.LATER_KEYS.items():
    config = reproduce.from_key(plan[-1].key['config'])
    assert config[section][name] == default and name not in reproduce.config_key(config)[section]
    old = reproduce.config_key(config)        # what a stage recorded before the key was added
    assert reproduce.config_key(reproduce.from_key(old)) == old
  base = {s.name: s.hash for s in plan}
  pushed = {s.name: s.hash for s in reproduce.build_plan('tiny', {'unlearn.low_noise_push': 1.})}
  assert {n for n in base if pushed[n] != base[n]} == set(base) - {'classifier/tiny'}


def test_a_trained_model_does_not_depend_on_the_sampler_or_its_snapshots(tmp_path):
  """Why a training stage's hash may leave the sampler out: snapshot images draw their own noise, so the
  weights are the same bit for bit with or without them and with another sampler."""
  weights = []
  for i, (snapshots, corrector) in enumerate(((True, 'none'), (False, 'none'), (True, 'langevin'))):
    config = tiny_toy_config(30)
    config.training.snapshot_freq = 10
    config.training.snapshot_sampling, config.sampling.corrector = snapshots, corrector
    run_lib.train(config, str(tmp_path / str(i)), 'standard', progress=False)
    path, step = run_lib.latest_checkpoint(str(tmp_path / str(i)))
    state = torch.load(path, map_location='cpu', weights_only=True)
    weights.append(torch.cat([v.flatten().float() for _k, v in sorted(state['model'].items())]))
  assert step == 30 and all(torch.equal(weights[0], w) for w in weights[1:])


def test_a_failure_after_a_stage_still_records_the_stages_running_beside_it(tmp_path):
  root = str(tmp_path)
  plan = stages.resolve_hashes([stages.Stage('slow', 'x', {}, _slow), stages.Stage('quick', 'x', {}, _sum)])

  def on_done(stage):
    if stage.name == 'quick':
      raise OSError('cannot copy')
  with pytest.raises(OSError, match='cannot copy'):
    stages.run_plan(root, plan, progress=False, log=lambda m: None, on_done=on_done, jobs=2)
  assert stages.record_of(root, plan[0])['outputs'] == {'slow': True}


def _sleep(stage, folder, inputs):
  time.sleep(stage.key['s'])
  return {}


def test_the_eta_learns_from_fresh_stages_only(tmp_path):
  root = str(tmp_path)
  plan = stages.resolve_hashes([stages.Stage(n, 'x', {'s': s}, _sleep, (), 3600.) for n, s in
                                (('resumed', 0.), ('fresh', 0.4), ('last', 0.))])
  os.makedirs(stages.folder_of(root, plan[0]))             # an earlier, interrupted run of 'resumed'
  lines = []
  stages.run_plan(root, plan, progress=False, log=lines.append)
  left = [float(line.split('about ')[1].split(' h')[0]) for line in lines]
  # before anything: 3 h of estimates; the resumed stage (0 s of its hour) teaches nothing, so 2 h are left;
  # 'fresh' took 0.4 s of its hour, so the last stage's hour is scaled by 0.4 / 3600: 0.00 h
  assert left == [3., 2., 0.]


def test_the_results_page_rebuilds_the_plan_with_the_settings_it_ran_with(tmp_path, capsys):
  from experiments import results_page
  args = ['--workdir', str(tmp_path / 'w'), '--part', 'tiny', '--only', 'eval/unseen/*s42', '--results',
          str(tmp_path / 'res'), '--noprogress', '--set', 'eval.bpd_num_samples=30']
  assert reproduce.main(args) == 0
  assert json.loads((tmp_path / 'res' / 'tiny' / 'plan.json').read_text())['overrides'] == {'eval.bpd_num_samples': 30}
  text = results_page.page(str(tmp_path / 'res'), str(tmp_path / 'RESULTS.md'), workdir=str(tmp_path / 'w'))
  assert '| unseen | 1 |' in text and 'Left out' not in text
  # the same files against the default plan: another hash, so they are stale and named
  (tmp_path / 'res' / 'tiny' / 'plan.json').unlink()
  text = results_page.page(str(tmp_path / 'res'), str(tmp_path / 'RESULTS.md'), workdir=str(tmp_path / 'w'))
  assert '| unseen | 1 |' not in text and 'Left out: 1 result file(s)' in text and 'eval/unseen/tiny/centre/s42' in text


def test_published_results_count_as_done_in_a_new_workdir(tmp_path, capsys):
  only = 'eval/unseen/*s42,eval/toy-ratio/*s42'
  res = str(tmp_path / 'res')
  run = lambda workdir, *extra: reproduce.main(['--workdir', str(tmp_path / workdir), '--part', 'tiny', '--only', only,   # noqa: E731
                                                '--results', res, '--noprogress', *extra])
  assert run('first') == 0
  assert 'tiny: 5 stages ran' in capsys.readouterr().out
  published = Path(res, 'tiny', 'eval__toy-ratio__tiny__centre__s42.json')
  before = published.read_text()
  assert run('lost') == 0                       # a new workdir: everything is published, nothing reruns
  assert 'tiny: 0 stages ran' in capsys.readouterr().out and published.read_text() == before
  Path(res, 'tiny', 'eval__unseen__tiny__centre__s42.json').unlink()
  assert run('lost') == 0                       # the evaluation and what it reads: classifier, training
  out = capsys.readouterr()
  assert 'tiny: 3 stages ran' in out.out and '2 stages whose results are in' in out.err
  assert published.read_text() == before        # the published toy-ratio result is left as it was
  body = json.loads(published.read_text())
  body['stage']['hash'] = '0' * 64              # published under another hash: not done
  published.write_text(json.dumps(body))
  Path(res, 'tiny', 'train__toy-ratio__tiny__centre__s42.json').write_text('{not json')
  assert run('other') == 0                      # toy-ratio's evaluation, its training, the Unseen reference, classifier
  assert 'tiny: 4 stages ran' in capsys.readouterr().out
  assert run('again', '--rerun-published') == 0
  assert 'tiny: 5 stages ran' in capsys.readouterr().out


def test_pruning_keeps_what_an_unpublished_stage_reads():
  run = lambda s, folder, inputs: {}   # noqa: E731
  plan = stages.resolve_hashes([stages.Stage('t', 'train', {}, run), stages.Stage('c', 'classifier', {}, run),
                                stages.Stage('e1', 'eval', {'v': 1}, run, ('t', 'c')),
                                stages.Stage('e2', 'eval', {'v': 2}, run, ('t', 'c')),
                                stages.Stage('r', 'relearn', {}, run, ('t',))])
  every = {(s.name, s.hash) for s in plan}
  assert stages.prune_published(plan, every) == []
  assert [s.name for s in stages.prune_published(plan, every - {('r', plan[4].hash)})] == ['t', 'r']
  assert [s.name for s in stages.prune_published(plan, every - {('e1', plan[2].hash)})] == ['t', 'c', 'e1']
  assert [s.name for s in stages.prune_published(plan, {('e2', plan[3].hash)})] == ['t', 'c', 'e1', 'r']
  stale = {(s.name, '0' * 64) for s in plan}
  assert stages.prune_published(plan, stale) == plan
