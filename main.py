"""Command-line entry point (as in score_sde / MSGM).

  python main.py --config configs/toy/gmm2d.py --workdir W --task square --mode train [--finetune]
  python main.py --config configs/toy/gmm2d.py --workdir W --task square --mode eval [--eval_folder eval]
  python main.py --config configs/mnist/mnist5k_small.py --workdir C --mode train_classifier
  python main.py --config configs/toy/gmm2d.py --workdir N --mode train_noisy_classifier

``--config.a.b=v`` overrides any config key; an unknown key is an error. ``--task`` takes the readable
names (standard, unseen, orthogonal, obtuse, erase) or the official ones (normal, no_u, square, norm,
erase). Bad input ends with one error line and exit status 1.
"""
import sys

from absl import app, flags, logging
from ml_collections.config_flags import config_flags

FLAGS = flags.FLAGS

config_flags.DEFINE_config_file('config', None, 'Training configuration (a configs/*.py file).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Work directory (checkpoints, samples, logs).')
flags.DEFINE_enum('mode', None, ['train', 'eval', 'train_classifier', 'train_noisy_classifier'],
                  'Running mode: train, eval, train_classifier (the Unlearning-Ratio classifier of the data set) '
                  'or train_noisy_classifier (D_f against D_g on noisy data, for unlearn.obtuse_form=hole).')
flags.DEFINE_string('task', 'standard', 'standard|normal, unseen|no_u, orthogonal|square, obtuse|norm, erase.')
flags.DEFINE_boolean('finetune', False, 'Start from config.training.pretrained instead of from scratch.')
flags.DEFINE_string('eval_folder', 'eval', 'Folder (inside the work directory) for evaluation results.')
flags.DEFINE_boolean('progress', True, 'Show progress bars.')
flags.mark_flags_as_required(['workdir', 'config', 'mode'])


def run(argv):
  del argv
  import os

  import datasets
  import losses
  import noisy_classifier
  import run_lib
  import utils

  expected = (ValueError, FileNotFoundError, run_lib.TrainingError,
              utils.CheckpointError, datasets.DatasetUnavailableError)
  try:
    losses.get_task(FLAGS.task)
    if FLAGS.mode == 'train':
      run_lib.train(FLAGS.config, FLAGS.workdir, FLAGS.task, FLAGS.finetune, progress=FLAGS.progress)
    elif FLAGS.mode == 'eval':
      from evaluation import run as evaluation_run
      results = evaluation_run.evaluate(FLAGS.config, FLAGS.workdir, FLAGS.task, FLAGS.eval_folder,
                                        progress=FLAGS.progress)
      print(evaluation_run.markdown(results))
    elif FLAGS.mode == 'train_noisy_classifier':
      path = os.path.join(FLAGS.workdir, noisy_classifier.FILENAME)
      meta = noisy_classifier.train_noisy_classifier(FLAGS.config, path, progress=FLAGS.progress)
      print(f"noisy classifier written to {path}: balanced test accuracy {meta['test_balanced_accuracy']:.4f}, "
            f"cross-entropy {meta['test_cross_entropy']:.4f} nats (t in [{meta['t_min']}, {meta['t_max']}])")
    else:
      from evaluation import classifier
      path = os.path.join(FLAGS.workdir, classifier.CLASSIFIER_FILENAME)
      if os.path.exists(path):
        raise ValueError(f'{path} exists already; remove it or choose another --workdir')
      os.makedirs(FLAGS.workdir, exist_ok=True)
      meta = classifier.train_classifier(FLAGS.config, path, progress=FLAGS.progress)
      print(f"classifier written to {path}: test accuracy {meta['test_accuracy']:.4f}, sha256 {meta['sha256']}")
  except expected as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt:
    print('interrupted; run the same command again to resume from the last checkpoint', file=sys.stderr)
    sys.exit(130)


if __name__ == '__main__':
  app.run(run)
