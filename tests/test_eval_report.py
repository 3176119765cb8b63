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
