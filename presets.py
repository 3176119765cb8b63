"""Named unlearning settings: ``--config.unlearn.preset=NAME`` sets a group of ``config.unlearn`` keys.

A preset names the task it builds on; using it with another task is refused. Keys the preset sets
override the config file and command line (the resolved values are saved in W/config.json). A preset
that needs a frozen reference model says how to obtain one (``reference``) and is refused while
``config.unlearn.reference`` is unset.
See docs/unlearning.md for how each preset was chosen and what it measures.
"""
import losses

PRESETS = {
  # The 2-D toy's best measured setting (docs/unlearning.md): Obtuse as a regression onto the reference
  # score pushed along log(p_ref / p_f), applied at every step but only at small noise levels, with a
  # frozen model trained on D_g only as the reference.
  'toy-best': {
    'task': 'obtuse',
    'unlearn': {'obtuse_form': 'ratio', 'push': 16., 'alpha': 0.98, 'forget_every': 1,
                'forget_t_min': 0., 'forget_t_max': 0.1},
    'reference': ('a model trained on D_g only, e.g. `python main.py --config configs/toy/gmm2d.py '
                  '--workdir W_unseen --task unseen --mode train`, then '
                  '--config.unlearn.reference=W_unseen/checkpoints/checkpoint_1.pth '
                  '(python -m experiments.toy_gmm2d trains and passes it itself)'),
  },
  # The best measured setting on images (MNIST-5k, digit 3; docs/unlearning.md): the same ratio form with
  # a small push, applied over the middle of the time range, where classes separate.
  'mnist-best': {
    'task': 'obtuse',
    'unlearn': {'obtuse_form': 'ratio', 'push': 1., 'alpha': 0.98, 'forget_every': 1,
                'forget_t_min': 0.2, 'forget_t_max': 0.7},
    'reference': ('a model of the same architecture trained on D_g only, e.g. `python main.py --config '
                  'configs/mnist/mnist5k_small.py --workdir W_unseen --task unseen --mode train`, then '
                  '--config.unlearn.reference=W_unseen/checkpoints/checkpoint_3.pth'),
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
  if preset.get('reference') and not config.unlearn.reference:
    raise ValueError(f"unlearn.preset='{name}' needs a reference model (unlearn.reference): "
                     f"{preset['reference']}")
  return config
