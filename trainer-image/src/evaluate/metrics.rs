//! Offline metrics that need no service LLM: normalized exact match, ROUGE-L F1 over word
//! tokens, and the cosine similarity of two embeddings. Each returns a score on the judge's
//! 0–100 scale so every metric aggregates the same way.

/// Lower-cases, collapses runs of whitespace to one space, and trims punctuation and
/// whitespace from both ends ("  The answer: 42. " and "the answer: 42" are equal).
pub fn normalize(text: &str) -> String {
    let collapsed = text
        .split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ");
    collapsed
        .trim_matches(|c: char| c.is_ascii_punctuation() || c.is_whitespace())
        .to_string()
}

/// 100 when the normalized texts are equal, else 0.
pub fn exact_match(candidate: &str, reference: &str) -> f64 {
    if normalize(candidate) == normalize(reference) {
        100.0
    } else {
        0.0
    }
}

/// Word tokens for ROUGE: lower-cased runs of letters and digits (punctuation splits words and
/// is dropped), as rouge-score's default tokenizer does.
pub fn rouge_tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Length of the longest common subsequence of two token lists (O(n·m) time, O(m) memory).
pub fn lcs_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// ROUGE-L F1 of `candidate` against `reference`, times 100. Two empty texts score 100; one
/// empty text scores 0.
pub fn rouge_l(candidate: &str, reference: &str) -> f64 {
    let c = rouge_tokens(candidate);
    let r = rouge_tokens(reference);
    if c.is_empty() && r.is_empty() {
        return 100.0;
    }
    if c.is_empty() || r.is_empty() {
        return 0.0;
    }
    let lcs = lcs_len(&c, &r) as f64;
    if lcs == 0.0 {
        return 0.0;
    }
    let precision = lcs / c.len() as f64;
    let recall = lcs / r.len() as f64;
    100.0 * 2.0 * precision * recall / (precision + recall)
}

/// Cosine similarity of two vectors, times 100, clamped to 0–100 (an answer pointing away
/// from the reference is as bad as an unrelated one). Zero vectors score 0.
pub fn cosine_score(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 || a.len() != b.len() {
        return 0.0;
    }
    (100.0 * dot / (na * nb)).clamp(0.0, 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_folds_case_space_and_edge_punctuation() {
        assert_eq!(normalize("  The  Answer:\n42. "), "the answer: 42");
        assert_eq!(normalize("\"Paris!\""), "paris");
        assert_eq!(normalize("..."), "");
        // Inner punctuation is kept: 4.5 is not 45.
        assert_eq!(normalize("4.5"), "4.5");
    }

    #[test]
    fn exact_match_uses_the_normalization() {
        assert_eq!(exact_match("Paris.", " paris"), 100.0);
        assert_eq!(exact_match("4.5", "45"), 0.0);
        assert_eq!(exact_match("", "  "), 100.0);
    }

    #[test]
    fn lcs_of_hand_examples() {
        let a: Vec<char> = "ABCBDAB".chars().collect();
        let b: Vec<char> = "BDCABA".chars().collect();
        assert_eq!(lcs_len(&a, &b), 4); // BCBA
        assert_eq!(lcs_len::<char>(&[], &b), 0);
    }

    #[test]
    fn rouge_l_hand_computed() {
        // candidate: the cat sat on the mat (6), reference: the cat is on the mat (6)
        // LCS = the cat on the mat = 5; P = R = 5/6; F1 = 5/6.
        let f = rouge_l("The cat sat on the mat.", "the cat is on the mat");
        assert!((f - 500.0 / 6.0).abs() < 1e-9, "{f}");
        // candidate: a b (2), reference: a x b y (4): LCS 2, P = 1, R = 0.5, F1 = 2/3.
        let f = rouge_l("a b", "a x b y");
        assert!((f - 200.0 / 3.0).abs() < 1e-9, "{f}");
        assert_eq!(rouge_l("x", "y"), 0.0);
        assert_eq!(rouge_l("", "y"), 0.0);
        assert_eq!(rouge_l("", ""), 100.0);
        assert_eq!(rouge_l("Same words", "same, WORDS!"), 100.0);
    }

    #[test]
    fn cosine_hand_computed() {
        assert!((cosine_score(&[1.0, 0.0], &[1.0, 1.0]) - 100.0 / 2f64.sqrt()).abs() < 1e-4);
        assert_eq!(cosine_score(&[1.0, 2.0], &[2.0, 4.0]).round(), 100.0);
        assert_eq!(cosine_score(&[1.0, 0.0], &[-1.0, 0.0]), 0.0);
        assert_eq!(cosine_score(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert_eq!(cosine_score(&[1.0], &[1.0, 0.0]), 0.0);
    }
}
