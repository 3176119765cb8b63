"""Tables of the downstream tasks laid out like the paper's Tables 5 (inpainting) and 6 (reconstruction).

``python -m evaluation.report W1 W2 …`` adds them under Table 1 when the runs' results.json hold an
``inpainting`` or ``reconstruction`` entry (``--mode inpaint`` / ``reconstruct``, or ``eval.inpaint`` /
``eval.reconstruct``), and writes them to ``table5.md`` / ``.csv`` and ``table6.md`` / ``.csv`` (or
``<name>_inpainting`` / ``<name>_reconstruction`` with ``--name``). Columns: Clean (the original images:
classifier accuracy and FID of the same test images, from the first run that has the task) and the runs'
columns of Table 1 (Standard, Ort, Obt, Unseen, EraseDiff, or the work directories). Rows: ACC on D_g and
D_f, FID of D_g, CLIP, PSNR and SSIM of D_g (for inpainting over the masked pixels and over the whole
image), then PSNR, SSIM and CLIP of D_f (not in the paper). Markdown cells carry ± one standard error.
"""
import csv
import io
from typing import List, Optional

from evaluation import report as report_lib

TASKS = ('inpainting', 'reconstruction')
TITLES = {'inpainting': 'Table 5 layout: inpainting', 'reconstruction': 'Table 6 layout: reconstruction'}
STEMS = {'inpainting': 'table5', 'reconstruction': 'table6'}
MISSING = report_lib.MISSING

#: (metric key, part, label, digits) of each row; 'clip' is the CLIP embedding distance.
ROWS = {
  'inpainting': [
    ('acc', 'retain', 'ACC (%) D_g (↑)', 1), ('acc', 'forget', 'ACC (%) D_f (↓)', 1),
    ('fid', 'retain', 'FID of D_g (↓)', 2), ('clip', 'retain', 'CLIP distance of D_g (↓)', 3),
    ('psnr_masked', 'retain', 'PSNR of D_g, masked pixels (dB, ↑)', 2),
    ('psnr', 'retain', 'PSNR of D_g, whole image (dB, ↑)', 2),
    ('ssim_masked', 'retain', 'SSIM of D_g, masked pixels (↑)', 3), ('ssim', 'retain', 'SSIM of D_g, whole image (↑)', 3),
    ('psnr_masked', 'forget', 'PSNR of D_f, masked pixels (dB)', 2), ('psnr', 'forget', 'PSNR of D_f, whole image (dB)', 2),
    ('ssim_masked', 'forget', 'SSIM of D_f, masked pixels', 3), ('ssim', 'forget', 'SSIM of D_f, whole image', 3),
    ('clip', 'forget', 'CLIP distance of D_f', 3)],
  'reconstruction': [
    ('acc', 'retain', 'ACC (%) D_g (↑)', 1), ('acc', 'forget', 'ACC (%) D_f (↓)', 1),
    ('fid', 'retain', 'FID of D_g (↓)', 2), ('clip', 'retain', 'CLIP distance of D_g (↓)', 3),
    ('psnr', 'retain', 'PSNR of D_g (dB, ↑)', 2), ('ssim', 'retain', 'SSIM of D_g (↑)', 3),
    ('psnr', 'forget', 'PSNR of D_f (dB)', 2), ('ssim', 'forget', 'SSIM of D_f', 3),
    ('clip', 'forget', 'CLIP distance of D_f', 3)],
}


def _value(entry: Optional[dict], metric: str):
  """``(value, sem, text_if_not_a_number)`` of one metric entry of a part."""
  if not isinstance(entry, dict):
    return None, None, None
  if metric == 'fid':
    return report_lib._num(entry.get('value')), None, None
  if metric == 'clip':
    if 'skipped' in entry:
      return None, None, 'skipped'
    entry = entry.get('distance')
    if not isinstance(entry, dict):
      return None, None, None
  if metric == 'acc':
    return report_lib._num(entry.get('percent')), report_lib._num(entry.get('sem')), None
  return report_lib._num(entry.get('mean')), report_lib._num(entry.get('sem')), None


def _cell(task_entry, metric, part, clean=False):
  if not isinstance(task_entry, dict):
    return None, None, None
  source = task_entry.get('clean') if clean else task_entry
  if clean and metric not in ('acc', 'fid'):
    return None, None, None
  part_entry = source.get(part) if isinstance(source, dict) else None
  return _value(part_entry.get(metric) if isinstance(part_entry, dict) else None, metric)


def _fmt(value, sem, text, digits) -> str:
  if value is None:
    return text or MISSING
  return f'{value:.{digits}f}' + (f' ± {sem:.{digits}f}' if sem is not None else '')


def build(table, task: str):
  """``(columns, rows)`` of ``task`` for the runs of a ``report.Table``; rows are ``(label, [(value, sem,
  text)], digits)``; None when no run has the task."""
  runs = [r for r in table.runs if isinstance(r['results'].get(task), dict)]
  if not runs:
    return None
  groups = [(str(r['results'].get('dataset', '?')), report_lib.forget_label(r['results'].get('forget'))) for r in runs]
  distinct = list(dict.fromkeys(groups))
  columns = ['Clean'] + list(table.columns)
  rows = []
  for group in distinct:
    prefix = f'{group[0]}, forget {group[1]}: ' if len(distinct) > 1 else ''
    members = [r for r, g in zip(runs, groups) if g == group]
    for metric, part, label, digits in ROWS[task]:
      cells = [(None, None, None)] * len(columns)
      cells[0] = _cell(members[0]['results'][task], metric, part, clean=True)
      for r in members:
        cells[columns.index(r['column'])] = _cell(r['results'][task], metric, part)
      rows.append((prefix + label, cells, digits))
  return columns, rows


def _note(info: dict, task: str) -> str:
  r, e = info['results'], info['results'][task]
  bits = [f"**{info['column']}** ({info['name']}): step {e.get('step', r.get('step', '?'))}"]
  counts = e.get('num_images') or {}
  bits.append(f"{counts.get('retain', '?')} D_g / {counts.get('forget', '?')} D_f test images")
  if task == 'inpainting':
    m = e.get('mask') or {}
    share = (m.get('unknown_share') or {}).get('retain')
    extra = ', rows ' + '–'.join(str(v) for v in m['rows']) if 'rows' in m else ''
    bits.append(f"mask {m.get('name', '?')}{extra}" + (f' ({100 * share:.1f} % of the pixels unknown)'
                                                       if isinstance(share, float) else ''))
    s = e.get('sampler') or {}
    bits.append(f"PC {s.get('predictor', '?')}/{s.get('corrector', '?')}, {s.get('steps', '?')} steps")
  else:
    p = e.get('perturbation') or {}
    bits.append(f"t = {e.get('t', '?')} (latent × {p.get('mean_scale', float('nan')):.4f} + "
                f"{p.get('std', float('nan')):.4f} · noise)")
  c = e.get('classifier') or {}
  acc = report_lib._num(c.get('test_accuracy'))
  bits.append(f"classifier {str(c.get('sha256') or 'exact')[:12]}" + (f' ({100 * acc:.2f} %)' if acc is not None else ''))
  if e.get('fid_backend'):
    bits.append(f"FID {e['fid_backend']}")
  clip = e.get('clip') or {}
  bits.append('CLIP skipped' if 'skipped' in clip else f"CLIP {clip.get('library', '?')} {clip.get('path', '')}")
  return '- ' + '; '.join(bits)


def to_markdown(table, task: str) -> str:
  """The task's table in Markdown with a note per run ('' when no run has the task)."""
  built = build(table, task)
  if built is None:
    return ''
  columns, rows = built
  lines = [f'### {TITLES[task]}', '', '| Metric | ' + ' | '.join(columns) + ' |',
           '|' + '|'.join(['---'] + [':---:'] * len(columns)) + '|']
  for label, cells, digits in rows:
    lines.append('| ' + ' | '.join([label] + [_fmt(*c, digits) for c in cells]) + ' |')
  lines += ['', 'ACC: the evaluation classifier\'s accuracy on the restored images against the originals\' labels '
            '(± binomial standard error); Clean: the same on the original images. PSNR, SSIM, CLIP: mean ± standard '
            'error over images' + ('; "masked pixels" counts only the pixels the mask hid, "whole image" all of them '
                                   '(the known pixels equal the originals)' if task == 'inpainting' else '')
            + '. FID of the restored D_g images against the D_g test set (Clean: the original images).', '']
  lines += [_note(i, task) for i in table.runs if isinstance(i['results'].get(task), dict)]
  return '\n'.join(lines) + '\n'


def to_csv(table, task: str) -> str:
  """The task's table as CSV (value rows, each followed by its ``sem`` row where there is one)."""
  built = build(table, task)
  if built is None:
    return ''
  columns, rows = built
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator='\n')
  w.writerow(['metric'] + columns)
  for label, cells, _ in rows:
    w.writerow([label] + [report_lib._csv_num(c[0]) if c[0] is not None else (c[2] or '') for c in cells])
    if any(c[1] is not None for c in cells):
      w.writerow([label + ' sem'] + [report_lib._csv_num(c[1]) for c in cells])
  return buf.getvalue()


def stems(name: str = 'table1') -> dict:
  """File stems of the downstream tables: table5 / table6, or ``<name>_<task>`` for a custom ``--name``."""
  return {t: STEMS[t] if name == 'table1' else f'{name}_{t}' for t in TASKS}


def write(table, out_dir: str, name: str = 'table1') -> List[str]:
  """Writes the downstream tables present in ``table``'s runs to ``out_dir``; returns the stems written."""
  import os

  import utils
  written = []
  for task, stem in stems(name).items():
    text = to_markdown(table, task)
    if text:
      utils.atomic_write_text(os.path.join(out_dir, stem + '.md'), text)
      utils.atomic_write_text(os.path.join(out_dir, stem + '.csv'), to_csv(table, task))
      written.append(stem)
  return written


def markdown_all(table) -> str:
  """Both downstream tables (those present), for printing."""
  return '\n'.join(t for t in (to_markdown(table, task) for task in TASKS) if t)
