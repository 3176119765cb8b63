"""Score Forgetting Distillation (``--task sfd``, with ``--finetune`` from a class-conditional checkpoint):
data-free forgetting by distilling the pretrained score network into a one-step generator G_θ(z, y).

Three copies of the conditional network: the frozen teacher s_p (the checkpoint's EMA weights), a fake score
network s_ψ (initialised from the same weights) and the generator (likewise), which maps z ~ N(0, I) to the
teacher-style denoiser's x̂_0 at the fixed time t_init from the input x = σ_init z (``sampling.one_step_generate``).
With D_θ = x̂_0 of a network by Tweedie's formula (``sampling.denoise``), every step

  1. fake step (ψ; the generator's samples x_g = G(z, y) are constants): denoising score matching

       L_ψ = Σ_dims (ε̂_ψ(x_t, t, y) − ε)² + w_f Σ_dims (ε̂_ψ(x_t', t, f) − ε')²,  x_t = m_t x_g + σ_t ε,

     on samples asked for retained classes y and, weighted w_f (``sfd.fake_forget_weight``, 0.01), for the
     forget classes f;
  2. generator step (θ; the teacher and the fake network frozen, gradients through their inputs):
     score identity distillation per sample,

       L_θ = Σ_dims (x̂_p − x̂_ψ) · ((x̂_p − x_g) − α (x̂_p − x̂_ψ)) / ω,   ω = mean_dims |x̂_p − x_g| (no gradient),

     with α = ``sfd.alpha`` (1.2), on retained classes (teacher and fake net given y) plus w_g
     (``sfd.generator_forget_weight``, 0.01) times the forgetting term: samples asked for a forget class f,
     the teacher given the remapped retained class r(f) (``sfd.remap``; default the next retained class) and
     the fake net given f — so the generator's answer to f is pulled onto the teacher's r(f).
     ``sfd.pseudo_labels`` replaces the fixed r(f) per sample, as SFD's code does when it has no
     ``label_to_override``: ``rand`` a uniformly drawn retained class, ``amax`` / ``prob`` the class that the
     evaluation classifier (``eval.classifier``; the exact one on the toy) gives the fake network's x̂_ψ of
     that sample, forget classes excluded (its most probable class, or one drawn from its probabilities).

Times t ~ U[t_min, t_max) (``sfd.t_min``/``t_max``, 0.038 and 0.712 of T: SFD's 38 and 712 of 1000 steps),
t_init = 0.44 (440 of 1000). Both networks: Adam with lr 1e-5, β = (0, 0.999) (``sfd.lr``, ``sfd.beta1``; the
generator's optimiser is the run's, set from these by ``configure``), gradients clipped by value at
``sfd.grad_clip`` (1); the generator's EMA at ``model.ema_rate``. The class labels of each step are drawn
uniformly from the retained classes (the forget batch cycles over the forget classes); no data item is read.
Sources: Chen, Zhang and Zhou, "Score Forgetting Distillation" (ICLR 2025), code tqch/score-forgetting-distillation
(its DDPM configuration: the constants above); score identity distillation: Zhou et al., ICML 2024.

The result is a generator checkpoint (``utils.EXTRA_ENTRIES``' ``generator`` entry) that ``--mode eval`` samples
in one network evaluation; the fake network and its optimiser are saved for resuming (``extra``).
"""
import copy

import torch
from absl import logging

import conditioning
import datasets
import runtime
import sampling
import train_state
from models import utils as mutils
from unlearning.base import Method, Objective, register
from unlearning.needs import NeedError


def parse_remap(spec, forget, retain, num_classes):
  """``{f: r}`` for every forget class f: ``spec`` 'f:r,…' (class indices; '' = the next retained class after f,
  cyclically). A target that is not retained, or a forget class left out, is refused."""
  out = {}
  for tok in (t.strip() for t in str(spec).split(',') if t.strip()):
    try:
      f, r = (int(v) for v in tok.split(':'))
    except ValueError:
      raise ValueError(f"sfd.remap entries are 'forget:retained' class indices, got {tok!r}") from None
    if f not in forget:
      raise ValueError(f'sfd.remap: class {f} is not a forget class (forget: {list(forget)})')
    if r not in retain:
      raise ValueError(f'sfd.remap: the target {r} of class {f} is not a retained class (retained: {list(retain)})')
    out[f] = r
  for f in forget:
    if f not in out:
      out[f] = next(c % num_classes for c in range(f + 1, f + 1 + num_classes) if c % num_classes in retain)
  return out


PSEUDO_LABELS = ('', 'rand', 'amax', 'prob')


def pseudo_labels(kind, probs, retain, generator=None):
  """The teacher's override classes ``[B]`` for ``sfd.pseudo_labels`` = ``kind``.

  ``probs`` ``[B, K]``: the classifier's class probabilities of the fake network's x̂ (for ``amax``/``prob``;
  ignored for ``rand``); ``retain`` int ``[R]``: the retained classes, the only ones ever returned.
  ``rand``: uniform over ``retain``; ``amax``: the most probable retained class; ``prob``: a retained class
  drawn with probability proportional to ``probs`` (uniform where a row gives them no mass)."""
  b = probs.shape[0]
  if kind == 'rand':
    pick = torch.randint(0, len(retain), (b,), generator=generator, device=probs.device)
    return retain.to(probs.device)[pick]
  p = probs[:, retain.to(probs.device)].float().clamp_min(0.)
  if kind == 'amax':
    return retain.to(probs.device)[p.argmax(dim=1)]
  if kind == 'prob':
    empty = p.sum(dim=1, keepdim=True) <= 0
    p = torch.where(empty, torch.ones_like(p), p)
    u = torch.rand((b, 1), generator=generator, device=probs.device)
    cdf = (p / p.sum(dim=1, keepdim=True)).cumsum(dim=1)
    pick = (cdf < u).sum(dim=1).clamp_max(len(retain) - 1)
    return retain.to(probs.device)[pick]
  raise ValueError(f"sfd.pseudo_labels must be one of '', 'rand', 'amax', 'prob', got {kind!r}")


def sid_loss(x_p, x_q, x_g, alpha):
  """Score identity distillation per sample ``[B]``: Σ_dims (x̂_p − x̂_q)((x̂_p − x_g) − α(x̂_p − x̂_q)) / ω with
  ω = mean_dims |x̂_p − x_g| (no gradient, at least 1e-5). ``x_*`` [B, ...]: the teacher's and fake net's
  denoised estimates and the generator's samples."""
  b = x_g.shape[0]
  with torch.no_grad():
    omega = (x_p - x_g).abs().reshape(b, -1).mean(dim=1).clamp(min=1e-5)
  d = x_p - x_q
  return (d * ((x_p - x_g) - alpha * d)).reshape(b, -1).sum(dim=1) / omega


class SFDObjective(Objective):
  """The alternating SFD update (module docstring). ``terms`` runs the fake step first (its own optimiser)
  and returns the generator's retain and forgetting terms ``[B]``; the step back-propagates
  L_g + w_g L_f into the generator (the run's model)."""

  def __init__(self, ctx, teacher, fake, fake_optimizer, remap, c, classifier=None):
    super().__init__(retain_fn=self._unused, weights=(1., float(c.generator_forget_weight)),
                     retain_batches=self._labels)
    self.sde, self.config = ctx.sde, ctx.config
    self.teacher, self.fake, self.fake_optimizer = teacher, fake, fake_optimizer
    self.retain = torch.tensor(ctx.data.retain_indices, dtype=torch.long)
    self.forget = torch.tensor(sorted(remap), dtype=torch.long)
    self.remap = torch.arange(ctx.data.num_classes)
    for f, r in remap.items():
      self.remap[f] = r
    self.alpha, self.t_init = float(c.alpha), float(c.t_init)
    self.t_range = (float(c.t_min), float(c.t_max))
    self.fake_forget_weight, self.grad_clip = float(c.fake_forget_weight), float(c.grad_clip)
    self.batch_size, self.seed, self.device = int(ctx.config.training.batch_size), int(ctx.config.seed), ctx.device
    self.continuous = bool(ctx.config.training.continuous)
    self.teacher_path = ctx.config.training.pretrained
    self.shape = tuple(ctx.data.shape)
    self.pseudo, self.classifier = str(c.pseudo_labels), classifier
    self.inverse_scaler = datasets.get_data_inverse_scaler(ctx.config)

  @staticmethod
  def _unused(model, batch, generator):
    raise AssertionError('SFDObjective.terms computes its terms itself')

  def _labels(self, step):
    """The retained classes [B] asked for at ``step`` (uniform, seeded by the step: a resume draws the same)."""
    g = torch.Generator().manual_seed(datasets.derive_seed(self.seed, 'sfd-labels', int(step)))
    return self.retain[torch.randint(0, len(self.retain), (self.batch_size,), generator=g)].to(self.device)

  def _forget_labels(self):
    return self.forget[torch.arange(self.batch_size) % len(self.forget)].to(self.device)

  def needs_forget_batch(self, step, train=True):
    return False   # the forgetting term draws labels, never D_f items

  def generate(self, model, y, generator=None, train=True):
    """G(z, y) for fresh z ``[B, ...]`` (gradients into the generator's weights)."""
    z = torch.randn((len(y),) + tuple(self.shape), device=self.device, generator=generator)
    return sampling.one_step_generate(self.sde, model, z, self.t_init, y, train=train, continuous=self.continuous)

  def _noised(self, x0, generator):
    b = x0.shape[0]
    lo, hi = self.t_range
    t = torch.rand(b, device=x0.device, generator=generator) * (hi - lo) + lo
    eps = torch.randn(x0.shape, device=x0.device, generator=generator)
    m, std = sampling.marginal_coefficients(self.sde, t)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    return m.reshape(shape) * x0 + std.reshape(shape) * eps, t, eps, std

  def _denoised(self, net, x_t, t, y, train):
    score_fn = mutils.get_score_fn(self.sde, net, train=train, continuous=self.continuous, class_labels=y)
    return sampling.denoise(score_fn, self.sde, x_t, t)

  def fake_loss(self, x0, y, generator=None):
    """Σ_dims (ε̂_ψ − ε)² per sample ``[B]`` on the constants ``x0`` [B, ...] asked for classes ``y``."""
    x_t, t, eps, std = self._noised(x0, generator)
    score = mutils.get_score_fn(self.sde, self.fake, train=True, continuous=self.continuous, class_labels=y)(x_t, t)
    eps_hat = -score * std.reshape((-1,) + (1,) * (x0.ndim - 1))
    return ((eps_hat - eps) ** 2).reshape(x0.shape[0], -1).sum(dim=1)

  def fake_step(self, model, y, y_forget, generator=None):
    """One Adam step of the fake network on stop-gradient generator samples (retain + w_f · forget)."""
    with torch.no_grad():
      x_g, x_f = self.generate(model, y, generator, False), self.generate(model, y_forget, generator, False)
    self.fake.train()
    for p in self.fake.parameters():
      p.requires_grad_(True)
    loss = self.fake_loss(x_g, y, generator).mean()
    if self.fake_forget_weight > 0:
      loss = loss + self.fake_forget_weight * self.fake_loss(x_f, y_forget, generator).mean()
    self.fake_optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_value_(self.fake.parameters(), self.grad_clip)
    self.fake_optimizer.step()
    for p in self.fake.parameters():
      p.requires_grad_(False)
    self.fake.eval()
    return loss.detach()

  def generator_loss(self, model, y_gen, y_teacher, y_fake, generator=None):
    """``sid_loss`` per sample ``[B]`` of fresh generator samples asked for ``y_gen``; ``y_teacher`` None: the
    teacher's classes are the pseudo-labels of ``sfd.pseudo_labels`` (the forgetting term)."""
    x_g = self.generate(model, y_gen, generator)
    x_t, t, _, _ = self._noised(x_g, generator)
    x_q = self._denoised(self.fake, x_t, t, y_fake, False)
    if y_teacher is None:
      y_teacher = self.override_labels(x_q, generator)
    x_p = self._denoised(self.teacher, x_t, t, y_teacher, False)
    return sid_loss(x_p, x_q, x_g, self.alpha)

  def override_labels(self, x_q, generator=None):
    """The teacher's classes ``[B]`` for the fake network's estimates ``x_q`` (``sfd.pseudo_labels``)."""
    if self.pseudo == 'rand':
      probs = x_q.new_zeros((x_q.shape[0], len(self.remap)))
    else:
      with torch.no_grad():
        probs = self.classifier.predict_proba(self.inverse_scaler(x_q.detach()))
    return pseudo_labels(self.pseudo, probs, self.retain, generator)

  def terms(self, model, step, batch_g, batch_f, generator=None, train=True):
    y = self._labels(step) if batch_g is None else batch_g
    y_f = self._forget_labels()
    if train:
      self.last_fake_loss = self.fake_step(model, y, y_f, generator)
    lg = self.generator_loss(model, y, y, y, generator)
    y_teacher = self.remap.to(y_f.device)[y_f] if not self.pseudo else None
    lf = self.generator_loss(model, y_f, y_teacher, y_f, generator) if self.weights[1] > 0 else None
    return lg, lf

  def total(self, model, lg, lf, train=True):
    out = self.weights[0] * lg.mean()
    return out if lf is None else out + self.weights[1] * lf.mean()

  def before_update(self, model):
    torch.nn.utils.clip_grad_value_(model.parameters(), self.grad_clip)

  def checkpoint_entries(self):
    fake = {k: v.detach().cpu() for k, v in self.fake.state_dict().items()}
    return {'generator': {'method': 'sfd', 't_init': self.t_init, 'continuous': self.continuous,
                          'teacher': self.teacher_path},
            'extra': {'sfd_fake_model': fake, 'sfd_fake_optimizer': self.fake_optimizer.state_dict()}}


class _NoEvalLoss(Objective):
  """SFD reads no data, so it has no evaluation loss: using one is refused."""

  def __init__(self):
    super().__init__(retain_fn=self._refuse, retain_batches=lambda step: None)

  @staticmethod
  def _refuse(model, batch, generator):
    raise ValueError('--task sfd reads no data and has no evaluation loss: set eval.enable_loss=False and '
                     'training.eval_freq=0')


def check_settings(c):
  """Refuses SFD settings outside their ranges (one line each)."""
  if not 0. < float(c.t_init) <= 1.:
    raise ValueError(f'sfd.t_init must be in (0, 1] (a fraction of T), got {c.t_init}')
  if not 0. <= float(c.t_min) < float(c.t_max) <= 1.:
    raise ValueError(f'sfd.t_min/t_max must satisfy 0 <= t_min < t_max <= 1, got {c.t_min}, {c.t_max}')
  for key in ('fake_forget_weight', 'generator_forget_weight', 'lr', 'grad_clip'):
    if float(c[key]) < 0:
      raise ValueError(f'sfd.{key} must be >= 0, got {c[key]}')
  if not 0. <= float(c.beta1) < 1.:
    raise ValueError(f'sfd.beta1 must be in [0, 1), got {c.beta1}')
  if str(c.pseudo_labels) not in PSEUDO_LABELS:
    raise ValueError(f"sfd.pseudo_labels must be one of '' (the fixed sfd.remap), 'rand', 'amax', 'prob', "
                     f'got {c.pseudo_labels!r}')


def configure(config):
  """SFD's optimiser for the generator (Adam, lr ``sfd.lr``, β₁ ``sfd.beta1``, no warm-up; clipping by value
  in the objective instead of by norm) and no evaluation loss (no data): set before the state is built."""
  c = config.sfd
  check_settings(c)
  config.optim.lr, config.optim.beta1, config.optim.warmup = float(c.lr), float(c.beta1), 0
  config.optim.grad_clip, config.optim.weight_decay = -1., 0.
  config.training.eval_freq = 0
  return config


def build(ctx):
  config, c = ctx.config, ctx.config.sfd
  check_settings(c)
  if not ctx.train:
    return _NoEvalLoss()
  if conditioning.model_num_classes(ctx.model) == 0:
    raise ValueError('--task sfd distils a class-conditional network: fine-tune from a checkpoint trained with '
                     'config.model.class_conditional=True (its teacher is asked for classes; an unconditional '
                     'network has no class input)')
  if runtime.needs_engine(config):
    raise ValueError('--task sfd runs in one process in fp32 eager mode (two networks, two optimisers): set '
                     "training.precision='fp32', channels_last=False, compile='' and start it without torchrun")
  if ctx.start not in ('finetune', 'resumed'):
    raise ValueError('--task sfd distils a pretrained model: run it with --finetune '
                     '--config.training.pretrained=PATH (a class-conditional checkpoint)')
  path = config.training.pretrained
  if not path:
    raise NeedError('--task sfd needs its teacher: set --config.training.pretrained=PATH')
  data = ctx.data
  remap = parse_remap(c.remap, data.forget_indices, data.retain_indices, data.num_classes)
  classifier = None
  if str(c.pseudo_labels) in ('amax', 'prob'):
    from evaluation import classifier as classifiers   # the evaluation package imports unlearning: load late
    if data.density is None and not config.eval.classifier:
      raise NeedError(f"sfd.pseudo_labels='{c.pseudo_labels}' labels the fake network's estimates with a "
                      'classifier: set --config.eval.classifier=PATH (--mode train_classifier makes one)')
    classifier = classifiers.get_classifier(config, ctx.device)
    if tuple(classifier.label_names) != tuple(data.class_names):
      raise ValueError(f'sfd.pseudo_labels: the classifier labels {list(classifier.label_names)}, the data '
                       f'{list(data.class_names)}')
  teacher = train_state.load_frozen_model(config, path, ctx.device, weights='ema')
  fake = copy.deepcopy(teacher)
  fake_optimizer = torch.optim.Adam(fake.parameters(), lr=float(c.lr), betas=(float(c.beta1), 0.999), eps=1e-8)
  if ctx.start == 'resumed':
    extra = ctx.extra or {}
    if 'sfd_fake_model' not in extra or 'sfd_fake_optimizer' not in extra:
      raise NeedError('cannot resume --task sfd: the checkpoint lacks the fake score network (its "extra" entry); '
                      'start again in a new work directory')
    fake.load_state_dict(extra['sfd_fake_model'])
    for p in fake.parameters():
      p.requires_grad_(True)
    fake_optimizer.load_state_dict(extra['sfd_fake_optimizer'])
  else:
    with torch.no_grad():   # the generator starts from the teacher's EMA weights, as the fake network
      for p, q in zip(ctx.model.parameters(), teacher.parameters(), strict=True):
        p.copy_(q)
  for p in fake.parameters():
    p.requires_grad_(False)
  fake.eval()
  target = list(remap.values()) if not c.pseudo_labels else f'pseudo-labels ({c.pseudo_labels})'
  logging.info('sfd: teacher %s; forget %s remapped to %s; t_init %.3f, t in [%.3f, %.3f), alpha %.2f',
               path, list(remap), target, float(c.t_init), float(c.t_min), float(c.t_max), float(c.alpha))
  return SFDObjective(ctx, teacher, fake, fake_optimizer, remap, c, classifier)


METHOD = register(Method(
  'sfd', build, retain_data='none', forget_data=False, class_conditional=True, unconditional=False,
  configure=configure,
  summary='Score Forgetting Distillation: a one-step generator distilled from the class-conditional model, '
          'its answer to a forget class pulled onto the teacher\'s remapped retained class; no data read',
  equation='L_θ = Σ(x̂_p − x̂_ψ)·((x̂_p − x_g) − α(x̂_p − x̂_ψ))/ω on retained y, + 0.01 × the same with the '
           'teacher given r(f) and the fake net f; fake net ψ: DSM on stop-gradient x_g = G_θ(z, y)',
  trains_on='generated samples only (no data)',
  needs=('a class-conditional pretrained checkpoint (--finetune, training.pretrained): the frozen teacher and the '
         'starting weights of the generator and the fake score network',),
  keys=('sfd.t_init', 'sfd.t_min', 'sfd.t_max', 'sfd.alpha', 'sfd.fake_forget_weight', 'sfd.generator_forget_weight',
        'sfd.remap', 'sfd.pseudo_labels', 'sfd.lr', 'sfd.beta1', 'sfd.grad_clip'),
  paper='Chen, Zhang and Zhou, Score Forgetting Distillation, ICLR 2025 (code tqch/score-forgetting-distillation); '
        'SiD: Zhou et al., ICML 2024'))
