//! Finding the JSON in a model's reply: the whole text, a fenced code block, or the first
//! complete JSON value embedded in prose (parsed with a streaming deserializer, so trailing
//! text and later braces do not matter, unlike "first `{` to last `}`").

use serde_json::Value;

/// Every JSON object or array found in `text`, best candidates first: the whole text, then
/// the contents of ```` ``` ```` fences, then each value starting at a `{` or `[` in order.
pub fn json_candidates(text: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let trimmed = text.trim();
    if let Ok(v) = serde_json::from_str::<Value>(trimmed)
        && (v.is_object() || v.is_array())
    {
        out.push(v);
    }
    for block in fenced_blocks(text) {
        if let Ok(v) = serde_json::from_str::<Value>(block.trim())
            && (v.is_object() || v.is_array())
        {
            out.push(v);
        }
    }
    for (i, c) in text.char_indices() {
        if c == '{' || c == '[' {
            let mut stream = serde_json::Deserializer::from_str(&text[i..]).into_iter::<Value>();
            if let Some(Ok(v)) = stream.next() {
                out.push(v);
            }
        }
        if out.len() >= 16 {
            break;
        }
    }
    out
}

/// The insides of ```` ``` ```` fenced blocks (an optional language tag on the opening line
/// is skipped).
fn fenced_blocks(text: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let body_start = after.find('\n').map_or(0, |n| n + 1);
        let body = &after[body_start..];
        let Some(end) = body.find("```") else { break };
        blocks.push(&body[..end]);
        rest = &body[end + 3..];
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_json_in_prose_and_fences() {
        let t = "Sure! Here it is:\n```json\n{\"a\": 1}\n```\nHope that helps {not json}";
        let c = json_candidates(t);
        assert_eq!(c[0]["a"], 1);
        let t = "Result: {\"a\": {\"b\": 2}} and also {\"c\": 3}";
        let c = json_candidates(t);
        assert_eq!(c[0]["a"]["b"], 2);
        assert!(c.iter().any(|v| v["c"] == 3));
        assert!(json_candidates("no json here").is_empty());
    }
}
