//! `llamaduo-trainer serve` on a tiny model: chat (JSON and SSE), completions, models,
//! health and metrics, OpenAI-shaped errors for malformed requests, concurrent requests equal
//! to sequential greedy answers, a LoRA adapter served on its base, and graceful shutdown.

mod serve_support;

use serde_json::{Value, json};
use serve_support::{
    chat_body, get, post, post_raw, post_stream, spawn, spawn_unready, tiny_model,
};

fn content(v: &Value) -> String {
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content in {v}"))
        .to_owned()
}

#[tokio::test]
async fn chat_stream_models_health_metrics() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tiny_model(&tmp.path().join("tiny"));
    let server = spawn(&["--model", dir.to_str().expect("utf8"), "--max-tokens", "32"]).await;

    assert_eq!(
        get(&server, "/health").await,
        (200, r#"{"status":"ok"}"#.into())
    );
    assert_eq!(get(&server, "/livez").await.0, 200);
    let (status, models) = get(&server, "/v1/models").await;
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&models).expect("json");
    assert_eq!(models["object"], "list");
    assert_eq!(
        models["data"][0]["id"], "tiny",
        "default name is the directory's"
    );

    let body = chat_body("Question 3: how many apples are in basket 3?", 12);
    let (status, v) = post(&server, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "tiny");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let text = content(&v);
    let usage = &v["usage"];
    let completion_tokens = usage["completion_tokens"].as_u64().expect("tokens");
    assert!((1..=12).contains(&completion_tokens), "{usage}");
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().expect("prompt") + completion_tokens)
    );
    let finish = v["choices"][0]["finish_reason"].as_str().expect("finish");
    assert!(
        finish == "stop" || (finish == "length" && completion_tokens == 12),
        "{v}"
    );

    // Streaming: role first, then content deltas that add up to the same text, then a
    // finish chunk (no usage unless stream_options.include_usage asks), then [DONE].
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["model"] = json!("tiny");
    let (status, ctype, data) = post_stream(&server, "/v1/chat/completions", &sbody).await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/event-stream"), "{ctype}");
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk json"))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let ids: std::collections::BTreeSet<_> = chunks.iter().map(|c| c["id"].to_string()).collect();
    assert_eq!(ids.len(), 1, "one id per stream");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        streamed, text,
        "streamed text equals the non-streamed answer"
    );
    let last = chunks.last().expect("last");
    assert_eq!(last["object"], "chat.completion.chunk");
    assert_eq!(last["choices"][0]["finish_reason"], finish);
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "usage only when asked for"
    );
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null())
    );

    // Stop strings cut the answer, streamed or not.
    if text.chars().count() > 4 {
        let stop: String = text.chars().skip(2).take(2).collect();
        let mut b = body.clone();
        b["stop"] = json!([stop]);
        let (_, v) = post(&server, "/v1/chat/completions", &b).await;
        let cut = content(&v);
        assert!(
            text.starts_with(&cut) && !cut.contains(&stop),
            "{cut:?} / {text:?}"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        b["stream"] = json!(true);
        let (_, _, data) = post_stream(&server, "/v1/chat/completions", &b).await;
        let streamed: String = data
            .iter()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(streamed, cut);
    }

    // Completions: the same prompt text as the chat template renders gives the same answer.
    let (status, v) = post(
        &server,
        "/v1/completions",
        &json!({"prompt": "<|im_start|>user\nQuestion 3: how many apples are in basket 3?<|im_end|>\n<|im_start|>assistant\n",
                "max_tokens": 12, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"].as_str(), Some(text.as_str()));
    let (status, _, data) = post_stream(
        &server,
        "/v1/completions",
        &json!({"prompt": "Question 1:", "max_tokens": 5, "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let usage_chunk: Value = serde_json::from_str(&data[data.len() - 2]).expect("usage chunk");
    assert_eq!(usage_chunk["choices"], json!([]));
    assert!(usage_chunk["usage"]["completion_tokens"].as_u64().is_some());

    // Malformed requests: 400 (404 for a wrong model) with OpenAI's error shape.
    let u = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (r#"{"messages": [ oops"#.to_string(), 400, Value::Null),
        (json!({"model": "tiny"}).to_string(), 400, Value::Null),
        (json!({"messages": []}).to_string(), 400, json!("messages")),
        (
            json!({"messages": [{"role": "robot", "content": "x"}]}).to_string(),
            400,
            json!("messages[0].role"),
        ),
        (
            json!({"messages": u, "model": "gpt-4o"}).to_string(),
            404,
            json!("model"),
        ),
        (json!({"messages": u, "n": 3}).to_string(), 400, json!("n")),
        (
            json!({"messages": u, "temperature": 7}).to_string(),
            400,
            json!("temperature"),
        ),
        (
            json!({"messages": u, "max_tokens": 33}).to_string(),
            400,
            json!("max_tokens"),
        ),
        (
            json!({"messages": u, "top_p": 1.5}).to_string(),
            400,
            json!("top_p"),
        ),
        // What the server cannot do is refused, never silently ignored.
        (
            json!({"messages": u, "tools": [{"type": "function", "function": {"name": "route"}}], "tool_choice": "required"}).to_string(),
            400,
            json!("tools"),
        ),
        (
            json!({"messages": u, "response_format": {"type": "json_object"}}).to_string(),
            400,
            json!("response_format"),
        ),
        (
            json!({"messages": u, "logprobs": true}).to_string(),
            400,
            json!("logprobs"),
        ),
    ];
    for (body, want, param) in cases {
        let (status, v) = post_raw(&server, "/v1/chat/completions", body.clone()).await;
        assert_eq!(status, want, "{body} -> {v}");
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert_eq!(e["type"], "invalid_request_error", "{v}");
        assert!(e.get("code").is_some() && e.get("param").is_some(), "{v}");
        assert_eq!(e["param"], param, "{body}");
    }
    // The neutral values of those fields are accepted.
    let mut neutral = chat_body("Question 1: how many apples are in basket 1?", 4);
    for (k, v) in [
        ("tools", json!([])),
        ("tool_choice", json!("none")),
        ("response_format", json!({"type": "text"})),
        ("logprobs", json!(false)),
    ] {
        neutral[k] = v;
    }
    assert_eq!(post(&server, "/v1/chat/completions", &neutral).await.0, 200);
    let (status, m) = get(&server, "/v1/models/tiny").await;
    assert_eq!(status, 200);
    let m: Value = serde_json::from_str(&m).expect("json");
    assert_eq!(
        (m["id"].as_str(), m["object"].as_str()),
        (Some("tiny"), Some("model"))
    );
    assert_eq!(get(&server, "/v1/models/gpt-4o").await.0, 404);
    // A body over the limit: 413 in OpenAI's error shape, not plain text.
    let huge = json!({"messages": [{"role": "user", "content": "x".repeat(3 << 20)}]});
    let (status, v) = post(&server, "/v1/chat/completions", &huge).await;
    assert_eq!(status, 413, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("MiB")),
        "{v}"
    );
    let (status, v) = post(&server, "/v1/nothing", &json!({})).await;
    assert_eq!(status, 404);
    assert!(v["error"]["message"].is_string());

    let (status, metrics) = get(&server, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            r#"llamaduo_serve_requests_total{endpoint="/v1/chat/completions",status="200"}"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(
        r#"llamaduo_serve_requests_total{endpoint="/v1/chat/completions",status="400"} 11"#
    ));
    assert!(metrics.contains("llamaduo_serve_batch_size_count"));
    assert!(!metrics.contains("llamaduo_serve_generated_tokens_total 0\n"));
}

#[tokio::test]
async fn concurrent_requests_match_sequential_greedy() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tiny_model(&tmp.path().join("tiny"));
    let server = spawn(&["--model", dir.to_str().expect("utf8"), "--max-batch", "8"]).await;
    let prompts: Vec<String> = (0..8)
        .map(|i| {
            format!("Question {}: how many apples are in basket {}?", i * 7, i).repeat(1 + i % 3)
        })
        .collect();
    let mut sequential = Vec::new();
    for p in &prompts {
        let (status, v) = post(&server, "/v1/chat/completions", &chat_body(p, 16)).await;
        assert_eq!(status, 200, "{v}");
        sequential.push(content(&v));
    }
    let futures = prompts.iter().map(|p| {
        let body = chat_body(p, 16);
        let server = &server;
        async move { post(server, "/v1/chat/completions", &body).await }
    });
    let concurrent = futures::future::join_all(futures).await;
    for ((status, v), want) in concurrent.iter().zip(&sequential) {
        assert_eq!(*status, 200, "{v}");
        assert_eq!(
            &content(v),
            want,
            "a batched answer differs from the sequential one"
        );
    }
    // Some of them were decoded together.
    let (_, metrics) = get(&server, "/metrics").await;
    let batched: u64 = metrics
        .lines()
        .find(|l| l.starts_with("llamaduo_serve_batch_size_bucket{le=\"1\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("batch histogram");
    let total: u64 = metrics
        .lines()
        .find(|l| l.starts_with("llamaduo_serve_batch_size_count"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("batch count");
    assert!(
        total < 16,
        "8 sequential + 8 concurrent in fewer than 16 batches: {total}, {batched} of size 1"
    );
}

#[tokio::test]
async fn lora_adapter_is_served_on_its_base() {
    use candle_core::{Device, Tensor};
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let base = tiny_model(&root.join("student/base"));
    // A PEFT adapter on q_proj and v_proj (r 4, alpha 8) naming its base by artifact key.
    let adapter = root.join("round-2/model");
    std::fs::create_dir_all(&adapter).expect("dir");
    let mut t = std::collections::HashMap::new();
    let mut merged = candle_core::safetensors::load(base.join("model.safetensors"), &Device::Cpu)
        .expect("base weights");
    for m in [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj",
    ] {
        let out = merged[&format!("{m}.weight")].dims2().expect("2d").0;
        let a = Tensor::randn(0f32, 1.0, (4, 64), &Device::Cpu).expect("a");
        let b = Tensor::randn(0f32, 1.0, (out, 4), &Device::Cpu).expect("b");
        let w = (&merged[&format!("{m}.weight")] + (b.matmul(&a).expect("ba") * 2.0).expect("s"))
            .expect("sum");
        merged.insert(format!("{m}.weight"), w);
        t.insert(format!("base_model.model.{m}.lora_A.weight"), a);
        t.insert(format!("base_model.model.{m}.lora_B.weight"), b);
    }
    candle_core::safetensors::save(&t, adapter.join("adapter_model.safetensors")).expect("save");
    let cfg = json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                     "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": "student/base"});
    std::fs::write(adapter.join("adapter_config.json"), cfg.to_string()).expect("cfg");
    // The same model as full weights, merged here.
    let full = root.join("merged");
    std::fs::create_dir_all(&full).expect("dir");
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(base.join(f), full.join(f)).expect("copy");
    }
    candle_core::safetensors::save(&merged, full.join("model.safetensors")).expect("save");

    let body = chat_body("Question 5: how many apples are in basket 5?", 16);
    let answer = |server: serve_support::Server| {
        let body = body.clone();
        async move {
            let (status, v) = post(&server, "/v1/chat/completions", &body).await;
            assert_eq!(status, 200, "{v}");
            (content(&v), v["model"].clone())
        }
    };
    let url = format!("file://{}", adapter.display());
    let (via_adapter, name) = answer(spawn(&["--model", &url]).await).await;
    assert_eq!(
        name,
        "tmp-round-2".replace(
            "tmp",
            root.file_name().and_then(|n| n.to_str()).expect("name")
        )
    );
    let (via_base_flag, _) =
        answer(spawn(&["--model", &url, "--base", base.to_str().expect("utf8")]).await).await;
    let (via_full, _) = answer(spawn(&["--model", full.to_str().expect("utf8")]).await).await;
    let (plain_base, _) = answer(spawn(&["--model", base.to_str().expect("utf8")]).await).await;
    assert_eq!(
        via_adapter, via_full,
        "adapter on base == merged full weights"
    );
    assert_eq!(via_base_flag, via_full);
    assert_ne!(via_adapter, plain_base, "the adapter changes the answer");

    // An adapter without a resolvable base: a clear error naming --base, exit non-zero.
    let lost = root.join("elsewhere/model");
    std::fs::create_dir_all(&lost).expect("dir");
    for f in ["adapter_model.safetensors", "adapter_config.json"] {
        std::fs::copy(adapter.join(f), lost.join(f)).expect("copy");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llamaduo-trainer"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--model",
            lost.to_str().expect("utf8"),
        ])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--base") && err.contains("student/base"),
        "{err}"
    );
}

#[tokio::test]
async fn max_tokens_left_out_uses_what_the_context_leaves() {
    // The tiny model's context is 512 tokens; the server's cap is above it. The model is
    // named by a path relative to the working directory, as docs/serving.md does.
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tiny_model(&tmp.path().join("tiny"));
    let cwd = std::env::current_dir().expect("cwd");
    let up = "../".repeat(cwd.components().count() - 1);
    let relative = format!(
        "{up}{}",
        dir.to_str().expect("utf8").trim_start_matches('/')
    );
    assert!(std::path::Path::new(&relative).is_relative());
    let server = spawn(&["--model", &relative, "--max-tokens", "4000"]).await;
    let mut body = chat_body("Question 1: how many apples are in basket 1?", 1);
    body.as_object_mut().expect("object").remove("max_tokens");
    body["stop"] = json!(["never-appears-xyz"]);
    let (status, v) = post(&server, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    let used = v["usage"]["prompt_tokens"].as_u64().expect("prompt")
        + v["usage"]["completion_tokens"]
            .as_u64()
            .expect("completion");
    assert!(used <= 512, "{v}");
    // Asked for explicitly, too many is refused naming what to lower and by how much.
    body["max_tokens"] = json!(600);
    let (status, v) = post(&server, "/v1/chat/completions", &body).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert_eq!(v["error"]["param"], "messages");
    let message = v["error"]["message"].as_str().expect("message");
    assert!(message.contains("max_tokens is 600"), "{message}");
    assert!(message.contains("at most"), "{message}");
    // On /v1/completions the field is `prompt`.
    let (status, v) = post(
        &server,
        "/v1/completions",
        &json!({"prompt": "Question 1:", "max_tokens": 600}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "prompt");
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_and_exits_0() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tiny_model(&tmp.path().join("tiny"));
    let mut server = spawn(&[
        "--model",
        dir.to_str().expect("utf8"),
        "--max-tokens",
        "400",
    ])
    .await;
    let mut body = chat_body("Question 1: how many apples are in basket 1?", 400);
    body["stop"] = json!(["never-appears-xyz"]);
    let root = server.root.clone();
    let request = tokio::spawn(async move {
        let r = serve_support::client()
            .post(format!("{root}/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .expect("request");
        (r.status().as_u16(), r.json::<Value>().await.expect("json"))
    });
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    server.terminate();
    let (status, v) = request.await.expect("joins");
    assert_eq!(status, 200, "the in-flight request completes: {v}");
    assert!(v["usage"]["completion_tokens"].as_u64().is_some());
    let exit = server.child.wait().expect("waits");
    assert!(exit.success(), "serve exits 0 on SIGTERM: {exit:?}");
    // A server that is still loading also stops at once.
    let s = spawn_unready(&["--model", dir.to_str().expect("utf8")]);
    s.terminate();
}
