//! Trainable Llama-family models, LoRA, training and generation on candle.
//!
//! - [`config`]: Hugging Face config.json → [`config::ModelConfig`].
//! - [`device`]: CPU or CUDA (`LLAMADUO_DEVICE`), and the compute dtype.
//! - [`models`]: the trainable decoder [`models::CausalLm`] (Llama, Qwen2, Mistral, Gemma) and
//!   its KV cache.
//! - [`lora`], [`optim`], [`schedule`], [`train`]: fine-tuning.
//! - [`peft`]: PEFT adapter and full-weight output.
//! - [`adapter`]: reading a PEFT LoRA adapter: as a trainable LoRA, or merged into its base.
//! - [`kernels`]: fused CPU kernels (matmul on candle's pool, norms, softmax, loss, AdamW).
//! - [`alloc`], [`threads`]: malloc tuning and the thread-pool choice the binaries apply at
//!   start.

pub mod adapter;
pub mod alloc;
pub mod chat_template;
pub mod config;
pub mod device;
pub mod embedding;
pub mod from_scratch;
pub mod generate;
pub mod gguf;
pub mod hub_dir;
pub mod kernels;
pub mod lora;
pub mod models;
pub mod optim;
pub mod peft;
pub mod rng;
pub mod schedule;
pub mod threads;
pub mod tokenizer;
pub mod train;
