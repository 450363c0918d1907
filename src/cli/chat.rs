//! `airllama chat`: a conversation over stdin, as `dllama chat`: the first line is the system
//! prompt (may be empty), every further non-empty line is a user message; the answer streams
//! until an end-of-turn token or stop text, `--max-tokens`, or Ctrl-C. The KV cache is kept
//! across turns (each turn's prompt is evaluated from where the previous answer ended). End of
//! input ends the session cleanly (the workers get the stop packet).
//!
//! Ctrl-C while an answer streams stops that answer and returns to the prompt; a second Ctrl-C
//! before the answer has stopped, or Ctrl-C at the prompt, ends the program (dying of SIGINT,
//! as a shell expects). Input that is not UTF-8 is decoded with replacement characters, so a
//! stray byte costs one character, not the session.
use std::ffi::c_int;
use std::io::BufRead;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use airllama::chat_template::{ChatMessage, ChatRole, ChatTemplate, ChatTemplateKind};
use airllama::root::{Step, prefill};
use airllama::tokenizer::StreamDecoder;
use anyhow::Context;

use super::inference::{RootArgs, Session, say, start};
use super::output::write_out;

/// Flags of `airllama chat`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub root: RootArgs,
    /// Most tokens per reply (default: until the end of the turn or of the context), as
    /// llama.cpp's `-n`.
    #[arg(long, short = 'n', alias = "n-predict", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tokens: Option<u32>,
}

fn prompt(text: &str) {
    write_out(text);
}

/// Reads one line without its line break, invalid UTF-8 replaced by U+FFFD; `None` at end of
/// input.
fn read_line(input: &mut dyn BufRead) -> anyhow::Result<Option<String>> {
    let mut bytes = Vec::new();
    if input
        .read_until(b'\n', &mut bytes)
        .context("reading stdin")?
        == 0
    {
        return Ok(None);
    }
    while bytes.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
        bytes.pop();
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// What Ctrl-C does now: [`AT_PROMPT`] ends the program, [`ANSWERING`] asks the answer to
/// stop (and moves to [`STOPPING`]), [`STOPPING`] (a second Ctrl-C) ends the program.
static INTERRUPT: AtomicU8 = AtomicU8::new(AT_PROMPT);
const AT_PROMPT: u8 = 0;
const ANSWERING: u8 = 1;
const STOPPING: u8 = 2;

/// The SIGINT handler: only atomics, `signal`, `raise` and `write`, all async-signal-safe.
extern "C" fn on_interrupt(signal: c_int) {
    if INTERRUPT
        .compare_exchange(ANSWERING, STOPPING, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        return;
    }
    // SAFETY: async-signal-safe calls with a static buffer; with the default action restored
    // the raised SIGINT ends the process once this handler returns.
    unsafe {
        let newline = b"\n";
        libc::write(1, newline.as_ptr().cast(), 1);
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

/// Installs [`on_interrupt`] for SIGINT, unless SIGINT was ignored when the process started
/// (a background job): then Ctrl-C cannot reach it anyway.
fn install_interrupt_handler() -> anyhow::Result<()> {
    // SAFETY: reads the current action into a zeroed struct (the new-action pointer is null),
    // then installs a fully initialised one whose handler is async-signal-safe.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGINT, std::ptr::null(), &mut old) != 0 {
            return Err(std::io::Error::last_os_error()).context("reading the SIGINT action");
        }
        if old.sa_sigaction == libc::SIG_IGN {
            return Ok(());
        }
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_interrupt as extern "C" fn(c_int) as usize;
        // SA_RESTART: a read or a socket wait that the signal lands in resumes.
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error()).context("installing the SIGINT handler");
        }
    }
    Ok(())
}

/// Holds back generated text that could be the start of a stop string (an eos token's text
/// produced through regular tokens, as dllama's `EosDetector` does).
struct StopText {
    stops: Vec<String>,
    pending: String,
}

impl StopText {
    /// Appends `piece`; returns the text safe to print and whether a stop string was found
    /// (the stop string and anything after it are dropped).
    fn push(&mut self, piece: &str) -> (String, bool) {
        self.pending.push_str(piece);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // Keep the longest suffix that is a proper prefix of a stop string.
        let mut keep = 0;
        for stop in &self.stops {
            for (i, _) in stop.char_indices().skip(1) {
                if i > keep && self.pending.ends_with(&stop[..i]) {
                    keep = i;
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Why an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// An end-of-turn token or stop text.
    Turn,
    /// Ctrl-C.
    Interrupted,
    /// `--max-tokens`.
    MaxTokens,
    /// The context is full.
    Context,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Session {
        mut root,
        tokenizer,
        mut sampler,
    } = start(&args.root)?;
    let kind = ChatTemplateKind::resolve(args.root.chat_template, tokenizer.chat_template())
        .context("choosing the chat template (pass --chat-template)")?;
    let source = if args.root.chat_template.is_some() {
        "--chat-template"
    } else {
        "detected from the tokenizer"
    };
    say(&format!("💬 Chat template: {kind} ({source})"));
    let piece_text =
        |id: u32| String::from_utf8_lossy(tokenizer.piece(id).unwrap_or_default()).into_owned();
    let stops: Vec<String> = tokenizer
        .eos_ids()
        .iter()
        .map(|&id| piece_text(id))
        .filter(|s| !s.is_empty())
        .collect();
    let first_eos = stops.first().cloned().unwrap_or_default();
    let template = ChatTemplate::new(kind, first_eos);
    let seq_len = root.seq_len();
    let vocab = tokenizer.vocab_size();
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    install_interrupt_handler()?;

    prompt("💻 System prompt (optional): ");
    let Some(system) = read_line(&mut input)? else {
        prompt("\n");
        root.finish()?;
        return Ok(ExitCode::SUCCESS);
    };
    let mut pending_messages = Vec::new();
    if !system.is_empty() {
        pending_messages.push(ChatMessage::new(ChatRole::System, system));
    }
    let mut pos: u32 = 0;
    let mut decoder = StreamDecoder::new();
    'session: loop {
        let user = loop {
            prompt("\n👱 User\n> ");
            match read_line(&mut input)? {
                None => {
                    prompt("\n");
                    break 'session;
                }
                Some(line) if line.is_empty() => continue,
                Some(line) => break line,
            }
        };
        pending_messages.push(ChatMessage::new(ChatRole::User, user));
        let rendered = template.render(&pending_messages, true);
        pending_messages.clear();
        let tokens = tokenizer
            .encode(&rendered.text, pos == 0, true)
            .context("encoding the chat prompt")?;
        let Some(&last) = tokens.last() else {
            continue;
        };
        if u64::from(pos) + tokens.len() as u64 > u64::from(seq_len) {
            prompt("\n(end of context)\n");
            break;
        }
        INTERRUPT.store(ANSWERING, Ordering::Release);
        let started = Instant::now();
        pos = prefill(&mut root, pos, &tokens, &mut |_: Step| {})?;
        let prefilled = Instant::now();
        let mut token = last;
        decoder.reset();
        let mut stop = StopText {
            stops: stops.clone(),
            pending: String::new(),
        };
        prompt("\n🤖 Assistant\n");
        if let Some(public) = &rendered.public_prompt {
            prompt(public);
        }
        let mut generated: u32 = 0;
        let ended = loop {
            if INTERRUPT.load(Ordering::Acquire) == STOPPING {
                break Ended::Interrupted;
            }
            if args.max_tokens.is_some_and(|max| generated >= max) {
                break Ended::MaxTokens;
            }
            if pos >= seq_len {
                break Ended::Context;
            }
            root.forward(pos, &[token])?;
            let logits = root.logits_mut()?;
            let logits = logits
                .get_mut(..vocab)
                .context("fewer logits than tokens")?;
            token = sampler.sample(logits).context("sampling")?;
            pos += 1;
            generated += 1;
            if tokenizer.is_eos(token) {
                break Ended::Turn;
            }
            let piece = decoder
                .decode(&tokenizer, token)
                .map(str::to_string)
                .unwrap_or_default();
            let (text, found) = stop.push(&piece);
            prompt(&text);
            if found {
                break Ended::Turn;
            }
        };
        INTERRUPT.store(AT_PROMPT, Ordering::Release);
        let rest = stop.flush();
        prompt(&rest);
        prompt(decoder.finish());
        match ended {
            Ended::Interrupted => prompt("\n(stopped by Ctrl-C; Ctrl-C at the prompt quits)"),
            Ended::MaxTokens => prompt(&format!(
                "\n(stopped at --max-tokens {})",
                args.max_tokens.unwrap_or_default()
            )),
            Ended::Turn | Ended::Context => {}
        }
        if args.root.verbose {
            let decode = prefilled.elapsed().as_secs_f64();
            let rate = if decode > 0.0 {
                f64::from(generated) / decode
            } else {
                0.0
            };
            prompt(&format!(
                "\n(prompt: {} tokens in {} ms; reply: {generated} tokens, {rate:.2} tokens/s; \
                 context: {pos} of {seq_len})",
                tokens.len(),
                (prefilled - started).as_millis()
            ));
        }
        if ended == Ended::Context || pos >= seq_len {
            prompt("\n(end of context)\n");
            break;
        }
    }
    root.finish()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::StopText;

    #[test]
    fn stop_text_holds_back_prefixes_and_cuts_at_stops() {
        let mut s = StopText {
            stops: vec!["<|im_end|>".into()],
            pending: String::new(),
        };
        assert_eq!(s.push("Hello <|im"), ("Hello ".to_string(), false));
        assert_eq!(s.push("_en"), (String::new(), false));
        assert_eq!(s.push("d|> tail"), (String::new(), true));
        assert_eq!(s.push("a<b"), ("a<b".to_string(), false));
        assert_eq!(s.push("<"), (String::new(), false));
        assert_eq!(s.flush(), "<");
    }
}
