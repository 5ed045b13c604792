"""The sequential paired test's arithmetic: boundaries with an exact error rate, and its operating curve.

A child is compared with its parent seed by seed. After k paired seeds the statistic is

    t_k = mean(d) * sqrt(k) / tau,    d_i = child_i - parent_i

where tau is the noise model's standard deviation of one paired difference, estimated with `dof`
degrees of freedom (`evolve.promotion.NoiseModel`). Lower val_bpb is better, so an improvement
makes t negative. The rule at look k (a `Design`):

- accept when k >= min_seeds and t_k <= -accept[k],
- reject when t_k >= -reject[k], or when k = max_seeds and it was not accepted,
- otherwise run one more seed of the child.

The lines have the shape of Wald's sequential probability ratio test for "no change" against "a
gain of `gain` tau", in the sum of the differences: accept[k] = (A/D + k D/2)/sqrt(k),
reject[k] = (B/D + k D/2)/sqrt(k), with D = `gain` (in units of tau) and B = `futility` (a log
likelihood ratio; more negative rejects later). A is not Wald's approximation: it is solved for
so that a child that changes nothing crosses the accept line with probability exactly `alpha`
under the Gaussian model when the reject line is ignored, the uncertainty of tau integrated out
(tau-hat^2 * dof / tau^2 is chi-square with `dof` degrees of freedom, so t is a Student-type
statistic with the same tau-hat at every look). The reject line is non-binding: it only ever
stops children early, so the false-accept probability is at most `alpha` whether or not it is
obeyed (with it, it is somewhat less; `operating` gives the exact figure).

Everything here is plain numerics (numpy, no scipy): a random walk's density on a grid, look by
look (Simpson weights, spacing `STEP`), averaged over a quadrature of the chi-square law.
`operating()` gives the acceptance probability and the expected number of child seeds for any true
mean difference, which `bench/promotion.py` checks against a simulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

STEP = 0.1  # grid spacing of the random walk's density, in tau units (0.04 agrees to 5 digits)
TAIL = 6.5  # the grid reaches this many standard deviations beyond the walk's mean
CHI_POINTS = 48  # quadrature points over the chi-square law of the noise estimate (96 agree)
KNOWN = 10_000  # degrees of freedom from which tau counts as known (one quadrature point)
# Above 30 degrees of freedom, boundaries are computed at the next lower of these (a little more
# cautious), so a long run computes a few dozen sets of lines, not one per new seed.
DOF_STEPS = (30, 40, 50, 60, 80, 100, 150, 200, 300, 500, 1000, 2000, 5000, KNOWN)


def norm_cdf(x: np.ndarray | float) -> np.ndarray | float:
    """The standard normal distribution function."""
    if isinstance(x, np.ndarray):
        return 0.5 * _erfc(-x / math.sqrt(2.0))
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


_erfc = np.vectorize(math.erfc, otypes=[float])


def _phi(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


@lru_cache(maxsize=256)
def chi_quadrature(dof: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Points u = tau-hat / tau and weights for E[f(u)] when dof * u^2 ~ chi-square(dof).

    A grid in log(chi-square), where the law is smooth and unimodal for every dof >= 1."""
    if dof >= KNOWN:
        return (1.0,), (1.0,)
    if dof < 1:
        raise ValueError("the noise model needs at least one degree of freedom")
    half = dof / 2.0
    # log density of x = ln(s), s ~ chi-square(dof): half*x - e^x/2 - half*ln 2 - lgamma(half)
    mode = math.log(dof)  # of the density in x
    spread = math.sqrt(2.0 / dof) if dof > 2 else 1.5
    lo = mode - max(14.0 * spread, 4.0)
    hi = math.log(dof + 10.0 * math.sqrt(2.0 * dof) + 25.0)  # the chi-square's far upper tail
    x = np.linspace(lo, hi, CHI_POINTS)
    logd = half * x - np.exp(x) / 2.0 - half * math.log(2.0) - math.lgamma(half)
    w = np.exp(logd - logd.max())
    w /= w.sum()
    u = np.sqrt(np.exp(x) / dof)
    keep = w > 1e-12
    return tuple(u[keep]), tuple(w[keep] / w[keep].sum())


def t_cdf(x: float, dof: int) -> float:
    """P(Z / u <= x): Student's t distribution function with `dof` degrees of freedom."""
    us, ws = chi_quadrature(dof)
    return float(sum(w * norm_cdf(x * u) for u, w in zip(us, ws, strict=True)))


def t_quantile(p: float, dof: int) -> float:
    """The p-quantile of Student's t with `dof` degrees of freedom (by bisection on `t_cdf`)."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must be in (0, 1)")
    lo, hi = -1.0, 1.0
    while t_cdf(lo, dof) > p:
        lo *= 2.0
    while t_cdf(hi, dof) < p:
        hi *= 2.0
    for _ in range(60):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if t_cdf(mid, dof) < p else (lo, mid)
    return (lo + hi) / 2.0


@dataclass(frozen=True)
class Design:
    """The settings of the sequential test (see the module docstring)."""

    alpha: float = 0.05  # P(accept) for a child that changes nothing
    max_seeds: int = 4  # looks at most
    min_seeds: int = 2  # never accept on fewer paired seeds
    gain: float = 1.75  # the gain, in units of tau, the lines are shaped for
    futility: float = -0.5  # B: the log likelihood ratio at which a child is dropped

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 0.5:
            raise ValueError("alpha must be in (0, 0.5)")
        if self.max_seeds < self.min_seeds or self.min_seeds < 1:
            raise ValueError("need 1 <= min_seeds <= max_seeds")
        if self.gain <= 0 or self.futility >= 0:
            raise ValueError("gain must be > 0 and futility < 0")

    def lines(self, a: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """accept[k], reject[k] for k = 1..max_seeds (accept[k] unused below min_seeds)."""
        d = self.gain
        acc = tuple((a / d + k * d / 2.0) / math.sqrt(k) for k in range(1, self.max_seeds + 1))
        rej = tuple((self.futility / d + k * d / 2.0) / math.sqrt(k) for k in range(1, self.max_seeds + 1))
        return acc, rej


@dataclass(frozen=True)
class Boundaries:
    """The lines of one design at one noise-model dof, in t units (accept when t <= -accept[k-1])."""

    design: Design
    dof: int
    a: float  # the solved log likelihood ratio of the accept line
    accept: tuple[float, ...]
    reject: tuple[float, ...]

    def look(self, k: int, t: float) -> str:
        """'accept', 'reject' or 'continue' at look k (1-based) for the statistic t."""
        if k >= self.design.min_seeds and t <= -self.accept[k - 1]:
            return "accept"
        if k >= self.design.max_seeds or t >= -self.reject[k - 1]:
            return "reject"
        return "continue"


def _simpson(lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    n = max(3, int(math.ceil((hi - lo) / STEP)) | 1)  # odd
    x = np.linspace(lo, hi, n)
    w = np.ones(n)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return x, w * (x[1] - x[0]) / 3.0


def _walk(design: Design, acc: tuple[float, ...], rej: tuple[float, ...], delta: float, u: float):
    """P(accept) and E[looks] for a known ratio u = tau-hat/tau and a true mean step delta (tau units)."""
    k_max, m = design.max_seeds, design.min_seeds
    p_accept, looks = 0.0, 0.0
    x = w = f = None  # grid, weights and density of the walk among those still going
    for k in range(1, k_max + 1):
        root = math.sqrt(k)
        lo = -acc[k - 1] * u * root if k >= m else -math.inf
        hi = -rej[k - 1] * u * root if k < k_max else lo
        if x is None:
            alive = 1.0
            below = float(norm_cdf(lo - delta)) if k >= m else 0.0
        else:
            alive = float(np.dot(w, f))
            below = float(np.dot(w, f * norm_cdf(lo - x - delta))) if k >= m else 0.0
        looks += alive
        p_accept += below
        if k == k_max:
            break
        g_lo = max(lo, k * delta - TAIL * root)
        g_hi = min(hi, k * delta + TAIL * root)
        if g_hi <= g_lo:
            break  # nothing goes on
        y, wy = _simpson(g_lo, g_hi)
        if x is None:
            fy = _phi(y - delta)
        else:
            fy = (_phi(y[:, None] - x[None, :] - delta) * (w * f)[None, :]).sum(axis=1)
        x, w, f = y, wy, fy
    return p_accept, looks


def operating(bounds: Boundaries, delta: float, scale: float = 1.0) -> tuple[float, float]:
    """(P(accept), expected child seeds) when the paired differences have true mean `delta` (in
    units of their true sd) and the test's tau is `scale` times that sd (1: measured right; above
    1: cautious, as sqrt(2) * sigma is when runs on one seed correlate)."""
    acc = tuple(a * scale for a in bounds.accept)
    rej = tuple(r * scale for r in bounds.reject)
    us, ws = chi_quadrature(bounds.dof)
    p = n = 0.0
    for u, wt in zip(us, ws, strict=True):
        pa, looks = _walk(bounds.design, acc, rej, delta, u)
        p += wt * pa
        n += wt * looks
    return p, n


def _null_accept(design: Design, a: float, dof: int) -> float:
    """P(a child that changes nothing ever crosses the accept line), the reject line ignored."""
    acc, _ = design.lines(a)
    rej = tuple(-1e9 for _ in acc)
    us, ws = chi_quadrature(dof)
    return sum(wt * _walk(design, acc, rej, 0.0, u)[0] for u, wt in zip(us, ws, strict=True))


def boundaries(design: Design, dof: int) -> Boundaries:
    """The lines whose false-accept probability, the reject line ignored, is exactly `design.alpha`."""
    dof = int(dof) if dof <= DOF_STEPS[0] else max(d for d in DOF_STEPS if d <= dof)
    return _boundaries(design, dof)


@lru_cache(maxsize=512)
def _boundaries(design: Design, dof: int) -> Boundaries:
    lo, hi = design.futility + 1e-6, 2.0
    while _null_accept(design, hi, dof) > design.alpha:
        lo, hi = hi, hi * 2.0
    for _ in range(30):
        mid = (lo + hi) / 2.0
        lo, hi = (lo, mid) if _null_accept(design, mid, dof) <= design.alpha else (mid, hi)
    acc, rej = design.lines(hi)
    return Boundaries(design, dof, hi, acc, rej)
