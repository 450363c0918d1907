//! `airllama api`: the root of a cluster (or one node) serving OpenAI's HTTP API
//! (`/v1/chat/completions`, `/v1/completions`, `/v1/models`), a health check and a chat page.
//! The root flags are `inference`'s and `chat`'s; `--temperature`, `--topp` and `--seed` are
//! the defaults of requests that do not set them.
use std::process::ExitCode;
use std::sync::Arc;

use airllama::api::{SamplingDefaults, ServerOptions};
use airllama::chat_template::ChatTemplate;
use airllama_kernels::backend::Backend;
use anyhow::Context;

use super::inference::{RootArgs, Session, say, start};

/// Flags of `airllama api`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub root: RootArgs,
    /// Address to listen on (0.0.0.0 for every interface; the API has no authentication).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 9990)]
    pub port: u16,
    /// Requests that may wait while one generates; more are answered 503.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub queue: u32,
    /// Largest request body (e.g. 1M); larger ones are answered 413.
    #[arg(long, default_value = "1M", value_parser = airllama::streaming::parse_size)]
    pub max_body: u64,
    /// The model's name in /v1/models and in answers (default: the model file's name
    /// without its extension).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Require `Authorization: Bearer KEY` on /v1 requests (default: $AIRLLAMA_API_KEY,
    /// which keeps the key out of the process list; unset: no key is checked).
    #[arg(long)]
    pub api_key: Option<String>,
}

/// Runs the subcommand until Ctrl-C.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Session {
        root,
        tokenizer,
        sampler,
    } = start(&args.root)?;
    let template =
        ChatTemplate::for_tokenizer(args.root.chat_template, &tokenizer).map_err(|e| e.to_string());
    match &template {
        Ok(t) => say(&format!("💬 Chat template: {}", t.kind())),
        Err(why) => say(&format!(
            "💬 No chat template ({why}): /v1/chat/completions is refused"
        )),
    }
    let model_id = args.model_name.clone().unwrap_or_else(|| {
        args.root
            .model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "airllama".into())
    });
    let options = ServerOptions {
        host: args.host.clone(),
        port: args.port,
        queue: args.queue as usize,
        max_body: usize::try_from(args.max_body).context("--max-body")?,
        model_id,
        template,
        // The sampler `start` built holds the root flags' values, its generator still at the
        // resolved seed. Without --seed each request draws its own (OpenAI's behaviour).
        defaults: SamplingDefaults {
            temperature: sampler.temperature(),
            top_p: sampler.top_p(),
            seed: args.root.seed.is_some().then(|| sampler.rng().state()),
        },
        backend: Backend::detect(),
        log: Arc::new(|line: String| say(&line)),
        api_key: args
            .api_key
            .clone()
            .or_else(|| std::env::var("AIRLLAMA_API_KEY").ok())
            .filter(|k| !k.is_empty()),
    };
    say(if options.api_key.is_some() {
        "🔑 /v1 requests need the API key"
    } else {
        "🔓 No API key (--api-key): whoever reaches the port can use the cluster"
    });
    airllama::api::serve(root, tokenizer, options)?;
    Ok(ExitCode::SUCCESS)
}
