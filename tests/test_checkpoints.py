"""Checkpoint files: atomic round trip, strict loading, safe loading, and the refusal messages."""
import os

import numpy as np
import pytest
import torch

import losses
import utils
from configs.default_configs import get_base_config
from models import utils as mutils
from models.ema import ExponentialMovingAverage


def mlp_config(hidden=(16, 16)):
  config = get_base_config()
  config.model.name = 'mlp'
  config.model.hidden_dims = hidden
  config.model.embedding_dim = 8
  config.data.num_channels = 2
  return config


def make_state(config):
  model = mutils.create_model(config)
  return dict(model=model, optimizer=losses.get_optimizer(config, model.parameters()),
              ema=ExponentialMovingAverage(model.parameters(), config.model.ema_rate), step=0)


def trained_state(config, steps=3):
  state = make_state(config)
  step_fn = losses.get_step_fn(__import__('sde_lib').VPSDE(), True, losses.optimization_manager(config))
  torch.manual_seed(0)
  for _ in range(steps):
    step_fn(state, torch.randn(8, 2))
  return state


def test_round_trip_is_exact_and_uses_official_layout(tmp_path):
  config = mlp_config()
  state = trained_state(config)
  path = tmp_path / 'ckpt' / 'checkpoint_3.pth'
  utils.save_checkpoint(path, dict(state, config=config))
  raw = torch.load(path, weights_only=True)
  assert {'optimizer', 'model', 'ema', 'step', 'config'} <= set(raw)
  assert all(k.startswith('module.') for k in raw['model'])
  assert raw['step'] == 3
  fresh = make_state(config)
  utils.restore_checkpoint(path, fresh, 'cpu')
  assert fresh['step'] == 3
  for (k, v), w in zip(state['model'].state_dict().items(), fresh['model'].state_dict().values()):
    torch.testing.assert_close(v, w, rtol=0, atol=0)
  for a, b in zip(state['ema'].shadow_params, fresh['ema'].shadow_params):
    torch.testing.assert_close(a, b, rtol=0, atol=0)
  assert fresh['optimizer'].state_dict()['state'].keys() == state['optimizer'].state_dict()['state'].keys()
  assert not [f for f in os.listdir(path.parent) if f.startswith('.tmp-')]


def test_prefix_is_optional(tmp_path):
  config = mlp_config()
  state = trained_state(config)
  path = tmp_path / 'bare.pth'
  torch.save({'model': state['model'].state_dict(), 'ema': state['ema'].state_dict(), 'step': 7,
              'optimizer': state['optimizer'].state_dict()}, path)
  fresh = make_state(config)
  utils.restore_checkpoint(path, fresh, 'cpu')
  assert fresh['step'] == 7


def test_missing_file_is_an_error_not_a_fresh_start(tmp_path):
  with pytest.raises(utils.CheckpointError, match='no checkpoint file at .*nothing.pth'):
    utils.restore_checkpoint(tmp_path / 'nothing.pth', make_state(mlp_config()), 'cpu')


def test_truncated_and_foreign_files(tmp_path):
  config = mlp_config()
  path = tmp_path / 'c.pth'
  utils.save_checkpoint(path, trained_state(config))
  data = path.read_bytes()
  truncated = tmp_path / 'truncated.pth'
  truncated.write_bytes(data[: len(data) // 2])
  with pytest.raises(utils.CheckpointError, match='truncated, corrupt or not a PyTorch checkpoint'):
    utils.restore_checkpoint(truncated, make_state(config), 'cpu')
  text = tmp_path / 'notes.pth'
  text.write_text('hello')
  with pytest.raises(utils.CheckpointError, match='notes.pth'):
    utils.restore_checkpoint(text, make_state(config), 'cpu')
  tensor_only = tmp_path / 'tensor.pth'
  torch.save(torch.zeros(3), tensor_only)
  with pytest.raises(utils.CheckpointError, match='not a checkpoint: it holds a Tensor'):
    utils.restore_checkpoint(tensor_only, make_state(config), 'cpu')
  weights_only = tmp_path / 'weights.pth'
  torch.save({'weights': torch.zeros(3)}, weights_only)
  with pytest.raises(utils.CheckpointError, match=r"lacks \['model', 'ema', 'step'\]"):
    utils.restore_checkpoint(weights_only, make_state(config), 'cpu')


class Evil:
  def __reduce__(self):
    return (os.system, ('echo pwned',))


def test_pickled_code_is_refused(tmp_path):
  path = tmp_path / 'evil.pth'
  torch.save({'model': {}, 'ema': {}, 'step': Evil()}, path)
  with pytest.raises(utils.CheckpointError, match='refusing to load'):
    utils.load_file(path)


def test_mismatched_model_names_keys(tmp_path):
  path = tmp_path / 'c.pth'
  utils.save_checkpoint(path, trained_state(mlp_config((16, 16))))
  with pytest.raises(utils.CheckpointError) as info:
    utils.restore_checkpoint(path, make_state(mlp_config((16, 16, 16))), 'cpu')
  assert 'missing keys (4): blocks.2.fc.bias, blocks.2.fc.weight, blocks.2.temb.bias, blocks.2.temb.weight' in str(info.value)
  with pytest.raises(utils.CheckpointError, match=r'shape mismatches .*blocks.0.fc.weight'):
    utils.restore_checkpoint(path, make_state(mlp_config((32, 16))), 'cpu')


def test_numpy_scalar_learning_rate_is_allowed(tmp_path):
  """Trained official checkpoints hold numpy.float64 learning rates; they load, arbitrary objects do not."""
  config = mlp_config()
  state = trained_state(config)
  for g in state['optimizer'].param_groups:
    g['lr'] = config.optim.lr * np.minimum(3 / 5000, 1.0)   # what the official optimize_fn stores
  assert isinstance(state['optimizer'].param_groups[0]['lr'], np.float64)
  path = tmp_path / 'np.pth'
  torch.save({'optimizer': state['optimizer'].state_dict(), 'model': state['model'].state_dict(),
              'ema': state['ema'].state_dict(), 'step': 3}, path)
  with pytest.raises(Exception):
    torch.load(path, weights_only=True)        # the plain safe load refuses it ...
  fresh = make_state(config)
  utils.restore_checkpoint(path, fresh, 'cpu')  # ... ours allows exactly the numpy scalar types
  assert fresh['optimizer'].param_groups[0]['lr'] == pytest.approx(2e-4 * 3 / 5000)
  torch.save({'model': {}, 'ema': {}, 'step': np.arange(3)}, path)
  with pytest.raises(utils.CheckpointError, match='refusing to load'):
    utils.load_file(path)


def test_pretrained_start_takes_weights_not_step(tmp_path):
  config = mlp_config()
  state = trained_state(config, steps=4)
  path = tmp_path / 'pre.pth'
  utils.save_checkpoint(path, state)
  fresh = make_state(config)
  assert utils.restore_pretrained(path, fresh['model'], fresh['ema']) == 4
  for a, b in zip(state['model'].parameters(), fresh['model'].parameters()):
    torch.testing.assert_close(a, b, rtol=0, atol=0)
  assert fresh['step'] == 0


@pytest.mark.parametrize('name', ['ncsnpp_ve', 'ddpmpp_vp'])
def test_official_checkpoint_restores_strictly_with_same_outputs(name, tmp_path):
  """An official score_sde file loads through restore_checkpoint (model, EMA, optimizer, step) and the
  EMA weights reproduce the official outputs; our re-save loads back identically."""
  from official_fixtures import REL_TOL, _fixture, config_from_json
  import run_lib
  config = config_from_json(name)
  io = torch.load(_fixture(f'io_{name}.pt'), weights_only=True)
  state = run_lib.create_state(config, 'cpu')
  utils.restore_checkpoint(_fixture(f'ckpt_{name}.pth'), state, 'cpu')
  assert state['step'] == 1234
  model = state['model'].eval()
  with torch.no_grad():
    raw = model(io['x'], io['labels'])
    state['ema'].copy_to(model.parameters())
    ema_out = model(io['x'], io['labels'])
  ref_max = io['model_out'].abs().max()
  assert (raw - io['model_out']).abs().max() <= REL_TOL * ref_max
  assert (ema_out - io['model_out_ema']).abs().max() <= REL_TOL * io['model_out_ema'].abs().max()
  path = tmp_path / 'resaved.pth'
  utils.save_checkpoint(path, state)
  again = run_lib.create_state(config, 'cpu')
  utils.restore_checkpoint(path, again, 'cpu')
  for a, b in zip(state['model'].state_dict().values(), again['model'].state_dict().values()):
    assert torch.equal(a, b)


def test_official_checkpoint_into_other_architecture_is_refused():
  from official_fixtures import _fixture, config_from_json
  import run_lib
  config = config_from_json('ddpmpp_vp')
  config.model.nf = 32
  with pytest.raises(utils.CheckpointError, match='shape mismatches'):
    utils.restore_checkpoint(_fixture('ckpt_ddpmpp_vp.pth'), run_lib.create_state(config, 'cpu'), 'cpu')
  config = config_from_json('ddpmpp_vp')
  config.model.progressive_input = 'residual'
  with pytest.raises(utils.CheckpointError, match='missing keys'):
    utils.restore_checkpoint(_fixture('ckpt_ddpmpp_vp.pth'), run_lib.create_state(config, 'cpu'), 'cpu')
