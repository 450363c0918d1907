//! The HTTP side: axum routes, request checks, the queue hand-off, and the answers (one JSON
//! body, or Server-Sent Events in OpenAI's chunk format ending with `data: [DONE]`).
//!
//! Handlers never touch the root: they validate and encode the prompt, put a [`Job`] into the
//! bounded channel of the inference thread (a full channel is a 503 at once), and turn the
//! [`Event`]s that come back into the response. Dropping a response (the client hung up)
//! drops its [`CancelOnDrop`], which the inference thread sees before its next forward.
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::chat_template::ChatTemplate;
use crate::tokenizer::Tokenizer;

use super::Log;
use super::engine::{Event, Job, Shared, Usage};
use super::protocol::{
    ApiError, ChatRequest, CompletionRequest, Sampling, SamplingDefaults, parse_body,
};

/// The chat page served at `/`.
const PAGE: &str = include_str!("page.html");

/// The id counter and the sender, locked together so ids follow the queue order.
#[derive(Debug)]
pub struct Queue {
    /// The last id handed out.
    pub next: u64,
    /// The inference thread's bounded channel.
    pub jobs: SyncSender<Job>,
}

/// What every handler sees.
pub struct App {
    /// The tokenizer (encoding happens here, before the queue).
    pub tokenizer: Arc<Tokenizer>,
    /// The chat template, or why there is none.
    pub template: Result<ChatTemplate, String>,
    /// The name `/v1/models` gives the loaded model.
    pub model_id: String,
    /// When the server started (Unix seconds), the model's `created`.
    pub created: u64,
    /// Context length in tokens.
    pub seq_len: u32,
    /// How many jobs may wait.
    pub capacity: usize,
    /// Largest request body in bytes.
    pub max_body: usize,
    /// Defaults of the sampling options.
    pub defaults: SamplingDefaults,
    /// The hand-off to the inference thread.
    pub queue: Mutex<Queue>,
    /// Queue length, busy flag, shutdown flag.
    pub shared: Arc<Shared>,
    /// Where log lines go.
    pub log: Log,
    /// The key `/v1` requests must bear (`Authorization: Bearer KEY`), if one is set.
    pub api_key: Option<String>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("model_id", &self.model_id)
            .field("seq_len", &self.seq_len)
            .finish_non_exhaustive()
    }
}

/// Marks a job cancelled when the response that waits for it is dropped.
#[derive(Debug)]
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The routes, with the body limit applied to every request.
pub fn router(app: Arc<App>) -> Router {
    let max_body = app.max_body;
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(app)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("no route for {method} {}", uri.path()),
    )
    .with_code("not_found")
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("{} does not take {method}", uri.path()),
    )
}

async fn health(State(app): State<Arc<App>>) -> Response {
    axum::Json(json!({
        "status": "ok",
        "model": app.model_id,
        "busy": app.shared.busy.load(Ordering::SeqCst),
        "queued": app.shared.queued.load(Ordering::SeqCst),
        "queue_capacity": app.capacity,
    }))
    .into_response()
}

fn model_object(app: &App) -> Value {
    json!({
        "id": app.model_id,
        "object": "model",
        "created": app.created,
        "owned_by": "airllama",
        "context_length": app.seq_len,
    })
}

/// Checks `Authorization: Bearer KEY` when the server has a key (OpenAI's 401 otherwise). The
/// comparison takes the same time wherever the first difference is, so timing does not tell
/// an attacker how much of a guess was right.
fn authorize(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &app.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .trim();
    let same = given.len() == key.len()
        && given
            .bytes()
            .zip(key.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "missing or incorrect API key (send Authorization: Bearer KEY with the server's --api-key)",
        )
        .with_code("invalid_api_key"))
    }
}

async fn models(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&app, &headers) {
        return e.into_response();
    }
    axum::Json(json!({ "object": "list", "data": [model_object(&app)] })).into_response()
}

async fn model(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = authorize(&app, &headers) {
        return e.into_response();
    }
    if id == app.model_id {
        axum::Json(model_object(&app)).into_response()
    } else {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "the model {id:?} does not exist; this server runs {:?}",
                app.model_id
            ),
        )
        .with_code("model_not_found")
        .into_response()
    }
}

/// Reads a request body of at most `app.max_body` bytes. A declared `Content-Length` over the
/// limit is refused before any of the body is read, so a client waiting on
/// `Expect: 100-continue` gets its 413 instead of an invitation to send it.
async fn read_body(app: &App, request: Request) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!(
                "the request body is larger than this server's limit of {} bytes (--max-body)",
                app.max_body
            ),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > app.max_body as u64) {
        return Err(too_large());
    }
    // A chunked body has no declared length: the router's DefaultBodyLimit stops it while
    // it is read.
    <Bytes as FromRequest<()>>::from_request(request, &())
        .await
        .map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::new(r.status(), "invalid_request_error", r.body_text())
            }
        })
}

/// The two endpoints differ only in their prompt and their JSON shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

async fn chat(State(app): State<Arc<App>>, request: Request) -> Response {
    let result = async {
        authorize(&app, request.headers())?;
        let body = read_body(&app, request).await?;
        let req: ChatRequest = parse_body(&body)?;
        let sampling = req.common.validate(&app.defaults, app.seq_len)?;
        let messages = req.messages()?;
        let template = app.template.as_ref().map_err(|why| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("chat is not available: {why}; use /v1/completions"),
            )
        })?;
        let rendered = template.render(&messages, true);
        let tokens = encode(&app, rendered.text, "messages").await?;
        answer(&app, Kind::Chat, tokens, rendered.public_prompt, sampling).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

async fn completions(State(app): State<Arc<App>>, request: Request) -> Response {
    let result = async {
        authorize(&app, request.headers())?;
        let body = read_body(&app, request).await?;
        let req: CompletionRequest = parse_body(&body)?;
        let sampling = req.common.validate(&app.defaults, app.seq_len)?;
        let prompt = req.prompt()?.to_string();
        let tokens = encode(&app, prompt, "prompt").await?;
        answer(&app, Kind::Completion, tokens, None, sampling).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// Encodes a prompt as `airllama inference` does (bos, special tokens recognised) on a
/// blocking thread (a megabyte of text takes a while), and checks it leaves room to answer.
async fn encode(app: &Arc<App>, text: String, param: &'static str) -> Result<Vec<u32>, ApiError> {
    let tokenizer = Arc::clone(&app.tokenizer);
    let tokens = tokio::task::spawn_blocking(move || tokenizer.encode(&text, true, true))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                format!("encoding the prompt: {e}"),
            )
        })?
        .map_err(|e| ApiError::invalid(param, format!("the prompt cannot be encoded: {e}")))?;
    if tokens.is_empty() {
        return Err(ApiError::invalid(param, "the prompt encodes to no tokens"));
    }
    if tokens.len() >= app.seq_len as usize {
        return Err(ApiError::invalid(
            param,
            format!(
                "This model's maximum context length is {} tokens. However, your prompt resulted in {} tokens, leaving no room for an answer.",
                app.seq_len,
                tokens.len()
            ),
        )
        .with_code("context_length_exceeded"));
    }
    Ok(tokens)
}

/// Puts a job into the queue: 503 when it is full or the inference thread has stopped.
fn submit(
    app: &App,
    kind: Kind,
    tokens: Vec<u32>,
    preface: Option<String>,
    sampling: Sampling,
) -> Result<(String, UnboundedReceiver<Event>, CancelOnDrop), ApiError> {
    let (events, receiver) = unbounded_channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let mut queue = app.queue.lock().map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the queue lock is poisoned",
        )
    })?;
    let id = format!(
        "{}-{}",
        match kind {
            Kind::Chat => "chatcmpl",
            Kind::Completion => "cmpl",
        },
        queue.next + 1
    );
    let n = tokens.len();
    let stream = sampling.stream;
    let job = Job {
        id: id.clone(),
        tokens,
        preface,
        sampling,
        events,
        cancel: Arc::clone(&cancel),
        queued_at: Instant::now(),
    };
    // Counted before it is sent: the inference thread decrements as it takes it.
    let waiting = app.shared.queued.fetch_add(1, Ordering::SeqCst);
    match queue.jobs.try_send(job) {
        Ok(()) => {}
        Err(e) => {
            app.shared.queued.fetch_sub(1, Ordering::SeqCst);
            let message = match e {
                TrySendError::Full(_) => format!(
                    "the server is busy: {} requests already wait for the cluster; try again later",
                    app.capacity
                ),
                TrySendError::Disconnected(_) => "the inference thread has stopped".to_string(),
            };
            (app.log)(format!("refused a request with 503: {message}"));
            return Err(
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
                    .with_code("server_busy"),
            );
        }
    }
    queue.next += 1;
    drop(queue);
    (app.log)(format!(
        "{id}: queued ({n} prompt tokens, {}, {waiting} ahead)",
        if stream { "streamed" } else { "one answer" }
    ));
    Ok((id, receiver, CancelOnDrop(cancel)))
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": u.cached_tokens },
    })
}

fn failed(why: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        format!("the request could not be answered: {why}"),
    )
}

async fn answer(
    app: &Arc<App>,
    kind: Kind,
    tokens: Vec<u32>,
    preface: Option<String>,
    sampling: Sampling,
) -> Result<Response, ApiError> {
    let stream = sampling.stream;
    let include_usage = sampling.include_usage;
    let (id, mut events, guard) = submit(app, kind, tokens, preface, sampling)?;
    let created = unix_now();
    let model = app.model_id.clone();
    if stream {
        let chunks = Chunks {
            kind,
            id,
            created,
            model,
            include_usage,
            events,
            _guard: guard,
            out: VecDeque::new(),
            ended: false,
        };
        let stream = futures_util::stream::unfold(chunks.start(), |mut c| async move {
            c.next().await.map(|e| (Ok::<_, Infallible>(e), c))
        });
        return Ok(Sse::new(stream)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(2)))
            .into_response());
    }
    let mut text = String::new();
    loop {
        match events.recv().await {
            Some(Event::Text(t)) => text.push_str(&t),
            Some(Event::Done { finish, usage }) => {
                drop(guard);
                let choice = match kind {
                    Kind::Chat => json!({
                        "index": 0,
                        "message": { "role": "assistant", "content": text },
                        "logprobs": null,
                        "finish_reason": finish.reason(),
                    }),
                    Kind::Completion => json!({
                        "index": 0,
                        "text": text,
                        "logprobs": null,
                        "finish_reason": finish.reason(),
                    }),
                };
                return Ok(axum::Json(json!({
                    "id": id,
                    "object": match kind {
                        Kind::Chat => "chat.completion",
                        Kind::Completion => "text_completion",
                    },
                    "created": created,
                    "model": model,
                    "choices": [choice],
                    "usage": usage_json(&usage),
                }))
                .into_response());
            }
            Some(Event::Failed(why)) => return Err(failed(&why)),
            None => return Err(failed("the server stopped")),
        }
    }
}

/// The state of one streamed answer: events in, SSE events out.
struct Chunks {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    events: UnboundedReceiver<Event>,
    _guard: CancelOnDrop,
    out: VecDeque<SseEvent>,
    ended: bool,
}

impl Chunks {
    fn chunk(&self, delta: Value, finish: Option<&str>, usage: Option<Value>) -> SseEvent {
        let choice = match self.kind {
            Kind::Chat => json!({
                "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish,
            }),
            Kind::Completion => json!({
                "index": 0,
                "text": delta.get("content").cloned().unwrap_or(Value::String(String::new())),
                "logprobs": null,
                "finish_reason": finish,
            }),
        };
        let mut body = json!({
            "id": self.id,
            "object": self.object(),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if let (Some(u), Some(map)) = (usage, body.as_object_mut()) {
            map.insert("usage".into(), u);
        }
        SseEvent::default().data(body.to_string())
    }

    /// OpenAI's object name of a streamed chunk of this kind.
    fn object(&self) -> &'static str {
        match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        }
    }

    /// Queues OpenAI's first chat chunk, which names the role.
    fn start(mut self) -> Chunks {
        if self.kind == Kind::Chat {
            let first = self.chunk(json!({ "role": "assistant", "content": "" }), None, None);
            self.out.push_back(first);
        }
        self
    }

    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(e) = self.out.pop_front() {
                return Some(e);
            }
            if self.ended {
                return None;
            }
            match self.events.recv().await {
                Some(Event::Text(t)) => {
                    let c = self.chunk(json!({ "content": t }), None, None);
                    self.out.push_back(c);
                }
                Some(Event::Done { finish, usage }) => {
                    let last =
                        self.chunk(json!({}), Some(finish.reason()), Some(usage_json(&usage)));
                    self.out.push_back(last);
                    if self.include_usage {
                        let body = json!({
                            "id": self.id,
                            "object": self.object(),
                            "created": self.created,
                            "model": self.model,
                            "choices": [],
                            "usage": usage_json(&usage),
                        });
                        self.out
                            .push_back(SseEvent::default().data(body.to_string()));
                    }
                    self.out.push_back(SseEvent::default().data("[DONE]"));
                    self.ended = true;
                }
                Some(Event::Failed(why)) => {
                    self.out
                        .push_back(SseEvent::default().data(failed(&why).body().to_string()));
                    self.ended = true;
                }
                None => {
                    let e = failed("the server stopped");
                    self.out
                        .push_back(SseEvent::default().data(e.body().to_string()));
                    self.ended = true;
                }
            }
        }
    }
}
