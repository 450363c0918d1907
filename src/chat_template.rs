//! Chat prompts in the formats dllama renders (`ChatTemplateGenerator`).
//!
//! A `.t` file carries the model's Jinja chat template, but dllama does not run Jinja: it looks
//! for a marker in the template text to pick one of a few hand-written formats, and so do we
//! ([`ChatTemplateKind::detect`]), or the user names one (`--chat-template`, parsed with
//! [`FromStr`]). The rendered text is then encoded with special tokens enabled, so markers such
//! as `<|start_header_id|>` become their ids.
//!
//! | kind        | detected by          | one message rendered                                           |
//! |-------------|----------------------|----------------------------------------------------------------|
//! | `llama2`    | `[INST]`             | `[INST] {user} [/INST]{eos}`                                    |
//! | `llama3`    | `<|start_header_id|>` | `<|start_header_id|>{role}<|end_header_id|>\n\n{text}{eos}`   |
//! | `deepSeek3` | `<｜Assistant｜>`     | `<｜User｜>{user}`, generation prompt `<｜Assistant｜><think>\n` |
//! | `chatml`    | `<|im_start|>`        | `<|im_start|>{role}\n{text}<|im_end|>\n`                       |
//!
//! `{eos}` is the text of the tokenizer's first eos token (dllama's `stops[0]`).
//!
//! One deliberate difference: dllama's chatml appends the generation prompt
//! `<|im_start|>assistant\n` after *every* message instead of once at the end, so a system
//! prompt followed by a user message renders an empty assistant turn between them. Here it is
//! appended once, after the last message, as the chatml templates of SmolLM2 and Qwen do. For a
//! single message the two agree.
use std::fmt;
use std::str::FromStr;

use crate::tokenizer::Tokenizer;

/// Why a chat template could not be chosen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChatTemplateError {
    /// `--chat-template` named no known kind.
    #[error("unknown chat template {0:?} (expected llama2, llama3, deepSeek3 or chatml)")]
    UnknownName(String),
    /// No kind was given and the tokenizer has no chat template.
    #[error("the tokenizer does not include a chat template; pass --chat-template")]
    Missing,
    /// The tokenizer's template has none of the known markers.
    #[error("the tokenizer's chat template is not a supported format; pass --chat-template")]
    Unsupported,
}

/// The chat formats dllama can render (`ChatTemplateType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChatTemplateKind {
    /// Llama 2 `[INST]` format.
    Llama2,
    /// Llama 3 header format.
    Llama3,
    /// DeepSeek V3 / R1 format (opens a `<think>` block).
    DeepSeek3,
    /// ChatML (`<|im_start|>` … `<|im_end|>`), used by SmolLM2 and Qwen.
    ChatMl,
}

impl ChatTemplateKind {
    /// Every kind, in dllama's enum order.
    pub const ALL: [ChatTemplateKind; 4] = [
        ChatTemplateKind::Llama2,
        ChatTemplateKind::Llama3,
        ChatTemplateKind::DeepSeek3,
        ChatTemplateKind::ChatMl,
    ];

    /// The name dllama prints and `--chat-template` accepts.
    pub const fn name(self) -> &'static str {
        match self {
            ChatTemplateKind::Llama2 => "llama2",
            ChatTemplateKind::Llama3 => "llama3",
            ChatTemplateKind::DeepSeek3 => "deepSeek3",
            ChatTemplateKind::ChatMl => "chatml",
        }
    }

    /// Picks the kind from a Jinja template's text, checking dllama's markers in dllama's order.
    pub fn detect(template: &str) -> Result<ChatTemplateKind, ChatTemplateError> {
        const MARKERS: [(&str, ChatTemplateKind); 4] = [
            ("[INST]", ChatTemplateKind::Llama2),
            ("<|start_header_id|>", ChatTemplateKind::Llama3),
            ("<\u{ff5c}Assistant\u{ff5c}>", ChatTemplateKind::DeepSeek3),
            ("<|im_start|>", ChatTemplateKind::ChatMl),
        ];
        MARKERS
            .iter()
            .find(|(marker, _)| template.contains(marker))
            .map(|&(_, kind)| kind)
            .ok_or(ChatTemplateError::Unsupported)
    }

    /// The explicit choice if given, else [`ChatTemplateKind::detect`] on the tokenizer's
    /// template (dllama's constructor logic).
    pub fn resolve(
        explicit: Option<ChatTemplateKind>,
        tokenizer_template: Option<&str>,
    ) -> Result<ChatTemplateKind, ChatTemplateError> {
        match explicit {
            Some(kind) => Ok(kind),
            None => ChatTemplateKind::detect(tokenizer_template.ok_or(ChatTemplateError::Missing)?),
        }
    }
}

impl fmt::Display for ChatTemplateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ChatTemplateKind {
    type Err = ChatTemplateError;

    /// Accepts dllama's names (`llama2`, `llama3`, `deepSeek3`) and `chatml`, ignoring case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ChatTemplateKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| ChatTemplateError::UnknownName(s.to_string()))
    }
}

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChatRole {
    /// Instructions before the conversation.
    System,
    /// The person.
    User,
    /// The model.
    Assistant,
}

impl ChatRole {
    /// The role's name as templates write it.
    pub const fn as_str(self) -> &'static str {
        match self {
            ChatRole::System => "system",
            ChatRole::User => "user",
            ChatRole::Assistant => "assistant",
        }
    }
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// Its author.
    pub role: ChatRole,
    /// Its text.
    pub content: String,
}

impl ChatMessage {
    /// A message.
    pub fn new(role: ChatRole, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role,
            content: content.into(),
        }
    }
}

/// A rendered prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderedChat {
    /// The text to encode (with special tokens enabled).
    pub text: String,
    /// The tail of `text` that belongs to the answer and should be shown to the user before the
    /// generated tokens (deepSeek3's `<think>\n`), if any.
    pub public_prompt: Option<String>,
}

/// Renders conversations in one [`ChatTemplateKind`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatTemplate {
    kind: ChatTemplateKind,
    eos: String,
}

impl ChatTemplate {
    /// A renderer; `eos` is the text of the tokenizer's first eos token.
    pub fn new(kind: ChatTemplateKind, eos: impl Into<String>) -> ChatTemplate {
        ChatTemplate {
            kind,
            eos: eos.into(),
        }
    }

    /// The renderer dllama's chat mode builds for a tokenizer: the explicit kind or the one
    /// detected in the tokenizer's template, with the text of its first eos token as `{eos}`
    /// (empty when the vocabulary has no eos; dllama would read out of bounds).
    pub fn for_tokenizer(
        explicit: Option<ChatTemplateKind>,
        tokenizer: &Tokenizer,
    ) -> Result<ChatTemplate, ChatTemplateError> {
        let kind = ChatTemplateKind::resolve(explicit, tokenizer.chat_template())?;
        let eos = tokenizer
            .eos_ids()
            .first()
            .and_then(|&id| tokenizer.piece(id))
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        Ok(ChatTemplate::new(kind, eos))
    }

    /// The text inserted after each message (the first eos token's text).
    pub fn eos(&self) -> &str {
        &self.eos
    }

    /// The format.
    pub fn kind(&self) -> ChatTemplateKind {
        self.kind
    }

    /// Renders `messages` (the messages new since the last call, as dllama's chat loop passes
    /// them), ending with the assistant's generation prompt when `add_generation_prompt`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> RenderedChat {
        let eos = self.eos.as_str();
        let mut out = String::new();
        let mut public_prompt = None;
        match self.kind {
            ChatTemplateKind::Llama2 => {
                let mut rest = messages;
                if let [system, user, tail @ ..] = messages
                    && system.role == ChatRole::System
                    && user.role == ChatRole::User
                {
                    out.push_str("[INST] <<SYS>>\n");
                    out.push_str(&system.content);
                    out.push_str("\n<</SYS>>\n\n");
                    out.push_str(&user.content);
                    out.push_str(" [/INST]");
                    out.push_str(eos);
                    rest = tail;
                }
                for m in rest {
                    match m.role {
                        ChatRole::Assistant => {
                            out.push_str(&m.content);
                            out.push_str(eos);
                        }
                        ChatRole::User => {
                            out.push_str("[INST] ");
                            out.push_str(&m.content);
                            out.push_str(" [/INST]");
                            out.push_str(eos);
                        }
                        ChatRole::System => {}
                    }
                }
            }
            ChatTemplateKind::Llama3 => {
                for m in messages {
                    out.push_str("<|start_header_id|>");
                    out.push_str(m.role.as_str());
                    out.push_str("<|end_header_id|>\n\n");
                    out.push_str(&m.content);
                    out.push_str(eos);
                }
                if add_generation_prompt {
                    out.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
                }
            }
            ChatTemplateKind::DeepSeek3 => {
                let mut rest = messages;
                if let [system, tail @ ..] = messages
                    && system.role == ChatRole::System
                {
                    out.push_str(&system.content);
                    rest = tail;
                }
                for m in rest {
                    match m.role {
                        ChatRole::User => {
                            out.push_str("<\u{ff5c}User\u{ff5c}>");
                            out.push_str(&m.content);
                        }
                        ChatRole::Assistant => {
                            out.push_str("<\u{ff5c}Assistant\u{ff5c}>");
                            out.push_str(&m.content);
                        }
                        ChatRole::System => {}
                    }
                }
                if add_generation_prompt {
                    out.push_str("<\u{ff5c}Assistant\u{ff5c}><think>\n");
                    public_prompt = Some("<think>\n".to_string());
                }
            }
            ChatTemplateKind::ChatMl => {
                for m in messages {
                    out.push_str("<|im_start|>");
                    out.push_str(m.role.as_str());
                    out.push('\n');
                    out.push_str(&m.content);
                    out.push_str("<|im_end|>\n");
                }
                if add_generation_prompt {
                    out.push_str("<|im_start|>assistant\n");
                }
            }
        }
        RenderedChat {
            text: out,
            public_prompt,
        }
    }
}
