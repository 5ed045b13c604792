"""Judging a child: the noise model, the paired sequential test, and the bound elites are ranked by.

Two runs of the same code with different seeds give different val_bpb. The engine judges a
child against its parent on paired seeds: the k-th evaluation of every individual uses seed
42 + k, so child and parent share the seed's data order and init, and what is compared is the
paired difference d_s = child_s - parent_s (lower val_bpb is better: d < 0 is a gain).

The noise model (`NoiseModel.build`) comes from replicates: accepted individuals (the baseline
first, then the elites as they gather seeds) that have two or more ok runs of the same code at
the same (profile, depth, budget, device kind). It has two parts:

- sigma: the seed-to-seed standard deviation of one genome, pooled over those replicates;
- tau: the standard deviation of one paired difference, measured on the same replicates where
  several genomes ran the same seeds: the additive fit value = genome + seed + noise takes out
  what a seed does to every genome (its data order and init), and tau = sqrt(2) * sd(noise).
  Runs on one seed share that part, so tau is usually below sqrt(2) * sigma; until the fit has
  `PAIRED_DOF` degrees of freedom, the test takes tau = sqrt(2) * sigma, which is exact for
  independent runs and cautious otherwise.

`judge` is the rule (see `evolve.sequential` for the arithmetic): after each paired seed, the
statistic t = mean(d) * sqrt(k) / tau is checked against an accept line and a reject line; a
child that changes nothing is accepted with probability at most `alpha` (exactly `alpha` if the
reject line were ignored; the reject line only stops losers early); a failed child seed
(crash, diverged, timeout, OOM, invalid) rejects the child; no child is accepted on fewer than
two ok paired seeds; at `max_seeds` the child is rejected unless it crossed the accept line.

`pessimistic` is the bound elites are ranked by: mean + q * sigma / sqrt(n), q the one-sided
(1 - alpha) quantile of Student's t with sigma's degrees of freedom, so an elite scored on few
seeds ranks below one whose mean is as good on many.

Everything here is pure: `evolve.judging` reads the store into these calls, and `analysis` calls
the same functions on its frames.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from .sequential import Design, boundaries, t_quantile

MIN_OK_SEEDS = 2  # a child is never accepted on fewer ok paired seeds
PARENT_FAILURES = 2  # parent runs that may fail on a paired seed before the child is dropped
PAIRED_DOF = 6  # the measured paired spread replaces sqrt(2) * sigma from this many degrees of freedom


@dataclass(frozen=True)
class Score:
    """The mean val_bpb of one individual over its ok evaluations at one depth (lower is better)."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Score:
        if not values:
            raise ValueError("a score needs at least one value")
        n = len(values)
        mean = math.fsum(values) / n
        # Sample standard deviation: the seed-to-seed spread, 0 for a single run.
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        return cls(mean=mean, std=std, n=n)

    def __str__(self) -> str:
        return f"{self.mean:.6f} ± {self.std:.6f} (n={self.n})"


def pooled_std(groups: Iterable[Sequence[float]]) -> float | None:
    """The pooled seed-to-seed standard deviation over groups of repeated runs of one code.

    sqrt(sum_i (n_i - 1) * s_i^2 / sum_i (n_i - 1)), over groups with n_i >= 2, where s_i is the
    sample standard deviation of group i. None when no group has two runs yet."""
    sum_sq, dof = _pooled(groups)
    return math.sqrt(sum_sq / dof) if dof else None


def _pooled(groups: Iterable[Sequence[float]]) -> tuple[float, int]:
    sum_sq, dof = 0.0, 0
    for values in groups:
        if len(values) < 2:
            continue
        mean = math.fsum(values) / len(values)
        sum_sq += math.fsum((v - mean) ** 2 for v in values)
        dof += len(values) - 1
    return sum_sq, dof


# --- the noise model ------------------------------------------------------------------------------


def _two_way(values: Mapping[str, Mapping[int, float]]) -> tuple[float, int, int]:
    """Residual sum of squares, its degrees of freedom and the genomes used, of the additive fit
    value[g, s] = genome_g + seed_s + noise over the runs of several genomes on shared seeds.

    Under that model (Gaussian noise), RSS / var(noise) is chi-square with N - G - S + C degrees
    of freedom (N runs, G genomes, S seeds, C connected groups), however unbalanced the table.
    A paired difference of two genomes on one seed has variance 2 var(noise): the seed's share
    cancels. Cells that fit exactly (a genome on one seed of the table, a seed one genome ran) carry
    no information and are left out first."""
    names = list(values)
    g = np.fromiter((i for i, n in enumerate(names) for _ in values[n]), dtype=np.int64)
    sd = np.fromiter((sd for n in names for sd in values[n]), dtype=np.int64)
    y = np.fromiter((v for n in names for v in values[n].values()), dtype=float)
    while len(y):  # drop genomes with one seed and seeds with one genome, until none is left
        _, g = np.unique(g, return_inverse=True)
        _, sd = np.unique(sd, return_inverse=True)
        keep = (np.bincount(g)[g] >= 2) & (np.bincount(sd)[sd] >= 2)
        if keep.all():
            break
        g, sd, y = g[keep], sd[keep], y[keep]
    if not len(y):
        return 0.0, 0, 0
    n_g, n_s = int(g.max()) + 1, int(sd.max()) + 1
    parent = list(range(n_g + n_s))  # connected groups: genomes linked by the seeds they share

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in set(zip(g.tolist(), (sd + n_g).tolist(), strict=True)):
        parent[root(a)] = root(b)
    groups = len({root(x) for x in range(n_g + n_s)})
    # least squares by alternating means (backfitting), which converges for a connected table
    count_g, count_s = np.bincount(g, minlength=n_g), np.bincount(sd, minlength=n_s)
    gm, sm = np.zeros(n_g), np.zeros(n_s)
    tol = 1e-13 * max(1e-12, float(np.abs(y).max()))
    for _ in range(2000):
        new_g = np.bincount(g, weights=y - sm[sd], minlength=n_g) / count_g
        new_s = np.bincount(sd, weights=y - new_g[g], minlength=n_s) / count_s
        moved = max(float(np.abs(new_g - gm).max()), float(np.abs(new_s - sm).max()))
        gm, sm = new_g, new_s
        if moved <= tol:
            break
    rss = float(np.sum((y - gm[g] - sm[sd]) ** 2))
    dof = len(y) - n_g - n_s + groups
    return (rss, dof, n_g) if dof > 0 else (0.0, 0, 0)


@dataclass(frozen=True)
class NoiseModel:
    """Seed-to-seed noise at one (profile, depth, budget, device kind), from replicates."""

    sigma: float | None  # one genome's seed-to-seed standard deviation
    sigma_dof: int
    genomes: int  # replicates (accepted individuals with two or more ok runs)
    pair_sd: float | None  # one paired difference's standard deviation, measured
    pair_dof: int
    pairs: int  # genomes in the table it was measured on

    @classmethod
    def build(cls, values: Mapping[str, Mapping[int, float]], accepted: Iterable[str]) -> NoiseModel:
        """From ok values per individual and seed (at one key) and the accepted individuals."""
        keep = {i: values[i] for i in dict.fromkeys(accepted) if i in values}
        groups = [list(v.values()) for v in keep.values()]
        s_sq, s_dof = _pooled(groups)
        r_sq, r_dof, genomes = _two_way(keep)
        return cls(
            sigma=math.sqrt(s_sq / s_dof) if s_dof else None,
            sigma_dof=s_dof,
            genomes=sum(1 for g in groups if len(g) >= 2),
            pair_sd=math.sqrt(2.0 * r_sq / r_dof) if r_dof else None,
            pair_dof=r_dof,
            pairs=genomes,
        )

    @property
    def paired(self) -> bool:
        """True when tau is the measured paired spread (with `PAIRED_DOF` degrees of freedom or more)."""
        return self.pair_sd is not None and self.pair_sd > 0 and self.pair_dof >= PAIRED_DOF

    def tau(self) -> tuple[float, int] | None:
        """(tau, its degrees of freedom) for the paired test; None before any replicate."""
        if self.paired:
            return float(self.pair_sd), self.pair_dof  # type: ignore[arg-type]
        if self.sigma is None or self.sigma <= 0:
            return None
        return math.sqrt(2.0) * self.sigma, self.sigma_dof

    def describe(self) -> str:
        if self.sigma is None:
            return "noise not measured yet"
        text = f"sigma {self.sigma:.5f} (dof {self.sigma_dof}, {self.genomes} genome(s))"
        if self.paired:
            return (
                text
                + f", paired tau {self.pair_sd:.5f} (dof {self.pair_dof}, {self.pairs} genomes on shared seeds)"
            )
        return text + ", tau = sqrt(2) x sigma"


# --- the rule -------------------------------------------------------------------------------------


class Action(str, Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    REEVALUATE = "reevaluate"  # run the child's next seed
    PAIR = "pair"  # run the parent on a seed the child has and it has not


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    pairs: tuple[int, ...] = ()  # the paired seeds the test used, in order
    diff: float | None = None  # mean of child - parent over them (< 0: the child is better)
    t: float | None = None
    accept_at: float | None = None  # accept when t <= this (at the look the decision was made)
    reject_at: float | None = None  # reject when t >= this
    parent_seeds: tuple[int, ...] = ()  # PAIR: the parent's seeds the test waits for


@dataclass(frozen=True)
class PromotionPolicy:
    """The promotion settings of a run: the baseline's seeds, the test, the champion's fresh seeds."""

    baseline_seeds: int = 5
    max_seeds: int = 4
    alpha: float = 0.05
    gain: float = 1.75  # the gain the test's lines are shaped for, in units of tau
    futility: float = -0.5  # how soon a child that does not look better is dropped (< 0)
    confirm_seeds: int = 3  # fresh seeds that confirm a new champion

    def __post_init__(self) -> None:
        if self.baseline_seeds < 2:
            raise ValueError("baseline_seeds must be >= 2: the noise model needs two runs of one code")
        if self.max_seeds < MIN_OK_SEEDS:
            raise ValueError(f"max_seeds must be >= {MIN_OK_SEEDS}: no child is accepted on fewer")
        if self.confirm_seeds < 1:
            raise ValueError("confirm_seeds must be >= 1")
        self.design  # noqa: B018 - checks alpha, gain and futility

    @property
    def design(self) -> Design:
        return Design(alpha=self.alpha, max_seeds=self.max_seeds, min_seeds=MIN_OK_SEEDS,
                      gain=self.gain, futility=self.futility)  # fmt: skip

    def baseline_pending(self, done: int) -> int:
        """How many more baseline evaluations to run when `done` have finished ok."""
        return max(0, self.baseline_seeds - done)

    def describe(self, model: NoiseModel | None = None) -> str:
        """The rule in words, with this run's noise (see `describe_rule`)."""
        return describe_rule(self, model)


def _seeds(seeds: Sequence[int]) -> str:
    return ",".join(str(s) for s in seeds)


def judge(
    child: Mapping[int, float | None],
    parent: Mapping[int, float | None],
    model: NoiseModel,
    policy: PromotionPolicy,
    *,
    failed: Mapping[int, str] | None = None,
) -> Decision:
    """The decision on a child from its runs and its parent's, seed by seed.

    `child` and `parent` map a seed to its val_bpb (None: the run on that seed failed); a seed
    missing from `parent` has not been run for it yet. `failed` names the status of a failed child
    seed, for the reason. The looks are replayed in seed order, so the same store always gives the
    same decision (after a resume too)."""
    failed = failed or {}
    bad = [s for s in sorted(child) if child[s] is None]
    if bad:
        status = failed.get(bad[0], "failed")
        return Decision(Action.REJECT, f"seed {bad[0]} {status}: a child that fails on a seed is not kept")
    noise = model.tau()
    if noise is None:
        return Decision(Action.REJECT, "no noise model: the baseline has fewer than two ok runs")
    tau, dof = noise
    bounds = boundaries(policy.design, dof)
    pairs: list[int] = []
    diffs: list[float] = []
    lost = 0
    for seed in sorted(child):
        if seed not in parent:
            return Decision(Action.PAIR, f"waits for its parent's run on seed {seed}", tuple(pairs),
                            parent_seeds=(seed,))  # fmt: skip
        if parent[seed] is None:
            lost += 1  # the parent failed on this seed: no pair; the child goes on to the next
            if lost > PARENT_FAILURES:
                return Decision(
                    Action.REJECT, f"its parent failed on {lost} of its seeds; no fair comparison left"
                )
            continue
        pairs.append(seed)
        diffs.append(float(child[seed]) - float(parent[seed]))  # type: ignore[arg-type]
        k = len(diffs)
        mean = math.fsum(diffs) / k
        t = mean * math.sqrt(k) / tau
        verdict = bounds.look(k, t)
        if verdict == "continue":
            continue
        acc, rej = None, -bounds.reject[k - 1]  # no accept line before MIN_OK_SEEDS
        if k >= MIN_OK_SEEDS:
            acc = -bounds.accept[k - 1]
            if k >= policy.max_seeds:
                rej = acc  # the last look: whatever is not accepted is rejected
        lines = f"accept at <= {acc:+.2f}" if acc is not None else f"no accept before {MIN_OK_SEEDS} seeds"
        text = (f"paired on seed {_seeds(pairs)}: child - parent {mean:+.6f}, t {t:+.2f} "
                f"({lines}, reject at >= {rej:+.2f}; tau {tau:.5f}, dof {dof})")  # fmt: skip
        if verdict == "accept":
            why = f"better than its parent at alpha {policy.alpha:g}: {text}"
            return Decision(Action.ACCEPT, why, tuple(pairs), mean, t, acc, rej)
        last = f" after its last seed ({policy.max_seeds})" if k >= policy.max_seeds else ""
        return Decision(Action.REJECT, f"not shown better{last}: {text}", tuple(pairs), mean, t, acc, rej)
    k = len(diffs)
    if k == 0:
        return Decision(Action.REEVALUATE, "no paired seed yet")
    mean = math.fsum(diffs) / k
    t = mean * math.sqrt(k) / tau
    rej = -bounds.reject[k - 1]
    if k < MIN_OK_SEEDS:  # no accept line yet: say where it will be
        acc = -bounds.accept[MIN_OK_SEEDS - 1]
        lines = f"no accept before {MIN_OK_SEEDS} seeds, then at <= {acc:+.2f}; reject at >= {rej:+.2f}"
    else:
        acc = -bounds.accept[k - 1]
        lines = f"accept at <= {acc:+.2f}, reject at >= {rej:+.2f}"
    return Decision(
        Action.REEVALUATE,
        f"undecided on seed {_seeds(pairs)}: child - parent {mean:+.6f}, t {t:+.2f} ({lines}; tau {tau:.5f}, dof {dof})",
        tuple(pairs), mean, t, acc, rej,
    )  # fmt: skip


def paired_difference(
    child: Mapping[int, float | None], parent: Mapping[int, float | None]
) -> tuple[float, int] | None:
    """Mean of child - parent over the seeds both ran ok, and how many; None without one."""
    diffs = [float(c) - float(parent[s]) for s, c in child.items()  # type: ignore[arg-type]
             if c is not None and parent.get(s) is not None]  # fmt: skip
    return (math.fsum(diffs) / len(diffs), len(diffs)) if diffs else None


def pessimistic(score: Score, model: NoiseModel, alpha: float = 0.05) -> float:
    """The (1 - alpha) upper confidence bound of an individual's mean val_bpb (lower is better):
    the score elites are ranked by. Without a noise model it is the mean."""
    return float(pessimistic_many(np.array([score.mean]), np.array([score.n]), model, alpha)[0])


def pessimistic_many(means: np.ndarray, ns: np.ndarray, model: NoiseModel, alpha: float = 0.05) -> np.ndarray:
    """`pessimistic` for many individuals at once (means and seed counts, one noise model)."""
    means = np.asarray(means, dtype=float)
    if model.sigma is None or model.sigma_dof < 1:
        return means.copy()
    q = _quantile(1.0 - alpha, model.sigma_dof)
    with np.errstate(divide="ignore", invalid="ignore"):
        return means + q * model.sigma / np.sqrt(np.asarray(ns, dtype=float))


_QUANTILES: dict[tuple[float, int], float] = {}


def _quantile(p: float, dof: int) -> float:
    key = (round(p, 6), min(dof, 10_000))
    if key not in _QUANTILES:
        _QUANTILES[key] = t_quantile(*key)
    return _QUANTILES[key]


def describe_rule(policy: PromotionPolicy, model: NoiseModel | None = None) -> str:
    """`judge`'s rule in words, with this run's numbers: what the LLM prompts tell a researcher.

    Keep it next to `judge` and change both together: it is the only description of the rule."""
    noise = model.tau() if model is not None else None
    if noise is None:
        need = "how big a gain that takes follows from the noise, not measured yet"
    else:
        tau, dof = noise
        bounds = boundaries(policy.design, dof)
        looks = range(MIN_OK_SEEDS, policy.max_seeds + 1)
        need = "with this run's noise, a mean gain of at least " + ", ".join(
            f"{bounds.accept[k - 1] * tau / math.sqrt(k):.4f} val_bpb over {k} seeds" for k in looks
        )
        if bounds.reject[0] > 0:
            need += f"; after one seed it must be ahead by {bounds.reject[0] * tau:.4f} to go on"
    return (
        "A child is trained seed by seed on its parent's seeds (for a crossover, the better of its two "
        "parents; a seed the parent lacks is run for it) and judged after each seed on the paired "
        f"differences child - parent, by a sequential one-sided test at alpha {policy.alpha:g}: a child "
        f"that changes nothing is kept at most {policy.alpha:.0%} of the time. It is kept only when shown "
        f"better on {MIN_OK_SEEDS} to {policy.max_seeds} seeds ({need}). One that does not look better "
        "is dropped at once, and so is one that crashes, diverges or times out on any seed. The best of "
        f"the run is confirmed on {policy.confirm_seeds} fresh seeds before it is called the champion."
    )
