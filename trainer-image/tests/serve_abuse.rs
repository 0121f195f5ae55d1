//! `llamaduo-trainer serve` under abusive clients, on the tiny model, with short timeouts:
//! thousands of held half-open connections beyond `--max-connections` do not lock a normal
//! client out; slow heads, silent and idle connections are closed by the server after their
//! timeouts and a withheld body gets 408; a client that disconnects mid-stream frees its batch
//! slot. Bounds are generous "within N seconds" checks, not benchmarks.

mod serve_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use serve_support::{Server, chat_body, get, post, spawn, tiny_model};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request line and one header, the head never finished.
const HALF_HEAD: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n";

/// The most connections the slow client holds at once (fewer where this process's
/// descriptor limit is lower). `SERVE_ABUSE_SLOW` overrides it and `SERVE_ABUSE_CAP` the
/// server's --max-connections (default a quarter of that), for the figures in BENCHMARKS.md.
const MAX_SLOW: usize = 2000;

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn addr(server: &Server) -> String {
    server.root.trim_start_matches("http://").to_owned()
}

/// Raises this process's soft descriptor limit to the hard one; returns how many connections
/// the slow client may hold, leaving room for everything else the test opens.
fn slow_budget() -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let target = hard.min(1 << 16);
    if soft < target {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard).expect("setrlimit");
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    (soft.saturating_sub(300) as usize).min(env_usize("SERVE_ABUSE_SLOW").unwrap_or(MAX_SLOW))
}

/// A metric's value from the /metrics text (0 when absent).
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The server's resident memory in KiB (for the printed figures).
fn rss_kib(server: &Server) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", server.child.id()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

async fn metrics(server: &Server) -> String {
    let (status, text) = get(server, "/metrics").await;
    assert_eq!(status, 200);
    text
}

/// Whether the server has closed (or reset) the connection: reads without waiting.
fn closed_by_server(s: &TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match s.try_read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Reads until the server closes the connection (EOF or reset); returns what it sent and
/// when it closed, measured from `since`. Panics after `limit`.
async fn read_until_closed(
    s: &mut TcpStream,
    since: Instant,
    limit: Duration,
) -> (String, Duration) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(since.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => panic!(
                "the server kept the connection open for {limit:?}; it sent {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&got).into_owned(), since.elapsed());
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

async fn half_open(addr: &str) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(HALF_HEAD).await?;
    Ok(s)
}

/// A slow-loris client: holds `n` half-open connections, and for as long as `stop` is unset
/// reopens those the server closed, at most `per_sweep` every 100 ms (bounded pressure, so
/// the test stays cheap). Counts every connection it opened.
async fn slow_client(
    addr: String,
    n: usize,
    per_sweep: usize,
    held: tokio::sync::oneshot::Sender<()>,
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicUsize>,
) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(half_open(&addr).await.expect("connects"));
        opened.fetch_add(1, Ordering::Relaxed);
    }
    let _ = held.send(());
    while !stop.load(Ordering::Relaxed) {
        let mut reopened = 0;
        for c in conns.iter_mut() {
            if reopened == per_sweep {
                break;
            }
            if closed_by_server(c) {
                *c = half_open(&addr).await.expect("reconnects");
                opened.fetch_add(1, Ordering::Relaxed);
                reopened += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    conns
}

/// Five chat requests of 8 tokens, each on a new connection; their latencies, sorted. Each must
/// be answered within 10 s.
async fn normal_client(server: &Server) -> Vec<Duration> {
    let mut latencies = Vec::new();
    for i in 0..5 {
        let start = Instant::now();
        let (status, v) = post(
            server,
            "/v1/chat/completions",
            &chat_body(
                &format!("Question {i}: how many apples are in basket {i}?"),
                8,
            ),
        )
        .await;
        let latency = start.elapsed();
        assert_eq!(status, 200, "{v}");
        assert!(
            latency < Duration::from_secs(10),
            "the normal client waited {latency:?}"
        );
        latencies.push(latency);
    }
    latencies.sort();
    latencies
}

#[tokio::test]
async fn held_half_open_connections_beyond_the_cap_do_not_lock_out_a_client() {
    let n = slow_budget();
    assert!(n >= 200, "this process may open only {n} more descriptors");
    let cap = env_usize("SERVE_ABUSE_CAP").unwrap_or(n / 4);
    assert!(cap < n, "the slow client must hold more than the cap");
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tiny_model(&tmp.path().join("tiny"));
    // Long header and idle timeouts: only the cap can make room for the normal client.
    let cap_arg = cap.to_string();
    let mut server = spawn(&[
        "--model",
        dir.to_str().expect("utf8"),
        "--max-connections",
        &cap_arg,
        "--header-timeout-seconds",
        "60",
        "--idle-timeout-seconds",
        "60",
    ])
    .await;
    let quiet = normal_client(&server).await;
    let rss_quiet = rss_kib(&server);
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let slow = tokio::spawn(slow_client(
        addr(&server),
        n,
        100,
        held_tx,
        stop.clone(),
        opened.clone(),
    ));
    let start = Instant::now();
    held_rx
        .await
        .expect("the slow client holds its connections");
    let held_after = start.elapsed();

    // While the slow client holds and reopens its connections, a normal client is answered,
    // each time on a new connection (a fresh client) that has to find a slot.
    let latencies = normal_client(&server).await;
    // The server's own descriptors: connections stay under the cap, whatever the client holds.
    let fds = std::fs::read_dir(format!("/proc/{}/fd", server.child.id()))
        .expect("/proc/PID/fd")
        .count();
    let rss_held = rss_kib(&server);
    assert!(
        fds < cap + 100,
        "the server has {fds} descriptors open with a cap of {cap} connections"
    );
    let text = metrics(&server).await;
    let open = metric(&text, "llamaduo_serve_connections");
    let evicted = metric(
        &text,
        "llamaduo_serve_connections_closed_total{reason=\"evicted\"}",
    );
    assert_eq!(metric(&text, "llamaduo_serve_max_connections"), cap as u64);
    assert!(
        open <= cap as u64,
        "{open} open connections over the cap {cap}"
    );
    assert!(
        evicted >= (n - cap) as u64,
        "{n} held connections, cap {cap}, but only {evicted} evicted"
    );
    assert_eq!(metric(&text, "llamaduo_serve_accept_errors_total"), 0);
    // The slow client stops reopening but keeps what it holds. SIGTERM with those still
    // open: they owe nobody an answer, so shutdown closes them instead of waiting out their
    // header timeout.
    stop.store(true, Ordering::Relaxed);
    let conns = slow.await.expect("the slow client ends");
    let start = Instant::now();
    server.terminate();
    let exit = loop {
        if let Some(exit) = server.child.try_wait().expect("waits") {
            break exit;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "serve did not exit within 10 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit:?}");
    let stopped_after = start.elapsed();
    eprintln!(
        "slow client: {n} held at once ({} opened in all, all {n} open after {held_after:?}); server cap {cap}, {open} open, {fds} descriptors, RSS {rss_quiet} -> {rss_held} KiB, {evicted} evicted; normal client (5 requests of 8 tokens, each on a new connection): median {:?}, max {:?} (without the slow client: median {:?}, max {:?}); SIGTERM to exit 0: {stopped_after:?}",
        opened.load(Ordering::Relaxed),
        latencies[2],
        latencies[4],
        quiet[2],
        quiet[4]
    );
    drop(conns);
}

#[tokio::test]
async fn timeouts_close_slow_heads_silent_and_idle_connections_and_withheld_bodies() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tiny_model(&tmp.path().join("tiny"));
    let server = spawn(&[
        "--model",
        dir.to_str().expect("utf8"),
        "--header-timeout-seconds",
        "1",
        "--idle-timeout-seconds",
        "2",
        "--body-timeout-seconds",
        "1",
    ])
    .await;
    let a = addr(&server);
    let limit = Duration::from_secs(8);
    let slow_head = async {
        let mut s = half_open(&a).await.expect("connects");
        let since = Instant::now();
        read_until_closed(&mut s, since, limit).await
    };
    // The classic slow loris: a header line every 200 ms, the head never finished.
    let dribbling_head = async {
        let mut s = half_open(&a).await.expect("connects");
        let since = Instant::now();
        for i in 0..40 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if s.write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
        read_until_closed(&mut s, since, limit).await
    };
    let silent = async {
        let mut s = TcpStream::connect(&a).await.expect("connects");
        let since = Instant::now();
        read_until_closed(&mut s, since, limit).await
    };
    // One whole request, then nothing: closed after the idle timeout, not the header one.
    let idle_keep_alive = async {
        let mut s = TcpStream::connect(&a).await.expect("connects");
        s.write_all(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .expect("writes");
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.expect("reads");
        let head = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let since = Instant::now();
        read_until_closed(&mut s, since, limit).await
    };
    let withheld_body = async {
        let mut s = TcpStream::connect(&a).await.expect("connects");
        s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"messages\"")
            .await
            .expect("writes");
        let since = Instant::now();
        read_until_closed(&mut s, since, limit).await
    };
    let (slow_head, dribbling_head, silent, idle_keep_alive, withheld_body) = tokio::join!(
        slow_head,
        dribbling_head,
        silent,
        idle_keep_alive,
        withheld_body
    );
    let within = |what: &str, (sent, after): &(String, Duration), lo: f64, hi: f64| {
        let s = after.as_secs_f64();
        assert!(
            (lo..hi).contains(&s),
            "{what}: closed after {after:?}, expected {lo}-{hi} s; it sent {sent:?}"
        );
    };
    within("slow head (header timeout 1 s)", &slow_head, 0.9, 4.0);
    within(
        "dribbling head (header timeout 1 s)",
        &dribbling_head,
        0.9,
        4.0,
    );
    within("silent connection (idle timeout 2 s)", &silent, 1.9, 5.0);
    within(
        "keep-alive after a response (idle timeout 2 s)",
        &idle_keep_alive,
        1.9,
        5.0,
    );
    within("withheld body (body timeout 1 s)", &withheld_body, 0.9, 4.0);
    assert!(
        withheld_body.0.starts_with("HTTP/1.1 408"),
        "{}",
        withheld_body.0
    );
    assert!(withheld_body.0.contains("--body-timeout-seconds"));
    for (what, (sent, _)) in [("slow head", &slow_head), ("silent", &silent)] {
        assert!(sent.is_empty(), "{what}: {sent:?}");
    }
    let text = metrics(&server).await;
    let closed = |reason: &str| {
        metric(
            &text,
            &format!("llamaduo_serve_connections_closed_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(closed("header_timeout"), 2, "{text}");
    assert!(closed("idle_timeout") >= 2, "{text}");
    assert_eq!(
        metric(
            &text,
            "llamaduo_serve_requests_total{endpoint=\"/v1/chat/completions\",status=\"408\"}"
        ),
        1,
        "{text}"
    );
    // The server still answers.
    let (status, v) = post(
        &server,
        "/v1/chat/completions",
        &chat_body("Question 2: how many apples are in basket 2?", 4),
    )
    .await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test]
async fn a_client_gone_mid_stream_frees_its_batch_slot() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tiny_model(&tmp.path().join("tiny"));
    // One batch slot: a stream the server kept decoding would hold the next request back.
    let server = spawn(&[
        "--model",
        dir.to_str().expect("utf8"),
        "--max-batch",
        "1",
        "--max-tokens",
        "400",
    ])
    .await;
    let mut body = chat_body("Question 1: how many apples are in basket 1?", 400);
    body["stream"] = json!(true);
    body["stop"] = json!(["never-appears-xyz"]);
    let body = body.to_string();
    let mut s = TcpStream::connect(addr(&server)).await.expect("connects");
    s.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .expect("writes");
    // Read until two content deltas have arrived: the stream is being decoded.
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while got.matches("\"content\":\"").count() < 3 {
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
            .await
            .expect("the stream sends deltas")
            .expect("reads");
        assert!(n > 0, "the stream ended early: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        !got.contains("[DONE]"),
        "the answer finished before the client left: {got}"
    );
    drop(s);

    // The next request gets the slot, and the dropped one is counted as cancelled.
    let start = Instant::now();
    let (status, v) = post(
        &server,
        "/v1/chat/completions",
        &chat_body("Question 2: how many apples are in basket 2?", 4),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let latency = start.elapsed();
    assert!(latency < Duration::from_secs(10), "{latency:?}");
    let text = metrics(&server).await;
    assert_eq!(metric(&text, "llamaduo_serve_cancelled_total"), 1, "{text}");
    let generated = metric(&text, "llamaduo_serve_generated_tokens_total");
    let answered = v["usage"]["completion_tokens"].as_u64().expect("tokens");
    assert!(
        generated - answered < 400,
        "the dropped stream was decoded to its end: {generated} tokens in all"
    );
    eprintln!(
        "dropped stream stopped after {} tokens; next request answered in {latency:?}",
        generated - answered
    );
}
