"""The sequential test's arithmetic: Student's t, boundaries with an exact error rate, the operating curve."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from evolve.sequential import Design, boundaries, chi_quadrature, operating, t_cdf, t_quantile


@pytest.mark.parametrize(
    ("p", "dof", "expected"),
    [(0.95, 1, 6.3138), (0.95, 4, 2.1318), (0.975, 10, 2.2281), (0.95, 30, 1.6973), (0.95, 10_000, 1.6449)],
)
def test_t_quantiles_match_the_tables(p, dof, expected):
    assert t_quantile(p, dof) == pytest.approx(expected, abs=2e-3)
    assert t_cdf(expected, dof) == pytest.approx(p, abs=5e-4)


def test_the_chi_quadrature_is_a_probability_law_with_mean_one():
    for dof in (1, 2, 4, 30):
        us, ws = chi_quadrature(dof)
        assert sum(ws) == pytest.approx(1.0)
        assert sum(w * u * u for u, w in zip(us, ws, strict=True)) == pytest.approx(
            1.0, abs=2e-3
        )  # E[chi2/dof]


def test_boundaries_are_solved_for_exactly_alpha_without_the_reject_line_and_at_most_alpha_with_it():
    design = Design()
    few, many = boundaries(design, 4), boundaries(design, 60)
    for b in (few, many):
        ignored = replace(b, reject=tuple(-1e9 for _ in b.reject))  # the reject line not obeyed
        assert operating(ignored, 0.0)[0] == pytest.approx(design.alpha, abs=1e-4)
        p_null, seeds = operating(b, 0.0)
        assert 0.6 * design.alpha < p_null < design.alpha
        assert 1.0 <= seeds <= design.max_seeds
    assert few.a > many.a  # a rougher noise estimate needs a stricter accept line
    assert all(r < a for a, r in zip(few.accept, few.reject, strict=True))
    stricter = boundaries(Design(alpha=0.01), 60)
    assert operating(stricter, 0.0)[0] < 0.01 and stricter.a > many.a


def _simulate(b, delta: float, scale: float, dof: int, n: int, rng) -> tuple[float, float]:
    """Monte Carlo of the same rule: paired differences N(delta, 1), tau-hat = scale * u."""
    k_max = b.design.max_seeds
    d = rng.standard_normal((n, k_max)) + delta
    u = np.sqrt(rng.chisquare(dof, n) / dof) * scale
    t = np.cumsum(d, axis=1) / np.sqrt(np.arange(1, k_max + 1)) / u[:, None]
    alive = np.ones(n, bool)
    accepted = np.zeros(n, bool)
    looks = np.zeros(n)
    for k in range(k_max):
        looks[alive] += 1
        go = np.array([b.look(k + 1, x) for x in t[:, k]])
        accepted |= alive & (go == "accept")
        alive &= go == "continue"
    return accepted.mean(), looks.mean()


def test_the_numeric_operating_curve_agrees_with_a_simulation_of_the_rule():
    rng = np.random.default_rng(7)
    b = boundaries(Design(), 8)
    for delta, scale in ((0.0, 1.0), (0.5, 1.0), (-1.5, 1.0), (0.0, math.sqrt(2.0))):
        p, seeds = operating(b, delta, scale)
        sim_p, sim_seeds = _simulate(b, delta, scale, 8, 40_000, rng)
        assert sim_p == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / 40_000) + 1e-3)
        assert sim_seeds == pytest.approx(seeds, abs=0.02)


def test_a_design_refuses_settings_without_a_meaning():
    for bad in (
        dict(alpha=0.0),
        dict(alpha=0.6),
        dict(max_seeds=1, min_seeds=2),
        dict(gain=0),
        dict(futility=0.1),
    ):
        with pytest.raises(ValueError):
            Design(**bad)
