//! Fuzzing the model crate's readers of downloaded files (docs/fuzzing.md): GGUF headers and
//! metadata (candle's reader plus our conversion of the metadata into config.json, the
//! tokenizer and tokenizer_config.json) and safetensors headers (our up-front check and
//! candle's loader). Inputs are written as files, since that is how the readers take them.
//!
//! Besides raw mutations of the committed corpus, both formats are generated structure-aware
//! from a valid tiny model with edits that lie: counts of 2^60 tensors, string and array
//! lengths of 2^63, dimensions whose product overflows, offsets past the end, a layer count of
//! 2^62. None may panic, hang, or allocate what the file does not hold.
//!
//! `LLAMADUO_FUZZ_CASES=20000 cargo test --release -p llamaduo-model --test fuzz_parsers --
//! --nocapture` runs longer.

#[path = "../../../fuzz/harness.rs"]
mod harness;

use std::io::Write;

use candle_core::Device;
use harness::{Bytes, DEFAULT_CASES, Target, any_bytes, cases, mutated, seeds};
use llamaduo_model::gguf::GgufFile;
use llamaduo_model::hub_dir::read_safetensors_header;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

/// `bytes` as a file for the readers that take a path.
fn as_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(bytes).expect("write");
    f.flush().expect("flush");
    f
}

// ---- GGUF ----

/// A GGUF metadata value, including lies about lengths.
#[derive(Clone, Debug)]
enum Val {
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    Bool(u8),
    Str(String),
    Arr(Vec<Val>),
    /// A string whose length prefix says `n` and whose bytes stop there.
    StrClaim(u64),
    /// An array of type `ty` claiming `n` elements, with none following.
    ArrClaim(u32, u64),
}

impl Val {
    fn type_id(&self) -> u32 {
        match self {
            Val::U32(_) => 4,
            Val::I32(_) => 5,
            Val::F32(_) => 6,
            Val::Bool(_) => 7,
            Val::Str(_) | Val::StrClaim(_) => 8,
            Val::Arr(_) | Val::ArrClaim(..) => 9,
            Val::U64(_) => 10,
            Val::I64(_) => 11,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Val::U32(v) => out.extend(v.to_le_bytes()),
            Val::I32(v) => out.extend(v.to_le_bytes()),
            Val::U64(v) => out.extend(v.to_le_bytes()),
            Val::I64(v) => out.extend(v.to_le_bytes()),
            Val::F32(v) => out.extend(v.to_le_bytes()),
            Val::Bool(v) => out.push(*v),
            Val::Str(s) => {
                out.extend((s.len() as u64).to_le_bytes());
                out.extend(s.as_bytes());
            }
            Val::Arr(items) => {
                out.extend(items.first().map_or(4, Val::type_id).to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for i in items {
                    i.write(out);
                }
            }
            Val::StrClaim(n) => out.extend(n.to_le_bytes()),
            Val::ArrClaim(ty, n) => {
                out.extend(ty.to_le_bytes());
                out.extend(n.to_le_bytes());
            }
        }
    }
}

/// A tensor entry of the header.
#[derive(Clone, Debug)]
struct TensorSpec {
    name: String,
    dims: Vec<u64>,
    dtype: u32,
    offset: u64,
}

/// A whole GGUF file, written by hand so every count and length can lie.
#[derive(Clone, Debug)]
struct GgufSpec {
    version: u32,
    tensor_count: Option<u64>,
    kv_count: Option<u64>,
    kvs: Vec<(String, Val)>,
    tensors: Vec<TensorSpec>,
    data: Vec<u8>,
}

impl GgufSpec {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(b"GGUF");
        out.extend(self.version.to_le_bytes());
        out.extend(
            self.tensor_count
                .unwrap_or(self.tensors.len() as u64)
                .to_le_bytes(),
        );
        out.extend(self.kv_count.unwrap_or(self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            Val::Str(k.clone()).write(&mut out);
            out.extend(v.type_id().to_le_bytes());
            v.write(&mut out);
        }
        for t in &self.tensors {
            Val::Str(t.name.clone()).write(&mut out);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.dtype.to_le_bytes());
            out.extend(t.offset.to_le_bytes());
        }
        while out.len() % 32 != 0 {
            out.push(0);
        }
        out.extend(&self.data);
        out
    }

    fn set(&mut self, key: &str, v: Val) {
        match self.kvs.iter_mut().find(|(k, _)| k == key) {
            Some(kv) => kv.1 = v,
            None => self.kvs.push((key.to_owned(), v)),
        }
    }
}

const VOCAB: &[&str] = &["<s>", "</s>", "a", "b", "c", "ab", "bc", "abc"];

/// A valid tiny model of `arch` (two layers, hidden 8, f32 weights), with a byte-level BPE
/// (`gpt2`) or SentencePiece (`llama`) vocabulary.
fn base(arch: &str, spm: bool) -> GgufSpec {
    let k = |s: &str| format!("{arch}.{s}");
    let tokens = Val::Arr(VOCAB.iter().map(|t| Val::Str((*t).into())).collect());
    let mut kvs = vec![
        ("general.architecture".to_owned(), Val::Str(arch.into())),
        (k("block_count"), Val::U32(2)),
        (k("context_length"), Val::U32(64)),
        (k("embedding_length"), Val::U32(8)),
        (k("feed_forward_length"), Val::U32(16)),
        (k("attention.head_count"), Val::U32(2)),
        (k("attention.head_count_kv"), Val::U32(1)),
        (k("rope.freq_base"), Val::F32(10_000.0)),
        (k("attention.layer_norm_rms_epsilon"), Val::F32(1e-6)),
        ("tokenizer.ggml.tokens".into(), tokens),
        ("tokenizer.ggml.bos_token_id".into(), Val::U32(0)),
        ("tokenizer.ggml.eos_token_id".into(), Val::U32(1)),
        (
            "tokenizer.ggml.token_type".into(),
            Val::Arr(
                (0..VOCAB.len())
                    .map(|i| Val::I32(if i < 2 { 3 } else { 1 }))
                    .collect(),
            ),
        ),
    ];
    if spm {
        kvs.push(("tokenizer.ggml.model".into(), Val::Str("llama".into())));
        kvs.push((
            "tokenizer.ggml.scores".into(),
            Val::Arr((0..VOCAB.len()).map(|i| Val::F32(-(i as f32))).collect()),
        ));
    } else {
        kvs.push(("tokenizer.ggml.model".into(), Val::Str("gpt2".into())));
        kvs.push(("tokenizer.ggml.pre".into(), Val::Str("qwen2".into())));
        let merges = ["a b", "b c", "ab c"];
        kvs.push((
            "tokenizer.ggml.merges".into(),
            Val::Arr(merges.iter().map(|m| Val::Str((*m).into())).collect()),
        ));
    }
    if arch == "gemma3" {
        kvs.push((k("attention.sliding_window"), Val::U32(16)));
    }
    let mut tensors = Vec::new();
    let mut offset = 0u64;
    let mut add = |name: String, dims: Vec<u64>| {
        let bytes = dims.iter().product::<u64>() * 4;
        tensors.push(TensorSpec {
            name,
            dims,
            dtype: 0,
            offset,
        });
        offset += bytes.div_ceil(32) * 32;
    };
    add("token_embd.weight".into(), vec![8, VOCAB.len() as u64]);
    add("output_norm.weight".into(), vec![8]);
    for l in 0..2 {
        add(format!("blk.{l}.attn_norm.weight"), vec![8]);
        add(format!("blk.{l}.attn_q.weight"), vec![8, 8]);
        add(format!("blk.{l}.attn_k.weight"), vec![8, 4]);
        add(format!("blk.{l}.ffn_down.weight"), vec![16, 8]);
    }
    GgufSpec {
        version: 3,
        tensor_count: None,
        kv_count: None,
        kvs,
        tensors,
        data: vec![0; offset as usize],
    }
}

fn bases() -> Vec<GgufSpec> {
    vec![
        base("llama", false),
        base("qwen3", false),
        base("gemma3", true),
        base("llama", true),
    ]
}

/// Metadata keys the conversion reads (under each architecture's prefix).
const ARCH_KEYS: &[&str] = &[
    "block_count",
    "context_length",
    "embedding_length",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "vocab_size",
    "rope.freq_base",
    "rope.scaling.type",
    "rope.scaling.factor",
    "rope.scale_linear",
    "rope.scaling.original_context_length",
    "attention.sliding_window",
    "attention.sliding_window_pattern",
    "final_logit_softcapping",
    "attention.layer_norm_rms_epsilon",
];

const GLOBAL_KEYS: &[&str] = &[
    "general.architecture",
    "general.alignment",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_space_prefix",
    "tokenizer.chat_template",
];

const EDGE: &[u64] = &[
    0,
    1,
    2,
    3,
    7,
    8,
    62,
    1 << 20,
    1 << 31,
    1 << 32,
    1 << 40,
    1 << 60,
    1 << 62,
    1 << 63,
    u64::MAX,
];

fn edge() -> impl Strategy<Value = u64> {
    prop_oneof![proptest::sample::select(EDGE.to_vec()), 0u64..64]
}

fn val() -> impl Strategy<Value = Val> {
    let text = prop_oneof![
        proptest::sample::select(vec![
            "llama",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma3",
            "mistral",
            "gpt2",
            "none",
            "linear",
            "yarn",
            "smollm",
            "qwen2",
            "llama-bpe",
            "gpt-2",
            "a b",
            "ab",
            "{{ x }}",
            "",
        ])
        .prop_map(str::to_owned),
        "[ -~]{0,12}",
    ];
    let leaf = prop_oneof![
        edge().prop_map(|v| Val::U32(v as u32)),
        any::<i32>().prop_map(Val::I32),
        edge().prop_map(Val::U64),
        any::<i64>().prop_map(Val::I64),
        prop_oneof![Just(f32::NAN), Just(f32::INFINITY), Just(0.0), -1e9f32..1e9]
            .prop_map(Val::F32),
        prop_oneof![Just(0u8), Just(1), Just(2), Just(255)].prop_map(Val::Bool),
        text.prop_map(Val::Str),
        edge().prop_map(Val::StrClaim),
        (0u32..14, edge()).prop_map(|(t, n)| Val::ArrClaim(t, n)),
    ];
    leaf.prop_recursive(2, 32, 12, |inner| {
        proptest::collection::vec(inner, 0..12).prop_map(Val::Arr)
    })
}

/// One lie or slip in a GGUF file.
#[derive(Clone, Debug)]
enum GgufEdit {
    SetArchKey(Index, Val),
    SetGlobalKey(Index, Val),
    RemoveKv(Index),
    Counts(Option<u64>, Option<u64>),
    Version(u32),
    Dims(Index, Vec<u64>),
    Dtype(Index, u32),
    Offset(Index, u64),
    TensorName(Index, String),
    Data(Index),
}

fn gguf_edit() -> impl Strategy<Value = GgufEdit> {
    let tensor_name = prop_oneof![
        proptest::sample::select(vec![
            "output.weight",
            "rope_freqs.weight",
            "blk.0.attn_v.bias",
            "blk.99999999999999999999.attn_q.weight",
            "blk.1.post_ffw_norm.weight",
            "blk.0.attn_q_norm.weight",
            "blk..weight",
            "blk.0.unknown.weight",
        ])
        .prop_map(str::to_owned),
        "[a-z._0-9]{0,24}",
    ];
    prop_oneof![
        3 => (any::<Index>(), val()).prop_map(|(i, v)| GgufEdit::SetArchKey(i, v)),
        3 => (any::<Index>(), val()).prop_map(|(i, v)| GgufEdit::SetGlobalKey(i, v)),
        1 => any::<Index>().prop_map(GgufEdit::RemoveKv),
        1 => (proptest::option::of(edge()), proptest::option::of(edge()))
            .prop_map(|(t, k)| GgufEdit::Counts(t, k)),
        1 => prop_oneof![Just(1u32), Just(2), Just(3), Just(4), Just(0)].prop_map(GgufEdit::Version),
        2 => (any::<Index>(), proptest::collection::vec(edge(), 0..6))
            .prop_map(|(i, d)| GgufEdit::Dims(i, d)),
        2 => (any::<Index>(), prop_oneof![0u32..16, Just(30), Just(99)])
            .prop_map(|(i, t)| GgufEdit::Dtype(i, t)),
        1 => (any::<Index>(), edge()).prop_map(|(i, o)| GgufEdit::Offset(i, o)),
        1 => (any::<Index>(), tensor_name).prop_map(|(i, n)| GgufEdit::TensorName(i, n)),
        1 => any::<Index>().prop_map(GgufEdit::Data),
    ]
}

fn apply_gguf(mut spec: GgufSpec, edits: &[GgufEdit]) -> GgufSpec {
    let arch = match spec.kvs.first() {
        Some((_, Val::Str(a))) => a.clone(),
        _ => "llama".into(),
    };
    for e in edits {
        match e {
            GgufEdit::SetArchKey(i, v) => {
                spec.set(&format!("{arch}.{}", i.get(ARCH_KEYS)), v.clone())
            }
            GgufEdit::SetGlobalKey(i, v) => {
                let key: &&str = i.get(GLOBAL_KEYS);
                spec.set(key, v.clone());
            }
            GgufEdit::RemoveKv(i) if !spec.kvs.is_empty() => {
                let at = i.index(spec.kvs.len());
                spec.kvs.remove(at);
            }
            GgufEdit::Counts(t, k) => {
                spec.tensor_count = *t;
                spec.kv_count = *k;
            }
            GgufEdit::Version(v) => spec.version = *v,
            GgufEdit::Dims(i, d) if !spec.tensors.is_empty() => {
                i.get_mut(&mut spec.tensors).dims = d.clone();
            }
            GgufEdit::Dtype(i, t) if !spec.tensors.is_empty() => {
                i.get_mut(&mut spec.tensors).dtype = *t;
            }
            GgufEdit::Offset(i, o) if !spec.tensors.is_empty() => {
                i.get_mut(&mut spec.tensors).offset = *o;
            }
            GgufEdit::TensorName(i, n) if !spec.tensors.is_empty() => {
                i.get_mut(&mut spec.tensors).name = n.clone();
            }
            GgufEdit::Data(i) => {
                let at = i.index(spec.data.len() + 1);
                spec.data.truncate(at);
            }
            _ => {}
        }
    }
    spec
}

fn gguf_specs() -> impl Strategy<Value = Bytes> {
    (any::<Index>(), proptest::collection::vec(gguf_edit(), 0..6)).prop_map(|(b, edits)| {
        let spec = apply_gguf(b.get(&bases()).clone(), &edits);
        Bytes(spec.bytes())
    })
}

/// Everything the conversion reads from a GGUF file, minus writing the directory.
fn check_gguf(b: &Bytes) -> Result<(), TestCaseError> {
    let file = as_file(&b.0);
    let Ok(g) = GgufFile::open(file.path()) else {
        return Ok(());
    };
    let _ = g.hf_config();
    let _ = g.hf_tokenizer_config();
    let _ = g.hf_tokenizer();
    if let Ok(tensors) = g.hf_tensors(&Device::Cpu) {
        for (name, t) in &tensors {
            prop_assert!(
                name.starts_with("model.") || name == "lm_head.weight",
                "{name}"
            );
            prop_assert!(t.elem_count() <= 64 * b.0.len(), "{name}: {:?}", t.shape());
        }
    }
    Ok(())
}

const GGUF_TOKENS: &[&str] = &[
    "GGUF",
    "general.architecture",
    "llama",
    "gemma3",
    "tokenizer.ggml.tokens",
];

/// The committed GGUF seeds are the builder's bases, so the corpus cannot go stale.
#[test]
fn gguf_seed_corpus_is_the_builder_output() {
    let dir = harness::fuzz_dir().join("corpus/gguf");
    let names = [
        "llama_bpe.gguf",
        "qwen3_bpe.gguf",
        "gemma3_spm.gguf",
        "llama_spm.gguf",
    ];
    let seeds = names.iter().copied().zip(bases());
    let regressions = gguf_regressions().into_iter().map(|(n, s, _)| (n, s));
    for (i, (name, spec)) in seeds.chain(regressions).enumerate() {
        let path = dir.join(name);
        if std::env::var_os("LLAMADUO_FUZZ_WRITE_SEEDS").is_some() {
            std::fs::write(&path, spec.bytes()).expect("write seed");
        }
        let committed =
            std::fs::read(&path).expect("committed seed (LLAMADUO_FUZZ_WRITE_SEEDS=1 writes it)");
        assert_eq!(
            committed,
            spec.bytes(),
            "{name} differs from its builder: rewrite the seeds"
        );
        if i < names.len() {
            // Each seed is a model the conversion reads whole.
            let g = GgufFile::open(&path).expect("seed opens");
            g.hf_config().expect("config");
            g.hf_tokenizer().expect("tokenizer");
            g.hf_tensors(&Device::Cpu).expect("tensors");
        }
    }
}

/// Found by `fuzz_gguf`: each of these crashed or asked for what the file never held, and is
/// refused now with this reason. They are in the corpus too (`regress_*.gguf`).
fn gguf_regressions() -> Vec<(&'static str, GgufSpec, &'static str)> {
    // Dimensions whose product overflows: a multiply overflow inside candle (debug), a
    // wrapped size read from the wrong place (release).
    let mut overflow = base("llama", false);
    overflow.tensors[0].dims = vec![1 << 32, 1 << 32, 2];
    // An empty tensor: candle views its empty buffer as f32, undefined behaviour.
    let mut empty = base("llama", false);
    empty.tensors[1].dims = vec![0];
    // Bytes past the end of the file.
    let mut past_end = base("llama", false);
    past_end.tensors[2].offset = 1 << 40;
    // A Gemma 3 layer count of 2^40: vec![false; 2^40] for the attention kinds.
    let mut layers = base("gemma3", true);
    layers.set("gemma3.block_count", Val::U64(1 << 40));
    // general.alignment 0: candle's reader divides the data offset by it.
    let mut alignment = base("qwen3", false);
    alignment.set("general.alignment", Val::U32(0));
    vec![
        (
            "regress_alignment_zero.gguf",
            alignment,
            "general.alignment of 0",
        ),
        ("regress_dims_overflow.gguf", overflow, "overflow 64 bits"),
        ("regress_empty_tensor.gguf", empty, "has no elements"),
        ("regress_tensor_past_end.gguf", past_end, "run past"),
        (
            "regress_gemma3_2p40_layers.gguf",
            layers,
            "more than the file's",
        ),
    ]
}

#[test]
fn gguf_lies_are_refused_with_the_reason() {
    for (name, spec, why) in gguf_regressions() {
        let file = as_file(&spec.bytes());
        let err = match GgufFile::open(file.path()) {
            Err(e) => e.to_string(),
            Ok(g) => g.hf_config().expect_err("refused").to_string(),
        };
        assert!(err.contains(why), "{name}: {err}");
    }
}

#[test]
fn fuzz_gguf() {
    let n = cases(DEFAULT_CASES);
    Target::new("gguf")
        .replay(check_gguf)
        .fuzz("structured lies", n, gguf_specs(), check_gguf)
        .fuzz(
            "mutated corpus",
            n,
            mutated(seeds("gguf"), GGUF_TOKENS),
            check_gguf,
        )
        .fuzz("arbitrary bytes", n / 4, any_bytes(256), check_gguf)
        .report();
}

// ---- safetensors ----

/// One header entry: name, dtype, shape, data_offsets.
type HeaderEntry = (String, String, Vec<u64>, (u64, u64));

/// A safetensors file: the header's tensors and metadata, a length prefix that may lie, data.
#[derive(Clone, Debug)]
struct SafetensorsSpec {
    tensors: Vec<HeaderEntry>,
    metadata: Option<Vec<(String, String)>>,
    header_len: Option<u64>,
    data: usize,
}

impl SafetensorsSpec {
    fn bytes(&self) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        if let Some(m) = &self.metadata {
            let m: serde_json::Map<String, serde_json::Value> = m
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            header.insert("__metadata__".into(), m.into());
        }
        for (name, dtype, shape, (a, b)) in &self.tensors {
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [a, b]}),
            );
        }
        let text = serde_json::Value::Object(header).to_string();
        let mut out = Vec::new();
        out.extend(self.header_len.unwrap_or(text.len() as u64).to_le_bytes());
        out.extend(text.as_bytes());
        out.extend(std::iter::repeat_n(0u8, self.data));
        out
    }
}

/// A valid file of three f32 tensors.
fn safetensors_base() -> SafetensorsSpec {
    SafetensorsSpec {
        tensors: vec![
            (
                "model.embed_tokens.weight".into(),
                "F32".into(),
                vec![4, 2],
                (0, 32),
            ),
            ("model.norm.weight".into(), "F32".into(), vec![2], (32, 40)),
            ("lm_head.weight".into(), "BF16".into(), vec![4, 2], (40, 56)),
        ],
        metadata: Some(vec![("format".into(), "pt".into())]),
        header_len: None,
        data: 56,
    }
}

fn safetensors_specs() -> impl Strategy<Value = Bytes> {
    let dtype = proptest::sample::select(vec![
        "F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "F4", "XX", "",
    ])
    .prop_map(str::to_owned);
    let tensor = (
        prop_oneof![
            Just("model.norm.weight".to_owned()),
            Just("__metadata__".to_owned()),
            "[a-z._]{0,12}"
        ],
        dtype,
        proptest::collection::vec(edge(), 0..5),
        (edge(), edge()),
    );
    let edits = (
        proptest::collection::vec((any::<Index>(), tensor), 0..4),
        proptest::option::of(edge()),
        proptest::option::of(prop_oneof![
            edge().prop_map(|d| d as usize % 4096),
            0usize..128
        ]),
        any::<bool>(),
    );
    edits.prop_map(|(replace, header_len, data, drop_meta)| {
        let mut spec = safetensors_base();
        for (i, t) in replace {
            let at = i.index(spec.tensors.len() + 1);
            if at == spec.tensors.len() {
                spec.tensors.push(t);
            } else {
                spec.tensors[at] = t;
            }
        }
        spec.header_len = header_len;
        if let Some(d) = data {
            spec.data = d;
        }
        if drop_meta {
            spec.metadata = None;
        }
        Bytes(spec.bytes())
    })
}

/// Our header check and candle's loader (adapters, checkpoints and evaluation load whole
/// files through it) on the same bytes.
fn check_safetensors(b: &Bytes) -> Result<(), TestCaseError> {
    let file = as_file(&b.0);
    if let Ok(tensors) = read_safetensors_header(file.path()) {
        prop_assert!(tensors.len() * 16 <= b.0.len(), "{} tensors", tensors.len());
    }
    let _ = candle_core::safetensors::load_buffer(&b.0, &Device::Cpu);
    Ok(())
}

const SAFETENSORS_TOKENS: &[&str] = &[
    "\"dtype\"",
    "\"shape\"",
    "\"data_offsets\"",
    "\"F32\"",
    "\"__metadata__\"",
];

/// Found by `fuzz_safetensors`: a data_offsets end near u64::MAX overflowed the expected file
/// length (a panic in debug; in release it wrapped round and could match the real length).
fn safetensors_offsets_past_u64() -> SafetensorsSpec {
    let mut spec = safetensors_base();
    spec.tensors[0].3 = (0, u64::MAX);
    spec
}

#[test]
fn safetensors_seed_corpus_is_the_builder_output() {
    let dir = harness::fuzz_dir().join("corpus/safetensors");
    let files = [
        ("three_tensors.safetensors", safetensors_base()),
        (
            "regress_offsets_past_u64.safetensors",
            safetensors_offsets_past_u64(),
        ),
    ];
    for (name, spec) in files {
        let bytes = spec.bytes();
        if std::env::var_os("LLAMADUO_FUZZ_WRITE_SEEDS").is_some() {
            std::fs::write(dir.join(name), &bytes).expect("write seed");
        }
        assert_eq!(
            std::fs::read(dir.join(name)).expect("committed seed"),
            bytes,
            "{name}"
        );
    }
    let file = as_file(&safetensors_base().bytes());
    assert_eq!(
        read_safetensors_header(file.path()).expect("valid").len(),
        3
    );
}

#[test]
fn safetensors_offsets_past_u64_are_refused() {
    let file = as_file(&safetensors_offsets_past_u64().bytes());
    let err = read_safetensors_header(file.path()).expect_err("refused");
    assert!(err.to_string().contains("past any file size"), "{err}");
}

#[test]
fn fuzz_safetensors() {
    let n = cases(DEFAULT_CASES);
    Target::new("safetensors")
        .replay(check_safetensors)
        .fuzz("structured lies", n, safetensors_specs(), check_safetensors)
        .fuzz(
            "mutated corpus",
            n,
            mutated(seeds("safetensors"), SAFETENSORS_TOKENS),
            check_safetensors,
        )
        .fuzz("arbitrary bytes", n / 4, any_bytes(256), check_safetensors)
        .report();
}
