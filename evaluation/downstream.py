"""Downstream tasks of an unlearned model: zero-shot inpainting and reconstruction of D_g and D_f test images.

The paper's Tables 5 and 6: an unlearned model used for image restoration should restore retained content
(D_g) well and refuse to restore forgotten content (D_f). For each task and each part (``retain`` = D_g,
``forget`` = D_f) of the test split, on a seeded subset of ``eval.downstream_num_images`` images:

  * **inpainting** (``--mode inpaint`` or ``eval.inpaint``): the mask of ``eval.inpaint_*``
    (``evaluation/masks.py``) hides part of each image; the PC inpainter (``controllable_generation``,
    the config's predictor, corrector, snr, ``N`` steps) fills it; known pixels are copied from the original.
  * **reconstruction** (``--mode reconstruct`` or ``eval.reconstruct``): the probability-flow ODE encodes
    each image (from ``training.eps``, as the likelihood) to x_T, the latent is perturbed with the
    marginal at ``eval.reconstruct_t`` (official 0.02) and decoded with the ODE sampler (to the sampling
    eps, with the config's ``noise_removal``).

Metrics per part (``evaluation/image_metrics.py``), each with its standard error over images:
  * ``acc``: the evaluation classifier's accuracy on the restored images against the originals' labels
    (binomial SEM and Wilson 95 % interval);
  * ``psnr`` / ``ssim`` over the whole image and, for inpainting, ``psnr_masked`` / ``ssim_masked`` over
    the unknown pixels only (both are reported; the known pixels are exact, so the whole-image values are
    higher); restored images are clamped to [0, 1], not quantised;
  * ``fid`` (D_g only): FID of the restored D_g images against the D_g test set (``evaluation/fid.py``);
  * ``clip``: L2 distance (and cosine similarity) of CLIP image embeddings of restored and original images,
    when ``eval.clip_weights`` names local weights; otherwise ``{'skipped': reason}``.
``clean`` holds the same classifier accuracy and FID for the original images (the tables' Clean column).

Randomness (the image subset, random masks, prior draws, latent perturbations) is seeded per image from
``config.seed`` (``datasets.derive_seed``), so the same images and noise are used for every model; the PC
noise inside the inpainter is seeded per batch. Every setting, the classifier and the FID network are
checked by ``prepare`` before anything is written.
"""
import dataclasses
import json
import os
import time
from typing import Dict, Optional, Sequence

import torch
from absl import logging

import controllable_generation
import datasets
import sampling
import utils
from configs import default_configs
from evaluation import classifier as classifier_lib
from evaluation import fid as fid_lib
from evaluation import image_metrics as metrics
from evaluation import masks as masks_lib

TASKS = ('inpainting', 'reconstruction')
PARTS = ('retain', 'forget')
GRID_IMAGES = 16
#: value shown for the unknown pixels in the "masked" row of the grids.
MASK_FILL = 0.5


class DownstreamError(ValueError):
  """Bad downstream settings or data (one line, raised before anything is written)."""


def requested_tasks(config, tasks: Optional[Sequence[str]] = None) -> tuple:
  """``tasks`` (validated) or, when None, the tasks ``config.eval.inpaint`` / ``reconstruct`` ask for; in
  ``TASKS`` order."""
  if tasks is None:
    config = default_configs.with_defaults(config)
    tasks = [name for name, on in zip(TASKS, (config.eval.inpaint, config.eval.reconstruct)) if on]
  unknown = set(tasks) - set(TASKS)
  if unknown:
    raise DownstreamError(f"unknown downstream task(s) {sorted(unknown)}; valid: {', '.join(TASKS)}")
  return tuple(t for t in TASKS if t in set(tasks))


def test_subset(part_data, num_images: int, key: str):
  """``(images [n, C, H, W] in [0, 1], labels, positions [n])``: ``num_images`` items of ``part_data`` drawn
  by a permutation seeded from ``key`` (all when 0 or more than there are), in stored order; ``positions``
  are the items' indices within the part (they seed each image's noise)."""
  n = len(part_data)
  if num_images <= 0 or num_images >= n:
    positions = torch.arange(n)
  else:
    gen = torch.Generator().manual_seed(datasets.derive_seed(key))
    positions = torch.randperm(n, generator=gen)[:num_images].sort().values
  view = datasets.IndexView(part_data, positions)
  it = datasets.get_data_iterator(view, max(len(view), 1), 0, shuffle=False, drop_last=False, infinite=False)
  x, y = next(iter(it))
  return x, y, positions


def _seeds(config, name: str, part: str, positions) -> list:
  return [datasets.derive_seed(config.seed, name, part, int(j)) for j in positions]


def _prior_draws(config, sde, shape, name, part, positions) -> torch.Tensor:
  """One prior (or standard normal) draw per image, each from its own seed: [n, *shape] on the CPU."""
  return torch.stack([sde.prior_sampling(tuple(shape), generator=torch.Generator().manual_seed(s))
                      for s in _seeds(config, name, part, positions)])


def _save_grid(rows, path):
  """A PNG of ``rows`` (each [n, C, H, W] in [0, 1]), one row per tensor of ``GRID_IMAGES`` images spread
  evenly over the n (the subsets are in stored order, often sorted by class), written atomically."""
  import torchvision
  n = rows[0].shape[0]
  pick = torch.linspace(0, n - 1, min(GRID_IMAGES, n)).round().long()
  k = len(pick)
  grid = torch.cat([r[pick].detach().cpu().float().clamp(0., 1.) for r in rows])
  utils.atomic_write(path, lambda f: torchvision.utils.save_image(grid, f, nrow=k, padding=2, format='png'))


@dataclasses.dataclass
class Downstream:
  """Checked settings and everything loaded for the downstream tasks; ``run`` evaluates one model."""
  config: object
  data: object
  tasks: tuple
  device: torch.device
  classifier: object
  features_fn: object
  clip: Optional[metrics.ClipEmbedder]
  clip_note: dict
  spec: Optional[masks_lib.MaskSpec]
  images: Dict[str, tuple]
  _clean: Optional[dict] = None

  # -- helpers --------------------------------------------------------------------------------------

  def _scaler(self):
    return datasets.get_data_scaler(self.config), datasets.get_data_inverse_scaler(self.config)

  def _metrics(self, restored, originals, labels, part, region=None) -> dict:
    out = {'acc': metrics.summarise_accuracy(metrics.correct(self.classifier, restored, labels,
                                                             self.data.forget_indices)),
           'psnr': metrics.summarise(metrics.psnr(restored, originals)),
           'ssim': metrics.summarise(metrics.ssim(restored, originals))}
    if region is not None:
      out['psnr_masked'] = metrics.summarise(metrics.psnr(restored, originals, region))
      out['ssim_masked'] = metrics.summarise(metrics.ssim(restored, originals, region))
    if self.clip is not None:
      dist, cos = metrics.clip_distance(self.clip, restored, originals)
      out['clip'] = {'distance': metrics.summarise(dist), 'cosine': metrics.summarise(cos)}
    else:
      out['clip'] = dict(self.clip_note)
    out['fid'] = self._fid(restored) if part == 'retain' else None
    return out

  def _fid(self, images):
    if self.features_fn is None:
      return None
    return fid_lib.fid_of_samples(images, self.data, self.features_fn, fid_lib.default_cache_dir(self.config),
                                  'test', 'retain', int(self.config.eval.get('fid_num_reference', 0)), progress=False)

  def clean(self) -> dict:
    """The Clean column: classifier accuracy on the original images of each part, FID of the original D_g
    images against the D_g test set (computed once)."""
    if self._clean is None:
      out = {}
      for part in PARTS:
        x, y, _ = self.images[part]
        out[part] = {'acc': metrics.summarise_accuracy(metrics.correct(self.classifier, x, y,
                                                                      self.data.forget_indices)),
                     'fid': self._fid(x) if part == 'retain' else None}
      self._clean = out
    return self._clean

  def _common(self, step, checkpoint) -> dict:
    return {'checkpoint': checkpoint, 'step': step, 'split': 'test',
            'num_images': {p: int(self.images[p][0].shape[0]) for p in PARTS},
            'classifier': self.classifier.describe(),
            'fid_backend': getattr(self.features_fn, 'backend', None),
            'clip': self.clip.describe() if self.clip is not None else dict(self.clip_note)}

  # -- the tasks ------------------------------------------------------------------------------------

  def inpaint(self, model, sde, out_dir, step, checkpoint=None, progress=False, keep_images=False) -> dict:
    """The ``inpainting`` entry of results.json for ``model``; writes ``inpaint_<part>_<step>.png``.
    ``keep_images`` adds ``'images': {part: (originals, masks, restored)}`` (tensors; not for JSON)."""
    config, s = self.config, self.config.sampling
    scaler, inverse = self._scaler()
    eps = sampling.resolve_eps(config, sde)
    inpainter = controllable_generation.get_pc_inpainter(
      sde, s.predictor, s.corrector, lambda v: v, s.snr, n_steps=s.n_steps_each,
      probability_flow=s.probability_flow, continuous=config.training.continuous, denoise=s.noise_removal, eps=eps,
      progress=progress)
    entry = dict(self._common(step, checkpoint))
    started = time.time()
    nfe, shares, grids, kept = {}, {}, {}, {}
    bs = int(config.eval.batch_size)
    for part in PARTS:
      x01, y, positions = self.images[part]
      mask = masks_lib.make_mask(self.spec, x01.shape[-2], x01.shape[-1],
                                 seeds=_seeds(config, 'inpaint-mask', part, positions))
      prior = _prior_draws(config, sde, x01.shape[1:], 'inpaint-prior', part, positions)
      restored, nfe[part] = [], 0
      for start in range(0, x01.shape[0], bs):
        sl = slice(start, start + bs)
        gen = torch.Generator(device=self.device).manual_seed(datasets.derive_seed(config.seed, 'inpaint-pc', part,
                                                                                   start))
        out, k = inpainter(model, scaler(x01[sl]).to(self.device), mask[sl].to(self.device), generator=gen,
                           x=prior[sl].to(self.device))
        restored.append(inverse(out).cpu().float())
        nfe[part] += k
      known = mask.expand_as(x01)
      restored = torch.where(known, x01, _finite(torch.cat(restored), 'inpainted', part).clamp(0., 1.))   # known pixels exactly the originals
      shares[part] = masks_lib.unknown_share(mask)
      entry[part] = self._metrics(restored, x01, y, part, region=~mask)
      name = f'inpaint_{part}_{step}.png'
      _save_grid([x01, torch.where(known, x01, torch.full_like(x01, MASK_FILL)), restored],
                 os.path.join(out_dir, name))
      grids[part] = name
      kept[part] = (x01, mask, restored)
    entry.update({
      'mask': dict(self.spec.describe(), unknown_share=shares, image_size=list(self.data.shape[-2:])),
      'pixels': 'psnr/ssim: whole image (known pixels included; they equal the originals); '
                'psnr_masked/ssim_masked: the unknown (masked) pixels only',
      'sampler': {'predictor': s.predictor, 'corrector': s.corrector, 'snr': s.snr, 'n_steps': s.n_steps_each,
                  'probability_flow': s.probability_flow, 'denoise': s.noise_removal, 'steps': sde.N, 'eps': eps,
                  'nfe': nfe},
      'clean': self.clean(), 'grids': grids, 'seconds': time.time() - started})
    if keep_images:
      entry['images'] = kept
    return entry

  def reconstruct(self, model, sde, out_dir, step, checkpoint=None, progress=False, keep_images=False) -> dict:
    """The ``reconstruction`` entry of results.json for ``model``; writes ``reconstruct_<part>_<step>.png``.
    ``keep_images`` adds ``'images': {part: (originals, restored)}`` (tensors; not for JSON)."""
    config, s = self.config, self.config.sampling
    scaler, inverse = self._scaler()
    t = float(config.eval.reconstruct_t)
    eps_enc, eps_dec = float(config.training.eps), sampling.resolve_eps(config, sde)
    ode = dict(method=s.ode_method, rtol=s.ode_rtol, atol=s.ode_atol, solver=s.ode_solver,
               max_nfe=s.get('ode_max_nfe', 0), cuda_graph=s.get('cuda_graph', True))
    from models import utils as mutils
    entry = dict(self._common(step, checkpoint))
    started = time.time()
    nfe, grids, kept = {}, {}, {}
    bs = int(config.eval.batch_size)
    score_fn = mutils.get_score_fn(sde, model, train=False, continuous=True)
    for part in PARTS:
      x01, y, positions = self.images[part]
      noise = _prior_draws(config, _StandardNormal, x01.shape[1:], 'reconstruct-noise', part, positions)
      restored, nfe[part] = [], 0
      for start in range(0, x01.shape[0], bs):
        sl = slice(start, start + bs)
        with torch.no_grad():
          z, k_enc = controllable_generation.encode_ode(score_fn, sde, scaler(x01[sl]).to(self.device), eps_enc,
                                                        **ode)
          z = controllable_generation.perturb_latent(sde, z, t, noise[sl].to(device=z.device, dtype=z.dtype))
          out, k_dec = sampling.sample_ode(score_fn, sde, z, eps_dec, denoise=s.noise_removal, progress=progress,
                                           **ode)
        restored.append(inverse(out).cpu().float())
        nfe[part] += k_enc + k_dec
      restored = _finite(torch.cat(restored), 'reconstructed', part).clamp(0., 1.)
      entry[part] = self._metrics(restored, x01, y, part)
      name = f'reconstruct_{part}_{step}.png'
      _save_grid([x01, restored], os.path.join(out_dir, name))
      grids[part] = name
      kept[part] = (x01, restored)
    one = torch.ones(1, dtype=torch.float64)
    mean, std = sde.marginal_prob(one, torch.tensor([t], dtype=torch.float64))
    entry.update({
      't': t, 'perturbation': {'mean_scale': float(mean), 'std': float(std)},
      'pixels': 'psnr/ssim: whole image',
      'ode': dict(ode, eps_encode=eps_enc, eps_decode=eps_dec, denoise=s.noise_removal, nfe=nfe),
      'clean': self.clean(), 'grids': grids, 'seconds': time.time() - started})
    if keep_images:
      entry['images'] = kept
    return entry

  def run(self, model, sde, out_dir, step, checkpoint=None, progress=False) -> dict:
    """``{'inpainting': …, 'reconstruction': …}`` (the tasks asked for) for ``model`` (EMA weights, eval
    mode); writes the grids and ``downstream_<step>.md`` / ``downstream.md`` (the tables) to ``out_dir``."""
    out = {}
    if 'inpainting' in self.tasks:
      logging.info('inpainting %s test images (mask %s)', '/'.join(str(self.images[p][0].shape[0]) for p in PARTS),
                   self.spec.describe())
      out['inpainting'] = self.inpaint(model, sde, out_dir, step, checkpoint, progress)
    if 'reconstruction' in self.tasks:
      logging.info('reconstructing %s test images (t = %g)',
                   '/'.join(str(self.images[p][0].shape[0]) for p in PARTS), float(self.config.eval.reconstruct_t))
      out['reconstruction'] = self.reconstruct(model, sde, out_dir, step, checkpoint, progress)
    text = markdown(out)
    utils.atomic_write_text(os.path.join(out_dir, f'downstream_{step}.md'), text)
    utils.atomic_write_text(os.path.join(out_dir, 'downstream.md'), text)
    return out


def _finite(images, what, part):
  bad = int((~torch.isfinite(images.reshape(images.shape[0], -1)).all(dim=1)).sum())
  if bad:
    raise DownstreamError(f'{bad} of {images.shape[0]} {what} {part} images hold NaN or ±inf: the model is broken '
                          '(a diverged run?); no downstream metric is reported')
  return images


class _StandardNormal:
  """Stands in for an SDE in ``_prior_draws``: N(0, I) draws for the latent perturbation."""

  @staticmethod
  def prior_sampling(shape, generator=None):
    return torch.randn(shape, generator=generator)


def check_settings(config, sde, tasks) -> Optional[masks_lib.MaskSpec]:
  """Refuses bad ``eval`` downstream keys and sampler settings (``DownstreamError``, one line); returns the
  mask spec (None without inpainting)."""
  ev = config.eval
  n = int(ev.downstream_num_images)
  if n < 0:
    raise DownstreamError(f'eval.downstream_num_images = {n}: give a positive number of test images per part '
                          '(0 = all)')
  spec = None
  try:
    if 'inpainting' in tasks:
      spec = masks_lib.spec_from_config(config)
      s = config.sampling
      sampling.check_pc_combination(sde, s.predictor.lower(), s.corrector.lower(), s.probability_flow)
    if 'reconstruction' in tasks:
      t = float(ev.reconstruct_t)
      if not 0. <= t <= float(sde.T):
        raise DownstreamError(f'eval.reconstruct_t = {t:g}: the latent is perturbed with the marginal at a time in '
                              f'[0, T = {float(sde.T):g}]')
      sampling.resolve_ode_method(config.sampling.ode_method, config.sampling.ode_solver)
  except DownstreamError:
    raise
  except ValueError as e:
    raise DownstreamError(str(e)) from None
  return spec


def prepare(config, data, sde, device, tasks, classifier=None, features_fn=None) -> Downstream:
  """Checks every downstream setting and loads what the tasks need: the evaluation classifier
  (``classifier`` or ``config.eval.classifier``, refused when made for another data set), the FID network
  (``features_fn`` or the evaluation's backend, when ``eval.downstream_fid``), CLIP (``eval.clip_weights``)
  and the test images. Raises ``DownstreamError`` (or the loaders' ``ValueError`` / ``FileNotFoundError``
  subclasses) before anything is written."""
  config = default_configs.with_defaults(config)
  tasks = tuple(tasks)
  if not tasks:
    raise DownstreamError('no downstream task asked for (eval.inpaint, eval.reconstruct)')
  if not data.is_image:
    raise DownstreamError(f'inpainting and reconstruction need image data; {data.name} is not')
  spec = check_settings(config, sde, tasks)
  if spec is not None:   # refuses a mask that hides no pixel (or every pixel) at this image size
    masks_lib.make_mask(spec, data.shape[-2], data.shape[-1], seeds=[0])
  images = {}
  for part in PARTS:
    part_data = data.test.part(part)
    if not len(part_data):
      raise DownstreamError(f'the test split has no {part} images (D_{"g" if part == "retain" else "f"}): '
                            'nothing to restore')
    images[part] = test_subset(part_data, int(config.eval.downstream_num_images),
                               f'downstream-{config.seed}-{data.name}-{part}')
  if classifier is None:
    classifier = classifier_lib.get_classifier(config, device, data=data)
  if features_fn is None and config.eval.downstream_fid:
    features_fn = fid_lib.get_inception_features(config, device)
  if not config.eval.downstream_fid:
    features_fn = None
  clip, note = None, {}
  if str(config.eval.clip_weights):
    clip = metrics.ClipEmbedder(str(config.eval.clip_weights), device, str(config.eval.clip_arch))
  else:
    note = {'skipped': 'no CLIP weights on this machine: set eval.clip_weights to a local transformers CLIPModel '
                       'folder or an open_clip checkpoint file'}
  return Downstream(config, data, tasks, torch.device(device), classifier, features_fn, clip, note, spec, images)


# ----------------------------------------------------------------------------------------------------
# Summaries and the --mode inpaint / reconstruct entry point
# ----------------------------------------------------------------------------------------------------

def _fmt(d, digits=2) -> str:
  """``mean ± sem`` (or ``percent ± sem``) of a summary dict; '—' when absent."""
  if not isinstance(d, dict) or d.get('percent', d.get('mean')) is None:
    return '—'
  value, sem = d.get('percent', d.get('mean')), d.get('sem')
  return f'{value:.{digits}f}' + (f' ± {sem:.{digits}f}' if sem is not None else '')


def _fid_text(fid) -> str:
  return f"{fid['value']:.2f}" if isinstance(fid, dict) and fid.get('value') is not None else '—'


def _clip_text(clip) -> str:
  if isinstance(clip, dict) and 'distance' in clip:
    return _fmt(clip['distance'], 3)
  return 'skipped'


def markdown(results: dict) -> str:
  """Markdown tables of the ``inpainting`` / ``reconstruction`` entries of one results dict ('' if none)."""
  lines = []
  for task in TASKS:
    e = results.get(task)
    if not isinstance(e, dict):
      continue
    if task == 'inpainting':
      share = e['mask']['unknown_share']['retain']
      lines += [f"## Inpainting (mask {e['mask']['name']}, {100 * share:.1f} % of the pixels unknown)", '']
    else:
      lines += [f"## Reconstruction (t = {e['t']:g})", '']
    lines += ['| part | ACC % | PSNR dB | SSIM | PSNR dB (masked) | SSIM (masked) | FID | CLIP distance |',
              '|---|---|---|---|---|---|---|---|']
    for part, label in (('retain', 'D_g'), ('forget', 'D_f')):
      m = e[part]
      lines.append(f"| {label} (n={m['acc']['n']}) | {_fmt(m['acc'], 1)} | {_fmt(m['psnr'])} | {_fmt(m['ssim'], 3)} | "
                   f"{_fmt(m.get('psnr_masked'))} | {_fmt(m.get('ssim_masked'), 3)} | {_fid_text(m.get('fid'))} | "
                   f"{_clip_text(m.get('clip'))} |")
    c = e['clean']
    lines += [f"| clean D_g / D_f | {_fmt(c['retain']['acc'], 1)} / {_fmt(c['forget']['acc'], 1)} | | | | | "
              f"{_fid_text(c['retain'].get('fid'))} | |", '']
  return '\n'.join(lines)


def _base_results(task, data, checkpoint, step) -> dict:
  return {'task': task.name, 'dataset': data.name, 'forget': list(data.forget_names), 'checkpoint': checkpoint,
          'step': step, 'unlearning_ratio': None, 'nll_bpd': None, 'fid': None, 'sampler': None, 'classifier': None}


def _read_json(path) -> Optional[dict]:
  if not os.path.isfile(path):
    return None
  try:
    out = utils.read_json(path)
  except ValueError as e:
    raise DownstreamError(f'{e} (the downstream results are added to it)') from None
  return out if isinstance(out, dict) else None


def prepare_for_eval(config, data, sde, device, classifier=None, features_fn=None) -> Optional[Downstream]:
  """``--mode eval``: the prepared tasks of ``eval.inpaint`` / ``eval.reconstruct`` (None when neither is
  set), reusing the evaluation's classifier and FID network when it has loaded them."""
  tasks = requested_tasks(config)
  return prepare(config, data, sde, device, tasks, classifier, features_fn) if tasks else None


def evaluate_downstream(config, workdir, task='standard', eval_folder='eval', tasks=None, progress=True) -> dict:
  """``--mode inpaint`` / ``--mode reconstruct``: runs ``tasks`` (default: those of ``eval.inpaint`` /
  ``eval.reconstruct``) on the checkpoints of ``--mode eval``
  (``eval.begin_ckpt … end_ckpt`` or the latest) and adds their entries to ``W/<eval_folder>/results_<step>.json``
  and ``results.json`` (other entries of those files are kept; a results.json of another step is replaced by
  this step's). Returns the last results dict."""
  import run_lib
  import sde_lib
  import unlearning
  from evaluation import run as run_eval
  config = default_configs.with_defaults(config)
  task = unlearning.get_method(task)
  device = run_lib.resolve_device(config.device)
  run_lib.seed_everything(config.seed)
  data = datasets.get_dataset(config, evaluation=True)
  sde = sde_lib.get_sde(config)
  tasks = requested_tasks(config, tasks)
  prepared = prepare(config, data, sde, device, tasks)   # settings, classifier, FID and CLIP networks, images
  ckpts = run_eval.checkpoints_to_evaluate(config, workdir)
  out_dir = os.path.join(workdir, eval_folder)
  created = utils.make_run_folder(out_dir)
  ok = False
  try:
    with utils.FolderLock(out_dir, 'downstream evaluation'):
      utils.remove_tmp_files([out_dir])
      results = _evaluate_checkpoints(config, task, data, sde, ckpts, prepared, out_dir, device, progress)
      ok = True
      return results
  finally:
    if not ok:
      utils.remove_if_unused(out_dir, created)


def _evaluate_checkpoints(config, task, data, sde, ckpts, prepared, out_dir, device, progress):
  import run_lib
  handler = run_lib.add_log_file(out_dir)
  results = None
  try:
    for path, step in ckpts:
      logging.info('downstream tasks %s of %s (step %d)', ', '.join(prepared.tasks), path, step)
      model, state = run_lib.load_ema_model(config, path, device)
      run_lib.require_score_model(state, path, 'inpainting and reconstruction')
      try:
        entries = prepared.run(model, sde, out_dir, step, checkpoint=path, progress=progress)
      except (AssertionError, sampling.ODEBudgetError, FloatingPointError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DownstreamError(f'the downstream tasks cannot be computed with {path}: {reason}. The model is '
                              'probably broken (a diverged run?)') from None
      for name in (f'results_{step}.json', 'results.json'):
        file = os.path.join(out_dir, name)
        old = _read_json(file)
        if old is None or old.get('step') != step:
          old = _base_results(task, data, path, step)
        results = dict(old, **entries)
        utils.atomic_write_text(file, json.dumps(results, indent=2, default=float))
  except Exception as e:
    run_lib.log_to_file(handler, str(e))
    raise
  finally:
    logging.get_absl_logger().removeHandler(handler)
    handler.close()
  return results
