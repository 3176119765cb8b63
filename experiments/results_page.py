"""docs/RESULTS.md from the reproduction benchmark's copied results (``benchmarks/reproduce.py --results``).

    python3 -m experiments.results_page [--results docs/results] [--out docs/RESULTS.md] [--workdir runs/repro]

Reads ``<results>/<part>/*.json`` (one per finished stage: ``eval__<model>__<part>__<forget>__s<seed>.json``
with its ``.nll.npz`` and ``.png``, ``relearn__…``, ``train__…``, ``classifier__<part>``) and writes the page:
tables laid out like the paper's Tables 1 (from scratch) and 2 (fine-tuning Standard) with the paper's numbers
beside ours, mean ± SE over seeds, paired comparisons against Unseen and against the paper's forms at their
defaults (``evaluation.compare``), the issue's
targets as met / missed / not measured yet, the relearning curves, sample grids and wall times. The text
between ``<!-- reading -->`` and ``<!-- /reading -->`` of an existing page is kept: that is where the reading
is written by hand. ``--workdir`` (optional) adds how many stages of each part's plan are still to run.
"""
import argparse
import glob
import json
import math
import os
import sys
from fractions import Fraction
from typing import Dict, List, Optional

import numpy as np
from scipy import stats as scipy_stats

if __package__ in (None, ''):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import utils  # noqa: E402
from evaluation import compare as compare_lib  # noqa: E402
from evaluation import nll_items  # noqa: E402

READING_BEGIN, READING_END = '<!-- reading -->', '<!-- /reading -->'

#: the paper's MNIST numbers (VE SDE, Table 1; docs/../MSGM.md): UR % per forget set; NLL bits/dim as reported.
PAPER_UR = {('mnist', '3'): {'standard': 11.0, 'orthogonal': 0.4, 'obtuse': 1.5, 'unseen': 1.8, 'erasediff': 1.4},
            ('mnist', '3+7'): {'standard': 26.8, 'orthogonal': 1.2, 'obtuse': 5.1, 'unseen': 4.1, 'erasediff': 2.5}}
PAPER_NLL = {'retain': {'standard': 2.82, 'orthogonal': 3.92, 'obtuse': 3.70, 'unseen': 3.07, 'erasediff': 3.30},
             'forget': {'standard': 2.78, 'orthogonal': 13.23, 'obtuse': 12.08, 'unseen': 3.01, 'erasediff': 3.74}}

#: models trained from scratch (Table 1's protocol), in the order of the tables; the rest fine-tune Standard.
SCRATCH = ('standard', 'unseen', 'orthogonal', 'obtuse', 'mnist-best', 'toy-ratio', 'orthogonal-official',
           'obtuse-official', 've-standard', 've-unseen', 've-orthogonal', 've-obtuse')
#: the models that are MSGM settings (candidates for "the best MSGM setting").
MSGM = ('orthogonal', 'obtuse', 'mnist-best', 'toy-ratio', 'orthogonal-official', 'obtuse-official',
        've-orthogonal', 've-obtuse', 'orthogonal-ft', 'obtuse-ft', 'mnist-nll-ft')
#: the least test accuracy of the Unlearning-Ratio classifier per part.
CLASSIFIER_BAR = {'mnist': 0.98, 'fashion': 0.90}
#: the issue's Unlearning Ratio targets (percent) per part and forget set.
UR_TARGET = {('mnist', '3'): 0.4, ('mnist', '3+7'): 1.2, ('fashion', 'Trouser'): 1.0}


def paper_key(model):
  """The paper's column a model stands beside (``ve-orthogonal`` → ``orthogonal``, ``erasediff`` →
  ``erasediff``), or None."""
  name = model[3:] if model.startswith('ve-') else model
  return name if name in PAPER_NLL['retain'] else None


def load(results_dir, current=None) -> Dict[str, dict]:
  """``{part: {'eval': {(model, forget, seed): results}, 'relearn': {...}, 'train': {(model, forget, seed)}, 'classifier':
  outputs, 'stale': [names]}}`` from the copied files. An evaluation's per-item NLLs ride along as
  ``results['_items']``. ``current`` (optional, ``{part: {stage name: hash}}``, the plans as they are now): a file
  whose stage is not in its part's plan with that hash is left out (it is from an older config) and named in
  ``stale``."""
  parts: Dict[str, dict] = {}
  for path in sorted(glob.glob(os.path.join(results_dir, '*', '*.json'))):
    part = os.path.basename(os.path.dirname(path))
    if os.path.basename(path) == 'plan.json':   # the benchmark's settings (benchmarks/reproduce.py)
      continue
    with open(path) as f:
      body = json.load(f)
    name = body.get('stage', {}).get('name', '')
    bits = name.split('/')
    entry = parts.setdefault(part, {'eval': {}, 'relearn': {}, 'train': {}, 'downstream': {}, 'classifier': None,
                                    'stale': []})
    if current and part in current and current[part].get(name) != body.get('stage', {}).get('hash'):
      entry['stale'].append(name or os.path.basename(path))
      continue
    if bits[0] == 'classifier':
      entry['classifier'] = body
      continue
    if bits[0] not in ('eval', 'relearn', 'train', 'downstream') or len(bits) < 4:
      continue
    model, seed = bits[1], int(bits[-1].lstrip('s'))
    forget = bits[3] if len(bits) == 5 else '*'
    if bits[0] == 'eval':
      npz = path[:-len('.json')] + '.nll.npz'
      body['_items'] = nll_items.load_items(npz) if os.path.isfile(npz) else None
    if bits[0] in ('eval', 'relearn'):   # its sample grid or its attack's curves
      png = path[:-len('.json')] + '.png'
      body['_png'] = os.path.relpath(png, results_dir) if os.path.isfile(png) else None
    if bits[0] == 'downstream':   # its grids: original / masked / inpainted, original / reconstructed
      body['_grids'] = {name: os.path.relpath(f, results_dir) for name in DOWNSTREAM_GRIDS
                        for f in [path[:-len('.json')] + f'.{name}.png'] if os.path.isfile(f)}
    entry[bits[0]][(model, forget, seed)] = body
  return parts


def metric(results, name) -> Optional[float]:
  """One number of an evaluation: ``ur`` (%), ``nll_retain`` / ``nll_forget`` (bits/dim), ``fid``, ``mia``,
  ``top`` (% of the samples the classifier puts in its most frequent class: about 10 % for a model that draws
  every digit equally; far more flags samples the classifier cannot read, which makes the ratio less telling)."""
  if name == 'ur':
    u = results.get('unlearning_ratio')
    return None if not u else float(u['percent'])
  if name.startswith('nll_'):
    nll = results.get('nll_bpd')
    return None if not nll or not nll.get(name[4:]) else float(nll[name[4:]]['mean'])
  if name == 'fid':
    f = results.get('fid')
    return None if not f else float(f['value'])
  if name == 'mia':
    m = results.get('membership')
    return None if not m else float(m['auc'])
  if name == 'top':
    u = results.get('unlearning_ratio') or {}
    hist, n = u.get('class_histogram'), u.get('num_samples')
    return None if not hist or not n else 100. * max(hist.values()) / float(n)
  raise KeyError(name)


def top_class(entry, model, forget, seeds=None):
  """The class the classifier gives most of the model's samples to, when every seed's results agree on it."""
  names = set()
  for s in seeds_of(entry, model, forget):
    hist = (entry['eval'][(model, forget, s)].get('unlearning_ratio') or {}).get('class_histogram')
    if (seeds is None or s in seeds) and hist:
      names.add(max(hist, key=hist.get))
  return names.pop() if len(names) == 1 else None


def mean_se(values):
  """``(mean, SE, n)`` of the values that are not None (SE is None for fewer than two)."""
  v = np.asarray([x for x in values if x is not None], dtype=np.float64)
  if v.size == 0:
    return None, None, 0
  se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else None
  return float(v.mean()), se, int(v.size)


def fmt(ms, digits=2):
  mean, se, n = ms
  if mean is None:
    return '—'
  return f'{mean:.{digits}f}' + (f' ± {se:.{digits}f}' if se is not None else '')


def models_of(entry, forget):
  seen = []
  for (model, f, _seed) in entry['eval']:
    if f == forget and model not in seen:
      seen.append(model)
  order = models_order()   # the first place a model is named: the VP rows, then the VE rows, then the rest
  return sorted(seen, key=lambda m: (order.get(m, len(order)), m))


def seeds_of(entry, model, forget):
  return sorted(s for (m, f, s) in entry['eval'] if m == model and f == forget)


def summary(entry, model, forget, name, seeds=None):
  """``mean_se`` of one metric over the model's seeds (only those in ``seeds`` when given)."""
  return mean_se([metric(entry['eval'][(model, forget, s)], name) for s in seeds_of(entry, model, forget)
                  if seeds is None or s in seeds])


def eval_seconds(entry, model, forget, seeds=None):
  """Mean wall seconds of the model's evaluations (the stage's), or None."""
  out = [entry['eval'][(model, forget, s)].get('stage', {}).get('seconds') for s in seeds_of(entry, model, forget)
         if seeds is None or s in seeds]
  out = [x for x in out if x]
  return float(np.mean(out)) if out else None


def standard_of(model):
  """The Standard and Unseen rows a model is measured against (``ve-*`` rows: the VE SDE's)."""
  ve = 've-' if model.startswith('ve-') else ''
  return ve + 'standard', ve + 'unseen'


def train_seconds(entry, model, forget, seeds=None):
  """Mean wall seconds of the model's trainings of the seeds it was evaluated at (only those in ``seeds`` when
  given; ``train_stats.json``'s, summed over resumed segments, else the stage's); Standard's are shared by the
  forget sets, and the family's methods train as ``<name>-ft``."""
  name = model if model in SCRATCH or model.endswith('-ft') else f'{model}-ft'
  evaluated = [s for s in seeds_of(entry, model, forget) if seeds is None or s in seeds]
  out = []
  for (m, f, s), body in entry['train'].items():
    if m == name and f in (forget, '*') and s in evaluated:
      stats = body.get('train_stats') or {}
      out.append(stats.get('wall_seconds') or body['stage']['seconds'])
  return float(np.mean(out)) if out else None


def forget_sets(entry):
  """The forget sets evaluated, the single ones first (``3`` before ``3+7``), as the plan orders them."""
  return sorted({f for (_m, f, _s) in entry['eval']}, key=lambda f: (f.count('+'), f))


def table(part, entry, forget, models, paper=True, seeds=None):
  """One Table-1/2-like Markdown table over ``models`` (those evaluated), over their seeds (those in ``seeds``
  when given)."""
  head = ['model', 'seeds', 'UR %', 'NLL D_g', 'NLL D_f', 'FID vs D_g', 'MIA AUC', 'top class %', 'train min',
          'eval min']
  if paper:
    head[3:3] = ['paper UR %']
    head[5:5] = ['paper D_g']
    head[7:7] = ['paper D_f']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for model in models:
    mine = [s for s in seeds_of(entry, model, forget) if seeds is None or s in seeds]
    sm = lambda name: summary(entry, model, forget, name, seeds)   # noqa: E731
    cells = [model, str(len(mine)), fmt(sm('ur'))]
    pk = paper_key(model)
    if paper:
      pur = PAPER_UR.get((part, forget), {}).get(pk) if pk else None
      cells.append('—' if pur is None else f'{pur:.1f}')
    cells.append(fmt(sm('nll_retain'), 3))
    if paper:
      cells.append(f'{PAPER_NLL["retain"][pk]:.2f}' if pk and part == 'mnist' else '—')
    cells.append(fmt(sm('nll_forget'), 3))
    if paper:
      cells.append(f'{PAPER_NLL["forget"][pk]:.2f}' if pk and part == 'mnist' else '—')
    cells.append(fmt(sm('fid'), 1))
    cells.append(fmt(sm('mia'), 3))
    top, label = sm('top'), top_class(entry, model, forget, seeds)
    cells.append(fmt(top, 1) + (f' ({label})' if label is not None and top[0] is not None else ''))
    for t in (train_seconds(entry, model, forget, seeds), eval_seconds(entry, model, forget, seeds)):
      cells.append('—' if t is None else f'{t / 60:.1f}')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def _run(body):
  return {k: v for k, v in body.items() if not k.startswith('_')}, body.get('_items')


def paired_against(entry, forget, model, reference='unseen'):
  """Per seed both share: ``evaluation.compare`` of ``reference`` (A) and ``model`` (B); and the UR test with the
  counts pooled over those seeds (Fisher's exact test; and McNemar's on the discordant samples summed over the
  seeds, ``pooled['mcnemar']``, when every seed's pair lists its forget-class samples — an exact test
  stratified by seed). ``([(seed, result)], pooled or None)``."""
  rows, ka = [], [0, 0]
  kb = [0, 0]
  ve = 've-' if model.startswith('ve-') and not reference.startswith('ve-') else ''
  ref = ve + reference
  for seed in seeds_of(entry, model, forget):
    a, b = entry['eval'].get((ref, forget, seed)), entry['eval'].get((model, forget, seed))
    if a is None or b is None:
      continue
    try:
      result = compare_lib.compare(_run(a), _run(b))
    except compare_lib.CompareError:
      continue
    rows.append((seed, result))
    u = result['unlearning_ratio']
    if u:
      ka = [ka[0] + u['k_a'], ka[1] + u['n_a']]
      kb = [kb[0] + u['k_b'], kb[1] + u['n_b']]
  pooled = None
  if ka[1] and kb[1]:
    p = scipy_stats.fisher_exact([[ka[0], ka[1] - ka[0]], [kb[0], kb[1] - kb[0]]]).pvalue
    pooled = {'a': 100. * ka[0] / ka[1], 'b': 100. * kb[0] / kb[1], 'k_a': ka[0], 'n_a': ka[1], 'k_b': kb[0],
              'n_b': kb[1], 'p': float(p), 'mcnemar': None}
    pairs = [r['unlearning_ratio'].get('mcnemar') for _s, r in rows if r['unlearning_ratio']]
    if pairs and all(pairs):
      only_a, only_b = sum(m['only_a'] for m in pairs), sum(m['only_b'] for m in pairs)
      pooled['mcnemar'] = {'only_a': only_a, 'only_b': only_b, 'p': compare_lib.mcnemar_p(only_a, only_b)}
  return rows, pooled


def default_of(model) -> Optional[str]:
  """The paper's form at its defaults that an MSGM setting varies (``obtuse-ft`` → ``obtuse``; the ratio presets
  extend Obtuse), or None for the defaults themselves and for models that are not MSGM settings."""
  name = model[3:] if model.startswith('ve-') else model
  if model not in MSGM or name in ('orthogonal', 'obtuse'):
    return None
  return 'orthogonal' if name.startswith('orthogonal') else 'obtuse'


def paired_table(entry, forget, models, reference=None):
  """Markdown rows of ``paired_against``: every model against Unseen (``reference=None``), or every MSGM setting
  against the paper's form at its defaults that it varies (``reference='default'``)."""
  label = 'Unseen' if reference is None else 'default'
  lines = [f'| model vs {label} | seed | UR % ({label} → model) | p (Fisher) | p (McNemar, by sample) | NLL D_g diff '
           '| NLL D_f diff |', '|---|---|---|---|---|---|---|']
  for model in models:
    if reference is None and model in ('unseen', 've-unseen'):
      continue
    ref = 'unseen' if reference is None else default_of(model)
    if ref is None:
      continue
    rows, pooled = paired_against(entry, forget, model, ref)
    if reference is not None:
      model = f'{model} vs {ref}'
    for seed, r in rows:
      u, nll = r['unlearning_ratio'], r['nll']

      def d(part):
        x = nll.get(part)
        return '—' if not x else f'{x["diff"]:+.3f} ± {x["sem"]:.3f} (p {x["p"]:.2g})'
      ur = '—' if not u else f'{u["a"]:.2f} → {u["b"]:.2f}'
      p = '—' if not u else f'{u["p"]:.3g}'
      m = (u or {}).get('mcnemar')
      mc = '—' if not m else f'{m["p"]:.3g} ({m["only_a"]} : {m["only_b"]})'
      lines.append(f'| {model} | {seed} | {ur} | {p} | {mc} | {d("retain")} | {d("forget")} |')
    if pooled and len(rows) > 1:
      m = pooled['mcnemar']
      mc = '—' if not m else f'{m["p"]:.3g} ({m["only_a"]} : {m["only_b"]})'
      lines.append(f'| {model} | pooled ({len(rows)} seeds) | {pooled["a"]:.2f} ({pooled["k_a"]}/{pooled["n_a"]}) → '
                   f'{pooled["b"]:.2f} ({pooled["k_b"]}/{pooled["n_b"]}) | {pooled["p"]:.3g} | {mc} | | |')
  if len(lines) == 2:
    return f'None yet: no model has been evaluated beside {"Unseen" if reference is None else "its default"} ' \
           'of the same seed.\n'
  return '\n'.join(lines) + '\n'


def against_standard(entry, model, forget, name) -> Optional[float]:
  """``model``'s mean of metric ``name`` divided by its Standard's (``standard_of``), both averaged over the
  same seeds: those where both rows have the metric. None when they share no such seed."""
  std = standard_of(model)[0]
  pairs = []
  for s in seeds_of(entry, model, forget):
    if (std, forget, s) in entry['eval']:
      a, b = metric(entry['eval'][(model, forget, s)], name), metric(entry['eval'][(std, forget, s)], name)
      if a is not None and b is not None:
        pairs.append((a, b))
  if not pairs:
    return None
  return float(np.mean([a for a, _ in pairs]) / np.mean([b for _, b in pairs]))


def pooled_ur(entry, model, forget) -> Optional[Fraction]:
  """The model's forget-class samples over all its samples, pooled over its seeds (exact, so that ties are
  ties), or None without a ratio."""
  k = n = 0
  for s in seeds_of(entry, model, forget):
    u = entry['eval'][(model, forget, s)].get('unlearning_ratio')
    if u:
      k, n = k + int(u['num_forget']), n + int(u['num_samples'])
  return Fraction(k, n) if n else None


def attacked_seeds(entry, model, forget):
  return sorted(s for (m, f, s) in entry['relearn'] if m == model and f == forget)


def best_msgm(entry, forget):
  """``(model, note, candidates)``: the MSGM setting with the lowest Unlearning Ratio on ``forget`` (its counts
  pooled over its seeds) among those whose FID against D_g is within 20 % of their Standard's over the same
  seeds (a model that forgets by producing noise is not the best setting), and how many settings it was chosen
  among (for the multiple-test correction). A tie goes to the setting measured at more seeds, then attacked at
  more seeds, then with the lower FID ratio, and the note names the settings it tied with. When no setting
  keeps its FID, the lowest UR of all, with a note that says so (``note`` starts with ``damaged:``), or that its
  FID is not measured where it is not. ``(None, '', 0)`` when no MSGM setting is
  evaluated."""
  rows = []
  for model in models_of(entry, forget):
    if model not in MSGM:
      continue
    ur = pooled_ur(entry, model, forget)
    if ur is None:
      continue
    fid = against_standard(entry, model, forget, 'fid')
    key = (ur, -len(seeds_of(entry, model, forget)), -len(attacked_seeds(entry, model, forget)),
           math.inf if fid is None else fid, model)
    rows.append((key, None if fid is None else fid <= 1.2))

  def pick(candidates):
    best = min(candidates)[0]
    tied = [k[-1] for k, _ in candidates if k[0] == best[0] and k != best]
    note = f'tied with {", ".join(tied)}; chosen for more seeds, then attacks, then a lower FID' if tied else ''
    return best[-1], note

  if not rows:
    return None, '', 0
  usable = [r for r in rows if r[1]]
  if usable:
    return pick(usable) + (len(usable),)
  model, tie = pick(rows)
  tie = f'; {tie}' if tie else ''
  if next(kept for key, kept in rows if key[-1] == model) is None:   # its FID is not measured
    return model, 'FID not measured: damaged samples are not ruled out' + tie, len(rows)
  return model, ('damaged: no MSGM setting evaluated so far keeps its FID within 20 % of Standard\'s: the '
                 'row is the lowest UR of all, from a model whose samples are damaged' + tie), len(rows)


def relearn_target(entry, best, unseen, forget):
  """``(status, measured)`` of "UR after the relearning attack below Unseen's": met when the best setting's UR
  after the attack's last step is below Unseen's at every seed both were attacked at with the same settings
  (``compare.compare_relearning``; the largest k both ran) and Fisher's exact test on the counts pooled over
  those seeds gives p < 0.05 (the attacked models' samples share no noise pairing)."""
  rows = []
  for seed in attacked_seeds(entry, best, forget):
    shared = compare_lib.compare_relearning(entry['relearn'].get((unseen, forget, seed)),
                                            entry['relearn'][(best, forget, seed)])
    if shared:
      rows.append(max(shared, key=lambda r: r['k']))
  if not rows:
    return 'not measured yet', '—'
  ku, nu = sum(r['k_a'] for r in rows), sum(r['n_a'] for r in rows)
  ka, na = sum(r['k_b'] for r in rows), sum(r['n_b'] for r in rows)
  lower = sum(r['k_b'] / r['n_b'] < r['k_a'] / r['n_a'] for r in rows)
  p = float(scipy_stats.fisher_exact([[ka, na - ka], [ku, nu - ku]]).pvalue)
  ok = lower == len(rows) and ka / na < ku / nu and p < 0.05
  steps = '/'.join(sorted({str(r['step']) for r in rows}))
  k = '/'.join(sorted({str(r['k']) for r in rows}))
  return ('met' if ok else 'missed',
          f'{best}: {100. * ka / na:.1f}% vs {unseen} {100. * ku / nu:.1f}% after {steps} steps, k = {k}, over '
          f'{len(rows)} seed(s), lower at {lower}; Fisher p {p:.3g}')


#: the label of the target "below Unseen" (how it is tested: see ``targets``).
BELOW_UNSEEN = 'best MSGM UR below Unseen (every seed; pooled test, corrected)'


#: the label of the NLL targets over every usable MSGM setting (see ``likelihood_any``).
LIKELIHOOD_ANY = 'NLL D_f ≥ 3× and D_g within 15% of Standard, by any usable MSGM setting'


def likelihood_any(entry, forget):
  """``(status, measured)`` of "some MSGM setting whose FID is within 20 % of Standard's has NLL D_f ≥ 3× and
  D_g ≤ 1.15× Standard's" (each ratio over the seeds it shares with its Standard): the likelihood targets apart
  from the setting chosen for its Unlearning Ratio. ``measured`` names the setting with the largest D_f ratio among
  those that meet the D_g bound (or, if none does, among all usable ones)."""
  rows = []
  for model in models_of(entry, forget):
    if model not in MSGM:
      continue
    fid, f, g = (against_standard(entry, model, forget, n) for n in ('fid', 'nll_forget', 'nll_retain'))
    if fid is not None and fid <= 1.2 and f is not None and g is not None:
      rows.append((g <= 1.15, f, g, model))
  if not rows:
    return 'not measured yet', '—'
  keeps, f, g, model = max(rows)
  seeds = len(seeds_of(entry, model, forget))
  return ('met' if keeps and f >= 3. else 'missed',
          f'{model}: D_f {f:.2f}×, D_g {g:.2f}× Standard ({seeds} seed(s); {len(rows)} usable setting(s))')


def targets(part, entry, forget):
  """The issue's targets for this forget set: ``[(target, status, measured)]``, status one of ``met``,
  ``missed``, ``not measured yet`` (``met only by a damaged model`` / ``missed (no usable model)`` when no
  MSGM setting keeps its samples). Every comparison uses the seeds both rows share.

  "Below Unseen" is met when the best setting's UR is below Unseen's at every shared seed and a test pooled
  over those seeds gives p < 0.05 after a Bonferroni correction over the settings the best was chosen among:
  McNemar's exact test on the samples paired by position (both models draw sample i from the same noise) when
  every seed's results list their forget-class samples, else Fisher's exact test on the pooled counts (which
  treats the samples as independent: conservative for samples that share their noise). The attack's target:
  ``relearn_target``."""
  out = []
  best, note, candidates = best_msgm(entry, forget)
  damaged = note.startswith('damaged:')
  unseen = standard_of(best or '')[1]
  goal = UR_TARGET.get((part, forget))
  if goal is not None:
    if best is None:
      out.append((f'best MSGM UR ≤ {goal}%', 'not measured yet', '—'))
    else:
      m = summary(entry, best, forget, 'ur')[0]
      status = 'missed (no usable model)' if damaged else ('met' if m <= goal + 1e-9 else 'missed')
      shown = note.split(': ', 1)[1] if damaged else note
      out.append((f'best MSGM UR ≤ {goal}%', status, f'{best}: {m:.2f}%' + (f' ({shown})' if shown else '')))
  if best is not None:
    rows, pooled = paired_against(entry, forget, best)
    if pooled is None:
      out.append((BELOW_UNSEEN, 'not measured yet', '—'))
    else:
      rows = [(seed, r) for seed, r in rows if r['unlearning_ratio']]
      lower = sum(r['unlearning_ratio']['b'] < r['unlearning_ratio']['a'] for _s, r in rows)
      test, p = ('McNemar', pooled['mcnemar']['p']) if pooled['mcnemar'] else ('Fisher', pooled['p'])
      p_adj = min(1., p * max(1, candidates))
      ok = lower == len(rows) and pooled['b'] < pooled['a'] and p_adj < 0.05
      out.append((BELOW_UNSEEN, 'met' if ok else 'missed',
                  f'{pooled["b"]:.2f}% vs {pooled["a"]:.2f}% over {len(rows)} seed(s), lower at {lower}; {test} p '
                  f'{p:.3g}, × {candidates} setting(s): {p_adj:.3g}'))

    for label, name, test in (('NLL D_f ≥ 3× Standard', 'nll_forget', lambda r: r >= 3.),
                              ('NLL D_g within 15% of Standard', 'nll_retain', lambda r: r <= 1.15),
                              ('FID vs D_g within 20% of Standard', 'fid', lambda r: r <= 1.2)):
      r = against_standard(entry, best, forget, name)
      out.append((label, 'not measured yet' if r is None else ('met' if test(r) else 'missed'),
                  '—' if r is None else f'{best}: {r:.2f}× Standard'))
    out.append(('UR after the relearning attack below Unseen\'s',) + relearn_target(entry, best, unseen, forget))
    out.append((LIKELIHOOD_ANY,) + likelihood_any(entry, forget))
  if damaged:
    out = [(t, 'met only by a damaged model' if st == 'met' else st, m) for t, st, m in out]
  return out


#: the grids a downstream stage leaves beside its JSON (``benchmarks/reproduce.py``'s ``copy_result``).
DOWNSTREAM_GRIDS = ('inpaint_retain', 'inpaint_forget', 'reconstruct_retain', 'reconstruct_forget')


def downstream_section(entry, forget, rel):
  """The downstream tasks of ``forget`` laid out like the paper's Tables 5 and 6 (``downstream_report``), one
  column per model (its first seed), with the grids of D_f; '' when none ran."""
  from types import SimpleNamespace

  from evaluation import downstream_report
  runs = sorted(((m, s, b) for (m, f, s), b in entry['downstream'].items() if f == forget),
                key=lambda r: (models_order().get(r[0], len(models_order())), r[0], r[1]))
  firsts = [(m, s, b) for i, (m, s, b) in enumerate(runs) if all(m != r[0] for r in runs[:i])]
  if not firsts:
    return ''
  table = SimpleNamespace(columns=[m for m, _s, _b in firsts],
                          runs=[{'results': b, 'column': m, 'name': f'seed {s}'} for m, s, b in firsts])
  text = [downstream_report.to_markdown(table, task) for task in downstream_report.TASKS]
  out = ['Downstream tasks (the paper\'s Tables 5 and 6; `evaluation/downstream.py`, docs/downstream.md: the same '
         'seeded D_g and D_f test images for every model):\n'] + [t.replace('### ', '#### ') for t in text if t]
  grids = [(m, s, name, b['_grids'][name]) for m, s, b in firsts for name in ('inpaint_forget', 'reconstruct_forget')
           if name in (b.get('_grids') or {})]
  if grids:
    out.append('D_f restored (rows: original, masked, inpainted; original, reconstructed):\n')
    out.append(' '.join(f'<img src="{rel}/{p}" width="200" title="{name} {m} s{s}">' for m, s, name, p in grids)
               + '\n')
  return '\n'.join(out)


def models_order():
  """The tables' order of the models (``SCRATCH`` then ``MSGM``): the first place each is named."""
  order: Dict[str, int] = {}
  for m in SCRATCH + MSGM:
    order.setdefault(m, len(order))
  return order


def relearn_table(entry, forget):
  rows = sorted(((m, s, b) for (m, f, s), b in entry['relearn'].items() if f == forget), key=lambda r: r[:2])
  if not rows:
    return ''
  lines = ['| model | seed | k | UR % after each attack step | mean UR % over the attack | most drawn class (% of '
           'samples) after each step |', '|---|---|---|---|---|---|']

  def top(point):
    hist, n = point.get('class_histogram'), point.get('num_samples')
    if not hist or not n:
      return None
    name = max(hist, key=hist.get)
    return f'{point["step"]}: {name} ({100. * hist[name] / n:.0f})'
  for model, seed, body in rows:
    for c in body.get('curves', []):
      pts = ', '.join(f'{p["step"]}: {p["percent"]:.1f}' for p in c['points'])
      tops = [top(p) for p in c['points']]
      tops = '—' if all(t is None for t in tops) else \
        ', '.join(t or f'{p["step"]}: —' for t, p in zip(tops, c['points']))
      lines.append(f'| {model} | {seed} | {c["k"]} | {pts} | {c["area"]["mean_percent"]:.1f} | {tops} |')
  return '\n'.join(lines) + '\n'


def kept_reading(out_path):
  if not os.path.isfile(out_path):
    return 'No reading yet: it is written once the tables are complete.'
  text = open(out_path).read()
  if READING_BEGIN in text and READING_END in text:
    return text.split(READING_BEGIN, 1)[1].split(READING_END, 1)[0].strip('\n')
  return 'No reading yet: it is written once the tables are complete.'


def plan_of(part, results_dir=None):
  """The benchmark's plan of ``part`` with the settings it last ran with (``plan.json`` in the part's results
  folder; its defaults without one), or None for a part it does not know."""
  from benchmarks import reproduce
  if part not in reproduce.PARTS:
    return None
  overrides, samples = reproduce.read_plan_settings(results_dir, part) if results_dir else ({}, 1000)
  return reproduce.build_plan(part, overrides, samples)


def pending(workdir, part, results_dir=None) -> Optional[str]:
  """'N of M stages done' of the part's plan (``plan_of``): a stage counts as done when its record is in
  ``workdir`` or its results are published in ``results_dir`` under its current hash (as the benchmark counts
  them; None without a workdir)."""
  plan = plan_of(part, results_dir) if workdir else None
  if plan is None:
    return None
  from benchmarks import reproduce
  from experiments import stages
  root = os.path.join(workdir, part)
  shown = reproduce.published(results_dir, part, plan)
  left = [s for s in plan if (s.name, s.hash) not in shown and stages.record_of(root, s) is None]
  return (f'{len(plan) - len(left)} of {len(plan)} stages done; the rest is estimated at '
          f'{sum(s.estimate for s in left) / 3600:.1f} h of stage time, to be divided among the stages run at once')


def models_read(results_dir, part) -> Optional[str]:
  """A line on whether the weights each evaluation, attack and downstream stage read (its ``model`` entry: the
  digest of the checkpoint, ``benchmarks.reproduce.model_read``) are those its training's published record names
  (``ema_sha256``); None where no result names them."""
  checked, differ, unknown = 0, [], []
  for path in sorted(glob.glob(os.path.join(results_dir, part, '*.json'))):
    with open(path) as f:
      body = json.load(f)
    model = body.get('model') if isinstance(body, dict) else None
    if not isinstance(model, dict) or not model.get('stage'):
      continue
    checked += 1
    train = os.path.join(results_dir, part, model['stage'].replace('/', '__') + '.json')
    published = None
    if os.path.isfile(train):
      with open(train) as f:
        published = json.load(f).get('ema_sha256')
    name = body.get('stage', {}).get('name', os.path.basename(path))
    if not published:
      unknown.append(name)
    elif published != model.get('ema_sha256'):
      differ.append(f'{name} read `{str(model.get("ema_sha256"))[:16]}…`, {model["stage"]} names '
                    f'`{published[:16]}…`')
  if not checked:
    return None
  line = (f'Weights read: {checked} result(s) name the digest of the checkpoint they read; '
          f'{checked - len(differ) - len(unknown)} equal their training\'s published `ema_sha256`')
  if unknown:
    more = ', …' if len(unknown) > 3 else ''
    line += f', {len(unknown)} have no published digest to compare ({", ".join(unknown[:3])}{more})'
  if differ:
    line += f'; DIFFERENT: {"; ".join(differ)}'
  return line + '.\n'


def page(results_dir, out_path, workdir=None, header=''):
  """The page's Markdown (see the module docstring)."""
  current = None
  if workdir:   # leave out results of stages whose config has changed since they ran
    names = [os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(results_dir, '*', '*.json'))]
    plans = {part: plan_of(part, results_dir) for part in set(names)}
    current = {part: {s.name: s.hash for s in plan} for part, plan in plans.items() if plan is not None}
  parts = load(results_dir, current)
  rel = os.path.relpath(results_dir, os.path.dirname(os.path.abspath(out_path)) or '.')
  lines: List[str] = [header.strip() + '\n'] if header else []
  for part, entry in parts.items():
    lines.append(f'## {part}\n')
    status = pending(workdir, part, results_dir)
    if status:
      lines.append(f'Plan: {status}.\n')
    if entry['stale']:
      lines.append(f'Left out: {len(entry["stale"])} result file(s) of stages whose config has changed since they '
                   f'ran ({", ".join(sorted(entry["stale"])[:5])}{", …" if len(entry["stale"]) > 5 else ""}).\n')
    read = models_read(results_dir, part)
    if read:
      lines.append(read)
    clf = entry['classifier']
    if clf:
      acc = clf.get('test_accuracy')
      bar = CLASSIFIER_BAR.get(part)
      verdict = '' if acc is None or bar is None else \
        f' ({"meets" if acc >= bar else "BELOW"} the bar of {100 * bar:.0f}%)'
      lines.append(f'Classifier: test accuracy {"—" if acc is None else f"{100 * acc:.2f}%"}{verdict}, SHA-256 '
                   f'`{(clf.get("sha256") or "—")[:16]}…`, trained in {clf["stage"]["seconds"]:.0f} s.\n')
    for forget in forget_sets(entry):
      models = models_of(entry, forget)
      scratch = [m for m in models if m in SCRATCH]
      tuned = [m for m in models if m not in SCRATCH]
      lines.append(f'### {part}: forget {forget.replace("+", " and ")}\n')
      if scratch:
        paper = ('the paper\'s MNIST numbers are on a VE SDE (our `ve-*` rows), beside which the VP rows are '
                 'shown for scale (the paper gives one MNIST NLL row without naming its forget set: it stands '
                 'beside each set)') if PAPER_UR.get((part, forget)) else 'the paper reports no numbers for this set'
        lines.append('From scratch (the paper\'s Table 1 protocol); mean ± SE over seeds; ' + paper + '. "top '
                     'class %": the share of the samples the classifier puts in its most frequent class (the class '
                     'in brackets): about 10 % for a model that draws every class equally, far more where the '
                     'classifier is shown samples it cannot read, so that the ratio says less.\n')
        lines.append(table(part, entry, forget, scratch))
      if tuned:
        seeds = sorted({s for m in tuned for s in seeds_of(entry, m, forget)})
        lines.append('Fine-tuning Standard (the paper\'s Table 2 protocol; the family of methods); seed '
                     f'{", ".join(map(str, seeds))}, Standard of the same seed:\n')
        lines.append(table(part, entry, forget, ['standard'] + tuned if 'standard' in models else tuned,
                           seeds=set(seeds)))
      lines.append('Paired comparisons against Unseen of the same seed (`evaluation.compare`: Fisher\'s exact test '
                   'on the Unlearning Ratio counts; McNemar\'s on the samples paired by their noise, with the '
                   'samples counted as forgotten-class ones by Unseen only : by the model only, where both results '
                   'list them; paired per-item NLL differences, model − Unseen):\n')
      lines.append(paired_table(entry, forget, models))
      if any(default_of(m) for m in models):
        lines.append('Paired comparisons of each MSGM setting against the paper\'s form at its defaults that it '
                     'varies (same seed; model − default):\n')
        lines.append(paired_table(entry, forget, models, reference='default'))
      lines.append('Targets (the best MSGM setting = the lowest UR, its counts pooled over its seeds, among the MSGM '
                   'rows whose FID against D_g is within 20 % of Standard\'s over the seeds both have, a tie going '
                   'to the setting measured at more seeds, then attacked at more; every ratio to Standard over the '
                   'seeds both rows have; "below Unseen": lower at every seed, and a pooled exact test — '
                   'McNemar\'s on samples paired by their noise where every seed lists its samples, else '
                   'Fisher\'s on the counts — Bonferroni-corrected over the settings the best was chosen among, '
                   'p < 0.05; the attack: lower after its last step at every seed both were attacked at with the same '
                   'settings, Fisher\'s test on the pooled counts, p < 0.05):\n')
      lines.append('| target | status | measured |\n|---|---|---|')
      lines += [f'| {t} | {s} | {m} |' for t, s, m in targets(part, entry, forget)]
      lines.append('')
      rt = relearn_table(entry, forget)
      if rt:
        lines.append('Relearning attack (fine-tuning on k forget images; UR % after each step count):\n')
        lines.append(rt)
        plots = [(m, s, b['_png']) for (m, f, s), b in sorted(entry['relearn'].items()) if f == forget and
                 b.get('_png')]
        if plots:
          lines.append(' '.join(f'<img src="{rel}/{p}" width="240" title="attack on {m} s{s}">' for m, s, p in plots)
                       + '\n')
      ds = downstream_section(entry, forget, rel)
      if ds:
        lines.append(ds)
      grids = [(m, s, entry['eval'][(m, forget, s)]['_png']) for m in models for s in seeds_of(entry, m, forget)[:1]
               if entry['eval'][(m, forget, s)].get('_png')]
      if grids:
        lines.append('Samples (first seed, 64 of each model):\n')
        lines.append(' '.join(f'<img src="{rel}/{p}" width="160" title="{m} s{s}">' for m, s, p in grids) + '\n')
  lines.append('## Reading\n')
  lines.append(READING_BEGIN)
  lines.append(kept_reading(out_path))
  lines.append(READING_END + '\n')
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--results', default='docs/results')
  parser.add_argument('--out', default='docs/RESULTS.md')
  parser.add_argument('--workdir', default='', help='the benchmark\'s folder, to count the stages still to run')
  parser.add_argument('--header', default='', help='a Markdown file put at the top of the page')
  args = parser.parse_args(argv)
  if not os.path.isdir(args.results):
    print(f'error: no results folder {args.results} (run benchmarks/reproduce.py --results {args.results})',
          file=sys.stderr)
    return 1
  header = open(args.header).read() if args.header else ''
  text = page(args.results, args.out, args.workdir or None, header)
  utils.atomic_write_text(args.out, text)
  print(f'wrote {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
