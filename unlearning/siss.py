"""SISS (``--task siss``; Alberti et al., "Data Unlearning in Diffusion Models", ICLR 2025): the loss of the
retained data X∖A estimated from the data X and the forget set A by importance sampling from a mixture.

With n = |X|, k = |A|, pairs (x ~ X, a ~ A), t, and m_t drawn from the mixture

  q_λ(m_t | x, a) = (1 − λ) N(m_t; μ_t x, σ_t² I) + λ N(m_t; μ_t a, σ_t² I),

  L = (n / (n − k)) w_x ‖ε_θ(m_t) − ε_x‖² − s (k / (n − k)) w_a ‖ε_θ(m_t) − ε_a‖²,
  ε_x = (m_t − μ_t x) / σ_t,  w_x = N(m_t; μ_t x, σ_t²) / q_λ = 1 / ((1 − λ) + λ e^{d_x − d_a}),  d = ‖ε‖² / 2

(ε_a, w_a likewise), written here in score form with the run's λ(t) and R. Its expectation over the data
is the denoising loss on X∖A alone (s = 1): retraining's objective, evaluated where the forget data put
their mass, so the model learns what to remove there. One network evaluation per pair.

Defaults from the paper / its code: λ = 0.5 (``siss.mixture``), s = 1 (``siss.superfactor``; s > 1 pushes
harder), pairs of training.batch_size and batch_size_un items (the shorter is used). The released code
drops the constants and rescales the forget term's gradient to a fixed norm (``siss.scaling_norm`` > 0, its
MNIST value 5); by default the objective above is used as it stands.
"""
import torch

from tensor_utils import append_dims
import losses
import runtime
from unlearning.base import Method, Objective, flat_dot, gradients, register, set_gradients
from models import utils as mutils


def importance_weights(eps_x, eps_a, mixture):
  """``(w_x, w_a)`` [B] of the mixture q_λ for noises ε_x, ε_a [B, ...] of the same m_t (in float64)."""
  d_x = 0.5 * (eps_x.double() ** 2).reshape(eps_x.shape[0], -1).sum(dim=1)
  d_a = 0.5 * (eps_a.double() ** 2).reshape(eps_a.shape[0], -1).sum(dim=1)
  lam = float(mixture)
  w_x = 1. / ((1. - lam) + lam * torch.exp(torch.clamp(d_x - d_a, max=700.)))
  w_a = 1. / ((1. - lam) * torch.exp(torch.clamp(d_a - d_x, max=700.)) + lam)
  return w_x.to(eps_x.dtype), w_a.to(eps_x.dtype)


class SISSObjective(Objective):
  """Keep and forget terms of SISS from one mixture draw per (x, a) pair."""

  def __init__(self, ctx, n, k):
    c = ctx.config.siss
    super().__init__(retain_fn=self._never, forget_fn=self._never, forget_every=1, weights=(1., 1.))
    if not 0. < float(c.mixture) < 1.:
      raise ValueError(f'siss.mixture must lie in (0, 1), got {c.mixture}')
    if not n > k > 0:
      raise ValueError(f'SISS needs forget data and more data than that: |X| = {n}, |A| = {k}')
    self.ctx, self.mixture, self.superfactor = ctx, float(c.mixture), float(c.superfactor)
    self.scaling_norm = float(c.scaling_norm)
    self.c_keep, self.c_forget = n / (n - k), k / (n - k)

  @property
  def manual_backward(self):
    """With ``siss.scaling_norm`` the forget gradient is rescaled by its norm over the whole batch."""
    return self.scaling_norm > 0

  @staticmethod
  def _never(*args):   # the terms come from ``terms``
    raise RuntimeError('SISS computes its terms jointly')

  def _draw(self, x, a, generator):
    """``(labels, μ_t x, μ_t a, σ_t, w(t))`` at one t per pair: continuous or discrete as the run trains."""
    sde, tc = self.ctx.sde, self.ctx.config.training
    b = x.shape[0]
    if tc.continuous:
      t = torch.rand(b, device=x.device, dtype=x.dtype, generator=generator) * (sde.T - tc.eps) + tc.eps
      mean_x, std = sde.marginal_prob(x, t)
      mean_a, _ = sde.marginal_prob(a, t)
      g2 = sde.sde(torch.zeros_like(x), t)[1] ** 2
      weight = g2 / std ** 2 if tc.likelihood_weighting else torch.ones_like(std)
      return sde.model_labels(t, True), mean_x, mean_a, std, weight
    index = torch.randint(0, sde.N, (b,), device=x.device, generator=generator)
    coeff, std = sde.discrete_marginal(index)
    coeff, std = coeff.to(x.dtype), std.to(x.dtype)
    return index, append_dims(coeff, x.ndim) * x, append_dims(coeff, a.ndim) * a, std, torch.ones_like(std)

  def terms(self, model, step, batch_g, batch_f, generator=None, train=True):
    b = min(batch_g.shape[0], batch_f.shape[0])
    x, a = batch_g[:b], batch_f[:b]
    labels, mean_x, mean_a, std, weight = self._draw(x, a, generator)
    z = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
    from_a = torch.rand(b, device=x.device, generator=generator) < self.mixture
    m = torch.where(append_dims(from_a, x.ndim), mean_a, mean_x) + append_dims(std, x.ndim) * z
    eps_x = (m - mean_x) / append_dims(std, x.ndim)
    eps_a = (m - mean_a) / append_dims(std, x.ndim)
    w_x, w_a = importance_weights(eps_x, eps_a, self.mixture)
    ss = losses.model_scaled_score(self.ctx.sde, mutils.get_model_fn(model, train), m, labels, std)
    reduce_mean = self.ctx.reduce_mean
    keep = weight * losses.reduce_dims((ss + eps_x) ** 2, reduce_mean)
    forget = weight * losses.reduce_dims((ss + eps_a) ** 2, reduce_mean)
    return self.c_keep * w_x * keep, -self.superfactor * self.c_forget * w_a * forget

  def backward(self, model, loss, lg, lf):
    if self.scaling_norm <= 0:
      loss.backward()
      return
    g_keep = gradients(model, lg.mean(), retain_graph=True)
    g_forget = gradients(model, lf.mean())     # the gradient of the (negative) forget term
    norm = torch.sqrt(flat_dot(g_forget, g_forget))
    scale = torch.where(norm > 0, self.scaling_norm / torch.clamp(norm, min=1e-30), torch.zeros_like(norm))
    set_gradients(model, [a + scale * b for a, b in zip(g_keep, g_forget)])


def build(ctx):
  n, k = len(ctx.data.train.full), len(ctx.data.train.forget)
  if ctx.train and runtime.world_size() > 1:
    tc = ctx.config.training
    b_x, b_a = min(int(tc.batch_size), n), min(int(tc.batch_size_un), k)
    if b_x != b_a:
      raise ValueError(f'siss pairs row i of the D batch with row i of the D_f batch; under torchrun both batches must '
                       f'have the same size (training.batch_size = batch_size_un), got {b_x} and {b_a}')
  return SISSObjective(ctx, n, k)


METHOD = register(Method(
  'siss', build, retain_data='full',
  summary='SISS: the D_g loss estimated by importance sampling from a mixture around D and D_f pairs',
  equation='L = n/(n−k) w_x‖ε_θ(m_t) − ε_x‖² − s k/(n−k) w_a‖ε_θ(m_t) − ε_a‖², m_t ~ (1−λ)q(·|x) + λq(·|a)',
  keys=('siss.mixture', 'siss.superfactor', 'siss.scaling_norm'),
  paper='Alberti et al., Data Unlearning in Diffusion Models, ICLR 2025 (code claserken/SISS)'))
