#!/usr/bin/env python3
"""Golden fixtures for crates/tcc-metrics, computed with numpy + scipy.

Writes small JSON files to crates/tcc-metrics/tests/fixtures/:

- frechet.json: pairs of feature sets (rows = samples, generated exactly from
  a few parameters, see `features`) with numpy's mean and unbiased covariance
  (np.cov(rowvar=False)) and the Fréchet distance by the pytorch-fid / ADM
  formula, whose matrix square root is scipy.linalg.sqrtm.
- wilcoxon.json: paired samples with scipy.stats.wilcoxon's two-sided
  statistic and p-value (exact, or normal approximation with tie and
  continuity correction).
- errors.json: image pairs with relative L2 and PSNR computed by numpy.

Other inputs are rounded to a few decimals so the fixtures stay small and
the decimal text parses to the same f64 in Python and Rust.

Run from the repository root:  python3 tools/golden/metrics.py
"""

import json
import os

import numpy as np
import scipy
from scipy import linalg, stats

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "tcc-metrics", "tests", "fixtures")


def fid_scipy(mu1, s1, mu2, s2, eps=1e-6):
    """pytorch-fid's calculate_frechet_distance (also the ADM evaluator's)."""
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError("imaginary component %g" % np.max(np.abs(covmean.imag)))
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


MASK = (1 << 64) - 1


def splitmix64(x):
    """One splitmix64 output for input x (the test re-implements it)."""
    x = (x + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def small_ints(seed, count):
    """`count` integers in [-64, 64] from a splitmix64 stream."""
    return np.array([(splitmix64(seed * 1_000_003 + i) >> 33) % 129 - 64 for i in range(count)],
                    dtype=np.float64)


def features(seed, mix_seed, n, d, rank, scale, shift):
    """n rows of correlated features, x = z @ a * scale + shift.

    z comes from `seed`, the mixing matrix a from `mix_seed`: two sets with
    the same mix_seed, rank, scale and shift share one distribution.

    z (n x rank) and a (rank x d) hold multiples of 1/64; with power-of-two
    scales and shifts that are multiples of 1/8 every product and sum is
    exact in f64, so the Rust test regenerates bit-identical data from the
    parameters alone and the fixture does not have to carry it.
    """
    z = small_ints(seed, n * rank).reshape(n, rank) / 64.0
    a = small_ints(mix_seed, rank * d).reshape(rank, d) / 64.0
    return z @ a * scale + shift


KEYS = ["seed", "mix_seed", "n", "rank", "scale", "shift"]


def frechet_cases():
    specs = [
        # name, d, (seed, mix_seed, n, rank, scale, shift) for set 1 and set 2
        ("d4_full", 4, (1, 2, 50, 4, 1.0, 0.0), (3, 4, 60, 4, 2.0, 0.25)),
        ("d16_full", 16, (5, 6, 120, 16, 1.0, 1.0), (7, 8, 90, 16, 0.5, -0.5)),
        ("d64_full", 64, (9, 10, 200, 64, 1.0, 0.0), (11, 12, 180, 64, 2.0, 0.125)),
        # Same distribution, different samples: a small distance made of large terms.
        ("d64_same_distribution", 64, (13, 14, 300, 64, 1.0, 0.0), (15, 14, 300, 64, 1.0, 0.0)),
        ("d64_rank_deficient", 64, (17, 18, 40, 64, 1.0, 0.0), (19, 20, 30, 64, 2.0, 0.5)),
        ("d64_mixed_rank", 64, (21, 22, 150, 64, 1.0, 0.0), (23, 24, 20, 64, 0.5, -0.25)),
        ("d32_low_rank_latent", 32, (25, 26, 100, 8, 2.0, 3.0), (27, 28, 100, 8, 2.0, 2.5)),
        ("d16_identical", 16, (29, 30, 80, 16, 1.0, 0.0), (29, 30, 80, 16, 1.0, 0.0)),
    ]
    cases = []
    for name, d, p1, p2 in specs:
        x1 = features(p1[0], p1[1], p1[2], d, *p1[3:])
        x2 = features(p2[0], p2[1], p2[2], d, *p2[3:])
        mu1, mu2 = x1.mean(0), x2.mean(0)
        s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
        case = {
            "name": name,
            "dim": d,
            "set1": dict(zip(KEYS, p1)),
            "set2": dict(zip(KEYS, p2)),
            "mean1": [float(v) for v in mu1],
            "fd": fid_scipy(mu1, s1, mu2, s2),
        }
        if d <= 16:
            case["cov1"] = [float(v) for v in s1.ravel()]
        cases.append(case)
    return cases


def wilcoxon_cases(rng):
    cases = []

    def no_ties(x, y):
        a = np.abs(np.asarray(x) - np.asarray(y))
        return bool(np.all(a > 0) and len(np.unique(a)) == len(a))

    def add(name, x, y, method):
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        if method == "exact":
            assert no_ties(x, y), name
            r = stats.wilcoxon(x, y, alternative="two-sided", method="exact")
        else:
            r = stats.wilcoxon(x, y, alternative="two-sided", method="asymptotic",
                               correction=True, zero_method="wilcox")
        cases.append({"name": name, "x": [float(v) for v in x], "y": [float(v) for v in y],
                      "method": method, "statistic": float(r.statistic), "pvalue": float(r.pvalue)})

    for n in (5, 10, 20, 25, 50):
        while True:  # the exact test needs distinct non-zero |x - y|
            x = np.round(rng.standard_normal(n), 4)
            y = np.round(x - 0.4 + rng.standard_normal(n), 4)
            if no_ties(x, y):
                break
        add(f"exact_n{n}", x, y, "exact")
    x = np.round(rng.standard_normal(12), 4)
    add("exact_n12_null", x, np.round(x + 0.01 * rng.standard_normal(12), 4), "exact")
    # All differences of one sign: the smallest possible p-value.
    x = np.arange(8, dtype=float)
    add("exact_n8_one_sided", x + 1.0 + np.arange(8) * 0.1, x, "exact")
    for n in (51, 80, 300):
        x = np.round(rng.standard_normal(n), 4)
        y = np.round(x + 0.15 + rng.standard_normal(n), 4)
        add(f"normal_n{n}", x, y, "normal")
    # Ties among |d| and zero differences force the normal approximation.
    x = rng.integers(0, 6, 30).astype(float)
    y = rng.integers(0, 6, 30).astype(float)
    add("normal_ties_zeros_n30", x, y, "normal")
    x = np.round(rng.standard_normal(15), 1)
    add("normal_ties_n15", x, np.round(x + np.round(rng.standard_normal(15), 1) + 0.3, 1), "normal")
    return cases


def error_cases(rng):
    cases = []
    for name, lo, hi, shape, noise in [
        ("unit_range", 0.0, 1.0, (3, 8, 8), 0.05),
        ("signed_range", -1.0, 1.0, (3, 8, 8), 0.1),
        ("signed_range_small_noise", -1.0, 1.0, (3, 16, 16), 0.003),
    ]:
        b = np.round(rng.uniform(lo, hi, shape), 4)
        a = np.round(np.clip(b + noise * rng.standard_normal(shape), lo, hi), 4)
        mse = np.mean((a - b) ** 2)
        cases.append({
            "name": name, "a": [float(v) for v in a.ravel()], "b": [float(v) for v in b.ravel()],
            "data_range": hi - lo,
            "rel_l2": float(np.linalg.norm(a - b) / np.linalg.norm(b)),
            "psnr": float(10 * np.log10((hi - lo) ** 2 / mse)),
            "cosine": float(a.ravel() @ b.ravel() / (np.linalg.norm(a) * np.linalg.norm(b))),
        })
    return cases


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20240605)
    meta = {"generator": "tools/golden/metrics.py", "numpy": np.__version__, "scipy": scipy.__version__}
    for name, cases in [("frechet", frechet_cases()), ("wilcoxon", wilcoxon_cases(rng)),
                        ("errors", error_cases(rng))]:
        path = os.path.join(OUT, name + ".json")
        with open(path, "w") as f:
            json.dump({"meta": meta, "cases": cases}, f, separators=(",", ":"))
            f.write("\n")
        print(f"wrote {path} ({os.path.getsize(path)} bytes, {len(cases)} cases)")


if __name__ == "__main__":
    main()
