#!/usr/bin/env python3
"""Golden fixtures for the PixArt-alpha text side of `crates/tcc-text`.

Builds a tiny, seeded `transformers.T5EncoderModel` (T5 v1.1 style like
PixArt's t5-v1_1-xxl: gated-gelu feed-forward, untied embeddings) and a tiny
T5-like `tokenizer.json` (Unigram model, Metaspace pre-tokenizer, `</s>`
appended by the post-processor, `<pad>` = 0, `</s>` = 1, `<unk>` = 2), and
writes, in a diffusers pipeline's layout:

- `crates/tcc-text/tests/fixtures/tiny-pipeline/text_encoder/`
  (`config.json`, `model.safetensors`, as `save_pretrained` writes them);
- `crates/tcc-text/tests/fixtures/tiny-pipeline/tokenizer/`
  (`tokenizer.json`, plus the `tokenizer_config.json` / `special_tokens_map.json`
  that `save_pretrained` writes);
- `crates/tcc-text/tests/fixtures/t5_expected.safetensors`: for the prompts in
  `PROMPTS` (one truncated, one short so that padding matters), tokenised
  as diffusers' `PixArtAlphaPipeline.encode_prompt` does
  (`padding="max_length", max_length=16, truncation=True,
  add_special_tokens=True`):
  - `input_ids` `[3, 16]` (i64), `mask` `[3, 16]` (f32, 1 = real token incl.
    `</s>`);
  - `embeddings` `[3, 16, 32]`: `T5EncoderModel(input_ids,
    attention_mask=mask).last_hidden_state` in float32 (the reference);
  - `embeddings_f64`: the same in float64, to state how far the float32
    reference itself is from exact;
  - `embeddings_bf16`: the same with weights and activations in bfloat16
    (stored as f32), to size the tolerance of the Rust bf16 path.
  The prompts themselves are stored in the safetensors metadata (`prompts`,
  a JSON list) so the Rust test reads exactly these strings.

Run from the repository root: `python3 tools/golden/t5_encoder.py`.
Needs torch, transformers (tested with 5.24), tokenizers (0.23), safetensors.
"""

import json
import os

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

ROOT = os.path.join("crates", "tcc-text", "tests", "fixtures")
PIPE = os.path.join(ROOT, "tiny-pipeline")
MAX_TOKENS = 16

PROMPTS = [
    "a photo of a cat sitting on a red chair",
    "a dog",
    # 18+ words: truncated to 15 tokens + </s>.
    "a small blue bird flying over a green tree near the river under a bright "
    "yellow sun in the morning light with clouds",
]

WORDS = (
    "a photo of cat sitting on red chair dog small blue bird flying over green "
    "tree near the river under bright yellow sun in morning light with clouds "
    "an image painting house car road mountain"
).split()


def build_tokenizer() -> Tokenizer:
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    seen = set()
    for i, w in enumerate(WORDS):
        if w in seen:
            continue
        seen.add(w)
        vocab.append(("\u2581" + w, -2.0 - 0.01 * i))
    # Sub-word pieces so unknown words split (and single letters as fallback).
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab.append((c, -8.0))
        if c not in seen:
            vocab.append(("\u2581" + c, -7.5))
    for piece in ["ing", "er", "ed", "s", "\u2581"]:
        vocab.append((piece, -6.0))
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return tok


def main() -> None:
    torch.manual_seed(0)
    os.makedirs(os.path.join(PIPE, "text_encoder"), exist_ok=True)
    os.makedirs(os.path.join(PIPE, "tokenizer"), exist_ok=True)

    tok = build_tokenizer()
    vocab_size = tok.get_vocab_size()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(os.path.join(PIPE, "tokenizer"))
    # Read back what was written: the ids below come from the saved file.
    fast = PreTrainedTokenizerFast.from_pretrained(os.path.join(PIPE, "tokenizer"))

    cfg = T5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        dropout_rate=0.0,
        layer_norm_epsilon=1e-6,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        is_encoder_decoder=True,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    model = T5EncoderModel(cfg).eval()
    with torch.no_grad():
        # Randomise every parameter (layer-norm weights included) so that
        # nothing is trivially 1 or 0.
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "relative_attention_bias" in name:
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / (p.shape[-1] ** 0.5))
    model.save_pretrained(os.path.join(PIPE, "text_encoder"), safe_serialization=True)

    enc = fast(
        PROMPTS,
        padding="max_length",
        max_length=MAX_TOKENS,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    ids, mask = enc.input_ids, enc.attention_mask
    assert mask[1].sum() < MAX_TOKENS // 2, "prompt 1 must be padded"
    assert mask[2].sum() == MAX_TOKENS and ids[2, -1] == 1, "prompt 2 must be truncated"
    assert (ids == 2).sum() == 0, "prompts must not hit <unk>"

    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        out64 = model.double()(input_ids=ids, attention_mask=mask).last_hidden_state
        out_bf16 = model.bfloat16()(input_ids=ids, attention_mask=mask).last_hidden_state

    save_file(
        {
            "input_ids": ids.to(torch.int64).contiguous(),
            "mask": mask.to(torch.float32).contiguous(),
            "embeddings": out.to(torch.float32).contiguous(),
            "embeddings_f64": out64.contiguous(),
            "embeddings_bf16": out_bf16.to(torch.float32).contiguous(),
        },
        os.path.join(ROOT, "t5_expected.safetensors"),
        metadata={"prompts": json.dumps(PROMPTS), "max_tokens": str(MAX_TOKENS)},
    )
    print("vocab", vocab_size, "ids", ids.tolist())
    print("f32 vs f64 max abs", (out.double() - out64).abs().max().item())
    real = mask[..., None].bool()
    print("bf16 vs f32 max abs (real tokens)", ((out_bf16.float() - out).abs() * real).max().item())


if __name__ == "__main__":
    main()
