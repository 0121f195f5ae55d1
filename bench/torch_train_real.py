"""PyTorch + PEFT side of the real-model training benchmark, the peer of
trainer-image/model/examples/train_real.rs.

Usage: python bench/torch_train_real.py MODEL_DIR IDS.json MODE STEPS

MODEL_DIR is the Hugging Face directory llamaduo trains (e.g. SmolLM2-135M-Instruct as the
train stage converts it from its GGUF), IDS.json the batches train_real.rs wrote: the same
token ids, loss masks, batch composition and order, so both sides train on the very same
tokens. MODE qv / all / full as there: PEFT LoRA r=16, alpha=32, dropout 0.05 on q_proj,v_proj
or on every linear layer ("all-linear"), or full fine-tuning; f32 on the CPU, AdamW lr 1e-4
(no weight decay), clipping at 1.0; batches right-padded to their longest row with an
attention mask, labels -100 on prompt and pad positions. Two warm-up steps, then STEPS timed
steps; tokens/s counts real tokens only. Threads: BENCH_THREADS (2). Prints one JSON line; peak
RSS is ru_maxrss.
"""
import json
import os
import resource
import sys
import time

import torch


def main():
    model_dir, ids_path, mode, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    threads = int(os.environ.get("BENCH_THREADS", "2"))
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    if not torch.cuda.is_available():
        # transformers' SDPA mask asks whether a CUDA graph is being captured; with the CUDA
        # link stubs (torch_cpu_stubs.py) that call would reach a stub. On the CPU it is never.
        torch.cuda.is_current_stream_capturing = lambda: False
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    if mode in ("qv", "all"):
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "v_proj"] if mode == "qv" else "all-linear"
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                                 target_modules=targets, task_type="CAUSAL_LM"))
    elif mode != "full":
        raise SystemExit(f"MODE must be qv, all or full, not {mode}")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    with open(ids_path) as f:
        doc = json.load(f)
    pad = doc["pad"]
    batches = doc["batches"]
    warmup = 2
    if len(batches) < warmup + steps:
        raise SystemExit(f"{len(batches)} batches in {ids_path}, {warmup + steps} needed")
    tokens = 0
    t0 = None
    loss = None
    for i, rows in enumerate(batches[: warmup + steps]):
        if i == warmup:
            t0 = time.perf_counter()
        width = max(len(r["ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for j, r in enumerate(rows):
            n = len(r["ids"])
            ids[j, :n] = torch.tensor(r["ids"])
            mask[j, :n] = 1
            for k, (t, keep) in enumerate(zip(r["ids"], r["loss"])):
                if keep:
                    labels[j, k] = t
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = out.loss.item()
        if i >= warmup:
            tokens += int(mask.sum())
    secs = time.perf_counter() - t0
    import transformers

    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    if mode != "full":
        import peft

        versions += f", peft {peft.__version__}"
    print(json.dumps({
        "impl": "pytorch", "bench": "train_real", "model": os.path.basename(model_dir.rstrip("/")),
        "mode": mode, "batch": len(batches[0]), "steps_timed": steps, "threads": threads,
        "tokens_per_second": round(tokens / secs), "step_seconds": secs / steps,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "final_loss": loss, "versions": versions,
    }))


if __name__ == "__main__":
    main()
