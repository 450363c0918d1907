//! An OpenAI-compatible HTTP server over a started [`Root`] (`airllama api`).
//!
//! Two threads of work: the calling thread becomes the inference loop ([`engine`]), the only
//! code that touches the root, and a tokio runtime on its own threads serves HTTP ([`http`]).
//! Requests reach the inference loop through a bounded channel; a request that finds it full
//! is answered 503 at once, so a burst never piles up unbounded work behind the cluster.
//!
//! | route                       | answer |
//! |-----------------------------|--------|
//! | `POST /v1/chat/completions` | the conversation rendered with the tokenizer's chat template |
//! | `POST /v1/completions`      | the prompt continued, encoded as `airllama inference` does |
//! | `GET /v1/models`            | the loaded model, in OpenAI's list shape |
//! | `GET /health`               | status, queue length, whether a generation runs |
//! | `GET /`                     | a chat page (`page.html`, built into the binary) |
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (root, tokenizer, options): (airllama::root::Root, airllama::tokenizer::Tokenizer, airllama::api::ServerOptions) = todo!();
//! airllama::api::serve(root, tokenizer, options)?; // returns after Ctrl-C
//! # Ok(()) }
//! ```
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use airllama_kernels::backend::Backend;

use crate::chat_template::ChatTemplate;
use crate::root::{Root, RootError};
use crate::tokenizer::Tokenizer;

pub mod engine;
pub mod http;
pub mod protocol;
pub mod stop;

pub use protocol::SamplingDefaults;

/// Where the server's log lines go (the command prints them to stdout).
pub type Log = Arc<dyn Fn(String) + Send + Sync>;

/// How to serve.
pub struct ServerOptions {
    /// Address to listen on.
    pub host: String,
    /// Port (0: any free port; the log line says which).
    pub port: u16,
    /// How many requests may wait while one generates (at least 1).
    pub queue: usize,
    /// Largest request body in bytes; larger ones are answered 413.
    pub max_body: usize,
    /// The model's name in `/v1/models` and in answers.
    pub model_id: String,
    /// The chat template, or why there is none (chat is then refused with 400).
    pub template: Result<ChatTemplate, String>,
    /// Sampling options of requests that give none.
    pub defaults: SamplingDefaults,
    /// The kernels the sampler's softmax uses (the root's).
    pub backend: Backend,
    /// Log lines.
    pub log: Log,
    /// The key `/v1` requests must bear (`Authorization: Bearer KEY`); `None`: no check.
    pub api_key: Option<String>,
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("queue", &self.queue)
            .field("max_body", &self.max_body)
            .field("model_id", &self.model_id)
            .finish_non_exhaustive()
    }
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// `host:port`.
        address: String,
        /// The bind error.
        source: std::io::Error,
    },
    /// The async runtime could not start or failed.
    #[error("the HTTP runtime: {0}")]
    Runtime(std::io::Error),
    /// The cluster failed during a generation.
    #[error(transparent)]
    Root(#[from] RootError),
}

/// Serves until Ctrl-C or SIGTERM (or until the cluster fails), then sends the workers the stop packet.
/// The calling thread runs the inference loop; the root never leaves it.
pub fn serve(root: Root, tokenizer: Tokenizer, options: ServerOptions) -> Result<(), ServeError> {
    let shared = Arc::new(engine::Shared::default());
    let capacity = options.queue.max(1);
    let (jobs, receiver) = std::sync::mpsc::sync_channel(capacity);
    let tokenizer = Arc::new(tokenizer);
    let log = Arc::clone(&options.log);
    let app = Arc::new(http::App {
        tokenizer: Arc::clone(&tokenizer),
        template: options.template,
        model_id: options.model_id,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        seq_len: root.seq_len(),
        capacity,
        max_body: options.max_body,
        defaults: options.defaults,
        queue: Mutex::new(http::Queue { next: 0, jobs }),
        shared: Arc::clone(&shared),
        log: Arc::clone(&log),
        api_key: options.api_key,
    });
    let stop = Arc::new(tokio::sync::Notify::new());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<SocketAddr, ServeError>>();
    let address = format!("{}:{}", options.host, options.port);
    let server = {
        let stop = Arc::clone(&stop);
        let shared = Arc::clone(&shared);
        let log = Arc::clone(&log);
        std::thread::Builder::new()
            .name("airllama-http".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ServeError::Runtime(e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::bind(&address).await {
                        Ok(l) => l,
                        Err(source) => {
                            let _ = ready_tx.send(Err(ServeError::Bind { address, source }));
                            return;
                        }
                    };
                    let local = listener.local_addr();
                    let _ = ready_tx.send(local.map_err(ServeError::Runtime));
                    let shutdown_log = Arc::clone(&log);
                    // SIGTERM too: that is how service managers and `docker stop` ask.
                    let mut term = tokio::signal::unix::signal(
                        tokio::signal::unix::SignalKind::terminate(),
                    )
                    .map_err(|e| shutdown_log(format!("SIGTERM is not handled: {e}")))
                    .ok();
                    let shutdown = async move {
                        let terminated = async {
                            match term.as_mut() {
                                Some(t) => {
                                    t.recv().await;
                                }
                                None => std::future::pending::<()>().await,
                            }
                        };
                        tokio::select! {
                            _ = tokio::signal::ctrl_c() => {}
                            _ = terminated => {}
                            _ = stop.notified() => return,
                        }
                        shared.shutdown.store(true, Ordering::SeqCst);
                        shutdown_log(
                            "stopping: the running request is cut short, the workers get the stop packet"
                                .into(),
                        );
                    };
                    let served = axum::serve(listener, http::router(app))
                        .with_graceful_shutdown(shutdown)
                        .await;
                    if let Err(e) = served {
                        log(format!("HTTP server error: {e}"));
                    }
                });
            })
            .map_err(ServeError::Runtime)?
    };
    let local = match ready_rx.recv() {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            let _ = server.join();
            return Err(e);
        }
        Err(_) => {
            let _ = server.join();
            return Err(ServeError::Runtime(std::io::Error::other(
                "the HTTP thread ended before listening",
            )));
        }
    };
    log(format!(
        "🌐 Listening on http://{local} (OpenAI API at http://{local}/v1, chat page at http://{local}/)"
    ));
    let engine = engine::Engine::new(root, tokenizer, options.backend, shared, Arc::clone(&log));
    let result = engine.run(receiver);
    // After a cluster failure the HTTP side is still up: stop it (the requests in flight get
    // their error first, graceful shutdown waits for them).
    stop.notify_one();
    let _ = server.join();
    result.map_err(ServeError::from)
}
