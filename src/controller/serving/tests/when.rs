//! Decision table of `spec.serving.when`: which endings serve a model, which model, and what
//! the `Serving`, `Ready`, `Reconciling` and `Stalled` conditions then say.

use serde_json::{Value, json};

use super::*;
use crate::api::ServingWhen;

const STOPS: [&str; 4] = [
    "MaxRoundsReached",
    "Plateau",
    "TokenBudgetExhausted",
    "StageFailed",
];

fn with_when(when: &str) -> LlamaDuoMigrationSpec {
    let mut v = spec_json();
    v["serving"]["when"] = json!(when);
    spec_from(v)
}

fn model(round: u32) -> String {
    format!("file:///artifacts/team-a/tickets/round-{round}/model")
}

/// A migration that stopped on `reason` after three rounds scored 61, 71 and 65 (target 80),
/// round 2 the best; `scored: false` stops it before any round was evaluated.
fn stopped(reason: &str, scored: bool) -> LlamaDuoMigrationStatus {
    let rounds: Vec<Value> = [61.0, 71.0, 65.0]
        .iter()
        .zip(1..)
        .filter(|_| scored)
        .map(|(mean, r)| {
            json!({"round": r, "modelUri": model(r), "scores": {"mean": mean, "passRate": 0.5},
                   "outcome": if r == 3 { "stopped" } else { "belowTarget" }})
        })
        .collect();
    let mut status = json!({
        "phase": "Failed", "round": 3, "message": format!("stopped: {reason}"),
        "rounds": rounds,
        "conditions": [{"type": "Stalled", "status": "True", "reason": reason,
                        "message": "stopped", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    });
    if scored {
        status["best"] = json!({"round": 2, "meanScore": 71.0, "modelUri": model(2)});
    }
    serde_json::from_value(status).expect("status")
}

/// `live` for the stopped migration's best round (2), whose score `best()` does not carry.
fn live_best(spec: &LlamaDuoMigrationSpec, status: Value) -> ServingObservation {
    live(spec, 2, status)
}

#[test]
fn when_defaults_to_succeeded_and_reads_camel_case() {
    assert_eq!(spec_from(spec_json()).serving.when, ServingWhen::Succeeded);
    assert_eq!(with_when("best").serving.when, ServingWhen::Best);
    assert_eq!(with_when("succeeded").serving.when, ServingWhen::Succeeded);
    let mut v = spec_json();
    v["serving"]["when"] = json!("Best");
    assert!(serde_json::from_value::<LlamaDuoMigrationSpec>(v).is_err());
}

#[test]
fn a_succeeded_migration_is_served_under_either_setting() {
    for when in ["succeeded", "best"] {
        let spec = with_when(when);
        let plan = plan_serving(
            &inputs(&spec),
            &succeeded(3),
            &ServingObservation::default(),
        )
        .expect("plan");
        let ServingAction::Apply { objects, .. } = &plan.action else {
            panic!("{when}: {:?}", plan.action)
        };
        assert_eq!(objects.round, 3, "{when}");
        let (_, _, message) = condition(&plan);
        assert!(!message.contains("below the target"), "{when}: {message}");
    }
}

#[test]
fn a_migration_stopped_below_its_target_serves_nothing_by_default() {
    let spec = spec_from(spec_json());
    for reason in STOPS {
        let status = stopped(reason, true);
        assert!(!needs_observation(&spec, &status), "{reason}");
        let plan =
            plan_serving(&inputs(&spec), &status, &ServingObservation::default()).expect("plan");
        assert_eq!(plan.action, ServingAction::Nothing, "{reason}");
        assert_eq!(plan.endpoint, None);
        let (s, why, message) = condition(&plan);
        assert_eq!((s, why), ("False", REASON_NOT_SUCCEEDED), "{reason}");
        // It says what stopped it and how to serve the best round anyway.
        assert!(
            message.contains(&format!("stopped on {reason} below its target"))
                && message.contains("set it to best to serve round 2's model, mean score 71.00"),
            "{reason}: {message}"
        );
    }
}

#[test]
fn when_best_serves_the_best_round_of_a_stopped_migration() {
    let spec = with_when("best");
    // Every stop serves: status.best is only ever an evaluated round with its trained model,
    // whatever ended the rounds after it (a stage failure included).
    for reason in STOPS {
        let status = stopped(reason, true);
        assert!(needs_observation(&spec, &status), "{reason}");
        let plan =
            plan_serving(&inputs(&spec), &status, &ServingObservation::default()).expect("plan");
        let ServingAction::Apply { objects, previous } = &plan.action else {
            panic!("{reason}: {:?}", plan.action)
        };
        assert_eq!(previous, &None);
        assert_eq!(
            (objects.round, objects.model_uri.as_str()),
            (2, model(2).as_str())
        );
        assert_eq!(plan.endpoint.as_deref(), Some(ENDPOINT));
        let (s, why, message) = condition(&plan);
        assert_eq!((s, why), ("False", REASON_PROGRESSING), "{reason}");
        assert!(
            message.starts_with(&format!(
                "creating Deployment tickets-serve serving round 2 ({}), the best round's model, \
                 below the target (mean score 71.00, target 80.00): the migration stopped on {reason}",
                model(2)
            )),
            "{reason}: {message}"
        );
    }
}

#[test]
fn a_failed_migration_that_serves_stays_not_ready_and_stalled() {
    let spec = with_when("best");
    let written = stopped("Plateau", true);
    let rolling = reconcile_at(&spec, &written, &ServingObservation::default(), 2_000);
    let served = reconcile_at(&spec, &rolling, &live_best(&spec, rolled_out(1)), 3_000);
    for status in [&rolling, &served] {
        // Ready says the target was reached: it was not, whatever is served. Serving is not
        // gated on (nor gates) the stop: the migration itself cannot go on without an edit.
        assert_eq!(
            (
                cond(status, CONDITION_READY).0,
                cond(status, CONDITION_READY).1
            ),
            ("False".into(), "Plateau".into())
        );
        assert_eq!(cond(status, CONDITION_STALLED).0, "True");
        assert_eq!(cond(status, CONDITION_RECONCILING).0, "False");
        assert_eq!(cond(status, CONDITION_TARGET_REACHED).0, "False");
    }
    assert_eq!(
        cond(&rolling, CONDITION_SERVING).1,
        REASON_PROGRESSING.to_string()
    );
    let serving = served
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_SERVING)
        .expect("Serving");
    assert_eq!(
        (serving.status.as_str(), serving.reason.as_str()),
        ("True", REASON_AVAILABLE)
    );
    assert!(
        serving
            .message
            .contains("below the target (mean score 71.00, target 80.00)")
            && serving.message.contains("1 of 1 replicas available"),
        "{}",
        serving.message
    );
    assert_eq!(served.endpoint.as_deref(), Some(ENDPOINT));
    // Reconciled again: nothing changes, so nothing is written.
    assert_eq!(
        reconcile_at(&spec, &served, &live_best(&spec, rolled_out(1)), 4_000),
        served
    );
}

#[test]
fn a_stop_before_any_evaluated_round_has_no_model_to_serve() {
    let spec = with_when("best");
    let status = stopped("StageFailed", false);
    assert!(!needs_observation(&spec, &status));
    let plan = plan_serving(&inputs(&spec), &status, &ServingObservation::default()).expect("plan");
    assert_eq!(plan.action, ServingAction::Nothing);
    assert_eq!(plan.endpoint, None);
    let (s, why, message) = condition(&plan);
    assert_eq!((s, why), ("False", REASON_NO_MODEL));
    assert_eq!(
        message,
        "the migration stopped on StageFailed before any round was evaluated: there is no model \
         to serve (spec.serving.when: best)"
    );
    // Under the default, the same migration says there is no model either.
    let plan = plan_serving(
        &inputs(&spec_from(spec_json())),
        &status,
        &ServingObservation::default(),
    )
    .expect("plan");
    assert_eq!(condition(&plan).1, REASON_NOT_SUCCEEDED);
    assert!(condition(&plan).2.contains("there is no model to serve"));
}

#[test]
fn when_best_waits_for_the_migration_to_stop() {
    let spec = with_when("best");
    for phase in [Phase::Pending, Phase::Training, Phase::Suspended] {
        // A best round below target exists while rounds go on: not served before a stop.
        let status = LlamaDuoMigrationStatus {
            phase: Some(phase),
            best: Some(best(1)),
            ..LlamaDuoMigrationStatus::default()
        };
        assert!(!needs_observation(&spec, &status), "{phase:?}");
        let plan =
            plan_serving(&inputs(&spec), &status, &ServingObservation::default()).expect("plan");
        assert_eq!(plan.action, ServingAction::Nothing, "{phase:?}");
        let (_, why, message) = condition(&plan);
        assert_eq!(why, REASON_NOT_SUCCEEDED);
        assert!(
            message.starts_with("waiting for the migration to stop"),
            "{message}"
        );
    }
}

#[test]
fn a_resumed_migration_keeps_serving_and_rolls_to_a_better_round() {
    let spec = with_when("best");
    // Served while stopped; an edit (more rounds) resumes it and round 4 trains.
    let mut status = stopped("MaxRoundsReached", true);
    status.endpoint = Some(ENDPOINT.into());
    status.phase = Some(Phase::Training);
    status.round = 4;
    let plan =
        plan_serving(&inputs(&spec), &status, &live_best(&spec, rolled_out(1))).expect("plan");
    assert_eq!(plan.action, ServingAction::Nothing, "the endpoint stays up");
    assert_eq!(plan.endpoint.as_deref(), Some(ENDPOINT));
    let (s, why, message) = condition(&plan);
    assert_eq!((s, why), ("True", REASON_AVAILABLE));
    assert!(
        message.contains("the migration runs on (phase Training)"),
        "{message}"
    );
    // Round 4 is evaluated at 75, still below the target: the Deployment rolls to it.
    status.best = Some(BestRound {
        round: 4,
        mean_score: 75.0,
        model_uri: model(4),
    });
    let plan =
        plan_serving(&inputs(&spec), &status, &live_best(&spec, rolled_out(1))).expect("plan");
    let ServingAction::Apply { objects, previous } = &plan.action else {
        panic!("{:?}", plan.action)
    };
    assert_eq!(previous, &Some(Previous { round: Some(2) }));
    assert_eq!(objects.model_uri, model(4));
}

#[test]
fn switching_back_to_succeeded_removes_a_below_target_deployment() {
    let mut status = stopped("Plateau", true);
    status.endpoint = Some(ENDPOINT.into());
    let spec = spec_from(spec_json());
    let served = with_when("best");
    assert!(needs_observation(&spec, &status));
    let plan =
        plan_serving(&inputs(&spec), &status, &live_best(&served, rolled_out(1))).expect("plan");
    assert_eq!(
        plan.action,
        ServingAction::Delete {
            deployment: Some("tickets-serve".into()),
            service: Some("tickets-serve".into()),
            round: Some(2),
        }
    );
    assert_eq!(plan.endpoint, None);
    assert_eq!(condition(&plan).1, REASON_NOT_SUCCEEDED);
}

#[test]
fn a_pass_rate_target_is_named_too() {
    let mut v = spec_json();
    v["serving"]["when"] = json!("best");
    v["target"]["passRate"] = json!(0.9);
    let spec = spec_from(v);
    let plan = plan_serving(
        &inputs(&spec),
        &stopped("MaxRoundsReached", true),
        &ServingObservation::default(),
    )
    .expect("plan");
    let message = condition(&plan).2;
    assert!(
        message.contains("(mean score 71.00, target 80.00; pass rate 0.50, target 0.90)"),
        "{message}"
    );
}
