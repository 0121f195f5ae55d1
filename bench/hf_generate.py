"""transformers' generate side of the generation benchmark, the peer of
trainer-image/model/examples/bench_generate.rs.

Usage: python bench/hf_generate.py DIR

DIR is the model directory bench_generate.rs wrote with BENCH_MODEL_DIR=DIR (config.json,
model.safetensors, prompts.json, candle_ids_b{N}.json): the same weights and the same prompt
ids. Greedy, KV cache on, f32, CPU, left padding with an attention mask (as the Rust side
pads), BENCH_THREADS threads (default 2), BENCH_NEW_TOKENS new tokens at most (default 128).
Tokens/s = new tokens (up to, not counting, the first EOS of each row, as the Rust side
counts) / seconds, median of BENCH_GEN_REPS timed runs (default 1) after one warm-up. Prints
one JSON line per batch size, with whether the generated ids equal the Rust side's.
"""
import json
import os
import resource
import sys
import time

import torch


def env_int(name, default):
    v = os.environ.get(name)
    return default if v is None else int(v)


def main():
    d = sys.argv[1]
    torch.set_num_threads(env_int("BENCH_THREADS", 2))
    new_tokens = env_int("BENCH_NEW_TOKENS", 128)
    reps = max(1, env_int("BENCH_GEN_REPS", 1))
    import transformers
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    with open(os.path.join(d, "prompts.json")) as f:
        prompts = json.load(f)
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    for batch in (1, 8):
        rows = prompts[f"b{batch}"]
        longest = max(len(r) for r in rows)
        ids = torch.tensor([[pad] * (longest - len(r)) + r for r in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (longest - len(r)) + [1] * len(r) for r in rows],
                            dtype=torch.long)
        kw = dict(max_new_tokens=new_tokens, do_sample=False, use_cache=True,
                  eos_token_id=list(eos_ids) or None, pad_token_id=pad)
        with torch.inference_mode():
            model.generate(ids, attention_mask=mask, **kw)  # warm-up
            timed = []
            for _ in range(reps):
                t0 = time.perf_counter()
                out = model.generate(ids, attention_mask=mask, **kw)
                timed.append(time.perf_counter() - t0)
        gen = []
        for row in out[:, longest:].tolist():
            toks = []
            for t in row:
                if t in eos_ids:
                    break
                toks.append(t)
            gen.append(toks)
        n = sum(len(g) for g in gen)
        timed.sort()
        secs = timed[len(timed) // 2]
        same = None
        path = os.path.join(d, f"candle_ids_b{batch}.json")
        if os.path.exists(path):
            with open(path) as f:
                same = json.load(f) == gen
        print(json.dumps({
            "impl": "transformers",
            "versions": f"torch {torch.__version__}, transformers {transformers.__version__}",
            "bench": "generate", "model": "tiny-llama", "batch": batch,
            "prompt_tokens": int(mask.sum()), "new_tokens": n, "seconds": secs, "reps": reps,
            "tokens_per_s": n / secs, "threads": str(torch.get_num_threads()),
            "ids_equal_llamaduo": same,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }))


if __name__ == "__main__":
    main()
