#!/usr/bin/env python3
"""A stand-in for `llamaduo-trainer <stage>` that honours the stage contract
(docs/stage-contract.md) without doing the work, so the operator/cluster side of the e2e tests
can run where a real stage is not available (or too slow): it reads LLAMADUO_STAGE_CONFIG,
checks that the config is for the stage it was run as, writes small artifacts under the
config's artifacts root (a file:// URL), a copy of the result at round-{n}/{stage}.result.json,
and the StageResult JSON to LLAMADUO_RESULT_PATH; exit 0 on success, 1 with a one-line message
on failure.

Knobs (environment):
  E2E_FAKE_STAGE_SECONDS  seconds each run takes (default 2): room to kill things mid-stage
  E2E_FAKE_SCORES         comma-separated mean scores of rounds 1, 2, ... (default 40,60,80)
  E2E_FAKE_FAIL           comma-separated "[migration/]stage[:round]": fail those runs
"""
import json
import os
import sys
import time


def fail(stage, rnd, message, code=1):
    write_result({"stage": stage, "round": rnd, "succeeded": False, "message": message}, None)
    sys.exit(code)


def write_result(result, root):
    text = json.dumps(result, separators=(",", ":"))
    path = os.environ.get("LLAMADUO_RESULT_PATH", "/dev/termination-log")
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:  # e.g. a device file: write in place
        with open(path, "w") as f:
            f.write(text)
    if root:
        with open(os.path.join(root, f"round-{result['round']}", f"{result['stage']}.result.json"), "w") as f:
            f.write(text)


def read_rows(url):
    if not url.startswith("file://"):
        raise SystemExit(f"coverage source {url!r}: the fake stage reads file:// sources only")
    with open(url[len("file://"):]) as f:
        return [line for line in f if line.strip()]


def freeze_coverage(config, root):
    """Round 1 materializes coverage/train.jsonl and coverage/test.jsonl (the contract's
    layout) from the coverage source; later rounds find them frozen."""
    cov_dir = os.path.join(root, "coverage")
    if os.path.exists(os.path.join(cov_dir, "train.jsonl")):
        return
    os.makedirs(cov_dir, exist_ok=True)
    cov = config["coverage"]
    rows = read_rows(cov["source"])
    if cov.get("testSource"):
        train, test = rows, read_rows(cov["testSource"])
    else:
        every = max(2, round(1 / float(cov.get("testFraction", 0.1))))
        train = [r for i, r in enumerate(rows) if i % every]
        test = [r for i, r in enumerate(rows) if i % every == 0]
    for name, part in (("test.jsonl", test), ("train.jsonl", train)):  # train last: the marker
        with open(os.path.join(cov_dir, name), "w") as f:
            f.writelines(part)


def main():
    stage = sys.argv[1] if len(sys.argv) > 1 else ""
    if stage not in ("synthesize", "train", "evaluate"):
        fail(stage or "synthesize", 0, f"unknown stage {stage!r}", 2)
    try:
        config = json.loads(os.environ["LLAMADUO_STAGE_CONFIG"])
    except (KeyError, ValueError) as e:
        fail(stage, 0, f"LLAMADUO_STAGE_CONFIG: {e}", 2)
    rnd = int(config.get("round", 0))
    if config.get("stage") != stage:
        fail(stage, rnd, f"the stage config is for {config.get('stage')}, but `{stage}` was run", 2)
    artifacts = config.get("artifacts", "")
    if not artifacts.startswith("file://"):
        fail(stage, rnd, f"artifacts {artifacts!r}: the fake stage writes file:// stores only", 2)
    root = artifacts[len("file://"):]
    os.makedirs(os.path.join(root, f"round-{rnd}"), exist_ok=True)
    started = time.time()
    time.sleep(float(os.environ.get("E2E_FAKE_STAGE_SECONDS", "2")))
    migration = config.get("migration", "")
    targets = [t for t in os.environ.get("E2E_FAKE_FAIL", "").split(",") if t]
    forms = {stage, f"{stage}:{rnd}", f"{migration}/{stage}", f"{migration}/{stage}:{rnd}"}
    if forms.intersection(targets):
        fail(stage, rnd, f"injected failure of {stage} in round {rnd} (E2E_FAKE_FAIL)")

    result = {"stage": stage, "round": rnd, "succeeded": True,
              "serviceTokens": {"input": 0, "output": 0}}
    if stage == "synthesize":
        freeze_coverage(config, root)
        samples = int(config.get("samples", 0))
        with open(os.path.join(root, f"round-{rnd}", "synthetic.jsonl"), "w") as f:
            for i in range(samples):
                f.write(json.dumps({"messages": [{"role": "user", "content": f"q{rnd}-{i}"},
                                                 {"role": "assistant", "content": f"a{rnd}-{i}"}],
                                    "id": f"syn-{rnd}-{i}", "source": "synthetic"}) + "\n")
        result["serviceTokens"] = {"input": 10 * samples, "output": 5 * samples}
        result["synthesize"] = {"requested": samples, "produced": samples, "rejectedMalformed": 0,
                                "deduplicated": 0, "decontaminated": 0, "retries": 0}
    elif stage == "train":
        model = os.path.join(root, f"round-{rnd}", "model")
        os.makedirs(model, exist_ok=True)
        with open(os.path.join(model, "config.json"), "w") as f:
            json.dump({"fake": True, "round": rnd}, f)
        result["train"] = {"steps": 10, "trainingSamples": 100, "finalLoss": 1.0 / rnd,
                           "meanLoss": 2.0 / rnd, "tokensPerSecond": 1000.0,
                           "modelUri": f"{artifacts}/round-{rnd}/model"}
    else:
        scores = [float(s) for s in os.environ.get("E2E_FAKE_SCORES", "40,60,80").split(",")]
        mean = scores[min(rnd, len(scores)) - 1]
        os.makedirs(os.path.join(root, f"round-{rnd}", "eval"), exist_ok=True)
        with open(os.path.join(root, f"round-{rnd}", "eval", "summary.json"), "w") as f:
            json.dump({"mean": mean}, f)
        result["serviceTokens"] = {"input": 100, "output": 20}
        result["evaluate"] = {"scores": {"mean": mean, "passRate": mean / 100.0},
                              "prompts": 10, "answers": 10}
    result["durationSeconds"] = round(time.time() - started, 3)
    write_result(result, root)


if __name__ == "__main__":
    main()
