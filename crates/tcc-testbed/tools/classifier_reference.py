"""Independent PyTorch reference for the testbed classifier's forward pass.

Reads crates/tcc-testbed/assets/classifier.safetensors, runs the network
with torch.nn.functional (conv2d, padding 1; ReLU; global mean; linear) on
8 seeded random images in [-1, 1], and writes
crates/tcc-testbed/tests/fixtures/classifier_reference.safetensors with the
inputs, features, logits and the SHA-256 of the weights file they belong to.

Rerun after retraining the classifier:

    python3 crates/tcc-testbed/tools/classifier_reference.py
"""

import hashlib
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

CRATE = pathlib.Path(__file__).resolve().parents[1]
WEIGHTS = CRATE / "assets" / "classifier.safetensors"
OUT = CRATE / "tests" / "fixtures" / "classifier_reference.safetensors"
# Strides of conv0..conv3 (`CONVS` in src/classifier.rs).
STRIDES = [2, 2, 1, 2]


def main() -> None:
    w = {k: v.double() for k, v in load_file(str(WEIGHTS)).items()}
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(-1.0, 1.0, size=(8, 3, 32, 32)).astype(np.float32))
    h = x.double()
    for i, stride in enumerate(STRIDES):
        h = F.relu(F.conv2d(h, w[f"conv{i}.weight"], w[f"conv{i}.bias"], stride=stride, padding=1))
    features = h.mean(dim=(2, 3))
    logits = F.linear(features, w["head.weight"], w["head.bias"])
    sha = hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {"images": x, "features": features.float(), "logits": logits.float()},
        str(OUT),
        metadata={"weights_sha256": sha, "reference": f"torch {torch.__version__}, float64"},
    )
    print(f"wrote {OUT} (weights sha256 {sha})")


if __name__ == "__main__":
    main()
