"""Named settings: ``--config.unlearn.preset=NAME`` sets a group of config keys of one method.

Each method module declares its presets (``Method.presets``); a preset can be used only with its method.
Keys the preset sets override the config file (the resolved values are saved in W/config.json); a command
line that sets one of them to another value is refused (``preset_conflicts``), so that a flag is never dropped
without a word. A preset that needs a frozen reference model says how to obtain one (``reference``) and is
refused while ``config.unlearn.reference`` is unset; one that needs a noisy classifier (``classifier``)
likewise while ``config.unlearn.classifier`` is unset. docs/unlearning.md says how each was chosen.
"""
from unlearning.base import get_method, registered


def all_presets():
  """``{name: (method, preset)}`` over every registered method (names are unique)."""
  out = {}
  for method in registered():
    for name, preset in method.presets.items():
      if name in out:
        raise ValueError(f'preset {name!r} is declared by {out[name][0].name} and {method.name}')
      out[name] = (method, preset)
  return out


def preset_conflicts(name, overrides):
  """The command-line overrides that a preset would overwrite with another value.

  ``overrides``: ``{'section.key': value}`` as given on the command line (``--config.section.key=value``);
  returns ``['section.key=value (preset NAME sets V)', ...]``, empty for an unset or unknown preset name (which
  ``apply_preset`` reports).
  """
  presets = all_presets()
  if not name or name not in presets:
    return []
  out = []
  for section, values in presets[name][1].items():
    if section in ('reference', 'classifier', 'note'):
      continue
    for key, value in values.items():
      given = overrides.get(f'{section}.{key}', value)
      if given != value:
        out.append(f'{section}.{key}={given} (preset {name} sets {value})')
  return out


def apply_preset(config, task):
  """Applies ``config.unlearn.preset`` (if set) to ``config`` in place and returns it.

  A preset's keys are ``{section: {key: value}}`` besides its notes; the ``unlearn`` section may be given
  flat. Raises ValueError for an unknown preset name or a task the preset does not build on.
  """
  name = config.unlearn.preset
  if not name:
    return config
  presets = all_presets()
  if name not in presets:
    raise ValueError(f"unknown unlearn.preset '{name}'; valid: {', '.join(sorted(presets))}")
  method, preset = presets[name]
  if get_method(task) is not method:
    official = f' ({method.official_name})' if method.official_name else ''
    raise ValueError(f"unlearn.preset='{name}' builds on --task {method.name}{official}, not on '{task}'")
  for section, values in preset.items():
    if section in ('reference', 'classifier', 'note'):
      continue
    for key, value in values.items():
      config[section][key] = value
  if preset.get('reference') and not config.unlearn.reference:
    raise ValueError(f"unlearn.preset='{name}' needs a reference model (unlearn.reference): "
                     f"{preset['reference']}")
  if preset.get('classifier') and not config.unlearn.classifier:
    raise ValueError(f"unlearn.preset='{name}' needs a noisy classifier (unlearn.classifier): "
                     f"{preset['classifier']}")
  return config
