"""CUDA-graph replay of the ODE right-hand sides (cuda_graphs.py): the same numbers as eager evaluation,
one warm-up evaluation more, the network's Python code run only to warm up and capture, and an eager
fallback for a model that cannot be captured. On the CPU graphs are off whatever the setting."""
import logging

import pytest
import torch

from test_models_ncsnpp_ddpm import tiny_config

import likelihood
import sampling
import sde_lib
from cuda_graphs import maybe_graphed
from models import utils as mutils

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA is not available')


def tiny_model(style, device):
  config = tiny_config(style, size=16, channels=1)
  torch.manual_seed(0)
  model = mutils.create_model(config, device=device).eval()
  with torch.no_grad():  # the zero-initialised output layers would make the drift linear in x
    for p in model.parameters():
      if p.abs().max() < 1e-6:
        p.add_(0.02 * torch.randn_like(p))
  return config, model, sde_lib.get_sde(config)


class ForwardCounter:
  """Counts the Python executions of ``model.forward`` (replays of a captured graph run none)."""

  def __init__(self, model):
    self.calls = 0
    model.register_forward_hook(self.hook)

  def hook(self, *_):
    self.calls += 1


def image_batch(device, n=4):
  gen = torch.Generator().manual_seed(1)
  return (2 * torch.rand(n, 1, 16, 16, generator=gen) - 1).to(device)


def test_graphs_are_off_on_the_cpu():
  fn = lambda x: x * 2
  same, extra = maybe_graphed(fn, (torch.ones(3),), enabled=True)
  assert same is fn and extra == 0


@cuda
@pytest.mark.parametrize('style', ['ddpmpp_vp', 'ncsnpp_ve', 'ncsnpp_skip', 'ncsnpp_other', 'ddpm'])
def test_likelihood_with_a_graph_equals_eager(style):
  device = torch.device('cuda')
  config, model, sde = tiny_model(style, device)
  data = image_batch(device)
  counter = ForwardCounter(model)
  results = {}
  for graph in (False, True):
    counter.calls = 0
    fn = likelihood.get_log_likelihood_fn(sde, rtol=1e-4, atol=1e-4, exact_divergence=False, cuda_graph=graph)
    logp, z, nfe = fn(model, data, generator=torch.Generator(device).manual_seed(2))
    results[graph] = (logp, z, nfe, counter.calls)
  (logp0, z0, nfe0, calls0), (logp1, z1, nfe1, calls1) = results[False], results[True]
  assert calls0 == nfe0 > 10
  assert calls1 == 2 and nfe1 == nfe0 + 1  # warm-up + capture ran Python; the solver's evaluations replayed
  torch.testing.assert_close(logp1, logp0, rtol=1e-5, atol=1e-3)
  torch.testing.assert_close(z1, z0, rtol=1e-4, atol=1e-4)


@cuda
def test_ode_sampler_with_a_graph_equals_eager():
  device = torch.device('cuda')
  config, model, sde = tiny_model('ddpmpp_vp', device)
  config.sampling.method, config.sampling.ode_rtol, config.sampling.ode_atol = 'ode', 1e-4, 1e-4
  z = sde.prior_sampling((4, 1, 16, 16), generator=torch.Generator().manual_seed(3)).to(device)
  counter = ForwardCounter(model)
  out = {}
  for graph in (False, True):
    config.sampling.cuda_graph = graph
    counter.calls = 0
    x, nfe = sampling.get_sampling_fn(config, sde, (4, 1, 16, 16), lambda v: v)(model, z=z)
    out[graph] = (x, nfe, counter.calls)
  (x0, nfe0, calls0), (x1, nfe1, calls1) = out[False], out[True]
  assert calls0 == nfe0 > 10
  assert nfe1 == nfe0 + 1 and calls1 == 3  # warm-up, capture, and the eager denoising step
  torch.testing.assert_close(x1, x0, rtol=1e-4, atol=1e-4)


class HostSyncModel(torch.nn.Module):
  """A score network that reads a value back to the host inside its forward: not capturable."""

  def __init__(self):
    super().__init__()
    self.scale = torch.nn.Parameter(torch.tensor(0.5))

  def forward(self, x, labels):
    return x * float(self.scale) + 0. * labels.reshape(-1, *([1] * (x.dim() - 1)))


@cuda
def test_a_model_that_cannot_be_captured_falls_back_to_eager(caplog):
  device = torch.device('cuda')
  sde = sde_lib.VPSDE(0.1, 20., 1000)
  model = HostSyncModel().to(device)
  data = torch.randn(8, 3, generator=torch.Generator().manual_seed(0)).to(device)
  fns = {g: likelihood.get_log_likelihood_fn(sde, rtol=1e-4, atol=1e-4, cuda_graph=g) for g in (False, True)}
  with caplog.at_level(logging.WARNING):
    logp1, _, nfe1 = fns[True](model, data)
  assert 'CUDA graph capture failed' in caplog.text
  logp0, _, nfe0 = fns[False](model, data)
  torch.testing.assert_close(logp1, logp0, rtol=0, atol=0)
  assert nfe1 == nfe0 + 1  # the warm-up ran before the capture failed
  # the device is still usable afterwards
  assert float((torch.ones(3, device=device) * 2).sum()) == 6.
