//! What the accept loop does with an `accept()` error. A failed handshake (the client reset or
//! aborted before it was accepted) is that client's problem: the next accept goes on at once.
//! Anything else (EMFILE, ENFILE, ENOBUFS, ENOMEM) is the server's: retrying at once spins the
//! loop and floods the log, so it backs off exponentially (5 ms up to 1 s) and logs at most
//! once per [`LOG_EVERY`], with how many errors it left out.

use std::io;
use std::time::{Duration, Instant};

/// The first pause after a resource error.
const FIRST_DELAY: Duration = Duration::from_millis(5);
/// The longest pause.
const MAX_DELAY: Duration = Duration::from_secs(1);
/// The least time between two logged accept errors.
pub const LOG_EVERY: Duration = Duration::from_secs(30);

/// What to do after an accept error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// How long to wait before the next accept.
    pub delay: Duration,
    /// Whether to log this error now, and how many were left unlogged since the last one.
    pub log: Option<u64>,
}

/// The accept loop's error state.
#[derive(Debug, Default)]
pub struct Backoff {
    delay: Option<Duration>,
    streak: u64,
    last_log: Option<Instant>,
    unlogged: u64,
}

/// Whether an accept error concerns only the connection being accepted.
pub fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    ) || e.raw_os_error() == Some(nix::libc::EPROTO)
}

impl Backoff {
    /// A connection was accepted: the next error starts again from the first delay (the
    /// log interval stays, so an error that comes and goes is still logged sparingly).
    /// Returns how many errors came in a row before it, if any (to log the recovery).
    pub fn accepted(&mut self) -> Option<u64> {
        self.delay = None;
        Some(std::mem::take(&mut self.streak)).filter(|&n| n > 0)
    }

    /// A resource error at `now`.
    pub fn failed(&mut self, now: Instant) -> Retry {
        let delay = self.delay.map_or(FIRST_DELAY, |d| (d * 2).min(MAX_DELAY));
        self.delay = Some(delay);
        self.streak += 1;
        let due = self
            .last_log
            .is_none_or(|t| now.saturating_duration_since(t) >= LOG_EVERY);
        let log = if due {
            self.last_log = Some(now);
            Some(std::mem::take(&mut self.unlogged))
        } else {
            self.unlogged += 1;
            None
        };
        Retry { delay, log }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_exponentially_up_to_a_second_and_logs_sparingly() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        let first = b.failed(t0);
        assert_eq!(first.delay, FIRST_DELAY);
        assert_eq!(first.log, Some(0));
        let mut delays = vec![first.delay];
        let mut logged = 0;
        // An hour of errors, each after the delay the previous one asked for.
        let mut now = t0;
        while now < t0 + Duration::from_secs(3600) {
            let r = b.failed(now);
            now += r.delay;
            delays.push(r.delay);
            logged += usize::from(r.log.is_some());
        }
        assert!(delays.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(delays.last(), Some(&MAX_DELAY));
        assert!(
            (115..=125).contains(&logged),
            "an hour at most once per 30 s: {logged}"
        );
        assert!(b.accepted().is_some_and(|n| n > 1000));
        assert_eq!(b.accepted(), None);
        assert_eq!(b.failed(now).delay, FIRST_DELAY);
    }

    #[test]
    fn the_log_line_counts_what_it_left_out() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        assert_eq!(b.failed(t0).log, Some(0));
        for i in 1..=9 {
            assert_eq!(b.failed(t0 + Duration::from_secs(i)).log, None);
        }
        assert_eq!(b.failed(t0 + LOG_EVERY).log, Some(9));
    }

    #[test]
    fn handshake_failures_are_per_connection_and_emfile_is_not() {
        assert!(is_per_connection(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
        assert!(is_per_connection(&io::Error::from_raw_os_error(
            nix::libc::ECONNABORTED
        )));
        assert!(!is_per_connection(&io::Error::from_raw_os_error(
            nix::libc::EMFILE
        )));
        assert!(!is_per_connection(&io::Error::from_raw_os_error(
            nix::libc::ENFILE
        )));
    }
}
