//! Child processes of a local run (stage runs and the simulated teacher): spawned in their own
//! process group, so the terminal's Ctrl-C reaches only `llamaduo run`, which then stops them
//! in order (SIGTERM to the group, SIGKILL after a grace period); on Linux they also die with
//! their parent if `llamaduo run` itself is killed, so an orphan never keeps writing into a work
//! directory that a rerun is using.

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

/// Lines of stderr kept for the failure reason of a run that wrote no result.
const STDERR_TAIL: usize = 8;

/// Tells running children to stop (Ctrl-C, SIGTERM, or a test).
#[derive(Clone, Debug)]
pub struct StopHandle(watch::Sender<bool>);

/// Waits for a stop request.
#[derive(Clone, Debug)]
pub struct StopSignal(watch::Receiver<bool>);

/// A connected [`StopHandle`] and [`StopSignal`].
pub fn stop_channel() -> (StopHandle, StopSignal) {
    let (tx, rx) = watch::channel(false);
    (StopHandle(tx), StopSignal(rx))
}

impl StopHandle {
    /// Requests a stop.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

impl StopSignal {
    /// Whether a stop was requested.
    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once a stop is requested (at once if it already was).
    pub async fn stopped(&mut self) {
        // An error means every handle is gone: no stop can come any more.
        if self.0.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Turns Ctrl-C (SIGINT) and SIGTERM into a stop request; runs until the process ends.
pub async fn forward_signals(handle: StopHandle) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    handle.stop();
}

/// A command set up as a child of the local run: own process group, stdin closed, stdout and
/// stderr piped, killed when dropped.
pub fn child_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    #[cfg(target_os = "linux")]
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // async-signal-safe prctl system call.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    cmd
}

/// How a child ended.
#[derive(Debug)]
pub struct ProcessEnd {
    /// Its exit status.
    pub status: ExitStatus,
    /// Whether it was stopped because of a stop request.
    pub interrupted: bool,
    /// The last lines it wrote on stderr.
    pub stderr_tail: Vec<String>,
}

impl ProcessEnd {
    /// A one-line account of a failed exit, with the last stderr line.
    pub fn describe(&self) -> String {
        let how = match (self.status.code(), signal_of(&self.status)) {
            (Some(c), _) => format!("exited with status {c}"),
            (None, Some(s)) => format!("was killed by signal {s}"),
            (None, None) => "ended".to_string(),
        };
        match self.stderr_tail.iter().rev().find(|l| !l.trim().is_empty()) {
            Some(last) => format!("{how}: {}", last.trim()),
            None => how,
        }
    }
}

fn signal_of(status: &ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal()
}

/// Sends `signal` to the child's process group. A group that is already gone is not an error.
pub fn signal_group(child: &Child, signal: Signal) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

/// Stops a child: SIGTERM to its group, then SIGKILL once `grace` has passed.
pub async fn terminate(child: &mut Child, grace: Duration) -> std::io::Result<ExitStatus> {
    signal_group(child, Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => {
            // Grandchildren that ignored SIGTERM go too.
            signal_group(child, Signal::SIGKILL);
            status
        }
        Err(_) => {
            signal_group(child, Signal::SIGKILL);
            child.wait().await
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// Runs `cmd` to its end: every stdout line goes to `on_stdout`, both streams are appended to
/// `log`; a stop request terminates it (see [`terminate`]).
pub async fn run_child(
    mut cmd: Command,
    log: &Path,
    mut on_stdout: impl FnMut(&str),
    stop: &mut StopSignal,
    grace: Duration,
) -> std::io::Result<ProcessEnd> {
    let mut log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut child = cmd.spawn()?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pump(out, Stream::Stdout, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pump(err, Stream::Stderr, tx.clone()));
    }
    drop(tx);
    let mut tail = VecDeque::with_capacity(STDERR_TAIL);
    let mut handle_line = |(stream, line): (Stream, String)| {
        let _ = writeln!(log_file, "{line}");
        match stream {
            Stream::Stdout => on_stdout(&line),
            Stream::Stderr => {
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        }
    };
    let mut interrupted = false;
    let mut open = true;
    let status = loop {
        tokio::select! {
            biased;
            line = rx.recv(), if open => match line {
                Some(l) => handle_line(l),
                None => open = false,
            },
            status = child.wait() => break status?,
            _ = stop.stopped() => {
                interrupted = true;
                break terminate(&mut child, grace).await?;
            }
        }
    };
    // What the child wrote just before it exited; grandchildren holding the pipes open must
    // not keep us waiting.
    let drain = async {
        while let Some(l) = rx.recv().await {
            handle_line(l);
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    signal_group(&child, Signal::SIGKILL);
    Ok(ProcessEnd {
        status,
        interrupted,
        stderr_tail: tail.into_iter().collect(),
    })
}

async fn pump(
    stream: impl tokio::io::AsyncRead + Unpin,
    which: Stream,
    tx: mpsc::UnboundedSender<(Stream, String)>,
) {
    let mut lines = BufReader::new(stream).split(b'\n');
    while let Ok(Some(bytes)) = lines.next_segment().await {
        let line = String::from_utf8_lossy(&bytes)
            .trim_end_matches('\r')
            .to_string();
        if tx.send((which, line)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn sh(script: &str) -> Command {
        let mut c = child_command(Path::new("/bin/sh"));
        c.arg("-c").arg(script);
        c
    }

    #[tokio::test]
    async fn lines_are_streamed_logged_and_the_exit_is_described() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("x.log");
        let (_h, mut stop) = stop_channel();
        let mut seen = Vec::new();
        let end = run_child(
            sh("echo one; echo oops >&2; echo two; exit 3"),
            &log,
            |l| seen.push(l.to_string()),
            &mut stop,
            Duration::from_secs(1),
        )
        .await
        .expect("ran");
        assert_eq!(seen, ["one", "two"]);
        assert_eq!(end.status.code(), Some(3));
        assert!(!end.interrupted);
        assert_eq!(end.describe(), "exited with status 3: oops");
        let logged = std::fs::read_to_string(&log).expect("log");
        assert!(
            logged.contains("one") && logged.contains("oops"),
            "{logged}"
        );
    }

    #[tokio::test]
    async fn a_stop_sends_sigterm_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("got-term");
        let (h, mut stop) = stop_channel();
        let script = format!(
            "trap 'echo term > {}; exit 143' TERM; echo ready; while true; do sleep 0.05; done",
            marker.display()
        );
        let started = Instant::now();
        let end = run_child(
            sh(&script),
            &dir.path().join("log"),
            |l| {
                if l == "ready" {
                    h.stop();
                }
            },
            &mut stop,
            Duration::from_secs(10),
        )
        .await
        .expect("ran");
        assert!(end.interrupted);
        assert_eq!(end.status.code(), Some(143));
        assert!(marker.exists(), "the child saw SIGTERM");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no SIGKILL wait"
        );
    }

    #[tokio::test]
    async fn a_child_ignoring_sigterm_is_killed_after_the_grace_period() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (h, mut stop) = stop_channel();
        let end = run_child(
            sh("trap '' TERM; echo ready; while true; do sleep 0.05; done"),
            &dir.path().join("log"),
            |l| {
                if l == "ready" {
                    h.stop();
                }
            },
            &mut stop,
            Duration::from_millis(300),
        )
        .await
        .expect("ran");
        assert!(end.interrupted);
        assert_eq!(signal_of(&end.status), Some(Signal::SIGKILL as i32));
    }
}
