"""Installs the shapes160 DiT weights that tools/train/shapes160_gpu.sh
trained, as the embedded model's assets:

    python3 tools/train/shapes160_install.py <files_at>/dit

Reads the run's diffusers folder (sharded or single-file safetensors,
config.json, training.json), checks that its config is the committed
crates/tcc-testbed/assets/shapes160/dit/config.json (all architecture
fields), that every tensor is finite and that the merged file stays under
20 MB, and writes diffusion_pytorch_model.safetensors (one file, the
layout tcc embeds) and training.json into that folder, each atomically.
Rebuild tcc afterwards: build.rs embeds the weights once they exist.
Requires numpy and safetensors from PyPI.
"""

import json
import os
import pathlib
import sys
import tempfile

import numpy as np
from safetensors.numpy import load_file, save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEST = ROOT / "crates/tcc-testbed/assets/shapes160/dit"
MAX_BYTES = 20_000_000
# Fields that do not describe the architecture.
IGNORED = {"_name_or_path", "_diffusers_version"}


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def write_atomic(path, write):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main():
    if len(sys.argv) != 2:
        fail("usage: shapes160_install.py RUN_DIR (the `dit` folder of a shapes160_gpu.sh run)")
    src = pathlib.Path(sys.argv[1])
    for name in ("config.json", "training.json"):
        if not (src / name).is_file():
            fail(f"{src / name}: missing")
    got = json.loads((src / "config.json").read_text())
    want = json.loads((DEST / "config.json").read_text())
    diff = {k for k in set(got) | set(want) if k not in IGNORED and got.get(k) != want.get(k)}
    if diff:
        fail(f"{src / 'config.json'}: differs from {DEST / 'config.json'} in {sorted(diff)}")
    index = src / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        shards = ["diffusion_pytorch_model.safetensors"]
    tensors = {}
    for shard in shards:
        path = src / shard
        if not path.is_file():
            fail(f"{path}: missing")
        for name, value in load_file(str(path)).items():
            if not np.isfinite(value).all():
                fail(f"{path}: tensor `{name}` has non-finite values")
            tensors[name] = value
    size = sum(v.nbytes for v in tensors.values())
    if size > MAX_BYTES:
        fail(f"{size} bytes of weights: over the {MAX_BYTES}-byte limit of an embedded model")
    write_atomic(DEST / "diffusion_pytorch_model.safetensors",
                 lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    training = (src / "training.json").read_text()
    write_atomic(DEST / "training.json", lambda tmp: pathlib.Path(tmp).write_text(training))
    print(f"installed {len(tensors)} tensors ({size} bytes) from {src} into {DEST}")


if __name__ == "__main__":
    main()
