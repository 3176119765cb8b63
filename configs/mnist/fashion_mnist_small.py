"""Offline Fashion-MNIST (Debian's dataset-fashion-mnist), forget Sandal, CPU-sized."""
from configs.mnist.small import get_small_config


def get_config():
  return get_small_config('FASHIONMNIST', 'Sandal')
