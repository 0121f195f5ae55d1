//! An API key never leaves the stage processes' environment: a whole local migration runs
//! through a provider that needs a key (the OpenAI wire format, served by `simulate-teacher
//! --require-api-key`, so the key is really sent and checked), and the sentinel key appears in
//! no file of the work directory (status.yaml, stage configs, results, logs, spend logs,
//! reports, artifacts) and in none of `llamaduo run`'s output. A second run with a wrong key,
//! which the service echoes back in its 401 as a careless service might, fails at once
//! (a permanent failure, one attempt) and leaks that key nowhere either.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use support::{ensure_trainer, llamaduo};

use llamaduo::api::{FailureClass, LlamaDuoMigrationStatus, Phase, Stage};

const QUICKSTART: &str = include_str!("../examples/quickstart/migration.yaml");
const COVERAGE: &str = include_str!("../examples/quickstart/coverage.jsonl");
const SENTINEL: &str = "sk-llamaduo-sentinel-7f3a9c1e5b";
const WRONG: &str = "sk-llamaduo-wrong-key-04d2e8b6aa";

/// `simulate-teacher --require-api-key SENTINEL` on a free port; killed on drop.
struct Teacher {
    child: Child,
    base_url: String,
}

impl Teacher {
    fn start(trainer: &Path) -> Self {
        let mut child = Command::new(trainer)
            .args(["simulate-teacher", "--listen", "127.0.0.1:0"])
            .args(["--require-api-key", SENTINEL])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("simulate-teacher starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("baseUrl JSON");
        let base_url = v["baseUrl"].as_str().expect("baseUrl").to_string();
        Self { child, base_url }
    }
}

impl Drop for Teacher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The quickstart, one short round, with an OpenAI teacher (and judge) that needs a key.
fn manifest(dir: &Path, base_url: &str) -> PathBuf {
    let yaml = QUICKSTART
        .replace(
            "    provider: simulated\n    model: triage",
            &format!(
                "    provider: openai\n    model: triage\n    baseUrl: {base_url}\n    apiKeySecretRef:\n      name: openai\n      key: api-key"
            ),
        )
        .replace("initialSamples: 100", "initialSamples: 20")
        .replace("epochs: 20", "epochs: 2")
        .replace("maxRounds: 6", "maxRounds: 1");
    assert!(yaml.contains("provider: openai") && yaml.contains("maxRounds: 1"));
    std::fs::write(dir.join("coverage.jsonl"), COVERAGE).expect("coverage");
    let path = dir.join("migration.yaml");
    std::fs::write(&path, yaml).expect("manifest");
    path
}

fn run(manifest: &Path, workdir: &Path, key: &str) -> Output {
    Command::new(llamaduo())
        .arg("run")
        .arg(manifest)
        .arg("--workdir")
        .arg(workdir)
        .env_remove("LLAMADUO_TRAINER")
        .env_remove("LLAMADUO_TEACHER_API_KEY")
        .env_remove("LLAMADUO_JUDGE_API_KEY")
        .env("OPENAI_API_KEY", key)
        .stdin(Stdio::null())
        .output()
        .expect("llamaduo run")
}

/// Every file under `dir` (not following links) that contains `needle`.
fn files_containing(dir: &Path, needle: &str) -> (usize, Vec<PathBuf>) {
    let mut seen = 0;
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let ty = e.file_type().expect("file type");
            if ty.is_dir() {
                stack.push(e.path());
            } else if ty.is_file() {
                seen += 1;
                let bytes = std::fs::read(e.path()).expect("read");
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    found.push(e.path());
                }
            }
        }
    }
    (seen, found)
}

fn status(workdir: &Path) -> LlamaDuoMigrationStatus {
    let text = std::fs::read_to_string(workdir.join("status.yaml")).expect("status.yaml");
    serde_saphyr::from_str(&text).expect("status")
}

fn assert_nowhere(key: &str, workdir: &Path, out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.contains(key), "the key is in stdout:\n{stdout}");
    assert!(!stderr.contains(key), "the key is in stderr:\n{stderr}");
    let (files, leaks) = files_containing(workdir, key);
    assert!(
        files > 10,
        "only {files} files written: the run did not get far"
    );
    assert!(leaks.is_empty(), "the key is in {leaks:?}");
}

#[test]
fn an_api_key_reaches_the_service_and_nothing_else() {
    let trainer = ensure_trainer();
    let teacher = Teacher::start(&trainer);
    let tmp = tempfile::tempdir().expect("tmp");
    let manifest = manifest(tmp.path(), &teacher.base_url);

    let workdir = tmp.path().join("run");
    let out = run(&manifest, &workdir, SENTINEL);
    let s = status(&workdir);
    let round = s.rounds.iter().find(|r| r.round == 1).expect("round 1");
    // The service accepted the key: synthesis and judging happened.
    assert!(
        round.synthesized.unwrap_or(0) > 0 && round.scores.is_some(),
        "round 1 did not synthesize and score: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(s.service_tokens.total() > 0);
    eprintln!(
        "round 1: {} synthesized, mean score {:?}, {} service tokens",
        round.synthesized.unwrap_or(0),
        round.scores.map(|x| x.mean),
        s.service_tokens.total()
    );
    assert_nowhere(SENTINEL, &workdir, &out);

    // A wrong key: the 401 (which echoes it) fails the migration on the first attempt.
    let workdir = tmp.path().join("wrong");
    let out = run(&manifest, &workdir, WRONG);
    assert!(!out.status.success());
    let s = status(&workdir);
    assert_eq!(s.phase, Some(Phase::Failed));
    let record = s.rounds[0]
        .stage(Stage::Synthesize)
        .cloned()
        .expect("synthesize record");
    assert_eq!(record.attempts, 1, "a 401 is not retried: {record:?}");
    assert_eq!(record.failure_class, Some(FailureClass::Permanent));
    let message = record.message.unwrap_or_default();
    assert!(
        message.contains("401") && message.contains("[REDACTED]"),
        "{message}"
    );
    assert_nowhere(WRONG, &workdir, &out);
}
