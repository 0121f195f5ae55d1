//! Chat templates: renders a model's Jinja chat template (from `chat_template.jinja` or
//! `tokenizer_config.json`, the migration's `student.chatTemplate`, or ChatML by default) the way transformers'
//! `apply_chat_template` does, and tokenizes conversations into `(input_ids, loss_mask)` with
//! the mask on the assistant answers only.

use llamaduo::api::dataset::{Message, Role};
use minijinja::{Environment, Error as JinjaError, ErrorKind, Value, context};

use crate::tokenizer::{END_OF_TURN_MARKERS, IM_END, TextTokenizer, TokenizerError};

/// ChatML, used when neither the spec nor the model gives a template. The same markup as
/// SmolLM2 and Qwen without their default system prompts.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// The ChatML fallback for vocabularies without a `<|im_end|>` token: the same markup, but
/// every turn ends with the model's own end-of-sequence token. Written as text, `<|im_end|>`
/// would become several ordinary tokens that generation does not stop on, so a model
/// trained with [`CHATML_TEMPLATE`] on such a vocabulary would never learn to stop.
pub const CHATML_EOS_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + eos_token + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const TEMPLATE_NAME: &str = "chat";

/// Why a template could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    /// The template does not compile.
    #[error("the chat template does not parse: {0}")]
    Syntax(String),
    /// Rendering failed (including `raise_exception` calls in the template).
    #[error("the chat template failed to render: {0}")]
    Render(String),
    /// The template renders earlier turns differently once later turns are added, so the
    /// answer's position cannot be found.
    #[error(
        "the chat template is not prefix-stable: the prompt of message {0} is not a prefix of the whole conversation; set student.chatTemplate to a template that renders turns independently"
    )]
    NotPrefixStable(usize),
    /// The answer text does not appear where the template put the assistant turn.
    #[error(
        "the chat template dropped or rewrote the content of assistant message {0}; its answer tokens cannot be masked"
    )]
    AnswerNotFound(usize),
    /// Tokenizing the rendered text failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

fn render_err(e: JinjaError) -> ChatTemplateError {
    // minijinja's alternate format includes the template line the error points at.
    ChatTemplateError::Render(format!("{e:#}"))
}

/// A compiled chat template with the special tokens it may refer to.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
    end_of_turn: Vec<String>,
}

/// A tokenized training conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizedConversation {
    /// Token ids of the rendered conversation.
    pub input_ids: Vec<u32>,
    /// `true` where the token belongs to an assistant answer (its end-of-turn token included):
    /// the positions whose prediction counts in the loss.
    pub loss_mask: Vec<bool>,
}

impl ChatTemplate {
    /// Compiles a template. `bos_token`/`eos_token` are the values the template sees as
    /// `bos_token` / `eos_token` (empty when the model has none); `end_of_turn` lists the
    /// token strings that may close an assistant turn (used for the loss mask).
    pub fn new(
        source: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
        end_of_turn: Vec<String>,
    ) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        // transformers renders with trim_blocks and lstrip_blocks on.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // Python string methods (.strip(), .startswith(), .split(), ...) used by real templates.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|e| ChatTemplateError::Syntax(format!("{e:#}")))?;
        Ok(Self {
            env,
            source: source.to_owned(),
            bos_token: bos_token.unwrap_or_default(),
            eos_token: eos_token.unwrap_or_default(),
            end_of_turn,
        })
    }

    /// The template for a model: `override_source` (the spec's `student.chatTemplate`) if set,
    /// else the model's own template, else [`CHATML_TEMPLATE`], or [`CHATML_EOS_TEMPLATE`]
    /// when `<|im_end|>` is not one token of the vocabulary but the EOS token is.
    pub fn for_tokenizer(
        tokenizer: &TextTokenizer,
        override_source: Option<&str>,
    ) -> Result<Self, ChatTemplateError> {
        let source = match override_source.or(tokenizer.chat_template()) {
            Some(s) => s,
            None => fallback_template(tokenizer)?,
        };
        let mut end_of_turn: Vec<String> = Vec::new();
        if let Some(eos) = tokenizer.eos_token() {
            end_of_turn.push(eos);
        }
        for &id in tokenizer.eos_ids() {
            if let Some(t) = tokenizer.inner().id_to_token(id)
                && !end_of_turn.contains(&t)
            {
                end_of_turn.push(t);
            }
        }
        for m in END_OF_TURN_MARKERS {
            if source.contains(m)
                && tokenizer.token_to_id(m).is_some()
                && !end_of_turn.iter().any(|t| t == m)
            {
                end_of_turn.push(m.to_owned());
            }
        }
        Self::new(
            source,
            tokenizer.bos_token(),
            tokenizer.eos_token(),
            end_of_turn,
        )
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// answer begins.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        let tmpl = self.env.get_template(TEMPLATE_NAME).map_err(render_err)?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        })
        .map_err(render_err)
    }

    /// Token ids of the prompt for generating the answer to `messages` (rendered with the
    /// generation prompt). No BOS/EOS is added beyond what the template writes, as in
    /// transformers' `apply_chat_template(tokenize=True)`.
    pub fn prompt_ids(
        &self,
        tokenizer: &TextTokenizer,
        messages: &[Message],
    ) -> Result<Vec<u32>, ChatTemplateError> {
        let text = self.render(messages, true)?;
        Ok(tokenizer.encode(&text)?)
    }

    /// Byte spans of the assistant answers in the full rendering: from where the generation
    /// prompt ends to the end of the turn's end-of-turn token (or the end of the content when
    /// the template writes none).
    fn answer_spans(
        &self,
        messages: &[Message],
        full: &str,
    ) -> Result<Vec<(usize, usize)>, ChatTemplateError> {
        let mut spans = Vec::new();
        let mut floor = 0;
        for (i, m) in messages.iter().enumerate() {
            if m.role != Role::Assistant {
                continue;
            }
            let prefix = self.render(&messages[..i], true)?;
            if !full.starts_with(&prefix) || prefix.len() < floor {
                return Err(ChatTemplateError::NotPrefixStable(i));
            }
            let start = prefix.len();
            let rest = &full[start..];
            let content = m.content.trim();
            let content_end = match rest.find(content) {
                Some(at) => start + at + content.len(),
                None => return Err(ChatTemplateError::AnswerNotFound(i)),
            };
            // The turn ends at the first end-of-turn marker after the content (a later turn's
            // prompt can only start after it; the next iteration checks that).
            let tail = &full[content_end..];
            let end = self
                .end_of_turn
                .iter()
                .filter(|t| !t.is_empty())
                .filter_map(|t| tail.find(t.as_str()).map(|at| at + t.len()))
                .min()
                .map_or(content_end, |e| content_end + e);
            spans.push((start, end));
            floor = end;
        }
        Ok(spans)
    }

    /// Renders a training conversation and tokenizes it into ids and a loss mask that is true
    /// exactly on the assistant answers' tokens and their end-of-turn token.
    ///
    /// The whole rendering is tokenized at once, as generation and transformers tokenize it,
    /// and a token is an answer token when the text it came from overlaps an answer's span.
    /// Tokenizing the parts one by one would differ wherever a tokenizer treats the start of
    /// its input specially: SentencePiece tokenizers (Llama 2, Mistral, Gemma) put a `▁`
    /// before every part, tokens the model never sees at inference.
    ///
    /// An answer whose last token is not one generation stops on (a template that ends turns
    /// with text the vocabulary has no token for) gets the EOS token appended, so the model
    /// learns to stop.
    pub fn tokenize_conversation(
        &self,
        tokenizer: &TextTokenizer,
        messages: &[Message],
    ) -> Result<TokenizedConversation, ChatTemplateError> {
        let full = self.render(messages, false)?;
        let spans = self.answer_spans(messages, &full)?;
        let (ids, offsets) = tokenizer.encode_with_offsets(&full)?;
        // The span each token belongs to, if any.
        let owner: Vec<Option<usize>> = offsets
            .iter()
            .map(|&(a, b)| {
                spans.iter().position(|&(start, end)| {
                    if a < b {
                        a < end && b > start
                    } else {
                        // A zero-width token (inserted by a normalizer) belongs where it sits.
                        start <= a && a < end
                    }
                })
            })
            .collect();
        let stop = tokenizer.eos_ids();
        let mut input_ids = Vec::with_capacity(ids.len() + spans.len());
        let mut loss_mask = Vec::with_capacity(ids.len() + spans.len());
        for (i, (&id, &span)) in ids.iter().zip(&owner).enumerate() {
            input_ids.push(id);
            loss_mask.push(span.is_some());
            let last_of_span = span.is_some() && owner.get(i + 1).copied().flatten() != span;
            if last_of_span
                && !stop.contains(&id)
                && let Some(&eos) = stop.first()
            {
                input_ids.push(eos);
                loss_mask.push(true);
            }
        }
        Ok(TokenizedConversation {
            input_ids,
            loss_mask,
        })
    }
}

/// The template used when neither the spec nor the model gives one: ChatML when
/// `<|im_end|>` is a single token (generation stops on it), else ChatML closing turns with
/// the EOS token when that is a single token, else ChatML (tokenization then appends the EOS
/// token to each answer).
fn fallback_template(tokenizer: &TextTokenizer) -> Result<&'static str, ChatTemplateError> {
    if let Some(id) = tokenizer.token_to_id(IM_END)
        && tokenizer.encode(IM_END)? == [id]
    {
        return Ok(CHATML_TEMPLATE);
    }
    if let Some(eos) = tokenizer.eos_token()
        && let [id] = tokenizer.encode(&eos)?[..]
        && tokenizer.eos_ids().contains(&id)
    {
        return Ok(CHATML_EOS_TEMPLATE);
    }
    Ok(CHATML_TEMPLATE)
}

/// `raise_exception(msg)`, which transformers provides to templates.
fn raise_exception(message: String) -> Result<Value, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)`, which transformers provides (Llama 3.x templates print the date).
/// Supports the directives those templates use: %d, %m, %Y, %y, %b, %B, %H, %M, %S, %%.
fn strftime_now(format: String) -> Result<Value, JinjaError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Ok(Value::from(format_utc(secs, &format)))
}

/// Formats seconds since the epoch (UTC) with a small strftime subset.
fn format_utc(secs: i64, format: &str) -> String {
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
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('b') => out.push_str(&name[..3]),
            Some('B') => out.push_str(name),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: Role, content: &str) -> Message {
        Message {
            role,
            content: content.into(),
        }
    }

    #[test]
    fn chatml_default_renders_like_transformers() {
        let t = ChatTemplate::new(CHATML_TEMPLATE, None, None, vec![]).expect("compiles");
        let out = t.render(&[msg(Role::User, "Hi")], true).expect("renders");
        assert_eq!(
            out,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn raise_exception_is_a_render_error() {
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok",
            None,
            None,
            vec![],
        )
        .expect("compiles");
        let err = t
            .render(&[msg(Role::Assistant, "x")], false)
            .expect_err("raises");
        assert!(err.to_string().contains("first must be user"), "{err}");
    }

    #[test]
    fn syntax_errors_are_reported() {
        let err = ChatTemplate::new("{% for m in messages %}", None, None, vec![])
            .expect_err("unclosed for");
        assert!(matches!(err, ChatTemplateError::Syntax(_)));
    }

    #[test]
    fn strftime_subset() {
        // 2024-07-26 13:25:09 UTC
        assert_eq!(
            format_utc(1_722_000_309, "%d %b %Y %H:%M:%S %%"),
            "26 Jul 2024 13:25:09 %"
        );
        assert_eq!(format_utc(0, "%Y-%m-%d %B"), "1970-01-01 January");
    }
}
