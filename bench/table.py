"""Turns the raw results bench/run.sh wrote into one Markdown table.

Usage: python bench/table.py OUT_DIR   (stdlib only)

Reads OUT_DIR/results.jsonl (one JSON line per training or generation run, from
train_bench.rs, torch_train.py, bench_generate.rs and hf_generate.py), synthesis.md,
reconcile.md, quickstart.json + quickstart.time.json, operator_load.json (one JSON line per
e2e/run.sh load run; operator_load.skipped / .failed say why a run is missing) and machine.txt. Reports medians over
the repetitions and the ratio llamaduo / peer (above 1.0 = llamaduo faster, or for memory:
llamaduo uses more).
"""
import json
import os
import statistics
import sys


def load_jsonl(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                rows.append(json.loads(line))
    return rows


def med(xs):
    return statistics.median(xs) if xs else None


def fmt(x, digits=0):
    if x is None:
        return "n/a"
    return f"{x:,.{digits}f}"


def ratio(a, b):
    if a is None or not b:
        return "n/a"
    return f"{a / b:.2f}x"


def md_rows(path):
    """Cells of the Markdown table rows in `path` (header and rule lines skipped)."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            if not line.startswith("|") or set(line.strip()) <= set("|-: "):
                continue
            out.append([c.strip() for c in line.strip().strip("|").split("|")])
    return out


def operator_rows(out, notes):
    """Rows of the operator load test (e2e/run.sh load, one JSON line per run in
    operator_load.json); one "not measured" row, with the reason, when there is none."""
    path = os.path.join(out, "operator_load.json")
    runs = [r for r in load_jsonl(path) if r.get("bench") == "operator_load"] if os.path.exists(path) else []
    why = None
    for name in ("operator_load.skipped", "operator_load.failed"):
        p = os.path.join(out, name)
        if os.path.exists(p):
            with open(p) as f:
                why = "; ".join(l.strip() for l in f if l.strip())
            if runs:
                notes.append(f"operator load: {why}")
    if not runs:
        reason = f": {why}" if why else ""
        return [f"| operator: RSS and time for 1,000 migrations to their first Job | not measured{reason} (`e2e/run.sh load`) | | | 0 |"]
    n = len(runs)
    counts = sorted({r["migrations"] for r in runs})
    label = f"{counts[0]:,}" if len(counts) == 1 else "/".join(f"{c:,}" for c in counts)

    def m(key):
        return med([r[key] for r in runs if r.get(key) is not None])

    rows = [
        f"| operator: {label} migrations created at once to their first Job, s: 50% / 90% / all (real control plane) "
        f"| {fmt(m('p50_seconds'), 1)} / {fmt(m('p90_seconds'), 1)} / {fmt(m('seconds_to_all_first_jobs'), 1)} | (no peer) | | {n} |",
        f"| operator: peak RSS MiB / RSS at the end / CPU s over that time ({runs[0].get('binary', '?')} build) "
        f"| {fmt(m('operator_peak_rss_mib'), 1)} / {fmt(m('operator_rss_mib_end'), 1)} / {fmt(m('operator_cpu_seconds'), 1)} | (no peer) | | {n} |",
        f"| operator: reconcile duration under that load, p50 / p99 ms ({fmt(m('reconciliations'))} reconciles) "
        f"| {fmt(m('reconcile_p50_ms'), 1)} / {fmt(m('reconcile_p99_ms'), 1)} | (no peer) | | {n} |",
    ]
    api = med([r["cpu_seconds"]["kube-apiserver"] for r in runs if "kube-apiserver" in r.get("cpu_seconds", {})])
    if api is not None:
        notes.append(f"operator load: kube-apiserver CPU over the same time {api:.1f} s (median), the operator's "
                     f"{m('operator_cpu_seconds'):.1f} s; creation {fmt(m('creates_per_second'))} migrations/s; "
                     f"load averages per run: {', '.join(r.get('loadavg_before', '?') + ' -> ' + r.get('loadavg_after', '?') for r in runs)}; "
                     f"CPU s used meanwhile by other processes per run: "
                     f"{', '.join(fmt(r.get('other_processes_cpu_seconds'), 1) for r in runs)}")
    lost = [r.get("status_lost_current", 0) for r in runs]
    if any(lost):
        notes.append(f"operator load: statuses that lost their current run (stale-cache status write) per run: {lost}")
    return rows


def main():
    out = sys.argv[1]
    rows = load_jsonl(os.path.join(out, "results.jsonl"))
    lines = ["| benchmark | llamaduo | peer | ratio llamaduo/peer | runs |", "|---|---|---|---|---|"]

    peer_names = {"train": "PyTorch", "generate": "transformers"}
    notes = []
    def config_key(r):
        c = r.get("config", {})
        return (c.get("hidden", 0), c.get("layers", 0), c.get("vocab", 0), c.get("intermediate", 0), c.get("batch", 0), c.get("seq", 0))

    train = [r for r in rows if r.get("bench") == "train"]
    configs = sorted({config_key(r) for r in train}) or [None]
    for key in configs:
        at = [r for r in train if config_key(r) == key]
        if key is None or len(configs) == 1:
            shape = ""
        else:
            h, l, v, i, b, s_ = key
            shape = f", h{h} L{l} v{v} i{i} ({b}x{s_})"
        for mode in ("full", "lora"):
            ours = [r for r in at if r["mode"] == mode and r["impl"] == "llamaduo"]
            peer = [r for r in at if r["mode"] == mode and r["impl"] == "pytorch"]
            label = ("full fine-tuning" if mode == "full" else "LoRA r=8 q,v") + shape
            peer_label = "PyTorch" + (" + PEFT" if mode == "lora" else "")
            o = med([r["tokens_per_second"] for r in ours])
            p = med([r["tokens_per_second"] for r in peer])
            lines.append(f"| train tokens/s, {label} (vs {peer_label}) | {fmt(o)} | {fmt(p)} | {ratio(o, p)} | {len(ours)}/{len(peer)} |")
            o = med([r["peak_rss_mib"] for r in ours])
            p = med([r["peak_rss_mib"] for r in peer])
            lines.append(f"| train peak RSS MiB, {label} | {fmt(o)} | {fmt(p)} | {ratio(o, p)} | {len(ours)}/{len(peer)} |")
    for batch in (1, 8):
        ours = [r for r in rows if r.get("bench") == "generate" and r["batch"] == batch and r["impl"] == "llamaduo"]
        peer = [r for r in rows if r.get("bench") == "generate" and r["batch"] == batch and r["impl"] == "transformers"]
        o = med([r["tokens_per_s"] for r in ours])
        p = med([r["tokens_per_s"] for r in peer])
        same = {r.get("ids_equal_llamaduo") for r in peer}
        lines.append(f"| generate new tokens/s, batch {batch}, greedy + KV cache (vs transformers generate) | {fmt(o)} | {fmt(p)} | {ratio(o, p)} | {len(ours)}/{len(peer)} |")
        if same != {True}:
            notes.append(f"generation batch {batch}: token ids equal to llamaduo's: {sorted(map(str, same))}")

    synth = md_rows(os.path.join(out, "synthesis.md"))
    ours = next((r for r in synth if r[0].startswith("llamaduo (token bucket)")), None)
    batched = next((r for r in synth if r[0].startswith("llamaduo client in the reference")), None)
    ref = next((r for r in synth if r[0].startswith("reference") and "measured" in r[0]), None)
    ref_c = next((r for r in synth if r[0].startswith("reference, computed")), None)
    if ours and ref:
        lines.append(f"| synthesis: achieved rate as share of 600 RPM limit (vs reference fixed-sleep scheme, measured; computed {ref_c[2] if ref_c else 'n/a'}) | {ours[2]} | {ref[2]} | {ratio(float(ours[2].rstrip('%')), float(ref[2].rstrip('%')))} | 1 |")
        lines.append(f"| synthesis: client CPU per request | {ours[3]} | {ref[3]} | {ratio(float(ours[3].split()[0]), float(ref[3].split()[0]))} | 1 |")
        if batched:
            lines.append(f"| synthesis: client CPU per request, both in the reference's batch-and-sleep pattern (the client's own cost, without smooth pacing's wake-ups) | {batched[3]} | {ref[3]} | {ratio(float(batched[3].split()[0]), float(ref[3].split()[0]))} | 1 |")
        lines.append(f"| synthesis: 429 responses from the server | {ours[4]} | {ref[4]} | | 1 |")

    for r in md_rows(os.path.join(out, "reconcile.md")):
        if r[0].startswith("operation"):
            continue
        if r[0].startswith("whole decision") or r[0].startswith("plan: round 5"):
            lines.append(f"| reconcile {r[0]}: p50 / p99 µs | {r[1]} / {r[2]} | (no peer) | | 20,000 calls |")

    qs_time = os.path.join(out, "quickstart.time.json")
    if os.path.exists(qs_time):
        with open(qs_time) as f:
            t = json.load(f)
        status = {}
        try:
            with open(os.path.join(out, "quickstart.json")) as f:
                status = json.load(f)
        except (OSError, ValueError) as e:
            notes.append(f"quickstart status not readable: {e}")
        # `llamaduo run --json` nests the migration status under "status".
        status = status.get("status", status)
        tok = status.get("serviceTokens", {})
        total = tok.get("input", 0) + tok.get("output", 0)
        best = status.get("best") or {}
        detail = (f"phase {status.get('phase')}, {len(status.get('rounds', []))} rounds, "
                  f"best round {best.get('round')} (mean {best.get('scores', {}).get('mean', best.get('meanScore'))})")
        lines.append(f"| quickstart end to end: wall time s ({detail}; exit {t['exit_code']}) | {t['wall_ms'] / 1000:,.0f} | (no peer run) | | 1 |")
        lines.append(f"| quickstart: service tokens spent (input + output) | {total:,} | (no peer run) | | 1 |")
    lines.extend(operator_rows(out, notes))

    print("\n".join(lines))
    print()
    machine = os.path.join(out, "machine.txt")
    if os.path.exists(machine):
        with open(machine) as f:
            print("Machine: " + "; ".join(l.strip() for l in f if l.strip()))
    versions = {r.get("versions") for r in rows if r.get("versions")}
    if versions:
        print("Peers: " + "; ".join(sorted(versions)))
    for n in notes:
        print("Note: " + n)


if __name__ == "__main__":
    main()
