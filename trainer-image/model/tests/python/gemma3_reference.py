"""transformers' side of the Gemma 3 parity tests (driven by tests/gemma3_transformers.rs and
tests/gemma3_270m.rs).

  tiny OUT_DIR IDS_JSON      builds a tiny random Gemma3ForCausalLM with transformers itself
                             (Gemma3TextConfig -> AutoModelForCausalLM.from_config, odd sizes,
                             GQA, sliding and global layers, a window shorter than the inputs,
                             a linear RoPE scaling on the global layers, random norm weights),
                             saves it with save_pretrained into OUT_DIR/model and writes its
                             reference outputs for the ids (below) into OUT_DIR.
  run IDS_JSON OUT_DIR SOURCE...
                             loads each SOURCE and writes its reference outputs into
                             OUT_DIR/<index of SOURCE>/: a model directory (for example the
                             converted gemma-3-270m), or a .gguf file, which transformers
                             converts itself (its own GGUF loader: gguf-py's dequantization,
                             its own tensor names, config and Gemma norm offset), an
                             independent check of our conversion.

IDS_JSON: {"input_ids": [[...], ...] (equal lengths), "prompt": [...], "new_tokens": N}.
Outputs: OUT_DIR/logits.safetensors ("logits", (rows, seq, vocab) float32) and
OUT_DIR/greedy.json ({"ids": the N token ids greedy decoding appends to "prompt"}).
All in float32 on the CPU with eager attention, so the numbers compare to candle's f32.
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, Gemma3TextConfig


def tiny(out):
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(
        vocab_size=211,
        hidden_size=60,
        intermediate_size=94,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=18,
        query_pre_attn_scalar=24,
        sliding_window=5,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
        },
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        # Larger than the default 0.02, so that the logits are far from zero and a wrong
        # detail moves them visibly.
        initializer_range=0.15,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    # Gemma 3 initialises its norms at zero ((1 + w) = 1): make them random, so that a norm
    # applied at the wrong place, or as w instead of 1 + w, shows in the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0.0, 0.5)
    path = os.path.join(out, "model")
    model.save_pretrained(path)
    return path


def reference(source, ids_json, out):
    kwargs = {"dtype": torch.float32, "attn_implementation": "eager"}
    if source.endswith(".gguf"):
        kwargs["gguf_file"] = os.path.basename(source)
        source = os.path.dirname(source)
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs).eval()
    with open(ids_json) as f:
        spec = json.load(f)
    ids = torch.tensor(spec["input_ids"], dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float().contiguous()
        prompt = torch.tensor([spec["prompt"]], dtype=torch.long)
        n = spec["new_tokens"]
        gen = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=n,
            min_new_tokens=n,
            eos_token_id=None,
            pad_token_id=0,
        )
    os.makedirs(out, exist_ok=True)
    save_file({"logits": logits}, os.path.join(out, "logits.safetensors"))
    with open(os.path.join(out, "greedy.json"), "w") as f:
        json.dump({"ids": gen[0, prompt.shape[1]:].tolist()}, f)
    print(f"torch {torch.__version__}, {type(model).__name__}, logits {tuple(logits.shape)}")


def main():
    torch.set_num_threads(int(os.environ.get("LLAMADUO_TORCH_THREADS", "1")))
    args = sys.argv[1:]
    if len(args) == 3 and args[0] == "tiny":
        out, ids_json = args[1], args[2]
        reference(tiny(out), ids_json, out)
    elif len(args) >= 4 and args[0] == "run":
        ids_json, out = args[1], args[2]
        for i, source in enumerate(args[3:]):
            reference(source, ids_json, os.path.join(out, str(i)))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
