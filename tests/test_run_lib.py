"""Training runs on the 2-D toy: resume equals an uninterrupted run, fine-tuning, refusals, NaN handling."""
import json
import os

import pytest
import torch

import losses
from unlearning import noisy_classifier
import run_lib
import utils
from configs.toy.gmm2d import get_config


def tiny_config(n_iters=12):
  config = get_config()
  c = config.training
  c.n_iters = n_iters
  c.batch_size = 64
  c.batch_size_un = 32
  c.snapshot_freq = 6
  c.snapshot_freq_for_preemption = 6
  c.log_freq = 3
  c.eval_freq = 4
  c.snapshot_sampling = False
  config.model.hidden_dims = (32, 32)
  config.model.embedding_dim = 16
  config.data.num_train = 1000
  config.data.num_test = 200
  config.device = 'cpu'
  return config


def params(state):
  return [p.detach().clone() for p in state['model'].parameters()]


@pytest.mark.parametrize('task', ['square', 'obtuse'])
def test_resume_gives_the_same_parameters(tmp_path, task):
  full = run_lib.train(tiny_config(12), str(tmp_path / 'full'), task, progress=False)
  part = tmp_path / 'part'
  run_lib.train(tiny_config(6), str(part), task, progress=False)   # "interrupted" after 6 steps
  resumed = run_lib.train(tiny_config(12), str(part), task, progress=False)
  assert resumed['step'] == full['step'] == 12
  for a, b in zip(params(full), params(resumed)):
    torch.testing.assert_close(a, b, rtol=0, atol=0)
  for a, b in zip(full['ema'].shadow_params, resumed['ema'].shadow_params):
    torch.testing.assert_close(a, b, rtol=0, atol=0)
  # the changed n_iters was recorded beside the original config, which is kept
  assert json.load(open(part / 'config.json'))['training']['n_iters'] == 6
  assert json.load(open(part / 'config_step6.json'))['training']['n_iters'] == 12


def test_layout_and_logs(tmp_path):
  config = tiny_config(12)
  config.training.snapshot_sampling = True
  config.training.snapshot_num_samples = 50
  config.model.num_scales = 50   # 50 Euler-Maruyama steps for the snapshot
  run_lib.train(config, str(tmp_path), 'orthogonal', progress=False)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['checkpoint_1.pth', 'checkpoint_2.pth']
  assert os.path.exists(tmp_path / 'checkpoints-meta' / 'checkpoint.pth')
  assert torch.load(tmp_path / 'checkpoints' / 'checkpoint_2.pth', weights_only=True)['step'] == 12
  samples = torch.load(tmp_path / 'samples' / 'iter_12' / 'sample.pt', weights_only=True)
  assert samples.shape == (50, 2) and torch.isfinite(samples).all()
  assert os.path.exists(tmp_path / 'samples' / 'iter_12' / 'sample.png')
  log = open(tmp_path / 'stdout.txt').read()
  assert 'step 12: loss' in log and 'loss_f' in log
  assert os.listdir(tmp_path / 'tensorboard')


def test_same_seed_same_result_other_seed_differs(tmp_path):
  a = run_lib.train(tiny_config(5), str(tmp_path / 'a'), 'standard', progress=False)
  b = run_lib.train(tiny_config(5), str(tmp_path / 'b'), 'standard', progress=False)
  other = tiny_config(5)
  other.seed = 7
  c = run_lib.train(other, str(tmp_path / 'c'), 'standard', progress=False)
  for x, y in zip(params(a), params(b)):
    torch.testing.assert_close(x, y, rtol=0, atol=0)
  assert any(not torch.equal(x, y) for x, y in zip(params(a), params(c)))


def test_finetune_starts_from_the_pretrained_weights(tmp_path):
  pre = run_lib.train(tiny_config(6), str(tmp_path / 'pre'), 'standard', progress=False)
  config = tiny_config(1)
  config.optim.lr = 0.            # no movement: the fine-tuned model must equal the pretrained one
  config.training.pretrained = str(tmp_path / 'pre' / 'checkpoints' / 'checkpoint_1.pth')
  tuned = run_lib.train(config, str(tmp_path / 'tuned'), 'square', finetune=True, progress=False)
  for a, b in zip(params(pre), params(tuned)):
    torch.testing.assert_close(a, b, rtol=0, atol=0)
  assert tuned['step'] == 1


def test_finetune_refusals(tmp_path):
  config = tiny_config(2)
  with pytest.raises(run_lib.TrainingError, match='set --config.training.pretrained'):
    run_lib.train(config, str(tmp_path / 'a'), 'square', finetune=True, progress=False)
  config.training.pretrained = str(tmp_path / 'missing.pth')
  with pytest.raises(run_lib.TrainingError, match='no checkpoint at config.training.pretrained=.*missing.pth'):
    run_lib.train(config, str(tmp_path / 'b'), 'square', finetune=True, progress=False)
  assert not os.path.exists(tmp_path / 'b' / 'checkpoints')


def test_mismatched_pretrained_checkpoint_is_refused(tmp_path):
  run_lib.train(tiny_config(6), str(tmp_path / 'pre'), 'standard', progress=False)
  config = tiny_config(2)
  config.model.hidden_dims = (32, 32, 32)
  config.training.pretrained = str(tmp_path / 'pre' / 'checkpoints' / 'checkpoint_1.pth')
  with pytest.raises(utils.CheckpointError, match='missing keys'):
    run_lib.train(config, str(tmp_path / 'b'), 'square', finetune=True, progress=False)


def test_corrupt_resume_checkpoint_is_refused_and_kept(tmp_path):
  run_lib.train(tiny_config(6), str(tmp_path), 'standard', progress=False)
  meta = tmp_path / 'checkpoints-meta' / 'checkpoint.pth'
  data = meta.read_bytes()
  meta.write_bytes(data[:1000])
  with pytest.raises(utils.CheckpointError, match='truncated'):
    run_lib.train(tiny_config(12), str(tmp_path), 'standard', progress=False)
  assert meta.read_bytes() == data[:1000]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  run_lib.train(tiny_config(6), str(tmp_path), 'standard', progress=False)
  meta = tmp_path / 'checkpoints-meta' / 'checkpoint.pth'
  before = meta.read_bytes()
  original = losses.dsm_loss
  calls = {'n': 0}

  def poisoned(p, reduce_mean):
    calls['n'] += 1
    value = original(p, reduce_mean)
    return value * float('nan') if calls['n'] >= 3 else value

  monkeypatch.setattr(losses, 'dsm_loss', poisoned)
  with pytest.raises(run_lib.TrainingError, match='the loss became nan at step 8'):
    run_lib.train(tiny_config(12), str(tmp_path), 'standard', progress=False)
  assert meta.read_bytes() == before
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['checkpoint_1.pth']


def test_bad_task_and_config_values(tmp_path):
  with pytest.raises(ValueError, match="unknown task 'forgetting'"):
    run_lib.train(tiny_config(2), str(tmp_path), 'forgetting', progress=False)
  config = tiny_config(2)
  config.unlearn.forget = 'left,centre,right'
  with pytest.raises(ValueError, match='every class'):
    run_lib.train(config, str(tmp_path / 'x'), 'square', progress=False)
  config = tiny_config(2)
  config.unlearn.forget = 'middle'
  with pytest.raises(ValueError, match='centre'):
    run_lib.train(config, str(tmp_path / 'y'), 'square', progress=False)
  config = tiny_config(2)
  config.training.sde = 'xsde'
  with pytest.raises(ValueError, match='valid: subvpsde, vesde, vpsde'):
    run_lib.train(config, str(tmp_path / 'z'), 'square', progress=False)


def test_finetune_from_the_official_checkpoint_starts_from_its_weights(tmp_path):
  """--finetune from the official score_sde file (DDPM++ VP fixture) on a small image folder: with lr 0
  the model keeps the file's raw weights, and the EMA continues from the file's EMA weights."""
  import numpy as np
  from PIL import Image
  from official_fixtures import _fixture, config_from_json
  ckpt_path = _fixture('ckpt_ddpmpp_vp.pth')
  root = tmp_path / 'images'
  rng = np.random.default_rng(0)
  for cls in ('cats', 'dogs'):
    (root / cls).mkdir(parents=True)
    for i in range(10):
      Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / cls / f'{i}.png')
  config = config_from_json('ddpmpp_vp')
  config.data.dataset = 'IMAGEFOLDER'
  config.data.root = str(root)
  config.unlearn.forget = 'dogs'
  t = config.training
  t.n_iters, t.batch_size, t.batch_size_un, t.snapshot_freq, t.snapshot_freq_for_preemption = 1, 4, 4, 1, 1
  t.snapshot_sampling = False
  t.eval_freq = 0
  t.pretrained = str(ckpt_path)
  config.optim.lr = 0.
  config.model.ema_rate = 0.
  config.device = 'cpu'
  state = run_lib.train(config, str(tmp_path / 'run'), 'square', finetune=True, progress=False)
  official = torch.load(ckpt_path, weights_only=True)
  for key, value in state['model'].state_dict().items():
    torch.testing.assert_close(value, official['model']['module.' + key], rtol=0, atol=0)
  # EMA decay 0 after one update copies the (unchanged) raw weights; before the update it held the file's EMA
  saved = torch.load(tmp_path / 'run' / 'checkpoints' / 'checkpoint_1.pth', weights_only=True)
  assert saved['step'] == 1
  trainable = [p for p in state['model'].parameters() if p.requires_grad]
  for s, p in zip(saved['ema']['shadow_params'], trainable):
    torch.testing.assert_close(s, p.detach(), rtol=0, atol=0)


def test_toy_best_preset_loads_and_trains(tmp_path):
  import unlearning
  run_lib.train(tiny_config(6), str(tmp_path / 'unseen'), 'unseen', progress=False)
  config = _with_preset(tiny_config(4))
  with pytest.raises(ValueError, match="preset='toy-best' needs a reference model .*--task unseen"):
    run_lib.train(config, str(tmp_path / 'run'), 'norm', progress=False)
  assert not os.path.exists(tmp_path / 'run')
  config = _with_preset(tiny_config(4))
  config.unlearn.reference = str(tmp_path / 'unseen' / 'checkpoints' / 'checkpoint_1.pth')
  with pytest.raises(ValueError, match="preset='toy-best' needs a noisy classifier .*train_noisy_classifier"):
    run_lib.train(config, str(tmp_path / 'run'), 'norm', progress=False)
  assert not os.path.exists(tmp_path / 'run')
  nc_config = tiny_config(4)
  nc_config.noisy_classifier.n_iters = 5
  config.unlearn.classifier = str(tmp_path / 'nc' / noisy_classifier.FILENAME)
  noisy_classifier.train_noisy_classifier(nc_config, config.unlearn.classifier, progress=False)
  state = run_lib.train(config, str(tmp_path / 'run'), 'norm', progress=False)
  assert state['step'] == 4
  saved = json.load(open(tmp_path / 'run' / 'config.json'))['unlearn']
  for key, value in unlearning.all_presets()['toy-best'][1]['unlearn'].items():
    assert saved[key] == value
  log = open(tmp_path / 'run' / 'stdout.txt').read()
  assert 'step 3: loss' in log and 'loss_f' in log      # the forget term ran (forget_every = 1)
  with pytest.raises(ValueError, match='builds on --task obtuse'):
    run_lib.train(_with_preset(tiny_config(4)), str(tmp_path / 'other'), 'square', progress=False)
  assert not os.path.exists(tmp_path / 'other')


def _with_preset(config):
  config.unlearn.preset = 'toy-best'
  return config


def test_reference_model_is_loaded_frozen_or_refused(tmp_path):
  run_lib.train(tiny_config(6), str(tmp_path / 'ref'), 'unseen', progress=False)
  config = tiny_config(2)
  config.unlearn.obtuse_form = 'target'
  config.unlearn.reference = str(tmp_path / 'ref' / 'checkpoints' / 'checkpoint_1.pth')
  state = run_lib.train(config, str(tmp_path / 'run'), 'obtuse', progress=False)
  assert state['step'] == 2
  config.unlearn.reference = str(tmp_path / 'nope.pth')
  with pytest.raises(ValueError, match='no reference checkpoint at config.unlearn.reference=.*nope.pth'):
    run_lib.train(config, str(tmp_path / 'run2'), 'obtuse', progress=False)
