//! Service LLM clients, flow control, synthesis and the simulated teacher.
//!
//! - [`provider`]: OpenAI chat completions (and compatible servers), Anthropic Messages and
//!   Gemini generateContent behind one [`provider::ChatProvider`] trait.
//! - [`flow`]: concurrency, request and token rate limits, retries and the token budget
//!   ([`flow::LlmClient`]).
//! - [`judge`]: the judge prompt, its JSON schema and a robust parser (shared with evaluation).
//! - [`synth`]: the `synthesize` stage ([`run_synthesis`]).
//! - [`simulate`]: `simulate-teacher`, an offline OpenAI-compatible stand-in for a service LLM.

pub mod error;
pub mod flow;
pub mod provider;
pub mod secret;

pub use error::LlmError;
pub use secret::Secret;
pub mod judge;
pub mod simulate;
pub mod spend;
pub mod synth;

mod json_extract;

pub use simulate::{
    SimulateOptions, SimulatedTeacher, serve_simulated_teacher, spawn_simulated_teacher,
};
pub use synth::{run_synthesis, synthesize_with};
