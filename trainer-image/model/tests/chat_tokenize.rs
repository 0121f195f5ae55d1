//! Tokenizer training round trip and chat-template tokenization with assistant-only loss
//! masks, against the real ChatML templates of SmolLM2 and Qwen3.

use llamaduo::api::dataset::{Message, Role};
use llamaduo_model::chat_template::{CHATML_TEMPLATE, ChatTemplate, ChatTemplateError};
use llamaduo_model::tokenizer::{
    CHATML_SPECIALS, END_OF_TEXT, IM_END, TemplateSpec, TextTokenizer, TokenSpec, TokenizerConfig,
    save_tokenizer, train_bpe,
};

/// SmolLM2-135M-Instruct's chat template, verbatim from its tokenizer_config.json.
const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Qwen3's chat template (tools, thinking blocks, namespace, slicing, string methods).
const QWEN3_TEMPLATE: &str = include_str!("data/qwen3_chat_template.jinja");

fn msg(role: Role, content: &str) -> Message {
    Message {
        role,
        content: content.into(),
    }
}

fn corpus() -> Vec<String> {
    let mut v: Vec<String> = (0..300)
        .map(|i| {
            format!(
                "Ticket {i}: the VPN drops every {} minutes. Summary: VPN unstable, user {} affected.",
                i % 13,
                i % 5
            )
        })
        .collect();
    v.extend(["user\n", "assistant\n", "system\n"].map(String::from));
    v
}

/// A ChatML tokenizer trained on the corpus, saved and reloaded from a directory.
fn chatml_tokenizer(dir: &std::path::Path, template: &str) -> TextTokenizer {
    let tok = train_bpe(&corpus(), 500, &CHATML_SPECIALS).expect("trains");
    save_tokenizer(&tok, &dir.join("tokenizer.json")).expect("saves");
    TokenizerConfig {
        eos_token: Some(TokenSpec::Text(IM_END.into())),
        pad_token: Some(TokenSpec::Text(END_OF_TEXT.into())),
        chat_template: Some(TemplateSpec::Single(template.into())),
        ..TokenizerConfig::default()
    }
    .write(&dir.join("tokenizer_config.json"))
    .expect("writes config");
    TextTokenizer::from_dir(dir).expect("reloads")
}

#[test]
fn bpe_round_trips_exactly_after_save_and_reload() {
    let tmp = tempfile::tempdir().expect("tmp");
    let trained = train_bpe(&corpus(), 500, &CHATML_SPECIALS).expect("trains");
    let tok = chatml_tokenizer(tmp.path(), CHATML_TEMPLATE);
    // At most the requested size; fewer when the data runs out of pairs seen twice.
    assert!(
        (300..=500).contains(&tok.vocab_size()),
        "{}",
        tok.vocab_size()
    );
    assert_eq!(tok.eos_ids(), &[2]);
    assert_eq!(tok.pad_id(), 0);
    assert_eq!(tok.bos_id(), None);
    for text in [
        "Ticket 42: the VPN drops every 3 minutes.",
        " leading space and  double  spaces\n\ttabs\r\n",
        "Unicode: naïve café, 日本語, emoji 🚀, never in the training data",
        "<|im_start|>user\nhi<|im_end|>\n",
    ] {
        let ids = tok.encode(text).expect("encodes");
        let before = trained
            .encode_fast(text, false)
            .expect("encodes")
            .get_ids()
            .to_vec();
        assert_eq!(ids, before, "same ids after reload for {text:?}");
        assert_eq!(tok.decode(&ids, false).expect("decodes"), text);
    }
    // Frequent words were merged: far fewer tokens than bytes.
    let ids = tok.encode("the VPN drops every").expect("encodes");
    assert!(ids.len() <= 6, "{ids:?}");
}

fn masked_text(tok: &TextTokenizer, ids: &[u32], mask: &[bool]) -> Vec<String> {
    // Contiguous masked runs, decoded.
    let mut runs = Vec::new();
    let mut cur: Vec<u32> = Vec::new();
    for (&id, &m) in ids.iter().zip(mask) {
        if m {
            cur.push(id);
        } else if !cur.is_empty() {
            runs.push(tok.decode(&cur, false).expect("decodes"));
            cur.clear();
        }
    }
    if !cur.is_empty() {
        runs.push(tok.decode(&cur, false).expect("decodes"));
    }
    runs
}

#[test]
fn smollm2_template_masks_only_the_answers() {
    let tmp = tempfile::tempdir().expect("tmp");
    let tok = chatml_tokenizer(tmp.path(), SMOLLM2_TEMPLATE);
    let tmpl = ChatTemplate::for_tokenizer(&tok, None).expect("template");
    assert_eq!(tmpl.source(), SMOLLM2_TEMPLATE);
    let conv = [
        msg(Role::User, "Summarize ticket 7."),
        msg(Role::Assistant, "VPN unstable."),
        msg(Role::User, "And ticket 8?"),
        msg(Role::Assistant, "User 3 affected."),
    ];
    let t = tmpl.tokenize_conversation(&tok, &conv).expect("tokenizes");
    assert_eq!(t.input_ids.len(), t.loss_mask.len());
    assert_eq!(
        masked_text(&tok, &t.input_ids, &t.loss_mask),
        vec!["VPN unstable.<|im_end|>", "User 3 affected.<|im_end|>"]
    );
    // The whole sequence decodes to the template's rendering.
    let full = tok.decode(&t.input_ids, false).expect("decodes");
    assert_eq!(full, tmpl.render(&conv, false).expect("renders"));
    assert!(full.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"));
    // The prompt tokens equal what generation sees for the first turn.
    let prompt = tmpl.prompt_ids(&tok, &conv[..1]).expect("prompt");
    assert_eq!(&t.input_ids[..prompt.len()], &prompt[..]);
    assert!(t.loss_mask[..prompt.len()].iter().all(|m| !m));
    assert!(t.loss_mask[prompt.len()]);
}

#[test]
fn qwen3_template_renders_and_masks_the_final_answer() {
    let tmp = tempfile::tempdir().expect("tmp");
    let tok = chatml_tokenizer(tmp.path(), QWEN3_TEMPLATE);
    let tmpl = ChatTemplate::for_tokenizer(&tok, None).expect("Qwen3 template compiles");
    let conv = [
        msg(Role::System, "Be brief."),
        msg(Role::User, "Summarize ticket 9."),
        msg(Role::Assistant, "VPN drops."),
    ];
    let prompt = tmpl.render(&conv[..2], true).expect("renders");
    assert_eq!(
        prompt,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nSummarize ticket 9.<|im_end|>\n<|im_start|>assistant\n"
    );
    let full = tmpl.render(&conv, false).expect("renders");
    assert_eq!(
        full,
        format!("{prompt}<think>\n\n</think>\n\nVPN drops.<|im_end|>\n")
    );
    let t = tmpl.tokenize_conversation(&tok, &conv).expect("tokenizes");
    assert_eq!(
        masked_text(&tok, &t.input_ids, &t.loss_mask),
        vec!["<think>\n\n</think>\n\nVPN drops.<|im_end|>"]
    );
    // Python string methods through pycompat: an answer with a think block is split by
    // .split('</think>') and .lstrip('\n').
    let with_think = [
        msg(Role::User, "Hi"),
        msg(Role::Assistant, "<think>\nreasoning\n</think>\n\nHello."),
    ];
    let r = tmpl.render(&with_think, false).expect("renders");
    assert!(
        r.ends_with("<think>\nreasoning\n</think>\n\nHello.<|im_end|>\n"),
        "{r:?}"
    );
}

#[test]
fn spec_override_wins_and_chatml_is_the_default() {
    let tmp = tempfile::tempdir().expect("tmp");
    let tok = train_bpe(&corpus(), 400, &CHATML_SPECIALS).expect("trains");
    save_tokenizer(&tok, &tmp.path().join("tokenizer.json")).expect("saves");
    // No tokenizer_config.json and no config.json: no EOS is known.
    let err = TextTokenizer::from_dir(tmp.path()).expect_err("no eos");
    assert!(err.to_string().contains("eos_token"), "{err}");
    std::fs::write(tmp.path().join("config.json"), r#"{"eos_token_id": 2}"#).expect("cfg");
    let tok = TextTokenizer::from_dir(tmp.path()).expect("loads");
    assert_eq!(tok.chat_template(), None);
    let tmpl = ChatTemplate::for_tokenizer(&tok, None).expect("chatml");
    assert_eq!(tmpl.source(), CHATML_TEMPLATE);
    let custom = "{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}";
    let tmpl = ChatTemplate::for_tokenizer(&tok, Some(custom)).expect("override");
    let conv = [msg(Role::User, "q"), msg(Role::Assistant, "a")];
    assert_eq!(
        tmpl.render(&conv, false).expect("renders"),
        "[user] q<|im_end|>\n[assistant] a<|im_end|>\n"
    );
    let t = tmpl.tokenize_conversation(&tok, &conv).expect("tokenizes");
    assert_eq!(
        masked_text(&tok, &t.input_ids, &t.loss_mask),
        vec!["a<|im_end|>"]
    );
}

#[test]
fn templates_that_drop_answers_are_rejected() {
    let tmp = tempfile::tempdir().expect("tmp");
    let tok = chatml_tokenizer(tmp.path(), CHATML_TEMPLATE);
    let dropping =
        "{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}{% endif %}{% endfor %}";
    let tmpl = ChatTemplate::for_tokenizer(&tok, Some(dropping)).expect("compiles");
    let err = tmpl
        .tokenize_conversation(
            &tok,
            &[msg(Role::User, "q"), msg(Role::Assistant, "answer")],
        )
        .expect_err("answer missing");
    assert!(matches!(err, ChatTemplateError::AnswerNotFound(1)), "{err}");
    let unknown = "{{ eos_token }}";
    let cfg_dir = tempfile::tempdir().expect("tmp");
    save_tokenizer(
        &train_bpe(&corpus(), 300, &CHATML_SPECIALS).expect("trains"),
        &cfg_dir.path().join("tokenizer.json"),
    )
    .expect("saves");
    std::fs::write(
        cfg_dir.path().join("tokenizer_config.json"),
        format!(r#"{{"eos_token": "</s>", "chat_template": {unknown:?}}}"#),
    )
    .expect("writes");
    let err = TextTokenizer::from_dir(cfg_dir.path()).expect_err("</s> is not in the vocab");
    assert!(err.to_string().contains("eos_token = \"</s>\""), "{err}");
}
