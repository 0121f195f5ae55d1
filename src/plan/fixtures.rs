//! Builder-chain fixtures for the plan tests: a valid spec, stage results, and statuses reached
//! by driving the real transitions (so fixtures cannot drift from what `apply` produces).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::{
    EvaluateOutcome, FailureClass, LlamaDuoMigrationSpec, LlamaDuoMigrationStatus, ProviderKind,
    Scores, Stage, StageResult, StageRun, SynthesizeOutcome, TokenUsage, TrainOutcome,
};

use super::{Decision, MigrationId, Observation, apply, plan, run_to_observe, stage_run_name};

/// The migration every test plans for.
pub fn id() -> MigrationId {
    MigrationId::new("team-a", "tickets")
}

/// A fixed clock, `secs` after the epoch.
pub fn at(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).expect("valid timestamp"))
}

/// Builds a spec: a simulated teacher, a student from scratch, file:// storage.
#[derive(Clone)]
pub struct SpecBuilder(LlamaDuoMigrationSpec);

pub fn spec() -> SpecBuilder {
    let json = serde_json::json!({
        "task": {"description": "Add two numbers"},
        "coverage": {"source": "configmap://coverage/rows.jsonl"},
        "teacher": {"provider": "simulated", "model": "arithmetic"},
        "student": {"fromScratch": {}},
        "target": {"meanScore": 80.0},
        "storage": {"url": "file:///artifacts", "volume": {"claimName": "artifacts"}},
        "synthesis": {"initialSamples": 100, "samplesPerRound": 50}
    });
    let spec: LlamaDuoMigrationSpec = serde_json::from_value(json).expect("fixture spec parses");
    assert_eq!(spec.teacher.provider, ProviderKind::Simulated);
    SpecBuilder(spec)
}

impl SpecBuilder {
    pub fn target(mut self, mean: f64) -> Self {
        self.0.target.mean_score = mean;
        self
    }
    pub fn pass_rate(mut self, rate: f64) -> Self {
        self.0.target.pass_rate = Some(rate);
        self
    }
    pub fn max_rounds(mut self, n: u32) -> Self {
        self.0.stop.max_rounds = n;
        self
    }
    pub fn plateau(mut self, n: u32) -> Self {
        self.0.stop.plateau_rounds = n;
        self
    }
    pub fn budget(mut self, tokens: u64) -> Self {
        self.0.stop.max_service_tokens = Some(tokens);
        self
    }
    pub fn retries(mut self, n: u32) -> Self {
        self.0.stop.stage_retries = n;
        self
    }
    pub fn samples(mut self, initial: u32, per_round: u32) -> Self {
        self.0.synthesis.initial_samples = initial;
        self.0.synthesis.samples_per_round = per_round;
        self
    }
    pub fn epochs(mut self, n: u32) -> Self {
        self.0.training.epochs = Some(n);
        self
    }
    /// A pretrained student (`student.baseModel`): the migration starts with round 0 unless
    /// `evaluation.baseStudent` is false.
    pub fn pretrained(mut self) -> Self {
        self.0.student.from_scratch = None;
        self.0.student.base_model = Some("file:///models/smollm2".into());
        self
    }
    pub fn base_student(mut self, on: bool) -> Self {
        self.0.evaluation.base_student = Some(on);
        self
    }
    pub fn suspend(mut self, on: bool) -> Self {
        self.0.suspend = on;
        self
    }
    pub fn no_storage(mut self) -> Self {
        self.0.storage = None;
        self
    }
    pub fn build(self) -> LlamaDuoMigrationSpec {
        self.0
    }
}

/// Builds a stage result.
pub struct ResultBuilder(StageResult);

pub fn result(stage: Stage, round: u32) -> ResultBuilder {
    let mut r = StageResult::success(stage, round);
    r.duration_seconds = 12.0;
    match stage {
        Stage::Synthesize => {
            r.synthesize = Some(SynthesizeOutcome {
                requested: 100,
                produced: 100,
                ..SynthesizeOutcome::default()
            });
            r.service_tokens = TokenUsage {
                input: 300,
                output: 200,
            };
        }
        Stage::Train => {
            r.train = Some(TrainOutcome {
                steps: 40,
                training_samples: 180,
                final_loss: 0.5,
                mean_loss: 0.9,
                tokens_per_second: 5000.0,
                model_uri: format!("file:///artifacts/team-a/tickets/round-{round}/model"),
                ..TrainOutcome::default()
            })
        }
        Stage::Evaluate => {
            r.evaluate = Some(EvaluateOutcome {
                scores: Scores {
                    mean: 50.0,
                    pass_rate: 0.5,
                    ..Scores::default()
                },
                prompts: 10,
                answers: 40,
                failed_judgements: 2,
            });
            r.service_tokens = TokenUsage {
                input: 100,
                output: 50,
            };
        }
    }
    ResultBuilder(r)
}

impl ResultBuilder {
    pub fn mean(mut self, mean: f64) -> Self {
        if let Some(e) = self.0.evaluate.as_mut() {
            e.scores.mean = mean;
        }
        self
    }
    pub fn pass_rate(mut self, rate: f64) -> Self {
        if let Some(e) = self.0.evaluate.as_mut() {
            e.scores.pass_rate = rate;
        }
        self
    }
    pub fn tokens(mut self, total: u64) -> Self {
        self.0.service_tokens = TokenUsage {
            input: total / 2,
            output: total - total / 2,
        };
        self
    }
    pub fn failed(mut self, message: &str) -> Self {
        self.0.succeeded = false;
        self.0.message = Some(message.into());
        self.0.failure_class = Some(FailureClass::Transient);
        self.0.synthesize = None;
        self.0.train = None;
        self.0.evaluate = None;
        self
    }
    pub fn budget_exhausted(mut self) -> Self {
        self.0.budget_exhausted = true;
        self
    }
    pub fn permanent(mut self) -> Self {
        self.0.failure_class = Some(FailureClass::Permanent);
        self
    }
    pub fn build(self) -> StageResult {
        self.0
    }
}

/// A stage run as `run_to_observe` would name it.
pub fn run(round: u32, stage: Stage, attempt: u32, generation: i64) -> StageRun {
    StageRun {
        round,
        stage,
        attempt,
        name: stage_run_name("tickets", round, stage, attempt),
        generation: Some(generation),
        progress: None,
    }
}

/// Builds a status by driving plan + apply the way an executor would, one step at a time.
#[derive(Clone)]
pub struct StatusBuilder {
    pub spec: LlamaDuoMigrationSpec,
    pub status: LlamaDuoMigrationStatus,
    pub generation: i64,
    clock: i64,
}

pub fn status(spec: &LlamaDuoMigrationSpec) -> StatusBuilder {
    StatusBuilder {
        spec: spec.clone(),
        status: LlamaDuoMigrationStatus::default(),
        generation: 1,
        clock: 1_000,
    }
}

impl StatusBuilder {
    /// One reconcile with `observation`; returns the decision taken.
    pub fn step(&mut self, observation: Observation) -> Decision {
        let d = plan(
            &id(),
            &self.spec,
            &self.status,
            Some(self.generation),
            &observation,
        );
        self.clock += 10;
        self.status = apply(&self.status, &d, Some(self.generation), &at(self.clock));
        d
    }

    /// One reconcile with `observation`, whatever it decides.
    pub fn then(mut self, observation: Observation) -> Self {
        self.step(observation);
        self
    }

    /// Start the next stage run (the executor finds it missing). Panics if plan does not start one.
    pub fn started(mut self) -> Self {
        match self.step(Observation::Missing) {
            Decision::StartStage { .. } => self,
            other => panic!("expected a stage start, got {other:?}"),
        }
    }

    /// The run in flight reports `result`.
    pub fn finished(mut self, result: StageResult) -> Self {
        let observation = if result.succeeded {
            Observation::Succeeded(result)
        } else {
            Observation::Failed {
                reason: "exit code 1".into(),
                result: Some(result),
            }
        };
        match self.step(observation) {
            Decision::RecordResult { .. } => self,
            other => panic!("expected a result to be recorded, got {other:?}"),
        }
    }

    /// Start and finish the next stage with its default result.
    pub fn stage_ok(self) -> Self {
        let run = self.next_run();
        self.started()
            .finished(result(run.stage, run.round).build())
    }

    /// A whole round (from wherever the round stands) scoring `mean`.
    pub fn round(mut self, mean: f64) -> Self {
        loop {
            let run = self.next_run();
            if run.stage == Stage::Evaluate {
                return self
                    .started()
                    .finished(result(Stage::Evaluate, run.round).mean(mean).build());
            }
            self = self.stage_ok();
        }
    }

    /// The run the executor would observe next. Panics when none is due.
    pub fn next_run(&self) -> StageRun {
        run_to_observe(&id(), &self.spec, &self.status, Some(self.generation))
            .expect("a stage run is due")
    }

    /// The spec changes (new generation).
    pub fn respec(mut self, spec: LlamaDuoMigrationSpec) -> Self {
        self.spec = spec;
        self.generation += 1;
        self
    }
}
