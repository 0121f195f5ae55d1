//! A GGUF's SentencePiece vocabulary (`tokenizer.ggml.model = "llama"`: tokens, scores and
//! token types, with byte-fallback tokens `<0x00>`..`<0xFF>`) as the Hugging Face
//! `tokenizer.json` transformers' converter writes for the same model: a BPE model with byte
//! fallback whose merges are derived from the piece scores (`generate_merges` of
//! `convert_slow_tokenizer.py`), spaces replaced by `▁` (and a `▁` prepended when the model
//! adds a dummy prefix), `<bos>` prepended by the post-processor when the model adds one, and
//! the Replace(▁→space) + ByteFallback + Fuse (+ Strip) decoders. Control and user-defined
//! pieces are added tokens, matched in the raw text.
//!
//! Two things llama.cpp's converter changed in the GGUF are undone: it wrote the score of
//! every added token as -1000 (SentencePiece gives control and user-defined pieces 0, and the
//! merges are ordered by score), and it wrote `▁` in user-defined pieces as a space. Checked
//! against Gemma 3's own tokenizer.json: the same vocabulary and the same 514,906 merges in
//! the same order (tests/gemma3_270m.rs).

use std::collections::HashMap;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::normalizers::prepend::Prepend;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::utils::Sequence as NormalizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// SentencePiece's word-boundary marker, which stands for a space.
pub const SPACE_MARKER: &str = "\u{2581}";

/// llama.cpp token types (SentencePiece piece types).
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

/// What the GGUF says about a SentencePiece vocabulary.
pub struct SpmVocab<'a> {
    /// `tokenizer.ggml.tokens`, in id order.
    pub tokens: &'a [String],
    /// `tokenizer.ggml.scores`.
    pub scores: &'a [f32],
    /// `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte).
    pub types: &'a [i64],
    /// The unknown piece's id.
    pub unk_id: Option<u32>,
    /// The BOS piece's id when encoding prepends it (`tokenizer.ggml.add_bos_token`).
    pub add_bos: Option<u32>,
    /// Whether a `▁` is prepended to the text (`tokenizer.ggml.add_space_prefix`; Llama 2
    /// yes, Gemma 3 no).
    pub add_space_prefix: bool,
    /// Gemma's pre-tokenizer (a split on spaces, as Gemma's tokenizer.json has it; after the
    /// normalizer no space is left, so it changes no result) instead of none.
    pub gemma: bool,
}

/// The pieces as SentencePiece holds them: `▁` restored in user-defined pieces.
pub fn pieces(tokens: &[String], types: &[i64]) -> Vec<String> {
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| match types.get(i) {
            Some(&TYPE_USER_DEFINED) => t.replace(' ', SPACE_MARKER),
            _ => t.clone(),
        })
        .collect()
}

/// The merges of transformers' `generate_merges(vocab, vocab_scores)`: for every piece (in id
/// order), each split into two pieces of the vocabulary, ordered by (left id, right id);
/// then all of them ordered by the piece's score, the left part's length and the right
/// part's length, all descending, ties keeping that order. Lengths count characters.
pub fn merges(pieces: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let ids: HashMap<&str, usize> = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.as_str(), i))
        .collect();
    // (score, left chars, right chars, left id, right id)
    let mut all: Vec<(f32, usize, usize, usize, usize)> = Vec::new();
    let mut local: Vec<(usize, usize, usize, usize)> = Vec::new();
    for (piece, &score) in pieces.iter().zip(scores) {
        // Python compares -0.0 equal to 0.0; total_cmp would not (Gemma 3 scores its first
        // merged piece, "▁t", -0.0 and its whitespace pieces 0.0: one tie, kept in id order).
        let score = if score == 0.0 { 0.0 } else { score };
        local.clear();
        let chars = piece.chars().count();
        for (k, (at, _)) in piece.char_indices().enumerate().skip(1) {
            let (l, r) = piece.split_at(at);
            if let (Some(&li), Some(&ri)) = (ids.get(l), ids.get(r)) {
                local.push((li, ri, k, chars - k));
            }
        }
        local.sort_by_key(|&(li, ri, _, _)| (li, ri));
        all.extend(
            local
                .iter()
                .map(|&(li, ri, ll, rl)| (score, ll, rl, li, ri)),
        );
    }
    // A stable sort, descending: equal keys keep their order, as Python's sort(reverse=True).
    all.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
    all.into_iter()
        .map(|(_, _, _, l, r)| (pieces[l].clone(), pieces[r].clone()))
        .collect()
}

/// Builds the tokenizer (see the module docs).
pub fn tokenizer(v: &SpmVocab) -> Result<Tokenizer, String> {
    if v.scores.len() != v.tokens.len() || v.types.len() != v.tokens.len() {
        return Err(format!(
            "tokenizer.ggml.tokens ({}), .scores ({}) and .token_type ({}) differ in length",
            v.tokens.len(),
            v.scores.len(),
            v.types.len()
        ));
    }
    let pieces = pieces(v.tokens, v.types);
    // llama.cpp wrote -1000 for the added pieces; SentencePiece scores them 0.
    let scores: Vec<f32> = v
        .scores
        .iter()
        .zip(v.types)
        .map(|(&s, &t)| {
            if matches!(t, TYPE_CONTROL | TYPE_USER_DEFINED) {
                0.0
            } else {
                s
            }
        })
        .collect();
    let vocab: tokenizers::models::bpe::Vocab = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.clone(), i as u32))
        .collect();
    if vocab.len() != pieces.len() {
        return Err("tokenizer.ggml.tokens has duplicate tokens".into());
    }
    let merges = merges(&pieces, &scores);
    let mut bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true);
    let unk = v.unk_id.and_then(|i| pieces.get(i as usize));
    if let Some(unk) = unk {
        bpe = bpe.unk_token(unk.clone());
    }
    let bpe = bpe.build().map_err(|e| e.to_string())?;
    let mut tok = Tokenizer::new(bpe);
    let replace = Replace::new(" ", SPACE_MARKER).map_err(|e| e.to_string())?;
    let normalizer: NormalizerWrapper = if v.add_space_prefix {
        NormalizerSequence::new(vec![
            Prepend::new(SPACE_MARKER.to_owned()).into(),
            replace.into(),
        ])
        .into()
    } else {
        replace.into()
    };
    tok.with_normalizer(Some(normalizer))
        .map_err(|e| e.to_string())?;
    if v.gemma {
        tok.with_pre_tokenizer(Some(
            Split::new(
                SplitPattern::String(" ".into()),
                SplitDelimiterBehavior::MergedWithPrevious,
                false,
            )
            .map_err(|e| e.to_string())?,
        ));
    }
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new(SPACE_MARKER, " ")
            .map_err(|e| e.to_string())?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if v.add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tok.with_decoder(Some(DecoderSequence::new(decoders)));
    if let Some(bos) = v.add_bos {
        let text = pieces
            .get(bos as usize)
            .ok_or_else(|| format!("the BOS id {bos} is outside the vocabulary"))?;
        let post = TemplateProcessing::builder()
            .try_single(format!("{text} $A"))
            .and_then(|b| b.try_pair(format!("{text} $A {text}:1 $B:1")))
            .map_err(|e| e.to_string())?
            .special_tokens(vec![(text.clone(), bos)])
            .build()
            .map_err(|e| e.to_string())?;
        tok.with_post_processor(Some(post));
    }
    // Control pieces (and the unknown piece) are special; user-defined ones are not. All are
    // matched in the text as it is (not normalized), as in transformers' converter.
    let added: Vec<AddedToken> = pieces
        .iter()
        .zip(v.types)
        .filter_map(|(p, &t)| match t {
            TYPE_CONTROL | TYPE_UNKNOWN => Some(AddedToken::from(p.clone(), true)),
            TYPE_USER_DEFINED => Some(AddedToken::from(p.clone(), false).normalized(false)),
            _ => None,
        })
        .collect();
    let (special, user): (Vec<AddedToken>, Vec<AddedToken>) =
        added.into_iter().partition(|a| a.special);
    tok.add_special_tokens(special).map_err(|e| e.to_string())?;
    tok.add_tokens(user).map_err(|e| e.to_string())?;
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn merges_follow_scores_then_lengths() {
        // "ab" scores above "abc"; "abc" splits two ways, the longer left part first.
        let pieces = s(&["a", "b", "c", "ab", "bc", "abc"]);
        let scores = [0.0, 0.0, 0.0, -1.0, -3.0, -2.0];
        let m = merges(&pieces, &scores);
        let m: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(m, vec![("a", "b"), ("ab", "c"), ("a", "bc"), ("b", "c")]);
    }

    #[test]
    fn negative_zero_scores_tie_with_zero_as_in_python() {
        // Gemma 3 scores "▁t" -0.0 and the whitespace piece "\t\t" 0.0: Python's sort sees a
        // tie and keeps id order, so "▁t" (the lower id) merges first.
        let pieces = s(&["\u{2581}", "t", "\t", "\u{2581}t", "\t\t"]);
        let scores = [-5.0, -6.0, -7.0, -0.0, 0.0];
        let m = merges(&pieces, &scores);
        assert_eq!(
            m,
            vec![
                ("\u{2581}".to_string(), "t".to_string()),
                ("\t".to_string(), "\t".to_string())
            ]
        );
    }

    #[test]
    fn user_defined_spaces_become_markers_again() {
        let p = pieces(&s(&["  ", "a b", "x y"]), &[4, 4, 1]);
        assert_eq!(p, s(&["\u{2581}\u{2581}", "a\u{2581}b", "x y"]));
    }

    #[test]
    fn encodes_with_byte_fallback_and_decodes_back() {
        let mut tokens = s(&["<pad>", "<eos>", "<bos>", "<unk>"]);
        let mut types = vec![3, 3, 3, 2];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
        }
        for t in ["\u{2581}", "h", "i", "hi", "\u{2581}hi", "\n"] {
            tokens.push(t.into());
            types.push(if t == "\n" { 4 } else { 1 });
        }
        let scores: Vec<f32> = (0..tokens.len()).map(|i| -(i as f32)).collect();
        let tok = tokenizer(&SpmVocab {
            tokens: &tokens,
            scores: &scores,
            types: &types,
            unk_id: Some(3),
            add_bos: Some(2),
            add_space_prefix: false,
            gemma: true,
        })
        .expect("builds");
        let enc = tok.encode("hi hi\né", true).expect("encodes");
        let ids = enc.get_ids();
        let id = |t: &str| tok.token_to_id(t).expect("token");
        // <bos>, "hi", "▁hi", "\n" (an added token), é as its two UTF-8 bytes.
        assert_eq!(
            ids,
            [
                2,
                id("hi"),
                id("\u{2581}hi"),
                id("\n"),
                id("<0xC3>"),
                id("<0xA9>")
            ]
        );
        assert_eq!(tok.decode(ids, true).expect("decodes"), "hi hi\né");
        assert_eq!(
            tok.encode("hi", false).expect("encodes").get_ids(),
            [id("hi")]
        );
    }
}
