//! The generation worker: one thread owns the model and decodes requests from a bounded
//! queue in batches of up to `--max-batch` (each row with its own sampling, limits and stop
//! strings, see [`Generator::decode_rows`]). Streaming requests get text deltas as tokens
//! arrive. A row ends early when its client has gone away or its deadline has passed, so a
//! slow request never holds the batch past its time limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use llamaduo_model::generate::{FinishReason, Generator, RowRequest, SamplingParams};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use super::delta::DeltaTracker;
use super::error::ApiError;
use super::load::{ModelDirs, load};
use super::metrics::Metrics;
use super::request::{GenSpec, PromptInput};
use crate::evaluate::load::LoadedModel;

const LOADING: u8 = 0;
const READY: u8 = 1;
const FAILED: u8 = 2;

/// What the worker sends back for a request.
#[derive(Debug)]
pub enum Event {
    /// New text of a streaming answer.
    Delta(String),
    /// The answer is complete.
    Done(Outcome),
    /// The request failed (nothing more follows).
    Failed(ApiError),
}

/// A finished answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The whole answer text (cut before a stop string).
    pub text: String,
    /// OpenAI's finish_reason: `stop` (end of turn or stop string) or `length`.
    pub finish_reason: &'static str,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
}

/// One queued request.
#[derive(Debug)]
pub struct Job {
    /// The validated request.
    pub spec: GenSpec,
    /// When it must be answered by.
    pub deadline: Instant,
    /// The request's --request-timeout-seconds (for the error message).
    pub timeout_seconds: u64,
    /// Where events go; closed when the client has gone.
    pub events: UnboundedSender<Event>,
}

/// Worker settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Most requests decoded together.
    pub max_batch: usize,
    /// Most requests waiting in the queue before new ones get 503.
    pub queue_capacity: usize,
}

/// The handle request handlers use.
#[derive(Debug)]
pub struct Engine {
    tx: SyncSender<Job>,
    state: Arc<AtomicU8>,
}

/// What [`Engine::start`] returns besides the handle.
pub struct Started {
    /// The handle for submitting requests.
    pub engine: Engine,
    /// The worker thread; it exits once every [`Engine`] is dropped and the queue is empty.
    pub worker: JoinHandle<()>,
    /// Resolves once the model is loaded (or failed to load).
    pub loaded: oneshot::Receiver<Result<String, String>>,
}

impl Engine {
    /// Starts the worker thread, which loads the model from `dirs` and then serves the queue.
    pub fn start(
        dirs: ModelDirs,
        config: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Started> {
        let (tx, rx) = std::sync::mpsc::sync_channel(config.queue_capacity.max(1));
        let state = Arc::new(AtomicU8::new(LOADING));
        let (loaded_tx, loaded) = oneshot::channel();
        let worker_state = state.clone();
        let worker = std::thread::Builder::new()
            .name("llamaduo-serve-worker".into())
            .spawn(move || {
                let model = match load(&dirs) {
                    Ok(m) => m,
                    Err(e) => {
                        worker_state.store(FAILED, Ordering::SeqCst);
                        let _ = loaded_tx.send(Err(format!("{e:#}")));
                        return;
                    }
                };
                worker_state.store(READY, Ordering::SeqCst);
                let _ = loaded_tx.send(Ok(model.source.clone()));
                Worker {
                    model,
                    max_batch: config.max_batch.max(1),
                    metrics,
                    seeds: AtomicU64::new(seed_base()),
                }
                .run(rx);
            })?;
        Ok(Started {
            engine: Engine { tx, state },
            worker,
            loaded,
        })
    }

    /// Whether the model is loaded.
    pub fn ready(&self) -> bool {
        self.state.load(Ordering::SeqCst) == READY
    }

    /// Queues a request; 503 while loading or when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        match self.state.load(Ordering::SeqCst) {
            READY => {}
            FAILED => return Err(ApiError::unavailable("the model failed to load")),
            _ => {
                return Err(ApiError::unavailable(
                    "the model is still loading; retry when GET /health answers 200",
                ));
            }
        }
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => ApiError::unavailable(
                "the server's request queue is full; retry later (or raise --max-batch / add replicas)",
            ),
            TrySendError::Disconnected(_) => ApiError::unavailable("the server is shutting down"),
        })
    }
}

fn seed_base() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

struct Worker {
    model: LoadedModel,
    max_batch: usize,
    metrics: Arc<Metrics>,
    seeds: AtomicU64,
}

struct Live {
    job: Job,
    prompt_tokens: usize,
    tracker: DeltaTracker,
    timed_out: bool,
}

impl Worker {
    fn run(&self, rx: Receiver<Job>) {
        // Ends when every sender is gone (shutdown) and the queue is drained.
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            while jobs.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            self.run_batch(jobs);
        }
        tracing::info!("generation worker stopped");
    }

    fn run_batch(&self, jobs: Vec<Job>) {
        let mut rows = Vec::with_capacity(jobs.len());
        let mut live = Vec::with_capacity(jobs.len());
        for job in jobs {
            if job.events.is_closed() {
                self.metrics.cancelled();
                continue;
            }
            if Instant::now() >= job.deadline {
                let _ = job
                    .events
                    .send(Event::Failed(ApiError::timeout(job.timeout_seconds)));
                continue;
            }
            match self.row(&job.spec) {
                Ok(row) => {
                    live.push(Live {
                        prompt_tokens: row.prompt.len(),
                        job,
                        tracker: DeltaTracker::default(),
                        timed_out: false,
                    });
                    rows.push(row);
                }
                Err(e) => {
                    let _ = job.events.send(Event::Failed(e));
                }
            }
        }
        if rows.is_empty() {
            return;
        }
        self.metrics.batch(rows.len());
        let tokenizer = &self.model.tokenizer;
        let generator = Generator::new(&self.model.model, tokenizer);
        let result = generator.decode_rows(&rows, |step| {
            let l = &mut live[step.row];
            if l.job.events.is_closed() {
                return false;
            }
            if Instant::now() >= l.job.deadline {
                l.timed_out = true;
                let _ = l
                    .job
                    .events
                    .send(Event::Failed(ApiError::timeout(l.job.timeout_seconds)));
                return false;
            }
            if l.job.spec.stream && step.finished.is_none() {
                match tokenizer.decode(step.token_ids, true) {
                    Ok(text) => {
                        if let Some(d) = l.tracker.step(&text, &l.job.spec.stop) {
                            let _ = l.job.events.send(Event::Delta(d));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot decode a partial answer"),
                }
            }
            true
        });
        match result {
            Ok(gens) => {
                for (g, mut l) in gens.into_iter().zip(live) {
                    self.metrics.tokens(l.prompt_tokens, g.token_ids.len());
                    let finish_reason = match g.finish_reason {
                        FinishReason::Eos | FinishReason::Stop => "stop",
                        FinishReason::Length => "length",
                        // The client is gone or already has its timeout error.
                        FinishReason::Cancelled => {
                            if !l.timed_out {
                                self.metrics.cancelled();
                            }
                            continue;
                        }
                    };
                    if l.timed_out {
                        continue;
                    }
                    if l.job.spec.stream
                        && let Some(d) = l.tracker.finish(&g.text)
                    {
                        let _ = l.job.events.send(Event::Delta(d));
                    }
                    let _ = l.job.events.send(Event::Done(Outcome {
                        text: g.text,
                        finish_reason,
                        prompt_tokens: l.prompt_tokens,
                        completion_tokens: g.token_ids.len(),
                    }));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "generation failed");
                for l in live {
                    let _ = l.job.events.send(Event::Failed(ApiError::internal(format!(
                        "generation failed: {e}"
                    ))));
                }
            }
        }
    }

    /// Tokenizes a request and checks it fits the model's context.
    fn row(&self, spec: &GenSpec) -> Result<RowRequest, ApiError> {
        let m = &self.model;
        let prompt = match &spec.prompt {
            PromptInput::Chat(messages) => {
                m.template.prompt_ids(&m.tokenizer, messages).map_err(|e| {
                    ApiError::invalid(
                        Some("messages"),
                        format!("the model's chat template refused the messages: {e}"),
                    )
                })?
            }
            PromptInput::Text(text) => m
                .tokenizer
                .encode(text)
                .map_err(|e| ApiError::invalid(Some("prompt"), format!("cannot tokenize: {e}")))?,
        };
        if prompt.is_empty() {
            return Err(ApiError::invalid(
                Some("prompt"),
                "the prompt has no tokens",
            ));
        }
        let context = m.model.config().max_position_embeddings;
        let prompt_field = match spec.prompt {
            PromptInput::Chat(_) => "messages",
            PromptInput::Text(_) => "prompt",
        };
        let room = context.saturating_sub(prompt.len());
        let max_new_tokens = match spec.max_tokens_field {
            // Left out: as OpenAI and vLLM do, the answer may use what the context leaves.
            None => spec.max_tokens.min(room),
            Some(_) => spec.max_tokens,
        };
        if max_new_tokens == 0 || max_new_tokens > room {
            let (asked, lower) = match spec.max_tokens_field {
                Some(field) => (
                    format!(" and {field} is {}", spec.max_tokens),
                    if room > 0 {
                        format!(" or lower {field} to at most {room}")
                    } else {
                        String::new()
                    },
                ),
                None => (
                    ", which leaves no room for an answer".to_string(),
                    String::new(),
                ),
            };
            return Err(ApiError::invalid(
                Some(prompt_field),
                format!(
                    "this model's context is {context} tokens, but the prompt has {}{asked}; shorten the {prompt_field}{lower}",
                    prompt.len()
                ),
            )
            .with_code("context_length_exceeded"));
        }
        let seed = spec.seed.unwrap_or_else(|| {
            self.seeds
                .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        });
        Ok(RowRequest {
            prompt,
            params: SamplingParams {
                temperature: spec.temperature,
                top_p: spec.top_p,
                max_new_tokens,
                seed,
            },
            stop_strings: spec.stop.clone(),
        })
    }
}
