//! The judge protocol end to end against the simulated teacher: the verdicts for correct,
//! partly right and wrong answers land where they should, the baseline answer is correct,
//! and the server's model list and unknown-model error follow the OpenAI format.

use std::sync::Arc;

use llamaduo::api::{Message, ProviderSpec, Role};
use llamaduo_service_llm::flow::{LlmClient, TokenBudget};
use llamaduo_service_llm::judge::{answer_request, judge_request, parse_judgement};
use llamaduo_service_llm::simulate::{Family, SimulateOptions, spawn_simulated_teacher};
use serde_json::{Value, json};

fn spec(model: &str, base: &str) -> ProviderSpec {
    serde_json::from_value(json!({"provider": "simulated", "model": model, "baseUrl": base}))
        .expect("spec")
}

#[tokio::test]
async fn verdicts_follow_the_answers_quality() {
    let teacher = spawn_simulated_teacher(SimulateOptions::ephemeral())
        .await
        .expect("teacher");
    let budget = Arc::new(TokenBudget::new(None));
    let client = LlmClient::from_spec(
        &spec("sort", &teacher.base_url()),
        None,
        Arc::clone(&budget),
    )
    .expect("client");
    let task = Family::Sort.description();
    let instruction = "Sort these numbers: 42, 7, 19, 3";
    let score = |candidate: &'static str| {
        let req = judge_request(task, instruction, "3, 7, 19, 42", candidate, None);
        let client = &client;
        async move {
            let reply = client.chat(&req).await.expect("reply");
            parse_judgement(&reply.text).expect("verdict")
        }
    };
    let good = score("3, 7, 19, 42").await;
    let wrapped = score("The sorted list is 3, 7, 19, 42").await;
    let partial = score("3, 19, 7, 42").await;
    let wrong = score("I do not know").await;
    assert!(good.score() >= 90.0, "{good:?}");
    assert!((60.0..90.0).contains(&wrapped.score()), "{wrapped:?}");
    assert!((20.0..70.0).contains(&partial.score()), "{partial:?}");
    assert!(wrong.score() <= 15.0, "{wrong:?}");
    assert!(
        good.score() > wrapped.score()
            && wrapped.score() > partial.score()
            && partial.score() > wrong.score()
    );

    let prompt = [Message {
        role: Role::User,
        content: instruction.into(),
    }];
    let answer = client
        .chat(&answer_request(&prompt, Some(0.0), 64))
        .await
        .expect("answer");
    assert_eq!(answer.text, "3, 7, 19, 42");
    assert_eq!(budget.used(), client.stats().usage);
}

#[tokio::test]
async fn models_and_unknown_model_errors() {
    let teacher = spawn_simulated_teacher(SimulateOptions::ephemeral())
        .await
        .expect("teacher");
    // Building a client installs the TLS crypto provider reqwest needs.
    let client = LlmClient::from_spec(
        &spec("poetry", &teacher.base_url()),
        None,
        Arc::new(TokenBudget::new(None)),
    )
    .expect("client");
    let http = reqwest::Client::new();
    let models: Value = http
        .get(format!("{}/models", teacher.base_url()))
        .send()
        .await
        .expect("models")
        .json()
        .await
        .expect("json");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        [
            "arithmetic",
            "reverse",
            "sort",
            "triage",
            "dates",
            "updates"
        ]
    );

    let err = client
        .chat(&answer_request(
            &[Message {
                role: Role::User,
                content: "hi".into(),
            }],
            None,
            8,
        ))
        .await
        .expect_err("unknown model");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("model_not_found"), "{err}");
}
