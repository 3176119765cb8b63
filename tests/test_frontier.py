"""The toy's Pareto frontier (evaluation/frontier.py): analytic facts, duality, brute force, Monte Carlo."""
import math

import numpy as np
import pytest
import torch

import datasets
from evaluation import frontier as fr

E4 = math.exp(4.)


@pytest.fixture(scope='module')
def ends():
  return fr.frontier_end()


@pytest.fixture(scope='module')
def curve():
  return fr.frontier_curve(n=41)


def _grid_2d(half_width=11., n=661):
  """A 2-D grid (float64 points [n², 2]) and its cell area: trapezoid sums of Gaussians are exact to ~1e-15."""
  t = np.linspace(-half_width, half_width, n)
  xx, yy = np.meshgrid(t, t, indexing='ij')
  return torch.from_numpy(np.stack([xx.ravel(), yy.ravel()], 1)), (t[1] - t[0]) ** 2


def test_constants_match_the_toy_density():
  d = datasets.gmm2d_density()
  assert d.std == 1.
  assert torch.allclose(d.weights, torch.tensor(fr.DATA_WEIGHTS, dtype=torch.float64))
  s = d.means.sum(1) / math.sqrt(2.)  # positions along (1, 1)/√2
  assert torch.allclose(d.means[:, 0], d.means[:, 1])  # all means on the diagonal: v-factor N(0, 1)
  assert torch.allclose(s, torch.tensor([-fr.SEPARATION, 0., fr.SEPARATION], dtype=torch.float64))
  assert fr.LAMBDA_MIN == pytest.approx(E4, rel=1e-15)


def test_density_ratio_is_at_most_e4():
  d = datasets.gmm2d_density()
  pg, pf = d.restrict([0, 2]), d.restrict([1])
  x, _ = _grid_2d(6., 241)
  log_ratio = pf.log_prob(x) - pg.log_prob(x)
  assert float(log_ratio.max()) == pytest.approx(4., abs=1e-12)  # attained on x₁ + x₂ = 0 (on the grid)
  expected = 4. - torch.log(torch.cosh(2. * (x[:, 0] + x[:, 1])))
  assert torch.allclose(log_ratio, expected, atol=1e-10)


def test_entropy_and_cross_entropy_against_a_2d_grid(ends):
  d = datasets.gmm2d_density()
  pg, pf = d.restrict([0, 2]), d.restrict([1])
  x, area = _grid_2d()
  lg, lf = pg.log_prob(x), pf.log_prob(x)
  h_grid = float(-(lg.exp() * lg).sum() * area)
  ce_grid = float(-(lf.exp() * lg).sum() * area)
  assert fr.entropy_retain() == pytest.approx(h_grid, abs=1e-9)
  assert ends['nll_g_min'] == pytest.approx(h_grid, abs=1e-9)
  assert ends['nll_f_min'] == pytest.approx(ce_grid, abs=1e-9)
  assert round(ends['nll_g_min'], 3) == 3.524 and round(ends['nll_f_min'], 2) == 5.16


@pytest.mark.parametrize('alpha,kappa', [(0.97, 16.), (0.99, 64.)])
def test_ratio_form_optimum_against_a_2d_grid(alpha, kappa, ends):
  """q ∝ p_g (α + (1 − α) p_f/p_g)^(−κ), normalised and integrated on a 2-D grid."""
  d = datasets.gmm2d_density()
  x, area = _grid_2d()
  lg, lf = d.restrict([0, 2]).log_prob(x), d.restrict([1]).log_prob(x)
  lq = lg - kappa * torch.logaddexp(torch.tensor(math.log(alpha), dtype=torch.float64), math.log1p(-alpha) + lf - lg)
  lq = lq - torch.logsumexp(lq, 0) - math.log(area)
  nll_g, nll_f = fr.ratio_form_optimum(alpha, kappa)
  assert nll_g == pytest.approx(float(-(lg.exp() * lq).sum() * area), abs=1e-8)
  assert nll_f == pytest.approx(float(-(lf.exp() * lq).sum() * area), abs=1e-8)
  assert nll_f <= fr.max_forget_nll(nll_g)                   # on or below the frontier
  assert fr.ratio_form_optimum(alpha, 0.) == pytest.approx((ends['nll_g_min'], ends['nll_f_min']), abs=1e-10)
  with pytest.raises(ValueError, match='alpha'):
    fr.ratio_form_optimum(1., kappa)


def test_curve_tends_to_p_g_as_lambda_grows(ends):
  # As λ → ∞: NLL_f(q_λ) − NLL_f(p_g) ≈ χ²/λ and NLL_g(q_λ) − H(p_g) = KL(p_g ‖ q_λ) ≈ χ²/(2λ²),
  # χ² = ∫ p_f²/p_g − 1 (about 20.4).
  s = np.linspace(-12., 12., 240_001)
  chi2 = float(np.sum(np.exp(2 * fr.log_pf_1d(s) - fr.log_pg_1d(s))) * (s[1] - s[0])) - 1.
  for lam in (1e6, 1e9):
    g, f = fr.q_lambda_nll(lam)
    assert g - ends['nll_g_min'] == pytest.approx(chi2 / (2 * lam ** 2), rel=0.02, abs=1e-13)
    assert (f - ends['nll_f_min']) * lam == pytest.approx(chi2, rel=1e-3)
  with pytest.raises(ValueError, match='e⁴'):
    fr.q_lambda_nll(0.99 * E4)


def test_curve_is_increasing_and_concave(curve):
  g, f, lam = curve['nll_g'], curve['nll_f'], curve['lam']
  assert np.isinf(lam[0]) and lam[-1] == pytest.approx(E4)
  assert np.all(np.diff(g) > 0) and np.all(np.diff(f) > 0)
  slopes = np.diff(f) / np.diff(g)
  assert np.all(np.diff(slopes) < 0)  # concave: slope falls from inf towards e⁴
  assert slopes[-1] > E4
  # the slope is the multiplier: between neighbours it lies between their λ
  assert np.all(slopes[1:] <= lam[1:-1] * (1 + 1e-6)) and np.all(slopes[1:] >= lam[2:] * (1 - 1e-6))


def test_max_forget_nll_is_monotone_and_follows_the_line_past_the_arc(ends):
  a = np.linspace(ends['nll_g_min'], ends['nll_g_min'] + 0.3, 13)
  F = fr.max_forget_nll(a)
  assert np.all(np.diff(F) > 0)
  assert F[0] == pytest.approx(ends['nll_f_min'], abs=1e-12)
  past = a > ends['nll_g_end']
  assert np.allclose(F[past], ends['nll_f_end'] + E4 * (a[past] - ends['nll_g_end']), rtol=1e-14)
  # on the arc: the root-found λ reproduces the level
  for level in (ends['nll_g_min'] + 1e-4, 0.5 * (ends['nll_g_min'] + ends['nll_g_end'])):
    lam = fr.frontier_lambda(level)
    assert fr.q_lambda_nll(lam)[0] == pytest.approx(level, abs=1e-11)
    assert fr.min_retain_nll(fr.max_forget_nll(level)) == pytest.approx(level, abs=1e-10)


def test_below_the_entropy_raises(ends):
  with pytest.raises(ValueError, match='below H'):
    fr.max_forget_nll(ends['nll_g_min'] - 1e-6)
  with pytest.raises(ValueError, match='below H'):
    fr.max_forget_nll(fr.from_paper_scale(10.53))
  with pytest.raises(ValueError, match='below H'):
    fr.distance_to_frontier(ends['nll_g_min'] - 0.01, 5.)
  assert fr.distance_to_frontier(ends['nll_g_min'] - 0.01, 5., clip=True) == pytest.approx(ends['nll_f_min'] - 5.)


def test_strong_duality_and_the_weak_duality_line(curve, ends):
  for a in (ends['nll_g_min'] + 2e-4, 3.530, ends['nll_g_end'], 3.6, 3.9):
    bound, lam = fr.dual_bound(a)
    assert bound == pytest.approx(fr.max_forget_nll(a), abs=1e-7)
    assert fr.dual_bound(a, [E4, 2 * E4, 10 * E4])[0] >= fr.max_forget_nll(a) - 1e-9
  # The λ = e⁴ line lies above the arc, touches it at the arc's end, and is F beyond.
  line = fr.weak_duality_line(curve['nll_g'])
  assert np.all(line - curve['nll_f'] >= -1e-9)
  assert line[-1] == pytest.approx(curve['nll_f'][-1], abs=1e-9)
  # Its offset in the MSGM.md form NLL_f − NLL_f(p_g) <= e⁴ (NLL_g − H(p_g)) + c: c = 0.281 (stated 0.29).
  c = ends['nll_f_end'] - ends['nll_f_min'] - E4 * (ends['nll_g_end'] - ends['nll_g_min'])
  assert c == pytest.approx(0.2809, abs=1e-4)
  stated = 5.16 + E4 * (curve['nll_g'] - 3.524) + 0.29
  assert np.all(stated >= curve['nll_f'])


def test_msgm_spot_value():
  # MSGM.md: at D_g 10.72 (paper scale) the largest reachable D_f is about 21.6.
  a = fr.from_paper_scale(10.72)
  assert fr.to_paper_scale(fr.max_forget_nll(a)) == pytest.approx(21.627, abs=1e-3)
  # the paper's MSGM pair (10.64, 39.01) would need D_g >= 11.04
  assert fr.to_paper_scale(fr.min_retain_nll(fr.from_paper_scale(39.01))) == pytest.approx(11.038, abs=1e-3)
  assert fr.distance_to_frontier(fr.from_paper_scale(10.64), fr.from_paper_scale(39.01)) < -30.


def test_paper_scale_round_trip():
  assert fr.to_paper_scale(2 * math.log(2.)) == pytest.approx(9.)
  x = np.array([3.5, 4.0])
  assert np.allclose(fr.from_paper_scale(fr.to_paper_scale(x)), x)


def _fisher_1d(lam, n=400_001, s_max=12.):
  """∫ q'²/q ds of q_λ along s (fine grid; finite at λ = e⁴, where q ∝ s² near 0)."""
  s = np.linspace(-s_max, s_max, n) + 1e-7  # avoid s = 0 exactly (0/0 at λ = e⁴)
  npdf = lambda t: np.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)
  c = fr.SEPARATION
  q = lam * 0.5 * (npdf(s - c) + npdf(s + c)) - npdf(s)
  dq = lam * 0.5 * (-(s - c) * npdf(s - c) - (s + c) * npdf(s + c)) + s * npdf(s)
  return float(np.sum(dq ** 2 / q) * (s[1] - s[0]) / (lam - 1.))


def test_brute_force_matches_the_analytic_frontier():
  mus = E4 * np.array([1., 1.3, 3.])
  bf = fr.brute_force_frontier(mus, n_cells=2000, s_max=12.)
  assert bf['converged'].all()
  h = bf['cell_width']
  for mu, g, f, obj in zip(mus, bf['nll_g'], bf['nll_f'], bf['objective']):
    gap = fr.dual_value(mu) - obj  # sup over all densities minus the best piecewise-constant one
    # The discrete optimum is q_μ averaged over cells: gap = (μ−1) KL(q_μ || cell average)
    # ≈ (μ−1) h²/24 ∫ q'²/q ds (second order in h; ~4e-4 .. 1e-3 nats at h = 0.012).
    predicted = (mu - 1.) * h * h / 24. * _fisher_1d(mu)
    assert 0. < gap == pytest.approx(predicted, rel=0.05)
    d = fr.distance_to_frontier(g, f)  # a real density: on or below F, by about the same gap
    assert -1e-9 < d < 1.1 * predicted
    # The point sits near q_μ's: NLL_g within 2e-4 at μ = e⁴ (where q_μ → 0 at s = 0 but p_g does not);
    # NLL_f then moves along the frontier by about μ times that (its slope), hence no check on it here.
    assert g == pytest.approx(fr.q_lambda_nll(mu)[0], abs=3e-4)


def test_monte_carlo_nll_of_q_lambda():
  d = datasets.gmm2d_density()
  n = 200_000
  xg, _ = d.restrict([0, 2]).sample(n, generator=1)
  xf, _ = d.restrict([1]).sample(n, generator=2)
  for lam in (E4, 2 * E4):
    g, f = fr.q_lambda_nll(lam)
    for x, exact in ((xg, g), (xf, f)):
      v = -fr.log_q_lambda(x, lam)
      assert np.all(np.isfinite(v))
      assert abs(v.mean() - exact) < 4 * v.std(ddof=1) / math.sqrt(n)
  # q_λ is normalised (2-D trapezoid)
  x, area = _grid_2d()
  assert float(np.exp(fr.log_q_lambda(x, 2 * E4)).sum() * area) == pytest.approx(1., abs=1e-10)


def test_reference_points_match_msgm_md():
  refs = fr.reference_points()
  # MSGM.md (2,000-sample test sets): p_data 3.625 / 3.869, p_g 3.519 / 5.153; exact expectations here.
  assert refs['p_data'] == pytest.approx((3.6279, 3.8718), abs=1e-4)
  assert refs['p_g'] == pytest.approx((3.5244, 5.1621), abs=1e-4)
  assert fr.distance_to_frontier(*refs['p_data']) > 0


def test_frontier_report():
  a, f = fr.from_paper_scale(10.60), fr.from_paper_scale(13.0)
  r = fr.frontier_report(a, f, sem_g=0.02, sem_f=0.03)
  assert r['max_forget_nll_paper'] == pytest.approx(15.075, abs=1e-3)
  assert r['distance'] == pytest.approx(r['max_forget_nll'] - f)
  assert r['lam'] == pytest.approx(E4) and r['distance_sem'] == pytest.approx(math.hypot(E4 * 0.02, 0.03))
  assert 0. < r['fraction'] < 1. and r['retain_excess'] > 0 and not r['clipped']
  assert fr.frontier_report(3.5, 5.0)['clipped']


def test_plot_frontier():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots()
  try:
    out = fr.plot_frontier(ax, runs={'unseen': (3.52, 5.10), 'toy': (3.62, 8.0)}, n=15)
    assert out is ax
    texts = [t.get_text() for t in ax.texts]
    assert any(t.startswith('unseen') and 'D_g<H' in t for t in texts)
    assert any(t.startswith('toy: Δ=+') for t in texts)
  finally:
    plt.close(fig)


def test_plot_frontier_error_bars_in_paper_units():
  """A run given with standard errors (nats) gets ±1 SE bars converted to the paper scale (2 ln 2 nats a unit)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots()
  try:
    fr.plot_frontier(ax, runs={'toy': (3.62, 8.0, 0.02772588722239781, 0.2772588722239781)}, n=15)
    # errorbar draws the bars as two LineCollections: horizontal (D_g) then vertical (D_f)
    segs = [c.get_segments()[0] for c in ax.collections if type(c).__name__ == 'LineCollection']
    (x0, y0), (x1, y1) = segs[0]
    assert y0 == y1 and x1 - x0 == pytest.approx(2 * 0.02)
    assert y0 == pytest.approx(fr.to_paper_scale(8.0))
    (x0, y0), (x1, y1) = segs[1]
    assert x0 == x1 and abs(y1 - y0) == pytest.approx(2 * 0.2)
  finally:
    plt.close(fig)


def _point(a_paper, below_nats, sem_g=0.005, sem_f=0.05):
  """A hand-made run at D_g ``a_paper`` (paper scale), ``below_nats`` nats under the frontier (nats, SEs)."""
  g = fr.from_paper_scale(a_paper)
  return g, fr.max_forget_nll(g) - below_nats, sem_g, sem_f


def test_frontier_verdict_below_within_beyond_and_below_the_entropy():
  se = math.hypot(E4 * 0.005, 0.05) / (2 * math.log(2.))        # the distance's SE, paper scale (0.20)
  # clearly inside: 5 nats = 3.61 paper units below, far more than 2 SE
  v = fr.frontier_verdict(*_point(10.70, 5.))
  assert v['status'] == 'below' and v['text'] == f'{5. / (2 * math.log(2.)):.2f} ± {se:.2f} below'
  assert v['distance_paper'] == pytest.approx(3.607, abs=1e-3) and v['sem_paper'] == pytest.approx(se)
  # an interval that crosses the frontier, on either side of it: no signed number
  for below in (0.3, -0.3):
    v = fr.frontier_verdict(*_point(10.70, below))
    assert v['status'] == 'within' and v['text'] == 'on the frontier (within error)'
  # beyond it by more than 2 SE: flagged
  v = fr.frontier_verdict(*_point(10.70, -5.))
  assert v['status'] == 'beyond' and v['text'].startswith('CHECK: 3.61 ± 0.20 beyond the frontier')
  # a test mean below H(p_g): words, no inf
  h = fr.entropy_retain()
  v = fr.frontier_verdict(h - 0.003, 5.0, 0.008, 0.05)
  assert v['status'] == 'below_entropy' and v['text'] == 'D_g below H(p_g): no cost measurable'
  assert 'inf' not in v['text']
  # ... unless D_f is above anything reachable within 2 SE of D_g
  v = fr.frontier_verdict(h - 0.003, 9.0, 0.008, 0.05)
  assert v['status'] == 'beyond' and v['text'].startswith('CHECK:') and 'inf' not in v['text']
  # exactly at H(p_g) the frontier is vertical: within error
  assert fr.frontier_verdict(h, fr.frontier_end()['nll_f_min'] + 0.1, 0.008, 0.05)['status'] == 'within'
  # a larger interval (z) turns a resolved distance into "within"
  assert fr.frontier_verdict(*_point(10.70, 1.), z=2.)['status'] == 'below'
  assert fr.frontier_verdict(*_point(10.70, 1.), z=5.)['status'] == 'within'


def test_plot_frontier_legend_labels_every_run_with_its_verdict():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  h = fr.entropy_retain()
  runs = {'inside': _point(10.70, 5.), 'crossing': _point(10.70, 0.3), 'low': (h - 0.003, 5.0, 0.008, 0.05)}
  fig, ax = plt.subplots()
  try:
    fr.plot_frontier(ax, runs, labels='legend', se_bars=2., n=15)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert 'inside: 3.61 ± 0.20 below' in labels
    assert 'crossing: on the frontier (within error)' in labels
    assert 'low: D_g below H(p_g): no cost measurable' in labels
    assert not ax.texts                                    # no annotations to overlap
    # ±2 SE bars: the D_g bar of 'inside' spans 4 SE on the paper scale
    segs = [c.get_segments()[0] for c in ax.collections if type(c).__name__ == 'LineCollection']
    (x0, _), (x1, _) = segs[0]
    assert x1 - x0 == pytest.approx(4 * 0.005 / (2 * math.log(2.)))
    with pytest.raises(ValueError, match='labels'):
      fr.plot_frontier(ax, runs, labels='arrows')
  finally:
    plt.close(fig)
