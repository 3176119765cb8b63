"""Paired comparison of two evaluated runs on the same test items.

    python -m evaluation.compare W_A W_B [--eval_folder eval] [--out FILE.md]

reads ``W/<eval_folder>/results.json`` and the per-item NLLs ``nll_items_<step>.npz`` of both runs and
prints, for D_g and D_f, the NLL of each run and the paired difference B − A (bits/dim; mean ± SEM over
the items, with a two-sided normal p-value), and the Unlearning Ratios with Fisher's exact test on the
forget-class counts and, where both results list their forget-class samples, McNemar's exact test paired by
sample; where both runs have them, the relearning attack (``relearn.json``: UR after the last
attack step per k, Fisher's test, and the mean UR over the attack) and the membership AUCs (difference ±
the two DeLong SEs combined as if independent, conservative since the items are shared). Runs of any
method compare. Refuses runs on different data sets, forget sets or test items.

The paired SEM covers the test items only: a second training seed moves a run by more than that
(docs/unlearning.md), so a significant paired difference says "these two models differ on these
items", not "these two recipes differ".
"""
import argparse
import json
import math
import os
import sys

from scipy import stats as scipy_stats

import utils
from evaluation import nll_items
from evaluation.report import RESULTS_FILENAME
from evaluation.stats import paired_difference


class CompareError(ValueError):
  """The two runs cannot be compared (missing files, other data or items)."""


def load_run(workdir, eval_folder='eval'):
  """``(results dict, per-item NLLs or None)`` of ``workdir``'s last evaluation."""
  path = os.path.join(workdir, eval_folder, RESULTS_FILENAME)
  if not os.path.isfile(path):
    raise CompareError(f'no {path}: evaluate the run first (--mode eval)')
  try:
    with open(path) as f:
      results = json.load(f)
  except (OSError, json.JSONDecodeError) as err:
    raise CompareError(f'cannot read {path}: {err}') from err
  items = None
  if results.get('nll_bpd'):
    items = nll_items.load_items(os.path.join(workdir, eval_folder, nll_items.items_filename(results['step'])))
  from evaluation import relearn
  attack = relearn.load(workdir, eval_folder)   # the relearning attack (--mode relearn), when run
  if attack is not None:
    results['relearning'] = attack
  return results, items


def _normal_p(mean, sem):
  if not sem:
    return float('nan')
  return float(2. * scipy_stats.norm.sf(abs(mean / sem)))


def compare(run_a, run_b):
  """Paired NLL differences and the Unlearning Ratio test of two ``load_run`` outputs (B − A).

  Returns ``{'nll': {part: {'a', 'b', 'diff', 'sem', 'p', 'n'}}, 'unlearning_ratio': {'a', 'b', 'k_a', 'k_b',
  'n_a', 'n_b', 'p'}, 'relearning': [{'k', 'step', 'a', 'b', 'k_a', 'k_b', 'n_a', 'n_b', 'p', 'mean_a', 'mean_b'}],
  'membership': {'a', 'b', 'diff', 'se', 'p'}}`` (bits/dim, percent, AUC); a part or metric either run lacks is
  left out (None or empty). Runs of any method compare; the relearning curves compare where both attacked
  with the same k, steps, learning rate, batch and number of samples (the same items and noise then).
  """
  (ra, ia), (rb, ib) = run_a, run_b
  for key in ('dataset', 'forget'):
    if ra.get(key) != rb.get(key):
      raise CompareError(f'the runs differ in {key}: {ra.get(key)!r} and {rb.get(key)!r}')
  out = {'nll': {}, 'unlearning_ratio': None}
  if ia is not None and ib is not None:
    for part in nll_items.PARTS:
      a, b = ia[f'{part}_bpd'], ib[f'{part}_bpd']
      if a.size != b.size:
        raise CompareError(f'the runs were evaluated on different {part} items ({a.size} and {b.size}): '
                           'evaluate both with the same eval.bpd_dataset and eval.bpd_num_samples')
      d = paired_difference(a, b)
      out['nll'][part] = {'a': float(a.mean()), 'b': float(b.mean()), 'diff': d.mean, 'sem': d.sem,
                          'p': _normal_p(d.mean, d.sem), 'n': d.n}
  ua, ub = ra.get('unlearning_ratio'), rb.get('unlearning_ratio')
  if ua and ub:
    ka, na, kb, nb = ua['num_forget'], ua['num_samples'], ub['num_forget'], ub['num_samples']
    p = scipy_stats.fisher_exact([[ka, na - ka], [kb, nb - kb]]).pvalue
    out['unlearning_ratio'] = {'a': ua['percent'], 'b': ub['percent'], 'k_a': ka, 'k_b': kb, 'n_a': na,
                               'n_b': nb, 'p': float(p), 'mcnemar': mcnemar(ua, ub)}
  out['relearning'] = compare_relearning(ra.get('relearning'), rb.get('relearning'))
  ma, mb = ra.get('membership'), rb.get('membership')
  out['membership'] = None
  if ma and mb:
    se = math.sqrt(ma['se'] ** 2 + mb['se'] ** 2) if ma.get('se') is not None and mb.get('se') is not None else None
    diff = mb['auc'] - ma['auc']
    out['membership'] = {'a': ma['auc'], 'b': mb['auc'], 'diff': diff, 'se': se,
                         'p': _normal_p(diff, se) if se else float('nan')}
  return out


def mcnemar_p(only_a, only_b):
  """Two-sided exact McNemar p-value: the discordant pairs split as ``only_a`` : ``only_b`` against 1 : 1."""
  n = int(only_a) + int(only_b)
  return 1. if n == 0 else float(scipy_stats.binomtest(int(only_a), n, 0.5).pvalue)


def mcnemar(ua, ub):
  """McNemar's exact test of two Unlearning Ratios paired by sample (sample i of A against sample i of B):
  ``{'only_a', 'only_b', 'p'}`` — samples counted as forget-class ones by A only and by B only — or None when
  either result lacks ``forget_samples``, holds non-finite samples or the counts differ. Pairs by position are
  valid whatever the noise; they are informative when both drew sample i from the same noise (the same
  ``config.seed`` and ``eval.batch_size``, as an evaluation of two runs of one seed does)."""
  fa, fb = ua.get('forget_samples'), ub.get('forget_samples')
  if fa is None or fb is None or ua['num_samples'] != ub['num_samples'] or ua.get('non_finite') or \
     ub.get('non_finite'):
    return None
  a, b = set(fa), set(fb)
  return {'only_a': len(a - b), 'only_b': len(b - a), 'p': mcnemar_p(len(a - b), len(b - a))}


_ATTACK_KEYS = ('steps', 'lr', 'batch_size', 'num_samples', 'seed')


def compare_relearning(a, b):
  """Per k both attacks share: the UR after the last step of each (Fisher's exact test on the counts) and
  the mean UR over the attack; [] when the attacks differ in their settings or either is missing. A k whose
  last points do not list their counts (older results) is left out."""
  if not a or not b:
    return []
  sa, sb = a.get('settings', {}), b.get('settings', {})
  if any(sa.get(k) != sb.get(k) for k in _ATTACK_KEYS):
    return []
  curves_b = {c['k']: c for c in b.get('curves', [])}
  out = []
  for ca in a.get('curves', []):
    cb = curves_b.get(ca['k'])
    if cb is None or not ca['points'] or not cb['points']:
      continue
    pa, pb = ca['points'][-1], cb['points'][-1]
    if any(pt.get(key) is None for pt in (pa, pb) for key in ('num_forget', 'num_samples')):
      continue
    ka, na, kb, nb = pa['num_forget'], pa['num_samples'], pb['num_forget'], pb['num_samples']
    p = scipy_stats.fisher_exact([[ka, na - ka], [kb, nb - kb]]).pvalue
    out.append({'k': ca['k'], 'step': pa['step'], 'a': pa['percent'], 'b': pb['percent'], 'k_a': ka, 'k_b': kb,
                'n_a': na, 'n_b': nb, 'p': float(p), 'mean_a': ca['area']['mean_percent'],
                'mean_b': cb['area']['mean_percent']})
  return out


def markdown(result, name_a, name_b):
  """The comparison as a Markdown table."""
  lines = [f'| metric | A: {name_a} | B: {name_b} | B − A (paired) | p |', '|---|---|---|---|---|']
  labels = {'retain': 'NLL D_g bits/dim', 'forget': 'NLL D_f bits/dim'}
  for part, r in result['nll'].items():
    sem = f' ± {r["sem"]:.4f}' if r['sem'] is not None and not math.isnan(r['sem']) else ''
    lines.append(f'| {labels[part]} (n={r["n"]}) | {r["a"]:.4f} | {r["b"]:.4f} | {r["diff"]:+.4f}{sem} | '
                 f'{r["p"]:.3g} |')
  u = result['unlearning_ratio']
  if u:
    lines.append(f'| Unlearning Ratio % | {u["a"]:.2f} ({u["k_a"]}/{u["n_a"]}) | {u["b"]:.2f} ({u["k_b"]}/{u["n_b"]}) '
                 f'| {u["b"] - u["a"]:+.2f} | {u["p"]:.3g} (Fisher) |')
    m = u.get('mcnemar')
    if m:
      lines.append(f'| Unlearning Ratio, paired by sample | forget-class in A only: {m["only_a"]} | in B only: '
                   f'{m["only_b"]} | | {m["p"]:.3g} (McNemar) |')
  for r in result.get('relearning') or []:
    lines.append(f'| Relearn UR % after {r["step"]} steps, k = {r["k"]} | {r["a"]:.2f} ({r["k_a"]}/{r["n_a"]}) | '
                 f'{r["b"]:.2f} ({r["k_b"]}/{r["n_b"]}) | {r["b"] - r["a"]:+.2f} | {r["p"]:.3g} (Fisher) |')
    lines.append(f'| Relearn mean UR % over the attack, k = {r["k"]} | {r["mean_a"]:.2f} | {r["mean_b"]:.2f} | '
                 f'{r["mean_b"] - r["mean_a"]:+.2f} | — |')
  m = result.get('membership')
  if m:
    se = f' ± {m["se"]:.3f}' if m['se'] is not None else ''
    lines.append(f'| MIA AUC on D_f | {m["a"]:.3f} | {m["b"]:.3f} | {m["diff"]:+.3f}{se} (unpaired) | {m["p"]:.3g} |')
  return '\n'.join(lines) + '\n'


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('run_a', help='work directory of run A')
  parser.add_argument('run_b', help='work directory of run B')
  parser.add_argument('--eval_folder', default='eval')
  parser.add_argument('--out', default='', help='also write the table to this Markdown file')
  args = parser.parse_args(argv)
  try:
    result = compare(load_run(args.run_a, args.eval_folder), load_run(args.run_b, args.eval_folder))
  except ValueError as err:
    print(f'error: {err}', file=sys.stderr)
    return 2
  text = markdown(result, os.path.basename(os.path.normpath(args.run_a)),
                  os.path.basename(os.path.normpath(args.run_b)))
  print(text, end='')
  if args.out:
    utils.atomic_write_text(args.out, text)
  return 0


if __name__ == '__main__':
  sys.exit(main())
