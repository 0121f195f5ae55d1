//! Deterministic object names: stage runs `{migration}-r{round}-{stage}`, plus `-a{attempt}`
//! for retries, and the serving Deployment and Service `{migration}-serve`, shortened with a
//! hash to a valid DNS-1123 label.
//!
//! The name is a pure function of (migration, round, stage, attempt), so an operator that
//! restarts at any moment finds the run it started instead of creating a second one. Job names
//! must fit a label (63 characters) because Kubernetes copies them into the `job-name` pod
//! label.

use sha2::{Digest, Sha256};

use crate::api::Stage;

/// Longest name a stage run may have (a DNS-1123 label).
pub const MAX_NAME_LEN: usize = 63;

/// Hex characters of the hash that keeps shortened names unique.
const HASH_LEN: usize = 8;

/// The name of a stage run. Names that fit and are valid labels are kept as they are; others
/// keep a readable prefix of the migration name and add a hash of the full name, so two
/// migrations with a long common prefix never share run names.
pub fn stage_run_name(migration: &str, round: u32, stage: Stage, attempt: u32) -> String {
    let suffix = if attempt > 1 {
        format!("-r{round}-{stage}-a{attempt}")
    } else {
        format!("-r{round}-{stage}")
    };
    shortened(migration, &suffix, false)
}

/// The name of the serving Deployment and Service of a migration: `{migration}-serve`,
/// shortened like [`stage_run_name`] when needed. It is also a DNS-1035 label (it starts with
/// a letter), as Service names must be: a migration whose name starts with a digit gets an
/// `m` prefix and the hash.
pub fn serving_name(migration: &str) -> String {
    shortened(migration, "-serve", true)
}

/// `{migration}{suffix}` when that is a valid label, else a sanitized prefix of the migration
/// name, a hash of the full name and the suffix. With `letter_start` the result also starts
/// with a letter.
fn shortened(migration: &str, suffix: &str, letter_start: bool) -> String {
    let sanitized = sanitize(migration);
    let starts_well = !letter_start || sanitized.starts_with(|c: char| c.is_ascii_lowercase());
    if sanitized == migration && starts_well && sanitized.len() + suffix.len() <= MAX_NAME_LEN {
        return format!("{sanitized}{suffix}");
    }
    let hash = hex_prefix(&Sha256::digest(migration.as_bytes()));
    // Room for the prefix: the label minus suffix, hash, the dash before the hash and (when
    // the name needs a leading letter) the `m`.
    let lead = if starts_well { "" } else { "m" };
    let room = MAX_NAME_LEN - suffix.len() - HASH_LEN - 1 - lead.len();
    let prefix = sanitized[..sanitized.len().min(room)].trim_end_matches('-');
    if prefix.is_empty() {
        format!("h{}{suffix}", &hash[1..])
    } else {
        format!("{lead}{prefix}-{hash}{suffix}")
    }
}

/// Lower-case, `[a-z0-9-]` only, starting and ending alphanumeric (may be empty).
fn sanitize(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    mapped.trim_matches('-').to_string()
}

fn hex_prefix(digest: &[u8]) -> String {
    digest
        .iter()
        .take(HASH_LEN / 2)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_dns1123_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= MAX_NAME_LEN
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    #[test]
    fn short_names_are_readable() {
        assert_eq!(
            stage_run_name("tickets", 1, Stage::Synthesize, 1),
            "tickets-r1-synthesize"
        );
        assert_eq!(
            stage_run_name("tickets", 12, Stage::Train, 3),
            "tickets-r12-train-a3"
        );
    }

    #[test]
    fn long_names_are_shortened_with_a_hash_and_stay_unique() {
        let a = "a".repeat(60) + "-one";
        let b = "a".repeat(60) + "-two";
        let na = stage_run_name(&a, 10, Stage::Evaluate, 7);
        let nb = stage_run_name(&b, 10, Stage::Evaluate, 7);
        assert!(is_dns1123_label(&na), "{na}");
        assert!(na.ends_with("-r10-evaluate-a7"), "{na}");
        assert_ne!(na, nb);
        assert_eq!(
            na,
            stage_run_name(&a, 10, Stage::Evaluate, 7),
            "deterministic"
        );
    }

    #[test]
    fn subdomain_names_become_labels() {
        let n = stage_run_name("team.tickets", 1, Stage::Train, 1);
        assert!(is_dns1123_label(&n), "{n}");
        assert!(n.starts_with("team-tickets-"), "{n}");
        assert_ne!(n, stage_run_name("team-tickets", 1, Stage::Train, 1));
    }

    fn is_dns1035_label(s: &str) -> bool {
        is_dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
    }

    #[test]
    fn serving_names_are_readable_when_they_fit() {
        assert_eq!(serving_name("tickets"), "tickets-serve");
        assert_eq!(serving_name("tickets"), serving_name("tickets"));
    }

    #[test]
    fn serving_names_are_service_names() {
        for name in [
            "1tickets",
            "team.tickets",
            "9",
            "-",
            &"z".repeat(58),
            &"z".repeat(253),
            &format!("7{}", "a".repeat(100)),
        ] {
            let n = serving_name(name);
            assert!(is_dns1035_label(&n), "{name}: {n}");
            assert!(n.ends_with("-serve"), "{n}");
        }
        assert_ne!(serving_name("1tickets"), serving_name("2tickets"));
        assert!(serving_name("1tickets").starts_with("m1tickets-"));
        // A name that fits exactly is kept; one more character is hashed.
        assert_eq!(
            serving_name(&"z".repeat(57)),
            format!("{}-serve", "z".repeat(57))
        );
        assert_ne!(
            serving_name(&"z".repeat(58)),
            format!("{}-serve", "z".repeat(58))
        );
    }

    #[test]
    fn every_length_yields_a_label() {
        for len in 1..=253 {
            let name = "x".repeat(len);
            for stage in Stage::ALL {
                let n = stage_run_name(&name, u32::MAX, stage, u32::MAX);
                assert!(is_dns1123_label(&n), "{len}: {n}");
            }
            let n = serving_name(&name);
            assert!(is_dns1035_label(&n), "{len}: {n}");
        }
    }
}
