"""EraseDiff as published (``--task erasediff``; Wu et al., "Erasing Undesirable Influence in Diffusion
Models", arXiv 2401.05779): a bi-level problem — keep the remaining data's loss low, subject to the
parameters minimising the forget data's loss towards a surrogate —

  min_θ F(θ) = L_g(θ)   s.t.  θ ∈ argmin f,  f(θ) = E ‖ε_θ(√ᾱ_t x_f + √(1 − ᾱ_t) u, t) − u‖², u ~ U[0, 1)^D

solved with BOME's first-order dynamic barrier on q(θ) = f(θ) − f(θ_K):

  θ ← θ − ξ (∇F + λ ∇q),   λ = max(η − ⟨∇F, ∇q⟩ / ‖∇q‖², 0)        (φ = η ‖∇q‖²)

θ_K (K descent steps on f) enters q only as a constant, so ∇q = ∇f and the update needs no inner loop;
it is not run. ``erasediff.eta`` = η = 0.1 (the code's ``eta_bome``); ``erasediff.fixed_lambda`` ≥ 0 uses a
fixed λ instead (the released code's default, 0.1). The official MSGM ``erase`` task is the simplified
baseline (Gaussian x_t, uniform target, a fixed weight).
"""
import torch

from unlearning.base import Method, Objective, dsm_term, flat_dot, gradients, register, set_gradients


class EraseDiffObjective(Objective):
  """Retain loss F and surrogate forget loss f, combined by the dynamic barrier (or a fixed λ)."""

  manual_backward = True   # λ needs ∇F and ∇f of the whole batch (averaged over processes) before combining

  def __init__(self, retain_fn, forget_fn, eta, fixed_lambda):
    super().__init__(retain_fn, forget_fn, forget_every=1, weights=(1., 0.))
    self.eta, self.fixed_lambda = float(eta), float(fixed_lambda)
    self.last_lambda = None

  def combine(self, g_retain, g_forget):
    """λ and the update direction ∇F + λ ∇q from the two gradient lists."""
    if self.fixed_lambda >= 0:
      lam = torch.tensor(self.fixed_lambda, device=g_retain[0].device)
    else:
      norm2 = flat_dot(g_forget, g_forget)
      ratio = flat_dot(g_retain, g_forget) / torch.clamp(norm2, min=1e-30)
      lam = torch.where(norm2 > 0, torch.clamp(self.eta - ratio, min=0.), torch.zeros_like(norm2))
    return lam, [a + lam * b for a, b in zip(g_retain, g_forget)]

  def backward(self, model, loss, lg, lf):
    g_retain = gradients(model, lg.mean(), retain_graph=True)
    g_forget = gradients(model, lf.mean())
    self.last_lambda, direction = self.combine(g_retain, g_forget)
    set_gradients(model, direction)


def build(ctx):
  c = ctx.config.erasediff
  if float(c.eta) < 0:
    raise ValueError(f'erasediff.eta must be >= 0, got {c.eta}')
  return EraseDiffObjective(dsm_term(ctx), ctx.loss_fn(noise='uniform'), c.eta, c.fixed_lambda)


METHOD = register(Method(
  'erasediff', build,
  summary='EraseDiff: bi-level update (dynamic barrier) between L_g and the forget loss towards uniform noise',
  equation='θ ← θ − ξ(∇L_g + λ∇f), λ = max(η − ⟨∇L_g, ∇f⟩/‖∇f‖², 0), f = ‖ε_θ(x_t(u)) − u‖², u ~ U[0,1)',
  keys=('erasediff.eta', 'erasediff.fixed_lambda'),
  paper='Wu et al., EraseDiff, arXiv 2401.05779 (code JingWu321/EraseDiff); BOME (Liu et al., NeurIPS 2022)'))
