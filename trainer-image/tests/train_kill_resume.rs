//! Kill-safe training: a train stage SIGKILLed after its first checkpoint (as an eviction or
//! an OOM kill would) resumes in a new process from that checkpoint and publishes weights
//! identical to an uninterrupted run's, with `file://` storage (checkpoints in the store's
//! directory) and with `s3://` storage (checkpoints on the "pod's" scratch disk, mirrored to
//! the bucket: each run here gets its own scratch directory, as a new pod would). The S3
//! endpoint is moto's server (`moto_server` from the repository's .venv, which scripts/test.sh
//! fills from requirements-test.txt; under LLAMADUO_REQUIRE_PEFT=1 or CI a missing one fails).

mod stage_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stage_support::{read_result, stage_command, stage_config};

fn rows() -> String {
    (0..48)
        .map(|i| {
            json!({"messages": [
                {"role": "user", "content": format!("What is {i} plus {}?", i % 7)},
                {"role": "assistant", "content": format!("{}", i + i % 7)},
            ]})
            .to_string()
                + "\n"
        })
        .collect()
}

/// A run long enough to be killed between its checkpoints: 240 steps, one every 10.
fn config(artifacts: &str) -> Value {
    let root = Path::new("/unused");
    let mut c = stage_config(
        root,
        "train",
        json!({"training": {"method": "full", "epochs": 40, "batchSize": 8, "maxSeqLen": 32,
                            "checkpointEvery": 10, "learningRate": 0.003, "seed": 5}}),
    );
    c["artifacts"] = json!(artifacts);
    c["student"] = json!({"fromScratch": {"hiddenSize": 64, "numLayers": 2, "numHeads": 4,
                                          "vocabSize": 300}});
    c
}

/// Starts the train stage with its own scratch directory (`TMPDIR`: a pod's emptyDir).
fn spawn(dir: &Path, name: &str, config: &Value, env: &[(&str, String)]) -> (Child, PathBuf) {
    let scratch = dir.join(format!("{name}-scratch"));
    std::fs::create_dir_all(&scratch).expect("scratch");
    let (mut cmd, result) = stage_command(dir, name, "train", config, "cpu", &scratch);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    (cmd.spawn().expect("trainer starts"), result)
}

fn run_to_end(dir: &Path, name: &str, config: &Value, env: &[(&str, String)]) -> Value {
    let (mut child, result) = spawn(dir, name, config, env);
    let status = child.wait().expect("wait");
    let result = read_result(&result);
    assert!(status.success(), "{name}: {result}");
    result
}

/// Starts a run and SIGKILLs it once `checkpointed()` says a checkpoint is in the store.
fn run_and_kill(
    dir: &Path,
    config: &Value,
    env: &[(&str, String)],
    checkpointed: impl Fn() -> bool,
) {
    let (mut child, _) = spawn(dir, "killed", config, env);
    let started = Instant::now();
    while !checkpointed() {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the run ended before its first checkpoint reached the store"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "killed, not finished");
}

fn assert_resumed(resumed: &Value, reference: &Value) {
    let step = resumed["train"]["resumedFromStep"]
        .as_u64()
        .unwrap_or_else(|| panic!("the rerun did not resume from a checkpoint: {resumed}"));
    let total = reference["train"]["steps"].as_u64().expect("steps");
    assert!(step >= 10 && step < total, "resumed from {step} of {total}");
    assert_eq!(reference["train"].get("resumedFromStep"), None);
    assert_eq!(resumed["train"]["steps"], reference["train"]["steps"]);
    assert_eq!(
        resumed["train"]["finalLoss"],
        reference["train"]["finalLoss"]
    );
    eprintln!("resumed from step {step} of {total}, final loss identical");
}

#[test]
fn a_train_killed_with_file_storage_resumes_with_identical_weights() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let (killed_root, reference_root) = (dir.join("store-a"), dir.join("store-b"));
    for root in [&killed_root, &reference_root] {
        std::fs::create_dir_all(root.join("coverage")).expect("dir");
        std::fs::write(root.join("coverage/train.jsonl"), rows()).expect("rows");
    }
    let url = |root: &Path| format!("file://{}", root.display());
    let checkpoints = killed_root.join("round-1/checkpoints");
    run_and_kill(dir, &config(&url(&killed_root)), &[], || {
        // A complete checkpoint: renamed from its .tmp- directory into step-N/.
        std::fs::read_dir(&checkpoints)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                e.file_name().to_string_lossy().starts_with("step-")
                    && e.path().join("state.json").exists()
            })
    });
    let resumed = run_to_end(dir, "resumed", &config(&url(&killed_root)), &[]);
    let reference = run_to_end(dir, "reference", &config(&url(&reference_root)), &[]);
    assert_resumed(&resumed, &reference);
    let weights = |root: &Path| std::fs::read(root.join("round-1/model/model.safetensors"));
    assert!(
        weights(&killed_root).expect("weights") == weights(&reference_root).expect("weights"),
        "the resumed run's weights differ from the uninterrupted run's"
    );
    assert!(
        !checkpoints.exists(),
        "checkpoints removed after publishing"
    );
}

/// moto's S3 server on a free port, killed on drop.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    fn start() -> Option<Self> {
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
        let required = std::env::var_os("CI").is_some_and(|v| v == "true")
            || std::env::var_os("LLAMADUO_REQUIRE_PEFT").is_some_and(|v| v == "1");
        if !bin.exists() {
            assert!(
                !required,
                "{} is missing: scripts/test.sh installs moto[server] from requirements-test.txt",
                bin.display()
            );
            eprintln!(
                "SKIPPED: {} is missing (run scripts/test.sh to make .venv)",
                bin.display()
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let endpoint = format!("http://127.0.0.1:{port}");
        let moto = Moto { child, endpoint };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "moto_server did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(moto)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    fn http(&self) -> reqwest::blocking::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::blocking::Client::new()
    }

    fn put(&self, path: &str, body: Vec<u8>) {
        let r = self
            .http()
            .put(format!("{}/{path}", self.endpoint))
            .body(body)
            .send()
            .expect("PUT");
        assert!(r.status().is_success(), "PUT {path}: {}", r.status());
    }

    fn get(&self, path: &str) -> Vec<u8> {
        let r = self
            .http()
            .get(format!("{}/{path}", self.endpoint))
            .send()
            .expect("GET");
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.bytes().expect("body").to_vec()
    }

    /// An object, read as the stages read it (signed, through the store crate): the objects
    /// the trainer wrote are private to its credentials.
    fn object(&self, bucket: &str, key: &str) -> Vec<u8> {
        let s3 = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_region("us-east-1")
            .build()
            .expect("s3 client");
        let store = llamaduo_store::Store::from_object_store(
            std::sync::Arc::new(s3),
            "",
            &format!("s3://{bucket}"),
        )
        .expect("store");
        tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(store.get(key))
            .expect("object")
            .to_vec()
    }

    /// The keys under `prefix` of `bucket` (ListObjectsV2's XML, keys only).
    fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let xml = String::from_utf8(self.get(&format!("{bucket}?list-type=2&prefix={prefix}")))
            .expect("utf8");
        xml.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_train_killed_with_object_storage_resumes_from_the_bucket_with_identical_weights() {
    let Some(moto) = Moto::start() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    moto.put("ckpt", Vec::new());
    for prefix in ["killed", "reference"] {
        moto.put(
            &format!("ckpt/{prefix}/coverage/train.jsonl"),
            rows().into_bytes(),
        );
    }
    let env = moto.env();
    run_and_kill(dir, &config("s3://ckpt/killed"), &env, || {
        moto.list("ckpt", "killed/round-1/checkpoints/")
            .iter()
            .any(|k| k.ends_with("/state.json"))
    });
    // The killed "pod"'s scratch disk is gone with it; the next one starts empty.
    std::fs::remove_dir_all(dir.join("killed-scratch")).expect("scratch");
    let resumed = run_to_end(dir, "resumed", &config("s3://ckpt/killed"), &env);
    let reference = run_to_end(dir, "reference", &config("s3://ckpt/reference"), &env);
    assert_resumed(&resumed, &reference);
    assert!(
        moto.object("ckpt", "killed/round-1/model/model.safetensors")
            == moto.object("ckpt", "reference/round-1/model/model.safetensors"),
        "the resumed run's weights differ from the uninterrupted run's"
    );
    assert!(
        moto.list("ckpt", "killed/round-1/checkpoints/").is_empty(),
        "mirrored checkpoints removed after publishing"
    );
}
