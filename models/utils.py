"""Model registry, model construction, and the wrappers that turn a network into a score function.

Official names kept: ``register_model``, ``get_model``, ``create_model``, ``get_model_fn``,
``get_score_fn``, ``get_sigmas``, ``get_ddpm_params``.

The network parameterisation (time labels, noise vs. score output) is owned by the SDE object
(``sde.model_labels`` and ``sde.output_to_score``), so no code here branches on the SDE type.
"""
import numpy as np
import torch
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
  written and read with the ``module.`` key prefix (see ``utils.py``).
  """
  config = default_configs.with_defaults(config)
  model = get_model(config.model.name)(config)
  return model.to(device) if device is not None else model


def get_model_fn(model, train=False):
  """``model_fn(x, labels)``: the raw network output, in train or eval mode."""

  def model_fn(x, labels):
    model.train(train)
    return model(x, labels)

  return model_fn


def get_score_fn(sde, model, train=False, continuous=False):
  """``score_fn(x, t) -> ∇_x log p_t(x)``, shape of ``x``, for times ``t`` [B] in [eps, T].

  VP/sub-VP networks predict the noise ε and ``score = -ε̂/σ_t`` with labels ``t·999`` (continuous)
  or ``t·(N-1)`` (discrete); VE networks output the score, conditioned on σ(t) (continuous) or on the
  discrete noise-level index.
  """
  model_fn = get_model_fn(model, train=train)

  def score_fn(x, t):
    out = model_fn(x, sde.model_labels(t, continuous))
    return sde.output_to_score(out, t, continuous)

  return score_fn


def to_flattened_numpy(x):
  """Flattens a tensor into a float64-compatible numpy vector (for scipy's ODE solvers)."""
  return x.detach().cpu().numpy().reshape((-1,))


def from_flattened_numpy(x, shape):
  """Inverse of ``to_flattened_numpy``."""
  return torch.from_numpy(x.reshape(shape))
