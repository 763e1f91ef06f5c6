"""Reference fits for tcc-calib's prior fitting, from numpy/scipy.

Writes crates/tcc-calib/tests/fixtures/procrustes.json: paired row
matrices A (reference) and B (accelerated) and, for each prior kind, the
fit computed with scipy.linalg.orthogonal_procrustes (an implementation
independent of ours) and the residual loss sum_i ||a_i - corr(b_i)||^2.

Run: python3 tools/golden/procrustes.py
"""

import json
import pathlib

import numpy as np
from scipy.linalg import orthogonal_procrustes

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/tcc-calib/tests/fixtures/procrustes.json"


def fit(A, B, kind):
    mu_a, mu_b = A.mean(0), B.mean(0)
    Ac, Bc = A - mu_a, B - mu_b
    d = A.shape[1]
    if kind == "shift":
        R, s = np.eye(d), 1.0
    elif kind == "scale-shift":
        R, s = np.eye(d), float((Ac * Bc).sum() / (Bc**2).sum())
    else:
        # orthogonal_procrustes(Bc, Ac) minimises ||Bc R - Ac||_F and returns
        # the sum of singular values of Bc^T Ac as `scale`.
        R, scale = orthogonal_procrustes(Bc, Ac)
        s = float(scale / (Bc**2).sum())
    corr = mu_a + s * (B - mu_b) @ R
    loss = float(((A - corr) ** 2).sum())
    return {"R": R.tolist(), "s": s, "mu_a": mu_a.tolist(), "mu_b": mu_b.tolist(), "loss": loss}


def case(rng, n, d, name):
    A = rng.standard_normal((n, d))
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    B = 0.7 * A @ Q + 0.2 + 0.05 * rng.standard_normal((n, d))
    return {
        "name": name,
        "A": A.tolist(),
        "B": B.tolist(),
        "loss_before": float(((A - B) ** 2).sum()),
        "fits": {k: fit(A, B, k) for k in ["procrustes", "scale-shift", "shift"]},
    }


def main():
    rng = np.random.default_rng(20261125)
    cases = [case(rng, 40, 8, "n40_d8"), case(rng, 12, 16, "n12_d16_rank_deficient")]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"generator": "numpy+scipy orthogonal_procrustes", "cases": cases}))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
