"""Table of the GPU training benchmark (bench/gpu.sh): tokens/s, model FLOPs utilization and
peak memory of llamaduo and PyTorch (+PEFT) per mode, from the JSON lines of train_bench and
torch_train.py.

Usage: python3 bench/mfu.py RESULTS.jsonl [PEAK_TFLOPS]

Model FLOPs per trained token, counted the usual way (PaLM's appendix B) on the benchmark's
untied Llama with as many KV heads as heads: N = the parameters of every matrix product (the
layers' q/k/v/o and MLP weights and the lm_head; the input embedding is a lookup, not a
product), and attention 4·s·h per layer forward (QKᵀ and PV over the whole s×s, as both sides
compute it).
- full fine-tuning: 6·N + 12·L·s·h (forward 2N, backward 4N: input and weight gradients);
- LoRA: 4·N + 12·L·s·h (the frozen weights get no weight gradient; the adapters' own products
  are left out, under 1% at rank 8).
MFU = tokens/s · FLOPs per token / peak; the peak defaults to 989 TFLOP/s, the dense bf16 peak of
an H100 or H200 SXM (pass another as the second argument).
"""
import json
import sys


def flops_per_token(cfg, mode):
    h, L, v, i, s = cfg["hidden"], cfg["layers"], cfg["vocab"], cfg["intermediate"], cfg["seq"]
    n = L * (4 * h * h + 3 * h * i) + h * v
    attention = 12 * L * s * h
    return (6 if mode == "full" else 4) * n + attention


def main():
    path = sys.argv[1]
    peak = float(sys.argv[2]) if len(sys.argv) > 2 else 989.0
    rows = [json.loads(line) for line in open(path) if line.strip().startswith("{")]
    if not rows:
        raise SystemExit(f"{path}: no results")
    cfg = rows[0]["config"]
    print(f"config: {json.dumps(cfg)}; peak {peak:g} TFLOP/s")
    print()
    print("| mode | side | dtype | tokens/s | TFLOP/s | MFU | peak memory | final loss |")
    print("|---|---|---|---|---|---|---|---|")
    for mode in ("full", "lora"):
        for r in (r for r in rows if r["mode"] == mode):
            tps = r["tokens_per_second"]
            tflops = tps * flops_per_token(r["config"], mode) / 1e12
            mem = (f"{r['gpu_peak_mib']:,} MiB GPU" if r.get("gpu_peak_mib")
                   else f"{r.get('peak_rss_mib', 0):,.0f} MiB RSS")
            print(f"| {mode} | {r['impl']} | {r.get('dtype', '?')} | {tps:,.0f} | {tflops:.1f} | "
                  f"{100 * tflops / peak:.1f}% | {mem} | {r.get('final_loss', float('nan')):.4f} |")


if __name__ == "__main__":
    main()
