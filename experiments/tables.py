"""Writing a list of row dicts as a Markdown table and a CSV file (atomically)."""
import csv
import io
import os

import utils


def write_table(rows, workdir, stem, fmt=str, note=''):
  """Writes ``W/<stem>.md`` and ``W/<stem>.csv`` (columns: the first row's keys); returns the Markdown.

  ``fmt`` formats the Markdown cells (the CSV keeps the raw values); ``note``, if given, is a paragraph
  under the Markdown table (not in the CSV)."""
  header = list(rows[0])
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(fmt(r[h]) for h in header) + ' |' for r in rows]
  md = '\n'.join(lines) + '\n'
  if note:
    md += '\n' + note.strip() + '\n'
  utils.atomic_write_text(os.path.join(workdir, f'{stem}.md'), md)
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=header)
  writer.writeheader()
  writer.writerows(rows)
  utils.atomic_write_text(os.path.join(workdir, f'{stem}.csv'), buf.getvalue())
  return md
