//! The fuzz harness every crate's `tests/fuzz_parsers.rs` includes with `#[path]`
//! (docs/fuzzing.md): proptest runs each target on stable Rust, and this file adds what
//! proptest alone does not check:
//!
//! - the committed seed corpus (`fuzz/corpus/<target>/`), replayed as is on every run (so each
//!   crash ever found stays a regression test) and mutated structure-aware ([`mutated`]);
//! - time: a watchdog thread aborts the test binary, printing the target and the input, when
//!   one input runs longer than `LLAMADUO_FUZZ_HANG_SECONDS` (a hang would otherwise stall CI
//!   until its own timeout, with no input to reproduce it);
//! - memory: a counting global allocator fails a case whose allocations on the calling thread
//!   peak above [`memory_budget`], and refuses (returning null) any single request over
//!   [`HARD_CAP`], so "a length of 2^63" is reported with its input instead of swapping.
//!
//! `LLAMADUO_FUZZ_CASES` sets the cases per strategy (the default keeps a debug `cargo test`
//! to seconds per target) and `LLAMADUO_FUZZ_SEED` replays a run (each failure prints it).

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};

/// Cases per strategy.
pub const CASES_ENV: &str = "LLAMADUO_FUZZ_CASES";
/// RNG seed of a run (decimal u64); unset, a new one each run.
pub const SEED_ENV: &str = "LLAMADUO_FUZZ_SEED";
/// Seconds one input may run before the watchdog calls it a hang.
pub const HANG_ENV: &str = "LLAMADUO_FUZZ_HANG_SECONDS";
/// Cases per strategy when `LLAMADUO_FUZZ_CASES` is unset.
pub const DEFAULT_CASES: u32 = 200;
/// Generous for a debug build on a loaded CI machine: the parsers take microseconds to
/// milliseconds per input, so only a real hang (or a quadratic blow-up) gets near it.
const DEFAULT_HANG_SECONDS: u64 = 30;
/// The largest single allocation granted while fuzzing: no parser here needs a gigabyte for
/// inputs of kilobytes, so a request this big comes from a length read out of the input.
pub const HARD_CAP: usize = 1 << 30;

/// Cases per strategy: `LLAMADUO_FUZZ_CASES`, else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var(CASES_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The run's seed: `LLAMADUO_FUZZ_SEED`, else one from the clock, so CI explores new inputs
/// on every run while any failure can be replayed.
fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        std::env::var(SEED_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                now.as_nanos() as u64 ^ u64::from(std::process::id())
            })
    })
}

fn hang_limit() -> Duration {
    let secs = std::env::var(HANG_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_HANG_SECONDS);
    Duration::from_secs(secs)
}

/// Whether two floats agree to within a few ulps: serde_json (without its `float_roundtrip`
/// feature) may read a printed float back one ulp off, which is no parser bug.
pub fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

/// Raw input bytes whose `Debug` is the escaped text, so a failing input can be read and
/// pasted into a corpus file or a regression test.
#[derive(Clone, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl Bytes {
    /// The input as text (invalid UTF-8 replaced), for parsers that take `&str`.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(s) => write!(f, "{s:?}"),
            Err(_) => write!(f, "b\"{}\"", self.0.escape_ascii()),
        }
    }
}

// ---- the seed corpus ----

/// `fuzz/` at the workspace root, found upwards from the crate being tested.
pub fn fuzz_dir() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .map(|d| d.join("fuzz"))
        .find(|d| d.join("corpus").is_dir())
        .expect("fuzz/corpus at the workspace root")
}

/// The corpus files of `target`, by name (a missing directory is an empty corpus).
pub fn corpus(target: &str) -> Vec<(String, Bytes)> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut files: Vec<(String, Bytes)> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter(|e| e.path().is_file())
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let bytes = std::fs::read(e.path()).expect("corpus file readable");
                (name, Bytes(bytes))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files
}

/// The corpus inputs alone, for [`mutated`].
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    corpus(target).into_iter().map(|(_, b)| b.0).collect()
}

// ---- strategies ----

/// Tokens every JSON-reading target splices in: structure, edge numbers, escapes.
pub const JSON_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "null",
    "true",
    "false",
    "0",
    "-0",
    "-1",
    "1e400",
    "-1e400",
    "1.5",
    "NaN",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "4294967296",
    "\"\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\\",
    "\n",
    "\r\n",
    " ",
    "```",
    "```json\n",
    "é",
    "\u{feff}",
];

/// Arbitrary bytes, up to `max` long.
pub fn any_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..=max).prop_map(Bytes)
}

/// Arbitrary Unicode text, up to `max` characters.
pub fn any_text(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<char>(), 0..=max)
        .prop_map(|cs| Bytes(cs.into_iter().collect::<String>().into_bytes()))
}

/// Concatenations of up to `max` tokens from `dict` and [`JSON_TOKENS`]: near-JSON that
/// reaches deeper into a JSON reader than random bytes do.
pub fn token_soup(dict: &'static [&'static str], max: usize) -> impl Strategy<Value = Bytes> {
    let all: Vec<&'static str> = dict.iter().chain(JSON_TOKENS).copied().collect();
    proptest::collection::vec(proptest::sample::select(all), 0..=max)
        .prop_map(|ts| Bytes(ts.concat().into_bytes()))
}

/// JSON documents built from `keys` (objects, arrays, edge numbers, strings) up to four
/// levels deep, as text: shaped like what a target reads, with every field wrong in turn.
pub fn json_value(keys: &'static [&'static str]) -> impl Strategy<Value = Bytes> {
    use serde_json::{Value, json};
    let key = proptest::sample::select(keys.to_vec()).prop_map(str::to_owned);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        proptest::sample::select(EDGE_INTS.to_vec()).prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e3f64..1e3).prop_map(|f| json!(f)),
        any::<f64>().prop_map(|f| json!(f)),
        "[ -~]{0,12}".prop_map(Value::String),
        proptest::sample::select(keys.to_vec()).prop_map(|k| Value::String(k.to_owned())),
        proptest::sample::select(vec![
            "85", "85/100", "85%", " 7.5 ", "-1", "1e999", "NaN", "∞"
        ])
        .prop_map(|k| Value::String(k.to_owned())),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
    .prop_map(|v| Bytes(v.to_string().into_bytes()))
}

/// One structure-aware edit of a seed.
#[derive(Clone, Debug)]
pub enum Edit {
    /// Flip one bit.
    Flip(Index, u8),
    /// Set one byte to an edge value (0, 0x7f, 0x80, 0xff, ...).
    Set(Index, u8),
    /// Insert a dictionary token.
    Token(Index, Index),
    /// Delete up to `len` bytes.
    Delete(Index, u8),
    /// Repeat a short slice many times (deep nesting, long strings, big counts).
    Repeat(Index, u8, u16),
    /// Copy a slice of another seed in (crossover).
    Splice(Index, Index, Index, u16),
    /// Cut the input short (a truncated file or download).
    Truncate(Index),
    /// Overwrite 8 bytes with an edge little-endian integer (binary formats' counts and
    /// lengths).
    Int(Index, Index),
    /// Replace one run of digits with an edge number as text (text formats' counts, sizes
    /// and token totals).
    Number(Index, Index),
}

/// Edge numbers for [`Edit::Number`].
const EDGE_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "1e308",
    "1e309",
    "5e-324",
    "0.1",
];

/// Edge integers for [`Edit::Int`].
const EDGE_INTS: &[u64] = &[
    0,
    1,
    2,
    0x7f,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    1 << 60,
    1 << 63,
    u64::MAX - 1,
    u64::MAX,
];

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Edit::Flip(i, b)),
        (
            any::<Index>(),
            proptest::sample::select(vec![0u8, 1, 0x7f, 0x80, 0xfe, 0xff, b'"', b'{', b'\n'])
        )
            .prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, t)| Edit::Token(i, t)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, n)| Edit::Delete(i, n)),
        (any::<Index>(), 1u8..16, 1u16..2048).prop_map(|(i, n, k)| Edit::Repeat(i, n, k)),
        (any::<Index>(), any::<Index>(), any::<Index>(), 1u16..512)
            .prop_map(|(a, s, b, n)| Edit::Splice(a, s, b, n)),
        any::<Index>().prop_map(Edit::Truncate),
        (any::<Index>(), any::<Index>()).prop_map(|(i, v)| Edit::Int(i, v)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, v)| Edit::Number(i, v)),
    ]
}

/// Applies `edits` to `seed`; `dict` holds the tokens, `seeds` the crossover partners.
pub fn apply(seed: &[u8], edits: &[Edit], dict: &[&str], seeds: &[Vec<u8>]) -> Vec<u8> {
    // Inputs stay below 64 KiB, the size of the longest reply a teacher writes: big enough
    // for any length bug, small enough for a debug build to get through hundreds of them.
    const MAX_LEN: usize = 64 << 10;
    let mut out = seed.to_vec();
    for e in edits {
        let at = |i: &Index, len: usize| i.index(len + 1);
        match e {
            Edit::Flip(i, bit) if !out.is_empty() => {
                let p = i.index(out.len());
                out[p] ^= 1 << bit;
            }
            Edit::Set(i, b) if !out.is_empty() => {
                let p = i.index(out.len());
                out[p] = *b;
            }
            Edit::Token(i, t) if !dict.is_empty() => {
                let p = at(i, out.len());
                let tok = t.get(dict).as_bytes();
                out.splice(p..p, tok.iter().copied());
            }
            Edit::Delete(i, n) if !out.is_empty() => {
                let p = i.index(out.len());
                let end = (p + usize::from(*n)).min(out.len());
                out.drain(p..end);
            }
            Edit::Repeat(i, n, k) if !out.is_empty() => {
                let p = i.index(out.len());
                let end = (p + usize::from(*n)).min(out.len());
                let chunk = out[p..end].to_vec();
                let times = usize::from(*k).min(MAX_LEN.saturating_sub(out.len()) / chunk.len());
                let extra: Vec<u8> = chunk
                    .iter()
                    .copied()
                    .cycle()
                    .take(chunk.len() * times)
                    .collect();
                out.splice(end..end, extra);
            }
            Edit::Splice(a, s, b, n) if !seeds.is_empty() => {
                let other = s.get(seeds);
                if !other.is_empty() {
                    let from = b.index(other.len());
                    let end = (from + usize::from(*n)).min(other.len());
                    let p = at(a, out.len());
                    out.splice(p..p, other[from..end].iter().copied());
                }
            }
            Edit::Truncate(i) => {
                let p = at(i, out.len());
                out.truncate(p);
            }
            Edit::Int(i, v) if out.len() >= 8 => {
                let p = i.index(out.len() - 7);
                out[p..p + 8].copy_from_slice(&v.get(EDGE_INTS).to_le_bytes());
            }
            Edit::Number(i, v) => {
                let runs = digit_runs(&out);
                if !runs.is_empty() {
                    let (start, end) = *i.get(&runs);
                    out.splice(start..end, v.get(EDGE_NUMBERS).bytes());
                }
            }
            _ => {}
        }
        out.truncate(MAX_LEN);
    }
    out
}

/// Where the runs of ASCII digits are, as `(start, end)`.
fn digit_runs(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start = None;
    for (i, b) in bytes.iter().enumerate() {
        match (b.is_ascii_digit(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                runs.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        runs.push((s, bytes.len()));
    }
    runs
}

/// Seeds of the corpus with up to 8 [`Edit`]s each (proptest shrinks the edit list, so a
/// failure is reported as the smallest edit of a real example that still fails).
pub fn mutated(seeds: Vec<Vec<u8>>, dict: &'static [&'static str]) -> impl Strategy<Value = Bytes> {
    assert!(!seeds.is_empty(), "a mutated strategy needs a seed corpus");
    let tokens: Vec<&'static str> = dict.iter().chain(JSON_TOKENS).copied().collect();
    let seeds = Arc::new(seeds);
    (any::<Index>(), proptest::collection::vec(edit(), 0..8)).prop_map(move |(s, edits)| {
        let seed: &Vec<u8> = s.get(&seeds[..]);
        Bytes(apply(seed, &edits, &tokens, &seeds))
    })
}

// ---- time and memory ----

thread_local! {
    // Bytes allocated minus freed by this thread, and the most since the case began. Const
    // initialized without destructors, so the allocator can touch them without allocating.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static REFUSED: Cell<usize> = const { Cell::new(0) };
    // The current input's Debug text, for the report of a refused allocation.
    static INPUT: Cell<(*const u8, usize)> = const { Cell::new((std::ptr::null(), 0)) };
}

/// Counts each thread's live bytes and refuses single requests over [`HARD_CAP`].
pub struct CountingAlloc;

fn note(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn refuse(size: usize) {
    let _ = REFUSED.try_with(|r| r.set(r.get().max(size)));
    // Written straight to fd 2 (no formatting, no allocation): the caller most likely aborts
    // on the null, and this is the only trace of the input that caused it.
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(b"\nfuzz: refused an allocation over the 1 GiB cap; input: ");
    let _ = INPUT.try_with(|i| {
        let (ptr, len) = i.get();
        if !ptr.is_null() {
            // SAFETY: `guarded` keeps the string alive while INPUT points at it.
            let _ = err.write_all(unsafe { std::slice::from_raw_parts(ptr, len) });
        }
    });
    let _ = err.write_all(b"\n");
}

// SAFETY: every call is forwarded to `System`; the bookkeeping touches only thread-locals.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > HARD_CAP {
            refuse(layout.size());
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > HARD_CAP {
            refuse(layout.size());
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > HARD_CAP {
            refuse(new_size);
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// What one input may allocate at its peak: 64 MiB plus 256 bytes per input byte (a JSON
/// value tree costs tens of bytes per byte of text; anything far above is a length or count
/// taken from the input and allocated up front).
pub fn memory_budget(input_len: usize) -> usize {
    (64 << 20) + 256 * input_len
}

struct Running {
    target: &'static str,
    started: Instant,
    input: Arc<String>,
}

fn running() -> &'static Mutex<HashMap<ThreadId, Running>> {
    static RUNNING: OnceLock<Mutex<HashMap<ThreadId, Running>>> = OnceLock::new();
    static WATCHDOG: OnceLock<()> = OnceLock::new();
    let map = RUNNING.get_or_init(|| Mutex::new(HashMap::new()));
    WATCHDOG.get_or_init(|| {
        std::thread::spawn(watchdog);
    });
    map
}

/// Aborts the test binary when an input runs past the hang limit: a hang in a parser is
/// the bug, and the input printed here is the regression test to add.
fn watchdog() {
    let limit = hang_limit();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let Ok(map) = running().lock() else { return };
        if let Some(r) = map.values().find(|r| r.started.elapsed() > limit) {
            // The whole input goes to a file (it may be 64 KiB), its start to the log.
            let file = std::env::temp_dir().join(format!("llamaduo-fuzz-hang-{}.txt", r.target));
            let saved = std::fs::write(&file, r.input.as_bytes()).is_ok();
            let head: String = r.input.chars().take(1000).collect();
            let _ = writeln!(
                std::io::stderr(),
                "\nfuzz target {}: one input ran over {} s (a hang); seed {}; input{}: {head}",
                r.target,
                limit.as_secs(),
                seed(),
                if saved {
                    format!(" (all of it in {})", file.display())
                } else {
                    String::new()
                },
            );
            std::process::abort();
        }
    }
}

/// Per-target figures for the closing line.
#[derive(Default)]
struct Stats {
    cases: u64,
    slowest: Duration,
    slowest_input: String,
    peak: usize,
    peak_input: String,
}

/// Marks the calling thread as running an input until dropped, also when the property
/// panics (proptest catches the panic and goes on shrinking, so the mark must not stay).
struct Watched {
    id: ThreadId,
    _text: Arc<String>,
}

impl Watched {
    fn start(target: &'static str, text: Arc<String>) -> Self {
        let id = std::thread::current().id();
        let entry = Running {
            target,
            started: Instant::now(),
            input: text.clone(),
        };
        running().lock().expect("watchdog map").insert(id, entry);
        let _ = INPUT.try_with(|i| i.set((text.as_ptr(), text.len())));
        Self { id, _text: text }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = INPUT.try_with(|i| i.set((std::ptr::null(), 0)));
        if let Ok(mut map) = running().lock() {
            map.remove(&self.id);
        }
    }
}

/// Runs `property` on `input` under the watchdog and the memory budget.
fn guarded<T: fmt::Debug>(
    target: &'static str,
    input: &T,
    input_len: usize,
    stats: &Mutex<Stats>,
    property: impl FnOnce() -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    let text = Arc::new(format!("{input:?}"));
    let watched = Watched::start(target, text.clone());
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    REFUSED.with(|r| r.set(0));
    let started = Instant::now();
    let result = property();
    let took = started.elapsed();
    let peak = (PEAK.with(Cell::get) - base).max(0) as usize;
    let refused = REFUSED.with(Cell::get);
    drop(watched);
    if let Ok(mut s) = stats.lock() {
        s.cases += 1;
        if took > s.slowest {
            s.slowest = took;
            s.slowest_input = text.chars().take(160).collect();
        }
        if peak > s.peak {
            s.peak = peak;
            s.peak_input = text.chars().take(160).collect();
        }
    }
    result?;
    if refused > 0 {
        return Err(TestCaseError::fail(format!(
            "asked for {refused} bytes at once (over the {HARD_CAP}-byte cap)"
        )));
    }
    let budget = memory_budget(input_len);
    if peak > budget {
        return Err(TestCaseError::fail(format!(
            "allocated {peak} bytes at its peak, over the budget of {budget} for a {input_len}-byte input"
        )));
    }
    Ok(())
}

/// Something with a size in bytes, for the memory budget.
pub trait InputLen {
    /// Bytes of input.
    fn input_len(&self) -> usize;
}

impl InputLen for Bytes {
    fn input_len(&self) -> usize {
        self.0.len()
    }
}

/// An input with what the property expects of it (round-trip targets).
impl<T> InputLen for (Bytes, T) {
    fn input_len(&self) -> usize {
        self.0.0.len()
    }
}

/// One fuzz target: its corpus replayed, then each strategy for [`cases`] cases.
pub struct Target {
    name: &'static str,
    stats: Mutex<Stats>,
    corpus: usize,
    started: Instant,
}

impl Target {
    /// Starts target `name`.
    pub fn new(name: &'static str) -> Self {
        // With RUST_BACKTRACE set, candle captures a backtrace in every error and printing it
        // loads the binary's debug info once (tens of MiB, cached for the process): loaded
        // here, it is not charged to whichever input happens to print the first one.
        static SYMBOLS: OnceLock<()> = OnceLock::new();
        SYMBOLS.get_or_init(|| {
            let _ = std::backtrace::Backtrace::capture().to_string();
        });
        Self {
            name,
            stats: Mutex::new(Stats::default()),
            corpus: 0,
            started: Instant::now(),
        }
    }

    /// Runs `property` on every corpus file of the target, as it is.
    pub fn replay(&mut self, property: impl Fn(&Bytes) -> Result<(), TestCaseError>) -> &mut Self {
        let files = corpus(self.name);
        assert!(
            !files.is_empty(),
            "fuzz/corpus/{} has no seed files",
            self.name
        );
        for (file, input) in &files {
            let r = guarded(self.name, input, input.0.len(), &self.stats, || {
                property(input)
            });
            if let Err(e) = r {
                panic!(
                    "fuzz target {}: corpus file fuzz/corpus/{}/{file} fails: {e}\ninput: {input:?}",
                    self.name, self.name
                );
            }
        }
        self.corpus = files.len();
        self
    }

    /// Runs `property` on `cases` inputs drawn from `strategy`; on failure, panics with the
    /// smallest failing input proptest found and the seed that replays the run.
    pub fn fuzz<S>(
        &mut self,
        label: &str,
        cases: u32,
        strategy: S,
        property: impl Fn(&S::Value) -> Result<(), TestCaseError>,
    ) -> &mut Self
    where
        S: Strategy,
        S::Value: fmt::Debug + InputLen,
    {
        let config = Config {
            cases,
            failure_persistence: None,
            rng_seed: RngSeed::Fixed(seed()),
            max_shrink_iters: 2048,
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        let (name, stats) = (self.name, &self.stats);
        let result = runner.run(&strategy, |input| {
            guarded(name, &input, input.input_len(), stats, || property(&input))
        });
        match result {
            Ok(()) => {}
            Err(TestError::Fail(why, input)) => panic!(
                "fuzz target {name} ({label}): {why}\nminimal input: {input:?}\nreplay with {SEED_ENV}={}",
                seed()
            ),
            Err(TestError::Abort(why)) => panic!("fuzz target {name} ({label}) aborted: {why}"),
        }
        self
    }

    /// Prints what ran (visible with `--nocapture`; docs/fuzzing.md records these lines).
    pub fn report(&self) {
        if let Ok(s) = self.stats.lock() {
            println!(
                "fuzz target {}: {} inputs ({} corpus files) in {:.1?}, slowest {:?}, peak {} KiB, seed {}\n  slowest input: {}\n  peak input: {}",
                self.name,
                s.cases,
                self.corpus,
                self.started.elapsed(),
                s.slowest,
                s.peak / 1024,
                seed(),
                s.slowest_input,
                s.peak_input
            );
        }
    }
}
