#!/usr/bin/env python3
"""Golden fixture for TeaCache's rescale fit (tcc_core::Polynomial::fit),
computed with numpy.polyfit (least squares on the column-scaled Vandermonde
matrix) and numpy.polyval.

Writes crates/tcc-core/tests/fixtures/polyfit.json: a few sets of (x, y)
pairs shaped like `tcc teacache-fit`'s (x: relative L1 changes of a
modulated input, 0.005 to 0.4; y: of a model output, a smooth increasing
function of x plus seeded noise), and for each degree 1 to 4 numpy's
coefficients (highest power first) and its fitted values at x. One set is
the exact cubic 2x^3 - x^2 + 0.5x + 0.01 (a degree-3 and degree-4 fit must
recover it), one has only as many distinct x as a degree-2 fit needs.

Inputs are rounded to 9 decimals so the decimal text parses to the same
f64 in Python and Rust.

Run from the repository root:  python3 tools/golden/teacache_polyfit.py
"""

import json
import os

import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "tcc-core", "tests", "fixtures")


def case(name, x, y, degrees):
    x = np.round(np.asarray(x, dtype=np.float64), 9)
    y = np.round(np.asarray(y, dtype=np.float64), 9)
    fits = []
    for d in degrees:
        c = np.polyfit(x, y, d)
        fits.append({"degree": d, "coeffs": c.tolist(), "fitted": np.polyval(c, x).tolist()})
    return {"name": name, "x": x.tolist(), "y": y.tolist(), "fits": fits}


def main():
    rng = np.random.default_rng(20260516)
    cases = []
    # Like a 20-step run: changes shrink, then grow towards the end.
    x = np.concatenate([np.linspace(0.02, 0.005, 8), np.linspace(0.006, 0.4, 11)])
    y = 0.3 * x + 4.0 * x**2 + 0.002 + rng.normal(0.0, 0.002, x.shape)
    cases.append(case("run-like", x, y, [1, 2, 3, 4]))
    # Several batches of 12 steps, noisier.
    x = rng.uniform(0.01, 0.3, 48)
    y = np.sqrt(x) * 0.2 + rng.normal(0.0, 0.01, x.shape)
    cases.append(case("noisy", x, y, [1, 2, 3, 4]))
    # An exact cubic.
    x = np.linspace(0.01, 0.35, 9)
    y = 2 * x**3 - x**2 + 0.5 * x + 0.01
    cases.append(case("exact-cubic", x, y, [3, 4]))
    # Three distinct x (repeated): enough for degree 2, not for 3.
    x = np.array([0.05, 0.1, 0.2, 0.05, 0.1, 0.2])
    y = np.array([0.011, 0.024, 0.05, 0.013, 0.022, 0.052])
    cases.append(case("three-points", x, y, [1, 2]))
    os.makedirs(OUT, exist_ok=True)
    doc = {"numpy": np.__version__, "cases": cases}
    with open(os.path.join(OUT, "polyfit.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
