"""Named unlearning settings: ``--config.unlearn.preset=NAME`` sets a group of ``config.unlearn`` keys.

A preset names the task it builds on; using it with another task is refused. Keys the preset sets
override the config file and command line (the resolved values are saved in W/config.json).
See docs/unlearning.md for how each preset was chosen and what it measures.
"""
import losses

PRESETS = {
  # The 2-D toy's best measured setting (docs/unlearning.md): Obtuse as a bounded regression onto a
  # target pushed far from the forget data, applied at every step but only at small noise levels.
  # No reference model is needed.
  'toy-best': {
    'task': 'obtuse',
    'unlearn': {'obtuse_form': 'target', 'push': 64., 'alpha': 0.97, 'forget_every': 1,
                'forget_t_min': 0., 'forget_t_max': 0.05},
  },
}


def apply_preset(config, task):
  """Applies ``config.unlearn.preset`` (if set) to ``config`` in place and returns it.

  Raises ValueError for an unknown preset name or a task the preset does not build on.
  """
  name = config.unlearn.preset
  if not name:
    return config
  if name not in PRESETS:
    raise ValueError(f"unknown unlearn.preset '{name}'; valid: {', '.join(sorted(PRESETS))}")
  preset = PRESETS[name]
  wanted = losses.get_task(preset['task'])
  if losses.get_task(task) is not wanted:
    raise ValueError(f"unlearn.preset='{name}' builds on --task {wanted.name} ({wanted.official_name}), "
                     f"not on '{task}'")
  for key, value in preset['unlearn'].items():
    config.unlearn[key] = value
  return config
