"""Slow measurement: the Unlearning-Ratio classifier with its default settings reaches the accuracy the
evaluation needs (>= 98 % on MNIST-type digits, >= 90 % on Fashion-MNIST). Run with

  python3 -m pytest -m slow tests/test_eval_classifier_accuracy.py -s

It prints accuracy and training time; MSGM_DATA_ROOT (default: a temporary folder) is the data root.
"""
import os
import time

import pytest

import datasets
from configs.default_configs import get_base_config
from evaluation import classifier as C

DEBIAN_FASHION = os.path.join(datasets.DEFAULT_DEBIAN_DATASETS_DIR, 'fashion-mnist')


@pytest.mark.slow
@pytest.mark.parametrize('name,threshold', [('FASHIONMNIST', 0.90), ('MNIST5K', 0.98)])
def test_default_classifier_accuracy(name, threshold, tmp_path):
  if name == 'FASHIONMNIST' and not os.path.isdir(DEBIAN_FASHION):
    pytest.skip('apt-get install -y dataset-fashion-mnist')
  config = get_base_config()
  config.data.dataset = name
  config.data.root = os.environ.get('MSGM_DATA_ROOT', str(tmp_path / 'data'))
  config.data.image_size = 28
  config.data.num_channels = 1
  config.data.download = False
  config.unlearn.forget = '3'
  config.seed = 42
  config.device = 'cpu'
  start = time.time()
  meta = C.train_classifier(config, str(tmp_path / C.CLASSIFIER_FILENAME), progress=False)
  wall = time.time() - start
  print(f"\n{name}: test accuracy {meta['test_accuracy']:.4f} on {meta['num_test']} images; "
        f"{meta['steps']} steps ({meta['training']['epochs']} epochs) in {meta['train_seconds']:.0f} s training, "
        f"{wall:.0f} s in all; per class {({k: round(v, 3) for k, v in meta['per_class_accuracy'].items()})}")
  assert meta['test_accuracy'] >= threshold
  loaded = C.load_classifier(str(tmp_path / C.CLASSIFIER_FILENAME), config)
  assert loaded.sha256 == meta['sha256']
