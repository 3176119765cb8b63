"""Paper-style tables (MSGM Table 1) from several runs' evaluation results.

    python -m evaluation.report W1 W2 ... [--out DIR] [--name table1] [--eval_folder eval]

reads ``W/<eval_folder>/results.json`` of every work directory and prints one table, also written to
``DIR/<name>.md`` (Markdown) and ``DIR/<name>.csv``. Rows: the Unlearning Ratio (%) of each forget set,
NLL on D_g and on D_f (bits/dim), FID (against D_g); then, where some run has them, the relearning attack
(``W/<eval_folder>/relearn.json``: UR after the last attack step and mean UR over the attack, per k; the
curves in ``DIR/<name>_relearn.png``), the unlearning accuracy of class-conditional models and one-step
generators (100 % minus the share of forget-class requests classified as asked: ``unlearning_ratio_per_label``),
the sampling NFE per sample (1 for a one-step generator), the membership AUC (``"membership"`` of results.json) and the
compute (``W/train_stats.json``: steps and wall time, × those of the Unseen run of the same data and forget
set). Columns: the runs' tasks in the paper's order
Standard / Ort / Obt / Unseen / EraseDiff, then the other methods of ``unlearning/``, when every run names a known task and no two runs share
(data set, forget set, task); otherwise one column per run (named after its work directory). With
several forget sets the NLL and FID rows are given per forget set, with several data sets every row
names its data set. Markdown cells show the uncertainty (UR: 95 % Wilson interval; NLL: ± SEM); the
CSV gives the numbers unrounded, with the uncertainties in their own rows. Missing values are "—"
(Markdown) or empty (CSV).

results.json (written by ``--mode eval``)::

  {"task", "dataset", "forget", "checkpoint", "step",
   "unlearning_ratio": {"percent", "ci95", "num_samples", "class_histogram"} | null,
   "nll_bpd": {"retain": {"mean", "sem", "n"}, "forget": {"mean", "sem", "n"}} | null,
   "fid": {"value", "backend", "num_samples", "reference"} | null,
   "sampler": {...}, "classifier": {"path", "sha256", "test_accuracy"}}
"""
import argparse
import csv
import dataclasses
import io
import json
import math
import os
import sys
from typing import List, Optional, Sequence

import utils

RESULTS_FILENAME = 'results.json'
STATS_FILENAME = 'train_stats.json'   # the file run_lib.TrainStats writes (run_lib.STATS_FILENAME; a test keeps them equal)
#: the column order and names: the paper's five first, then the other methods of ``unlearning/``; keys are
#: the readable ``--task`` names of ``unlearning.registered()``.
TASK_ORDER = ('standard', 'orthogonal', 'obtuse', 'unseen', 'erase', 'finetune', 'neggrad', 'salun', 'sa',
              'erasediff', 'siss', 'vdu', 'sfd')
TASK_DISPLAY = {'standard': 'Standard', 'orthogonal': 'Ort', 'obtuse': 'Obt', 'unseen': 'Unseen',
                'erase': 'EraseDiff', 'finetune': 'FT', 'neggrad': 'NegGrad+', 'salun': 'SalUn', 'sa': 'SA',
                'erasediff': 'EraseDiff (bi-level)', 'siss': 'SISS', 'vdu': 'VDU', 'sfd': 'SFD'}
#: official (``--task``) and display names of the tasks.
TASK_ALIASES = {'normal': 'standard', 'no_u': 'unseen', 'square': 'orthogonal', 'norm': 'obtuse',
                'ort': 'orthogonal', 'obt': 'obtuse'}
MISSING = '—'


class ReportError(ValueError):
  """A results file is missing or malformed, or the command line is wrong."""


@dataclasses.dataclass
class Cell:
  """One value with its uncertainty: ``lo``/``hi`` (an interval) or ``sem``."""
  value: Optional[float] = None
  lo: Optional[float] = None
  hi: Optional[float] = None
  sem: Optional[float] = None
  ratio: Optional[float] = None   # compute rows: the value relative to Unseen's of the same data and forget set


@dataclasses.dataclass
class Row:
  label: str
  metric: str   # 'unlearning_ratio' | 'nll_retain' | 'nll_forget' | 'fid' | 'mia_auc' | 'relearn_ur' |
                # 'relearn_mean' | 'compute_steps' | 'compute_wall' | 'unlearning_accuracy' | 'nfe'
  cells: List[Cell]


@dataclasses.dataclass
class Table:
  columns: List[str]
  rows: List[Row]
  runs: List[dict]   # per run: {'column', 'workdir', 'results'}


def canonical_task(name) -> Optional[str]:
  """``'square'`` / ``'Ort'`` / ``'orthogonal'`` -> ``'orthogonal'``; None for an unknown task."""
  if not isinstance(name, str):
    return None
  key = name.strip().lower().replace('-', '_')
  key = TASK_ALIASES.get(key, key)
  return key if key in TASK_DISPLAY else None


def load_results(workdir: str, eval_folder: str = 'eval') -> dict:
  """The parsed ``workdir/eval_folder/results.json``; ``ReportError`` naming the path if absent or bad."""
  path = os.path.join(workdir, eval_folder, RESULTS_FILENAME)
  if not os.path.isfile(path):
    raise ReportError(f'no evaluation results at {path}: run  python main.py --config <config> --workdir '
                      f'{workdir} --mode eval --eval_folder {eval_folder}  first (or pass --eval_folder)')
  try:
    results = utils.read_json(path)
  except ValueError as e:
    raise ReportError(str(e)) from None
  if not isinstance(results, dict):
    raise ReportError(f'{path} does not hold a results object (found {type(results).__name__})')
  return results


def load_run(workdir: str, eval_folder: str = 'eval') -> dict:
  """``load_results`` with what other commands wrote beside it: the relearning attack
  (``W/<eval_folder>/relearn.json``, under ``'relearning'``) and the training compute (``W/train_stats.json``,
  under ``'compute'``), when present; an unreadable one is a ``ReportError``."""
  results = load_results(workdir, eval_folder)
  from evaluation import relearn
  try:
    attack = relearn.load(workdir, eval_folder)
  except ValueError as e:
    raise ReportError(str(e)) from None
  if attack is not None:
    results['relearning'] = attack
  path = os.path.join(workdir, STATS_FILENAME)
  if os.path.isfile(path):
    try:
      with open(path) as f:
        results['compute'] = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
      raise ReportError(f'cannot read {path}: {e}') from None
  return results


def forget_label(forget) -> str:
  """A forget set as text: ``['3', '7']`` -> ``'3, 7'``; a string is kept."""
  if forget is None:
    return '?'
  if isinstance(forget, (list, tuple)):
    return ', '.join(str(f) for f in forget)
  return str(forget)


def _num(x) -> Optional[float]:
  if isinstance(x, bool) or not isinstance(x, (int, float)):
    return None
  return None if math.isnan(x) else float(x)


def _get(d, *keys):
  for k in keys:
    if not isinstance(d, dict):
      return None
    d = d.get(k)
  return d


def _curve(results: dict, k):
  """The relearning curve of ``k`` items in ``results`` (None if absent)."""
  curves = _get(results, 'relearning', 'curves')
  if not isinstance(curves, list):
    return None
  return next((c for c in curves if isinstance(c, dict) and c.get('k') == k and c.get('points')), None)


def _cell(results: dict, metric: str, key=None) -> Cell:
  if metric in ('relearn_ur', 'relearn_mean'):
    k, last = key
    c = _curve(results, k)
    if c is None or _get(c['points'][-1], 'step') != last:
      return Cell()
    if metric == 'relearn_mean':
      return Cell(_num(_get(c, 'area', 'mean_percent')))
    p = c['points'][-1]
    ci = p.get('ci95') if isinstance(p.get('ci95'), list) and len(p['ci95']) == 2 else [None, None]
    return Cell(_num(p.get('percent')), _num(ci[0]), _num(ci[1]))
  if metric == 'mia_auc':
    return Cell(_num(_get(results, 'membership', 'auc')), sem=_num(_get(results, 'membership', 'se')))
  if metric == 'compute_steps':
    return Cell(_num(_get(results, 'compute', 'steps')))
  if metric == 'compute_wall':
    return Cell(_num(_get(results, 'compute', 'wall_seconds')))
  if metric == 'unlearning_accuracy':   # class-conditional models: 100 − the share of forget requests that obey
    ua = _num(_get(results, 'unlearning_ratio_per_label', 'forget', 'unlearning_accuracy'))
    ci = _get(results, 'unlearning_ratio_per_label', 'forget', 'ci95')
    ci = ci if isinstance(ci, list) and len(ci) == 2 and None not in ci else None
    return Cell(ua, 100. - ci[1], 100. - ci[0]) if ci is not None and ua is not None else Cell(ua)
  if metric == 'nfe':
    return Cell(_num(_get(results, 'sampler', 'nfe_per_sample')))
  if metric == 'unlearning_ratio':
    ci = _get(results, 'unlearning_ratio', 'ci95') or [None, None]
    ci = list(ci) + [None] * (2 - len(ci)) if isinstance(ci, (list, tuple)) else [None, None]
    return Cell(_num(_get(results, 'unlearning_ratio', 'percent')), _num(ci[0]), _num(ci[1]))
  if metric in ('nll_retain', 'nll_forget'):
    part = metric.split('_')[1]
    return Cell(_num(_get(results, 'nll_bpd', part, 'mean')), sem=_num(_get(results, 'nll_bpd', part, 'sem')))
  return Cell(_num(_get(results, 'fid', 'value')))


def _run_names(workdirs: Sequence[str]) -> List[str]:
  """Column names: each work directory's base name, or its path where base names repeat."""
  base = [os.path.basename(os.path.normpath(w)) or w for w in workdirs]
  return [b if base.count(b) == 1 else os.path.normpath(w) for b, w in zip(base, workdirs)]


def build_table(runs: Sequence[dict], names: Optional[Sequence[str]] = None) -> Table:
  """Lays out ``runs`` (each a results dict) as in the paper's Table 1; ``names``: the runs' column
  names when columns cannot be the tasks (default ``run1``, ``run2``, ...)."""
  if not runs:
    raise ReportError('no runs to report')
  names = list(names) if names is not None else [f'run{i + 1}' for i in range(len(runs))]
  tasks = [canonical_task(r.get('task')) for r in runs]
  groups = [(str(r.get('dataset', '?')), forget_label(r.get('forget'))) for r in runs]
  by_task = all(t is not None for t in tasks) and len(set(zip(groups, tasks))) == len(runs)
  if by_task:
    present = [t for t in TASK_ORDER if t in tasks]
    columns = [TASK_DISPLAY[t] for t in present]
    column_of = [present.index(t) for t in tasks]
  else:
    columns = list(names)
    column_of = list(range(len(runs)))

  datasets_seen = list(dict.fromkeys(g[0] for g in groups))
  forgets = {d: sorted(dict.fromkeys(f for g_d, f in groups if g_d == d),
                       key=lambda f: (f.count(',') + 1, [f2 for _, f2 in groups].index(f)))
             for d in datasets_seen}
  rows = []
  for d in datasets_seen:
    prefix = f'{d}: ' if len(datasets_seen) > 1 else ''
    per_forget = len(forgets[d]) > 1
    specs = [('unlearning_ratio', f'Unlearning Ratio (%) — forget {f}', f) for f in forgets[d]]
    for metric, label in (('nll_retain', 'NLL D_g (bits/dim)'), ('nll_forget', 'NLL D_f (bits/dim)'),
                          ('fid', 'FID (D_g)')):
      specs += [(metric, f'{label} — forget {f}' if per_forget else label, f) for f in forgets[d]]
    specs = [(m, label, f, None) for m, label, f in specs] + _extra_specs(runs, groups, d, forgets[d], per_forget)
    for metric, label, f, key in specs:
      cells = [Cell() for _ in columns]
      for run, group, col in zip(runs, groups, column_of):
        if group == (d, f):
          cells[col] = _cell(run, metric, key)
      if metric.startswith('compute'):
        _relative_to_unseen(cells, [(run, col) for run, group, col in zip(runs, groups, column_of) if group == (d, f)],
                            metric)
      rows.append(Row(prefix + label, metric, cells))
  info = [{'column': columns[c], 'name': n, 'results': r} for r, n, c in zip(runs, names, column_of)]
  return Table(columns, rows, info)


def _extra_specs(runs, groups, dataset, forgets, per_forget):
  """Rows beyond Table 1, present only when some run of ``dataset`` has them: the relearning attack (UR
  after its last step and mean UR over the attack, per k), the membership AUC and the compute."""
  specs = []
  for f in forgets:
    mine = [r for r, g in zip(runs, groups) if g == (dataset, f)]
    tail = f' — forget {f}' if per_forget else ''
    keys = []
    for r in mine:
      for c in _get(r, 'relearning', 'curves') or []:
        if isinstance(c, dict) and c.get('points') and isinstance(c.get('k'), int):
          key = (c['k'], _get(c['points'][-1], 'step'))
          if key not in keys:
            keys.append(key)
    for k, last in sorted(keys, key=lambda x: (x[0], x[1] if isinstance(x[1], int) else -1)):
      specs.append(('relearn_ur', f'Relearn UR (%) after {last} steps, k = {k}{tail}', f, (k, last)))
      specs.append(('relearn_mean', f'Relearn mean UR (%) over the attack, k = {k}{tail}', f, (k, last)))
    if any(isinstance(r.get('unlearning_ratio_per_label'), dict) for r in mine):
      specs.append(('unlearning_accuracy', f'Unlearning accuracy (%) on forget-class requests (↑){tail}', f, None))
    if any(_get(r, 'sampler', 'nfe_per_sample') is not None for r in mine):
      specs.append(('nfe', f'Sampling NFE per sample{tail}', f, None))
    if any(isinstance(r.get('membership'), dict) for r in mine):
      specs.append(('mia_auc', f'MIA AUC on D_f (0.5 = not recognisable){tail}', f, None))
    if any(isinstance(r.get('compute'), dict) for r in mine):
      specs.append(('compute_steps', f'Unlearning steps (× Unseen){tail}', f, None))
      specs.append(('compute_wall', f'Unlearning wall time, s (× Unseen){tail}', f, None))
  return specs


def _relative_to_unseen(cells, members, metric):
  """Sets ``ratio`` of every compute cell to its value over that of the (first) Unseen run among
  ``members`` (``(results, column)`` pairs of one data set and forget set), when there is one."""
  ref = next((cells[col].value for run, col in members if canonical_task(run.get('task')) == 'unseen'), None)
  if not ref:
    return
  for _, col in members:
    if cells[col].value is not None:
      cells[col].ratio = cells[col].value / ref


def _fmt(cell: Cell, metric: str) -> str:
  if cell.value is None:
    return MISSING
  if metric in ('compute_steps', 'compute_wall'):
    text = f'{cell.value:,.0f}' if metric == 'compute_steps' or cell.value >= 10 else f'{cell.value:.2g}'
    return text + (f' ({cell.ratio:.2f}×)' if cell.ratio is not None else '')
  if metric == 'mia_auc':
    return f'{cell.value:.3f}' + (f' ± {cell.sem:.3f}' if cell.sem is not None else '')
  if metric == 'relearn_mean':
    return f'{cell.value:.1f}'
  if metric == 'nfe':
    return f'{cell.value:,.0f}'
  if metric in ('unlearning_ratio', 'relearn_ur', 'unlearning_accuracy'):
    text = f'{cell.value:.1f}'
    if cell.lo is not None and cell.hi is not None:
      text += f' [{cell.lo:.1f}, {cell.hi:.1f}]'
    return text
  if metric.startswith('nll'):
    return f'{cell.value:.2f}' + (f' ± {cell.sem:.2f}' if cell.sem is not None else '')
  return f'{cell.value:.2f}'


def _run_note(info: dict) -> str:
  r = info['results']
  bits = [f"**{info['column']}** ({info['name']}): task {r.get('task', '?')}, {r.get('dataset', '?')}, forget "
          f"{forget_label(r.get('forget'))}"]
  if r.get('checkpoint') is not None or r.get('step') is not None:
    bits.append(f"checkpoint {r.get('checkpoint', '?')} (step {r.get('step', '?')})")
  s = r.get('sampler')
  if isinstance(s, dict) and s:
    text = ' '.join(f'{k}={s[k]}' for k in ('method', 'predictor', 'corrector', 'steps') if s.get(k) is not None)
    if s.get('nfe') is not None:   # network evaluations of all the batches together
      text += f" nfe={s['nfe']} (all batches)"
    bits.append('sampler ' + text)
  ur = r.get('unlearning_ratio')
  if isinstance(ur, dict) and ur.get('num_samples') is not None:
    bits.append(f"UR on {ur['num_samples']} samples")
  c = r.get('classifier')
  if isinstance(c, dict) and c:
    sha = str(c.get('sha256') or '')[:12] or 'exact'
    acc = _num(c.get('test_accuracy'))
    bits.append(f'classifier {sha}' + (f' (test accuracy {100 * acc:.2f} %)' if acc is not None else ''))
  fid = r.get('fid')
  if isinstance(fid, dict) and fid.get('value') is not None:
    bits.append(f"FID {fid.get('backend', '?')} on {fid.get('num_samples', '?')} samples")
  nll = r.get('nll_bpd')
  if isinstance(nll, dict):
    ns = [f"{p} n={_get(nll, p, 'n')}" for p in ('retain', 'forget') if _get(nll, p, 'n') is not None]
    if ns:
      bits.append('NLL ' + ', '.join(ns))
  rl = r.get('relearning')
  if isinstance(rl, dict) and isinstance(rl.get('settings'), dict):
    st = rl['settings']
    other = ' (not the checkpoint of the other rows)' if rl.get('checkpoint') != r.get('checkpoint') else ''
    bits.append(f"relearning attack on {rl.get('checkpoint', '?')}{other}: Adam lr {st.get('lr')}, batch "
                f"{st.get('batch_size')}, {st.get('num_samples')} samples per point, steps {st.get('steps')}")
  mia = r.get('membership')
  if isinstance(mia, dict):
    bits.append(f"MIA {mia.get('n_member', '?')} train vs {mia.get('n_nonmember', '?')} test D_f items, "
                f"{mia.get('num_draws', '?')} draws on t in {mia.get('t_range', '?')}")
  comp = r.get('compute')
  if isinstance(comp, dict):
    pre = f", fine-tuned from {comp['pretrained']}" if comp.get('pretrained') else ''
    bits.append(f"training: {comp.get('steps', '?')} steps in {_num(comp.get('wall_seconds')) or 0:.0f} s on "
                f"{comp.get('device', '?')} (start {comp.get('start', '?')}{pre})")
  return '- ' + '; '.join(bits)


def to_markdown(table: Table, notes: bool = True) -> str:
  """The table in GitHub Markdown, followed (``notes``) by one line per run."""
  header = ['Metric'] + table.columns
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(['---'] + [':---:'] * len(table.columns)) + '|']
  for row in table.rows:
    lines.append('| ' + ' | '.join([row.label] + [_fmt(c, row.metric) for c in row.cells]) + ' |')
  text = '\n'.join(lines) + '\n'
  if notes:
    text += ('\nUnlearning Ratio: % of generated samples classified into the forget set, with its 95 % Wilson '
             'interval (lower is better). NLL: bits/dim ± standard error. FID against D_g.')
    metrics = {row.metric for row in table.rows}
    if metrics & {'relearn_ur', 'relearn_mean'}:
      text += (' Relearn: the UR after fine-tuning on k D_f training items (--mode relearn; compare with Unseen '
               'under the same attack), and its mean over the attack (area under the curve / steps).')
    if 'mia_auc' in metrics:
      text += ' MIA AUC: loss-based membership test of D_f training against D_f test items, ± DeLong SE.'
    if 'compute_steps' in metrics:
      text += (' Compute: optimisation steps and wall time of the run (W/train_stats.json; fine-tuned runs '
               'without their pretraining), relative to Unseen.')
    text += '\n\n'
    text += '\n'.join(_run_note(i) for i in table.runs) + '\n'
  return text


def plot_relearning(table: Table, path: str) -> bool:
  """The relearning curves of every run that has them, one panel per k, one line per column (Wilson 95 %
  bands), written to ``path``; False (nothing written) when no run has a relearning attack."""
  series = {}
  for info in table.runs:
    for c in _get(info['results'], 'relearning', 'curves') or []:
      if isinstance(c, dict) and c.get('points'):
        series.setdefault(c.get('k'), []).append((info['column'], c['points']))
  if not series:
    return False
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from evaluation import relearn
  ks = sorted(series, key=lambda k: (not isinstance(k, int), k if isinstance(k, int) else 0))
  fig, axes = plt.subplots(1, len(ks), figsize=(4.6 * len(ks), 3.6), squeeze=False)
  try:
    for ax, k in zip(axes[0], ks):
      relearn.plot_curves(series[k], None, f'relearning attack, k = {k}', ax=ax)
    utils.atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=110, bbox_inches='tight'))
  finally:
    plt.close(fig)
  return True


def _csv_num(x: Optional[float]) -> str:
  return '' if x is None else f'{x:.10g}'


def to_csv(table: Table) -> str:
  """The table as CSV: ``metric`` then one column per table column; uncertainty rows follow their
  value row (``… ci95_lo``, ``… ci95_hi`` for the UR, ``… sem`` for the NLL)."""
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator='\n')
  w.writerow(['metric'] + table.columns)
  for row in table.rows:
    w.writerow([row.label] + [_csv_num(c.value) for c in row.cells])
    if row.metric in ('unlearning_ratio', 'relearn_ur', 'unlearning_accuracy'):
      w.writerow([row.label + ' ci95_lo'] + [_csv_num(c.lo) for c in row.cells])
      w.writerow([row.label + ' ci95_hi'] + [_csv_num(c.hi) for c in row.cells])
    elif row.metric.startswith('nll'):
      w.writerow([row.label + ' sem'] + [_csv_num(c.sem) for c in row.cells])
    elif row.metric == 'mia_auc':
      w.writerow([row.label + ' se'] + [_csv_num(c.sem) for c in row.cells])
    elif row.metric.startswith('compute'):
      w.writerow([row.label + ' ratio'] + [_csv_num(c.ratio) for c in row.cells])
  return buf.getvalue()


def report(workdirs: Sequence[str], out_dir: Optional[str] = '.', eval_folder: str = 'eval',
           name: str = 'table1') -> Table:
  """Reads the runs, builds the table and writes ``out_dir/<name>.md`` and ``.csv`` (not when
  ``out_dir`` is None); returns the table."""
  runs = [load_run(w, eval_folder) for w in workdirs]
  table = build_table(runs, _run_names(workdirs))
  if out_dir is not None:
    utils.atomic_write_text(os.path.join(out_dir, name + '.md'), to_markdown(table))
    utils.atomic_write_text(os.path.join(out_dir, name + '.csv'), to_csv(table))
    plot_relearning(table, os.path.join(out_dir, name + '_relearn.png'))
    from evaluation import downstream_report   # Tables 5 and 6 when the runs hold downstream results
    downstream_report.write(table, out_dir, name)
  return table


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
    prog='python -m evaluation.report',
    description="Collects runs' evaluation results into one table (MSGM Table 1 layout).")
  parser.add_argument('workdirs', nargs='+', help='work directories of evaluated runs')
  parser.add_argument('--out', default='.', help='folder for <name>.md and <name>.csv (default: .)')
  parser.add_argument('--name', default='table1', help='file name stem (default: table1)')
  parser.add_argument('--eval_folder', default='eval', help='results folder inside each work directory')
  args = parser.parse_args(argv)
  try:
    table = report(args.workdirs, args.out, args.eval_folder, args.name)
  except ReportError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(to_markdown(table))
  from evaluation import downstream_report
  if downstream_report.markdown_all(table):
    print(downstream_report.markdown_all(table))
  print(f'written: {os.path.join(args.out, args.name)}.md and .csv', file=sys.stderr)
  return 0


if __name__ == '__main__':
  sys.exit(main())
