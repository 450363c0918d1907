//! The inference loop: one thread owns the [`Root`] and runs one job at a time, taken from a
//! bounded channel in arrival order, and sends the answer back piece by piece.
//!
//! The KV cache is kept between jobs. The tokens whose keys and values it holds (positions
//! `0..cached.len()`) are remembered, and a job whose prompt starts with some of them only
//! evaluates the rest: a chat client resends the whole conversation each turn, so each turn
//! costs its new messages, not the conversation. Overwriting the cache from an earlier position
//! is all it takes to forget the rest, since attention at position `p` reads only `0..=p`.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use airllama_kernels::backend::Backend;
use tokio::sync::mpsc::UnboundedSender;

use crate::root::{Root, RootError, prefill};
use crate::sampler::Sampler;
use crate::tokenizer::{StreamDecoder, Tokenizer};

use super::protocol::Sampling;
use super::stop::StopText;

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-turn token or a stop string (`"stop"`).
    Stop,
    /// `max_tokens` or the end of the context (`"length"`).
    Length,
    /// The client went away or the server is shutting down; nobody reads the answer.
    Cancelled,
}

impl Finish {
    /// OpenAI's `finish_reason`.
    pub fn reason(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length | Finish::Cancelled => "length",
        }
    }
}

/// Token counts of a finished job (OpenAI's `usage`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: u32,
    /// Of those, tokens whose KV entries were reused from the previous job.
    pub cached_tokens: u32,
    /// Tokens sampled.
    pub completion_tokens: u32,
}

/// What the inference thread tells a request's handler.
#[derive(Debug)]
pub enum Event {
    /// More answer text.
    Text(String),
    /// The answer is complete.
    Done {
        /// Why it ended.
        finish: Finish,
        /// Token counts.
        usage: Usage,
    },
    /// The cluster failed (the server stops after this).
    Failed(String),
}

/// One request for the inference thread.
#[derive(Debug)]
pub struct Job {
    /// The response id (`chatcmpl-N`, `cmpl-N`), for the logs.
    pub id: String,
    /// The encoded prompt (at least one token, shorter than the context).
    pub tokens: Vec<u32>,
    /// Text to show before the generated tokens (deepSeek3's `<think>\n`).
    pub preface: Option<String>,
    /// Validated options.
    pub sampling: Sampling,
    /// Where the answer goes; closed when the client is gone.
    pub events: UnboundedSender<Event>,
    /// Set by the handler when its client disconnects.
    pub cancel: Arc<AtomicBool>,
    /// When the job was queued.
    pub queued_at: Instant,
}

/// State shared by the inference thread and the HTTP handlers.
#[derive(Debug, Default)]
pub struct Shared {
    /// Jobs waiting in the channel.
    pub queued: AtomicUsize,
    /// A job is running.
    pub busy: AtomicBool,
    /// Ctrl-C: stop the running job and take no more.
    pub shutdown: AtomicBool,
}

/// The inference thread's state: the root, what its KV cache holds, and how to sample.
pub struct Engine {
    root: Root,
    tokenizer: Arc<Tokenizer>,
    backend: Backend,
    /// Texts of the end-of-turn tokens, also stopped at when they come out as plain text.
    eos_texts: Vec<String>,
    /// Tokens whose KV entries are at positions `0..cached.len()`.
    cached: Vec<u32>,
    shared: Arc<Shared>,
    log: super::Log,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("cached", &self.cached.len())
            .finish_non_exhaustive()
    }
}

/// An error and its causes on one line (a root error's own text is only "root node"; the
/// worker and the failed operation are in its sources).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    line
}

/// Length of the common prefix of two token lists.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Engine {
    /// An engine over a started root.
    pub fn new(
        root: Root,
        tokenizer: Arc<Tokenizer>,
        backend: Backend,
        shared: Arc<Shared>,
        log: super::Log,
    ) -> Engine {
        let eos_texts = tokenizer
            .eos_ids()
            .iter()
            .filter_map(|&id| tokenizer.piece(id))
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .filter(|s| !s.is_empty())
            .collect();
        Engine {
            root,
            tokenizer,
            backend,
            eos_texts,
            cached: Vec::new(),
            shared,
            log,
        }
    }

    /// Runs jobs until every sender is gone (the HTTP server stopped), then sends the workers
    /// the stop packet. A root error is sent to the job that met it and ends the loop: the
    /// cluster is then in an unknown state, so the server stops rather than answer from it.
    pub fn run(mut self, jobs: std::sync::mpsc::Receiver<Job>) -> Result<(), RootError> {
        for job in jobs {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            if self.shared.shutdown.load(Ordering::SeqCst) {
                let _ = job
                    .events
                    .send(Event::Failed("the server is shutting down".into()));
                continue;
            }
            if job.cancel.load(Ordering::SeqCst) || job.events.is_closed() {
                (self.log)(format!("{}: client gone while queued; skipped", job.id));
                continue;
            }
            // The handlers check this before queueing; a job that slipped through is refused
            // here rather than met as a root error, which would stop the server.
            let n = job.tokens.len();
            if n == 0 || n >= self.root.seq_len() as usize {
                let _ = job.events.send(Event::Failed(format!(
                    "a prompt of {n} tokens does not fit a context of {}",
                    self.root.seq_len()
                )));
                continue;
            }
            self.shared.busy.store(true, Ordering::SeqCst);
            let result = self.run_job(&job);
            self.shared.busy.store(false, Ordering::SeqCst);
            if let Err(e) = result {
                // The KV cache may hold a half-written forward.
                self.cached.clear();
                let why = with_causes(&e);
                let _ = job
                    .events
                    .send(Event::Failed(format!("the cluster failed: {why}")));
                (self.log)(format!("{}: the cluster failed: {why}", job.id));
                return Err(e);
            }
        }
        self.root.finish()
    }

    fn run_job(&mut self, job: &Job) -> Result<(), RootError> {
        let started = Instant::now();
        let tokens = &job.tokens;
        let n = tokens.len();
        let seq_len = self.root.seq_len();
        // The last prompt token always goes through a forward of its own: its logits give
        // the first answer token.
        let reuse = common_prefix(&self.cached, tokens).min(n.saturating_sub(1));
        self.cached.truncate(reuse);
        (self.log)(format!(
            "{}: started after {} ms in the queue; {n} prompt tokens, {reuse} reused from the KV cache, {} to evaluate",
            job.id,
            job.queued_at.elapsed().as_millis(),
            n - reuse
        ));
        let s = &job.sampling;
        let vocab = self.tokenizer.vocab_size();
        // The options were validated by the handler; a sampler that still cannot be built is
        // this request's problem, not the cluster's.
        let mut sampler = match Sampler::new(self.backend, vocab, s.temperature, s.top_p, s.seed) {
            Ok(sampler) => sampler,
            Err(e) => {
                let _ = job
                    .events
                    .send(Event::Failed(format!("sampling options: {e}")));
                return Ok(());
            }
        };
        // `run` refused empty prompts, and `reuse < n`.
        let (Some(&last), Some(rest)) = (tokens.last(), tokens.get(reuse..n - 1)) else {
            let _ = job.events.send(Event::Failed("an empty prompt".into()));
            return Ok(());
        };
        let mut pos = prefill(&mut self.root, reuse as u32, &tokens[reuse..], &mut |_| {})?;
        self.cached.extend_from_slice(rest);
        let prefilled = started.elapsed();

        let mut stops = self.eos_texts.clone();
        stops.extend(s.stops.iter().cloned());
        let mut stop = StopText::new(stops);
        let mut decoder = StreamDecoder::new();
        let max_tokens = s.max_tokens.unwrap_or(u32::MAX);
        let mut generated = 0u32;
        let mut token = last;
        let mut finish = Finish::Length;
        let mut stop_string = false;
        let gone = |job: &Job| {
            job.cancel.load(Ordering::SeqCst)
                || job.events.is_closed()
                || self.shared.shutdown.load(Ordering::SeqCst)
        };
        if let Some(text) = &job.preface
            && job.events.send(Event::Text(text.clone())).is_err()
        {
            finish = Finish::Cancelled;
        }
        while finish != Finish::Cancelled && generated < max_tokens && pos < seq_len {
            if gone(job) {
                finish = Finish::Cancelled;
                break;
            }
            self.root.forward(pos, &[token])?;
            self.cached.push(token);
            pos += 1;
            let logits = self.root.logits_mut()?;
            let logits = logits.get_mut(..vocab).ok_or(RootError::Sample {
                position: pos,
                what: "fewer logits than tokens".into(),
            })?;
            token = sampler.sample(logits).map_err(|e| RootError::Sample {
                position: pos,
                what: e.to_string(),
            })?;
            generated += 1;
            if self.tokenizer.is_eos(token) {
                finish = Finish::Stop;
                break;
            }
            let piece = decoder
                .decode(&self.tokenizer, token)
                .map(str::to_string)
                .unwrap_or_default();
            let (text, found) = stop.push(&piece);
            if !text.is_empty() && job.events.send(Event::Text(text)).is_err() {
                finish = Finish::Cancelled;
                break;
            }
            if found {
                finish = Finish::Stop;
                stop_string = true;
                break;
            }
        }
        if !stop_string {
            // Held-back text that never became a stop string belongs to the answer (also
            // when an end-of-turn token came right after it).
            let mut rest = stop.flush();
            rest.push_str(decoder.finish());
            if !rest.is_empty() {
                let _ = job.events.send(Event::Text(rest));
            }
        }
        let usage = Usage {
            prompt_tokens: n as u32,
            cached_tokens: reuse as u32,
            completion_tokens: generated,
        };
        let elapsed = started.elapsed();
        let decode = elapsed.saturating_sub(prefilled);
        (self.log)(format!(
            "{}: {} after {generated} tokens{}; prefill {} ms, {:.1} tok/s",
            job.id,
            match finish {
                Finish::Stop => "stopped",
                Finish::Length => "reached the length limit",
                Finish::Cancelled => "client disconnected, cluster freed",
            },
            match s.max_tokens {
                Some(m) => format!(" of max {m}"),
                None => String::new(),
            },
            prefilled.as_millis(),
            if decode.is_zero() {
                0.0
            } else {
                f64::from(generated) / decode.as_secs_f64()
            }
        ));
        let _ = job.events.send(Event::Done { finish, usage });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::common_prefix;

    #[test]
    fn common_prefix_counts_equal_leading_tokens() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
        assert_eq!(common_prefix(&[9], &[1]), 0);
    }
}
