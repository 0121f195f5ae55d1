//! PEFT cross-check: our LoRA files interoperate with Hugging Face PEFT in both directions.
//! (a) transformers + PEFT load our base directory and our adapter and give our logits;
//! (b) an adapter PEFT saved (random non-zero A and B on q_proj/v_proj, rank 4, alpha 8) loads
//!     through `llamaduo_model::peft` with PEFT's logits.
//! Run on a tiny random Llama from our init code and on the real SmolLM2-135M-Instruct.
//!
//! The Python side (tests/python/peft_crosscheck.py) runs in the repository's .venv, which
//! scripts/test.sh fills from requirements-torch.txt and exports LLAMADUO_REQUIRE_PEFT=1 for:
//! there a missing torch fails the test; under plain `cargo test` it skips with a message.

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use common::max_abs_diff;
use llamaduo::api::Architecture;
use llamaduo_model::config::ModelConfig;
use llamaduo_model::lora::LoraConfig;
use llamaduo_model::models::init::random_weights;
use llamaduo_model::models::{CausalLm, LoadOptions, Trainable};
use llamaduo_model::peft;

/// The venv's Python with torch, transformers and peft, or None (after saying why) when it is
/// absent and the caller did not require it.
fn python() -> Option<PathBuf> {
    support::python::venv_python("PEFT cross-check", &["torch", "transformers", "peft"])
}

/// Loads config.json + model.safetensors of a model directory (f32, CPU), as the trainer and
/// the evaluate stage do.
fn load(dir: &Path, trainable: Trainable) -> CausalLm {
    let cfg = ModelConfig::from_file(&dir.join("config.json")).expect("config");
    let tensors = candle_core::safetensors::load(dir.join(peft::MODEL_WEIGHTS), &Device::Cpu)
        .expect("weights");
    let opts = LoadOptions {
        dtype: DType::F32,
        trainable,
        seed: 7,
    };
    CausalLm::from_tensors(&cfg, tensors, &Device::Cpu, &opts).expect("model")
}

fn read_logits(path: &Path) -> Tensor {
    let mut t = candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    t.remove("logits").expect("logits tensor")
}

/// What one cross-check measured: max abs logit diffs both ways, the largest |logit| (the scale
/// the diffs compare to) and the smaller of the two adapters' effects on the logits (what a
/// wrong scale, transpose or target would show up as).
struct Crosscheck {
    ours_in_peft: f32,
    peft_in_ours: f32,
    scale: f32,
    adapter_effect: f32,
}

/// Runs both directions on the model in `base`.
fn crosscheck(py: &Path, base: &Path, rows: &[Vec<u32>]) -> Crosscheck {
    let tmp = tempfile::tempdir().expect("tmp");
    let x = common::ids(rows);

    // (a) our adapter on every target module, with random non-zero A and B.
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: llamaduo_model::lora::TARGET_MODULES
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let ours = load(base, Trainable::Lora(lora.clone()));
    // Seeded adapter values, so a tolerance failure reproduces.
    let mut rng = llamaduo_model::rng::SplitMix::new(7);
    for (_, var) in ours.trainable() {
        let values: Vec<f32> = (0..var.elem_count())
            .map(|_| (rng.normal() * 0.1) as f32)
            .collect();
        let t = Tensor::from_vec(values, var.shape(), var.device()).expect("tensor");
        var.set(&t).expect("set");
    }
    let adapter = tmp.path().join("our_adapter");
    peft::save_adapter(&ours, &lora, &base.display().to_string(), &adapter).expect("saves");
    let our_logits = ours.forward(&x, 0, None).expect("forward");
    let plain = load(base, Trainable::None)
        .forward(&x, 0, None)
        .expect("base forward");
    let our_effect = max_abs_diff(&our_logits, &plain);
    assert!(
        our_effect > 1e-2,
        "the adapter must change the logits, or the check proves nothing"
    );

    let ids_json = tmp.path().join("ids.json");
    std::fs::write(
        &ids_json,
        serde_json::json!({ "input_ids": rows }).to_string(),
    )
    .expect("ids");
    let out = tmp.path().join("out");
    let t0 = Instant::now();
    let run = Command::new(py)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/peft_crosscheck.py"))
        .args([base, &adapter, &ids_json, &out])
        .output()
        .expect("runs python");
    assert!(
        run.status.success(),
        "peft_crosscheck.py failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    eprintln!(
        "{} ({:.1} s)",
        String::from_utf8_lossy(&run.stdout).trim(),
        t0.elapsed().as_secs_f64()
    );
    let a = max_abs_diff(
        &our_logits,
        &read_logits(&out.join("peft_logits_ours_adapter.safetensors")),
    );

    // (b) PEFT's adapter through our reader.
    let theirs_dir = out.join("peft_adapter");
    let cfg = peft::read_adapter_config(&theirs_dir).expect("reads PEFT's adapter_config.json");
    assert_eq!((cfg.rank, cfg.alpha), (4, 8.0));
    let mut targets = cfg.target_modules.clone();
    targets.sort();
    assert_eq!(targets, ["q_proj", "v_proj"]);
    let theirs = load(base, Trainable::Lora(cfg));
    peft::load_adapter_weights(&theirs, &theirs_dir).expect("loads PEFT's adapter");
    let their_logits = theirs.forward(&x, 0, None).expect("forward");
    let their_effect = max_abs_diff(&their_logits, &plain);
    assert!(
        their_effect > 1e-2,
        "PEFT's random adapter must change the logits"
    );
    let b = max_abs_diff(
        &their_logits,
        &read_logits(&out.join("peft_logits_peft_adapter.safetensors")),
    );
    let scale = our_logits
        .abs()
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.max(0))
        .and_then(|t| t.to_scalar::<f32>())
        .expect("scale");
    Crosscheck {
        ours_in_peft: a,
        peft_in_ours: b,
        scale,
        adapter_effect: our_effect.min(their_effect),
    }
}

#[test]
fn tiny_llama_lora_matches_peft_both_ways() {
    let Some(py) = python() else { return };
    let t0 = Instant::now();
    // GQA (4 heads, 2 KV heads) and an untied lm_head, random weights from our init code.
    let mut cfg = ModelConfig::new(Architecture::Llama, 96, 64, 2, 4, 2, 176, 128);
    cfg.tie_word_embeddings = Some(false);
    let base = CausalLm::from_tensors(
        &cfg,
        random_weights(&cfg, 11, &Device::Cpu).expect("weights"),
        &Device::Cpu,
        &LoadOptions::inference(DType::F32),
    )
    .expect("model");
    let tmp = tempfile::tempdir().expect("tmp");
    peft::save_full(&base, tmp.path(), false).expect("writes the base directory");
    let rows = vec![
        vec![1, 17, 42, 5, 88, 23, 9, 60, 3, 71],
        vec![4, 4, 95, 0, 12, 33, 57, 2, 81, 40],
    ];
    let Crosscheck {
        ours_in_peft: a,
        peft_in_ours: b,
        ..
    } = crosscheck(&py, tmp.path(), &rows);
    eprintln!(
        "tiny Llama: max |logit diff| ours->PEFT {a:.2e}, PEFT->ours {b:.2e} ({:.1} s)",
        t0.elapsed().as_secs_f64()
    );
    assert!(a < 1e-4, "PEFT's logits with our adapter differ by {a}");
    assert!(b < 1e-4, "our logits with PEFT's adapter differ by {b}");
}

#[test]
fn smollm2_lora_matches_peft_both_ways() {
    let Some(py) = python() else { return };
    let t0 = Instant::now();
    let dir = support::smollm2_hf_dir();
    // "<|im_start|>user\nWhat is the capital of France?" and a second, shorter row.
    let rows = vec![
        vec![1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47],
        vec![1, 9690, 198, 19556, 28, 2115, 253, 2, 198, 1],
    ];
    let Crosscheck {
        ours_in_peft: a,
        peft_in_ours: b,
        scale,
        adapter_effect,
    } = crosscheck(&py, &dir, &rows);
    eprintln!(
        "SmolLM2-135M: max |logit diff| ours->PEFT {a:.2e}, PEFT->ours {b:.2e}, max |logit| \
         {scale:.1}, smaller adapter effect {adapter_effect:.2} ({:.1} s)",
        t0.elapsed().as_secs_f64()
    );
    // 30 layers in f32: summation order alone moves the last bits, in proportion to the logits
    // (which a random adapter on every module inflates). BLAS kernels differ by CPU: 1.1e-5
    // relative was measured on CI's machine (3.6e-4 at max |logit| 32), ~3e-6 on others, so the
    // bound is 5e-5 relative (~400 f32 ulps). A wrong scale, transpose or target moves logits by
    // the adapter's whole effect, which is asserted to be over 1e3 times this bound (15.9 vs
    // 1.6e-3 measured).
    let tol = 5e-5 * scale.max(10.0);
    assert!(
        adapter_effect > 1e3 * tol,
        "the adapters move the logits by only {adapter_effect}: the bound {tol} would not tell a wrong adapter from a right one"
    );
    assert!(
        a < tol,
        "PEFT's logits with our adapter differ by {a} (> {tol})"
    );
    assert!(
        b < tol,
        "our logits with PEFT's adapter differ by {b} (> {tol})"
    );
}
