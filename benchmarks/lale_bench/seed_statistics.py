"""Statistics of scores over training seeds: mean, sample std, Student-t intervals and paired comparisons.

Seeds are few (3 to 10), so intervals use the t distribution with n - 1 degrees of freedom, not the normal one.
Two models trained with the same seed see the same data order and augmentation; their difference per seed is a
paired sample, which removes the noise the seed shares between them.
"""

import math
import statistics

from scipy import stats


def seed_summary(values: list[float], confidence: float = 0.95) -> dict:
    """Mean, sample standard deviation and the two-sided `confidence` t-interval of the mean."""
    n = len(values)
    if n < 2:
        raise ValueError(f"an interval needs at least 2 seeds, got {n}")
    mean = statistics.fmean(values)
    std = statistics.stdev(values)
    half_width = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return {
        "n": n,
        "mean": mean,
        "std": std,
        "ci_low": mean - half_width,
        "ci_high": mean + half_width,
        "confidence": confidence,
        "values": list(values),
    }


def paired_comparison(first: dict, second: dict, confidence: float = 0.95) -> dict:
    """`first` minus `second` over the seeds both have (dicts seed -> score): mean difference, its t-interval, the
    paired t-test's two-sided p-value, and whether the interval excludes zero."""
    seeds = sorted(set(first) & set(second))
    if len(seeds) < 2:
        raise ValueError(f"a paired comparison needs at least 2 common seeds, got {seeds}")
    differences = [first[seed] - second[seed] for seed in seeds]
    summary = seed_summary(differences, confidence)
    if summary["std"] == 0:
        p_value = 0.0 if summary["mean"] != 0 else 1.0
    else:
        t_statistic = summary["mean"] / (summary["std"] / math.sqrt(len(seeds)))
        p_value = float(2 * stats.t.sf(abs(t_statistic), len(seeds) - 1))
    return {
        **summary,
        "seeds": seeds,
        "p_value": p_value,
        "excludes_zero": bool(summary["ci_low"] > 0 or summary["ci_high"] < 0),
    }
