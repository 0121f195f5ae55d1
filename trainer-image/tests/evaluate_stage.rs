//! The evaluate stage against the simulated teacher (in-process on 127.0.0.1:0) and a tiny
//! from-scratch model: generation + judging end to end, known-good and known-bad answers,
//! the teacher baseline, judge fault injection, and kill-and-resume.

#[allow(dead_code)]
#[path = "../src/evaluate/mod.rs"]
mod evaluate;
#[allow(dead_code)]
#[path = "../src/failure_class.rs"]
mod failure_class;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use evaluate::ledger::Ledger;
use evaluate::records::{
    ANSWERS_FILE, AnswerRecord, Answerer, JUDGEMENTS_FILE, JudgementKey, JudgementRecord,
    SUMMARY_FILE, Summary, answer_id,
};
use evaluate::{EvalServices, evaluate_with};
use llamaduo::api::{DatasetRow, EvaluateConfig, ProviderSpec, StageResult};
use llamaduo_service_llm::flow::{Backoff, ClientConfig, LlmClient, TokenBudget};
use llamaduo_service_llm::provider::provider_for;
use llamaduo_service_llm::simulate::{Family, sample_dataset};
use llamaduo_service_llm::{SimulateOptions, SimulatedTeacher, spawn_simulated_teacher};
use llamaduo_store::{Store, read_jsonl, write_jsonl};
use rand::SeedableRng;
use serde_json::json;

const PROMPTS: usize = 6;

fn test_rows() -> Vec<DatasetRow> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    sample_dataset(Family::Arithmetic, PROMPTS, &mut rng)
}

fn config(root: &Path, base_url: &str, round: u32, extra: serde_json::Value) -> EvaluateConfig {
    let mut v = json!({
        "namespace": "local",
        "migration": "m",
        "round": round,
        "artifacts": format!("file://{}", root.display()),
        "task": {"description": Family::Arithmetic.description()},
        "student": {"fromScratch": {"hiddenSize": 32, "numLayers": 1, "numHeads": 2, "vocabSize": 300}},
        "training": {"method": "full"},
        "judge": {"provider": "simulated", "model": "arithmetic", "baseUrl": base_url,
                  "limits": {"concurrency": 4}},
        "teacher": {"provider": "simulated", "model": "arithmetic", "baseUrl": base_url},
        "evaluation": {"answersPerPrompt": 2, "judgeSamples": 2,
                       "generation": {"temperature": 0.8, "maxNewTokens": 6}}
    });
    merge(&mut v, extra);
    serde_json::from_value(v).expect("valid evaluate config")
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// Clients with test-sized backoff, sharing one budget.
fn services(cfg: &EvaluateConfig) -> EvalServices {
    let budget = Arc::new(TokenBudget::new(cfg.token_budget));
    let make = |spec: &ProviderSpec| {
        let mut cc = ClientConfig::from_spec(spec);
        cc.backoff = Backoff {
            base: Duration::from_millis(5),
            max: Duration::from_millis(40),
            max_retry_after: Duration::from_millis(50),
        };
        Arc::new(LlmClient::new(
            provider_for(spec, None).expect("provider"),
            cc,
            Arc::clone(&budget),
        ))
    };
    EvalServices {
        judge: Some(make(&cfg.judge)),
        teacher: cfg.evaluation.baseline.then(|| make(&cfg.teacher)),
    }
}

async fn teacher(opts: SimulateOptions) -> SimulatedTeacher {
    spawn_simulated_teacher(SimulateOptions {
        retry_after: 0.0,
        ..opts
    })
    .await
    .expect("simulated teacher starts")
}

/// Writes coverage/test.jsonl and a tiny from-scratch model as round `round`'s full weights.
async fn seed_store(root: &Path, rounds: &[u32]) -> Vec<DatasetRow> {
    let rows = test_rows();
    let store = Store::local(root);
    write_jsonl(&store, "coverage/test.jsonl", &rows)
        .await
        .expect("write test set");
    let spec = serde_json::from_value(
        json!({"hiddenSize": 32, "numLayers": 1, "numHeads": 2, "vocabSize": 300}),
    )
    .expect("spec");
    let texts = llamaduo_model::from_scratch::tokenizer_corpus(&rows);
    for &r in rounds {
        llamaduo_model::from_scratch::build_from_scratch(
            &spec,
            &texts,
            3,
            256,
            &root.join(format!("round-{r}/model")),
        )
        .expect("tiny model");
    }
    rows
}

/// Stores answers for `round` as if an earlier run had generated them.
async fn store_answers(root: &Path, round: u32, rows: &[DatasetRow], good: bool) {
    let store = Store::local(root);
    let mut ledger: Ledger<AnswerRecord, String> = Ledger::open(
        &store,
        &format!("round-{round}/eval/{ANSWERS_FILE}"),
        |a: &AnswerRecord| a.id.clone(),
        |_| false,
    )
    .await
    .expect("open");
    let mut recs = Vec::new();
    for row in rows {
        let pid = row.id.clone().expect("id");
        for a in 0..2u32 {
            let text = if good {
                row.answer().expect("answer").to_string()
            } else {
                format!("I think it is {}", 7_919 + a)
            };
            recs.push(AnswerRecord {
                id: answer_id(Answerer::Student, &pid, a),
                answerer: Answerer::Student,
                prompt_id: pid.clone(),
                answer_index: a,
                text,
                finish_reason: Some("eos".into()),
                tokens: 1,
                service_tokens: Default::default(),
            });
        }
    }
    ledger.commit(recs).await.expect("commit");
}

async fn read_eval(root: &Path, round: u32) -> (Vec<AnswerRecord>, Vec<JudgementRecord>, Summary) {
    let store = Store::local(root);
    let dir = format!("round-{round}/eval");
    let answers = read_jsonl(&store, &format!("{dir}/{ANSWERS_FILE}"))
        .await
        .expect("answers.jsonl");
    let judgements = read_jsonl(&store, &format!("{dir}/{JUDGEMENTS_FILE}"))
        .await
        .expect("judgements.jsonl");
    let summary = store
        .get_json(&format!("{dir}/{SUMMARY_FILE}"))
        .await
        .expect("summary.json");
    (answers, judgements, summary)
}

/// A store whose round 1 has the test set and known-good student answers stored (nothing to
/// generate), judged by a simulated judge with `opts`' faults under `extra` settings.
async fn good_answers_judged_by(
    opts: SimulateOptions,
    extra: serde_json::Value,
) -> (tempfile::TempDir, SimulatedTeacher, EvaluateConfig) {
    let tmp = tempfile::tempdir().expect("tmp");
    let sim = teacher(opts).await;
    let rows = test_rows();
    write_jsonl(&Store::local(tmp.path()), "coverage/test.jsonl", &rows)
        .await
        .expect("test set");
    store_answers(tmp.path(), 1, &rows, true).await;
    let cfg = config(tmp.path(), &sim.base_url(), 1, extra);
    (tmp, sim, cfg)
}

fn assert_ok(r: &StageResult) {
    assert!(r.succeeded, "stage failed: {:?}", r.message);
}

fn assert_unique(answers: &[AnswerRecord], judgements: &[JudgementRecord]) {
    let ids: HashSet<&str> = answers.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids.len(), answers.len(), "duplicate answers");
    let keys: HashSet<JudgementKey> = judgements.iter().map(JudgementRecord::key).collect();
    assert_eq!(keys.len(), judgements.len(), "duplicate judgements");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_model_generates_and_the_judge_scores_every_answer() {
    let tmp = tempfile::tempdir().expect("tmp");
    let sim = teacher(SimulateOptions::ephemeral()).await;
    seed_store(tmp.path(), &[1]).await;
    let cfg = config(tmp.path(), &sim.base_url(), 1, json!({}));
    let result = evaluate_with(&cfg, &services(&cfg)).await;
    assert_ok(&result);
    let (answers, judgements, summary) = read_eval(tmp.path(), 1).await;
    assert_eq!(answers.len(), PROMPTS * 2);
    assert_eq!(judgements.len(), PROMPTS * 2 * 2);
    assert_unique(&answers, &judgements);
    assert!(answers.iter().all(|a| a.finish_reason.is_some()));
    let out = result.evaluate.expect("outcome");
    assert_eq!(out.prompts, PROMPTS as u64);
    assert_eq!(out.answers, (PROMPTS * 2) as u64);
    assert_eq!(out.failed_judgements, 0);
    // An untrained model answers arithmetic wrongly: the judge scores it low.
    assert!(out.scores.mean < 50.0, "{:?}", out.scores);
    assert_eq!(out.scores, summary.scores());
    assert_eq!(summary.student.per_prompt.len(), PROMPTS);
    assert!(result.service_tokens.total() > 0);
    assert_eq!(result.service_tokens, summary.service_tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_good_answers_score_high_known_bad_low_and_baseline_matches() {
    let tmp = tempfile::tempdir().expect("tmp");
    let sim = teacher(SimulateOptions::ephemeral()).await;
    // No model at all: stored answers mean nothing is generated (a model load would fail).
    let rows = test_rows();
    write_jsonl(&Store::local(tmp.path()), "coverage/test.jsonl", &rows)
        .await
        .expect("test set");
    store_answers(tmp.path(), 1, &rows, true).await;
    store_answers(tmp.path(), 2, &rows, false).await;
    let baseline = json!({"evaluation": {"baseline": true}});
    let good_cfg = config(tmp.path(), &sim.base_url(), 1, baseline.clone());
    let good = evaluate_with(&good_cfg, &services(&good_cfg)).await;
    assert_ok(&good);
    let bad_cfg = config(tmp.path(), &sim.base_url(), 2, baseline);
    let bad = evaluate_with(&bad_cfg, &services(&bad_cfg)).await;
    assert_ok(&bad);
    let g = good.evaluate.expect("good").scores;
    let b = bad.evaluate.expect("bad").scores;
    assert!(g.mean >= 90.0, "{g:?}");
    assert_eq!(g.pass_rate, 1.0);
    assert!(b.mean <= 40.0, "{b:?}");
    assert_eq!(b.pass_rate, 0.0);
    // The simulated teacher answers correctly, so a perfect student matches it.
    let pm = g.performance_matching.expect("ratio");
    assert!((pm - 1.0).abs() < 0.05, "{pm}");
    assert!(b.performance_matching.expect("ratio") < 0.5);
    let (answers, judgements, summary) = read_eval(tmp.path(), 1).await;
    assert_eq!(
        answers.len(),
        PROMPTS * 2 * 2,
        "student and teacher answers"
    );
    assert_eq!(judgements.len(), PROMPTS * 2 * 2 * 2);
    assert!(summary.teacher.expect("teacher side").mean >= 90.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_rounds_reuse_the_baseline_while_its_settings_stay() {
    let tmp = tempfile::tempdir().expect("tmp");
    let sim = teacher(SimulateOptions::ephemeral()).await;
    let rows = test_rows();
    write_jsonl(&Store::local(tmp.path()), "coverage/test.jsonl", &rows)
        .await
        .expect("test set");
    for round in 1..=3 {
        store_answers(tmp.path(), round, &rows, round != 2).await;
    }
    let baseline = json!({"evaluation": {"baseline": true}});
    let first_cfg = config(tmp.path(), &sim.base_url(), 1, baseline.clone());
    let first = evaluate_with(&first_cfg, &services(&first_cfg)).await;
    assert_ok(&first);
    // Round 2: the same settings. The teacher is not asked again and its answers are not
    // judged again: only the student's judgements cost tokens.
    let second_cfg = config(tmp.path(), &sim.base_url(), 2, baseline.clone());
    let second = evaluate_with(&second_cfg, &services(&second_cfg)).await;
    assert_ok(&second);
    let (answers_1, judgements_1, summary_1) = read_eval(tmp.path(), 1).await;
    let (answers_2, judgements_2, summary_2) = read_eval(tmp.path(), 2).await;
    assert_eq!(summary_1.baseline_from_round, None);
    assert_eq!(summary_2.baseline_from_round, Some(1));
    let teacher = |a: &[AnswerRecord]| -> Vec<(String, String)> {
        let mut t: Vec<_> = a
            .iter()
            .filter(|a| a.answerer == Answerer::Teacher)
            .map(|a| (a.id.clone(), a.text.clone()))
            .collect();
        t.sort();
        t
    };
    assert_eq!(teacher(&answers_2), teacher(&answers_1), "the same answers");
    assert_eq!(judgements_2.len(), judgements_1.len());
    assert_eq!(
        summary_2.teacher, summary_1.teacher,
        "the same baseline scores"
    );
    let student_judgements = (PROMPTS * 2 * 2) as u64;
    let per_judgement =
        first.service_tokens.total() / (2 * student_judgements + PROMPTS as u64 * 2);
    assert!(
        second.service_tokens.total() < first.service_tokens.total() / 2 + per_judgement,
        "round 2 paid for the baseline again: {} vs {}",
        second.service_tokens.total(),
        first.service_tokens.total()
    );
    // The ratio is still measured against it: bad answers, low ratio.
    let pm = second
        .evaluate
        .expect("outcome")
        .scores
        .performance_matching;
    assert!(pm.expect("ratio") < 0.5, "{pm:?}");
    // Round 3 judges with more samples: another baseline, scored anew.
    let third_cfg = config(
        tmp.path(),
        &sim.base_url(),
        3,
        json!({"evaluation": {"baseline": true, "judgeSamples": 3}}),
    );
    let third = evaluate_with(&third_cfg, &services(&third_cfg)).await;
    assert_ok(&third);
    let (_, _, summary_3) = read_eval(tmp.path(), 3).await;
    assert_eq!(summary_3.baseline_from_round, None);
    assert!(third.service_tokens.total() > first.service_tokens.total());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn judge_faults_are_retried_and_unreadable_verdicts_counted() {
    let (tmp, _sim, cfg) = good_answers_judged_by(
        SimulateOptions {
            seed: 11,
            fault_malformed: 0.35,
            fault_429: 0.15,
            fault_500: 0.15,
            ..SimulateOptions::ephemeral()
        },
        json!({"evaluation": {"judgeSamples": 5}, "judge": {"maxRetries": 20}}),
    )
    .await;
    let result = evaluate_with(&cfg, &services(&cfg)).await;
    assert_ok(&result);
    let out = result.evaluate.expect("outcome");
    let (answers, judgements, summary) = read_eval(tmp.path(), 1).await;
    assert_unique(&answers, &judgements);
    assert_eq!(
        judgements.len(),
        PROMPTS * 2 * 5,
        "every sample recorded once"
    );
    let failed: Vec<&JudgementRecord> = judgements.iter().filter(|j| j.score.is_none()).collect();
    // Malformed replies (35%) plus 429s and 500s: about a third of the 60 samples stay
    // unreadable, yet (5 samples each) almost never all of one answer's, so the 90% of answers
    // that must be scored are.
    assert!(!failed.is_empty(), "some verdicts stay unreadable");
    assert!(failed.iter().all(|j| j.error.is_some() && j.attempts == 3));
    assert_eq!(out.failed_judgements, failed.len() as u64);
    assert_eq!(summary.student.failed_judgements, failed.len() as u64);
    // Failed samples are excluded, not zero: the good answers still score high.
    assert!(out.scores.mean >= 90.0, "{:?}", out.scores);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mean_over_too_few_scored_answers_is_refused() {
    // One sample per answer, most verdicts unreadable even after their retries
    // (0.9^3 per sample): the few answers left could not stand for the round.
    let (tmp, _judge, cfg) = good_answers_judged_by(
        SimulateOptions {
            seed: 7,
            fault_malformed: 0.9,
            ..SimulateOptions::ephemeral()
        },
        json!({"evaluation": {"judgeSamples": 1}}),
    )
    .await;
    let result = evaluate_with(&cfg, &services(&cfg)).await;
    assert!(!result.succeeded, "{result:?}");
    let message = result.message.clone().unwrap_or_default();
    assert!(
        message.contains("student answers could be scored") && message.contains("at least 90%"),
        "{message}"
    );
    assert!(message.contains("a rerun judges them again"), "{message}");
    // Nothing frozen: no summary, so no score reached the status.
    assert!(!tmp.path().join("round-1/eval/summary.json").exists());
    assert!(result.evaluate.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_judge_that_could_not_be_read_is_asked_again_by_a_rerun() {
    // Every verdict unreadable: the stage fails, and nothing is frozen.
    let (tmp, _broken, cfg) = good_answers_judged_by(
        SimulateOptions {
            seed: 5,
            fault_malformed: 1.0,
            ..SimulateOptions::ephemeral()
        },
        json!({}),
    )
    .await;
    let result = evaluate_with(&cfg, &services(&cfg)).await;
    assert!(!result.succeeded);
    let message = result.message.clone().unwrap_or_default();
    assert!(message.contains("a rerun judges them again"), "{message}");
    // The judge works again: the rerun judges the failed samples and succeeds.
    let fixed = teacher(SimulateOptions {
        seed: 5,
        ..SimulateOptions::ephemeral()
    })
    .await;
    let cfg = config(tmp.path(), &fixed.base_url(), 1, json!({}));
    let result = evaluate_with(&cfg, &services(&cfg)).await;
    assert_ok(&result);
    let (answers, judgements, summary) = read_eval(tmp.path(), 1).await;
    assert_unique(&answers, &judgements);
    assert!(
        judgements.iter().all(|j| j.score.is_some()),
        "the failures were replaced"
    );
    assert_eq!(summary.student.failed_judgements, 0);
    assert!(summary.student.mean >= 90.0, "{:?}", summary.student);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_under_another_metric_scores_every_answer_by_that_metric() {
    // The judge could be read for a few answers only (the stage failed, nothing frozen); the
    // user switches to an offline metric and reruns. The judge's scores must not stand in
    // for exact-match ones.
    let (tmp, _flaky, cfg) = good_answers_judged_by(
        SimulateOptions {
            seed: 7,
            fault_malformed: 0.9,
            ..SimulateOptions::ephemeral()
        },
        json!({"evaluation": {"judgeSamples": 1}}),
    )
    .await;
    assert!(!evaluate_with(&cfg, &services(&cfg)).await.succeeded);
    let mut exact = cfg.clone();
    exact.evaluation.metric = llamaduo::api::Metric::ExactMatch;
    let result = evaluate_with(&exact, &services(&exact)).await;
    assert_ok(&result);
    let (_, judgements, summary) = read_eval(tmp.path(), 1).await;
    assert!(
        judgements
            .iter()
            .any(|j| j.metric == llamaduo::api::Metric::Judge && j.score.is_some()),
        "some answers were judged before the switch"
    );
    // Every answer scored by exact match (the stored answers are the references).
    assert_eq!(summary.student.scored_answers, (PROMPTS * 2) as u64);
    assert_eq!(summary.student.failed_judgements, 0);
    assert_eq!(summary.student.mean, 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_run_resumes_without_duplicates_and_gives_the_same_summary() {
    let sim = teacher(SimulateOptions {
        latency_ms: 40,
        ..SimulateOptions::ephemeral()
    })
    .await;
    let one = json!({"judge": {"limits": {"concurrency": 1}}, "evaluation": {"judgeSamples": 3}});
    // Reference: one uninterrupted run.
    let a = tempfile::tempdir().expect("tmp");
    seed_store(a.path(), &[1]).await;
    let cfg_a = config(a.path(), &sim.base_url(), 1, one.clone());
    let ra = evaluate_with(&cfg_a, &services(&cfg_a)).await;
    assert_ok(&ra);
    let (answers_a, judgements_a, summary_a) = read_eval(a.path(), 1).await;

    // The same evaluation killed part way, then run again.
    let b = tempfile::tempdir().expect("tmp");
    seed_store(b.path(), &[1]).await;
    let cfg_b = config(b.path(), &sim.base_url(), 1, one);
    let kill_after = Duration::from_secs_f64(ra.duration_seconds * 0.6);
    let killed = tokio::time::timeout(kill_after, evaluate_with(&cfg_b, &services(&cfg_b))).await;
    assert!(killed.is_err(), "the first run must be cut off");
    let store = Store::local(b.path());
    assert!(
        !store
            .exists("round-1/eval/summary.json")
            .await
            .expect("exists"),
        "a killed run writes no summary"
    );
    let rb = evaluate_with(&cfg_b, &services(&cfg_b)).await;
    assert_ok(&rb);
    let (answers_b, judgements_b, summary_b) = read_eval(b.path(), 1).await;
    assert_unique(&answers_b, &judgements_b);
    assert_eq!(answers_b.len(), answers_a.len());
    assert_eq!(judgements_b.len(), judgements_a.len());
    let texts = |v: &[AnswerRecord]| {
        let mut t: Vec<(String, String)> =
            v.iter().map(|a| (a.id.clone(), a.text.clone())).collect();
        t.sort();
        t
    };
    assert_eq!(
        texts(&answers_a),
        texts(&answers_b),
        "generation is deterministic per chunk"
    );
    assert_eq!(summary_a, summary_b);
    // The rerun spent fewer judge tokens than the whole evaluation: stored work was reused.
    assert!(rb.service_tokens.total() <= ra.service_tokens.total());

    // A third run finds everything stored: no model load, no judge call.
    let rc = evaluate_with(&cfg_b, &services(&cfg_b)).await;
    assert_ok(&rc);
    assert_eq!(rc.service_tokens.total(), 0);
    assert_eq!(rc.evaluate.expect("c").scores, summary_a.scores());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_metrics_need_no_judge_and_the_budget_stops_the_judge() {
    let tmp = tempfile::tempdir().expect("tmp");
    let sim = teacher(SimulateOptions::ephemeral()).await;
    let rows = test_rows();
    write_jsonl(&Store::local(tmp.path()), "coverage/test.jsonl", &rows)
        .await
        .expect("test set");
    store_answers(tmp.path(), 1, &rows, true).await;
    store_answers(tmp.path(), 2, &rows, true).await;
    store_answers(tmp.path(), 3, &rows, true).await;
    let cfg = config(
        tmp.path(),
        &sim.base_url(),
        1,
        json!({"evaluation": {"metric": "exactMatch"}}),
    );
    let r = evaluate_with(&cfg, &EvalServices::default()).await;
    assert_ok(&r);
    let s = r.evaluate.expect("outcome").scores;
    assert_eq!((s.mean, s.pass_rate, s.similarity), (100.0, 1.0, None));
    let cfg = config(
        tmp.path(),
        &sim.base_url(),
        2,
        json!({"evaluation": {"metric": "rougeL"}}),
    );
    let r = evaluate_with(&cfg, &EvalServices::default()).await;
    assert_eq!(r.evaluate.expect("outcome").scores.mean, 100.0);

    // A budget too small for one judge call: the stage fails with the reason, having spent
    // nothing, and writes no summary.
    let cfg = config(tmp.path(), &sim.base_url(), 3, json!({"tokenBudget": 50}));
    let r = evaluate_with(&cfg, &services(&cfg)).await;
    assert!(!r.succeeded);
    assert!(
        r.message.as_deref().unwrap_or_default().contains("budget"),
        "{:?}",
        r.message
    );
    assert_eq!(r.service_tokens.total(), 0);
    // Flagged, so the operator stops on the budget instead of retrying into it.
    assert!(r.budget_exhausted);
}
