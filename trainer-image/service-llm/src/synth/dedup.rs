//! Duplicate detection for synthetic samples: exact duplicates by a hash of the normalized
//! text, near duplicates by MinHash signatures over word shingles, indexed with
//! locality-sensitive hashing (banding) so a lookup touches only likely matches; candidates
//! are confirmed by the estimated Jaccard similarity at the configured threshold.

use std::collections::{HashMap, HashSet};

use sha2::{Digest, Sha256};

/// Permutations per signature.
pub const NUM_PERM: usize = 128;
/// Words per shingle (texts shorter than this are one shingle).
pub const SHINGLE_WORDS: usize = 3;

/// Lower-cased words and single symbols, whitespace collapsed: "What is 2+2?" →
/// `["what", "is", "2", "+", "2", "?"]`.
pub fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        } else {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// The normalized form compared for exact duplicates.
pub fn normalize(text: &str) -> String {
    tokens(text).join(" ")
}

fn exact_key(text: &str) -> [u8; 16] {
    let digest = Sha256::digest(normalize(text).as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// A 64-bit FNV-1a hash (stable across runs and platforms, unlike std's hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// splitmix64's finalizer: a fast bijective mixer, one per permutation seed.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The MinHash signature of a text's shingles.
pub fn signature(text: &str) -> [u32; NUM_PERM] {
    let toks = tokens(text);
    let mut shingles: HashSet<u64> = HashSet::new();
    if toks.len() <= SHINGLE_WORDS {
        shingles.insert(fnv1a(toks.join(" ").as_bytes()));
    } else {
        for w in toks.windows(SHINGLE_WORDS) {
            shingles.insert(fnv1a(w.join(" ").as_bytes()));
        }
    }
    let mut sig = [u32::MAX; NUM_PERM];
    for s in shingles {
        for (i, slot) in sig.iter_mut().enumerate() {
            let h = (mix(s ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) >> 32) as u32;
            if h < *slot {
                *slot = h;
            }
        }
    }
    sig
}

/// Estimated Jaccard similarity of two signatures.
pub fn similarity(a: &[u32; NUM_PERM], b: &[u32; NUM_PERM]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / NUM_PERM as f64
}

/// Bands and rows per band (bands × rows = [`NUM_PERM`]): the most rows per band (fewest
/// candidates to verify) that still make a pair at exactly `threshold` a candidate with
/// probability at least 0.95. Recall comes first because every candidate is verified by its
/// estimated similarity anyway; a false candidate costs only a comparison.
pub fn lsh_params(threshold: f64) -> (usize, usize) {
    let mut rows = NUM_PERM;
    while rows > 1 {
        let bands = NUM_PERM / rows;
        if candidate_probability(threshold, bands, rows) >= 0.95 {
            return (bands, rows);
        }
        rows /= 2;
    }
    (NUM_PERM, 1)
}

/// Probability that a pair of similarity `s` shares at least one band.
pub fn candidate_probability(s: f64, bands: usize, rows: usize) -> f64 {
    1.0 - (1.0 - s.powi(rows as i32)).powi(bands as i32)
}

/// Why a text was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// New.
    Unique,
    /// Same normalized text as an indexed one.
    Exact,
    /// Estimated Jaccard similarity at or above the threshold.
    Near,
}

/// An index of texts for exact and near-duplicate lookups.
#[derive(Debug)]
pub struct DedupIndex {
    threshold: f64,
    bands: usize,
    rows: usize,
    exact: HashSet<[u8; 16]>,
    signatures: Vec<[u32; NUM_PERM]>,
    buckets: Vec<HashMap<u64, Vec<u32>>>,
}

impl DedupIndex {
    /// An empty index flagging near duplicates at `threshold` (0–1].
    pub fn new(threshold: f64) -> Self {
        let threshold = threshold.clamp(f64::MIN_POSITIVE, 1.0);
        let (bands, rows) = lsh_params(threshold);
        Self {
            threshold,
            bands,
            rows,
            exact: HashSet::new(),
            signatures: Vec::new(),
            buckets: vec![HashMap::new(); bands],
        }
    }

    /// Texts indexed.
    pub fn len(&self) -> usize {
        self.signatures.len()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.signatures.is_empty()
    }

    fn band_key(&self, sig: &[u32; NUM_PERM], band: usize) -> u64 {
        let slice = &sig[band * self.rows..(band + 1) * self.rows];
        let mut h: u64 = 0x243f_6a88_85a3_08d3;
        for v in slice {
            h = mix(h ^ u64::from(*v));
        }
        h
    }

    /// How `text` compares with the indexed texts.
    pub fn check(&self, text: &str) -> Verdict {
        if self.exact.contains(&exact_key(text)) {
            return Verdict::Exact;
        }
        self.check_signature(&signature(text))
    }

    fn check_signature(&self, sig: &[u32; NUM_PERM]) -> Verdict {
        let mut seen = HashSet::new();
        for band in 0..self.bands {
            if let Some(ids) = self.buckets[band].get(&self.band_key(sig, band)) {
                for &id in ids {
                    if seen.insert(id)
                        && similarity(sig, &self.signatures[id as usize]) >= self.threshold
                    {
                        return Verdict::Near;
                    }
                }
            }
        }
        Verdict::Unique
    }

    /// Adds a text unconditionally.
    pub fn insert(&mut self, text: &str) {
        self.insert_signature(exact_key(text), signature(text));
    }

    fn insert_signature(&mut self, key: [u8; 16], sig: [u32; NUM_PERM]) {
        self.exact.insert(key);
        let id = self.signatures.len() as u32;
        for band in 0..self.bands {
            let k = self.band_key(&sig, band);
            self.buckets[band].entry(k).or_default().push(id);
        }
        self.signatures.push(sig);
    }

    /// Adds `text` if it is new; returns the verdict either way.
    pub fn check_and_insert(&mut self, text: &str) -> Verdict {
        let key = exact_key(text);
        if self.exact.contains(&key) {
            return Verdict::Exact;
        }
        let sig = signature(text);
        let verdict = self.check_signature(&sig);
        if verdict == Verdict::Unique {
            self.insert_signature(key, sig);
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_normalization() {
        assert_eq!(tokens("What is 2+2?"), ["what", "is", "2", "+", "2", "?"]);
        assert_eq!(normalize("  Hello,\tWORLD "), normalize("hello , world"));
    }

    #[test]
    fn lsh_params_fit_the_threshold() {
        for t in [0.5, 0.7, 0.8, 0.9, 0.95] {
            let (b, r) = lsh_params(t);
            assert_eq!(b * r, NUM_PERM);
            assert!(candidate_probability(t, b, r) >= 0.95, "t={t} b={b} r={r}");
            if t >= 0.7 {
                // Dissimilar pairs rarely become candidates.
                assert!(
                    candidate_probability(t / 4.0, b, r) < 0.1,
                    "t={t} b={b} r={r}"
                );
            }
        }
        assert_eq!(lsh_params(0.9), (16, 8));
    }

    #[test]
    fn estimated_similarity_tracks_jaccard() {
        // 20 shared shingle-words of 22: Jaccard of 3-shingles is 18/22 ≈ 0.82.
        let base: Vec<String> = (0..20).map(|i| format!("w{i}")).collect();
        let a = base.join(" ") + " alpha beta";
        let b = base.join(" ") + " gamma delta";
        let s = similarity(&signature(&a), &signature(&b));
        assert!((0.65..0.95).contains(&s), "{s}");
        assert_eq!(similarity(&signature(&a), &signature(&a)), 1.0);
    }

    #[test]
    fn index_flags_exact_and_near_duplicates() {
        // Jaccard of the two long texts' shingles is 14/17 ≈ 0.82.
        let mut idx = DedupIndex::new(0.7);
        let long = "Summarize the following support ticket about a failed payment on the checkout page in two sentences please";
        assert_eq!(idx.check_and_insert(long), Verdict::Unique);
        assert_eq!(idx.check_and_insert(&long.to_uppercase()), Verdict::Exact);
        let near = long.replace("please", "now please");
        assert_eq!(idx.check_and_insert(&near), Verdict::Near);
        assert_eq!(idx.check_and_insert("What is 23 + 58?"), Verdict::Unique);
        assert_eq!(idx.check_and_insert("What is 23 + 59?"), Verdict::Unique);
        assert_eq!(idx.check("what is 23+58 ?"), Verdict::Exact);
        assert_eq!(idx.len(), 3);
    }
}
