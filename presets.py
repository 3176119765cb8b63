"""Named unlearning settings: ``--config.unlearn.preset=NAME`` sets a group of ``config.unlearn`` keys.

A preset names the task it builds on; using it with another task is refused. Keys the preset sets
override the config file and command line (the resolved values are saved in W/config.json). A preset
that needs a frozen reference model says how to obtain one (``reference``) and is refused while
``config.unlearn.reference`` is unset; one that needs a noisy classifier (``classifier``) likewise while
``config.unlearn.classifier`` is unset.
See docs/unlearning.md for how each preset was chosen and what it measures.
"""
import losses

def _ratio_preset(push, t_min, t_max, config_file, checkpoint, note=''):
  """An Obtuse ``ratio`` preset (every step, α = 0.98) over t ∈ [t_min, t_max], with a frozen model trained on
  D_g only as its reference; ``reference`` tells how to train that model for ``config_file``."""
  how = (f'a model of the same architecture trained on D_g only, e.g. `python main.py --config {config_file} '
         f'--workdir W_unseen --task unseen --mode train`, then '
         f'--config.unlearn.reference=W_unseen/checkpoints/{checkpoint}{note}')
  return {'task': 'obtuse',
          'unlearn': {'obtuse_form': 'ratio', 'push': push, 'alpha': 0.98, 'forget_every': 1,
                      'forget_t_min': t_min, 'forget_t_max': t_max},
          'reference': how}


def _hole_preset(depth, forget_fraction, sharpness, config_file, checkpoint, note=''):
  """An Obtuse ``hole`` preset (every step, α = 0.5, t ≤ 0.1) with an Unseen reference and a noisy classifier
  of D_f against D_g; ``reference`` / ``classifier`` tell how to train them. The threshold ℓ* is resolved
  from the share ``forget_fraction`` of the forget term's inputs that the hole covers."""
  preset = _ratio_preset(0., 0., 0.1, config_file, checkpoint, note)
  preset['unlearn'] = {'obtuse_form': 'hole', 'alpha': 0.5, 'forget_every': 1, 'forget_t_min': 0.,
                       'forget_t_max': 0.1, 'hole_depth': depth, 'hole_forget_fraction': forget_fraction,
                       'hole_sharpness': sharpness}
  preset['classifier'] = (f'a noisy classifier of D_f against D_g on t ≤ 0.1, e.g. `python main.py --config '
                          f'{config_file} --workdir W_nc --mode train_noisy_classifier`, then '
                          f'--config.unlearn.classifier=W_nc/noisy_classifier.pth{note}')
  return preset


TOY_NOTE = ' (python -m experiments.toy_gmm2d trains and passes it itself)'

PRESETS = {
  # The 2-D toy's best measured setting (docs/unlearning.md, measured on 20,000 test points): the reference
  # score minus the gradient of a 45-nat hole with a hard edge (β = 20 per nat), dug on the 3.6% of the
  # forget term's inputs where a noisy classifier gives the largest log ratio of forget to retained data
  # (ℓ* ≈ 3.7 with a classifier calibrated like seed 42's).
  'toy-best': _hole_preset(45., 0.036, 20., 'configs/toy/gmm2d.py', 'checkpoint_1.pth', TOY_NOTE),
  # The best setting without a classifier: Obtuse as a regression onto the reference score pushed along
  # log(p_ref / p_f), at every step but only at small noise levels.
  'toy-ratio': _ratio_preset(16., 0., 0.1, 'configs/toy/gmm2d.py', 'checkpoint_1.pth', TOY_NOTE),
  # The best measured setting on images (MNIST-5k, digit 3; docs/unlearning.md): the same form with a
  # small push, over the middle of the time range, where classes separate.
  'mnist-best': _ratio_preset(1., 0.2, 0.7, 'configs/mnist/mnist5k_small.py', 'checkpoint_3.pth'),
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
  if preset.get('classifier') and not config.unlearn.classifier:
    raise ValueError(f"unlearn.preset='{name}' needs a noisy classifier (unlearn.classifier): "
                     f"{preset['classifier']}")
  return config
