//! OpenAI's wire shapes: the request bodies of `/v1/chat/completions` and `/v1/completions`
//! as serde types, their validation into a [`Sampling`] and a prompt, and the JSON error
//! body every failure is answered with.
//!
//! Parsing is serde_json's; this module only decides what each failure means to a client:
//! bytes that are not UTF-8 or not JSON are a 400, JSON whose known fields have the wrong type
//! is a 422, values out of range are a 400 naming the field. Fields OpenAI defines that we do
//! not use (`presence_penalty`, `user`, `logprobs`, ...) and unknown fields are ignored, as
//! clients such as Open WebUI send many of them.
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::chat_template::{ChatMessage, ChatRole};

/// Most stop strings one request may give (OpenAI's limit).
pub const MAX_STOPS: usize = 4;
/// Longest stop string in bytes: stop text is held back while it could still match, so a
/// huge one would hold back the whole answer.
pub const MAX_STOP_BYTES: usize = 256;

/// A failure answered as OpenAI does: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
    /// OpenAI's error type (`invalid_request_error`, `server_error`, ...).
    pub kind: &'static str,
    /// The request field at fault, if one is.
    pub param: Option<&'static str>,
    /// OpenAI's machine-readable code (`context_length_exceeded`, ...), if any.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 about `param`.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param),
            code: None,
        }
    }

    /// Any status with no field named.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    /// Sets the machine-readable code.
    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

/// Parses a request body: UTF-8 first (serde_json would report bad bytes as a syntax error
/// somewhere in a string), then JSON, then the shape.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!(
                "the request body is not valid UTF-8 (at byte {})",
                e.valid_up_to()
            ),
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request_error",
                format!("the request does not have OpenAI's shape: {e}"),
            ),
            Category::Syntax | Category::Eof | Category::Io => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("the request body is not valid JSON: {e}"),
            ),
        }
    })
}

/// `stop`: one string or a list.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Up to [`MAX_STOPS`] stop strings.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` and no choices (OpenAI's opt-in).
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The options both endpoints share.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CommonFields {
    /// The model asked for; any name is served by the one loaded model.
    #[serde(default)]
    pub model: Option<String>,
    /// Most tokens to generate (legacy name).
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Most tokens to generate (chat's newer name; wins over `max_tokens`).
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// Sampling temperature, 0..=2.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus threshold, 0..=1.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Seed of the sampler's generator.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Stop strings.
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Stream Server-Sent Events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Number of choices; only 1 is served.
    #[serde(default)]
    pub n: Option<u64>,
}

/// A message's `content`: text, or a list of parts of which only text parts are served.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts.
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Clone, Debug, Deserialize)]
pub struct ContentPart {
    /// `text` (anything else is refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a text part.
    #[serde(default)]
    pub text: Option<String>,
}

/// One message of `messages`.
#[derive(Clone, Debug, Deserialize)]
pub struct WireMessage {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    /// The text (null for an assistant message without text).
    #[serde(default)]
    pub content: Option<Content>,
}

/// Body of `POST /v1/chat/completions`.
#[derive(Clone, Debug, Deserialize)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<WireMessage>,
    /// The shared options.
    #[serde(flatten)]
    pub common: CommonFields,
}

/// `prompt` of a completion: a string or a list holding one.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// The prompt.
    One(String),
    /// A batch of prompts; only one is served.
    Many(Vec<String>),
}

/// Body of `POST /v1/completions`.
#[derive(Clone, Debug, Deserialize)]
pub struct CompletionRequest {
    /// The text to continue.
    pub prompt: Prompt,
    /// The shared options.
    #[serde(flatten)]
    pub common: CommonFields,
}

/// Sampling defaults of the server (the root flags `--temperature`, `--topp`, `--seed`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingDefaults {
    /// Temperature when the request gives none.
    pub temperature: f32,
    /// Top-p when the request gives none.
    pub top_p: f32,
    /// Seed when the request gives none (`None`: a new one per request).
    pub seed: Option<u64>,
}

/// A request's validated options.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// Temperature (0 = argmax).
    pub temperature: f32,
    /// Top-p.
    pub top_p: f32,
    /// Seed.
    pub seed: u64,
    /// Most tokens to generate (`None`: up to the end of the context).
    pub max_tokens: Option<u32>,
    /// Stop strings (non-empty ones).
    pub stops: Vec<String>,
    /// Stream the answer.
    pub stream: bool,
    /// Send OpenAI's usage-only last chunk when streaming.
    pub include_usage: bool,
}

/// A seed for a request that names none: the clock's nanoseconds, as different per request as
/// dllama's per-run default (the Unix time in seconds) is per run.
fn fresh_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl CommonFields {
    /// Checks every option against the server's limits (`seq_len`: the context length).
    pub fn validate(
        &self,
        defaults: &SamplingDefaults,
        seq_len: u32,
    ) -> Result<Sampling, ApiError> {
        if let Some(n) = self.n
            && n != 1
        {
            return Err(ApiError::invalid(
                "n",
                format!("n = {n}: this server generates one choice per request"),
            ));
        }
        let temperature = match self.temperature {
            None => defaults.temperature,
            Some(t) if t.is_finite() && (0.0..=2.0).contains(&t) => t as f32,
            Some(t) => {
                return Err(ApiError::invalid(
                    "temperature",
                    format!("temperature {t} is not in 0..=2"),
                ));
            }
        };
        let top_p = match self.top_p {
            None => defaults.top_p,
            Some(p) if p.is_finite() && (0.0..=1.0).contains(&p) => p as f32,
            Some(p) => {
                return Err(ApiError::invalid(
                    "top_p",
                    format!("top_p {p} is not in 0..=1"),
                ));
            }
        };
        let (param, asked) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(m), _) => ("max_completion_tokens", Some(m)),
            (None, m) => ("max_tokens", m),
        };
        let max_tokens = match asked {
            None => None,
            Some(0) => {
                return Err(ApiError::invalid(
                    param,
                    format!("{param} must be at least 1"),
                ));
            }
            Some(m) if m > u64::from(seq_len) => {
                return Err(ApiError::invalid(
                    param,
                    format!(
                        "{param} is too large: {m}. This model's context holds {seq_len} tokens, prompt included"
                    ),
                ));
            }
            Some(m) => Some(m as u32),
        };
        let stops = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stops.len() > MAX_STOPS {
            return Err(ApiError::invalid(
                "stop",
                format!(
                    "{} stop strings given; at most {MAX_STOPS} are allowed",
                    stops.len()
                ),
            ));
        }
        if let Some(s) = stops.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return Err(ApiError::invalid(
                "stop",
                format!(
                    "a stop string of {} bytes; at most {MAX_STOP_BYTES} are allowed",
                    s.len()
                ),
            ));
        }
        Ok(Sampling {
            temperature,
            top_p,
            seed: self
                .seed
                .map(|s| s as u64)
                .or(defaults.seed)
                .unwrap_or_else(fresh_seed),
            max_tokens,
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            stream: self.stream.unwrap_or(false),
            include_usage: self
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        })
    }
}

impl ChatRequest {
    /// The conversation as the chat template takes it.
    pub fn messages(&self) -> Result<Vec<ChatMessage>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages", "messages is empty"));
        }
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let role = match m.role.as_str() {
                    "system" | "developer" => ChatRole::System,
                    "user" => ChatRole::User,
                    "assistant" => ChatRole::Assistant,
                    other => {
                        return Err(ApiError::invalid(
                            "messages",
                            format!(
                                "messages[{i}].role {other:?} is not system, developer, user or assistant"
                            ),
                        ));
                    }
                };
                let content = match &m.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t.clone(),
                    Some(Content::Parts(parts)) => {
                        let mut text = String::new();
                        for p in parts {
                            match (p.kind.as_str(), &p.text) {
                                ("text", Some(t)) => text.push_str(t),
                                (kind, _) => {
                                    return Err(ApiError::invalid(
                                        "messages",
                                        format!(
                                            "messages[{i}] has a content part of type {kind:?}; only text parts are served"
                                        ),
                                    ));
                                }
                            }
                        }
                        text
                    }
                };
                Ok(ChatMessage::new(role, content))
            })
            .collect()
    }
}

impl CompletionRequest {
    /// The one prompt.
    pub fn prompt(&self) -> Result<&str, ApiError> {
        match &self.prompt {
            Prompt::One(p) => Ok(p),
            Prompt::Many(v) if v.len() == 1 => Ok(&v[0]),
            Prompt::Many(v) => Err(ApiError::invalid(
                "prompt",
                format!(
                    "{} prompts given; this server takes one per request",
                    v.len()
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: SamplingDefaults = SamplingDefaults {
        temperature: 0.8,
        top_p: 0.9,
        seed: Some(7),
    };

    #[test]
    fn bodies_map_to_status_codes() {
        let bad_utf8 = parse_body::<ChatRequest>(b"{\"messages\": \"\xff\"}").unwrap_err();
        assert_eq!(bad_utf8.status, StatusCode::BAD_REQUEST);
        let bad_json = parse_body::<ChatRequest>(b"{\"messages\": [").unwrap_err();
        assert_eq!(bad_json.status, StatusCode::BAD_REQUEST);
        let wrong_type = parse_body::<ChatRequest>(br#"{"messages": 5}"#).unwrap_err();
        assert_eq!(wrong_type.status, StatusCode::UNPROCESSABLE_ENTITY);
        let wrong_field =
            parse_body::<ChatRequest>(br#"{"messages": [], "max_tokens": "ten"}"#).unwrap_err();
        assert_eq!(wrong_field.status, StatusCode::UNPROCESSABLE_ENTITY);
        let ok = parse_body::<ChatRequest>(
            br#"{"model": "x", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                "stop": "\n", "unknown": {"a": 1}, "presence_penalty": 0}"#,
        )
        .unwrap();
        assert_eq!(ok.messages().unwrap()[0].content, "hi");
        let body = wrong_type.body();
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn options_are_checked_against_the_context() {
        let mut c = CommonFields::default();
        let s = c.validate(&DEFAULTS, 100).unwrap();
        assert_eq!(
            (s.temperature, s.top_p, s.seed, s.max_tokens),
            (0.8, 0.9, 7, None)
        );
        c.max_tokens = Some(101);
        assert_eq!(
            c.validate(&DEFAULTS, 100).unwrap_err().param,
            Some("max_tokens")
        );
        c.max_tokens = Some(10);
        c.max_completion_tokens = Some(5);
        assert_eq!(c.validate(&DEFAULTS, 100).unwrap().max_tokens, Some(5));
        c.temperature = Some(-1.0);
        assert_eq!(
            c.validate(&DEFAULTS, 100).unwrap_err().param,
            Some("temperature")
        );
        c.temperature = Some(0.0);
        c.stop = Some(Stop::Many(vec!["a".into(), String::new()]));
        assert_eq!(
            c.validate(&DEFAULTS, 100).unwrap().stops,
            vec!["a".to_string()]
        );
        c.stop = Some(Stop::Many(vec!["a".into(); 5]));
        assert_eq!(c.validate(&DEFAULTS, 100).unwrap_err().param, Some("stop"));
    }
}
