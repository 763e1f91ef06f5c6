#!/usr/bin/env python3
"""Golden fixture for the quantized (GGUF) T5 encoder of `crates/tcc-text`.

An independent reference for two things `tcc quantize-t5` and
`TextEncoder::load(.., TextPrecision::Quantized(..))` do:

1. the weight quantization itself, written here in numpy from the GGUF /
   ggml block-format definitions (not from candle's code):
   - `q8_0`: blocks of 32 values along a row; d = max|x| / 127 (stored as
     f16), q = round-half-away-from-zero(x / d) as i8; value = q * d;
   - `q4_0`: blocks of 32; m = the value of largest magnitude (sign kept),
     d = m / -8 (stored as f16), q = min(15, trunc(x / d + 8.5)) as u4;
     value = (q - 8) * d;
   (as in ggml, x / d is x * (1 / d) with d before its f16 rounding);
2. the encoder run on those weights: transformers' `T5EncoderModel` in
   float32 with the fixture's `input_ids` and mask, where every quantized
   linear layer also rounds its input rows to `q8_0` blocks first. That is
   how ggml's block dot products work for both types (the activation side
   of a `q8_0` or `q4_0` dot product is `q8_0`: sum over blocks of
   d_w * d_x * sum(q_w * q_x) = dequant(x) . dequant(w)), and without it
   the reference would be off by as much as the weight rounding itself.

Only the linear layers' weights are quantized (q, k, v, o, wi_0, wi_1, wo):
embeddings, the relative position bias and layer norms stay float32, as
`tcc quantize-t5` writes them.

Reads `crates/tcc-text/tests/fixtures/tiny-pipeline/text_encoder/` and
`t5_expected.safetensors` (from `tools/golden/t5_encoder.py`), writes
`crates/tcc-text/tests/fixtures/t5_quantized_expected.safetensors`:
- `q8_0.embeddings`, `q4_0.embeddings`: `[3, 16, 32]` encoder outputs;
- `q8_0.embeddings_weights_only`, ...: the same without rounding the
  activations (how much each part of the quantization moves the output);
- `q8_0.<tensor name>`, `q4_0.<tensor name>`: the dequantized weights.

Run from the repository root: `python3 tools/golden/t5_quantized.py`
(numpy, torch, transformers 5.24, safetensors; deterministic).
"""

import os

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from transformers import T5EncoderModel

ROOT = os.path.join("crates", "tcc-text", "tests", "fixtures")
ENCODER = os.path.join(ROOT, "tiny-pipeline", "text_encoder")
BLOCK = 32
LINEARS = (".q.weight", ".k.weight", ".v.weight", ".o.weight", ".wi.weight", ".wi_0.weight", ".wi_1.weight", ".wo.weight")


def blocks(w: np.ndarray) -> np.ndarray:
    assert w.dtype == np.float32 and w.shape[-1] % BLOCK == 0, (w.shape, w.dtype)
    return w.reshape(-1, BLOCK)


def q8_0(w: np.ndarray) -> np.ndarray:
    x = blocks(w)
    d = np.abs(x).max(axis=1, keepdims=True) / np.float32(127)
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), np.float32(0)).astype(np.float32)
    y = x * inv
    q = (np.sign(y) * np.floor(np.abs(y) + np.float32(0.5))).astype(np.int8)
    d16 = d.astype(np.float16).astype(np.float32)
    return (q.astype(np.float32) * d16).reshape(w.shape)


def q4_0(w: np.ndarray) -> np.ndarray:
    x = blocks(w)
    idx = np.abs(x).argmax(axis=1)
    m = x[np.arange(x.shape[0]), idx][:, None]
    d = m / np.float32(-8)
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), np.float32(0)).astype(np.float32)
    q = np.minimum(np.float32(15), np.trunc(x * inv + np.float32(8.5)))
    d16 = d.astype(np.float16).astype(np.float32)
    return ((q - np.float32(8)) * d16).reshape(w.shape)


def round_inputs_to_q8_0(model: T5EncoderModel) -> None:
    """Round the input rows of every quantized linear layer to q8_0 blocks."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and (name + ".weight").endswith(LINEARS):
            module.register_forward_pre_hook(
                lambda _m, args: (torch.from_numpy(q8_0(args[0].detach().numpy().astype(np.float32))),)
            )


def main() -> None:
    weights = load_file(os.path.join(ENCODER, "model.safetensors"))
    expected = load_file(os.path.join(ROOT, "t5_expected.safetensors"))
    ids = torch.from_numpy(expected["input_ids"])
    mask = torch.from_numpy(expected["mask"]).long()
    out = {}
    for kind, fn in (("q8_0", q8_0), ("q4_0", q4_0)):
        model = T5EncoderModel.from_pretrained(ENCODER, torch_dtype=torch.float32).eval()
        state = model.state_dict()
        n = 0
        for name, w in weights.items():
            if name.endswith(LINEARS):
                dq = fn(w)
                out[f"{kind}.{name}"] = dq
                state[name] = torch.from_numpy(dq)
                n += 1
        assert n == 14, n
        model.load_state_dict(state)
        with torch.no_grad():
            weights_only = model(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
            round_inputs_to_q8_0(model)
            emb = model(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
        out[f"{kind}.embeddings"] = np.ascontiguousarray(emb, dtype=np.float32)
        out[f"{kind}.embeddings_weights_only"] = np.ascontiguousarray(weights_only, dtype=np.float32)
        real = expected["mask"][..., None] > 0
        for label, e in (("weights only", weights_only), ("weights and activations", emb)):
            diff = np.abs(e - expected["embeddings"]) * real
            print(f"{kind}: {label} vs the float32 run, max abs {diff.max():.4f}")
    save_file(out, os.path.join(ROOT, "t5_quantized_expected.safetensors"))


if __name__ == "__main__":
    main()
