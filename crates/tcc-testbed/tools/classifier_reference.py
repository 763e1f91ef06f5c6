"""Independent PyTorch reference for the testbed classifiers' forward pass.

Reads a testbed's classifier weights (tiny: assets/classifier.safetensors;
shapes160: assets/shapes160/classifier.safetensors), runs the network with
torch.nn.functional (conv2d, padding 1; ReLU; global mean; linear) on 8
seeded random inputs in [-1, 1] (tiny: images [8, 3, 32, 32]; shapes160:
latents [8, 4, 32, 32], scaled to [-2, 2], the range of the Haar latents'
first channel), and writes
crates/tcc-testbed/tests/fixtures/classifier_reference[_shapes160].safetensors
with the inputs, features, logits and the SHA-256 of the weights file they
belong to.

Rerun after retraining a classifier:

    python3 crates/tcc-testbed/tools/classifier_reference.py [--testbed shapes160]
"""

import argparse

import hashlib
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

CRATE = pathlib.Path(__file__).resolve().parents[1]
# Per testbed: weights, fixture, input shape and scale, and the strides of
# conv0..conv3 (`ClassifierArch` in src/classifier.rs).
TESTBEDS = {
    "tiny": ("classifier.safetensors", "classifier_reference.safetensors", (8, 3, 32, 32), 1.0, [2, 2, 1, 2]),
    "shapes160": ("shapes160/classifier.safetensors", "classifier_reference_shapes160.safetensors",
                  (8, 4, 32, 32), 2.0, [2, 2, 1, 2]),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--testbed", choices=TESTBEDS, default="tiny")
    weights, fixture, shape, scale, strides = TESTBEDS[ap.parse_args().testbed]
    WEIGHTS = CRATE / "assets" / weights
    OUT = CRATE / "tests" / "fixtures" / fixture
    w = {k: v.double() for k, v in load_file(str(WEIGHTS)).items()}
    rng = np.random.default_rng(0)
    x = torch.from_numpy((scale * rng.uniform(-1.0, 1.0, size=shape)).astype(np.float32))
    h = x.double()
    for i, stride in enumerate(strides):
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
