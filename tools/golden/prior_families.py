"""Reference fits of the prior families with a linear map (affine, diagonal,
lowrank), from numpy/scipy least squares.

Writes crates/tcc-calib/tests/fixtures/prior_families.json: paired row
matrices A (reference) and B (accelerated) and, per (kind, ridge, rank), the
map W, the means and the loss sum_i ||a_i - corr(b_i)||^2 with
corr(b) = mu_a + (b - mu_b) W. Each fit is computed here from the rows with a
formulation independent of tcc's (which works from the sums B^T B, B^T A):

- affine: the ridge problem min ||Ac - Bc W||^2 + mu ||W - I||^2 solved as
  one stacked least-squares system [Bc; sqrt(mu) I] W = [Ac; sqrt(mu) I]
  (numpy.linalg.lstsq), mu = ridge * ||Bc||^2 / D;
- diagonal: per channel, scipy.stats.linregress of a_j on b_j;
- lowrank: reduced-rank regression of the residual Ac - Bc on Bc: the
  (ridge) regression Delta, then the fitted values Bc Delta truncated to
  their top-r right singular vectors (numpy.linalg.svd).

Run: python3 tools/golden/prior_families.py
"""

import json
import pathlib

import numpy as np
from scipy.stats import linregress

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/tcc-calib/tests/fixtures/prior_families.json"


def ridge_delta(Ac, Bc, ridge):
    d = Ac.shape[1]
    mu = ridge * float((Bc**2).sum()) / d
    X = np.vstack([Bc, np.sqrt(mu) * np.eye(d)])
    Y = np.vstack([Ac - Bc, np.zeros((d, d))])
    delta, *_ = np.linalg.lstsq(X, Y, rcond=None)
    return delta


def fit(A, B, kind, ridge, rank):
    mu_a, mu_b = A.mean(0), B.mean(0)
    Ac, Bc = A - mu_a, B - mu_b
    d = A.shape[1]
    if kind == "affine":
        W = np.eye(d) + ridge_delta(Ac, Bc, ridge)
    elif kind == "diagonal":
        W = np.eye(d)
        for j in range(d):
            W[j, j] = linregress(B[:, j], A[:, j]).slope
    elif kind == "lowrank":
        delta = ridge_delta(Ac, Bc, ridge)
        _, _, vt = np.linalg.svd(Bc @ delta)
        top = vt[:rank].T
        W = np.eye(d) + delta @ top @ top.T
    else:
        raise ValueError(kind)
    corr = mu_a + (B - mu_b) @ W
    loss = float(((A - corr) ** 2).sum())
    return {
        "kind": kind,
        "ridge": ridge,
        "rank": rank,
        "W": W.tolist(),
        "mu_a": mu_a.tolist(),
        "mu_b": mu_b.tolist(),
        "loss": loss,
    }


def case(rng, n, d, name, fits):
    A = rng.standard_normal((n, d))
    M = np.eye(d) + 0.3 * rng.standard_normal((d, d))
    scales = np.linspace(0.5, 1.5, d)
    B = (A @ M) * scales + 0.2 + 0.05 * rng.standard_normal((n, d))
    return {
        "name": name,
        "A": A.tolist(),
        "B": B.tolist(),
        "loss_before": float(((A - B) ** 2).sum()),
        "fits": [fit(A, B, k, g, r) for (k, g, r) in fits],
    }


def main():
    rng = np.random.default_rng(20261127)
    well = [
        ("affine", 0.0, 0),
        ("affine", 0.01, 0),
        ("affine", 1.0, 0),
        ("diagonal", 0.0, 0),
        ("lowrank", 0.0, 2),
        ("lowrank", 0.0, 5),
        ("lowrank", 0.1, 3),
    ]
    # Fewer rows than dimensions: only ridge > 0 is determined.
    under = [("affine", 0.1, 0), ("affine", 10.0, 0), ("lowrank", 0.1, 2), ("diagonal", 0.0, 0)]
    cases = [case(rng, 200, 8, "n200_d8", well), case(rng, 6, 10, "n6_d10_under_determined", under)]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"generator": "numpy lstsq/svd + scipy linregress", "cases": cases}))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
