//! Streaming text deltas: after each token, how much new text can be sent. Text that may
//! still change is held back: a trailing U+FFFD (a multi-byte character split across
//! tokens) and any suffix that could be the start of a stop string (which must never reach
//! the client).

/// Tracks what a streaming answer has sent so far.
#[derive(Debug, Default)]
pub struct DeltaTracker {
    sent: usize,
}

impl DeltaTracker {
    /// The new text safe to send, given the whole decoded text so far and the stop strings.
    pub fn step(&mut self, text: &str, stops: &[String]) -> Option<String> {
        let mut safe = text.len();
        // A split multi-byte character decodes to U+FFFD until its last byte arrives.
        while text[..safe].ends_with('\u{FFFD}') {
            safe -= '\u{FFFD}'.len_utf8();
        }
        for stop in stops.iter().filter(|s| !s.is_empty()) {
            // A whole stop string already decoded: nothing from it on is ever sent.
            if let Some(at) = text[..safe].find(stop.as_str()) {
                safe = at;
            }
            for k in (1..stop.len()).rev() {
                if stop.is_char_boundary(k) && text[..safe].ends_with(&stop[..k]) {
                    safe = safe.min(text[..safe].len() - k);
                    break;
                }
            }
        }
        self.take(text, safe)
    }

    /// The rest of the final text (cut before any stop string) once the answer ended.
    pub fn finish(&mut self, final_text: &str) -> Option<String> {
        self.take(final_text, final_text.len())
    }

    fn take(&mut self, text: &str, upto: usize) -> Option<String> {
        if upto <= self.sent || !text.is_char_boundary(self.sent) || !text.is_char_boundary(upto) {
            return None;
        }
        let d = text[self.sent..upto].to_owned();
        self.sent = upto;
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_concatenate_to_the_final_text() {
        let stops = vec!["STOP".to_string()];
        let mut t = DeltaTracker::default();
        let mut out = String::new();
        for text in [
            "Hel",
            "Hello",
            "Hello S",
            "Hello ST",
            "Hello STO",
            "Hello STOP",
        ] {
            if let Some(d) = t.step(text, &stops) {
                out.push_str(&d);
            }
        }
        // "S", "ST", "STO" were held back as possible stop prefixes; the final text is cut.
        assert_eq!(out, "Hello ");
        assert_eq!(t.finish("Hello "), None);
    }

    #[test]
    fn held_back_text_is_sent_when_it_is_not_a_stop() {
        let stops = vec!["\n\n".to_string()];
        let mut t = DeltaTracker::default();
        assert_eq!(t.step("a\n", &stops).as_deref(), Some("a"));
        assert_eq!(t.step("a\nb", &stops).as_deref(), Some("\nb"));
        assert_eq!(t.step("a\nb\u{FFFD}", &stops), None);
        assert_eq!(t.step("a\nbé", &stops).as_deref(), Some("é"));
        assert_eq!(t.finish("a\nbé!").as_deref(), Some("!"));
    }
}
