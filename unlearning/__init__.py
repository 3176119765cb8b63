"""The unlearning methods, one module each, behind one registry (``get_method``): ``--task NAME``.

Every method module registers a ``base.Method``; importing this package imports them all, so the
registry is always full. docs/unlearning.md has the table of methods, equations, needs and sources.
"""
from unlearning.base import Context, Method, Objective, get_method, register, registered
from unlearning.presets import all_presets, apply_preset, preset_conflicts
from unlearning.step import get_step_fn

# The methods (import order = the order of tables and reports).
from unlearning import standard  # noqa: E402,F401  standard, unseen, finetune
from unlearning import orthogonal  # noqa: E402,F401
from unlearning import obtuse  # noqa: E402,F401
from unlearning import erase  # noqa: E402,F401
from unlearning import neggrad  # noqa: E402,F401
from unlearning import salun  # noqa: E402,F401
from unlearning import sa  # noqa: E402,F401
from unlearning import erasediff  # noqa: E402,F401
from unlearning import siss  # noqa: E402,F401
from unlearning import vdu  # noqa: E402,F401
from unlearning import sfd  # noqa: E402,F401


def build_objective(method, config, sde, data, device, model, train=True, start='fresh', workdir=None, step=0,
                    extra=None):
  """``method.build`` on a ``Context`` of these values: the run's ``Objective``."""
  ctx = Context(config, sde, data, device, model, train, start, workdir, step, extra)
  return get_method(method).build(ctx)


def methods_table():
  """The Markdown table of every registered method (docs/unlearning.md holds this table; a test keeps them
  equal): task, official name, equation, what it trains on, what it needs, keys, source."""
  data = {'full': 'D', 'retain': 'D_g', 'none': 'D_f only'}
  rows = ['| `--task` | official | objective | trains on | needs | keys | source |', '|---|---|---|---|---|---|---|']
  for m in registered():
    on = m.trains_on or data[m.retain_data] + (' + D_f' if m.forget_data and m.retain_data != 'none' else '')
    keys = ', '.join(f'`{k}`' for k in m.keys) or '—'
    needs = '; '.join(m.needs) or '—'
    cells = [f'`{m.name}`', f'`{m.official_name}`' if m.official_name else '—', m.equation, on, needs, keys, m.paper]
    rows.append('| ' + ' | '.join(c.replace('|', '\\|') for c in cells) + ' |')
  return '\n'.join(rows) + '\n'
