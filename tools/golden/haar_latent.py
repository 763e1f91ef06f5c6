"""Reference for tcc-data's latent map (`haar_fold`), from numpy.

Folds seeded random images [2, 2, 6, 8] (two channels, to pin the channel
order) with an implementation written from the documented formula, by
reshaping rather than by loops, in float64: each 2x2 block a b / c d of
input channel k gives output channels 4k..4k+4 =
(a+b+c+d)/2, (a+b-c-d)/2, (a-b+c-d)/2, (a-b-c+d)/2.

Writes crates/tcc-data/tests/fixtures/haar_latent.safetensors (`images`,
`latents`, float32). Run: python3 tools/golden/haar_latent.py
"""

import pathlib

import numpy as np
from safetensors.numpy import save_file

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/tcc-data/tests/fixtures/haar_latent.safetensors"


def haar_fold(x):
    n, c, h, w = x.shape
    blocks = x.astype(np.float64).reshape(n, c, h // 2, 2, w // 2, 2)
    a, b = blocks[:, :, :, 0, :, 0], blocks[:, :, :, 0, :, 1]
    cc, d = blocks[:, :, :, 1, :, 0], blocks[:, :, :, 1, :, 1]
    out = np.stack([a + b + cc + d, a + b - cc - d, a - b + cc - d, a - b - cc + d], axis=2) / 2
    return out.reshape(n, 4 * c, h // 2, w // 2)


def main():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(2, 2, 6, 8)).astype(np.float32)
    latents = haar_fold(images).astype(np.float32)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file({"images": images, "latents": latents}, str(OUT), metadata={"reference": f"numpy {np.__version__}, float64"})
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
