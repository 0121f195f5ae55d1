//! The `updates` family: an order record in, the customer update of its status out, one or
//! two sentences in a fixed house style per status.

use rand::Rng;
use rand::seq::IndexedRandom;

const COLORS: [&str; 10] = [
    "blue", "red", "green", "black", "white", "grey", "yellow", "pink", "brown", "silver",
];
const GOODS: [&str; 16] = [
    "lamp",
    "kettle",
    "backpack",
    "jacket",
    "desk chair",
    "blender",
    "umbrella",
    "teapot",
    "headphones",
    "scarf",
    "toaster",
    "bike helmet",
    "rug",
    "water bottle",
    "phone case",
    "mug",
];
const DATES: [&str; 12] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "May 14",
    "June 2",
    "July 21",
    "August 9",
    "October 30",
    "December 3",
];
const STATUSES: [&str; 4] = ["shipped", "delayed", "delivered", "cancelled"];
const PROMPTS: [&str; 3] = [
    "Write the customer update for",
    "Write the status message for",
    "Draft the customer notice for",
];

/// An order record: the fields the update is written from.
#[derive(Debug, PartialEq)]
struct Record {
    order: String,
    item: String,
    status: String,
    date: String,
}

impl Record {
    /// The update in house style.
    fn update(&self) -> Option<String> {
        let Record {
            order,
            item,
            status,
            date,
        } = self;
        Some(match status.as_str() {
            "shipped" => {
                format!(
                    "Good news: your {item} (order {order}) has shipped. It should arrive on {date}."
                )
            }
            "delayed" => format!(
                "We are sorry: your {item} (order {order}) is delayed. It should now arrive on {date}."
            ),
            "delivered" => format!("Your {item} (order {order}) was delivered on {date}. Enjoy!"),
            "cancelled" => format!(
                "Your order {order} for the {item} has been cancelled. The refund will reach you by {date}."
            ),
            _ => return None,
        })
    }
}

/// A fresh instruction and its answer.
pub(super) fn generate(rng: &mut impl Rng) -> (String, String) {
    let record = Record {
        order: rng.random_range(1000..=9999u32).to_string(),
        item: format!(
            "{} {}",
            COLORS.choose(rng).copied().unwrap_or(COLORS[0]),
            GOODS.choose(rng).copied().unwrap_or(GOODS[0])
        ),
        status: STATUSES
            .choose(rng)
            .copied()
            .unwrap_or(STATUSES[0])
            .to_string(),
        date: DATES.choose(rng).copied().unwrap_or(DATES[0]).to_string(),
    };
    let prompt = PROMPTS.choose(rng).copied().unwrap_or(PROMPTS[0]);
    let mut fields = [
        format!("item: {}", record.item),
        format!("status: {}", record.status),
        format!("date: {}", record.date),
    ];
    // The record's fields come in any order, so the student has to read the keys.
    if rng.random_bool(0.5) {
        fields.swap(0, 1);
    }
    if rng.random_bool(0.5) {
        fields.swap(1, 2);
    }
    let instruction = format!("{prompt} order {}; {}", record.order, fields.join("; "));
    let answer = record.update().unwrap_or_default();
    (instruction, answer)
}

/// The update of an instruction of this family: `order N` and `item: / status: / date:`
/// fields separated by `;`.
pub(super) fn solve(instruction: &str) -> Option<String> {
    let mut parts = instruction.split(';').map(str::trim);
    let order = parts
        .next()?
        .rsplit_once("order ")?
        .1
        .trim()
        .trim_end_matches(':')
        .to_string();
    if order.is_empty() || !order.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (mut item, mut status, mut date) = (None, None, None);
    for part in parts {
        let (key, value) = part.split_once(':')?;
        let value = value.trim().to_string();
        match key.trim().to_ascii_lowercase().as_str() {
            "item" => item = Some(value),
            "status" => status = Some(value.to_ascii_lowercase()),
            "date" => date = Some(value),
            _ => return None,
        }
    }
    Record {
        order,
        item: item?,
        status: status?,
        date: date?,
    }
    .update()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_in_any_field_order_give_the_house_style() {
        assert_eq!(
            solve("Write the customer update for order 4821; status: delayed; item: blue lamp; date: Monday")
                .as_deref(),
            Some("We are sorry: your blue lamp (order 4821) is delayed. It should now arrive on Monday.")
        );
        assert_eq!(
            solve("Draft the customer notice for order 1200; item: red mug; date: May 14; status: cancelled")
                .as_deref(),
            Some("Your order 1200 for the red mug has been cancelled. The refund will reach you by May 14.")
        );
        assert_eq!(
            solve(
                "Write the customer update for order 1200; item: red mug; status: lost; date: May 14"
            ),
            None
        );
        assert_eq!(
            solve("Write the customer update for order 12; item: mug"),
            None
        );
    }
}
