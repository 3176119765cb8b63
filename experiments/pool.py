"""Independent runs of an experiment side by side, one CPU thread each.

Small models (the 2-D toy's MLP) gain nothing from a second intra-op thread: one training step takes as long
with one thread as with two. Running ``jobs`` runs at once, each in its own process with one thread, uses the
cores instead. ``jobs <= 1`` runs everything here, in order, with torch's default threads.
"""
import concurrent.futures
import multiprocessing
import os


def default_jobs(limit=4):
  """Processes for independent runs: the CPU cores this process may use, at most ``limit``."""
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:   # not on Linux
    cores = os.cpu_count() or 1
  return max(1, min(cores, limit))


def _one_thread():
  import torch
  from absl import flags, logging
  torch.set_num_threads(1)
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()   # the parent parsed the command line; absl would warn before each first log
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)


def map_runs(fn, calls, jobs):
  """``[fn(*args) for args in calls]``, in ``jobs`` processes (spawned, one thread each) when ``jobs > 1``.

  ``fn`` must be a module-level function and its arguments and result picklable. The results keep the order
  of ``calls``; the first call that raises raises here once the running calls end (those not started are
  dropped)."""
  calls = [tuple(args) for args in calls]
  if jobs <= 1 or len(calls) <= 1:
    return [fn(*args) for args in calls]
  context = multiprocessing.get_context('spawn')
  with concurrent.futures.ProcessPoolExecutor(max_workers=min(jobs, len(calls)), mp_context=context,
                                              initializer=_one_thread) as pool:
    futures = [pool.submit(fn, *args) for args in calls]
    try:
      return [f.result() for f in futures]
    except BaseException:
      for f in futures:
        f.cancel()
      raise
