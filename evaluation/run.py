"""``--mode eval``: Unlearning Ratio, NLL on D_g and D_f, FID and the evaluation loss of trained checkpoints.

For each checkpoint (``config.eval.begin_ckpt … end_ckpt``, the indices K of W/checkpoints/checkpoint_K.pth
as in the official code, or the latest checkpoint when both are 0), with the EMA weights:
  * ``eval.enable_bpd``: NLL of the D_g and D_f parts of ``eval.bpd_dataset`` (bits/dim; images are
    dequantised the same way for both; ``eval.bpd_num_repeats`` passes; mean and SEM over items);
  * ``eval.enable_sampling``: ``eval.num_samples`` samples with the config's sampler (each image's
    starting noise seeded by its index, so results do not depend on the batch size), sample grids, and
    the Unlearning Ratio (share classified as a forget class, Wilson 95% interval, class histogram)
    with the classifier of ``eval.classifier`` (the exact posterior for GMM2D); for a class-conditional
    model (sample i asks for the class ``config.sampling.labels`` gives i) also ``unlearning_ratio_per_label``:
    per requested class the share classified as that class, and for the forget classes pooled the
    "unlearning accuracy" of SFD = 100 % minus it;
  * ``eval.enable_fid``: FID of the samples against the retained test data;
  * ``eval.enable_loss``: the method's loss on test batches;
  * ``eval.enable_mia``: the loss-based membership test on D_f (``evaluation/membership.py``, ``"membership"``).
Everything the evaluation needs (checkpoints, classifier, FID network) is checked before anything is
written. Results: ``W/<eval_folder>/results.json`` (the last checkpoint), ``results_<step>.json`` (each),
``results.md``, ``samples_<step>.png``, the per-item NLLs ``nll_items_<step>.npz`` (for ``evaluation.compare``)
and TensorBoard scalars in ``W/<eval_folder>/tensorboard``. ``evaluate(..., resume=True)`` (the reproduction
benchmark's stages) also keeps each checkpoint's samples in ``samples_<step>_all.pt`` and the per-item NLLs of D_g
and D_f, each as soon as it is computed, in ``nll_part_<step>_<retain|forget>.npz`` until its results are written,
and marks each finished checkpoint with ``done_<step>.tag``, so that an interrupted evaluation skips
the checkpoints it finished and picks up the NLLs and samples of the one it was on.
"""
import contextlib
import json
import os

import numpy as np
import torch
from absl import logging

import conditioning
import datasets
import likelihood
import run_lib
import runtime
import sampling
import sde_lib
import unlearning
import utils
from configs import default_configs
from evaluation import classifier as classifier_lib
from evaluation import downstream
from evaluation import fid as fid_lib
from evaluation import membership as membership_lib
from evaluation import nll as nll_lib
from evaluation import nll_items
from evaluation.stats import mean_sem
from evaluation import unlearning_ratio as ur_lib


class EvaluationError(ValueError):
  """The evaluation cannot run (missing checkpoint, classifier, data)."""


def checkpoints_to_evaluate(config, workdir):
  """``[(path, step)]``: the official range of kept checkpoints, or the latest checkpoint."""
  begin, end = int(config.eval.begin_ckpt), int(config.eval.end_ckpt)
  if begin == 0 and end == 0:
    found = run_lib.latest_checkpoint(workdir)
    if found is None:
      raise EvaluationError(f'no checkpoint in {workdir}/checkpoints or {workdir}/checkpoints-meta: train first '
                            '(--mode train) or point --workdir at a trained run')
    return [found]
  if end < begin:
    raise EvaluationError(f'config.eval.end_ckpt ({end}) is smaller than config.eval.begin_ckpt ({begin})')
  paths = [os.path.join(workdir, 'checkpoints', f'checkpoint_{k}.pth') for k in range(begin, end + 1)]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise EvaluationError(f'missing checkpoints for eval.begin_ckpt..end_ckpt = {begin}..{end}: '
                          f'{", ".join(missing)}')
  return [(p, int(utils.load_file(p).get('step', -1))) for p in paths]


def generate_samples(config, sde, model, shape, inverse_scaler, device, progress, shard=False, class_names=None,
                     one_step=None):
  """``eval.num_samples`` samples in batches of ``eval.batch_size``; returns (samples [N, ...] on the CPU, nfe).

  A class-conditional model draws sample i of the class ``conditioning.sampling_labels`` gives index i
  (``config.sampling.labels`` cycled, by ``class_names``), so the classes asked for do not depend on the batch
  size either (``requested_labels``). ``one_step``: the ``generator`` entry of a one-step generator checkpoint
  (SFD): sample i is G(z_i, y_i) with z_i standard normal from the same seed, one network evaluation per batch.

  The prior draw of sample i uses a generator seeded from (seed, i), so the starting noise of every
  sample is independent of the batch size; a deterministic sampler (probability-flow PC) then gives the
  same samples for any batch size, the adaptive ODE solver the same up to its tolerance (its step size
  is shared by a batch). ``shard``: every process of a torchrun group calls this, each draws every K-th
  batch (the same batches, with the same seeds) and all get all the samples.
  """
  n, bs = int(config.eval.num_samples), int(config.eval.batch_size)
  conditional = conditioning.model_num_classes(model) > 0

  def one(b):
    start = b * bs
    size = min(bs, n - start)
    draw = (lambda g: torch.randn(tuple(shape), generator=g)) if one_step is not None else \
      (lambda g: sde.prior_sampling(shape, generator=g))
    z = torch.stack([draw(torch.Generator().manual_seed(datasets.derive_seed(config.seed, 'sample', start + i)))
                     for i in range(size)]).to(device)
    if one_step is not None:
      fn = sampling.get_one_step_sampling_fn(config, sde, (size,) + tuple(shape), inverse_scaler, one_step['t_init'])
    else:
      fn = sampling.get_sampling_fn(config, sde, (size,) + tuple(shape), inverse_scaler,
                                    run_lib.sampling_eps(config, sde), progress=progress)
    gen = torch.Generator(device=device).manual_seed(datasets.derive_seed(config.seed, 'sampler', start))
    with torch.no_grad():
      if conditional:
        labels = conditioning.sampling_labels(config, size, start, class_names, device)
        x, k = fn(model, z=z, generator=gen, labels=labels)
      else:
        x, k = fn(model, z=z, generator=gen)
    return x.cpu(), k

  batches = -(-n // bs)
  out = runtime.map_batches(batches, one) if shard else [one(b) for b in range(batches)]
  return torch.cat([x for x, _ in out]), sum(k for _, k in out)


def requested_labels(config, model, n, class_names=None):
  """The classes [n] that ``generate_samples`` asks a class-conditional model for (None: unconditional)."""
  if not conditioning.model_num_classes(model):
    return None
  return conditioning.sampling_labels(config, n, 0, class_names)


def eval_loss(config, sde, method, state, data, device):
  """The method's loss (e.g. α L_g + (1 − α) L_f; EMA weights, no parameter-space terms) averaged over up to
  10 test batches (as many as the shorter of the D_g / D_f test splits allows)."""
  tc = config.training
  objective = unlearning.build_objective(method, config, sde, data, device, state['model'], train=False,
                                         start='eval')
  step_fn = unlearning.get_step_fn(objective, False)
  scaler = datasets.get_data_scaler(config)
  seed = datasets.derive_seed(config.seed, 'eval-loss')
  uses_retain = objective.needs_retain_batch and method.retain_data != 'none'
  uses_forget = method.forget_data and len(data.test.forget) > 0
  it_g = data.iterator('test', method.retain_data, tc.batch_size, seed, drop_last=False, infinite=False) \
    if uses_retain else None
  it_f = data.iterator('test', 'forget', tc.batch_size_un, seed, drop_last=False) \
    if uses_forget else None
  totals = {'loss': 0., 'loss_g': 0., 'loss_f': 0.}
  count = 0
  conditional = conditioning.model_num_classes(state['model']) > 0

  def take(it):
    """The next batch: x, or (x, y) for a class-conditional model (its labels, no dropout)."""
    x, y = next(it)
    return (scaler(x.to(device)), y.to(device)) if conditional else scaler(x.to(device))

  for i in range(10):
    try:
      batch_g = take(it_g) if it_g is not None else None
      batch_f = take(it_f) if it_f is not None else None
    except StopIteration:
      break
    if method.forget_data and batch_f is None:
      break
    gen = torch.Generator(device=device).manual_seed(datasets.derive_seed(seed, i))
    out = step_fn(state, batch_g, batch_f, generator=gen)
    for k in totals:
      totals[k] += out[k].item()
    count += 1
  return {k: v / max(count, 1) for k, v in totals.items()}


def markdown(results):
  """A short Markdown summary of one results dict."""
  lines = [f"# Evaluation of {results['task']} on {results['dataset']} (forget {results['forget']})", '',
           f"checkpoint `{results['checkpoint']}` (step {results['step']})", '', '| metric | value |', '|---|---|']
  ur = results.get('unlearning_ratio')
  if ur:
    lo, hi = ur['ci95']
    lines.append(f"| Unlearning Ratio % (↓) | {ur['percent']:.2f} [{lo:.2f}, {hi:.2f}] of {ur['num_samples']} |")
  per = results.get('unlearning_ratio_per_label')
  if per:
    for part, name in (('forget', 'asked for a forget class, classified as it % (↓; unlearning accuracy = '
                                  '100 − it)'),
                       ('retain', 'asked for a retained class, classified as it % (↑)')):
      if per.get(part):
        p = per[part]
        lines.append(f"| {name} | {p['percent']:.2f} [{p['ci95'][0]:.2f}, {p['ci95'][1]:.2f}] of {p['num_samples']} |")
  nll = results.get('nll_bpd')
  if nll:
    for part, name in (('retain', 'D_g (↓)'), ('forget', 'D_f (↑)')):
      lines.append(f"| NLL {name} bits/dim | {nll[part]['mean']:.4f} ± {nll[part]['sem'] or 0:.4f} (n={nll[part]['n']}) |")
  nats = results.get('nll_nats')
  if nats:
    for part in ('retain', 'forget'):
      lines.append(f"| NLL {part} nats | {nats[part]['mean']:.4f} ± {nats[part]['sem'] or 0:.4f} |")
  mia = results.get('membership')
  if mia:
    se = f" ± {mia['se']:.3f}" if mia.get('se') is not None else ''
    lines.append(f"| membership AUC on D_f (0.5: not recognisable) | {mia['auc']:.3f}{se} "
                 f"({mia['n_member']} train vs {mia['n_nonmember']} test items) |")
  fid = results.get('fid')
  if fid:
    lines.append(f"| FID of D_g (↓) | {fid['value']:.3f} ({fid['backend']}, {fid['num_samples']} samples) |")
  if results.get('loss'):
    lines.append(f"| eval loss | {results['loss']['loss']:.5g} |")
  s = results.get('sampler')
  if s:
    lines.append(f"| sampler | {s['method']} {s['predictor']}/{s['corrector']}, nfe {s['nfe']} |")
  return '\n'.join(lines) + '\n'


def evaluate(config, workdir, task='standard', eval_folder='eval', progress=True, keep_samples=False,
             resume=False):
  """Evaluates the run in ``workdir``; returns the results of the last checkpoint evaluated (a dict).

  ``keep_samples`` adds the samples tensor under ``'samples'`` of the returned dict (not written to JSON).
  ``resume``: the eval folder belongs to this config alone (as a cached stage's folder does), so what an
  interrupted evaluation of it left — the results of the checkpoints it finished (marked by ``done_<step>.tag``),
  a checkpoint's per-item NLLs (of D_g alone when it was stopped during D_f's), its samples (``samples_<step>_all.pt``, written only under ``resume`` and removed
  once the results are) — is reused rather than computed again; a part that was written under another config or
  checkpoint file, does not match what is asked (item or sample counts, shape) or cannot be read is computed
  again.

  Under torchrun (a ``torch.distributed`` group) the processes split the sampling batches, the NLL batches and
  the FID features and gather all of them; the numbers are those of one process (to float rounding). Rank 0
  holds the lock, computes the Unlearning Ratio, the evaluation loss, the membership test and the downstream
  tasks, and writes everything; its results are returned.
  """
  main = run_lib.is_main_process()
  out_dir = os.path.join(workdir, eval_folder)
  created, ok = False, False
  held = contextlib.ExitStack()
  try:
    # Under torchrun: every process checks everything; a refusal on one stops all (after this block).
    with runtime.together():
      config = default_configs.with_defaults(config)
      method = unlearning.get_method(task)
      device = run_lib.resolve_device(config.device)
      run_lib.seed_everything(config.seed)
      ev = config.eval
      data = datasets.get_dataset(config, evaluation=True)
      conditioning.check_data(config, data)
      sde = sde_lib.get_sde(config)
      ckpts = checkpoints_to_evaluate(config, workdir)
      sampling_on = bool(ev.enable_sampling or ev.enable_fid)
      if sampling_on:
        # Refuse bad sampler settings before anything runs.
        sampling.get_sampling_fn(config, sde, (1,) + tuple(data.shape), lambda x: x,
                                 run_lib.sampling_eps(config, sde))
      classifier = classifier_lib.get_classifier(config, device, data=data) if ev.enable_sampling else None
      features_fn = fid_lib.get_inception_features(config, device) if ev.enable_fid else None
      if ev.enable_fid and not data.is_image:
        raise EvaluationError(f'FID needs image data; {data.name} is not')
      if ev.enable_fid:
        data.split(ev.fid_split)   # refuses a split name other than train/test
      if ev.enable_bpd:
        split = data.split(ev.bpd_dataset)
        if not len(split.retain) or not len(split.forget):
          raise EvaluationError(f'the {ev.bpd_dataset} split has an empty D_g or D_f: nothing to measure')
      if ev.enable_mia:
        membership_lib.get_settings(config, sde)
        if not len(data.train.forget) or not len(data.test.forget):
          raise EvaluationError('eval.enable_mia needs D_f items in both the training and the test split')
      # eval.inpaint / eval.reconstruct: checked and loaded here, run per checkpoint (evaluation/downstream.py)
      downstream_tasks = downstream.prepare_for_eval(config, data, sde, device, classifier, features_fn)
      if main:
        created = utils.make_run_folder(out_dir)
        held.enter_context(utils.FolderLock(out_dir, 'evaluation'))
        utils.remove_tmp_files([out_dir])
    results = _evaluate_checkpoints(config, method, data, sde, ckpts, classifier, features_fn, out_dir, device,
                                    progress and main, keep_samples, downstream_tasks, resume=resume and not
                                    runtime.world_size() > 1)
    ok = True
    return results
  finally:
    held.close()
    if not ok and main:
      utils.remove_if_unused(out_dir, created)


def resume_tag(config, checkpoint):
  """What an interrupted evaluation's leftovers must match to be reused: a digest of the whole config and of
  the checkpoint file's identity (path, size, modification time), so a retrained checkpoint or another setting
  computes them again."""
  import hashlib
  st = os.stat(checkpoint)
  text = json.dumps([utils.config_to_json(config), os.path.abspath(checkpoint), st.st_size, st.st_mtime_ns])
  return hashlib.sha256(text.encode()).hexdigest()


def _tag_path(out_dir, step):
  return os.path.join(out_dir, f'resume_{int(step)}.tag')


def _done_path(out_dir, step):
  return os.path.join(out_dir, f'done_{int(step)}.tag')


def _earlier_results(out_dir, step, tag):
  """The results (a dict) written for checkpoint ``step`` by an earlier evaluation with the same ``tag`` (its
  ``done_<step>.tag`` is written after them), or None when there are none, they carry another tag or cannot be
  read."""
  try:
    with open(_done_path(out_dir, step)) as f:
      if f.read().strip() != tag:
        return None
    with open(os.path.join(out_dir, f'results_{int(step)}.json')) as f:
      results = json.load(f)
  except (OSError, ValueError):
    return None
  return results if isinstance(results, dict) and results.get('step') == step else None


def _earlier_nll(path, sizes, tag, tag_path):
  """``dataset_nll``-like ``{part: {'bpd', 'nats', 'items_bpd', 'items_nats'}}`` from the per-item NLLs an
  interrupted evaluation with the same ``tag`` wrote to ``path``, or None when there are none, they carry
  another tag, or their counts are not ``sizes`` (``{part: n}``)."""
  try:
    with open(tag_path) as f:
      if f.read().strip() != tag:
        return None
    items = nll_items.load_items(path)
  except (OSError, ValueError):
    return None
  out = {}
  for part, n in sizes.items():
    bpd, nats = items[f'{part}_bpd'], items[f'{part}_nats']
    if bpd.shape != (n,) or nats.shape != (n,) or not (np.isfinite(bpd).all() and np.isfinite(nats).all()):
      return None
    out[part] = {'bpd': mean_sem(bpd).to_dict(), 'nats': mean_sem(nats).to_dict(), 'items_bpd': torch.from_numpy(bpd),
                 'items_nats': torch.from_numpy(nats)}
  return out


def _part_nll_path(out_dir, step, part):
  return os.path.join(out_dir, f'nll_part_{int(step)}_{part}.npz')


def _keep_part_nll(path, result, tag):
  """Keeps one part's per-item NLLs (``dataset_nll``'s output) with the evaluation's ``tag``, so that an
  evaluation stopped during the next part does not compute this one again."""
  arrays = {'items_bpd': np.asarray(result['items_bpd'], dtype=np.float64),
            'items_nats': np.asarray(result['items_nats'], dtype=np.float64), 'tag': np.array(tag)}
  _keep(path, lambda f: np.savez(f, **arrays))


def _earlier_part_nll(path, n, tag):
  """One part's ``dataset_nll``-like result kept by ``_keep_part_nll`` under the same ``tag``, or None when there is
  none, it cannot be read (no pickles), carries another tag, or is not ``n`` finite items."""
  if not os.path.isfile(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as f:
      if str(f['tag']) != tag:
        return None
      bpd, nats = np.asarray(f['items_bpd'], dtype=np.float64), np.asarray(f['items_nats'], dtype=np.float64)
  except Exception:   # noqa: BLE001 - a damaged leftover is computed again
    return None
  if bpd.shape != (n,) or nats.shape != (n,) or not (np.isfinite(bpd).all() and np.isfinite(nats).all()):
    return None
  return {'bpd': mean_sem(bpd).to_dict(), 'nats': mean_sem(nats).to_dict(), 'items_bpd': torch.from_numpy(bpd),
          'items_nats': torch.from_numpy(nats)}


def _samples_filename(step):
  return f'samples_{int(step)}_all.pt'


def _earlier_samples(path, num_samples, shape, tag):
  """``(samples, nfe)`` an interrupted evaluation with the same ``tag`` saved at ``path`` (read without
  pickles), or None when there are none, they cannot be read, carry another tag, or are not ``num_samples``
  finite items of ``shape``."""
  if not os.path.isfile(path):
    return None
  try:
    saved = torch.load(path, map_location='cpu', weights_only=True)
    samples, nfe = saved['samples'], saved['nfe']
    if saved.get('tag') != tag:
      return None
  except Exception:   # noqa: BLE001 - a damaged cache file is computed again
    return None
  if not torch.is_tensor(samples) or tuple(samples.shape) != (int(num_samples),) + tuple(shape):
    return None
  if not torch.isfinite(samples).all():
    return None
  return samples, float(nfe) if torch.is_tensor(nfe) else nfe


def _keep(path, write):
  """Writes a resume leftover; a failure (a full disk) is a warning, not the end of the evaluation."""
  try:
    utils.atomic_write(path, write)
  except (utils.WriteError, OSError) as e:
    logging.warning('could not keep %s for a resumed evaluation: %s', path, e)


def _evaluate_checkpoints(config, method, data, sde, ckpts, classifier, features_fn, out_dir, device, progress,
                          keep_samples, downstream_tasks=None, resume=False):
  ev = config.eval
  sampling_on = bool(ev.enable_sampling or ev.enable_fid)
  main = run_lib.is_main_process()
  group = runtime.world_size() > 1
  writer = _LazyWriter(os.path.join(out_dir, 'tensorboard')) if main else None
  handler = run_lib.add_log_file(out_dir) if main else None
  scaler = datasets.get_data_scaler(config)
  inverse = datasets.get_data_inverse_scaler(config)
  results = None
  try:
    for path, step in ckpts:
      logging.info('evaluating %s (step %d)', path, step)
      tag = resume_tag(config, path) if resume else None
      done = _earlier_results(out_dir, step, tag) if resume and not keep_samples else None
      if done is not None:   # evaluated before a later checkpoint's evaluation was interrupted
        logging.info('reusing the results of step %d (results_%d.json, evaluated with this config)', step, step)
        results = done
        continue
      model, state = run_lib.load_ema_model(config, path, device)
      one_step = state.get('generator')
      if one_step is not None:
        _check_one_step(config, path, downstream_tasks)
      results = {'task': method.name, 'dataset': data.name, 'forget': list(data.forget_names), 'checkpoint': path,
                 'step': step, 'unlearning_ratio': None, 'nll_bpd': None, 'fid': None, 'sampler': None,
                 'classifier': classifier.describe() if classifier is not None else None}
      if ev.enable_loss and main:
        results['loss'] = eval_loss(config, sde, method, state, data, device)
      if ev.enable_bpd:
        ll_fn = likelihood.get_log_likelihood_fn(sde, rtol=config.sampling.ode_rtol, atol=config.sampling.ode_atol,
                                                 method=config.sampling.ode_method, eps=config.training.eps,
                                                 solver=config.sampling.ode_solver,
                                                 max_nfe=config.sampling.get('ode_max_nfe', 0),
                                                 cuda_graph=config.sampling.get('cuda_graph', True))
        split = data.split(ev.bpd_dataset)
        sizes = {part: len(split.part(part)) if int(ev.bpd_num_samples) <= 0 else
                 min(int(ev.bpd_num_samples), len(split.part(part))) for part in ('retain', 'forget')}
        nll = _earlier_nll(os.path.join(out_dir, nll_items.items_filename(step)), sizes, tag,
                           _tag_path(out_dir, step)) if resume else None
        if nll is not None:
          logging.info('reusing the per-item NLLs of an interrupted evaluation (%s)', nll_items.items_filename(step))
        else:
          nll = {}
          for part in ('retain', 'forget'):
            part_path = _part_nll_path(out_dir, step, part)
            kept_part = _earlier_part_nll(part_path, sizes[part], tag) if resume else None
            if kept_part is not None:
              logging.info('reusing the per-item NLLs of %s of an interrupted evaluation (%s)',
                           'D_g' if part == 'retain' else 'D_f', os.path.basename(part_path))
              nll[part] = kept_part
              continue
            with _failure_names(path, f'the NLL of {"D_g" if part == "retain" else "D_f"}'):
              nll[part] = nll_lib.dataset_nll(ll_fn, model, split.part(part), scaler, inverse,
                                              batch_size=ev.batch_size, seed=datasets.derive_seed(config.seed, 'bpd'),
                                              num_repeats=ev.bpd_num_repeats, dequantize=data.is_image,
                                              max_items=ev.bpd_num_samples, device=device, progress=progress,
                                              desc=f'NLL {part}', shard=group)
            bad = int((~torch.isfinite(nll[part]['items_nats'])).sum())
            if bad:
              raise EvaluationError(f'the NLL of {bad} {part} items is not finite under {path}: the model is '
                                    'broken (a diverged run?); no NLL is reported')
            if resume and main:
              _keep_part_nll(part_path, nll[part], tag)
        results['nll_bpd'] = {part: nll[part]['bpd'] for part in nll}
        if not data.is_image:
          results['nll_nats'] = {part: nll[part]['nats'] for part in nll}
        if main:
          nll_items.save_items(os.path.join(out_dir, nll_items.items_filename(step)), nll)
          if resume:
            _keep(_tag_path(out_dir, step), lambda f: f.write(tag.encode()))
      if ev.enable_mia and main:
        with _failure_names(path, 'the membership test'):
          results['membership'] = membership_lib.membership(config, model, sde, data, device)
      if sampling_on:
        kept = os.path.join(out_dir, _samples_filename(step))
        earlier = _earlier_samples(kept, ev.num_samples, data.shape, tag) if resume else None
        if earlier is not None:
          logging.info('reusing the samples of an interrupted evaluation (%s)', _samples_filename(step))
          samples, nfe = earlier
        else:
          with _failure_names(path, 'sampling'):
            samples, nfe = generate_samples(config, sde, model, data.shape, inverse, device, progress, shard=group,
                                            class_names=data.class_names, one_step=one_step)
          if resume:
            _keep(kept, lambda f: torch.save({'samples': samples.detach().cpu(), 'nfe': nfe, 'tag': tag}, f))
        non_finite = int((~torch.isfinite(samples.reshape(samples.shape[0], -1)).all(dim=1)).sum())
        if non_finite:
          raise EvaluationError(f'{non_finite} of {len(samples)} samples of {path} hold NaN or ±inf '
                                '(unlearning_ratio.non_finite): the model is broken (a diverged run?), so no '
                                'Unlearning Ratio or FID is reported')
        s = config.sampling
        batches = -(-int(ev.num_samples) // int(ev.batch_size))
        if one_step is not None:
          results['sampler'] = {'method': 'one_step', 'predictor': 'none', 'corrector': 'none', 'steps': 1,
                                'nfe': nfe, 'nfe_per_sample': 1, 'generator': dict(one_step)}
        else:
          results['sampler'] = {'method': s.method, 'predictor': s.predictor, 'corrector': s.corrector,
                                'steps': sde.N if s.method == 'pc' else None, 'nfe': nfe,
                                'nfe_per_sample': nfe / batches}
        requested = requested_labels(config, model, len(samples), data.class_names)
        if requested is not None:
          results['sampler'].update(labels=s.labels, guidance=float(s.guidance))
        if main:
          run_lib.save_samples(samples[:64], out_dir, data.is_image, name=f'samples_{step}')
        if classifier is not None and main:
          results['unlearning_ratio'] = ur_lib.unlearning_ratio_of_samples(samples, classifier, data.forget_indices)
          if requested is not None:
            results['unlearning_ratio_per_label'] = ur_lib.per_label_of_samples(samples, requested, classifier,
                                                                                data.forget_indices)
        if features_fn is not None:
          k = int(ev.fid_num_samples) or len(samples)
          results['fid'] = fid_lib.fid_of_samples(samples[:k], data, features_fn, fid_lib.default_cache_dir(config),
                                                  ev.fid_split, 'retain', int(ev.fid_num_reference),
                                                  progress=progress, shard=group)
        if keep_samples:
          results['samples'] = samples
      if downstream_tasks is not None and main:   # one process (evaluation/downstream.py is not split yet)
        with _failure_names(path, 'the downstream tasks'):
          results.update(downstream_tasks.run(model, sde, out_dir, step, checkpoint=path, progress=progress))
      if main:
        _write(results, out_dir, step, writer)
        if resume:
          _keep(_done_path(out_dir, step), lambda f: f.write(tag.encode()))
        for leftover in (_samples_filename(step), os.path.basename(_tag_path(out_dir, step)),
                         *(os.path.basename(_part_nll_path(out_dir, step, part)) for part in ('retain', 'forget'))):
          if os.path.isfile(os.path.join(out_dir, leftover)):
            os.remove(os.path.join(out_dir, leftover))
  except Exception as e:
    run_lib.log_to_file(handler, str(e))
    raise
  finally:
    if writer is not None:
      writer.close()
    if handler is not None:
      logging.get_absl_logger().removeHandler(handler)
      handler.close()
  return results


def _check_one_step(config, path, downstream_tasks):
  """Refuses, for a one-step generator checkpoint, what needs a score model (one line)."""
  ev = config.eval
  wanted = [k for k, on in (('eval.enable_bpd', ev.enable_bpd), ('eval.enable_mia', ev.enable_mia),
                            ('eval.enable_loss', ev.enable_loss),
                            ('eval.inpaint / eval.reconstruct', downstream_tasks is not None)) if on]
  if wanted:
    raise EvaluationError(f'{path} is a one-step generator (SFD), not a score model: it has no likelihood, loss or '
                          f'restoration; set {", ".join(wanted)} off')


class _LazyWriter:
  """A TensorBoard writer whose event file is created with the first scalar (a refused evaluation leaves none)."""

  def __init__(self, folder):
    self.folder, self._writer = folder, None

  def add_scalar(self, *args):
    if self._writer is None:
      from torch.utils.tensorboard import SummaryWriter
      self._writer = SummaryWriter(self.folder)
    self._writer.add_scalar(*args)

  def close(self):
    if self._writer is not None:
      self._writer.close()


@contextlib.contextmanager
def _failure_names(path, what):
  """Turns a numerical failure inside ``what`` (the ODE solver's step-size underflow, its evaluation budget,
  NaN inputs) into one ``EvaluationError`` naming the checkpoint."""
  try:
    yield
  except (AssertionError, sampling.ODEBudgetError, FloatingPointError) as e:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise EvaluationError(f'{what} cannot be computed with {path}: {reason}. The model is probably broken (a '
                          'diverged run?)') from None


def _scalars(results):
  out = {}
  if results.get('unlearning_ratio'):
    out['unlearning_ratio'] = results['unlearning_ratio']['percent']
  if results.get('nll_bpd'):
    out['bpd_retain'] = results['nll_bpd']['retain']['mean']
    out['bpd_forget'] = results['nll_bpd']['forget']['mean']
  if results.get('fid'):
    out['fid'] = results['fid']['value']
  if results.get('membership'):
    out['mia_auc'] = results['membership']['auc']
  if results.get('loss'):
    out['eval_loss'] = results['loss']['loss']
  return out


def _write(results, out_dir, step, writer):
  serial = {k: v for k, v in results.items() if k != 'samples'}
  text = json.dumps(serial, indent=2, default=float)
  utils.atomic_write_text(os.path.join(out_dir, f'results_{step}.json'), text)
  utils.atomic_write_text(os.path.join(out_dir, 'results.json'), text)
  utils.atomic_write_text(os.path.join(out_dir, 'results.md'), markdown(serial))
  for key, value in _scalars(results).items():
    logging.info('step %d: %s = %.5g', step, key, value)
    if writer is not None:
      writer.add_scalar(key, value, step)
