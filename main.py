"""Command-line entry point (as in score_sde / MSGM).

  python main.py --config configs/toy/gmm2d.py --workdir W --task square --mode train [--finetune]
  python main.py --config configs/toy/gmm2d.py --workdir W --task square --mode eval [--eval_folder eval]
  python main.py --config configs/mnist/mnist5k_small.py --workdir C --mode train_classifier
  python main.py --config configs/toy/gmm2d.py --workdir N --mode train_noisy_classifier
  python main.py --config configs/mnist/mnist5k_small.py --workdir W --mode inpaint   # or reconstruct
  python main.py --config configs/toy/gmm2d.py --workdir W --task square --mode relearn   # the relearning attack

``--config.a.b=v`` overrides any config key; an unknown key is an error, and so is a flag that sets a key of
``--config.unlearn.preset`` to another value than the preset's. ``--task`` takes the readable
names (standard, unseen, orthogonal, obtuse, erase) or the official ones (normal, no_u, square, norm,
erase). Bad input ends with one error line and exit status 1.

Several processes (DistributedDataParallel; NCCL on GPUs, gloo on CPUs) for ``--mode train`` and ``eval``:

  torchrun --nproc_per_node=K main.py --config ... --workdir W --mode train
  torchrun --nnodes=N --node_rank=i --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT --nproc_per_node=K main.py ...

Rank 0 writes the files and prints the error line of a refused run.
"""
import sys

from absl import app, flags, logging
from ml_collections.config_flags import config_flags

FLAGS = flags.FLAGS

config_flags.DEFINE_config_file('config', None, 'Training configuration (a configs/*.py file).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Work directory (checkpoints, samples, logs).')
flags.DEFINE_enum('mode', None, ['train', 'eval', 'train_classifier', 'train_noisy_classifier', 'inpaint',
                                 'reconstruct', 'relearn'],
                  'Running mode: train, eval, train_classifier (the Unlearning-Ratio classifier of the data set), '
                  'train_noisy_classifier (D_f against D_g on noisy data, for unlearn.obtuse_form=hole), '
                  'inpaint or reconstruct (downstream tasks on D_g and D_f test images, docs/downstream.md), '
                  'relearn (the relearning attack: fine-tune on k D_f items, Unlearning Ratio per attack step).')
flags.DEFINE_string('task', 'standard', 'The unlearning method (unlearning/): standard|normal, unseen|no_u, '
                    'orthogonal|square, obtuse|norm, erase, finetune, neggrad, salun, sa, erasediff, siss, vdu, sfd.')
flags.DEFINE_boolean('finetune', False, 'Start from config.training.pretrained instead of from scratch.')
flags.DEFINE_string('eval_folder', 'eval', 'Folder (inside the work directory) for evaluation results.')
flags.DEFINE_boolean('progress', True, 'Show progress bars.')
flags.mark_flags_as_required(['workdir', 'config', 'mode'])


def error_exit(message, code=1):
  """Bad input: one line on stderr, a non-zero exit status."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(code)


def parse_flags(argv):
  """absl's parser, with every failure (unknown flag or config key, a config file that cannot be loaded,
  a bad value, a missing required flag) reported in one line instead of a traceback or usage dump."""
  try:
    return FLAGS(argv)
  except Exception as e:   # noqa: BLE001  (flags, ml_collections and the config file raise many kinds)
    error_exit(describe_flag_error(e))


def describe_flag_error(e):
  text = ' '.join(str(e).split())
  if isinstance(e, (AttributeError, KeyError)) and '--config.' in ' '.join(sys.argv):
    key = text.strip('"\'').split("'")[0] if "'" in text else text
    wanted = [a.split('=')[0] for a in sys.argv if a.startswith('--config.')]
    return (f'unknown config key {key!r} in {", ".join(wanted)}: every key must exist in the config file '
            '(see configs/default_configs.py for the keys)')
  if isinstance(e, OSError) or 'Failed loading config file' in text:
    reason = text.split('[Errno')[-1].split(']', 1)[-1].strip() if '[Errno' in text else text
    return f'cannot load the config file: {reason}'
  return text


def run(argv):
  del argv
  try:
    config = FLAGS.config
    getattr(config, 'lock')   # a config file that failed to load raises on first use
  except Exception as e:   # noqa: BLE001
    error_exit(describe_flag_error(e))

  import runtime

  grouped = runtime.launched_world_size() > 1
  if grouped and FLAGS.mode not in ('train', 'eval'):
    error_exit(f'--mode {FLAGS.mode} runs in one process: start it without torchrun (torchrun is for --mode train '
               'and eval)')
  code = None   # the exit status of a run that ended well or with a reported error
  try:
    run_mode(config, grouped)
    code = 0
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else 1
    raise
  finally:
    runtime.close_distributed(synchronise=code == 0)
    if grouped and code is not None:
      runtime.exit_now(code)


def run_mode(config, grouped):
  """Runs ``--mode`` (in a torchrun group when ``grouped``); bad input ends with one error line."""
  import os

  import datasets
  import run_lib
  import runtime
  import unlearning
  import utils
  from unlearning import noisy_classifier
  from evaluation import run as evaluation_run

  expected = (ValueError, FileNotFoundError, run_lib.TrainingError, utils.CheckpointError, utils.WriteError,
              utils.WorkdirBusyError, datasets.DatasetUnavailableError)
  try:
    if grouped:
      runtime.init_distributed(config.device)
      if not runtime.is_main_process():
        logging.set_verbosity(logging.ERROR)   # rank 0 logs for the group
        FLAGS.progress = False
    unlearning.get_method(FLAGS.task)
    conflicts = unlearning.preset_conflicts(config.get('unlearn', {}).get('preset', ''),
                                            config_flags.get_override_values(FLAGS['config']))
    if conflicts:
      raise ValueError(f"{', '.join(conflicts)}: a preset sets its keys itself; drop --config.unlearn.preset "
                       'and give every key of it as flags, or drop the flag')
    if FLAGS.mode == 'train':
      run_lib.train(config, FLAGS.workdir, FLAGS.task, FLAGS.finetune, progress=FLAGS.progress)
    elif FLAGS.mode == 'eval':
      results = evaluation_run.evaluate(config, FLAGS.workdir, FLAGS.task, FLAGS.eval_folder,
                                        progress=FLAGS.progress)
      if runtime.is_main_process():
        print(evaluation_run.markdown(results))
    elif FLAGS.mode == 'relearn':
      from evaluation import relearn
      print(relearn.markdown(relearn.run_relearn(config, FLAGS.workdir, FLAGS.task, FLAGS.eval_folder,
                                                 progress=FLAGS.progress)))
    elif FLAGS.mode in ('inpaint', 'reconstruct'):
      from evaluation import downstream
      results = downstream.evaluate_downstream(
        config, FLAGS.workdir, FLAGS.task, FLAGS.eval_folder, progress=FLAGS.progress,
        tasks=('inpainting',) if FLAGS.mode == 'inpaint' else ('reconstruction',))
      print(downstream.markdown(results))
    elif FLAGS.mode == 'train_noisy_classifier':
      path = os.path.join(FLAGS.workdir, noisy_classifier.FILENAME)
      created = utils.make_run_folder(FLAGS.workdir)
      try:
        with utils.FolderLock(FLAGS.workdir, 'noisy-classifier training'):
          meta = noisy_classifier.train_noisy_classifier(config, path, progress=FLAGS.progress)
      finally:
        utils.remove_if_unused(FLAGS.workdir, created)
      print(f"noisy classifier written to {path}: balanced test accuracy {meta['test_balanced_accuracy']:.4f}, "
            f"cross-entropy {meta['test_cross_entropy']:.4f} nats (t in [{meta['t_min']}, {meta['t_max']}])")
    else:
      from evaluation import classifier
      path = os.path.join(FLAGS.workdir, classifier.CLASSIFIER_FILENAME)
      if os.path.exists(path):
        raise ValueError(f'{path} exists already; remove it or choose another --workdir')
      created = utils.make_run_folder(FLAGS.workdir)
      try:
        with utils.FolderLock(FLAGS.workdir, 'classifier training'):
          meta = classifier.train_classifier(config, path, progress=FLAGS.progress)
      finally:
        utils.remove_if_unused(FLAGS.workdir, created)
      print(f"classifier written to {path}: test accuracy {meta['test_accuracy']:.4f}, sha256 {meta['sha256']}")
  except runtime.GroupAbort:
    sys.exit(1)   # another process of the group failed and reported it
  except expected as e:
    if not runtime.reports_here(e):
      sys.exit(1)   # rank 0 met the same and reports it
    where = '' if runtime.is_main_process() else f'[rank {runtime.rank()}] '
    error_exit(where + (' '.join(str(e).split()) if '\n' in str(e) else str(e)))
  except OSError as e:
    where = '' if runtime.is_main_process() else f'[rank {runtime.rank()}] '
    error_exit(f'{where}{e.filename or FLAGS.workdir}: {e.strerror or e} (check the path, its permissions and free '
               'space)')
  except KeyboardInterrupt:
    print('interrupted; run the same command again to resume from the last checkpoint', file=sys.stderr)
    sys.exit(130)


if __name__ == '__main__':
  app.run(run, flags_parser=parse_flags)
