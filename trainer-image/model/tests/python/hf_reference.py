"""transformers' and PEFT's side of the parity tests (driven by tests/transformers_parity.rs and
tests/gemma3_270m.rs). Everything runs in float32 on the CPU with eager attention, so the
numbers compare to candle's f32.

  tiny OUT_DIR IDS_JSON FAMILY...
      For each FAMILY (a key of TINY below) builds a tiny random model with transformers
      itself (its Config class -> AutoModelForCausalLM.from_config -> save_pretrained; odd
      sizes, GQA, the family's own features: tied or untied embeddings, biases, sliding
      windows shorter than the inputs, llama3 / linear RoPE scaling, random norm weights) into
      OUT_DIR/FAMILY/model and writes its reference outputs into OUT_DIR/FAMILY/. Then PEFT puts
      a LoRA adapter (rank 4, alpha 8, every projection, random non-zero A and B via
      init_lora_weights=False) on it, saves it with save_pretrained into
      OUT_DIR/FAMILY/peft_adapter and writes its logits to peft_logits.safetensors.
  peft-load OUT_DIR IDS_JSON FAMILY...
      Loads OUT_DIR/FAMILY/our_adapter (written by our crate) on OUT_DIR/FAMILY/model with
      PEFT and writes its logits to OUT_DIR/FAMILY/peft_logits_ours.safetensors.
  run IDS_JSON OUT_DIR SOURCE...
      Loads each SOURCE and writes its reference outputs into OUT_DIR/<index of SOURCE>/: a
      model directory (for example the converted gemma-3-270m), or a .gguf file, which
      transformers converts itself (its own GGUF loader: gguf-py's dequantization, its own
      tensor names, config and Gemma norm offset), an independent check of our conversion.

IDS_JSON: {"input_ids": [[...], ...] (equal lengths), "prompt": [...], "new_tokens": N}.
Reference outputs: logits.safetensors ("logits", (rows, seq, vocab) float32) and greedy.json
({"ids": the N token ids greedy decoding appends to "prompt"}).
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import (AutoModelForCausalLM, Gemma3TextConfig, GemmaConfig, LlamaConfig,
                          MistralConfig, Qwen2Config, Qwen3Config)

# Shared by every tiny model: odd widths, 4 query heads over 2 KV heads, 3-4 layers.
COMMON = dict(vocab_size=211, hidden_size=60, intermediate_size=94, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
              # Larger than the default 0.02, so that the logits are far from zero and a wrong
              # detail moves them visibly.
              initializer_range=0.15, pad_token_id=0, bos_token_id=2, eos_token_id=1)

TINY = {
    # Llama 3.2's layout: tied embeddings and llama3 RoPE scaling, with an original context
    # short enough that the 8 frequencies of head_dim 16 fall in all three bands.
    "llama32": lambda: LlamaConfig(
        **COMMON, num_hidden_layers=3, head_dim=16, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64}),
    # Llama with every optional bias, an untied lm_head and linear RoPE scaling.
    "llama_bias": lambda: LlamaConfig(
        **COMMON, num_hidden_layers=3, head_dim=16, tie_word_embeddings=False,
        attention_bias=True, mlp_bias=True,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
    # Qwen2.5: q/k/v biases, untied; a sliding window of 5 on the layers from 1 on.
    "qwen2": lambda: Qwen2Config(
        **COMMON, num_hidden_layers=3, head_dim=16, tie_word_embeddings=False,
        use_sliding_window=True, sliding_window=5, max_window_layers=1,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    # Qwen3: per-head q/k norms, heads wider than hidden / heads, tied (as Qwen3-0.6B).
    "qwen3": lambda: Qwen3Config(
        **COMMON, num_hidden_layers=3, head_dim=18, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    # Mistral: a sliding window of 5 on every layer, untied.
    "mistral": lambda: MistralConfig(
        **COMMON, num_hidden_layers=3, head_dim=14, sliding_window=5, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    # Gemma: scaled embeddings, (1 + w) norms, GELU-tanh, head_dim set on its own.
    "gemma": lambda: GemmaConfig(
        **COMMON, num_hidden_layers=3, head_dim=18, hidden_activation="gelu_pytorch_tanh",
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    # Gemma 3: head_dim 18 with query_pre_attn_scalar 24, three sliding layers with a window
    # of 5 and a local RoPE base of 100 around one global layer with linear RoPE scaling.
    "gemma3": lambda: Gemma3TextConfig(
        **COMMON, num_hidden_layers=4, head_dim=18, query_pre_attn_scalar=24, sliding_window=5,
        layer_types=["sliding_attention", "sliding_attention", "full_attention",
                     "sliding_attention"],
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
        }),
}

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load(source, **kwargs):
    return AutoModelForCausalLM.from_pretrained(
        source, dtype=torch.float32, attn_implementation="eager", **kwargs).eval()


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float().contiguous()


def read_ids(ids_json):
    with open(ids_json) as f:
        return json.load(f)


def tiny(family, out):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(TINY[family](), dtype=torch.float32,
                                             attn_implementation="eager")
    # Norms start at one (or at zero for Gemma's 1 + w): make them random, so that a norm
    # applied at the wrong place, or as w instead of 1 + w, shows in the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0.0 if family.startswith("gemma") else 1.0, 0.5)
    path = os.path.join(out, "model")
    model.save_pretrained(path)
    return path


def reference(source, spec, out, **kwargs):
    if source.endswith(".gguf"):
        kwargs["gguf_file"] = os.path.basename(source)
        source = os.path.dirname(source)
    model = load(source, **kwargs)
    ids = torch.tensor(spec["input_ids"], dtype=torch.long)
    prompt = torch.tensor([spec["prompt"]], dtype=torch.long)
    n = spec["new_tokens"]
    with torch.no_grad():
        gen = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                             max_new_tokens=n, min_new_tokens=n, eos_token_id=None,
                             pad_token_id=0)
    os.makedirs(out, exist_ok=True)
    out_logits = logits(model, ids)
    save_file({"logits": out_logits}, os.path.join(out, "logits.safetensors"))
    with open(os.path.join(out, "greedy.json"), "w") as f:
        json.dump({"ids": gen[0, prompt.shape[1]:].tolist()}, f)
    return f"{type(model).__name__} logits {tuple(out_logits.shape)}"


def peft_adapter(base_dir, spec, out):
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(1)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0,
                     init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(load(base_dir), cfg).eval()
    model.save_pretrained(os.path.join(out, "peft_adapter"))
    ids = torch.tensor(spec["input_ids"], dtype=torch.long)
    save_file({"logits": logits(model, ids)}, os.path.join(out, "peft_logits.safetensors"))


def peft_load(out, spec):
    from peft import PeftModel
    adapter = os.path.join(out, "our_adapter")
    model = PeftModel.from_pretrained(load(os.path.join(out, "model")), adapter).eval()
    # A loader that silently skipped our tensors would leave B at zero: refuse that.
    loaded = [n for n, p in model.named_parameters() if "lora_B" in n and p.abs().max() > 0]
    if not loaded:
        sys.exit(f"hf_reference.py: PEFT loaded no non-zero lora_B from {adapter}")
    ids = torch.tensor(spec["input_ids"], dtype=torch.long)
    save_file({"logits": logits(model, ids)}, os.path.join(out, "peft_logits_ours.safetensors"))
    return len(loaded)


def main():
    torch.set_num_threads(int(os.environ.get("LLAMADUO_TORCH_THREADS", "1")))
    args = sys.argv[1:]
    if len(args) >= 4 and args[0] == "tiny":
        out, spec = args[1], read_ids(args[2])
        for family in args[3:]:
            fam_out = os.path.join(out, family)
            said = reference(tiny(family, fam_out), spec, fam_out)
            peft_adapter(os.path.join(fam_out, "model"), spec, fam_out)
            print(f"{family}: {said}")
    elif len(args) >= 4 and args[0] == "peft-load":
        out, spec = args[1], read_ids(args[2])
        for family in args[3:]:
            n = peft_load(os.path.join(out, family), spec)
            print(f"{family}: PEFT loaded {n} of our lora_B tensors")
    elif len(args) >= 4 and args[0] == "run":
        spec, out = read_ids(args[1]), args[2]
        for i, source in enumerate(args[3:]):
            print(reference(source, spec, os.path.join(out, str(i))))
    else:
        sys.exit(__doc__)
    print(f"torch {torch.__version__}")


if __name__ == "__main__":
    main()
