//! Fuzzing the store's readers of untrusted input (docs/fuzzing.md): JSONL files (coverage
//! data a user uploads, rows a teacher wrote) and the URLs a manifest names. Each target
//! replays its corpus (fuzz/corpus/<target>/), mutates it structure-aware, and throws
//! generated and arbitrary input at the parser: none may panic, hang or allocate out of
//! proportion; what the writer writes reads back; a redacted URL keeps no secret.
//!
//! `LLAMADUO_FUZZ_CASES=100000 cargo test --release -p llamaduo-store --test fuzz_parsers --
//! --nocapture` runs longer.

#[path = "../../../fuzz/harness.rs"]
mod harness;

use harness::{Bytes, DEFAULT_CASES, Target, any_bytes, cases, mutated, seeds};
use llamaduo::api::{DatasetRow, Message, Role};
use llamaduo_store::{
    HfRef, Store, StoreError, TailPolicy, parse_jsonl, parse_jsonl_within, redact_url, to_jsonl,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const JSONL_TOKENS: &[&str] = &[
    "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":\"a\"}]}\n",
    "\"messages\"",
    "\"role\"",
    "\"content\"",
    "\"assistant\"",
    "\"user\"",
    "\r",
    "\n\n",
    "\t",
];

/// Lines a JSONL reader sees: split on `\n`, a trailing `\r` dropped.
fn lines(data: &[u8]) -> Vec<&[u8]> {
    data.split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect()
}

/// Every reading of the same bytes agrees: rows are the non-blank lines in order, an error
/// names a real line, a line over the limit is refused before it is parsed.
fn check_jsonl(b: &Bytes) -> Result<(), TestCaseError> {
    let data = &b.0;
    let all = lines(data);
    let non_blank = all
        .iter()
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .count();
    let longest = all.iter().map(|l| l.len()).max().unwrap_or(0);
    for policy in [TailPolicy::Strict, TailPolicy::ReportTruncatedTail] {
        match parse_jsonl::<serde_json::Value>(data, "u", policy) {
            Ok(rows) => {
                let tail = usize::from(rows.truncated_tail.is_some());
                prop_assert_eq!(rows.rows.len() + tail, non_blank);
                prop_assert!(policy == TailPolicy::ReportTruncatedTail || tail == 0);
            }
            Err(StoreError::JsonlLine { line, .. }) => {
                prop_assert!(line >= 1 && line <= all.len());
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
        let _ = parse_jsonl::<DatasetRow>(data, "u", policy);
    }
    // A limit below the longest line: refused as too large, or a bad line before it.
    if longest > 0 {
        let limit = (longest - 1) as u64;
        match parse_jsonl_within::<serde_json::Value>(data, "u", TailPolicy::Strict, limit) {
            Err(StoreError::RowTooLarge { bytes, .. }) => prop_assert!(bytes as u64 > limit),
            Err(StoreError::JsonlLine { .. }) => {}
            other => prop_assert!(false, "a line over the limit was read: {other:?}"),
        }
    }
    Ok(())
}

fn row() -> impl Strategy<Value = DatasetRow> {
    let role = prop_oneof![Just(Role::System), Just(Role::User), Just(Role::Assistant)];
    let message = (role, any::<String>()).prop_map(|(role, content)| Message { role, content });
    (
        proptest::collection::vec(message, 0..4),
        proptest::option::of(any::<String>()),
    )
        .prop_map(|(messages, id)| DatasetRow {
            messages,
            id,
            source: None,
            generator: None,
            seed_id: None,
        })
}

#[test]
fn fuzz_jsonl_rows() {
    let n = cases(DEFAULT_CASES);
    Target::new("jsonl_rows")
        .replay(check_jsonl)
        .fuzz(
            "mutated corpus",
            n,
            mutated(seeds("jsonl_rows"), JSONL_TOKENS),
            check_jsonl,
        )
        .fuzz(
            "token soup",
            n,
            harness::token_soup(JSONL_TOKENS, 64),
            check_jsonl,
        )
        .fuzz("arbitrary bytes", n, any_bytes(512), check_jsonl)
        .fuzz(
            "rows round-trip",
            n,
            proptest::collection::vec(row(), 0..8).prop_map(|rows| {
                let bytes = to_jsonl(&rows, "u").expect("writes");
                (Bytes(bytes), rows)
            }),
            |(bytes, rows)| {
                let back = parse_jsonl::<DatasetRow>(&bytes.0, "u", TailPolicy::Strict)
                    .map_err(|e| TestCaseError::fail(format!("own JSONL refused: {e}")))?;
                prop_assert_eq!(&back.rows, rows);
                Ok(())
            },
        )
        .report();
}

const URL_TOKENS: &[&str] = &[
    "s3://",
    "gs://",
    "az://",
    "abfss://",
    "file://",
    "hf://",
    "datasets/",
    "https://",
    "user:pw@",
    "@",
    "?sig=",
    "#",
    "/",
    "..",
    "%2e%2e",
    "%00",
    ":9000",
    "[::1]",
    "localhost",
    "\\",
];

/// Every line a URL: redacted, parsed as a Hugging Face reference, opened as a store (the
/// first 4: building an object store client reads the environment, milliseconds each).
fn check_urls(b: &Bytes) -> Result<(), TestCaseError> {
    for url in b.text().lines().take(4) {
        let shown = redact_url(url);
        if let Ok(r) = HfRef::parse(url) {
            prop_assert_eq!(r.repo_id.matches('/').count(), 1);
            prop_assert!(!r.revision.is_empty());
        }
        let opened = Store::open(url);
        // A password long enough not to occur by chance, and found nowhere else in the URL
        // (a path may repeat it), must show nowhere.
        let password = url::Url::parse(url)
            .ok()
            .and_then(|u| u.password().map(str::to_owned))
            .filter(|p| p.len() >= 8 && url.matches(p.as_str()).count() == 1);
        if let Some(pw) = password {
            prop_assert!(!shown.contains(&pw), "{shown}");
            if let Err(e) = opened {
                let e = e.to_string();
                prop_assert!(!e.contains(&pw), "{e}");
            }
        }
    }
    Ok(())
}

/// Found by `fuzz_store_urls`: object_store's error for an Azure URL it cannot read quoted
/// the bucket URL with its user info, password included.
#[test]
fn store_errors_keep_no_password() {
    let e = Store::open("az://user:SECRETPASSWORD@0/a?sig=SIG").expect_err("refused");
    let e = e.to_string();
    assert!(!e.contains("SECRETPASSWORD") && !e.contains("SIG"), "{e}");
}

#[test]
fn fuzz_store_urls() {
    // Opening a store builds its client: milliseconds an input in debug.
    let n = cases(DEFAULT_CASES) / 4;
    let secret = "[A-Za-z0-9]{12}";
    let url = (
        proptest::sample::select(vec!["s3", "gs", "az", "https", "http", "abfss", "file"]),
        "[a-z0-9.-]{1,12}",
        secret,
        secret,
        "[a-z0-9/._-]{0,24}",
    );
    Target::new("store_urls")
        .replay(check_urls)
        .fuzz(
            "mutated corpus",
            n,
            mutated(seeds("store_urls"), URL_TOKENS),
            check_urls,
        )
        .fuzz(
            "token soup",
            n,
            harness::token_soup(URL_TOKENS, 12),
            check_urls,
        )
        .fuzz(
            "secrets are redacted",
            n,
            url.prop_map(|(scheme, host, password, sig, path)| {
                let url = format!("{scheme}://user:{password}@{host}/{path}?sig={sig}");
                (Bytes(url.into_bytes()), (password, sig))
            }),
            |(url, (password, sig))| {
                let url = url.text();
                let shown = redact_url(&url);
                prop_assert!(!shown.contains(password.as_str()), "{shown}");
                prop_assert!(!shown.contains(sig.as_str()), "{shown}");
                if let Err(e) = Store::open(&url) {
                    let e = e.to_string();
                    prop_assert!(!e.contains(password.as_str()), "{e}");
                    prop_assert!(!e.contains(sig.as_str()), "{e}");
                }
                Ok(())
            },
        )
        .report();
}
