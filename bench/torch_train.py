"""PyTorch (+ PEFT) side of the training benchmark, the peer of
trainer-image/model/examples/train_bench.rs.

Usage: python bench/torch_train.py full|lora [STEPS]

Builds the same Llama as train_bench.rs from the same environment variables (BENCH_VOCAB,
BENCH_HIDDEN, BENCH_LAYERS, BENCH_HEADS, BENCH_INTERMEDIATE, BENCH_BATCH, BENCH_SEQ; defaults:
the tiny Llama of FINDINGS.md), f32 on CPU, random weights, random tokens with the loss on
every position, AdamW (no weight decay), gradient clipping at 1.0, 3 warm-up steps, then
STEPS timed steps (default 20). LoRA: PEFT r=8, alpha=16 on q_proj and v_proj, dropout BENCH_LORA_DROPOUT (default 0).
Threads: BENCH_THREADS (default 2). Tokens/s counts batch x seq tokens per step, as the Rust
side does (no padding). Prints one JSON line; peak RSS is the process's ru_maxrss (= VmHWM).
BENCH_DEVICE cpu (default) or cuda, BENCH_DTYPE f32 or bf16 (default f32 on the CPU, bf16 on
CUDA) as train_bench.rs reads them; in bf16 the trained weights stay f32 masters and the
forward and backward passes run under bf16 autocast (the mixed-precision recipe the Rust side
follows: bf16 compute, f32 weights and optimizer state); on CUDA it also reports the peak GPU
memory PyTorch allocated.
"""
import json
import os
import resource
import sys
import time

import torch


def env_int(name, default):
    v = os.environ.get(name)
    if v is None:
        return default
    n = int(v)
    if n <= 0:
        raise SystemExit(f"{name}={v!r} must be a positive integer")
    return n


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "lora"
    if mode not in ("full", "lora"):
        raise SystemExit(f"mode must be full or lora, not {mode}")
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    threads = env_int("BENCH_THREADS", 2)
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = env_int("BENCH_VOCAB", 1024)
    hidden = env_int("BENCH_HIDDEN", 128)
    layers = env_int("BENCH_LAYERS", 4)
    heads = env_int("BENCH_HEADS", 4)
    inter = env_int("BENCH_INTERMEDIATE", 344)
    batch = env_int("BENCH_BATCH", 8)
    seq = env_int("BENCH_SEQ", 128)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=inter,
        max_position_embeddings=max(seq, 512),
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )
    device = os.environ.get("BENCH_DEVICE", "cpu")
    if device not in ("cpu", "cuda"):
        raise SystemExit(f"BENCH_DEVICE={device!r} must be cpu or cuda")
    dtype = os.environ.get("BENCH_DTYPE", "f32" if device == "cpu" else "bf16")
    if dtype not in ("f32", "bf16"):
        raise SystemExit(f"BENCH_DTYPE={dtype!r} must be f32 or bf16")
    model = LlamaForCausalLM(cfg).to(device=device, dtype=torch.float32)
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(r=8, lora_alpha=16, lora_dropout=float(os.environ.get("BENCH_LORA_DROPOUT", "0")),
                       target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
        )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    warmup = 3
    gen = torch.Generator().manual_seed(7)
    data = torch.randint(0, vocab, (warmup + steps, batch, seq), generator=gen).to(device)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=dtype == "bf16")
    t0 = None
    loss_v = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        ids = data[step]
        with autocast:
            out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_v = out.loss.item()
    if device == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    import transformers

    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    if mode == "lora":
        import peft

        versions += f", peft {peft.__version__}"
    print(json.dumps({
        "impl": "pytorch",
        "versions": versions,
        "bench": "train",
        "config": {"vocab": vocab, "hidden": hidden, "layers": layers, "heads": heads,
                   "intermediate": inter, "batch": batch, "seq": seq},
        "mode": mode,
        "lora_dropout": float(os.environ.get("BENCH_LORA_DROPOUT", "0")),
        "device": device,
        "dtype": dtype,
        "gpu_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else None,
        "threads": str(torch.get_num_threads()),
        "steps_timed": steps,
        "tokens_per_second": round(steps * batch * seq / secs),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "final_loss": loss_v,
        "trainable_params": sum(p.numel() for p in params),
    }))


if __name__ == "__main__":
    main()
