//! The simulated teacher's task families: small, exactly solvable tasks that a tiny model
//! built from scratch can learn on a CPU. Each family writes fresh (instruction, answer)
//! pairs, solves any instruction of its own form, and grades a candidate answer against the
//! correct one (exact → high, partly right → middle, wrong → low).

use llamaduo::api::{DatasetRow, RowSource};
use rand::Rng;
use rand::seq::IndexedRandom;

mod dates;
mod updates;

/// A built-in task family, selected by the request's `model` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// "What is 23 + 58?" → "81" (+, -, * on 0..=99).
    Arithmetic,
    /// "Reverse the order of the words: red fox jumps" → "jumps fox red"; also letters of a
    /// word.
    Reverse,
    /// "Sort these numbers: 5, 3, 9" → "3, 5, 9" (ascending unless the instruction says
    /// descending).
    Sort,
    /// Support-ticket triage: "Hi, my parcel never arrived." → "shipping". One of five
    /// teams, decided by the keyword the message mentions (80 keywords in all), so a student
    /// answers a test message right once its training data has covered that keyword: more
    /// synthetic data, higher score, as in the LlamaDuo rounds. The quickstart's task.
    Triage,
    /// A short transform: "Write this date in ISO 8601 format: March 5, 2021" →
    /// "2021-03-05", from six written forms (month names, abbreviations, ordinals,
    /// day/month/year with slashes). Pretrained students know dates but not the exact output
    /// form; partial credit per correct year, month and day.
    Dates,
    /// A sentence or two: a customer update written from an order record, "Write the
    /// customer update for order 4821: item blue lamp, status delayed, new date Monday" →
    /// "We are sorry: your blue lamp (order 4821) is delayed. It should now arrive on
    /// Monday." Four statuses, each with its own fixed wording the student has to learn, and
    /// fields it has to copy.
    Updates,
}

/// The names `model` may take (the API's list, which `llamaduo validate` checks against).
pub use llamaduo::api::SIMULATED_FAMILIES as FAMILY_NAMES;

const WORDS: &[&str] = &[
    "red", "blue", "green", "fox", "dog", "cat", "bird", "fish", "tree", "river", "stone", "cloud",
    "rain", "sun", "moon", "star", "lamp", "door", "book", "pen", "cup", "milk", "bread", "apple",
    "pear", "plum", "road", "hill", "lake", "sea", "ship", "car", "bike", "train", "wind", "snow",
    "fire", "ice", "gold", "iron", "salt", "sand", "leaf", "rose", "wolf", "bear", "frog", "owl",
    "king", "queen", "song", "drum", "bell", "coin", "map", "key", "box", "hat", "shoe", "coat",
];

/// Triage teams and the keywords that route a message to each. No keyword belongs to two
/// teams, and none contains another, so exactly one team is correct for every message.
const TRIAGE_TEAMS: &[(&str, &[&str])] = &[
    (
        "billing",
        &[
            "invoice",
            "receipt",
            "credit card",
            "payment",
            "bank transfer",
            "discount code",
            "price",
            "sales tax",
            "monthly fee",
            "coupon",
            "overcharge",
            "statement",
            "gift card",
            "installment",
            "currency",
            "paypal",
        ],
    ),
    (
        "shipping",
        &[
            "parcel",
            "courier",
            "delivery date",
            "tracking number",
            "package",
            "shipment",
            "postage",
            "carrier",
            "address label",
            "dispatch",
            "freight",
            "pickup point",
            "customs",
            "warehouse",
            "postman",
            "express delivery",
        ],
    ),
    (
        "account",
        &[
            "password",
            "login",
            "username",
            "email address",
            "profile",
            "two-factor code",
            "sign in",
            "security question",
            "avatar",
            "nickname",
            "account settings",
            "phone number",
            "verification",
            "newsletter",
            "privacy settings",
            "membership",
        ],
    ),
    (
        "returns",
        &[
            "return label",
            "exchange",
            "broken item",
            "wrong size",
            "damaged box",
            "return window",
            "replacement",
            "defect",
            "torn sleeve",
            "faulty zipper",
            "missing part",
            "store credit",
            "unwanted gift",
            "wrong color",
            "scratched screen",
            "refund request",
        ],
    ),
    (
        "technical",
        &[
            "app",
            "website",
            "error message",
            "crash",
            "checkout page",
            "browser",
            "update",
            "bug",
            "loading screen",
            "server",
            "search bar",
            "notification",
            "bluetooth",
            "battery",
            "firmware",
            "wifi",
        ],
    ),
];

/// Message shapes around the keyword ({k}).
const TRIAGE_TEMPLATES: &[&str] = &[
    "Hi, I have a question about my {k}.",
    "There is a problem with the {k}, please help.",
    "Can someone look at my {k} today?",
    "Hello team, the {k} is not right.",
    "I need help with the {k} for my last order.",
    "Why is my {k} like this?",
    "Good morning, something is off with the {k}.",
    "Please check the {k} on my order.",
    "My {k} does not look correct.",
    "Quick question regarding the {k}.",
    "I am confused by the {k}, can you explain?",
    "Is anyone able to fix the {k}?",
    "Hey, the {k} stopped making sense to me.",
    "Could you help me understand the {k}?",
    "Something went wrong with my {k} yesterday.",
    "I want to complain about the {k}.",
];

const LETTER_WORDS: &[&str] = &[
    "planet", "garden", "window", "silver", "orange", "pencil", "rocket", "castle", "forest",
    "dragon", "winter", "summer", "button", "candle", "mirror", "tunnel", "yellow", "purple",
    "bridge", "market", "island", "jacket", "kitten", "ladder", "marble", "needle", "parrot",
    "rabbit", "saddle", "turtle", "violin", "wallet", "anchor", "basket", "cactus", "donkey",
];

impl Family {
    /// The family a model name selects (case-insensitive).
    pub fn from_model(model: &str) -> Option<Self> {
        match model.trim().to_ascii_lowercase().as_str() {
            "arithmetic" => Some(Self::Arithmetic),
            "reverse" => Some(Self::Reverse),
            "sort" => Some(Self::Sort),
            "triage" => Some(Self::Triage),
            "dates" => Some(Self::Dates),
            "updates" => Some(Self::Updates),
            _ => None,
        }
    }

    /// Its model name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Arithmetic => "arithmetic",
            Self::Reverse => "reverse",
            Self::Sort => "sort",
            Self::Triage => "triage",
            Self::Dates => "dates",
            Self::Updates => "updates",
        }
    }

    /// A task description for migrations of this family.
    pub fn description(self) -> &'static str {
        match self {
            Self::Arithmetic => {
                "Answer arithmetic questions about two whole numbers with the number only."
            }
            Self::Reverse => {
                "Reverse the order of the given words, or the letters of the given word, and reply with the result only."
            }
            Self::Sort => {
                "Sort the given list of numbers in the requested order and reply with the sorted list only, comma separated."
            }
            Self::Triage => {
                "Route the customer message to one team: billing, shipping, account, returns or technical. Reply with the team name only."
            }
            Self::Dates => {
                "Rewrite the given date in ISO 8601 form (YYYY-MM-DD) and reply with the date only."
            }
            Self::Updates => {
                "Write the one- or two-sentence customer update for the given order record, in the house style for its status."
            }
        }
    }

    /// A fresh random instruction and its correct answer.
    pub fn generate(self, rng: &mut impl Rng) -> (String, String) {
        match self {
            Self::Arithmetic => {
                let (a, b) = (rng.random_range(0..=99i64), rng.random_range(0..=99i64));
                let op = *['+', '-', '*'].choose(rng).unwrap_or(&'+');
                let templates = [
                    "What is {a} {op} {b}?",
                    "Compute {a} {op} {b}.",
                    "Calculate {a} {op} {b}.",
                ];
                let t = templates.choose(rng).unwrap_or(&templates[0]);
                let instruction = t
                    .replace("{a}", &a.to_string())
                    .replace("{op}", &op.to_string())
                    .replace("{b}", &b.to_string());
                let answer = match op {
                    '+' => a + b,
                    '-' => a - b,
                    _ => a * b,
                };
                (instruction, answer.to_string())
            }
            Self::Reverse => {
                if rng.random_bool(0.3) {
                    let w = LETTER_WORDS.choose(rng).unwrap_or(&"planet");
                    (
                        format!("Reverse the letters of the word: {w}"),
                        w.chars().rev().collect(),
                    )
                } else {
                    let k = rng.random_range(3..=6);
                    let words: Vec<&str> = WORDS.choose_multiple(rng, k).copied().collect();
                    let prefix = [
                        "Reverse the order of the words:",
                        "Reverse the words:",
                        "Write these words in reverse order:",
                    ]
                    .choose(rng)
                    .copied()
                    .unwrap_or("Reverse the words:");
                    let reversed: Vec<&str> = words.iter().rev().copied().collect();
                    (format!("{prefix} {}", words.join(" ")), reversed.join(" "))
                }
            }
            Self::Sort => {
                let k = rng.random_range(3..=7);
                let nums: Vec<i64> = (0..k).map(|_| rng.random_range(0..=99)).collect();
                let descending = rng.random_bool(0.3);
                let list = join_nums(&nums);
                let prefix = if descending {
                    "Sort these numbers in descending order:"
                } else {
                    [
                        "Sort these numbers in ascending order:",
                        "Sort these numbers:",
                    ]
                    .choose(rng)
                    .copied()
                    .unwrap_or("Sort these numbers:")
                };
                let mut sorted = nums.clone();
                sorted.sort_unstable();
                if descending {
                    sorted.reverse();
                }
                (format!("{prefix} {list}"), join_nums(&sorted))
            }
            Self::Triage => {
                let (team, keywords) = TRIAGE_TEAMS.choose(rng).copied().unwrap_or(TRIAGE_TEAMS[0]);
                let keyword = keywords.choose(rng).copied().unwrap_or(keywords[0]);
                let template = TRIAGE_TEMPLATES
                    .choose(rng)
                    .copied()
                    .unwrap_or(TRIAGE_TEMPLATES[0]);
                (template.replace("{k}", keyword), team.to_string())
            }
            Self::Dates => dates::generate(rng),
            Self::Updates => updates::generate(rng),
        }
    }

    /// The correct answer to an instruction of this family, if it is one.
    pub fn solve(self, instruction: &str) -> Option<String> {
        match self {
            Self::Arithmetic => solve_arithmetic(instruction),
            Self::Reverse => {
                let (head, tail) = instruction.rsplit_once(':')?;
                let tail = tail.trim();
                if tail.is_empty() {
                    return None;
                }
                if head.to_ascii_lowercase().contains("letters") {
                    Some(tail.chars().rev().collect())
                } else {
                    Some(tail.split_whitespace().rev().collect::<Vec<_>>().join(" "))
                }
            }
            Self::Sort => {
                let (head, tail) = instruction.rsplit_once(':')?;
                let mut nums = tail
                    .split(',')
                    .map(|s| s.trim().parse::<i64>())
                    .collect::<Result<Vec<_>, _>>()
                    .ok()?;
                if nums.is_empty() {
                    return None;
                }
                nums.sort_unstable();
                if head.to_ascii_lowercase().contains("descending") {
                    nums.reverse();
                }
                Some(join_nums(&nums))
            }
            Self::Triage => triage_team(instruction).map(str::to_string),
            Self::Dates => dates::solve(instruction),
            Self::Updates => updates::solve(instruction),
        }
    }

    /// Judge scores (similarity, precision) of `candidate` against the `correct` answer.
    pub fn grade(self, candidate: &str, correct: &str) -> (f64, f64) {
        let (c, k) = (normalize(candidate), normalize(correct));
        if c == k {
            return (95.0, 95.0);
        }
        if !k.is_empty() && contains_answer(&c, &k) {
            // Right answer wrapped in extra words.
            return (80.0, 75.0);
        }
        let r = match self {
            Self::Dates => return dates::grade(candidate, correct),
            Self::Arithmetic => lcs_ratio(
                &c.chars().collect::<Vec<_>>(),
                &k.chars().collect::<Vec<_>>(),
            ),
            _ => lcs_ratio(&tokens(&c), &tokens(&k)),
        };
        ((10.0 + 65.0 * r).round(), (5.0 + 60.0 * r * r).round())
    }
}

/// Coverage rows of a family (for trials, tests and examples): `n` distinct instructions.
pub fn sample_dataset(family: Family, n: usize, rng: &mut impl Rng) -> Vec<DatasetRow> {
    let mut seen = std::collections::HashSet::new();
    let mut rows = Vec::with_capacity(n);
    let mut attempts = 0;
    while rows.len() < n && attempts < n * 100 {
        attempts += 1;
        let (instruction, answer) = family.generate(rng);
        if seen.insert(instruction.clone()) {
            let mut row = DatasetRow::single_turn(instruction, answer);
            row.id = Some(format!("{}-{:06}", family.name(), rows.len() + 1));
            row.source = Some(RowSource::Coverage);
            rows.push(row);
        }
    }
    rows
}

/// The team whose keyword the message mentions (as whole words); the longest keyword wins
/// when several match.
fn triage_team(message: &str) -> Option<&'static str> {
    let words = normalize(message);
    let padded = format!(" {words} ");
    TRIAGE_TEAMS
        .iter()
        .flat_map(|(team, keywords)| keywords.iter().map(move |k| (*team, *k)))
        .filter(|(_, k)| padded.contains(&format!(" {} ", normalize(k))))
        .max_by_key(|(_, k)| k.len())
        .map(|(team, _)| team)
}

fn join_nums(nums: &[i64]) -> String {
    nums.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn solve_arithmetic(instruction: &str) -> Option<String> {
    // Scan for INT OP INT, allowing spaces around the operator.
    let chars: Vec<char> = instruction.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            let (a, next) = read_int(&chars, i);
            let mut j = next;
            while j < chars.len() && chars[j] == ' ' {
                j += 1;
            }
            if j < chars.len() && matches!(chars[j], '+' | '-' | '*' | '×') {
                let op = chars[j];
                let mut k = j + 1;
                while k < chars.len() && chars[k] == ' ' {
                    k += 1;
                }
                if k < chars.len() && chars[k].is_ascii_digit() {
                    let (b, _) = read_int(&chars, k);
                    let v = match op {
                        '+' => a.checked_add(b)?,
                        '-' => a.checked_sub(b)?,
                        _ => a.checked_mul(b)?,
                    };
                    return Some(v.to_string());
                }
            }
            i = next;
        } else {
            i += 1;
        }
    }
    None
}

fn read_int(chars: &[char], start: usize) -> (i64, usize) {
    let mut end = start;
    let mut v: i64 = 0;
    while end < chars.len() && chars[end].is_ascii_digit() {
        v = v
            .saturating_mul(10)
            .saturating_add(i64::from(chars[end] as u8 - b'0'));
        end += 1;
    }
    (v, end)
}

/// Lower-case, punctuation other than `-` and `,` dropped, whitespace collapsed.
pub(crate) fn normalize(s: &str) -> String {
    let kept: String = s
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == ',' {
                c.to_ascii_lowercase()
            } else {
                ' '
            }
        })
        .collect();
    kept.replace(',', " , ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn tokens(s: &str) -> Vec<String> {
    s.split_whitespace()
        .filter(|t| *t != ",")
        .map(str::to_string)
        .collect()
}

fn contains_answer(candidate: &str, correct: &str) -> bool {
    let (c, k) = (tokens(candidate), tokens(correct));
    !k.is_empty() && c.len() > k.len() && c.windows(k.len()).any(|w| w == k.as_slice())
}

/// 2·LCS / (|a| + |b|).
pub(crate) fn lcs_ratio<T: PartialEq>(a: &[T], b: &[T]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let mut prev = vec![0usize; b.len() + 1];
    for x in a {
        let mut cur = vec![0usize; b.len() + 1];
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        prev = cur;
    }
    2.0 * prev[b.len()] as f64 / (a.len() + b.len()) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn generated_pairs_are_solved_correctly() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for family in [
            Family::Arithmetic,
            Family::Reverse,
            Family::Sort,
            Family::Triage,
            Family::Dates,
            Family::Updates,
        ] {
            for _ in 0..200 {
                let (i, a) = family.generate(&mut rng);
                assert_eq!(family.solve(&i).as_deref(), Some(a.as_str()), "{i}");
            }
        }
        assert_eq!(
            Family::Arithmetic.solve("What is 23 + 58?").as_deref(),
            Some("81")
        );
        assert_eq!(
            Family::Arithmetic.solve("Compute 7 - 9.").as_deref(),
            Some("-2")
        );
        assert_eq!(
            Family::Reverse.solve("Reverse the words: a b c").as_deref(),
            Some("c b a")
        );
        assert_eq!(
            Family::Sort
                .solve("Sort these numbers in descending order: 5, 30, 9")
                .as_deref(),
            Some("30, 9, 5")
        );
        assert_eq!(
            Family::Triage
                .solve("My two-factor code never arrives by SMS.")
                .as_deref(),
            Some("account")
        );
        // Whole words only: "apple" does not mention the "app".
        assert_eq!(Family::Triage.solve("I love apple pie."), None);
        assert_eq!(Family::Arithmetic.solve("hello"), None);
    }

    #[test]
    fn grades_exact_partial_and_wrong() {
        let f = Family::Sort;
        assert_eq!(f.grade("3, 5, 9", "3, 5, 9"), (95.0, 95.0));
        let (s, p) = f.grade("3, 9, 5", "3, 5, 9");
        assert!(
            (40.0..80.0).contains(&s) && (20.0..60.0).contains(&p),
            "{s} {p}"
        );
        let (s, p) = f.grade("hello", "3, 5, 9");
        assert!(s <= 15.0 && p <= 10.0, "{s} {p}");
        assert_eq!(
            Family::Arithmetic.grade("The answer is 81.", "81"),
            (80.0, 75.0)
        );
        let (s, _) = Family::Arithmetic.grade("82", "81");
        assert!((30.0..60.0).contains(&s), "{s}");
    }

    #[test]
    fn every_validated_family_name_is_served() {
        for name in FAMILY_NAMES {
            let family = Family::from_model(name).expect("a family for every name");
            assert_eq!(family.name(), name);
        }
    }

    #[test]
    fn triage_keywords_route_to_exactly_one_team() {
        let all: Vec<&str> = TRIAGE_TEAMS
            .iter()
            .flat_map(|(_, k)| k.iter().copied())
            .collect();
        assert_eq!(all.len(), 80);
        for (team, keywords) in TRIAGE_TEAMS {
            for k in *keywords {
                let message = format!("Please check the {k} on my order.");
                assert_eq!(triage_team(&message), Some(*team), "{k}");
            }
        }
        let f = Family::Triage;
        assert_eq!(f.grade("shipping", "shipping"), (95.0, 95.0));
        assert_eq!(f.grade("The shipping team.", "shipping"), (80.0, 75.0));
        assert_eq!(f.grade("billing", "shipping"), (10.0, 5.0));
    }

    #[test]
    fn sample_dataset_has_distinct_instructions() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let rows = sample_dataset(Family::Arithmetic, 50, &mut rng);
        assert_eq!(rows.len(), 50);
        rows.iter().for_each(|r| r.validate().expect("valid"));
    }
}
