//! Fuzzing the parsers of the `llamaduo` crate (docs/fuzzing.md): dataset rows, stage
//! progress lines, stage results and configs, the termination message the operator reads off
//! a pod, and manifests (`llamaduo validate`, `llamaduo run`, the operator's spec). Each
//! target replays its corpus (fuzz/corpus/<target>/), mutates it structure-aware, and throws
//! generated and arbitrary input at the parser: none may panic, hang or allocate out of
//! proportion, and what one side writes the other must read back.
//!
//! `LLAMADUO_FUZZ_CASES=100000 cargo test --release --test fuzz_parsers -- --nocapture` runs
//! longer.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

use harness::{Bytes, DEFAULT_CASES, Target, any_text, cases, close, json_value, mutated, seeds};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStatus, Pod, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use llamaduo::api::progress::MAX_PROGRESS_LINE;
use llamaduo::api::{
    DatasetRow, FailureClass, MAX_RESULT_BYTES, Message, Progress, Role, RowSource, RunProgress,
    Stage, StageConfig, StageResult, TokenUsage, TrainOutcome,
};
use llamaduo::controller::job::CONTAINER_NAME;
use llamaduo::controller::{observation_from, parse_spec};
use llamaduo::plan::Observation;
use llamaduo::run::{ManifestError, parse_manifest};
use llamaduo::validate::{Target as Where, validate_yaml, without_pruned_nulls, yaml_documents};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const ROW_KEYS: &[&str] = &[
    "messages",
    "role",
    "content",
    "user",
    "assistant",
    "system",
    "id",
    "source",
    "coverage",
    "synthetic",
    "generator",
    "seed_id",
];

fn check_row(b: &Bytes) -> Result<(), TestCaseError> {
    let Ok(row) = serde_json::from_slice::<DatasetRow>(&b.0) else {
        return Ok(());
    };
    let valid = row.validate().is_ok();
    // A valid row has a prompt and an answer; the answer is the last message.
    if valid {
        prop_assert!(row.instruction().is_some() && row.answer().is_some());
        prop_assert_eq!(row.prompt_messages().len() + 1, row.messages.len());
    }
    let again: DatasetRow = serde_json::from_str(&serde_json::to_string(&row).expect("writes"))
        .expect("a written row reads back");
    prop_assert_eq!(again, row);
    Ok(())
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::System), Just(Role::User), Just(Role::Assistant)]
}

fn dataset_row() -> impl Strategy<Value = DatasetRow> {
    let message = (role(), any::<String>()).prop_map(|(role, content)| Message { role, content });
    let source = proptest::option::of(prop_oneof![
        Just(RowSource::Coverage),
        Just(RowSource::Synthetic)
    ]);
    (
        proptest::collection::vec(message, 0..5),
        proptest::option::of(any::<String>()),
        source,
        proptest::option::of(any::<String>()),
        proptest::option::of(any::<String>()),
    )
        .prop_map(|(messages, id, source, generator, seed_id)| DatasetRow {
            messages,
            id,
            source,
            generator,
            seed_id,
        })
}

#[test]
fn fuzz_dataset_row() {
    let n = cases(DEFAULT_CASES);
    Target::new("dataset_row")
        .replay(check_row)
        .fuzz(
            "mutated corpus",
            n,
            mutated(seeds("dataset_row"), ROW_KEYS),
            check_row,
        )
        .fuzz("generated JSON", n, json_value(ROW_KEYS), check_row)
        .fuzz("arbitrary text", n, any_text(256), check_row)
        .fuzz(
            "rows round-trip",
            n,
            dataset_row().prop_map(|row| {
                let line = serde_json::to_string(&row).expect("writes");
                (Bytes(line.into_bytes()), row)
            }),
            |(line, row)| {
                let back: DatasetRow = serde_json::from_slice(&line.0)
                    .map_err(|e| TestCaseError::fail(format!("own row refused: {e}")))?;
                prop_assert_eq!(&back, row);
                Ok(())
            },
        )
        .report();
}

const PROGRESS_KEYS: &[&str] = &[
    "progress",
    "done",
    "total",
    "unit",
    "loss",
    "tokensPerSecond",
    "etaSeconds",
    "message",
    "step",
    "total_steps",
    "totalSteps",
    "steps",
    "tokens_per_s",
    "eta_s",
    "eta",
];

fn at(second: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(second).expect("time"))
}

/// A line (or a log tail of lines) is progress or not; progress read into the status is
/// within its bounds and serializes.
fn check_progress(b: &Bytes) -> Result<(), TestCaseError> {
    let text = b.text();
    let _ = Progress::last_in(&text);
    for line in text.lines() {
        let Some(p) = Progress::from_line(line) else {
            continue;
        };
        prop_assert!(line.trim().len() <= MAX_PROGRESS_LINE);
        let r = RunProgress::new(&p, &at(1_750_000_000));
        prop_assert!(r.percent.is_none_or(|pc| pc <= 100));
        prop_assert!(r.unit.as_ref().is_none_or(|u| u.chars().count() <= 32));
        prop_assert!(r.message.as_ref().is_none_or(|m| m.chars().count() <= 256));
        prop_assert!(r.loss.is_none_or(f64::is_finite));
        prop_assert!(
            r.tokens_per_second
                .is_none_or(|t| t.is_finite() && t >= 0.0)
        );
        serde_json::to_string(&r).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    Ok(())
}

fn finite() -> impl Strategy<Value = Option<f64>> {
    proptest::option::of(prop_oneof![
        -1e12f64..1e12,
        any::<f64>().prop_filter("finite", |f| f.is_finite())
    ])
}

fn progress() -> impl Strategy<Value = Progress> {
    (
        any::<u64>(),
        proptest::option::of(any::<u64>()),
        proptest::option::of("[ -~é]{0,16}"),
        finite(),
        finite(),
        finite(),
        proptest::option::of("[ -~é\n]{0,64}"),
    )
        .prop_map(|(done, total, unit, loss, tps, eta, message)| Progress {
            done,
            total,
            unit,
            loss,
            tokens_per_second: tps,
            eta_seconds: eta,
            message,
        })
}

fn same_float(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => close(a, b),
        (a, b) => a == b,
    }
}

#[test]
fn fuzz_progress_line() {
    let n = cases(DEFAULT_CASES);
    Target::new("progress_line")
        .replay(check_progress)
        .fuzz(
            "mutated corpus",
            n,
            mutated(seeds("progress_line"), PROGRESS_KEYS),
            check_progress,
        )
        .fuzz(
            "generated JSON",
            n,
            json_value(PROGRESS_KEYS),
            check_progress,
        )
        .fuzz("arbitrary text", n, any_text(256), check_progress)
        .fuzz(
            "lines round-trip",
            n,
            progress().prop_map(|p| (Bytes(p.to_line().into_bytes()), p)),
            |(line, p)| {
                let back = Progress::from_line(&line.text())
                    .ok_or_else(|| TestCaseError::fail("own progress line not read"))?;
                prop_assert_eq!(
                    (back.done, back.total, &back.unit, &back.message),
                    (p.done, p.total, &p.unit, &p.message)
                );
                prop_assert!(same_float(back.loss, p.loss));
                prop_assert!(same_float(back.tokens_per_second, p.tokens_per_second));
                prop_assert!(same_float(back.eta_seconds, p.eta_seconds));
                Ok(())
            },
        )
        .report();
}

const RESULT_KEYS: &[&str] = &[
    "stage",
    "train",
    "synthesize",
    "evaluate",
    "round",
    "succeeded",
    "message",
    "serviceTokens",
    "input",
    "output",
    "durationSeconds",
    "steps",
    "trainingSamples",
    "finalLoss",
    "meanLoss",
    "warnings",
    "epochEvalLosses",
    "tokensPerSecond",
    "modelUri",
    "scores",
    "mean",
    "passRate",
    "prompts",
    "answers",
    "budgetExhausted",
    "failureClass",
    "permanent",
    "transient",
    "namespace",
    "migration",
    "artifacts",
    "attempt",
    "maxRowBytes",
];

/// What the operator and the local runner do with a result: read it, sum its tokens, and
/// (the trainer) write it as a termination message that fits in 4 KiB and reads back.
fn check_result_value(r: &StageResult) -> Result<(), TestCaseError> {
    let _ = r.service_tokens.total();
    let _ = r.service_tokens + r.service_tokens;
    let message = r.to_termination_message();
    // Only the message and the train details are cut; a result over the limit without them
    // (a model URI of kilobytes) cannot be made to fit, and the spec bounds those fields.
    let fixed = r
        .train
        .as_ref()
        .map_or(0, |t| t.model_uri.len() + 64 * t.epoch_eval_losses.len());
    if fixed < 1024 {
        prop_assert!(message.len() <= MAX_RESULT_BYTES, "{} bytes", message.len());
    }
    let back = StageResult::from_json(&message)
        .map_err(|e| TestCaseError::fail(format!("own termination message refused: {e}")))?;
    prop_assert_eq!(
        (
            back.stage,
            back.round,
            back.succeeded,
            back.service_tokens,
            back.failure_class
        ),
        (
            r.stage,
            r.round,
            r.succeeded,
            r.service_tokens,
            r.failure_class
        )
    );
    Ok(())
}

fn check_result(b: &Bytes) -> Result<(), TestCaseError> {
    let text = b.text();
    let _ = StageConfig::from_json(&text);
    match StageResult::from_json(&text) {
        Ok(r) => check_result_value(&r),
        Err(_) => Ok(()),
    }
}

fn stage() -> impl Strategy<Value = Stage> {
    prop_oneof![
        Just(Stage::Synthesize),
        Just(Stage::Train),
        Just(Stage::Evaluate)
    ]
}

/// Results as a stage builds them, with long and multi-byte messages and many warnings.
fn stage_result() -> impl Strategy<Value = StageResult> {
    let message = proptest::option::of(prop_oneof![
        "[ -~é\n]{0,64}",
        ("[a-zé€]{1,4}", 1usize..3000).prop_map(|(s, n)| s.repeat(n)),
    ]);
    let warnings = proptest::collection::vec("[ -~é]{0,200}", 0..40);
    let train =
        proptest::option::of(
            (warnings, 0u64..1000).prop_map(|(warnings, steps)| TrainOutcome {
                steps,
                warnings,
                model_uri: "s3://bucket/m/round-1/model".into(),
                ..TrainOutcome::default()
            }),
        );
    (
        stage(),
        any::<u32>(),
        any::<bool>(),
        message,
        any::<u64>(),
        any::<u64>(),
        train,
        proptest::option::of(prop_oneof![
            Just(FailureClass::Permanent),
            Just(FailureClass::Transient)
        ]),
    )
        .prop_map(
            |(stage, round, succeeded, message, input, output, train, failure_class)| {
                let mut r = StageResult::failure(stage, round, "");
                r.succeeded = succeeded;
                r.message = message;
                r.service_tokens = TokenUsage { input, output };
                r.train = train;
                r.failure_class = failure_class;
                r
            },
        )
}

/// A `Debug`-only wrapper so a generated result can be a fuzz input.
#[derive(Debug)]
struct Generated(StageResult);

impl harness::InputLen for Generated {
    fn input_len(&self) -> usize {
        serde_json::to_string(&self.0).map_or(0, |s| s.len())
    }
}

#[test]
fn fuzz_stage_result() {
    let n = cases(DEFAULT_CASES);
    Target::new("stage_result")
        .replay(check_result)
        .fuzz(
            "mutated corpus",
            n,
            mutated(seeds("stage_result"), RESULT_KEYS),
            check_result,
        )
        .fuzz("generated JSON", n, json_value(RESULT_KEYS), check_result)
        .fuzz("arbitrary text", n, any_text(256), check_result)
        .fuzz(
            "termination messages round-trip",
            n,
            stage_result().prop_map(Generated),
            |g| check_result_value(&g.0),
        )
        .report();
}

/// Found by `fuzz_stage_result`: train warnings over 4 KiB made the termination message
/// overflow (Kubernetes cuts it, and the operator then saw a successful round as one that
/// "exited 0 without a result"), and with a failure message as well the shortening loop
/// never ended, so the stage hung after its work was done.
#[test]
fn long_train_warnings_fit_the_termination_message() {
    let train = TrainOutcome {
        steps: 3,
        warnings: (0..30)
            .map(|i| format!("warning {i}: {}", "é".repeat(150)))
            .collect(),
        ..TrainOutcome::default()
    };
    let mut ok = StageResult::success(Stage::Train, 1);
    ok.train = Some(train.clone());
    let mut failed = StageResult::failure(Stage::Train, 1, "x".repeat(5000));
    failed.train = Some(train);
    for r in [ok, failed] {
        let json = r.to_termination_message();
        assert!(json.len() <= MAX_RESULT_BYTES, "{} bytes", json.len());
        let back = StageResult::from_json(&json).expect("reads back");
        assert_eq!(back.train.map(|t| t.steps), Some(3));
        assert!(back.message.is_none() == r.message.is_none());
    }
}

/// Found while fuzzing the provider replies: token counts summed past u64::MAX panicked
/// (debug) or wrapped round under the token budget (release).
#[test]
fn token_sums_saturate() {
    let big = TokenUsage {
        input: u64::MAX,
        output: 1,
    };
    assert_eq!(big.total(), u64::MAX);
    let sum = big + big;
    assert_eq!((sum.input, sum.output), (u64::MAX, 2));
}

/// The operator's view of a finished Job: the last pod's termination message is the result,
/// or (FallbackToLogsOnError) the log tail that explains the failure.
fn check_termination(message: &str, exit_code: i32, complete: bool) -> Result<(), TestCaseError> {
    let condition = JobCondition {
        type_: if complete { "Complete" } else { "Failed" }.into(),
        status: "True".into(),
        ..JobCondition::default()
    };
    let job = Job {
        status: Some(JobStatus {
            conditions: Some(vec![condition]),
            ..JobStatus::default()
        }),
        ..Job::default()
    };
    let pod = |second: i64, message: Option<String>| Pod {
        metadata: ObjectMeta {
            creation_timestamp: Some(at(second)),
            ..ObjectMeta::default()
        },
        status: Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: CONTAINER_NAME.into(),
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code,
                        message,
                        reason: Some("Error".into()),
                        ..ContainerStateTerminated::default()
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        }),
        ..Pod::default()
    };
    // An older pod's message must never win over the newest one's.
    let pods = [
        pod(200, Some(message.to_owned())),
        pod(
            100,
            Some("{\"stage\":\"train\",\"round\":9,\"succeeded\":true}".into()),
        ),
    ];
    let parsed = StageResult::from_json(message.trim()).ok();
    match observation_from(&job, &pods) {
        Observation::Succeeded(r) => {
            prop_assert!(complete);
            prop_assert_eq!(Some(r), parsed);
        }
        Observation::Failed { reason, result } => {
            prop_assert!(!reason.is_empty());
            prop_assert_eq!(result, if complete { None } else { parsed });
        }
        other => prop_assert!(false, "a finished Job observed as {other:?}"),
    }
    Ok(())
}

#[test]
fn fuzz_termination_message() {
    let n = cases(DEFAULT_CASES);
    let property = |b: &Bytes| {
        let text = b.text();
        check_termination(&text, 1, false)?;
        check_termination(&text, 0, true)
    };
    Target::new("termination_message")
        .replay(property)
        .fuzz(
            "mutated corpus",
            n,
            mutated(seeds("termination_message"), RESULT_KEYS),
            property,
        )
        .fuzz("arbitrary text", n, any_text(256), property)
        .report();
}

const MANIFEST_TOKENS: &[&str] = &[
    "---\n",
    "...\n",
    "\n  ",
    "- ",
    ": ",
    "&a ",
    "*a",
    "!!str ",
    "!!binary ",
    "? ",
    "|\n",
    ">-\n",
    "'",
    "~",
    "<<: *a\n",
    "kind: LlamaDuoMigration\n",
    "apiVersion: llamaduo.dev/v1alpha1\n",
    "spec:\n",
    "metadata:\n  name: x\n",
    "storage:\n",
    "url: ",
    "file://",
    "s3://b/p",
    "configmap://cm/key",
    "hf://datasets/a/b",
    "provider: ",
    "simulated",
    "openai",
    "fromScratch:",
    "baseModel: ",
    "maxRounds: ",
    "meanScore: ",
    "tolerations:",
];

/// What every reader of a manifest does with it: `llamaduo validate` (both targets); for a
/// file it calls valid, `llamaduo run`'s loader must load it (or refuse a cluster-only source
/// by name), and the operator's typed parse must take each valid document as the API server
/// stores it (nulls pruned): a manifest that validates and then fails to load is a validator
/// gap.
fn check_manifest(b: &Bytes) -> Result<(), TestCaseError> {
    let text = b.text();
    let Ok(local) = validate_yaml(&text, Where::Local) else {
        return Ok(());
    };
    let cluster = validate_yaml(&text, Where::Cluster).map_err(TestCaseError::fail)?;
    let migrations = local
        .iter()
        .filter(|r| r.checked && r.problems.is_empty())
        .count();
    if migrations == 1 && local.iter().all(|r| r.problems.is_empty()) {
        match parse_manifest(&text, Path::new("m.yaml"), Path::new("/w")) {
            Ok(_) | Err(ManifestError::Unsupported { .. }) => {}
            Err(e) => prop_assert!(false, "validates but does not load: {e}"),
        }
    }
    let docs = yaml_documents(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let docs: Vec<&serde_json::Value> = docs.iter().filter(|d| !d.is_null()).collect();
    prop_assert_eq!(cluster.len(), docs.len());
    for (report, doc) in cluster.iter().zip(&docs) {
        if report.checked && report.problems.is_empty() {
            let obj: kube::core::DynamicObject = serde_json::from_value(without_pruned_nulls(doc))
                .map_err(|e| TestCaseError::fail(format!("not an object: {e}")))?;
            parse_spec(&obj).map_err(|e| {
                TestCaseError::fail(format!("validates but the operator refuses: {e}"))
            })?;
        }
    }
    Ok(())
}

/// Found by `fuzz_manifest`: a YAML alias bomb of under 2 KB expanded (within serde_saphyr's
/// default budget of a million replayed events) into a 64 MiB tree, which validation copied
/// twice more. Manifests are read with a tighter alias budget now.
#[test]
fn alias_bombs_are_refused_before_they_expand() {
    let bomb = std::fs::read_to_string(
        harness::fuzz_dir().join("corpus/manifest/regress_alias_bomb.yaml"),
    )
    .expect("corpus file");
    let defaults: Result<Vec<serde_json::Value>, _> = serde_saphyr::from_str_multiple(&bomb);
    assert!(defaults.is_ok(), "the bomb fits serde_saphyr's defaults");
    let err = validate_yaml(&bomb, Where::Local).expect_err("refused");
    assert!(err.contains("alias"), "{err}");
    let err = parse_manifest(&bomb, Path::new("m.yaml"), Path::new("/")).expect_err("refused");
    assert!(matches!(err, ManifestError::Yaml { .. }), "{err}");
}

#[test]
fn fuzz_manifest() {
    // Validation evaluates the schema and every CEL rule: milliseconds an input in debug.
    let n = cases(DEFAULT_CASES) / 4;
    Target::new("manifest")
        .replay(check_manifest)
        .fuzz(
            "mutated corpus",
            n,
            mutated(seeds("manifest"), MANIFEST_TOKENS),
            check_manifest,
        )
        .fuzz(
            "token soup",
            n,
            harness::token_soup(MANIFEST_TOKENS, 48),
            check_manifest,
        )
        .fuzz("arbitrary text", n, any_text(256), check_manifest)
        .report();
}
