"""Tests of evaluation/report.py: Table-1 layout in Markdown and CSV from fake results.json files."""
import csv
import io
import json
import os

import pytest

from evaluation import report as R


def results(task, forget='3', ur=None, nll=None, fid=None, dataset='MNIST5K'):
  return {
    'task': task, 'dataset': dataset, 'forget': forget, 'checkpoint': 'checkpoints/checkpoint_2.pth', 'step': 2000,
    'unlearning_ratio': None if ur is None else {'percent': ur[0], 'ci95': list(ur[1:]), 'num_samples': 1000,
                                                 'class_histogram': {'3': 1}},
    'nll_bpd': None if nll is None else {'retain': {'mean': nll[0], 'sem': nll[1], 'n': 100},
                                         'forget': {'mean': nll[2], 'sem': nll[3], 'n': 50}},
    'fid': None if fid is None else {'value': fid, 'backend': 'toy', 'num_samples': 1000, 'reference': {}},
    'sampler': {'method': 'pc', 'predictor': 'euler_maruyama', 'corrector': 'none', 'steps': 1000, 'nfe': 1000},
    'classifier': {'path': 'c.pth', 'sha256': 'ab' * 32, 'test_accuracy': 0.991},
  }


def write_run(root, name, res, folder='eval'):
  path = root / name / folder
  path.mkdir(parents=True)
  (path / 'results.json').write_text(json.dumps(res))
  return str(root / name)


def parse_csv(text):
  rows = list(csv.reader(io.StringIO(text)))
  return rows[0], {r[0]: r[1:] for r in rows[1:]}


def test_columns_follow_the_papers_task_order(tmp_path):
  runs = [write_run(tmp_path, 'u', results('no_u', ur=(1.8, 1.1, 2.9), nll=(3.07, 0.01, 3.01, 0.02))),
          write_run(tmp_path, 's', results('standard', ur=(11.0, 9.2, 13.1), nll=(2.82, 0.012, 2.78, 0.03),
                                           fid=12.345)),
          write_run(tmp_path, 'o', results('square', ur=(0.4, 0.15, 1.0), nll=(3.92, 0.02, 13.23, 0.1)))]
  out = tmp_path / 'out'
  table = R.report(runs, str(out))
  assert table.columns == ['Standard', 'Ort', 'Unseen']
  md = (out / 'table1.md').read_text()
  lines = md.splitlines()
  assert lines[0] == '| Metric | Standard | Ort | Unseen |'
  assert lines[2] == '| Unlearning Ratio (%) — forget 3 | 11.0 [9.2, 13.1] | 0.4 [0.1, 1.0] | 1.8 [1.1, 2.9] |'
  assert lines[3] == '| NLL D_g (bits/dim) | 2.82 ± 0.01 | 3.92 ± 0.02 | 3.07 ± 0.01 |'
  assert lines[4] == '| NLL D_f (bits/dim) | 2.78 ± 0.03 | 13.23 ± 0.10 | 3.01 ± 0.02 |'
  assert lines[5] == f'| FID (D_g) | 12.35 | {R.MISSING} | {R.MISSING} |'
  assert 'classifier abababababab (test accuracy 99.10 %)' in md
  header, rows = parse_csv((out / 'table1.csv').read_text())
  assert header == ['metric', 'Standard', 'Ort', 'Unseen']
  assert rows['Unlearning Ratio (%) — forget 3'] == ['11', '0.4', '1.8']
  assert rows['Unlearning Ratio (%) — forget 3 ci95_lo'] == ['9.2', '0.15', '1.1']
  assert rows['NLL D_f (bits/dim) sem'] == ['0.03', '0.1', '0.02']
  assert rows['FID (D_g)'] == ['12.345', '', '']


def test_several_forget_sets_give_rows_per_forget_set(tmp_path):
  runs = []
  for forget, base in (('3,7', 26.8), ('3', 11.0), ('7', 15.8)):
    for task, scale in (('obtuse', 0.1), ('standard', 1.0), ('erase', 0.05)):
      runs.append(results(task, forget=forget, ur=(base * scale, 0, 100), nll=(3, 0.1, 4, 0.1)))
  table = R.build_table(runs)
  assert table.columns == ['Standard', 'Obt', 'EraseDiff']
  labels = [r.label for r in table.rows]
  assert labels[:3] == ['Unlearning Ratio (%) — forget 3', 'Unlearning Ratio (%) — forget 7',
                        'Unlearning Ratio (%) — forget 3,7']
  assert 'NLL D_g (bits/dim) — forget 7' in labels and 'FID (D_g) — forget 3,7' in labels
  ur7 = table.rows[1]
  assert [c.value for c in ur7.cells] == pytest.approx([15.8, 1.58, 0.79])


def test_repeated_tasks_fall_back_to_run_names(tmp_path):
  runs = [write_run(tmp_path, 'std_seed1', results('standard', ur=(10., 8., 12.))),
          write_run(tmp_path, 'std_seed2', results('standard', ur=(12., 10., 14.))),
          write_run(tmp_path, 'mystery', results('my-new-task', ur=(1., 0.5, 2.)))]
  table = R.report(runs, None)
  assert table.columns == ['std_seed1', 'std_seed2', 'mystery']
  assert [c.value for c in table.rows[0].cells] == [10., 12., 1.]


def test_several_data_sets_are_prefixed():
  table = R.build_table([results('standard', dataset='MNIST5K', ur=(1, 0, 2)),
                         results('standard', dataset='FASHIONMNIST', forget=['Trouser'], ur=(2, 1, 3))])
  assert [r.label for r in table.rows if r.metric == 'unlearning_ratio'] == [
    'MNIST5K: Unlearning Ratio (%) — forget 3', 'FASHIONMNIST: Unlearning Ratio (%) — forget Trouser']


def test_missing_results_name_the_path(tmp_path, capsys):
  good = write_run(tmp_path, 'good', results('standard'))
  with pytest.raises(R.ReportError, match=os.path.join('missing', 'eval', 'results.json')):
    R.report([good, str(tmp_path / 'missing')], None)
  assert R.main([good, str(tmp_path / 'missing'), '--out', str(tmp_path / 'o')]) == 1
  assert 'results.json' in capsys.readouterr().err
  (tmp_path / 'good' / 'eval' / 'results.json').write_text('{not json')
  with pytest.raises(R.ReportError, match='cannot read'):
    R.load_results(good)


def test_cli_prints_and_writes(tmp_path, capsys):
  runs = [write_run(tmp_path, 'a', results('standard', ur=(5., 4., 6.)), folder='ev2'),
          write_run(tmp_path, 'b', results('orthogonal', ur=(1., 0.5, 2.)), folder='ev2')]
  assert R.main(runs + ['--out', str(tmp_path / 'o'), '--eval_folder', 'ev2', '--name', 'mnist']) == 0
  out = capsys.readouterr().out
  assert '| Metric | Standard | Ort |' in out
  assert (tmp_path / 'o' / 'mnist.md').read_text().startswith('| Metric | Standard | Ort |')
  assert (tmp_path / 'o' / 'mnist.csv').exists()


def test_task_names_match_the_training_tasks():
  import unlearning
  for method in unlearning.registered():
    assert R.canonical_task(method.name) == method.name
    if method.official_name:
      assert R.canonical_task(method.official_name) == method.name
  assert set(R.TASK_ORDER) == {m.name for m in unlearning.registered()}


def test_every_registered_method_gets_a_column():
  import unlearning
  names = [m.name for m in unlearning.registered()]
  table = R.build_table([results(n, ur=(float(i), 0., 100.)) for i, n in enumerate(reversed(names))])
  assert table.columns == [R.TASK_DISPLAY[t] for t in R.TASK_ORDER]
  assert [c.value for c in table.rows[0].cells] == [float(len(names) - 1 - names.index(t)) for t in R.TASK_ORDER]


def _curve(k, urs, steps=(0, 50, 100)):
  from evaluation.relearn import curve_area
  points = [{'step': s, 'percent': u, 'ci95': [u - 1., u + 1.], 'num_samples': 1000, 'num_forget': int(10 * u),
             'loss': None} for s, u in zip(steps, urs)]
  return {'k': k, 'batch_size': min(k, 32), 'points': points, 'area': curve_area(steps, urs)}


def _write_extras(workdir, curves=None, mia=None, steps=None, wall=None, folder='eval'):
  """relearn.json beside results.json, "membership" inside it, W/train_stats.json."""
  if curves is not None:
    attack = {'task': 'x', 'checkpoint': 'c.pth', 'curves': curves,
              'settings': {'lr': 1e-4, 'batch_size': 32, 'num_samples': 1000, 'steps': [0, 50, 100]}}
    with open(os.path.join(workdir, folder, 'relearn.json'), 'w') as f:
      json.dump(attack, f)
  if mia is not None:
    path = os.path.join(workdir, folder, 'results.json')
    res = json.load(open(path))
    res['membership'] = {'auc': mia[0], 'se': mia[1], 'n_member': 400, 'n_nonmember': 100, 'num_draws': 16,
                         't_range': [0.05, 0.3]}
    with open(path, 'w') as f:
      json.dump(res, f)
  if steps is not None:
    with open(os.path.join(workdir, 'train_stats.json'), 'w') as f:
      json.dump({'steps': steps, 'wall_seconds': wall, 'start': 'fresh', 'pretrained': '', 'device': 'cpu'}, f)


def test_relearning_membership_and_compute_rows(tmp_path):
  std = write_run(tmp_path, 'std', results('standard', ur=(11., 9., 13.)))
  uns = write_run(tmp_path, 'uns', results('no_u', ur=(1., 0.5, 2.)))
  ng = write_run(tmp_path, 'ng', results('neggrad', ur=(0.5, 0.1, 1.)))
  _write_extras(std, [_curve(8, [11., 20., 30.]), _curve(32, [11., 25., 40.])], (0.58, 0.02), 20000, 400.)
  _write_extras(uns, [_curve(8, [1., 3., 6.]), _curve(32, [1., 5., 12.])], (0.51, 0.03), 20000, 380.)
  _write_extras(ng, [_curve(8, [0.5, 15., 28.])], (0.55, 0.025), 500, 19.)
  out = tmp_path / 'out'
  table = R.report([std, uns, ng], str(out))
  assert table.columns == ['Standard', 'Unseen', 'NegGrad+']
  rows = {r.label: r for r in table.rows}
  r8 = rows['Relearn UR (%) after 100 steps, k = 8']
  assert [c.value for c in r8.cells] == [30., 6., 28.] and r8.cells[2].lo == 27.
  m8 = rows['Relearn mean UR (%) over the attack, k = 8']
  assert [c.value for c in m8.cells] == pytest.approx([(15.5 + 25) / 2, (2 + 4.5) / 2, (7.75 + 21.5) / 2])
  assert [c.value for c in rows['Relearn UR (%) after 100 steps, k = 32'].cells] == [40., 12., None]
  mia = rows['MIA AUC on D_f (0.5 = not recognisable)']
  assert [c.value for c in mia.cells] == [0.58, 0.51, 0.55] and mia.cells[0].sem == 0.02
  steps = rows['Unlearning steps (× Unseen)']
  assert [c.value for c in steps.cells] == [20000., 20000., 500.]
  assert [c.ratio for c in steps.cells] == pytest.approx([1., 1., 0.025])
  wall = rows['Unlearning wall time, s (× Unseen)']
  assert [c.ratio for c in wall.cells] == pytest.approx([400 / 380, 1., 19 / 380])
  md = (out / 'table1.md').read_text()
  assert '| Relearn UR (%) after 100 steps, k = 8 | 30.0 [29.0, 31.0] | 6.0 [5.0, 7.0] | 28.0 [27.0, 29.0] |' in md
  assert '| MIA AUC on D_f (0.5 = not recognisable) | 0.580 ± 0.020 | 0.510 ± 0.030 | 0.550 ± 0.025 |' in md
  assert '| Unlearning steps (× Unseen) | 20,000 (1.00×) | 20,000 (1.00×) | 500 (0.03×) |' in md
  assert '| Unlearning wall time, s (× Unseen) | 400 (1.05×) | 380 (1.00×) | 19 (0.05×) |' in md
  assert 'relearning attack on c.pth (not the checkpoint of the other rows): Adam lr 0.0001' in md
  assert 'MIA 400 train vs 100 test' in md
  header, csv_rows = parse_csv((out / 'table1.csv').read_text())
  assert csv_rows['Unlearning steps (× Unseen) ratio'] == ['1', '1', '0.025']
  assert csv_rows['MIA AUC on D_f (0.5 = not recognisable) se'] == ['0.02', '0.03', '0.025']
  assert csv_rows['Relearn UR (%) after 100 steps, k = 32 ci95_lo'] == ['39', '11', '']
  assert os.path.getsize(out / 'table1_relearn.png') > 1000
  # without an Unseen run the compute has no ratio; an unreadable relearn.json is an error naming it
  table = R.build_table([R.load_run(std), R.load_run(ng)])
  assert all(c.ratio is None for r in table.rows if r.metric.startswith('compute') for c in r.cells)
  (tmp_path / 'ng' / 'eval' / 'relearn.json').write_text('{')
  with pytest.raises(R.ReportError, match='relearn.json'):
    R.report([std, ng], None)


def test_tables_without_the_new_entries_have_no_new_rows():
  table = R.build_table([results('standard', ur=(1, 0, 2)), results('unseen', ur=(1, 0, 2))])
  assert [r.metric for r in table.rows] == ['unlearning_ratio', 'nll_retain', 'nll_forget', 'fid']
  assert R.plot_relearning(table, 'never-written.png') is False
