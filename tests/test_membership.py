"""The loss-based membership test (evaluation/membership.py): the AUC against hand-computed cases and against
scipy/sklearn, DeLong's SE against its definition, the fixed draws, and the whole test on analytic score models
of the 2-D toy (a model that memorised the D_f training items against the exact density)."""
import json
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

import datasets
import run_lib
import sde_lib
from evaluation import membership as M
from evaluation import run as E
from toy_configs import tiny_toy_config


@pytest.mark.parametrize('member, nonmember, auc', [
  ([1., 2.], [3., 4.], 1.),          # every held-out item has a higher loss
  ([3., 4.], [1., 2.], 0.),
  ([1., 3.], [2., 4.], 0.75),        # pairs (n > m): 2>1, 4>1, 4>3 of 4
  ([1., 2.], [2., 3.], 0.875),       # 2>1, 3>1, 3>2 and one tie (counted half): 3.5 of 4
  ([5., 5., 5.], [5., 5.], 0.5),     # all ties
])
def test_auc_of_hand_computed_cases(member, nonmember, auc):
  out = M.membership_auc(member, nonmember)
  assert out['auc'] == pytest.approx(auc, abs=1e-12)
  assert out['n_member'] == len(member) and out['n_nonmember'] == len(nonmember)


def test_auc_matches_sklearn_and_delong_matches_its_definition():
  from sklearn.metrics import roc_auc_score
  rng = np.random.default_rng(0)
  member = np.round(rng.normal(0., 1., 137), 1)        # rounded: many ties
  nonmember = np.round(rng.normal(0.4, 1.2, 61), 1)
  out = M.membership_auc(member, nonmember)
  labels = np.r_[np.ones(member.size), np.zeros(nonmember.size)]
  assert out['auc'] == pytest.approx(roc_auc_score(labels, -np.r_[member, nonmember]), abs=1e-12)
  # DeLong from the placement values ψ(n, m) = [n > m] + ½[n = m], written out pair by pair
  psi = (nonmember[:, None] > member[None, :]) + 0.5 * (nonmember[:, None] == member[None, :])
  v_n, v_m = psi.mean(axis=1), psi.mean(axis=0)
  se = math.sqrt(v_n.var(ddof=1) / nonmember.size + v_m.var(ddof=1) / member.size)
  assert out['se'] == pytest.approx(se, rel=1e-10)
  assert out['ci95'][0] == pytest.approx(out['auc'] - 1.959964 * se) and out['ci95'][1] <= 1.


def test_auc_of_identical_and_separated_distributions():
  rng = np.random.default_rng(1)
  same = M.membership_auc(rng.normal(size=4000), rng.normal(size=4000))
  assert abs(same['auc'] - 0.5) < 3 * same['se'] and same['se'] < 0.01 and same['p_value'] > 0.001
  apart = M.membership_auc(rng.normal(0., 1., 500), rng.normal(10., 1., 500))
  assert apart['auc'] == 1. and apart['p_value'] < 1e-50 and apart['ci95'][1] == 1.


def test_auc_refuses_empty_sides_and_non_finite_losses():
  with pytest.raises(ValueError, match='both sides'):
    M.membership_auc([], [1.])
  with pytest.raises(ValueError, match='non-finite'):
    M.membership_auc([1., float('nan')], [1.])
  assert M.membership_auc([1.], [2.])['se'] is None      # one item per side: no standard error


def test_settings_refusals():
  config = tiny_toy_config()
  config.mia.num_draws = 0
  with pytest.raises(ValueError, match='mia.num_draws'):
    M.get_settings(config)
  config = tiny_toy_config()
  config.mia.t_min, config.mia.t_max = 0.5, 0.2
  with pytest.raises(ValueError, match='mia.t_min/t_max'):
    M.get_settings(config)
  config.mia.t_min, config.mia.t_max, config.mia.num_items = 0., 1., -1
  with pytest.raises(ValueError, match='mia.num_items'):
    M.get_settings(config)
  config.mia.num_items = 0
  assert M.get_settings(config).t_range == (config.training.eps, 1.)


def test_draws_are_fixed_stratified_and_shared():
  t, z = M.fixed_draws(8, (2,), (0.1, 0.5), seed=3)
  t2, z2 = M.fixed_draws(8, (2,), (0.1, 0.5), seed=3)
  assert torch.equal(t, t2) and torch.equal(z, z2) and z.shape == (8, 2)
  strata = ((t.double() - 0.1) / 0.4 * 8).floor()       # one draw in each of the 8 equal strata
  assert torch.equal(strata, torch.arange(8, dtype=torch.float64))


class MixtureScoreModel(nn.Module):
  """The exact noise prediction of p_t for data ~ Σ_k w_k N(μ_k, s² I) under a VP SDE (continuous labels)."""

  def __init__(self, sde, means, weights, std):
    super().__init__()
    self.sde, self.std = sde, float(std)
    self.register_buffer('means', torch.as_tensor(means, dtype=torch.float64))
    self.register_buffer('log_w', torch.log(torch.as_tensor(weights, dtype=torch.float64) / sum(weights)))

  def forward(self, x, labels):
    t = labels.double() / sde_lib.VP_CONTINUOUS_LABEL_SCALE
    m, sigma = self.sde.marginal_prob(torch.ones_like(t), t)
    var = (m ** 2 * self.std ** 2 + sigma ** 2)[:, None, None]          # [B, 1, 1]
    diff = x.double()[:, None, :] - m[:, None, None] * self.means[None]  # [B, K, D]
    logp = self.log_w[None] - 0.5 * (diff ** 2).sum(-1) / var[..., 0]    # [B, K]
    post = torch.softmax(logp, dim=1)
    score = -(post[..., None] * diff).sum(1) / var[:, 0]                  # [B, D]
    return (-sigma[:, None] * score).to(x.dtype)                          # the noise ε̂ = −σ_t s


def test_a_model_that_memorised_d_f_is_recognised_and_the_exact_density_is_not():
  """A score model that memorised the D_f training items (a narrow mixture at each of them) denoises them far
  better than held-out D_f items: AUC near 1. The exact density's score treats both alike: AUC near 0.5. In two
  dimensions 200 items lie close together, so the memorised score stands out at small noise only (at the default
  t ∈ [0.05, 0.3] its AUC is 0.68)."""
  config = tiny_toy_config()
  config.mia.num_draws, config.mia.t_min, config.mia.t_max = 8, 0.001, 0.02
  data = datasets.get_dataset(config, evaluation=True)
  sde = sde_lib.get_sde(config)
  members = M._subset(data.train.forget, 0, 0)
  memoriser = MixtureScoreModel(sde, members, [1.] * len(members), 0.05)
  exact = MixtureScoreModel(sde, data.density.means, data.density.weights, data.density.std)
  mem = M.membership(config, memoriser, sde, data, 'cpu')
  ex = M.membership(config, exact, sde, data, 'cpu')
  assert mem['n_member'] == 200 and mem['n_nonmember'] == 40
  assert mem['auc'] > 0.9 and mem['p_value'] < 1e-6
  assert mem['loss_member']['mean'] < mem['loss_nonmember']['mean']
  assert abs(ex['auc'] - 0.5) < 3 * ex['se']
  # the per-item losses do not depend on how the items are batched
  t, z = M.fixed_draws(4, (2,), (0.05, 0.3), 0)
  x = members[:50]
  torch.testing.assert_close(M.item_losses(exact, sde, x, t, z, batch_size=4),
                             M.item_losses(exact, sde, x, t, z, batch_size=1000), rtol=1e-6, atol=1e-9)


def test_eval_writes_the_membership_entry(tmp_path):
  config = tiny_toy_config(4)
  run_lib.train(config, str(tmp_path), 'standard', progress=False)
  config.eval.enable_bpd, config.eval.enable_sampling = False, False
  config.eval.enable_mia = True
  config.mia.num_items, config.mia.num_draws = 30, 4
  results = E.evaluate(config, str(tmp_path), 'standard', progress=False)
  saved = json.load(open(tmp_path / 'eval' / 'results.json'))['membership']
  assert saved['auc'] == results['membership']['auc'] and 0. <= saved['auc'] <= 1.
  assert saved['n_member'] == 30 and saved['n_nonmember'] == 30 and saved['num_draws'] == 4
  assert saved['t_range'] == [0.05, 0.3] and saved['se'] > 0
  assert 'membership AUC' in open(tmp_path / 'eval' / 'results.md').read()
  # the same draws and items for every evaluation: the same numbers again
  again = E.evaluate(config, str(tmp_path), 'standard', 'eval2', progress=False)['membership']
  assert again['auc'] == saved['auc'] and again['loss_member'] == saved['loss_member']
  config.mia.num_draws = 0
  with pytest.raises(ValueError, match='mia.num_draws'):
    E.evaluate(config, str(tmp_path), 'standard', 'eval3', progress=False)
  assert not os.path.exists(tmp_path / 'eval3')


def test_discrete_training_draws_noise_levels():
  """With discrete training (DDPM levels) the same draws become levels ⌊t·N⌋; the exact model still treats both
  sides alike."""
  config = tiny_toy_config()
  config.training.continuous = False
  config.mia.num_draws = 4
  data = datasets.get_dataset(config, evaluation=True)
  sde = sde_lib.get_sde(config)
  exact = MixtureScoreModel(sde, data.density.means, data.density.weights, data.density.std)
  out = M.membership(config, exact, sde, data, 'cpu')
  assert out['continuous'] is False and abs(out['auc'] - 0.5) < 3 * out['se']
  assert math.isfinite(out['loss_member']['mean']) and out['loss_member']['mean'] > 0
