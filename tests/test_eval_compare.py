"""Paired comparison of two evaluated runs: hand-computed differences, Fisher's test, refusals, CLI."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from evaluation import compare as C
from evaluation import nll_items
from evaluation.stats import paired_difference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_paired_difference_by_hand():
  d = paired_difference([1., 2., 3., 4.], [1.5, 2.5, 3.1, 4.9])      # differences 0.5, 0.5, 0.1, 0.9
  assert d.mean == pytest.approx(0.5) and d.n == 4
  assert d.sem == pytest.approx(math.sqrt((0 + 0 + 0.16 + 0.16) / 3) / 2)
  with pytest.raises(ValueError, match='same items'):
    paired_difference([1., 2.], [1., 2., 3.])


def test_pairing_removes_the_shared_item_difficulty():
  """Items of widely varying difficulty, run B = run A + 0.01 + small noise: each run's SEM is large, the
  paired SEM is that of the noise alone."""
  rng = np.random.default_rng(0)
  a = rng.normal(2., 0.5, 400)
  noise = rng.normal(0., 0.002, 400)
  d = paired_difference(a, a + 0.01 + noise)
  assert d.mean == pytest.approx(0.01 + noise.mean())
  assert d.sem == pytest.approx(noise.std(ddof=1) / 20)
  assert d.sem < 0.01 * (a.std(ddof=1) / 20)


def _fisher_two_sided(k_a, n_a, k_b, n_b):
  """Fisher's exact test by direct summation of the hypergeometric table probabilities."""
  total_k, n = k_a + k_b, n_a + n_b

  def prob(k):
    return math.comb(n_a, k) * math.comb(n_b, total_k - k) / math.comb(n, total_k)
  observed = prob(k_a)
  return sum(prob(k) for k in range(max(0, total_k - n_b), min(n_a, total_k) + 1)
             if prob(k) <= observed * (1 + 1e-7))


def _fake_run(path, retain, forget, k, n=500, dataset='MNIST5K', step=3000):
  os.makedirs(os.path.join(path, 'eval'), exist_ok=True)
  results = {'task': 'obtuse', 'dataset': dataset, 'forget': ['3'], 'step': step,
             'nll_bpd': {'retain': {'mean': float(np.mean(retain))}, 'forget': {'mean': float(np.mean(forget))}},
             'unlearning_ratio': {'percent': 100. * k / n, 'num_forget': k, 'num_samples': n}}
  with open(os.path.join(path, 'eval', 'results.json'), 'w') as f:
    json.dump(results, f)
  nll = {'retain': {'items_bpd': retain, 'items_nats': np.asarray(retain) * 2},
         'forget': {'items_bpd': forget, 'items_nats': np.asarray(forget) * 2}}
  nll_items.save_items(os.path.join(path, 'eval', nll_items.items_filename(step)), nll)
  return str(path)


def test_compare_two_runs(tmp_path):
  a = _fake_run(tmp_path / 'a', [1.6, 1.7, 1.5], [1.9, 2.0], k=7)
  b = _fake_run(tmp_path / 'b', [1.62, 1.71, 1.53], [2.9, 3.2], k=2)
  r = C.compare(C.load_run(a), C.load_run(b))
  g = r['nll']['retain']
  assert g['diff'] == pytest.approx(0.02) and g['n'] == 3
  assert g['sem'] == pytest.approx(np.std([0.02, 0.01, 0.03], ddof=1) / math.sqrt(3))
  assert g['p'] == pytest.approx(2 * (1 - 0.5 * (1 + math.erf(0.02 / g['sem'] / math.sqrt(2)))))
  assert r['nll']['forget']['diff'] == pytest.approx(1.1)
  u = r['unlearning_ratio']
  assert (u['k_a'], u['k_b'], u['a'], u['b']) == (7, 2, 1.4, 0.4)
  assert u['p'] == pytest.approx(_fisher_two_sided(7, 500, 2, 500), rel=1e-9)
  text = C.markdown(r, 'a', 'b')
  assert '| NLL D_g bits/dim (n=3) | 1.6000 | 1.6200 | +0.0200 ±' in text
  assert '1.40 (7/500) | 0.40 (2/500) | -1.00' in text


def test_compare_refusals(tmp_path):
  a = _fake_run(tmp_path / 'a', [1.6, 1.7, 1.5], [1.9, 2.0], k=7)
  other = _fake_run(tmp_path / 'other', [1.6, 1.7, 1.5], [1.9, 2.0], k=7, dataset='MNIST')
  with pytest.raises(C.CompareError, match='differ in dataset'):
    C.compare(C.load_run(a), C.load_run(other))
  fewer = _fake_run(tmp_path / 'fewer', [1.6, 1.7], [1.9, 2.0], k=7)
  with pytest.raises(C.CompareError, match='different retain items \\(3 and 2\\)'):
    C.compare(C.load_run(a), C.load_run(fewer))
  with pytest.raises(C.CompareError, match='evaluate the run first'):
    C.load_run(str(tmp_path / 'missing'))
  # a damaged per-item file
  with open(tmp_path / 'fewer' / 'eval' / 'nll_items_3000.npz', 'wb') as f:
    f.write(b'PK\x03\x04 not a zip')
  with pytest.raises(ValueError, match='cannot read per-item NLLs'):
    C.load_run(fewer)
  os.remove(tmp_path / 'fewer' / 'eval' / 'nll_items_3000.npz')
  with pytest.raises(ValueError, match='no per-item NLL file'):
    C.load_run(fewer)


def test_cli(tmp_path):
  a = _fake_run(tmp_path / 'a', [1.6, 1.7, 1.5], [1.9, 2.0], k=7)
  b = _fake_run(tmp_path / 'b', [1.62, 1.71, 1.53], [2.9, 3.2], k=2)
  out = tmp_path / 'cmp.md'
  r = subprocess.run([sys.executable, '-m', 'evaluation.compare', a, b, '--out', str(out)], cwd=ROOT,
                     capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  assert r.stdout == out.read_text() and '| Unlearning Ratio % |' in r.stdout
  r = subprocess.run([sys.executable, '-m', 'evaluation.compare', a, str(tmp_path / 'nope')], cwd=ROOT,
                     capture_output=True, text=True)
  assert r.returncode == 2 and r.stderr.count('\n') == 1 and 'evaluate the run first' in r.stderr


def test_runs_of_any_method_compare_with_their_relearning_and_membership(tmp_path):
  import unlearning
  from evaluation.relearn import curve_area
  methods = [m.name for m in unlearning.registered()]
  for name in methods:   # every method's results compare with the first's
    run = _fake_run(tmp_path / name, [1.6, 1.7, 1.5], [1.9, 2.0], k=7)
    res = json.load(open(os.path.join(run, 'eval', 'results.json')))
    res['task'] = name
    with open(os.path.join(run, 'eval', 'results.json'), 'w') as f:
      json.dump(res, f)
  assert C.compare(C.load_run(str(tmp_path / methods[0])), C.load_run(str(tmp_path / methods[-1])))['nll']

  def attack(run, urs, counts, auc, se, lr=1e-4):
    points = [{'step': s, 'percent': u, 'ci95': [0, 100], 'num_samples': 500, 'num_forget': k}
              for s, u, k in zip((0, 50), urs, counts)]
    body = {'settings': {'steps': [0, 50], 'lr': lr, 'batch_size': 32, 'num_samples': 500, 'seed': 42},
            'curves': [{'k': 8, 'points': points, 'area': curve_area([0, 50], urs)}]}
    with open(os.path.join(run, 'eval', 'relearn.json'), 'w') as f:
      json.dump(body, f)
    res = json.load(open(os.path.join(run, 'eval', 'results.json')))
    res['membership'] = {'auc': auc, 'se': se}
    with open(os.path.join(run, 'eval', 'results.json'), 'w') as f:
      json.dump(res, f)

  a, b = str(tmp_path / 'sa'), str(tmp_path / 'vdu')
  attack(a, [1.0, 20.0], [5, 100], 0.60, 0.03)
  attack(b, [0.4, 3.0], [2, 15], 0.52, 0.04)
  r = C.compare(C.load_run(a), C.load_run(b))
  (rl,) = r['relearning']
  assert (rl['k'], rl['step'], rl['a'], rl['b'], rl['k_a'], rl['k_b']) == (8, 50, 20.0, 3.0, 100, 15)
  assert rl['p'] == pytest.approx(_fisher_two_sided(100, 500, 15, 500), rel=1e-9)
  assert (rl['mean_a'], rl['mean_b']) == (10.5, 1.7)
  m = r['membership']
  assert m['diff'] == pytest.approx(-0.08) and m['se'] == pytest.approx(0.05)
  text = C.markdown(r, 'sa', 'vdu')
  assert '| Relearn UR % after 50 steps, k = 8 | 20.00 (100/500) | 3.00 (15/500) | -17.00 |' in text
  assert '| MIA AUC on D_f | 0.600 | 0.520 | -0.080 ± 0.050 (unpaired) |' in text
  attack(b, [0.4, 3.0], [2, 15], 0.52, 0.04, lr=1e-3)   # another attack: its curves are not compared
  assert C.compare(C.load_run(a), C.load_run(b))['relearning'] == []


def test_mcnemar_pairs_the_samples_by_position():
  from evaluation import compare as C
  ua = {'percent': 5., 'num_samples': 100, 'num_forget': 5, 'forget_samples': [1, 2, 3, 4, 5]}
  ub = {'percent': 1., 'num_samples': 100, 'num_forget': 1, 'forget_samples': [1]}
  m = C.mcnemar(ua, ub)
  # 4 discordant pairs, all one way: two-sided exact p = 2 * 0.5^4
  assert m == {'only_a': 4, 'only_b': 0, 'p': pytest.approx(2 * 0.5 ** 4)}
  # the same counts in other positions: 5 + 1 discordant pairs split 5 : 1, p = 2 * (1 + 6) / 2^6
  moved = dict(ub, forget_samples=[50])
  assert C.mcnemar(ua, moved)['p'] == pytest.approx(2 * 7 / 64)
  assert C.mcnemar(ua, dict(ub, forget_samples=[1, 2, 3, 4, 5]))['p'] == 1.
  assert C.mcnemar(ua, {k: v for k, v in ub.items() if k != 'forget_samples'}) is None
  assert C.mcnemar(ua, dict(ub, num_samples=99)) is None
