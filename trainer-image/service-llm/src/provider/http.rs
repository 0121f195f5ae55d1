//! HTTP plumbing shared by the providers: one rustls client (ring crypto provider installed
//! once), sending JSON, mapping transport failures and error statuses to [`LlmError`], and
//! reading how long a provider asks us to wait (`retry-after-ms`, `Retry-After` in seconds or
//! as an HTTP date).

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::error::LlmError;
use crate::secret::Secret;

/// Longest error text kept from a provider body (messages stay one readable line).
const MAX_ERROR_TEXT: usize = 300;

/// Installs the ring crypto provider for rustls once per process. Another part of the process
/// may have installed one already; that one is used then.
pub(crate) fn install_crypto_provider() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A reqwest client for one provider. Timeouts are applied per request by the flow layer, so
/// only connecting is bounded here.
pub(crate) fn build_client() -> Result<reqwest::Client, LlmError> {
    install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(20))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("llamaduo/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| LlmError::Config(format!("cannot build the HTTP client: {e}")))
}

/// Where one provider's requests go: the endpoint URL, the model and the API key, with the
/// client that sends them. The key shows as `[REDACTED]` in Debug output.
pub(crate) struct Endpoint {
    /// The full URL requests are posted to.
    pub url: String,
    /// The provider's model name.
    pub model: String,
    /// The API key, when the provider needs one.
    pub key: Option<Secret>,
    client: reqwest::Client,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("key", &self.key)
            .finish()
    }
}

impl Endpoint {
    /// Checks `base` (the spec's baseUrl) and builds the request URL from it with `url_of`.
    pub fn new(
        base: &str,
        url_of: impl FnOnce(&str) -> String,
        model: &str,
        key: Option<Secret>,
    ) -> Result<Self, LlmError> {
        let base = base.trim_end_matches('/');
        url::Url::parse(base)
            .map_err(|e| LlmError::Config(format!("baseUrl {base:?} is not a URL: {e}")))?;
        Ok(Self {
            url: url_of(base),
            model: model.to_string(),
            key,
            client: build_client()?,
        })
    }

    /// Posts `body` (`prepare` adds the provider's headers and the key, if any, its way) and
    /// returns the JSON of
    /// a 2xx reply. An error status becomes [`LlmError::Status`]: `shape.fields` pulls (kind,
    /// message) out of the provider's documented error body, and `shape.retry_after` reads a
    /// wait from the body when no header gave one.
    pub async fn post_json(
        &self,
        provider: &'static str,
        body: &Value,
        prepare: impl FnOnce(reqwest::RequestBuilder, Option<&str>) -> reqwest::RequestBuilder,
        shape: ErrorShape,
    ) -> Result<Value, LlmError> {
        let request = prepare(
            self.client.post(&self.url).json(body),
            self.key.as_ref().map(Secret::expose),
        );
        let (status, headers, reply) = send(request).await?;
        if !(200..300).contains(&status) {
            let mut err = status_error(
                provider,
                status,
                &headers,
                &reply,
                self.key.as_ref(),
                shape.fields,
            );
            if let LlmError::Status { retry_after, .. } = &mut err
                && retry_after.is_none()
            {
                *retry_after = (shape.retry_after)(&reply);
            }
            return Err(err);
        }
        parse_body(provider, &reply)
    }
}

/// How a provider's error bodies read.
#[derive(Clone, Copy)]
pub(crate) struct ErrorShape {
    /// (kind, message) of a parsed error body.
    pub fields: fn(&Value) -> (Option<String>, Option<String>),
    /// A wait the body asks for (Gemini's RetryInfo); providers that only use headers give
    /// [`no_body_retry`].
    pub retry_after: fn(&[u8]) -> Option<Duration>,
}

/// For providers whose error bodies carry no wait.
pub(crate) fn no_body_retry(_: &[u8]) -> Option<Duration> {
    None
}

/// Sends a prepared request and reads the whole body; transport failures become
/// [`LlmError::Timeout`] or [`LlmError::Connection`].
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
) -> Result<(u16, HeaderMap, bytes::Bytes), LlmError> {
    let response = request.send().await.map_err(transport_error)?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(transport_error)?;
    Ok((status, headers, body))
}

fn transport_error(e: reqwest::Error) -> LlmError {
    // Strip the URL: it may carry a query string, and error chains should stay short.
    let e = e.without_url();
    if e.is_timeout() {
        LlmError::Timeout(Duration::ZERO)
    } else {
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        LlmError::Connection(msg)
    }
}

/// Builds [`LlmError::Status`] from an error reply; `extract` pulls (kind, message) out of the
/// provider's documented error body.
/// An API key the server echoes back in its message is replaced by `[REDACTED]`.
pub(crate) fn status_error(
    provider: &'static str,
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    key: Option<&Secret>,
    extract: impl Fn(&Value) -> (Option<String>, Option<String>),
) -> LlmError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let (kind, message) = parsed.as_ref().map(&extract).unwrap_or((None, None));
    let mut message = message.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    if let Some(key) = key.filter(|k| !k.expose().is_empty()) {
        message = message.replace(key.expose(), "[REDACTED]");
    }
    LlmError::Status {
        provider,
        status,
        kind,
        message: one_line(&message),
        retry_after: parse_retry_after(headers, SystemTime::now()),
    }
}

/// An error text cut to one short line.
pub(crate) fn one_line(s: &str) -> String {
    let line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.len() <= MAX_ERROR_TEXT {
        return line;
    }
    let mut cut = MAX_ERROR_TEXT;
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &line[..cut])
}

/// Parses a 2xx body as JSON or reports it as unreadable.
pub(crate) fn parse_body(provider: &'static str, body: &[u8]) -> Result<Value, LlmError> {
    serde_json::from_slice(body).map_err(|e| LlmError::InvalidResponse {
        provider,
        message: format!(
            "body is not JSON ({e}): {}",
            one_line(&String::from_utf8_lossy(body))
        ),
    })
}

/// How long the server asks us to wait: `retry-after-ms` (OpenAI), else `Retry-After` as
/// delay-seconds or an HTTP date (RFC 9110 §10.2.3). A date in the past means no wait.
pub fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A string field of a JSON object.
pub(crate) fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for key in path {
        cur = cur.get(key)?;
    }
    cur.as_str()
}

/// A non-negative integer field of a JSON object.
pub(crate) fn u64_at(v: &Value, path: &[&str]) -> Option<u64> {
    let mut cur = v;
    for key in path {
        cur = cur.get(key)?;
    }
    cur.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).expect("header"));
        h
    }

    #[test]
    fn retry_after_seconds_ms_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after(&headers("retry-after", "7"), now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after(&headers("retry-after-ms", "250"), now),
            Some(Duration::from_millis(250))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&headers("retry-after", &later), now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&headers("retry-after", &earlier), now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after(&headers("retry-after", "soon"), now),
            None
        );
        assert_eq!(parse_retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn one_line_cuts_long_text() {
        let s = "a\nb  c".to_string() + &"x".repeat(1000);
        let l = one_line(&s);
        assert!(l.starts_with("a b c"));
        assert!(l.len() <= MAX_ERROR_TEXT + 3);
    }
}
