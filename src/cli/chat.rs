//! `airllama chat`: a conversation over stdin, as `dllama chat`: the first line is the system
//! prompt (may be empty), every further non-empty line is a user message; the answer streams
//! until an end-of-turn token or stop text. The KV cache is kept across turns (each turn's
//! prompt is evaluated from where the previous answer ended). End of input ends the session
//! cleanly (the workers get the stop packet).
use std::io::{BufRead, Write};
use std::process::ExitCode;

use airllama::chat_template::{ChatMessage, ChatRole, ChatTemplate, ChatTemplateKind};
use airllama::root::{Step, prefill};
use airllama::tokenizer::StreamDecoder;
use anyhow::Context;

use super::inference::{RootArgs, Session, start};

/// Flags of `airllama chat`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub root: RootArgs,
}

fn prompt(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{text}");
    let _ = out.flush();
}

/// Reads one line without its line break; `None` at end of input.
fn read_line(input: &mut dyn BufRead) -> anyhow::Result<Option<String>> {
    let mut line = String::new();
    if input.read_line(&mut line).context("reading stdin")? == 0 {
        return Ok(None);
    }
    while line.ends_with('\n') || line.ends_with('\r') {
        line.pop();
    }
    Ok(Some(line))
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

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Session {
        mut root,
        tokenizer,
        mut sampler,
    } = start(&args.root)?;
    let kind = ChatTemplateKind::resolve(args.root.chat_template, tokenizer.chat_template())
        .context("choosing the chat template (pass --chat-template)")?;
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

    prompt("💻 System prompt (optional): ");
    let Some(system) = read_line(&mut input)? else {
        println!();
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
                    println!();
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
        if tokens.is_empty() {
            continue;
        }
        if u64::from(pos) + tokens.len() as u64 > u64::from(seq_len) {
            println!("\n(end of context)");
            break;
        }
        pos = prefill(&mut root, pos, &tokens, &mut |_: Step| {})?;
        let mut token = tokens[tokens.len() - 1];
        decoder.reset();
        let mut stop = StopText {
            stops: stops.clone(),
            pending: String::new(),
        };
        prompt("\n🤖 Assistant\n");
        if let Some(public) = &rendered.public_prompt {
            prompt(public);
        }
        let mut ended = false;
        while pos < seq_len {
            root.forward(pos, &[token])?;
            let logits = root.logits_mut()?;
            let logits = logits
                .get_mut(..vocab)
                .context("fewer logits than tokens")?;
            token = sampler.sample(logits).context("sampling")?;
            pos += 1;
            if tokenizer.is_eos(token) {
                ended = true;
                break;
            }
            let piece = decoder
                .decode(&tokenizer, token)
                .map(str::to_string)
                .unwrap_or_default();
            let (text, found) = stop.push(&piece);
            prompt(&text);
            if found {
                ended = true;
                break;
            }
        }
        let rest = stop.flush();
        prompt(&rest);
        prompt(decoder.finish());
        if !ended || pos >= seq_len {
            println!("\n(end of context)");
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
