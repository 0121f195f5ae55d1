//! The `dates` family: a date written one of six ways in, the same date as `YYYY-MM-DD` out.

use rand::Rng;
use rand::seq::IndexedRandom;

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

const PROMPTS: [&str; 4] = [
    "Write this date in ISO 8601 format:",
    "Convert the date to YYYY-MM-DD:",
    "Normalize this date to ISO format:",
    "Give the ISO date for:",
];

/// Days of a month (leap years included).
fn days_in(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn ordinal(day: u32) -> String {
    let suffix = match (day % 10, day % 100) {
        (1, n) if n != 11 => "st",
        (2, n) if n != 12 => "nd",
        (3, n) if n != 13 => "rd",
        _ => "th",
    };
    format!("{day}{suffix}")
}

/// One of the written forms of (year, month, day).
fn written(form: usize, year: u32, month: u32, day: u32) -> String {
    let name = MONTHS[(month - 1) as usize];
    match form {
        0 => format!("{name} {day}, {year}"),
        1 => format!("{day} {name} {year}"),
        2 => format!("{} {day}, {year}", &name[..3]),
        3 => format!("the {} of {name} {year}", ordinal(day)),
        4 => format!("{day:02}/{month:02}/{year} (day/month/year)"),
        _ => format!("{name} {}, {year}", ordinal(day)),
    }
}

/// A fresh instruction and its answer.
pub(super) fn generate(rng: &mut impl Rng) -> (String, String) {
    let year = rng.random_range(1950..=2035);
    let month = rng.random_range(1..=12);
    let day = rng.random_range(1..=days_in(year, month));
    let prompt = PROMPTS.choose(rng).copied().unwrap_or(PROMPTS[0]);
    let form = rng.random_range(0..6);
    (
        format!("{prompt} {}", written(form, year, month, day)),
        iso(year, month, day),
    )
}

fn iso(year: u32, month: u32, day: u32) -> String {
    format!("{year:04}-{month:02}-{day:02}")
}

/// The ISO date of an instruction of this family (the text after its first `:`).
pub(super) fn solve(instruction: &str) -> Option<String> {
    let (_, date) = instruction.split_once(':')?;
    let (year, month, day) = parse(date)?;
    (day >= 1 && day <= days_in(year, month)).then(|| iso(year, month, day))
}

/// (year, month, day) of a written date: numbers in order of appearance, a month name
/// anywhere; `dd/mm/yyyy` when there is no month name.
fn parse(text: &str) -> Option<(u32, u32, u32)> {
    let lower = text.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let month_name = words.iter().find_map(|w| {
        MONTHS
            .iter()
            .position(|m| w.len() >= 3 && m.to_ascii_lowercase().starts_with(*w))
            .map(|i| i as u32 + 1)
    });
    let numbers: Vec<u32> = words
        .iter()
        .filter_map(|w| {
            let digits = w.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            let suffix = &w[digits.len()..];
            let is_number = !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit());
            (is_number && ["", "st", "nd", "rd", "th"].contains(&suffix))
                .then(|| digits.parse().ok())
                .flatten()
        })
        .collect();
    match (month_name, numbers.as_slice()) {
        (Some(m), [a, b]) if *b >= 1000 => Some((*b, m, *a)),
        (Some(m), [a, b]) if *a >= 1000 => Some((*a, m, *b)),
        (None, [d, m, y]) if *y >= 1000 && (1..=12).contains(m) => Some((*y, *m, *d)),
        _ => None,
    }
}

/// Judge scores: an exact ISO date scores high; otherwise partial credit for each of year,
/// month and day that is right in an ISO-shaped answer, little for anything else.
pub(super) fn grade(candidate: &str, correct: &str) -> (f64, f64) {
    let c = candidate.trim().trim_end_matches('.');
    if c == correct {
        return (95.0, 95.0);
    }
    let parts = |s: &str| -> Option<Vec<String>> {
        let p: Vec<String> = s.split('-').map(str::to_string).collect();
        (p.len() == 3 && p.iter().all(|x| x.chars().all(|c| c.is_ascii_digit()))).then_some(p)
    };
    let want = parts(correct).unwrap_or_default();
    let first = c.split_whitespace().find(|w| parts(w).is_some());
    match first.and_then(parts) {
        Some(got) => {
            let right = got.iter().zip(&want).filter(|(a, b)| a == b).count() as f64;
            let wrapped = first != Some(c);
            let (s, p) = match right as usize {
                3 => (80.0, 75.0),
                n => (20.0 + 18.0 * n as f64, 10.0 + 15.0 * n as f64),
            };
            if wrapped && right < 3.0 {
                (s - 5.0, p - 5.0)
            } else {
                (s, p)
            }
        }
        None => (10.0, 5.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn every_written_form_parses_back() {
        for form in 0..6 {
            for (y, m, d) in [(2021, 3, 5), (1999, 12, 31), (2000, 2, 29), (1987, 11, 11)] {
                let text = format!("{} {}", PROMPTS[0], written(form, y, m, d));
                assert_eq!(solve(&text), Some(iso(y, m, d)), "{text}");
            }
        }
        assert_eq!(solve("Give the ISO date for: 31 February 2021"), None);
        assert_eq!(solve("What is the date?"), None);
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let (i, a) = generate(&mut rng);
        assert_eq!(solve(&i), Some(a));
    }

    #[test]
    fn grades_exact_partial_wrapped_and_wrong() {
        assert_eq!(grade("2021-03-05", "2021-03-05"), (95.0, 95.0));
        assert_eq!(grade("The date is 2021-03-05", "2021-03-05"), (80.0, 75.0));
        let (two, _) = grade("2021-03-06", "2021-03-05");
        let (one, _) = grade("2021-04-06", "2021-03-05");
        assert!(two < 80.0 && one < two, "{two} {one}");
        assert_eq!(grade("March 5, 2021", "2021-03-05"), (10.0, 5.0));
    }
}
