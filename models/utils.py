"""Model registry, model construction, and the wrappers that turn a network into a score function.

Official names kept: ``register_model``, ``get_model``, ``create_model``, ``get_model_fn``,
``get_score_fn``, ``get_sigmas``, ``get_ddpm_params``.

The network parameterisation (time labels, noise vs. score output) is owned by the SDE object
(``sde.model_labels`` and ``sde.output_to_score``), so no code here branches on the SDE type.
"""
import numpy as np
import torch
from torch import nn

import conditioning
from configs import default_configs

_MODELS = {}


def register_model(cls=None, *, name=None):
  """Class decorator that registers a score network under ``name`` (default: the class name)."""

  def _register(cls):
    local_name = cls.__name__ if name is None else name
    if local_name in _MODELS:
      raise ValueError(f'Already registered model with name: {local_name}')
    _MODELS[local_name] = cls
    return cls

  return _register if cls is None else _register(cls)


def registered_models():
  """Names of every registered architecture (the ``models`` package imports them all)."""
  import models  # noqa: F401  (importing the package registers every architecture)
  return sorted(_MODELS)


def get_model(name):
  """The architecture class registered as ``name``; an unknown name lists the valid ones."""
  valid = registered_models()
  if name not in _MODELS:
    raise ValueError(f"unknown model '{name}'; valid: {', '.join(valid)}")
  return _MODELS[name]


def get_sigmas(config):
  """The NCSN noise levels: geometric from σ_max down to σ_min, ``config.model.num_scales`` of them (float64)."""
  return np.exp(np.linspace(np.log(config.model.sigma_max), np.log(config.model.sigma_min),
                            config.model.num_scales))


def get_ddpm_params(config):
  """DDPM's β schedule (1000 steps) and derived quantities, as numpy float64 arrays."""
  num_diffusion_timesteps = 1000
  beta_start = config.model.beta_min / config.model.num_scales
  beta_end = config.model.beta_max / config.model.num_scales
  betas = np.linspace(beta_start, beta_end, num_diffusion_timesteps, dtype=np.float64)
  alphas = 1. - betas
  alphas_cumprod = np.cumprod(alphas, axis=0)
  return {
    'betas': betas,
    'alphas': alphas,
    'alphas_cumprod': alphas_cumprod,
    'sqrt_alphas_cumprod': np.sqrt(alphas_cumprod),
    'sqrt_1m_alphas_cumprod': np.sqrt(1. - alphas_cumprod),
    'beta_min': beta_start * (num_diffusion_timesteps - 1),
    'beta_max': beta_end * (num_diffusion_timesteps - 1),
    'num_diffusion_timesteps': num_diffusion_timesteps,
  }


def create_model(config, device=None):
  """Builds the network named by ``config.model.name`` on ``device`` (default: CPU).

  Unlike the original code the module is not wrapped in ``DataParallel``; checkpoints are still
  written and read with the ``module.`` key prefix (see ``utils.py``). ``config.model.class_conditional``
  is refused for architectures without a label embedding.
  """
  config = default_configs.with_defaults(config)
  cls = get_model(config.model.name)
  if conditioning.num_classes(config) and not getattr(cls, 'supports_class_labels', False):
    supported = ', '.join(n for n in registered_models() if getattr(_MODELS[n], 'supports_class_labels', False))
    raise ValueError(f"config.model.class_conditional=True: model '{config.model.name}' has no label embedding; "
                     f"use one of {supported}")
  model = cls(config)
  return model.to(device) if device is not None else model


LABEL_EMBEDDING = 'label_embedding'


def label_embedding(config, dim):
  """The class-label embedding of a class-conditional config: ``nn.Embedding(K + 1, dim)`` (row K is the
  null label), or None for an unconditional one (which then has no such state-dict entry at all)."""
  k = conditioning.num_classes(config)
  return nn.Embedding(k + 1, dim) if k else None


def add_label_embedding(model, temb, class_labels):
  """``temb`` [B, dim] plus the embedding of ``class_labels`` [B] (None: the null label) for a
  class-conditional ``model``; an unconditional model returns ``temb`` and refuses class labels."""
  k = int(getattr(model, 'num_classes', 0) or 0)
  if not k:
    if class_labels is not None:
      raise ValueError('class labels were given to a network that is not class-conditional '
                       '(config.model.class_conditional=False)')
    return temb
  if class_labels is None:
    class_labels = torch.full((temb.shape[0],), k, dtype=torch.long, device=temb.device)
  return temb + getattr(model, LABEL_EMBEDDING)(class_labels).to(temb.dtype)


def get_model_fn(model, train=False):
  """``model_fn(x, labels, class_labels=None)``: the raw network output, in train or eval mode.

  ``class_labels`` [B] (int64; ``num_classes`` = the null label) are passed to class-conditional networks
  only when given, so unconditional networks keep their two-argument call.
  """

  def model_fn(x, labels, class_labels=None):
    model.train(train)
    if class_labels is None:
      return model(x, labels)
    return model(x, labels, class_labels)

  return model_fn


def get_score_fn(sde, model, train=False, continuous=False, class_labels=None, guidance=1.):
  """``score_fn(x, t) -> ∇_x log p_t(x)``, shape of ``x``, for times ``t`` [B] in [eps, T].

  VP/sub-VP networks predict the noise ε and ``score = -ε̂/σ_t`` with labels ``t·999`` (continuous)
  or ``t·(N-1)`` (discrete); VE networks output the score, conditioned on σ(t) (continuous) or on the
  discrete noise-level index.

  Class-conditional networks: ``class_labels`` [B] the classes asked for (None: the null label, i.e. the
  unconditional branch) and ``guidance`` w of classifier-free guidance, s(∅) + w (s(y) − s(∅))
  (``conditioning.guided``; w = 1: the plain conditional score).
  """
  model_fn = get_model_fn(model, train=train)
  k = conditioning.model_num_classes(model)
  if class_labels is not None:
    if not k:
      raise ValueError('class labels were given for a network that is not class-conditional '
                       '(config.model.class_conditional=False)')
    class_labels = conditioning.check_labels(class_labels, k)

  def score_fn(x, t):
    labels = sde.model_labels(t, continuous)
    if class_labels is None:
      out = model_fn(x, labels)
    else:
      out = conditioning.guided(model_fn, x, labels, class_labels, guidance, k)
    return sde.output_to_score(out, t, continuous)

  return score_fn


def to_flattened_numpy(x):
  """Flattens a tensor into a float64-compatible numpy vector (for scipy's ODE solvers)."""
  return x.detach().cpu().numpy().reshape((-1,))


def from_flattened_numpy(x, shape):
  """Inverse of ``to_flattened_numpy``."""
  return torch.from_numpy(x.reshape(shape))
