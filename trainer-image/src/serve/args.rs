//! `llamaduo-trainer serve` arguments, each with an environment fallback so a Deployment can
//! configure the server through env alone.

/// Serve a trained model behind an OpenAI-compatible API.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// The model: a round's model location as the status reports it (file://, s3://, gs://,
    /// az://, hf://, or a local path); full weights or a PEFT LoRA adapter.
    #[arg(long, env = "LLAMADUO_SERVE_MODEL")]
    pub model: String,
    /// The base model of a LoRA adapter (directory, URL or hf:// id); defaults to the
    /// adapter's base_model_name_or_path.
    #[arg(long, env = "LLAMADUO_SERVE_BASE")]
    pub base: Option<String>,
    /// The model name clients send and /v1/models lists; defaults to `{migration}-round-N`
    /// for a round's model directory, else the directory's name.
    #[arg(long, env = "LLAMADUO_SERVE_NAME")]
    pub served_model_name: Option<String>,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "LLAMADUO_SERVE_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: String,
    /// Most tokens one request may generate (also the default of max_tokens).
    #[arg(long, env = "LLAMADUO_SERVE_MAX_TOKENS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tokens: u32,
    /// Seconds a request may take, queueing included; later it ends with a 504.
    #[arg(long, env = "LLAMADUO_SERVE_TIMEOUT", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_seconds: u64,
    /// Most requests decoded together in one batch.
    #[arg(long, env = "LLAMADUO_SERVE_MAX_BATCH", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch: u32,
    /// Seconds a client has, from the first byte of a request's head, to finish the request
    /// line and headers; a slower connection is closed (slow-loris clients).
    #[arg(long, env = "LLAMADUO_SERVE_HEADER_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_seconds: u64,
    /// Seconds a request's body may take to arrive once its head has; a slower one is answered
    /// 408 and its connection closed.
    #[arg(long, env = "LLAMADUO_SERVE_BODY_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout_seconds: u64,
    /// Seconds a connection may go with no request in flight and none begun (a fresh
    /// connection, or keep-alive between requests) before it is closed. Above the usual
    /// client pool idle times (httpx 5 s), so pooled connections are rarely closed under a
    /// client about to reuse them.
    #[arg(long, env = "LLAMADUO_SERVE_IDLE_TIMEOUT", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_seconds: u64,
    /// Most open client connections. At the cap a new connection closes the oldest one with no
    /// request in flight; while every one has a request in flight, new ones wait in the
    /// listen backlog. Default: the descriptor limit (RLIMIT_NOFILE, raised to its hard limit
    /// at start) less a quarter of it (at least 64 kept), at most 4096; a larger value is
    /// lowered to that limit less its headroom.
    #[arg(long, env = "LLAMADUO_SERVE_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
}
