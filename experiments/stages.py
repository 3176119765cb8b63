"""Stages of a long experiment that run alone, are cached by a hash of what they compute, and resume.

A ``Stage`` has a name (unique in its plan), a kind (``train``, ``eval``, …), a ``key`` — everything that
determines its result (a resolved config as JSON-able data, the task, …) — and the names of the stages it
depends on. Its **hash** is the SHA-256 of its kind, key and its dependencies' hashes, so a changed config
key changes the hash of its stage and of every stage downstream, and nothing else. A stage runs in its
own folder ``<root>/<name>-<hash[:10]>`` and is done when ``stage.json`` there says so; a stage that was
interrupted has no such record and runs again in the same folder (a training run resumes from its
checkpoint there). ``run_plan`` runs a plan in order, or several independent stages at once (``jobs``), with a
progress bar and an ETA that learns from the measured durations (``estimate`` seconds per stage, scaled by how
far the finished ones were off).
"""
import dataclasses
import fnmatch
import hashlib
import json
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

import utils

RECORD = 'stage.json'


@dataclasses.dataclass
class Stage:
  """One unit of work. ``run(stage, folder, inputs) -> outputs`` (JSON-able) computes it in ``folder``;
  ``inputs`` maps each dependency's name to its outputs. ``estimate``: expected seconds (for the ETA)."""
  name: str
  kind: str
  key: dict
  run: Callable
  depends: Tuple[str, ...] = ()
  estimate: float = 60.
  hash: str = ''


def _canonical(obj):
  return json.dumps(obj, sort_keys=True, default=str, separators=(',', ':'))


def resolve_hashes(plan: Sequence[Stage]) -> List[Stage]:
  """Fills ``stage.hash`` in plan order (dependencies must come first); returns the plan. Refuses duplicate
  names and dependencies that are not earlier in the plan."""
  done: Dict[str, str] = {}
  for stage in plan:
    if stage.name in done:
      raise ValueError(f'two stages are named {stage.name!r}')
    missing = [d for d in stage.depends if d not in done]
    if missing:
      raise ValueError(f'stage {stage.name!r} depends on {missing}, which do not come before it')
    text = _canonical({'kind': stage.kind, 'key': stage.key, 'depends': [done[d] for d in stage.depends]})
    stage.hash = hashlib.sha256(text.encode()).hexdigest()
    done[stage.name] = stage.hash
  return list(plan)


def folder_of(root, stage: Stage) -> str:
  return os.path.join(root, f'{stage.name.replace("/", "_")}-{stage.hash[:10]}')


def record_of(root, stage: Stage) -> Optional[dict]:
  """The finished record of ``stage`` (None while it has not run to its end)."""
  path = os.path.join(folder_of(root, stage), RECORD)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      record = json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
  return record if record.get('hash') == stage.hash and record.get('status') == 'done' else None


def select(plan: Sequence[Stage], only: Optional[str]) -> List[Stage]:
  """The stages ``only`` names (comma-separated shell patterns over the names), with every stage they need;
  all of them without ``only``."""
  if not only:
    return list(plan)
  patterns = [p.strip() for p in only.split(',') if p.strip()]
  wanted = {s.name for s in plan if any(fnmatch.fnmatchcase(s.name, p) for p in patterns)}
  if not wanted:
    raise ValueError(f'--only {only!r} names no stage of the plan')
  by_name = {s.name: s for s in plan}
  stack = list(wanted)
  while stack:
    for dep in by_name[stack.pop()].depends:
      if dep not in wanted:
        wanted.add(dep)
        stack.append(dep)
  return [s for s in plan if s.name in wanted]


def prune_published(plan: Sequence[Stage], published) -> List[Stage]:
  """``plan`` without the stages whose results were published elsewhere (``published``: a set of
  ``(name, hash)``; a published stage's results are kept, not recomputed) unless a stage that stays needs
  their outputs — a published training that an unpublished evaluation reads runs again, since checkpoints are
  not published. Plan order is kept."""
  needed = set()
  for stage in reversed(list(plan)):
    if stage.name in needed or (stage.name, stage.hash) not in published:
      needed.add(stage.name)
      needed.update(stage.depends)
  return [s for s in plan if s.name in needed]


def describe(root, plan: Sequence[Stage], jobs=1) -> str:
  """The plan as text: one line per stage (done or to run, its estimate), and the estimated total to run (one
  stage at a time, and divided among ``jobs`` when more run at once, ignoring waits on dependencies)."""
  lines, total = [], 0.
  for s in plan:
    done = record_of(root, s) is not None
    if not done:
      total += s.estimate
    lines.append(f'{"done" if done else "run ":4} {s.name:48} {s.kind:10} ~{s.estimate / 60:6.1f} min  {s.hash[:10]}')
  lines.append(f'{sum(record_of(root, s) is None for s in plan)} of {len(plan)} stages to run, estimated '
               f'{total / 3600:.2f} h of stage time on this machine' +
               (f', about {total / 3600 / jobs:.2f} h with {jobs} at once' if jobs > 1 else ''))
  return '\n'.join(lines)


def _run_stage(stage: Stage, folder, inputs):
  """Runs one stage (here or in a worker process); returns its outputs and its wall time in seconds."""
  os.makedirs(folder, exist_ok=True)
  start = time.time()
  result = stage.run(stage, folder, inputs)
  return result, time.time() - start


def run_plan(root, plan: Sequence[Stage], progress=True, log=print, on_done=None, jobs=1) -> List[str]:
  """Runs every stage of ``plan`` that is not done, each in its folder, writing its record at its end and then
  calling ``on_done(stage)``; returns the names of the stages that ran, in the order they finished.

  ``jobs <= 1`` runs them here in plan order. ``jobs > 1`` runs up to ``jobs`` stages at once, each in its own
  spawned process with one CPU thread (``experiments.pool``), a stage starting as soon as every stage it
  depends on is done (earliest in the plan first); ``stage.run`` must then be a module-level function. A stage
  that raises stops the plan: the running ones finish and are recorded, none starts, and the error is raised
  here. The ETA scales the remaining estimates by the ratio of measured to estimated time so far (of the
  stages that started in a fresh folder: a resumed one is left out), divided by the stages running at once."""
  os.makedirs(root, exist_ok=True)
  outputs: Dict[str, dict] = {}
  for stage in plan:
    record = record_of(root, stage)
    if record is not None:
      outputs[stage.name] = record['outputs']
  todo = [s for s in plan if s.name not in outputs]
  # a stage whose folder exists was interrupted before: it resumes, and its time says nothing about the speed
  resumed = {s.name for s in todo if os.path.isdir(folder_of(root, s))}
  ran: List[str] = []
  timing = {'spent': 0., 'estimated': 0.}
  width = max(1, int(jobs))
  bar = tqdm(total=len(plan), initial=len(plan) - len(todo), disable=not progress, desc='plan', dynamic_ncols=True)

  def eta():
    remaining = sum(s.estimate for s in todo if s.name not in outputs)
    scale = timing['spent'] / timing['estimated'] if timing['estimated'] else 1.
    return remaining * scale / min(width, max(1, len(todo) - len(ran)))

  def starting(stage):
    left = eta()
    bar.set_postfix(stage=stage.name, eta=f'{left / 3600:.2f} h')
    log(f'stage {stage.name} ({stage.kind}, {stage.hash[:10]}): running; about {left / 3600:.2f} h left')

  def finished(stage, result, seconds):
    record = {'name': stage.name, 'kind': stage.kind, 'hash': stage.hash, 'key': stage.key,
              'depends': list(stage.depends), 'status': 'done', 'seconds': seconds, 'outputs': result}
    utils.atomic_write_text(os.path.join(folder_of(root, stage), RECORD), json.dumps(record, indent=2, default=float))
    outputs[stage.name] = result
    ran.append(stage.name)
    if on_done is not None:
      on_done(stage)
    if stage.name not in resumed:
      timing['spent'] += seconds
      timing['estimated'] += stage.estimate
    bar.update(1)

  try:
    if width <= 1 or len(todo) <= 1:
      for stage in todo:
        starting(stage)
        result, seconds = _run_stage(stage, folder_of(root, stage), {d: outputs[d] for d in stage.depends})
        finished(stage, result, seconds)
    else:
      _run_parallel(root, todo, outputs, width, starting, finished)
  finally:
    bar.close()
  return ran


def _run_parallel(root, todo, outputs, jobs, starting, finished):
  """``run_plan``'s scheduler for ``jobs > 1``: stages whose dependencies are done, in plan order."""
  import concurrent.futures
  import multiprocessing

  from experiments import pool

  waiting = list(todo)
  running = {}
  error = None
  context = multiprocessing.get_context('spawn')
  with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context,
                                              initializer=pool._one_thread) as executor:
    while waiting or running:
      if error is None:
        for stage in list(waiting):
          if len(running) >= jobs:
            break
          if all(d in outputs for d in stage.depends):
            waiting.remove(stage)
            starting(stage)
            future = executor.submit(_run_stage, stage, folder_of(root, stage),
                                     {d: outputs[d] for d in stage.depends})
            running[future] = stage
      if not running:
        if error is None and waiting:
          raise ValueError(f'stages {[s.name for s in waiting]} wait for stages that are not in the plan')
        break
      done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
      for future in done:
        stage = running.pop(future)
        try:
          result, seconds = future.result()
          finished(stage, result, seconds)   # a failure here (on_done) stops the plan like a stage's own
        except BaseException as e:   # noqa: B902 - re-raised once the running stages end
          error = error or e
      if error is not None:
        waiting.clear()
  if error is not None:
    raise error
