"""The best reachable forgetting on the 2-D toy: the Pareto frontier of (NLL_g, NLL_f) over all densities.

For a normalised density q on R², ``NLL_g(q) = E_{p_g}[-log q]`` and ``NLL_f(q) = E_{p_f}[-log q]``
(nats per sample), with p_g the retain density (the outer components of ``datasets.gmm2d_density()``,
0.5 / 0.5) and p_f the forget density (the centre component N(0, I)). The frontier is

    F(a) = sup { NLL_f(q) : NLL_g(q) <= a },   a >= H(p_g) = 3.5244 nats.

In ``u = log q`` this is a convex problem; its solutions are (see docs/frontier.md)

    q_λ = (λ p_g − p_f) / (λ − 1),   λ >= e⁴ = sup p_f / p_g,

whose points (NLL_g(q_λ), NLL_f(q_λ)) trace the curved arc of F from (H(p_g), NLL_f(p_g)) at λ = ∞ to
its end at λ = e⁴ (3.5369, 6.1250 nats); F'(a) = λ there. Beyond the arc's end F is the straight line of
slope e⁴, a supremum that no density attains. A probability-flow ODE likelihood is the exact density of
the flow's pushforward, so a trained model's (D_g, D_f) lies on or below F up to test-set sampling error.

Both densities factor into N(0, 1) along v = (x₁ − x₂)/√2 times 1-D densities along s = (x₁ + x₂)/√2
(p_g(s) = ½N(s; 2√2, 1) + ½N(s; −2√2, 1), p_f(s) = N(s; 0, 1)); every optimal q does too, so the 2-D
NLLs are 1-D NLLs along s plus the N(0, 1) entropy ½ log(2πe). The 1-D integrals use adaptive
quadrature (float64, ~1e-12). All values are in nats per sample unless a name says ``paper``
(``to_paper_scale``: score_sde's bits/dim of the uncentred toy, ``nats / (2 ln 2) + 8``).
"""
import math
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import integrate, optimize, special

#: distance of the outer means from the centre along s: |(±2, ±2)| = 2√2.
SEPARATION = 2. * math.sqrt(2.)
#: sup_x p_f(x) / p_g(x) = exp(SEPARATION² / 2) = e⁴ (at x₁ + x₂ = 0); the smallest finite multiplier λ.
LAMBDA_MIN = math.exp(SEPARATION ** 2 / 2.)
#: entropy of N(0, 1) (the factor along (1, −1)/√2), nats.
PERP_ENTROPY = 0.5 * math.log(2. * math.pi * math.e)
#: the toy's dimension and the paper-scale offset (score_sde's bits/dim for uncentred data).
DIMS = 2
PAPER_OFFSET = 8.
#: weights of the full toy mixture (left, centre, right), for the p_data reference point.
DATA_WEIGHTS = (0.4, 0.2, 0.4)

_S_MAX = 25.  # the 1-D integrals run over |s| <= 25 (p_g's mass beyond: < 1e-100)
_QUAD = dict(epsabs=1e-14, epsrel=1e-12, limit=400)
_LOG_SQRT_2PI = 0.5 * math.log(2. * math.pi)

Number = Union[float, np.ndarray]


# ----------------------------------------------------------------------------------------------
# Units


def _float_or_array(x: np.ndarray) -> Number:
  return float(x) if x.ndim == 0 else x


def to_paper_scale(nats: Number, dims: int = DIMS, offset: float = PAPER_OFFSET) -> Number:
  """Nats per sample -> the paper's scale: ``nats / (dims ln 2) + offset`` (bits/dim, +8 offset)."""
  return _float_or_array(np.asarray(nats, dtype=np.float64) / (dims * math.log(2.)) + offset)


def from_paper_scale(paper: Number, dims: int = DIMS, offset: float = PAPER_OFFSET) -> Number:
  """The paper's scale -> nats per sample: ``(paper − offset) · dims ln 2``."""
  return _float_or_array((np.asarray(paper, dtype=np.float64) - offset) * (dims * math.log(2.)))


# ----------------------------------------------------------------------------------------------
# 1-D densities along s and the λ family


def log_pg_1d(s: Number) -> Number:
  """``log p_g(s)``, p_g(s) = ½N(s; 2√2, 1) + ½N(s; −2√2, 1) (nats)."""
  s = np.asarray(s, dtype=np.float64)
  return np.logaddexp(-0.5 * (s - SEPARATION) ** 2, -0.5 * (s + SEPARATION) ** 2) - math.log(2.) - _LOG_SQRT_2PI


def log_pf_1d(s: Number) -> Number:
  """``log p_f(s)``, p_f(s) = N(s; 0, 1) (nats)."""
  s = np.asarray(s, dtype=np.float64)
  return -0.5 * s ** 2 - _LOG_SQRT_2PI


def log_pdata_1d(s: Number) -> Number:
  """``log p_data(s)``: the full mixture 0.4 / 0.2 / 0.4 along s (nats)."""
  s = np.asarray(s, dtype=np.float64)
  wl, wc, wr = DATA_WEIGHTS
  terms = np.stack([np.log(wl) - 0.5 * (s + SEPARATION) ** 2, np.log(wc) - 0.5 * s ** 2,
                    np.log(wr) - 0.5 * (s - SEPARATION) ** 2])
  return special.logsumexp(terms, axis=0) - _LOG_SQRT_2PI


def _one_minus_sech(x: Number) -> Number:
  """``1 − 1/cosh(x) = (1 − e^{−|x|})² / (1 + e^{−2|x|})``, accurate near 0 and without overflow."""
  x = np.abs(np.asarray(x, dtype=np.float64))
  return np.expm1(-x) ** 2 / (1. + np.exp(-2. * x))


def _kappa(lam: float) -> float:
  """κ = 1/λ in [0, e⁻⁴] (λ = inf -> 0); raises ``ValueError`` for λ < e⁴."""
  lam = float(lam)
  if not lam >= LAMBDA_MIN * (1. - 1e-12):
    raise ValueError(f'λ = {lam!r} < e⁴ = {LAMBDA_MIN:.6f}: q_λ = (λ p_g − p_f)_+ / Z vanishes on a band '
                     'around x₁ + x₂ = 0 where p_g > 0, so NLL_g(q_λ) = NLL_f(q_λ) = inf '
                     '(the dual function is −inf there); use λ >= e⁴')
  return min(1. / lam, 1. / LAMBDA_MIN)


def _log_tilt(s: Number, kappa: float) -> Number:
  """``log(q_λ / p_g)(s) = log((1 − κ e⁴ sech(2√2 s)) / (1 − κ))``, κ = 1/λ <= e⁻⁴ (−inf at s = 0 if κ = e⁻⁴).

  Written as ``log((1 − κe⁴) + κe⁴ (1 − sech))``: two non-negative terms, so no cancellation.
  """
  ke = kappa * LAMBDA_MIN
  with np.errstate(divide='ignore'):
    return np.log((1. - ke) + ke * _one_minus_sech(SEPARATION * np.asarray(s, dtype=np.float64))) - math.log1p(-kappa)


def log_q_lambda_1d(s: Number, lam: float) -> Number:
  """``log q_λ(s)`` along s, q_λ = (λ p_g − p_f) / (λ − 1), λ >= e⁴ (``inf``: q = p_g) (nats)."""
  return log_pg_1d(s) + _log_tilt(s, _kappa(lam))


def log_q_lambda(x, lam: float) -> np.ndarray:
  """``log q_λ(x)`` of 2-D points ``x`` ``[N, 2]`` (numpy or torch; float64 result ``[N]``, nats)."""
  if hasattr(x, 'detach'):
    x = x.detach().cpu().double().numpy()
  x = np.asarray(x, dtype=np.float64)
  s = (x[:, 0] + x[:, 1]) / math.sqrt(2.)
  v = (x[:, 0] - x[:, 1]) / math.sqrt(2.)
  return log_q_lambda_1d(s, lam) - 0.5 * v ** 2 - _LOG_SQRT_2PI


def _integrate_even(f) -> float:
  """``∫_{−S}^{S} f(s) ds`` of an even integrand, as 2 ∫_0^S with breakpoints at 0 and the outer means
  (a log-singularity at s = 0 sits on an endpoint, where QUADPACK's extrapolation handles it)."""
  total = 0.
  for lo, hi in ((0., SEPARATION), (SEPARATION, _S_MAX)):
    val, _ = integrate.quad(lambda s: float(f(s)), lo, hi, **_QUAD)
    total += val
  return 2. * total


def entropy_retain() -> float:
  """``H(p_g)`` of the 2-D retain density (nats): the smallest NLL_g of any density (Gibbs)."""
  return _integrate_even(lambda s: -math.exp(log_pg_1d(s)) * log_pg_1d(s)) + PERP_ENTROPY


def cross_entropy(log_p, log_q) -> float:
  """``E_p[−log q]`` in 2-D (nats) of two 1-D log-densities along s (N(0, 1) along v added)."""
  return _integrate_even(lambda s: -math.exp(log_p(s)) * log_q(s)) + PERP_ENTROPY


def q_lambda_nll(lam: float) -> Tuple[float, float]:
  """``(NLL_g(q_λ), NLL_f(q_λ))`` in nats (2-D), λ >= e⁴ (``inf``: p_g itself).

  As ``H(p_g) − E_{p_g}[log(q_λ/p_g)]`` and ``CE(p_f, p_g) − E_{p_f}[log(q_λ/p_g)]``.
  """
  kappa = _kappa(lam)
  base_g = entropy_retain()
  base_f = cross_entropy(log_pf_1d, log_pg_1d)
  if kappa == 0.:
    return base_g, base_f
  tilt_g = _integrate_even(lambda s: math.exp(log_pg_1d(s)) * _log_tilt(s, kappa))
  tilt_f = _integrate_even(lambda s: math.exp(log_pf_1d(s)) * _log_tilt(s, kappa))
  return base_g - tilt_g, base_f - tilt_f


def tilted_nll(log_tilt) -> Tuple[float, float]:
  """``(NLL_g, NLL_f)`` (nats, 2-D) of ``q ∝ p_g · exp(h)``, ``h = log_tilt(s)`` a 1-D function along s.

  For the population optima of unlearning objectives that reshape p_g by a function of the density
  ratio (``ratio_form_optimum``). Normalised here: NLL = CE(·, p_g) − E[h] + log E_{p_g}[e^h].
  """
  log_z = math.log(_integrate_even(lambda s: math.exp(log_pg_1d(s) + log_tilt(s))))
  nll_g = entropy_retain() - _integrate_even(lambda s: math.exp(log_pg_1d(s)) * log_tilt(s)) + log_z
  nll_f = (cross_entropy(log_pf_1d, log_pg_1d) - _integrate_even(lambda s: math.exp(log_pf_1d(s)) * log_tilt(s))
           + log_z)
  return nll_g, nll_f


def ratio_form_optimum(alpha: float, kappa: float) -> Tuple[float, float]:
  """``(NLL_g, NLL_f)`` (nats) of the population minimiser of α L_g + (1 − α) L_f with the Obtuse
  ``ratio`` form and an exact retain-only reference, applied at every t and integrated exactly:
  ``q ∝ p_g (α + (1 − α) r)^(−κ)``, ``r = p_f / p_g`` (``losses.obtuse_ratio_loss``).
  """
  if not 0. < alpha < 1.:
    raise ValueError(f'alpha must lie in (0, 1), got {alpha}')
  return tilted_nll(lambda s: -kappa * float(np.logaddexp(math.log(alpha),
                                                          math.log1p(-alpha) + log_pf_1d(s) - log_pg_1d(s))))


def reference_points() -> Dict[str, Tuple[float, float]]:
  """Exact ``(NLL_g, NLL_f)`` (nats, expectations, no test-set noise) of ``p_data``, ``p_g`` and the arc's
  end ``q_e4`` (λ = e⁴)."""
  return {'p_data': (cross_entropy(log_pg_1d, log_pdata_1d), cross_entropy(log_pf_1d, log_pdata_1d)),
          'p_g': q_lambda_nll(math.inf),
          'q_e4': q_lambda_nll(LAMBDA_MIN)}


# ----------------------------------------------------------------------------------------------
# The frontier


def frontier_curve(lambdas: Optional[Sequence[float]] = None, n: int = 200) -> Dict[str, np.ndarray]:
  """The curved arc of the frontier: ``{'lam', 'nll_g', 'nll_f'}`` (nats, 2-D), float64 arrays.

  ``lambdas``: multipliers >= e⁴ (``inf`` allowed); default ``n`` values λ = e⁴/u, u = linspace(0, 1)
  (λ = inf ... e⁴), i.e. NLL_g increasing from H(p_g) to the arc's end. F is linear beyond the end.
  """
  if lambdas is None:
    u = np.linspace(0., 1., int(n))
    with np.errstate(divide='ignore'):
      lambdas = np.where(u > 0, LAMBDA_MIN / np.maximum(u, 1e-300), np.inf)
  lam = np.asarray(lambdas, dtype=np.float64).reshape(-1)
  pts = np.array([q_lambda_nll(l) for l in lam], dtype=np.float64).reshape(-1, 2)
  return {'lam': lam, 'nll_g': pts[:, 0], 'nll_f': pts[:, 1]}


def frontier_end() -> Dict[str, float]:
  """The arc's ends: ``nll_g_min`` = H(p_g), ``nll_f_min`` = NLL_f(p_g) (λ = inf), and ``nll_g_end``,
  ``nll_f_end`` at λ = e⁴ (nats)."""
  g0, f0 = q_lambda_nll(math.inf)
  g1, f1 = q_lambda_nll(LAMBDA_MIN)
  return {'nll_g_min': g0, 'nll_f_min': f0, 'nll_g_end': g1, 'nll_f_end': f1}


def frontier_lambda(nll_g: float) -> float:
  """The multiplier λ(a) = F'(a) at NLL_g level ``a`` (nats): root of NLL_g(q_λ) = a on the arc,
  e⁴ beyond it, inf at a = H(p_g). Raises ``ValueError`` for a < H(p_g)."""
  a = float(nll_g)
  ends = frontier_end()
  _check_reachable(a, ends['nll_g_min'])
  if a >= ends['nll_g_end']:
    return LAMBDA_MIN
  if a <= ends['nll_g_min']:
    return math.inf
  # u = e⁴/λ in (0, 1): NLL_g(q) increases with u (from H at 0 to the end at 1).
  u = optimize.brentq(lambda u: q_lambda_nll(LAMBDA_MIN / u if u > 0 else math.inf)[0] - a, 0., 1.,
                      xtol=1e-15, rtol=1e-14, maxiter=200)
  return LAMBDA_MIN / u if u > 0 else math.inf


def _check_reachable(a: float, h_min: float) -> None:
  if not np.isfinite(a):
    raise ValueError(f'NLL_g must be finite, got {a!r}')
  if a < h_min:
    raise ValueError(f'NLL_g = {a:.6f} nats ({to_paper_scale(a):.4f} on the paper scale) is below H(p_g) = '
                     f'{h_min:.6f} nats ({to_paper_scale(h_min):.4f}), the smallest NLL_g of any density '
                     '(Gibbs); no density reaches it. A test-set mean can fall below H(p_g) by sampling '
                     'error: compare with its standard error, or pass clip=True to distance_to_frontier')


def max_forget_nll(nll_g: Number) -> Number:
  """F(a): the largest NLL_f (nats) of any density with NLL_g <= a (nats); float, or an array for an array.

  On the arc (H(p_g) <= a <= 3.5369) F(a) = NLL_f(q_λ) with NLL_g(q_λ) = a (attained); beyond it
  F(a) = NLL_f(q_e4) + e⁴ (a − NLL_g(q_e4)), a supremum approached but not attained. Raises
  ``ValueError`` for a < H(p_g) (nothing reaches it).
  """
  if np.ndim(nll_g):
    return np.array([max_forget_nll(float(a)) for a in np.asarray(nll_g, dtype=np.float64).reshape(-1)]
                    ).reshape(np.shape(nll_g))
  a = float(nll_g)
  ends = frontier_end()
  _check_reachable(a, ends['nll_g_min'])
  if a >= ends['nll_g_end']:
    return ends['nll_f_end'] + LAMBDA_MIN * (a - ends['nll_g_end'])
  return q_lambda_nll(frontier_lambda(a))[1]


def min_retain_nll(nll_f: float) -> float:
  """The inverse of F: the smallest NLL_g (nats) at which an NLL_f of ``nll_f`` (nats) is reachable
  (H(p_g) for nll_f <= NLL_f(p_g))."""
  f = float(nll_f)
  ends = frontier_end()
  if f <= ends['nll_f_min']:
    return ends['nll_g_min']
  if f >= ends['nll_f_end']:
    return ends['nll_g_end'] + (f - ends['nll_f_end']) / LAMBDA_MIN
  u = optimize.brentq(lambda u: q_lambda_nll(LAMBDA_MIN / u if u > 0 else math.inf)[1] - f, 0., 1.,
                      xtol=1e-15, rtol=1e-14, maxiter=200)
  return q_lambda_nll(LAMBDA_MIN / u)[0]


def dual_value(lam: float) -> float:
  """``h(λ) = sup_q [NLL_f(q) − λ NLL_g(q)] = NLL_f(q_λ) − λ NLL_g(q_λ)`` (nats), λ >= e⁴; +inf for λ < e⁴."""
  if float(lam) < LAMBDA_MIN * (1. - 1e-12):
    return math.inf
  g, f = q_lambda_nll(lam)
  return f - lam * g


def weak_duality_line(nll_g: Number, lam: float = LAMBDA_MIN) -> Number:
  """The upper bound ``λ a + h(λ)`` on NLL_f at NLL_g = a (nats), valid for every density and every λ;
  at λ = e⁴ it is the frontier's straight part, NLL_f(p_g) + e⁴ (a − H(p_g)) + 0.281."""
  return _float_or_array(lam * np.asarray(nll_g, dtype=np.float64) + dual_value(lam))


def dual_bound(nll_g: float, lambdas: Optional[Sequence[float]] = None) -> Tuple[float, float]:
  """``min_λ [λ a + h(λ)]`` over λ >= e⁴ (nats) and the minimising λ: an upper bound on F(a) for any
  ``lambdas``, equal to F(a) at the optimum (strong duality). Default: a bounded 1-D minimisation
  over u = e⁴/λ in (0, 1]."""
  a = float(nll_g)
  if lambdas is not None:
    lam = np.asarray(lambdas, dtype=np.float64).reshape(-1)
    vals = np.array([weak_duality_line(a, l) for l in lam])
    i = int(np.argmin(vals))
    return float(vals[i]), float(lam[i])
  res = optimize.minimize_scalar(lambda u: weak_duality_line(a, LAMBDA_MIN / u), bounds=(1e-6, 1.),
                                 method='bounded', options={'xatol': 1e-12})
  best = min((res.fun, LAMBDA_MIN / res.x), (weak_duality_line(a, LAMBDA_MIN), LAMBDA_MIN))
  return float(best[0]), float(best[1])


def distance_to_frontier(nll_g: float, nll_f: float, clip: bool = False) -> float:
  """``F(nll_g) − nll_f`` (nats): positive = below the frontier (room left), negative = impossible for any
  density (beyond sampling error). ``clip``: an NLL_g below H(p_g) is taken as H(p_g) (for test-set means
  below it by sampling error); otherwise such an NLL_g raises ``ValueError``."""
  a = float(nll_g)
  if clip:
    a = max(a, entropy_retain())
  return float(max_forget_nll(a)) - float(nll_f)


def frontier_report(nll_g: float, nll_f: float, sem_g: Optional[float] = None,
                    sem_f: Optional[float] = None, clip: bool = True) -> dict:
  """Where a model's ``(nll_g, nll_f)`` (nats; test-set means, optional standard errors) stands.

  Returns ``{'nll_g', 'nll_f', 'max_forget_nll', 'distance'}`` (nats) with ``*_paper`` versions, ``lam``
  (F' at nll_g: nats of NLL_f reachable per nat of NLL_g), ``min_retain_nll`` (the NLL_g F needs for
  nll_f), ``retain_excess`` (nll_g minus that; < 0 = impossible), ``fraction`` (nll_f − NLL_f(p_g)) /
  (F − NLL_f(p_g)) (share of the reachable rise over the ideal retain-only model; nan at F = NLL_f(p_g)),
  ``clipped`` (nll_g < H(p_g) was raised to it) and, with SEMs, ``distance_sem`` = √((λ sem_g)² + sem_f²).
  """
  ends = frontier_end()
  a = float(nll_g)
  clipped = a < ends['nll_g_min']
  if clipped and not clip:
    _check_reachable(a, ends['nll_g_min'])
  a_eff = max(a, ends['nll_g_min'])
  F = float(max_forget_nll(a_eff))
  lam = frontier_lambda(a_eff)
  g_need = min_retain_nll(nll_f)
  rise = F - ends['nll_f_min']
  out = {'nll_g': a, 'nll_f': float(nll_f), 'max_forget_nll': F, 'distance': F - float(nll_f), 'lam': lam,
         'min_retain_nll': g_need, 'retain_excess': a - g_need,
         'fraction': (float(nll_f) - ends['nll_f_min']) / rise if rise > 0 else math.nan,
         'clipped': bool(clipped)}
  for key in ('nll_g', 'nll_f', 'max_forget_nll', 'min_retain_nll'):
    out[key + '_paper'] = to_paper_scale(out[key])
  out['distance_paper'] = out['distance'] / (DIMS * math.log(2.))
  if sem_g is not None and sem_f is not None:
    out['distance_sem'] = math.hypot(lam * float(sem_g), float(sem_f)) if np.isfinite(lam) else math.inf
  return out


#: width of the interval, in standard errors, within which a run counts as on the frontier.
WITHIN_SE = 2.
#: the verdicts of ``frontier_verdict`` and how a table prints them (``{d}``, ``{se}``: paper scale).
VERDICT_TEXT = {
  'below': '{d:.2f} ± {se:.2f} below',
  'within': 'on the frontier (within error)',
  'below_entropy': 'D_g below H(p_g): no cost measurable',
  'beyond': 'CHECK: {d:.2f} ± {se:.2f} beyond the frontier (more than {z:g} SE: unresolved or a bug)',
}


def frontier_verdict(nll_g: float, nll_f: float, sem_g: float, sem_f: float, z: float = WITHIN_SE) -> dict:
  """Where a measured run stands against the frontier, with its test-set error (nats in, paper scale out).

  Returns ``{'status', 'distance_paper', 'sem_paper', 'text'}``; ``status`` is

  * ``'below'``: ``F(nll_g) − nll_f`` minus ``z`` standard errors is still > 0 (room left; the table prints
    the distance and one SE, in paper units);
  * ``'within'``: the interval ``distance ± z SE`` contains 0: as good as any density, up to test-set error;
  * ``'below_entropy'``: ``nll_g < H(p_g)``, less than any density's expected D_g (test-set error; F's slope
    is infinite at H(p_g), so no distance is defined) and ``nll_f`` not above ``F(H(p_g) + z sem_g)``
    beyond ``z sem_f``;
  * ``'beyond'``: above the frontier by more than ``z`` SE (for ``nll_g < H(p_g)``: above
    ``F(H(p_g) + z sem_g)`` by more than ``z sem_f``): no density has these expected NLLs, so the
    estimate is unresolved (too few test points) or something is wrong.

  ``sem_paper`` is √((F′ sem_g)² + sem_f²) on the paper scale (``inf`` for ``'below_entropy'``), the
  distance's SE from ``frontier_report``; ``distance_paper`` is positive below the frontier.
  """
  per_unit = DIMS * math.log(2.)
  h = entropy_retain()
  g, f, sg, sf = float(nll_g), float(nll_f), abs(float(sem_g)), abs(float(sem_f))
  if g < h:
    ceiling = float(max_forget_nll(h + z * sg))
    d = (ceiling - f) / per_unit
    status = 'beyond' if f - z * sf > ceiling else 'below_entropy'
    se = sf / per_unit if status == 'beyond' else math.inf
  else:
    rep = frontier_report(g, f, sg, sf)
    d, se = rep['distance_paper'], rep['distance_sem'] / per_unit
    if d - z * se > 0:
      status = 'below'
    elif d + z * se >= 0:
      status = 'within'
    else:
      status = 'beyond'
  text = VERDICT_TEXT[status].format(d=abs(d), se=se, z=z)
  return {'status': status, 'distance_paper': d, 'sem_paper': se, 'text': text}


# ----------------------------------------------------------------------------------------------
# Independent check: brute-force optimisation over piecewise-constant densities


def _cell_masses(edges: np.ndarray, mean: float) -> np.ndarray:
  """N(mean, 1) mass of each cell ``[edges[i], edges[i+1])``, accurate in both tails."""
  a, b = edges[:-1] - mean, edges[1:] - mean
  return np.where(a > 0, special.ndtr(-a) - special.ndtr(-b), special.ndtr(b) - special.ndtr(a))


def brute_force_frontier(mus: Optional[Sequence[float]] = None, n_cells: int = 2000, s_max: float = 12.,
                         maxiter: int = 20000) -> Dict[str, np.ndarray]:
  """Frontier points by direct optimisation, independent of the λ-family formula.

  q is piecewise constant on ``n_cells`` equal cells of ``[−s_max, s_max]`` along s (softmax logits θ,
  q_i = softmax(θ)_i / h), times N(0, 1) along v (optimal for both NLLs, added analytically). For each
  μ, L-BFGS maximises NLL_f − μ NLL_g = Σ_i (μ P_g,i − P_f,i) log q_i with the exact cell masses P of
  p_g and p_f, starting from the cells of p_data (the model trained on everything; uniform logits give the
  same optimum but ~10x slower, as the tails' mass leaks away only like 1/iterations). The result's NLLs
  are those of that density (mass beyond ``s_max``, < 1e-18, ignored). μ must be >= max_i P_f,i / P_g,i
  (just under e⁴), else the objective is unbounded. Optimiser error ~1e-7 nats; ~1-2 s per μ.

  Returns ``{'mu', 'nll_g', 'nll_f', 'objective', 'converged', 'cell_width'}`` (nats, 2-D).
  """
  if mus is None:
    mus = LAMBDA_MIN * np.array([1., 1.05, 1.3, 2., 5.])
  mus = np.asarray(mus, dtype=np.float64).reshape(-1)
  edges = np.linspace(-s_max, s_max, int(n_cells) + 1)
  h = edges[1] - edges[0]
  pg = 0.5 * _cell_masses(edges, SEPARATION) + 0.5 * _cell_masses(edges, -SEPARATION)
  pf = _cell_masses(edges, 0.)
  wl, wc, wr = DATA_WEIGHTS
  theta0 = np.log(wl * _cell_masses(edges, -SEPARATION) + wc * pf + wr * _cell_masses(edges, SEPARATION))
  ratio_max = float(np.max(pf / pg))
  out = {k: [] for k in ('nll_g', 'nll_f', 'objective', 'converged')}
  for mu in mus:
    if mu < ratio_max:
      raise ValueError(f'μ = {mu:.6g} < max cell ratio P_f/P_g = {ratio_max:.6g}: emptying that cell sends '
                       'NLL_f − μ NLL_g to +inf')
    w = mu * pg - pf
    wn = w / w.sum()  # scaled objective, O(1)

    def fun(theta):
      ls = theta - special.logsumexp(theta)
      return -float(wn @ ls), -(wn - np.exp(ls))  # wn sums to 1

    res = optimize.minimize(fun, theta0, jac=True, method='L-BFGS-B',
                            options={'maxiter': int(maxiter), 'maxcor': 10, 'ftol': 1e-13, 'gtol': 1e-11})
    log_q = res.x - special.logsumexp(res.x) - math.log(h)
    g = -float(pg @ log_q) + PERP_ENTROPY
    f = -float(pf @ log_q) + PERP_ENTROPY
    out['nll_g'].append(g)
    out['nll_f'].append(f)
    out['objective'].append(f - mu * g)
    out['converged'].append(bool(res.success))
  result = {k: np.asarray(v) for k, v in out.items()}
  result['mu'] = mus
  result['cell_width'] = h
  return result


# ----------------------------------------------------------------------------------------------
# Figure


def plot_frontier(ax, runs: Optional[Dict[str, Tuple[float, float]]] = None, nll_g_max: Optional[float] = None,
                  n: int = 60, labels: str = 'annotate', se_bars: float = 1., legend: bool = True):
  """Draws the frontier on the paper's scale (D_g horizontal, D_f vertical) on a matplotlib ``ax``.

  The arc and its straight continuation (slope e⁴) up to ``nll_g_max`` (nats; default: past the
  points), the unreachable region above it shaded, the exact p_data and p_g points, and ``runs``
  ``{name: (nll_g_nats, nll_f_nats)}`` or ``{name: (nll_g_nats, nll_f_nats, sem_g_nats, sem_f_nats)}``.
  Standard errors, where given, are drawn as ±``se_bars`` SE bars: the frontier bounds expected NLLs,
  so a run on a small test set can sit above it within them.

  ``labels='annotate'``: each run is a red cross annotated with its distance to the frontier (paper
  scale; positive = below it; runs with NLL_g < H(p_g) are measured at H(p_g) and marked).
  ``labels='legend'``: each run gets its own colour and marker and a legend entry ``name: verdict``
  (``frontier_verdict``, which needs the SEs), so crowded points keep readable labels. ``legend``: draw
  the legend on ``ax`` (else the caller places it, e.g. with ``ax.get_legend_handles_labels()``).
  Returns ``ax``.
  """
  if labels not in ('annotate', 'legend'):
    raise ValueError(f"labels must be 'annotate' or 'legend', got {labels!r}")
  refs = reference_points()
  ends = frontier_end()
  runs = dict(runs or {})
  xs = [refs['p_data'][0], ends['nll_g_end']] + [float(v[0]) for v in runs.values()]
  a_max = float(nll_g_max) if nll_g_max is not None else max(xs) + 0.15
  arc = frontier_curve(n=n)
  line_g = np.linspace(ends['nll_g_end'], max(a_max, ends['nll_g_end']), 50)
  g = np.concatenate([arc['nll_g'], line_g[1:]])
  f = np.concatenate([arc['nll_f'], ends['nll_f_end'] + LAMBDA_MIN * (line_g[1:] - ends['nll_g_end'])])
  gp, fp = to_paper_scale(g), to_paper_scale(f)
  ys = [to_paper_scale(refs[k][1]) for k in ('p_data', 'p_g')] + [to_paper_scale(float(v[1])) for v in runs.values()]
  top = max(float(fp.max()), max(ys)) + 1.
  bottom = min(ys) - 0.5
  h_paper = to_paper_scale(ends['nll_g_min'])
  lefts = [to_paper_scale(float(v[0]) - (se_bars * float(v[2]) if len(v) == 4 else 0.)) for v in runs.values()]
  left = min([h_paper, to_paper_scale(refs['p_g'][0])] + lefts)
  left -= 0.05 * (to_paper_scale(a_max) - left)
  ax.plot(gp, fp, color='k', lw=1.5, label='frontier F: the most D_f any density reaches')
  ax.fill_between(gp, fp, top, color='0.88', label='unreachable in expectation (any density)')
  ax.axvspan(left - 1., h_paper, color='0.88', lw=0)     # left of H(p_g): no density either
  ax.axvline(h_paper, color='0.5', ls=':', lw=1, label='H(p_g): least D_g of any density')
  for name, marker in (('p_data', 'o'), ('p_g', 's')):
    x, y = to_paper_scale(refs[name][0]), to_paper_scale(refs[name][1])
    ax.plot(x, y, marker, color='tab:blue' if name == 'p_data' else 'tab:green', mfc='none', ms=8,
            label=f'{name} (exact density, expectation)')
  per_unit = DIMS * math.log(2.)        # nats per paper-scale unit
  colours = ['tab:red', 'tab:orange', 'tab:purple', 'tab:brown', 'tab:pink', 'tab:cyan', 'tab:olive', 'k',
             'tab:blue', 'tab:green']
  markers = ['X', 'D', '^', 'v', 'P', '*', 'h', '<', '>', 'p']
  for i, (name, run) in enumerate(runs.items()):
    rg, rf = float(run[0]), float(run[1])
    x, y = to_paper_scale(rg), to_paper_scale(rf)
    has_se = len(run) == 4
    if labels == 'legend':
      colour, marker = colours[i % len(colours)], markers[i % len(markers)]
      text = frontier_verdict(rg, rf, run[2], run[3])['text'] if has_se else \
          f'{distance_to_frontier(rg, rf, clip=True) / per_unit:+.2f} to frontier'
      label = f'{name}: {text}'
    else:
      colour, marker, label = 'tab:red', 'x', None
    if has_se:
      ax.errorbar(x, y, xerr=se_bars * float(run[2]) / per_unit, yerr=se_bars * float(run[3]) / per_unit,
                  fmt=marker, color=colour, elinewidth=0.8, capsize=2, label=label,
                  ms=7 if labels == 'legend' else None)
    else:
      ax.plot(x, y, marker, color=colour, label=label)
    if labels == 'annotate':
      d = distance_to_frontier(rg, rf, clip=True) / per_unit
      note = ' (D_g<H)' if rg < ends['nll_g_min'] else ''
      ax.annotate(f'{name}: Δ={d:+.2f}{note}', (x, y), textcoords='offset points', xytext=(5, 5), fontsize=8)
  ax.set_xlabel('NLL D_g (paper scale: bits/dim + 8)')
  ax.set_ylabel('NLL D_f (paper scale: bits/dim + 8)')
  ax.set_ylim(bottom, top)
  ax.set_xlim(left, to_paper_scale(a_max))
  if legend:
    if labels == 'legend':
      ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.02, 1.), borderaxespad=0.)
    else:
      ax.legend(fontsize=7, loc='upper center', bbox_to_anchor=(0.5, -0.28), ncol=2)   # below: runs sit anywhere
  return ax
