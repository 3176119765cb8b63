"""CUDA-graph replay of a fixed-shape tensor function (the ODE right-hand sides of sampling/likelihood).

A small network evaluated one batch at a time is bound by kernel launches, not by arithmetic: a DDPM
U-Net at batch 8 spends ~10 ms per forward on the host issuing a few hundred kernels. Capturing one
evaluation (forward and, for the likelihood, the vector–Jacobian product) in a CUDA graph and replaying it
issues all of them at once. Replays compute exactly what the eager function computes on the same inputs.

Requirements on ``fn``: tensor inputs of fixed shape/dtype/device, no host synchronisation (no
``.item()``, no data-dependent shapes), no randomness, and the same work on every call — true for a score
network in eval mode. A function that cannot be captured falls back to eager calls (``maybe_graphed``).
"""
import logging
from typing import Callable, Sequence

import torch


class CaptureError(RuntimeError):
  """``fn`` ran eagerly (``warmup`` times) but could not be captured in a CUDA graph."""

  def __init__(self, message: str, warmup: int):
    super().__init__(message)
    self.warmup = warmup


class GraphedFn:
  """``fn`` captured once for the shapes of ``example_inputs``; calling it copies the inputs into static
  buffers, replays the graph and returns fresh copies of the outputs (a tensor or a tuple of tensors).

  Capture runs ``fn`` ``warmup`` times eagerly on a side stream first (autograd and cuDNN set themselves
  up there): ``warmup`` extra executions of ``fn``'s work (the capture itself executes nothing).
  """

  def __init__(self, fn: Callable, example_inputs: Sequence[torch.Tensor], warmup: int = 1):
    self.static_inputs = [x.detach().clone() for x in example_inputs]
    self.warmup = warmup
    with torch.cuda.device(self.static_inputs[0].device):  # the inputs' GPU, not necessarily the current one
      side = torch.cuda.Stream()
      side.wait_stream(torch.cuda.current_stream())
      with torch.cuda.stream(side):
        for _ in range(warmup):
          fn(*self.static_inputs)
      torch.cuda.current_stream().wait_stream(side)
      self.graph = torch.cuda.CUDAGraph()
      try:
        with torch.cuda.graph(self.graph):
          self.static_outputs = fn(*self.static_inputs)
      except RuntimeError as err:  # e.g. "operation not permitted when stream is capturing"
        torch.cuda.synchronize()
        raise CaptureError(str(err).splitlines()[0] if str(err) else type(err).__name__, warmup) from err

  def __call__(self, *inputs: torch.Tensor):
    for static, x in zip(self.static_inputs, inputs):
      static.copy_(x)
    with torch.cuda.device(self.static_inputs[0].device):
      self.graph.replay()
    if isinstance(self.static_outputs, torch.Tensor):
      return self.static_outputs.clone()
    return tuple(out.clone() for out in self.static_outputs)


def can_graph(*tensors: torch.Tensor) -> bool:
  """True when every tensor is on a CUDA device (graphs exist only there)."""
  return all(t.is_cuda for t in tensors)


def maybe_graphed(fn: Callable, example_inputs: Sequence[torch.Tensor], enabled: bool = True):
  """``(callable, extra)``: a ``GraphedFn`` when ``enabled`` and the inputs are on CUDA, else ``fn``.

  ``extra`` is the number of executions of ``fn``'s work beyond the caller's own calls (the warm-up; 0 when
  graphs are off). A capture that fails (e.g. ``fn`` synchronises with the host) is logged as a warning and
  the eager ``fn`` returned; an error of ``fn`` itself (raised by the eager warm-up) propagates.
  """
  if not (enabled and can_graph(*example_inputs)):
    return fn, 0
  try:
    graphed = GraphedFn(fn, example_inputs)
  except CaptureError as err:
    logging.warning('CUDA graph capture failed (%s); evaluating eagerly', err)
    return fn, err.warmup
  return graphed, graphed.warmup

