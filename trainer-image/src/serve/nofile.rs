//! The descriptor budget: at start the soft RLIMIT_NOFILE is raised to the hard limit (many
//! hosts and containers start processes at a soft 1,024, which held connections used up), and
//! the connection cap is sized below it so that connections can never take the descriptors the
//! server itself needs (the listener, model files, logs, a connection being accepted).

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// The highest default connection cap, whatever the descriptor limit: a held connection costs
/// a task and hyper's buffers (~20 KiB measured), so this bounds that memory to ~80 MiB. At the
/// cap only connections with nothing in flight are closed for new ones, and the request queue
/// refuses work long before this many requests are in flight.
pub const DEFAULT_CAP_MAX: usize = 4096;

/// Descriptors always left to the server besides connections, however low the limit.
const MIN_HEADROOM: u64 = 64;

/// What [`raise_to_hard`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFile {
    /// The soft limit before.
    pub before: u64,
    /// The soft limit now.
    pub limit: u64,
    /// The hard limit.
    pub hard: u64,
    /// Why raising was refused, if it was (the limit then stays where it was).
    pub refused: Option<nix::Error>,
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (or to 2^20 where the hard limit is
/// unlimited, since Linux refuses a soft limit above `fs.nr_open`). Errs only when the limit
/// cannot be read.
pub fn raise_to_hard() -> nix::Result<NoFile> {
    let (before, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let target = if hard == nix::sys::resource::RLIM_INFINITY {
        1 << 20
    } else {
        hard
    };
    let refused = if before < target {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard).err()
    } else {
        None
    };
    let (limit, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok(NoFile {
        before,
        limit,
        hard,
        refused,
    })
}

/// Descriptors kept out of the connection cap: a quarter of the limit, at least 64.
fn headroom(limit: u64) -> u64 {
    (limit / 4).max(MIN_HEADROOM)
}

/// The most connections a descriptor limit allows: the limit less the headroom, at least 1.
pub fn cap_allowed(limit: u64) -> usize {
    usize::try_from(limit.saturating_sub(headroom(limit)))
        .unwrap_or(usize::MAX)
        .max(1)
}

/// The connection cap: `requested` (--max-connections) if the limit allows it, else what the
/// limit allows; with no request, [`cap_allowed`] up to [`DEFAULT_CAP_MAX`]. The flag is
/// `true` when a request was lowered.
pub fn connection_cap(requested: Option<usize>, limit: u64) -> (usize, bool) {
    let allowed = cap_allowed(limit);
    match requested {
        Some(n) if n > allowed => (allowed, true),
        Some(n) => (n.max(1), false),
        None => (allowed.min(DEFAULT_CAP_MAX), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_always_below_the_limit() {
        for limit in [1, 64, 100, 256, 1024, 20_000, 1 << 20] {
            let (cap, _) = connection_cap(None, limit);
            assert!(cap >= 1);
            assert!(
                (cap as u64) < limit || limit <= MIN_HEADROOM,
                "{limit}: {cap}"
            );
            assert!(cap <= DEFAULT_CAP_MAX);
        }
        assert_eq!(connection_cap(None, 1024), (768, false));
        assert_eq!(connection_cap(None, 1 << 20), (DEFAULT_CAP_MAX, false));
        assert_eq!(connection_cap(None, 200), (136, false));
    }

    #[test]
    fn a_requested_cap_is_lowered_to_what_the_limit_allows() {
        assert_eq!(connection_cap(Some(100), 1024), (100, false));
        assert_eq!(connection_cap(Some(10_000), 1024), (768, true));
        assert_eq!(
            connection_cap(Some(10_000), 1 << 20),
            (10_000, false),
            "an explicit cap may exceed the default's ceiling"
        );
    }

    #[test]
    fn raising_keeps_the_hard_limit() {
        let n = raise_to_hard().expect("getrlimit");
        assert!(n.limit >= n.before);
        assert!(n.limit <= n.hard);
    }
}
