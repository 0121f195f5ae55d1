//! Table tests of every transition of [`super::plan`] and [`super::apply`].

use crate::api::{FailureClass, Phase, RoundOutcome, Stage, StageConfig};

use super::fixtures::{StatusBuilder, at, id, result, run, spec, status};
use super::*;

/// A compact expectation for table rows.
#[derive(Debug, PartialEq)]
enum Want {
    Start(u32, Stage, u32),
    Record(Stage, bool),
    Wait,
    Succeed(u32),
    Fail(&'static str),
    Suspend,
    Stall(&'static str),
    Idle,
}

fn want(d: &Decision) -> Want {
    match d {
        Decision::StartStage { run, .. } => Want::Start(run.round, run.stage, run.attempt),
        Decision::RecordResult { run, result } => Want::Record(run.stage, result.succeeded),
        Decision::Wait { .. } => Want::Wait,
        Decision::Finish(Finish::Succeeded { round, .. }) => Want::Succeed(*round),
        Decision::Finish(Finish::Failed(r)) => Want::Fail(r.reason()),
        Decision::Suspend => Want::Suspend,
        Decision::Stall(s) => Want::Stall(match s.reason.as_str() {
            "SecretNotFound" => "SecretNotFound",
            "InvalidSpec" => "InvalidSpec",
            _ => "other",
        }),
        Decision::Idle => Want::Idle,
    }
}

fn missing() -> Observation {
    Observation::Missing
}

#[test]
fn table_of_transitions() {
    let base = spec().build();
    let failed_train = || Observation::Failed {
        reason: "OOMKilled".into(),
        result: None,
    };
    // (name, status builder, spec to plan with, observation, expected decision)
    let cases: Vec<(
        &str,
        super::fixtures::StatusBuilder,
        crate::api::LlamaDuoMigrationSpec,
        Observation,
        Want,
    )> = vec![
        (
            "fresh migration starts round 1 synthesis",
            status(&base),
            base.clone(),
            missing(),
            Want::Start(1, Stage::Synthesize, 1),
        ),
        (
            "round 1 synthesizes even with no samples (it freezes the coverage split)",
            status(&spec().samples(0, 0).build()),
            spec().samples(0, 0).build(),
            missing(),
            Want::Start(1, Stage::Synthesize, 1),
        ),
        (
            "a started run that is running is waited for",
            status(&base).started(),
            base.clone(),
            Observation::Running,
            Want::Wait,
        ),
        (
            "a finished run is recorded",
            status(&base).started(),
            base.clone(),
            Observation::Succeeded(result(Stage::Synthesize, 1).build()),
            Want::Record(Stage::Synthesize, true),
        ),
        (
            "a failed run without result is recorded as a failure",
            status(&base).stage_ok().started(),
            base.clone(),
            failed_train(),
            Want::Record(Stage::Train, false),
        ),
        (
            "after synthesis comes training",
            status(&base).stage_ok(),
            base.clone(),
            missing(),
            Want::Start(1, Stage::Train, 1),
        ),
        (
            "after training comes evaluation",
            status(&base).stage_ok().stage_ok(),
            base.clone(),
            missing(),
            Want::Start(1, Stage::Evaluate, 1),
        ),
        (
            "stage failure with retries left retries",
            status(&base)
                .stage_ok()
                .started()
                .finished(result(Stage::Train, 1).failed("nan loss").build()),
            base.clone(),
            missing(),
            Want::Start(1, Stage::Train, 2),
        ),
        (
            "stage failure with retries exhausted fails",
            status(&spec().retries(1).build())
                .stage_ok()
                .started()
                .finished(result(Stage::Train, 1).failed("nan loss").build())
                .started()
                .finished(result(Stage::Train, 1).failed("nan loss").build()),
            spec().retries(1).build(),
            missing(),
            Want::Fail("StageFailed"),
        ),
        (
            "target reached in round 1 succeeds",
            status(&base).round(85.0),
            base.clone(),
            missing(),
            Want::Succeed(1),
        ),
        (
            "mean and pass rate reached succeeds",
            status(&spec().pass_rate(0.9).build())
                .stage_ok()
                .stage_ok()
                .started()
                .finished(
                    result(Stage::Evaluate, 1)
                        .mean(85.0)
                        .pass_rate(0.95)
                        .build(),
                ),
            spec().pass_rate(0.9).build(),
            missing(),
            Want::Succeed(1),
        ),
        (
            "mean reached but pass rate short goes on",
            status(&spec().pass_rate(0.9).build()).round(85.0),
            spec().pass_rate(0.9).build(),
            missing(),
            Want::Start(2, Stage::Synthesize, 1),
        ),
        (
            "below target starts the next round",
            status(&base).round(60.0),
            base.clone(),
            missing(),
            Want::Start(2, Stage::Synthesize, 1),
        ),
        (
            "a later round asking for no samples skips synthesis",
            status(&spec().samples(100, 0).build()).round(60.0),
            spec().samples(100, 0).build(),
            missing(),
            Want::Start(2, Stage::Train, 1),
        ),
        (
            "maxRounds stops",
            status(&spec().max_rounds(2).build())
                .round(60.0)
                .round(65.0),
            spec().max_rounds(2).build(),
            missing(),
            Want::Fail("MaxRoundsReached"),
        ),
        (
            "plateau stops",
            status(&spec().plateau(2).build())
                .round(60.0)
                .round(55.0)
                .round(59.0),
            spec().plateau(2).build(),
            missing(),
            Want::Fail("Plateau"),
        ),
        (
            "an improving run is no plateau",
            status(&spec().plateau(2).build())
                .round(60.0)
                .round(55.0)
                .round(61.0),
            spec().plateau(2).build(),
            missing(),
            Want::Start(4, Stage::Synthesize, 1),
        ),
        (
            "budget exhausted mid-round stops before the next stage",
            status(&spec().budget(500).build()).stage_ok(),
            spec().budget(500).build(),
            missing(),
            Want::Fail("TokenBudgetExhausted"),
        ),
        (
            "budget left lets the round go on",
            status(&spec().budget(501).build()).stage_ok(),
            spec().budget(501).build(),
            missing(),
            Want::Start(1, Stage::Train, 1),
        ),
        (
            "budget exhausted after a round stops",
            status(&spec().budget(650).build()).round(60.0),
            spec().budget(650).build(),
            missing(),
            Want::Fail("TokenBudgetExhausted"),
        ),
        (
            "suspend starts nothing",
            status(&base).stage_ok(),
            spec().suspend(true).build(),
            missing(),
            Want::Suspend,
        ),
        (
            "suspend still waits for the run in flight",
            status(&base).started(),
            spec().suspend(true).build(),
            Observation::Running,
            Want::Wait,
        ),
        (
            "suspend still records a finished run",
            status(&base).started(),
            spec().suspend(true).build(),
            Observation::Succeeded(result(Stage::Synthesize, 1).build()),
            Want::Record(Stage::Synthesize, true),
        ),
        (
            "a missing Secret stalls",
            status(&base),
            base.clone(),
            Observation::Blocked {
                reason: "SecretNotFound".into(),
                message: "Secret team-a/openai not found".into(),
            },
            Want::Stall("SecretNotFound"),
        ),
        (
            "no storage in a cluster stalls",
            status(&spec().no_storage().build()),
            spec().no_storage().build(),
            missing(),
            Want::Stall("InvalidSpec"),
        ),
        (
            "operator restart finds a finished Job not yet recorded",
            status(&base).stage_ok().started(),
            base.clone(),
            Observation::Succeeded(result(Stage::Train, 1).build()),
            Want::Record(Stage::Train, true),
        ),
        (
            "a Job deleted after its result was recorded is not re-run",
            status(&base).stage_ok().stage_ok(),
            base.clone(),
            missing(),
            Want::Start(1, Stage::Evaluate, 1),
        ),
        (
            "a started run whose Job vanished is started again",
            status(&base).started(),
            base.clone(),
            missing(),
            Want::Start(1, Stage::Synthesize, 1),
        ),
        (
            "a succeeded migration is idle",
            status(&base).round(90.0).then(missing()),
            base.clone(),
            missing(),
            Want::Idle,
        ),
    ];
    let mut failures = Vec::new();
    for (name, builder, spec, observation, expected) in cases {
        let d = plan(
            &id(),
            &spec,
            &builder.status,
            Some(builder.generation),
            &observation,
        );
        if want(&d) != expected {
            failures.push(format!("{name}: want {expected:?}, got {d:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn condition<'a>(
    s: &'a crate::api::LlamaDuoMigrationStatus,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("condition {type_} missing in {:?}", s.conditions))
}

#[test]
fn start_renders_the_stage_config_and_records_the_run() {
    let mut b = status(&spec().budget(10_000).build());
    let d = b.step(missing());
    let Decision::StartStage { run: r, config } = &d else {
        panic!("{d:?}")
    };
    assert_eq!(r, &run(1, Stage::Synthesize, 1, 1));
    let StageConfig::Synthesize(c) = config.as_ref() else {
        panic!("{config:?}")
    };
    assert_eq!(c.samples, 100);
    assert_eq!(c.token_budget, Some(10_000));
    assert_eq!(c.context.artifacts, "file:///artifacts/team-a/tickets");
    assert_eq!((c.context.round, c.context.attempt), (1, 1));
    assert_eq!(b.status.current.as_ref(), Some(r));
    assert_eq!(b.status.phase, Some(Phase::Synthesizing));
    assert_eq!(b.status.round, 1);
    assert_eq!(b.status.observed_generation, Some(1));
    assert_eq!(condition(&b.status, CONDITION_RECONCILING).status, "True");
    assert_eq!(condition(&b.status, CONDITION_READY).status, "False");
    assert_eq!(
        condition(&b.status, CONDITION_TARGET_REACHED).status,
        "Unknown"
    );
}

#[test]
fn stage_configs_carry_the_remaining_budget() {
    let s = spec().budget(10_000).build();
    let b = status(&s).stage_ok().stage_ok();
    assert_eq!(b.status.service_tokens.total(), 500);
    let d = plan(&id(), &s, &b.status, Some(1), &missing());
    let Decision::StartStage { config, .. } = d else {
        panic!()
    };
    let StageConfig::Evaluate(c) = *config else {
        panic!()
    };
    assert_eq!(c.token_budget, Some(9_500));
    assert_eq!(c.judge, s.teacher, "judge defaults to the teacher");
}

#[test]
fn recording_a_result_updates_tokens_round_and_clears_current() {
    let b = status(&spec().build()).stage_ok().stage_ok();
    let s = &b.status;
    assert!(s.current.is_none());
    let r = &s.rounds[0];
    assert_eq!(r.synthesized, Some(100));
    assert_eq!(r.training_samples, Some(180));
    assert_eq!(r.train_loss, Some(0.5));
    assert_eq!(
        r.model_uri.as_deref(),
        Some("file:///artifacts/team-a/tickets/round-1/model")
    );
    assert_eq!(r.service_tokens.total(), 500);
    assert_eq!(s.service_tokens.total(), 500);
    assert_eq!(r.stages.len(), 2);
    assert!(r.stages.iter().all(|st| st.succeeded && st.attempts == 1));
    assert_eq!(
        r.stage(Stage::Train).and_then(|t| t.duration_seconds),
        Some(12.0)
    );
}

#[test]
fn recording_is_idempotent() {
    let b = status(&spec().build()).started();
    let r = run(1, Stage::Synthesize, 1, 1);
    let res = result(Stage::Synthesize, 1).build();
    let mut once = b.status.clone();
    apply_result(&mut once, &r, &res);
    let mut twice = once.clone();
    apply_result(&mut twice, &r, &res);
    assert_eq!(once, twice);
    assert_eq!(twice.service_tokens.total(), 500);
}

#[test]
fn failed_attempts_count_tokens_and_retry_under_a_new_name() {
    let mut b = status(&spec().build()).started().finished(
        result(Stage::Synthesize, 1)
            .failed("429 storm")
            .tokens(40)
            .build(),
    );
    let rec = b.status.rounds[0]
        .stage(Stage::Synthesize)
        .cloned()
        .expect("record");
    assert_eq!((rec.attempts, rec.succeeded), (1, false));
    assert_eq!(rec.message.as_deref(), Some("429 storm"));
    assert_eq!(b.status.service_tokens.total(), 40);
    let d = b.step(missing());
    let Decision::StartStage { run: r, .. } = d else {
        panic!("{d:?}")
    };
    assert_eq!(r.name, "tickets-r1-synthesize-a2");
    assert_eq!(r.attempt, 2);
}

#[test]
fn exhausted_retries_fail_the_round_with_the_last_reason() {
    let s = spec().retries(0).build();
    let mut b = status(&s).started().finished(
        result(Stage::Synthesize, 1)
            .failed("teacher 401: bad key")
            .build(),
    );
    let d = b.step(missing());
    assert_eq!(want(&d), Want::Fail("StageFailed"));
    assert_eq!(b.status.phase, Some(Phase::Failed));
    assert_eq!(b.status.rounds[0].outcome, Some(RoundOutcome::Failed));
    let msg = b.status.message.clone().unwrap_or_default();
    assert!(
        msg.contains("teacher 401: bad key") && msg.contains("synthesize"),
        "{msg}"
    );
    let stalled = condition(&b.status, CONDITION_STALLED);
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "StageFailed")
    );
    assert_eq!(condition(&b.status, CONDITION_RECONCILING).status, "False");
}

#[test]
fn target_reached_in_round_one_promotes_the_best_model() {
    let mut b = status(&spec().target(80.0).build()).round(85.0);
    assert_eq!(b.status.best.as_ref().map(|x| x.round), Some(1));
    let d = b.step(missing());
    assert_eq!(want(&d), Want::Succeed(1));
    let s = &b.status;
    assert_eq!(s.phase, Some(Phase::Succeeded));
    assert_eq!(s.rounds[0].outcome, Some(RoundOutcome::TargetReached));
    let best = s.best.as_ref().expect("best");
    assert_eq!((best.round, best.mean_score), (1, 85.0));
    assert_eq!(
        best.model_uri,
        "file:///artifacts/team-a/tickets/round-1/model"
    );
    assert_eq!(condition(s, CONDITION_READY).status, "True");
    assert_eq!(condition(s, CONDITION_TARGET_REACHED).status, "True");
    assert_eq!(condition(s, CONDITION_STALLED).status, "False");
    assert_eq!(condition(s, CONDITION_RECONCILING).status, "False");
    // Nothing more happens, even when asked again.
    assert_eq!(b.step(missing()), Decision::Idle);
}

#[test]
fn best_tracks_the_highest_score_and_next_round_closes_the_previous() {
    let b = status(&spec().build()).round(60.0).round(70.0).round(65.0);
    let s = &b.status;
    assert_eq!(
        s.best.as_ref().map(|x| (x.round, x.mean_score)),
        Some((2, 70.0))
    );
    assert_eq!(s.rounds[0].outcome, Some(RoundOutcome::BelowTarget));
    assert_eq!(s.rounds[1].outcome, Some(RoundOutcome::BelowTarget));
    assert_eq!(s.rounds[2].outcome, None, "round 3 is being decided");
    assert_eq!(condition(s, CONDITION_TARGET_REACHED).reason, "BelowTarget");
    assert_eq!(s.rounds[1].synthesized, Some(100));
}

#[test]
fn later_rounds_ask_for_samples_per_round() {
    let s = spec().samples(100, 50).build();
    let b = status(&s).round(10.0);
    let d = plan(&id(), &s, &b.status, Some(1), &missing());
    let Decision::StartStage { config, .. } = d else {
        panic!("{d:?}")
    };
    let StageConfig::Synthesize(c) = *config else {
        panic!()
    };
    assert_eq!((c.context.round, c.samples), (2, 50));
}

#[test]
fn plateau_names_the_best_round() {
    let s = spec().plateau(2).build();
    let mut b = status(&s).round(60.0).round(55.0).round(59.0);
    let d = b.step(missing());
    let Decision::Finish(Finish::Failed(StopReason::Plateau {
        rounds, best_round, ..
    })) = d
    else {
        panic!("{d:?}")
    };
    assert_eq!((rounds, best_round), (2, 1));
    assert_eq!(b.status.rounds[2].outcome, Some(RoundOutcome::Stopped));
    assert!(
        b.status
            .message
            .as_deref()
            .unwrap_or("")
            .contains("plateau")
    );
}

#[test]
fn budget_exhausted_mid_round_fails_with_the_numbers() {
    let s = spec().budget(500).build();
    let mut b = status(&s).stage_ok();
    let d = b.step(missing());
    assert_eq!(
        d,
        Decision::Finish(Finish::Failed(StopReason::TokenBudget {
            used: 500,
            budget: 500
        }))
    );
    assert_eq!(b.status.phase, Some(Phase::Failed));
    assert_eq!(b.status.rounds[0].outcome, Some(RoundOutcome::Stopped));
    assert_eq!(
        condition(&b.status, CONDITION_STALLED).reason,
        "TokenBudgetExhausted"
    );
}

#[test]
fn suspend_and_resume() {
    let running = spec().build();
    let mut b = status(&running)
        .stage_ok()
        .respec(spec().suspend(true).build());
    assert_eq!(b.step(missing()), Decision::Suspend);
    assert_eq!(b.status.phase, Some(Phase::Suspended));
    assert!(b.status.current.is_none());
    assert_eq!(condition(&b.status, CONDITION_RECONCILING).status, "False");
    assert_eq!(condition(&b.status, CONDITION_STALLED).status, "False");
    assert_eq!(b.status.observed_generation, Some(2));
    // Still suspended: nothing starts however often it is asked.
    assert_eq!(b.step(missing()), Decision::Suspend);
    let mut b = b.respec(spec().suspend(false).build());
    let d = b.step(missing());
    assert_eq!(want(&d), Want::Start(1, Stage::Train, 1));
    assert_eq!(b.status.phase, Some(Phase::Training));
    assert_eq!(condition(&b.status, CONDITION_RECONCILING).status, "True");
}

#[test]
fn spec_change_mid_round_applies_from_the_next_run() {
    let mut b = status(&spec().epochs(3).build())
        .started()
        .respec(spec().epochs(7).build());
    // The synthesis run started under generation 1 keeps running: no restart.
    let d = b.step(Observation::Running);
    let Decision::Wait { run: r } = &d else {
        panic!("{d:?}")
    };
    assert_eq!(r.generation, Some(1));
    assert_eq!(b.status.observed_generation, Some(2));
    b = b.finished(result(Stage::Synthesize, 1).build());
    let d = b.step(missing());
    let Decision::StartStage { run: r, config } = d else {
        panic!("{d:?}")
    };
    assert_eq!(r.generation, Some(2));
    let StageConfig::Train(c) = *config else {
        panic!()
    };
    assert_eq!(c.training.epochs, Some(7));
}

#[test]
fn restart_records_a_finished_run_whose_start_was_never_written() {
    // The executor created the run, then died before writing status.current.
    let s = spec().build();
    let b = status(&s).stage_ok();
    assert!(b.status.current.is_none());
    let expected = run_to_observe(&id(), &s, &b.status, Some(1)).expect("next run");
    assert_eq!(expected.name, "tickets-r1-train");
    let d = plan(
        &id(),
        &s,
        &b.status,
        Some(1),
        &Observation::Succeeded(result(Stage::Train, 1).build()),
    );
    assert_eq!(want(&d), Want::Record(Stage::Train, true));
}

#[test]
fn mismatched_or_incomplete_results_are_failures() {
    let b = status(&spec().build()).started();
    let wrong_round = result(Stage::Synthesize, 2).build();
    let d = plan(
        &id(),
        &b.spec,
        &b.status,
        Some(1),
        &Observation::Succeeded(wrong_round),
    );
    let Decision::RecordResult { result: r, .. } = d else {
        panic!()
    };
    assert!(!r.succeeded);
    assert_eq!(r.round, 1);
    assert!(r.message.unwrap_or_default().contains("expected round 1"));
    let mut bare = result(Stage::Synthesize, 1).build();
    bare.synthesize = None;
    let d = plan(
        &id(),
        &b.spec,
        &b.status,
        Some(1),
        &Observation::Succeeded(bare),
    );
    let Decision::RecordResult { result: r, .. } = d else {
        panic!()
    };
    assert!(!r.succeeded);
    // A non-zero exit is a failure even when the run claimed success; tokens survive.
    let d = plan(
        &id(),
        &b.spec,
        &b.status,
        Some(1),
        &Observation::Failed {
            reason: "exit code 137".into(),
            result: Some(result(Stage::Synthesize, 1).build()),
        },
    );
    let Decision::RecordResult { result: r, .. } = d else {
        panic!()
    };
    assert!(!r.succeeded);
    assert_eq!(r.message.as_deref(), Some("exit code 137"));
    assert_eq!(r.service_tokens.total(), 500);
}

#[test]
fn stall_and_recovery_flip_conditions_once() {
    let s = spec().build();
    let blocked = Observation::Blocked {
        reason: "SecretNotFound".into(),
        message: "Secret team-a/openai (key api-key) not found".into(),
    };
    let mut b = status(&s);
    b.step(blocked.clone());
    let first = condition(&b.status, CONDITION_STALLED).clone();
    assert_eq!(
        (first.status.as_str(), first.reason.as_str()),
        ("True", "SecretNotFound")
    );
    assert!(first.message.contains("team-a/openai"));
    assert_eq!(b.status.phase, Some(Phase::Pending));
    // The same stall again (later clock): the transition time stays.
    b.step(blocked);
    let again = condition(&b.status, CONDITION_STALLED);
    assert_eq!(again.last_transition_time, first.last_transition_time);
    // Fixed: Stalled flips to False with a new time.
    b.step(missing());
    let fixed = condition(&b.status, CONDITION_STALLED);
    assert_eq!(fixed.status, "False");
    assert_ne!(fixed.last_transition_time, first.last_transition_time);
}

#[test]
fn an_unchanged_state_writes_an_identical_status() {
    let b = status(&spec().build()).started();
    let d = plan(&id(), &b.spec, &b.status, Some(1), &Observation::Running);
    let once = apply(&b.status, &d, Some(1), &at(5_000));
    let twice = apply(&once, &d, Some(1), &at(9_000));
    assert_eq!(once, twice);
}

#[test]
fn waiting_for_a_run_just_started_changes_nothing_so_no_second_status_write() {
    let mut b = status(&spec().build());
    let d = b.step(missing());
    assert!(matches!(d, Decision::StartStage { .. }), "{d:?}");
    let started = b.status.clone();
    let d = b.step(Observation::Running);
    assert!(matches!(d, Decision::Wait { .. }), "{d:?}");
    assert_eq!(b.status, started);
    assert_eq!(
        started.message.as_deref(),
        Some("round 1: synthesize running (attempt 1, tickets-r1-synthesize)")
    );
}

#[test]
fn undeserializable_spec_stalls_without_touching_progress() {
    let b = status(&spec().build()).stage_ok();
    let s = stalled(
        &b.status,
        &Stall::new("InvalidSpec", "spec.target.meanScore: invalid type: string"),
        Some(3),
        &at(9_000),
    );
    assert_eq!(s.rounds, b.status.rounds);
    assert_eq!(s.observed_generation, Some(3));
    let c = condition(&s, CONDITION_STALLED);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "InvalidSpec")
    );
    assert_eq!(condition(&s, CONDITION_READY).status, "False");
}

#[test]
fn local_runner_storage_fallback() {
    let s = spec().no_storage().build();
    let local = MigrationId::new("local", "tickets").with_default_storage("file:///work/run");
    let d = plan(&local, &s, &Default::default(), None, &missing());
    let Decision::StartStage { config, .. } = d else {
        panic!("{d:?}")
    };
    assert_eq!(config.context().artifacts, "file:///work/run/local/tickets");
}

#[test]
fn a_whole_migration_reaches_its_target_in_round_three() {
    let s = spec().target(75.0).build();
    let mut b = status(&s).round(50.0).round(70.0).round(80.0);
    assert_eq!(want(&b.step(missing())), Want::Succeed(3));
    assert_eq!(b.status.rounds.len(), 3);
    assert_eq!(b.status.service_tokens.total(), 3 * 650);
    assert_eq!(b.status.best.as_ref().map(|x| x.round), Some(3));
}

#[test]
fn the_artifacts_root_is_fixed_per_object_when_its_first_stage_starts() {
    let s = spec().build();
    let first = id().with_uid("uid-1");
    let d = plan(
        &first,
        &s,
        &Default::default(),
        Some(1),
        &Observation::Missing,
    );
    let Decision::StartStage { config, .. } = &d else {
        panic!("{d:?}")
    };
    assert_eq!(
        config.context().artifacts,
        "file:///artifacts/team-a/tickets/uid-1"
    );
    let started = apply(&Default::default(), &d, Some(1), &at(1));
    assert_eq!(
        started.artifacts.as_deref(),
        Some("file:///artifacts/team-a/tickets/uid-1")
    );

    // The same name created again is another object: it never reads the first one's files.
    let again = id().with_uid("uid-2");
    assert_eq!(
        artifacts_root(&again, &s, &Default::default()).expect("root"),
        "file:///artifacts/team-a/tickets/uid-2"
    );

    // Once recorded, the root stays, even when spec.storage is edited mid-migration.
    let mut moved = s.clone();
    if let Some(storage) = moved.storage.as_mut() {
        storage.url = "s3://elsewhere".into();
    }
    assert_eq!(
        artifacts_root(&first, &moved, &started).expect("root"),
        "file:///artifacts/team-a/tickets/uid-1"
    );

    // A migration an older operator started (rounds, no recorded root) keeps its old root.
    let legacy = crate::api::LlamaDuoMigrationStatus {
        rounds: started.rounds.clone(),
        ..Default::default()
    };
    assert_eq!(
        artifacts_root(&first, &s, &legacy).expect("root"),
        "file:///artifacts/team-a/tickets"
    );
}

#[test]
fn an_evaluation_records_its_scores_and_unreadable_judgements_in_the_round() {
    let b = status(&spec().build()).stage_ok().stage_ok().stage_ok();
    let r = &b.status.rounds[0];
    assert_eq!(r.scores.map(|s| s.mean), Some(50.0));
    assert_eq!(r.failed_judgements, Some(2));
}

#[test]
fn a_stage_stopped_by_the_budget_ends_the_migration_instead_of_retrying() {
    // Synthesis spent most of the budget; the judge's next request would exceed the rest.
    let s = spec().budget(1_000).retries(3).build();
    let b = status(&s).stage_ok().stage_ok().started().finished(
        result(Stage::Evaluate, 1)
            .failed("judge: token budget exhausted: 500 of 1000 tokens used, the next request may need up to 700")
            .budget_exhausted()
            .build(),
    );
    let record = b.status.rounds[0].stage(Stage::Evaluate).expect("record");
    assert!(record.budget_exhausted);
    let d = plan(&id(), &s, &b.status, Some(1), &missing());
    let Decision::Finish(Finish::Failed(reason)) = &d else {
        panic!("retried instead of stopping: {d:?}")
    };
    assert_eq!(reason.reason(), "TokenBudgetExhausted");
    let used = b.status.service_tokens.total();
    assert!(used < 1_000, "{used}");
    assert_eq!(
        reason.to_string(),
        format!(
            "stop.maxServiceTokens exhausted: {used} of 1000 service tokens spent, and the next request could need more than the rest"
        )
    );
    // Any other failure is retried as before.
    let other = status(&s)
        .stage_ok()
        .stage_ok()
        .started()
        .finished(result(Stage::Evaluate, 1).failed("judge: 500").build());
    let d = plan(&id(), &s, &other.status, Some(1), &missing());
    assert!(matches!(d, Decision::StartStage { .. }), "{d:?}");
}

#[test]
fn a_raised_stop_limit_resumes_a_migration_it_stopped() {
    let s = spec().max_rounds(1).build();
    let mut b = status(&s).round(60.0);
    assert_eq!(want(&b.step(missing())), Want::Fail("MaxRoundsReached"));
    assert_eq!(b.status.rounds[0].outcome, Some(RoundOutcome::Stopped));
    // An edit that does not lift the stop changes nothing.
    let mut b = b.respec(spec().max_rounds(1).target(85.0).build());
    assert_eq!(b.step(missing()), Decision::Idle);
    assert_eq!(b.status.phase, Some(Phase::Failed));
    // Raising stop.maxRounds goes on with round 2, keeping round 1's work.
    let mut b = b.respec(spec().max_rounds(3).build());
    assert_eq!(
        want(&b.step(missing())),
        Want::Start(2, Stage::Synthesize, 1)
    );
    assert_eq!(b.status.phase, Some(Phase::Synthesizing));
    assert_eq!(b.status.rounds[0].outcome, Some(RoundOutcome::BelowTarget));
    assert_eq!(condition(&b.status, CONDITION_STALLED).status, "False");
    assert_eq!(condition(&b.status, CONDITION_RECONCILING).status, "True");
}

#[test]
fn an_edit_after_a_stage_failed_on_every_attempt_gives_it_one_more() {
    let s = spec().retries(1).build();
    let fail = |b: StatusBuilder| {
        b.started().finished(
            result(Stage::Synthesize, 1)
                .failed("teacher: 401 Unauthorized")
                .build(),
        )
    };
    let mut b = fail(fail(status(&s)));
    assert_eq!(want(&b.step(missing())), Want::Fail("StageFailed"));
    assert_eq!(b.status.rounds[0].outcome, Some(RoundOutcome::Failed));
    // Nothing changed: it stays failed.
    assert_eq!(b.step(missing()), Decision::Idle);
    // The fix is pushed (a new generation): attempt 3 of the same stage, in the same round.
    let mut b = b.respec(spec().retries(1).target(79.0).build());
    assert_eq!(
        want(&b.step(missing())),
        Want::Start(1, Stage::Synthesize, 3)
    );
    assert_eq!(b.status.rounds[0].outcome, None);
    assert_eq!(b.status.phase, Some(Phase::Synthesizing));
    // It fails again under that generation: failed again, until the next edit.
    let mut b = b.finished(result(Stage::Synthesize, 1).failed("still 401").build());
    assert_eq!(want(&b.step(missing())), Want::Fail("StageFailed"));
    assert_eq!(b.step(missing()), Decision::Idle);
    // A budget raised after the budget stopped a stage lets it go on the same way.
    let tight = spec().budget(1_000).build();
    let mut b = status(&tight).stage_ok().stage_ok().started().finished(
        result(Stage::Evaluate, 1)
            .failed("judge: token budget exhausted")
            .budget_exhausted()
            .build(),
    );
    assert_eq!(want(&b.step(missing())), Want::Fail("TokenBudgetExhausted"));
    let mut b = b.respec(spec().budget(100_000).build());
    assert_eq!(want(&b.step(missing())), Want::Start(1, Stage::Evaluate, 2));
    // Stopped by the budget between stages: a raised budget runs the round's next stage.
    let mut b = status(&spec().budget(500).build()).stage_ok();
    assert_eq!(want(&b.step(missing())), Want::Fail("TokenBudgetExhausted"));
    let mut b = b.respec(spec().budget(5_000).build());
    assert_eq!(want(&b.step(missing())), Want::Start(1, Stage::Train, 1));
}

#[test]
fn a_permanent_failure_fails_at_once_and_an_edit_retries_it() {
    let s = spec().retries(2).build();
    let mut b = status(&s).stage_ok().started().finished(
        result(Stage::Train, 1)
            .failed("unsupported architecture \"Phi3ForCausalLM\"")
            .permanent()
            .build(),
    );
    let rec = b.status.rounds[0]
        .stage(Stage::Train)
        .cloned()
        .expect("record");
    assert_eq!(rec.failure_class, Some(FailureClass::Permanent));
    // Two retries are left, but none can succeed: failed on attempt 1.
    let d = b.step(missing());
    assert_eq!(want(&d), Want::Fail("StageFailed"));
    assert_eq!(b.status.phase, Some(Phase::Failed));
    assert_eq!(b.status.rounds[0].outcome, Some(RoundOutcome::Failed));
    let msg = b.status.message.clone().unwrap_or_default();
    assert!(
        msg.contains("permanent error on attempt 1, not retried")
            && msg.contains("Phi3ForCausalLM"),
        "{msg}"
    );
    let stalled = condition(&b.status, CONDITION_STALLED);
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "StageFailed")
    );
    assert!(stalled.message.contains("permanent"), "{}", stalled.message);
    assert_eq!(b.step(missing()), Decision::Idle);
    // The fix (another base) is pushed: attempt 2.
    let mut b = b.respec(spec().retries(2).target(79.0).build());
    assert_eq!(want(&b.step(missing())), Want::Start(1, Stage::Train, 2));
}

#[test]
fn a_transient_failure_is_retried_and_says_so() {
    let s = spec().retries(2).build();
    let mut b = status(&s).stage_ok().started().finished(
        result(Stage::Train, 1)
            .failed("CUDA_ERROR_OUT_OF_MEMORY")
            .build(),
    );
    let rec = b.status.rounds[0]
        .stage(Stage::Train)
        .cloned()
        .expect("record");
    assert_eq!(rec.failure_class, Some(FailureClass::Transient));
    assert_eq!(want(&b.step(missing())), Want::Start(1, Stage::Train, 2));
    // A result written before failure classes existed counts as transient.
    let mut old = result(Stage::Train, 1).failed("killed").build();
    old.failure_class = None;
    let json = serde_json::to_string(&old).expect("json");
    assert!(!json.contains("failureClass"), "{json}");
    let mut b = status(&s).stage_ok().started().finished(old);
    assert_eq!(want(&b.step(missing())), Want::Start(1, Stage::Train, 2));
    // A pod that died without a result (OOMKilled, evicted) is transient.
    let mut b = status(&s).stage_ok().started();
    let d = b.step(Observation::Failed {
        reason: "pod tickets-r1-train: OOMKilled".into(),
        result: None,
    });
    let Decision::RecordResult { result, .. } = &d else {
        panic!("{d:?}")
    };
    assert!(!result.is_permanent_failure());
}

#[test]
fn an_edit_a_finished_migration_does_not_apply_is_said_in_its_message() {
    let mut b = status(&spec().target(80.0).build()).round(85.0);
    assert_eq!(want(&b.step(missing())), Want::Succeed(1));
    let done = b.status.message.clone().expect("message");
    assert!(!done.contains("edited"), "{done}");
    let mut b = b.respec(spec().target(90.0).build());
    assert_eq!(b.step(missing()), Decision::Idle);
    let noted = b.status.message.clone().expect("message");
    assert!(
        noted.starts_with(&done)
            && noted.contains("spec generation 2 is newer than its last stage's, 1")
            && noted.contains("create another migration"),
        "{noted}"
    );
    assert_eq!(condition(&b.status, CONDITION_READY).message, noted);
    // Reconciled again: the note is not repeated; a further edit updates it.
    b.step(missing());
    assert_eq!(b.status.message.as_deref(), Some(noted.as_str()));
    let mut b = b.respec(spec().target(95.0).build());
    b.step(missing());
    let again = b.status.message.clone().expect("message");
    assert!(
        again.contains("spec generation 3") && !again.contains("generation 2"),
        "{again}"
    );
}

#[test]
fn a_migration_the_budget_stopped_between_stages_stays_failed() {
    // Stopped before train ever ran: that stage has no record and the round no scores, yet
    // nothing is observed, suspended or stalled any more.
    let s = spec().budget(500).build();
    let mut b = status(&s).stage_ok();
    assert_eq!(want(&b.step(missing())), Want::Fail("TokenBudgetExhausted"));
    assert_eq!(run_to_observe(&id(), &s, &b.status, Some(1)), None);
    assert_eq!(b.step(missing()), Decision::Idle);
    let mut b = b.respec(spec().budget(500).suspend(true).build());
    assert_eq!(b.step(missing()), Decision::Idle);
    assert_eq!(b.status.phase, Some(Phase::Failed));
}

#[test]
fn a_pretrained_student_is_evaluated_untrained_as_round_0() {
    let pretrained = spec().pretrained().build();
    let mut b = status(&pretrained);
    // Round 0: synthesize (no samples: it freezes the coverage split), then evaluate; no train.
    let first = b.next_run();
    assert_eq!((first.round, first.stage), (0, Stage::Synthesize));
    match b.step(missing()) {
        Decision::StartStage { config, .. } => match *config {
            StageConfig::Synthesize(c) => assert_eq!(c.samples, 0, "round 0 asks for no samples"),
            other => panic!("expected a synthesize config, got {other:?}"),
        },
        other => panic!("expected a start, got {other:?}"),
    }
    b = b.finished(result(Stage::Synthesize, 0).build());
    assert_eq!(
        b.next_run().stage,
        Stage::Evaluate,
        "round 0 trains nothing"
    );
    // The base student scores above the target: still no success, it is the reference.
    b = b
        .started()
        .finished(result(Stage::Evaluate, 0).mean(95.0).build());
    let r0 = &b.status.rounds[0];
    assert_eq!(r0.round, 0);
    assert_eq!(r0.scores.map(|s| s.mean), Some(95.0));
    assert!(
        b.status.best.is_none(),
        "the untrained base is never the best model"
    );
    let next = b.next_run();
    assert_eq!((next.round, next.stage), (1, Stage::Synthesize));
    match b.step(missing()) {
        Decision::StartStage { config, .. } => match *config {
            StageConfig::Synthesize(c) => {
                assert_eq!(c.samples, 100, "round 1 synthesizes initialSamples")
            }
            other => panic!("expected a synthesize config, got {other:?}"),
        },
        other => panic!("expected a start, got {other:?}"),
    }
    assert_eq!(b.status.rounds[0].outcome, Some(RoundOutcome::Baseline));
    assert_eq!(b.status.round, 1);
    // Round 1 below round 0's score: the plateau rule counts trained rounds only.
    let spec2 = spec().pretrained().plateau(1).max_rounds(3).build();
    let mut b = status(&spec2).round(90.0).round(40.0);
    assert_eq!(b.status.best.as_ref().map(|x| x.round), Some(1));
    assert_eq!(
        want(&b.step(missing())),
        Want::Start(2, Stage::Synthesize, 1)
    );
}

#[test]
fn round_0_is_skipped_when_opted_out_or_from_scratch() {
    for s in [
        spec().pretrained().base_student(false).build(),
        spec().build(),
        spec().base_student(true).build(),
    ] {
        let b = status(&s);
        let first = b.next_run();
        assert_eq!((first.round, first.stage), (1, Stage::Synthesize));
    }
}

#[test]
fn round_0_target_is_reached_only_by_a_trained_round() {
    let s = spec().pretrained().target(60.0).build();
    let mut b = status(&s).round(70.0);
    assert_eq!(b.status.rounds.len(), 1);
    assert_eq!(
        want(&b.step(missing())),
        Want::Start(1, Stage::Synthesize, 1)
    );
    let mut b = b.round(65.0);
    assert_eq!(want(&b.step(missing())), Want::Succeed(1));
}
