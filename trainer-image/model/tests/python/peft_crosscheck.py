"""Hugging Face side of the PEFT cross-check (driven by tests/peft_crosscheck.rs).

(a) transformers loads our base model directory, PEFT loads our adapter on it; the logits on the
    given input ids go to OUT/peft_logits_ours_adapter.safetensors.
(b) PEFT puts a fresh LoRA adapter (rank 4, alpha 8, q_proj and v_proj, random non-zero A and B
    via init_lora_weights=False) on the same base, saves it with save_pretrained into
    OUT/peft_adapter/, and writes its logits to OUT/peft_logits_peft_adapter.safetensors.

Usage: peft_crosscheck.py BASE_DIR ADAPTER_DIR IDS_JSON OUT_DIR
All in float32 on CPU with eager attention, so the numbers compare to candle's f32 forward.
"""

import json
import os
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM


def base(path):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float().contiguous()


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    base_dir, adapter_dir, ids_json, out = sys.argv[1:]
    torch.manual_seed(0)
    torch.set_num_threads(1)
    with open(ids_json) as f:
        ids = torch.tensor(json.load(f)["input_ids"], dtype=torch.long)
    os.makedirs(out, exist_ok=True)

    ours = PeftModel.from_pretrained(base(base_dir), adapter_dir).eval()
    # A loader that silently skipped our tensors would leave B at zero: refuse that.
    loaded = [n for n, p in ours.named_parameters() if "lora_B" in n and p.abs().max() > 0]
    if not loaded:
        sys.exit("peft_crosscheck.py: PEFT loaded no non-zero lora_B from " + adapter_dir)
    save_file({"logits": logits(ours, ids)}, os.path.join(out, "peft_logits_ours_adapter.safetensors"))

    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                     init_lora_weights=False, task_type="CAUSAL_LM")
    theirs = get_peft_model(base(base_dir), cfg).eval()
    theirs.save_pretrained(os.path.join(out, "peft_adapter"))
    save_file({"logits": logits(theirs, ids)}, os.path.join(out, "peft_logits_peft_adapter.safetensors"))
    print(f"torch {torch.__version__}, PEFT loaded {len(loaded)} of our lora_B tensors")


if __name__ == "__main__":
    main()
