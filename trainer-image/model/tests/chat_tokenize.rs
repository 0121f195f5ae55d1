//! Tokenizer training round trip and chat-template tokenization with assistant-only loss
//! masks, against the real ChatML templates of SmolLM2 and Qwen3.

use llamaduo::api::dataset::{Message, Role};
use llamaduo_model::chat_template::{
    CHATML_EOS_TEMPLATE, CHATML_TEMPLATE, ChatTemplate, ChatTemplateError,
};
use llamaduo_model::tokenizer::{
    CHAT_TEMPLATE_FILE, CHATML_SPECIALS, END_OF_TEXT, IM_END, TemplateSpec, TextTokenizer,
    TokenSpec, TokenizerConfig, save_tokenizer, train_bpe,
};
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{AddedToken, Tokenizer};

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

/// Gemma's chat template, verbatim from its tokenizer_config.json.
const GEMMA_TEMPLATE: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}";

const SP_SPECIALS: [&str; 5] = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<start_of_turn>",
    "<end_of_turn>",
];

/// A SentencePiece-style BPE tokenizer (Metaspace pre-tokenizer and decoder, as the
/// tokenizer.json files of Llama 2, Mistral and Gemma) with Gemma's special tokens and no
/// `<|im_end|>` token; `template` goes into its config.
fn sentencepiece_tokenizer(scheme: PrependScheme, template: Option<&str>) -> TextTokenizer {
    let mut texts = corpus();
    // Every character the tests render, as ordinary text (ChatML markup included).
    texts.extend(
        [
            "<|im_start|>user\n",
            "<|im_start|>assistant\n",
            "user: model: assistant:",
            "Summarize ticket 7. VPN unstable. And ticket 8? User 3 affected.",
        ]
        .map(String::from),
    );
    let specials: Vec<AddedToken> = SP_SPECIALS
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(600)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    let mut tok = Tokenizer::new(BPE::default());
    let meta = Metaspace::new('▁', scheme, true);
    tok.with_pre_tokenizer(Some(meta.clone()));
    tok.with_decoder(Some(meta));
    tok.train(&mut trainer, texts.iter().map(String::as_str))
        .expect("trains");
    let config = TokenizerConfig {
        bos_token: Some(TokenSpec::Text("<bos>".into())),
        eos_token: Some(TokenSpec::Text("<eos>".into())),
        pad_token: Some(TokenSpec::Text("<pad>".into())),
        chat_template: template.map(|t| TemplateSpec::Single(t.into())),
        ..TokenizerConfig::default()
    };
    TextTokenizer::from_parts(tok, config).expect("wraps")
}

fn conversation() -> [Message; 4] {
    [
        msg(Role::User, "Summarize ticket 7."),
        msg(Role::Assistant, "VPN unstable."),
        msg(Role::User, "And ticket 8?"),
        msg(Role::Assistant, "User 3 affected."),
    ]
}

#[test]
fn sentencepiece_training_tokens_equal_the_whole_rendering() {
    for scheme in [PrependScheme::First, PrependScheme::Always] {
        let tok = sentencepiece_tokenizer(scheme, Some(GEMMA_TEMPLATE));
        let tmpl = ChatTemplate::for_tokenizer(&tok, None).expect("template");
        let conv = conversation();
        let full = tmpl.render(&conv, false).expect("renders");
        let t = tmpl.tokenize_conversation(&tok, &conv).expect("tokenizes");
        // Exactly what tokenizing the rendering gives (as at inference and in transformers):
        // no stray `▁` at the start of each answer.
        assert_eq!(
            t.input_ids,
            tok.encode(&full).expect("encodes"),
            "{scheme:?}"
        );
        assert_eq!(t.input_ids.len(), t.loss_mask.len());
        assert_eq!(
            masked_text(&tok, &t.input_ids, &t.loss_mask),
            vec![
                "VPN unstable.<end_of_turn>",
                "User 3 affected.<end_of_turn>"
            ],
            "{scheme:?}"
        );
        // The answers end with a token generation stops on.
        let end = tok.token_to_id("<end_of_turn>").expect("token");
        assert!(tok.eos_ids().contains(&end));
        // The prompt tokens equal what generation sees for the first turn.
        let prompt = tmpl.prompt_ids(&tok, &conv[..1]).expect("prompt");
        assert_eq!(&t.input_ids[..prompt.len()], &prompt[..], "{scheme:?}");
        assert!(t.loss_mask[..prompt.len()].iter().all(|m| !m));
        assert!(t.loss_mask[prompt.len()]);
    }
}

#[test]
fn chatml_fallback_without_im_end_ends_answers_with_eos() {
    let tok = sentencepiece_tokenizer(PrependScheme::First, None);
    assert_eq!(tok.token_to_id(IM_END), None);
    let tmpl = ChatTemplate::for_tokenizer(&tok, None).expect("fallback");
    assert_eq!(tmpl.source(), CHATML_EOS_TEMPLATE);
    let conv = conversation();
    assert_eq!(
        tmpl.render(&conv[..1], true).expect("renders"),
        "<|im_start|>user\nSummarize ticket 7.<eos>\n<|im_start|>assistant\n"
    );
    let t = tmpl.tokenize_conversation(&tok, &conv).expect("tokenizes");
    assert_eq!(
        masked_text(&tok, &t.input_ids, &t.loss_mask),
        vec!["VPN unstable.<eos>", "User 3 affected.<eos>"]
    );
    // Each answer's last token is one generation stops on (the generator stops on eos_ids).
    let eos = tok.token_to_id("<eos>").expect("eos");
    assert!(tok.eos_ids().contains(&eos));
    for (i, m) in t.loss_mask.iter().enumerate() {
        if *m && !t.loss_mask.get(i + 1).copied().unwrap_or(false) {
            assert_eq!(t.input_ids[i], eos, "answer ending at {i}");
        }
    }
}

#[test]
fn answers_without_a_stop_token_get_eos_appended() {
    let tok = sentencepiece_tokenizer(PrependScheme::First, None);
    let plain = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}";
    let tmpl = ChatTemplate::for_tokenizer(&tok, Some(plain)).expect("compiles");
    let conv = conversation();
    let full = tmpl.render(&conv, false).expect("renders");
    let t = tmpl.tokenize_conversation(&tok, &conv).expect("tokenizes");
    assert_eq!(
        masked_text(&tok, &t.input_ids, &t.loss_mask),
        vec!["VPN unstable.<eos>", "User 3 affected.<eos>"]
    );
    // Apart from the two EOS tokens, the ids are the rendering's.
    let eos = tok.token_to_id("<eos>").expect("eos");
    let without: Vec<u32> = t.input_ids.iter().copied().filter(|&i| i != eos).collect();
    assert_eq!(without, tok.encode(&full).expect("encodes"));
}

#[test]
fn chatml_fallback_stops_on_im_end() {
    // A ChatML vocabulary whose configured EOS is <|endoftext|> and which has no template:
    // it is trained with ChatML, so generation must stop on <|im_end|> too.
    let tmp = tempfile::tempdir().expect("tmp");
    let tok = train_bpe(&corpus(), 400, &CHATML_SPECIALS).expect("trains");
    save_tokenizer(&tok, &tmp.path().join("tokenizer.json")).expect("saves");
    std::fs::write(
        tmp.path().join("config.json"),
        r#"{"eos_token_id": 0, "pad_token_id": -1, "bos_token_id": null}"#,
    )
    .expect("cfg");
    let tok = TextTokenizer::from_dir(tmp.path()).expect("loads with pad -1 and bos null");
    assert_eq!(tok.pad_id(), 0);
    assert_eq!(tok.bos_id(), None);
    let im_end = tok.token_to_id(IM_END).expect("im_end");
    assert!(tok.eos_ids().contains(&im_end), "{:?}", tok.eos_ids());
    let tmpl = ChatTemplate::for_tokenizer(&tok, None).expect("chatml");
    assert_eq!(tmpl.source(), CHATML_TEMPLATE);
    let t = tmpl
        .tokenize_conversation(&tok, &[msg(Role::User, "q"), msg(Role::Assistant, "a")])
        .expect("tokenizes");
    assert_eq!(
        masked_text(&tok, &t.input_ids, &t.loss_mask),
        vec!["a<|im_end|>"]
    );
}

#[test]
fn chat_template_jinja_wins_over_tokenizer_config() {
    let tmp = tempfile::tempdir().expect("tmp");
    let tok = chatml_tokenizer(tmp.path(), SMOLLM2_TEMPLATE);
    assert_eq!(tok.chat_template(), Some(SMOLLM2_TEMPLATE));
    // transformers >= 4.47 saves the template in chat_template.jinja.
    std::fs::write(tmp.path().join(CHAT_TEMPLATE_FILE), QWEN3_TEMPLATE).expect("jinja");
    let tok = TextTokenizer::from_dir(tmp.path()).expect("reloads");
    assert_eq!(tok.chat_template(), Some(QWEN3_TEMPLATE));
    let tmpl = ChatTemplate::for_tokenizer(&tok, None).expect("template");
    assert_eq!(tmpl.source(), QWEN3_TEMPLATE);
    // Only the .jinja file, no template in tokenizer_config.json: still the model's own.
    TokenizerConfig {
        eos_token: Some(TokenSpec::Text(IM_END.into())),
        ..TokenizerConfig::default()
    }
    .write(&tmp.path().join("tokenizer_config.json"))
    .expect("writes config");
    let tok = TextTokenizer::from_dir(tmp.path()).expect("reloads");
    assert_eq!(tok.chat_template(), Some(QWEN3_TEMPLATE));
    // A list of named templates in tokenizer_config.json: "default" is the chat template.
    std::fs::remove_file(tmp.path().join(CHAT_TEMPLATE_FILE)).expect("rm");
    TokenizerConfig {
        eos_token: Some(TokenSpec::Text(IM_END.into())),
        chat_template: Some(TemplateSpec::Named(vec![
            llamaduo_model::tokenizer::NamedTemplate {
                name: "tool_use".into(),
                template: "T".into(),
            },
            llamaduo_model::tokenizer::NamedTemplate {
                name: "default".into(),
                template: SMOLLM2_TEMPLATE.into(),
            },
        ])),
        ..TokenizerConfig::default()
    }
    .write(&tmp.path().join("tokenizer_config.json"))
    .expect("writes config");
    let tok = TextTokenizer::from_dir(tmp.path()).expect("reloads");
    assert_eq!(tok.chat_template(), Some(SMOLLM2_TEMPLATE));
}
