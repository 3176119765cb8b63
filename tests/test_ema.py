"""EMA: the official warm-up decay, store/restore, and the official state layout."""
import pytest
import torch
from torch import nn

from models.ema import ExponentialMovingAverage


def test_warmup_decay_matches_official_formula():
  p = nn.Parameter(torch.tensor([0.]))
  frozen = nn.Parameter(torch.tensor([5.]), requires_grad=False)
  ema = ExponentialMovingAverage([p, frozen], decay=0.9999)
  assert len(ema.shadow_params) == 1          # frozen parameters are not averaged
  shadow = 0.
  for n in range(1, 6):
    p.data.fill_(float(n))
    d = min(0.9999, (1 + n) / (10 + n))
    shadow = d * shadow + (1 - d) * n
    ema.update([p, frozen])
    assert ema.shadow_params[0].item() == pytest.approx(shadow)
  assert ema.num_updates == 5


def test_store_copy_restore():
  p = nn.Parameter(torch.tensor([1., 2.]))
  ema = ExponentialMovingAverage([p], decay=0.5, use_num_updates=False)
  p.data.fill_(3.)
  ema.update([p])                              # shadow = 0.5·[1,2] + 0.5·3
  ema.store([p])
  ema.copy_to([p])
  torch.testing.assert_close(p.data, torch.tensor([2., 2.5]))
  ema.restore([p])
  torch.testing.assert_close(p.data, torch.tensor([3., 3.]))
  with pytest.raises(RuntimeError, match='before store'):
    ema.restore([p])


def test_state_dict_round_trip_and_mismatch():
  a = nn.Linear(3, 2)
  ema = ExponentialMovingAverage(a.parameters(), 0.999)
  ema.update(a.parameters())
  sd = ema.state_dict()
  assert set(sd) == {'decay', 'num_updates', 'shadow_params'}
  other = ExponentialMovingAverage(nn.Linear(3, 2).parameters(), 0.5)
  other.load_state_dict(sd)
  assert other.decay == 0.999 and other.num_updates == 1
  for x, y in zip(other.shadow_params, ema.shadow_params):
    torch.testing.assert_close(x, y)
  with pytest.raises(ValueError, match='has 2 tensors'):
    ExponentialMovingAverage(nn.Linear(3, 3, bias=False).parameters(), 0.9).load_state_dict(sd)
  with pytest.raises(ValueError, match='shape'):
    ExponentialMovingAverage(nn.Linear(4, 2).parameters(), 0.9).load_state_dict(sd)
