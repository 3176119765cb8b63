"""experiments.pool: runs side by side in processes of one thread, results in order, errors raised here."""
import pytest
import torch

from experiments import pool


def threads(_):
  return torch.get_num_threads()


def test_results_keep_the_order_of_the_calls():
  assert pool.map_runs(pow, [(2, 3), (3, 2), (5, 1)], jobs=2) == [8, 9, 5]
  assert pool.map_runs(pow, [(2, 3), (3, 2)], jobs=1) == [8, 9]


def test_each_process_has_one_thread():
  assert pool.map_runs(threads, [(0,), (1,)], jobs=2) == [1, 1]


def test_an_error_in_a_process_is_raised_here():
  with pytest.raises(ValueError, match='invalid literal'):
    pool.map_runs(int, [('1',), ('x',)], jobs=2)


def test_default_jobs_is_bounded():
  assert 1 <= pool.default_jobs(limit=3) <= 3
  assert pool.default_jobs(limit=1) == 1
