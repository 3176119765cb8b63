"""The compute record of a training run (run_lib.TrainStats, W/train_stats.json): steps and wall time per
segment, summed over resumes; a fine-tuned run counts its own steps only."""
import json

import run_lib
from evaluation import report
from toy_configs import tiny_toy_config


def read(path):
  with open(path / run_lib.STATS_FILENAME) as f:
    return json.load(f)


def test_train_stats_follow_the_run_and_its_resumes(tmp_path):
  config = tiny_toy_config(4, width=8, num_train=200)
  config.training.snapshot_freq_for_preemption = 2
  run_lib.train(config, str(tmp_path / 'w'), 'unseen', progress=False)
  first = read(tmp_path / 'w')
  assert (first['task'], first['start'], first['step'], first['steps']) == ('unseen', 'fresh', 4, 4)
  assert len(first['segments']) == 1 and first['segments'][0]['start_step'] == 0
  assert first['wall_seconds'] >= first['loop_seconds'] > 0 and first['steps_per_second'] > 0
  assert first['wall_seconds'] == first['setup_seconds'] + first['loop_seconds']
  config.training.n_iters = config.training.snapshot_freq = 6
  run_lib.train(config, str(tmp_path / 'w'), 'unseen', progress=False)   # resumes at step 4
  second = read(tmp_path / 'w')
  assert (second['start'], second['step'], second['steps']) == ('fresh', 6, 6)
  assert [(s['how'], s['start_step'], s['end_step']) for s in second['segments']] == [('fresh', 0, 4), ('resumed', 4, 6)]
  assert second['wall_seconds'] > first['wall_seconds']
  tuned = tiny_toy_config(3, width=8, num_train=200)
  tuned.training.pretrained = str(tmp_path / 'w' / 'checkpoints-meta' / 'checkpoint.pth')
  run_lib.train(tuned, str(tmp_path / 'ft'), 'finetune', finetune=True, progress=False)
  ft = read(tmp_path / 'ft')
  assert (ft['task'], ft['start'], ft['steps'], ft['pretrained']) == ('finetune', 'finetune', 3,
                                                                      tuned.training.pretrained)


def test_the_report_reads_the_file_training_writes():
  assert report.STATS_FILENAME == run_lib.STATS_FILENAME
