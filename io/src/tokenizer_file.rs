//! The dllama `.t` tokenizer file: parser and writer.
//!
//! Layout (little endian), as dllama's `Tokenizer` constructor reads it:
//!
//! ```text
//! i32 magic 0x567124
//! i32 header size in bytes (magic + size + pairs)
//! (i32 key, i32 value) pairs          see [`TokenizerKey`]
//! CHAT_STOP blobs, in key order        dllama skips `value` bytes per CHAT_STOP key
//! chat template bytes                  when CHAT_TEMPLATE > 0
//! i32 eos id × N_EOS_TOKENS
//! per token: f32 score, u32 length, bytes
//! ```
//!
//! # The airllama extension
//!
//! dllama treats every id `>= bos_id` as a special token and every id below as a regular BPE
//! piece. Vocabularies whose control tokens come *first* (SmolLM2: ids 0..=16, bos 1) break that
//! rule, and dllama's loader rejects unknown header keys, so the true token classes cannot be
//! added as a new key. The one place dllama skips opaque bytes is the obsolete `CHAT_STOP` key:
//! it `fseek`s over `value` bytes right after the header. airllama stores an
//! [`AirllamaExtension`] blob there (magic [`EXTENSION_MAGIC`]): the tokenizer kind, the true bos
//! id and add-bos flag, and every token's GGUF token type. C++ dllama ignores it; the airllama
//! tokenizer reads it to know which ids are special. See `docs/CONVERT.md`.
//!
//! Parsing is bounded: every count and length is checked against what remains of the input
//! before anything is allocated, and malformed input gives a [`TokenizerFileError`].
use std::io::{self, Write};

/// Magic number of the current `.t` format.
pub const TOKENIZER_MAGIC: u32 = 0x0056_7124;
/// Magic number of the obsolete headerless `.t` format (dllama still reads it; so do we).
pub const OLD_TOKENIZER_MAGIC: u32 = 0x0056_7123;
/// First bytes of an [`AirllamaExtension`] blob inside a `CHAT_STOP` region.
pub const EXTENSION_MAGIC: [u8; 8] = *b"AIRLLTOK";
/// Version of the [`AirllamaExtension`] blob layout this code reads and writes.
pub const EXTENSION_VERSION: u32 = 1;
/// First bytes of the GGUF id map, a `CHAT_STOP` region of its own (see
/// [`TokenizerFile::source_ids`]). It is not part of the extension blob so that readers that
/// know only version 1 of the extension keep reading new files (they keep it as an opaque
/// region).
pub const ID_MAP_MAGIC: [u8; 8] = *b"AIRLLIDS";
/// Version of the id map layout.
pub const ID_MAP_VERSION: u32 = 1;

/// Most header pairs accepted (dllama writes 6 or 7).
pub const MAX_HEADER_PAIRS: usize = 1024;
/// Most `CHAT_STOP` regions accepted (dllama's writer emits none; airllama one).
pub const MAX_CHAT_STOPS: usize = 64;
/// Largest vocabulary accepted (the largest real vocabularies are ~260k).
pub const MAX_VOCAB_SIZE: u32 = 1 << 24;
/// Longest token accepted, in bytes.
pub const MAX_TOKEN_LENGTH: u32 = 1 << 16;

/// dllama's `TokenizerHeaderKey`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum TokenizerKey {
    /// Format version; must be 1.
    Version = 0,
    /// Number of tokens.
    VocabSize = 1,
    /// Longest token in bytes (sizes dllama's decode buffers).
    MaxTokenLength = 2,
    /// Beginning-of-sequence id; also dllama's regular/special split point.
    BosId = 3,
    /// Legacy single eos id (appended to the eos list).
    EosId = 4,
    /// Ignored by dllama.
    PadId = 5,
    /// Legacy chat eos id (appended to the eos list).
    ChatEosId = 6,
    /// Length of the chat template bytes.
    ChatTemplate = 7,
    /// Length of an opaque region dllama skips (obsolete chat stop string; our extension).
    ChatStop = 8,
    /// Number of i32 eos ids after the chat template.
    NEosTokens = 9,
    /// 1 when a bos token is prepended to prompts.
    AddBos = 10,
}

impl TokenizerKey {
    /// Decodes a header key, or `None` for a key dllama rejects.
    pub fn from_code(code: i32) -> Option<TokenizerKey> {
        use TokenizerKey::*;
        Some(match code {
            0 => Version,
            1 => VocabSize,
            2 => MaxTokenLength,
            3 => BosId,
            4 => EosId,
            5 => PadId,
            6 => ChatEosId,
            7 => ChatTemplate,
            8 => ChatStop,
            9 => NEosTokens,
            10 => AddBos,
            _ => return None,
        })
    }
}

/// Why a `.t` file was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerFileError {
    /// The input ended before `what` could be read.
    #[error("tokenizer file truncated while reading {what}")]
    Truncated {
        /// What was being read.
        what: &'static str,
    },
    /// The first four bytes are not a known magic number.
    #[error("not a dllama tokenizer file (magic {0:#x})")]
    BadMagic(u32),
    /// The header size field is not 8 plus a whole number of pairs, or too large.
    #[error("invalid tokenizer header size {0}")]
    BadHeaderSize(i32),
    /// A header key dllama does not know (dllama refuses the file too).
    #[error("unknown tokenizer header key {0}")]
    UnknownKey(i32),
    /// The version key is missing or not 1.
    #[error("unsupported tokenizer version {0:?} (expected 1)")]
    BadVersion(Option<i32>),
    /// A required key is absent.
    #[error("tokenizer header lacks {0:?}")]
    MissingKey(TokenizerKey),
    /// A header value is out of its valid range.
    #[error("tokenizer header {key:?} = {value} is out of range")]
    BadValue {
        /// The key.
        key: TokenizerKey,
        /// The value as stored.
        value: i64,
    },
    /// An eos id does not name a token.
    #[error("eos id {0} is not in the vocabulary")]
    BadEosId(i32),
    /// A token is empty (dllama cannot read it) or longer than the header's maximum.
    #[error("token {id} has length {length} (max token length {max})")]
    BadTokenLength {
        /// Token id.
        id: u32,
        /// Its length.
        length: u32,
        /// The header's maximum.
        max: u32,
    },
    /// Bytes remain after the last token.
    #[error("{0} unexpected bytes after the vocabulary")]
    TrailingBytes(usize),
    /// The airllama extension blob is malformed.
    #[error("invalid airllama tokenizer extension: {0}")]
    BadExtension(&'static str),
    /// Writing failed.
    #[error("writing tokenizer file")]
    Io(#[from] io::Error),
}

/// One vocabulary entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    /// The raw bytes this token decodes to.
    pub bytes: Vec<u8>,
    /// Merge priority: dllama merges the adjacent pair whose result has the highest score.
    pub score: f32,
}

/// GGUF's token classes (`tokenizer.ggml.token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TokenType {
    /// Not specified.
    Undefined = 0,
    /// An ordinary piece.
    Normal = 1,
    /// The unknown token.
    Unknown = 2,
    /// A control token (bos, eos, chat markers): matched verbatim in prompts, never merged.
    Control = 3,
    /// A user-defined token, matched verbatim in prompts.
    UserDefined = 4,
    /// Reserved, never produced.
    Unused = 5,
    /// A single raw byte (SentencePiece byte fallback `<0xXX>`).
    Byte = 6,
}

impl TokenType {
    /// Decodes a GGUF token type code.
    pub fn from_code(code: i64) -> Option<TokenType> {
        use TokenType::*;
        Some(match code {
            0 => Undefined,
            1 => Normal,
            2 => Unknown,
            3 => Control,
            4 => UserDefined,
            5 => Unused,
            6 => Byte,
            _ => return None,
        })
    }

    /// Whether the token is matched verbatim in text rather than built by merges.
    pub fn is_special(self) -> bool {
        matches!(self, TokenType::Control | TokenType::UserDefined)
    }
}

/// How the token strings were produced, so a tokenizer knows how to pre-split text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum VocabKind {
    /// Unknown origin: only the raw bytes and scores are meaningful.
    Unspecified = 0,
    /// GPT-2 style byte-level BPE (tokens stored as raw bytes, not the byte-to-unicode form).
    ByteLevelBpe = 1,
    /// SentencePiece (the `▁` space marker stored as a plain space, `<0xXX>` as raw bytes).
    SentencePiece = 2,
}

impl VocabKind {
    fn from_code(code: u32) -> Option<VocabKind> {
        match code {
            0 => Some(VocabKind::Unspecified),
            1 => Some(VocabKind::ByteLevelBpe),
            2 => Some(VocabKind::SentencePiece),
            _ => None,
        }
    }
}

/// What airllama records beside dllama's own keys (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AirllamaExtension {
    /// Tokenizer family.
    pub kind: VocabKind,
    /// The model's real bos id (the `BOS_ID` key may hold dllama's split point instead).
    pub bos_id: Option<u32>,
    /// Whether prompts really start with bos.
    pub add_bos: bool,
    /// One class per token id; empty when unknown.
    pub token_types: Vec<TokenType>,
}

impl AirllamaExtension {
    fn encoded_len(&self) -> usize {
        EXTENSION_MAGIC.len() + 5 * 4 + self.token_types.len()
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&EXTENSION_MAGIC);
        out.extend_from_slice(&EXTENSION_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.kind as u32).to_le_bytes());
        let bos = self.bos_id.map_or(-1i64, i64::from) as i32;
        out.extend_from_slice(&bos.to_le_bytes());
        out.extend_from_slice(&u32::from(self.add_bos).to_le_bytes());
        out.extend_from_slice(&(self.token_types.len() as u32).to_le_bytes());
        out.extend(self.token_types.iter().map(|t| *t as u8));
    }

    fn decode(blob: &[u8], vocab_size: u32) -> Result<AirllamaExtension, TokenizerFileError> {
        let bad = TokenizerFileError::BadExtension;
        let mut r = Reader::new(blob.get(EXTENSION_MAGIC.len()..).ok_or(bad("short"))?);
        let map = |_| bad("truncated header");
        if r.u32("extension version").map_err(map)? != EXTENSION_VERSION {
            return Err(bad("unsupported version"));
        }
        let kind = VocabKind::from_code(r.u32("kind").map_err(map)?).ok_or(bad("unknown kind"))?;
        let bos = r.i32("bos").map_err(map)?;
        let bos_id = match bos {
            -1 => None,
            b if b >= 0 && (b as u32) < vocab_size => Some(b as u32),
            _ => return Err(bad("bos id out of range")),
        };
        let add_bos = match r.u32("add bos").map_err(map)? {
            0 => false,
            1 => true,
            _ => return Err(bad("add_bos is not 0 or 1")),
        };
        let n_types = r.u32("type count").map_err(map)?;
        if n_types != 0 && n_types != vocab_size {
            return Err(bad("token type count differs from the vocabulary size"));
        }
        let codes = r.take(n_types as usize, "token types").map_err(map)?;
        let token_types = codes
            .iter()
            .map(|&c| TokenType::from_code(i64::from(c)).ok_or(bad("unknown token type")))
            .collect::<Result<Vec<_>, _>>()?;
        if !r.rest().is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(AirllamaExtension {
            kind,
            bos_id,
            add_bos,
            token_types,
        })
    }
}

/// A parsed `.t` file.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizerFile {
    /// Tokens by id.
    pub vocab: Vec<Token>,
    /// The `BOS_ID` key: dllama's bos and its regular/special split (ids `>= bos_id` special).
    pub bos_id: u32,
    /// The `ADD_BOS` key (dllama leaves it uninitialised when absent; we read `false`).
    pub add_bos: bool,
    /// Ids that end generation, in file order (legacy `EOS_ID`/`CHAT_EOS_ID` keys first).
    pub eos_ids: Vec<u32>,
    /// The Jinja chat template, when present.
    pub chat_template: Option<Vec<u8>>,
    /// Foreign `CHAT_STOP` regions (old files stored a stop string there), kept verbatim.
    pub chat_stops: Vec<Vec<u8>>,
    /// The airllama extension, when present.
    pub extension: Option<AirllamaExtension>,
}

/// A panic-free little-endian cursor over untrusted bytes.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], TokenizerFileError> {
        if n > self.data.len() {
            return Err(TokenizerFileError::Truncated { what });
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, TokenizerFileError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, TokenizerFileError> {
        Ok(self.u32(what)? as i32)
    }

    fn rest(&self) -> &'a [u8] {
        self.data
    }
}

fn bad_value(key: TokenizerKey, value: i32) -> TokenizerFileError {
    TokenizerFileError::BadValue {
        key,
        value: i64::from(value),
    }
}

impl TokenizerFile {
    /// Parses a whole `.t` file.
    pub fn parse(data: &[u8]) -> Result<TokenizerFile, TokenizerFileError> {
        let mut r = Reader::new(data);
        let magic = r.u32("magic")?;
        let mut vocab_size: Option<i32> = None;
        let mut max_token_length: Option<i32> = None;
        let mut bos_id: Option<i32> = None;
        let mut add_bos = false;
        let mut eos_ids: Vec<i32> = Vec::new();
        let mut chat_template_len: i32 = -1;
        let mut n_eos: i32 = 0;
        let mut stop_lens: Vec<i32> = Vec::new();

        if magic == OLD_TOKENIZER_MAGIC {
            vocab_size = Some(r.i32("old header")?);
            max_token_length = Some(r.i32("old header")?);
            bos_id = Some(r.i32("old header")?);
            eos_ids.push(r.i32("old header")?);
            let _pad = r.i32("old header")?;
            add_bos = true;
        } else if magic == TOKENIZER_MAGIC {
            let header_size = r.i32("header size")?;
            let pairs_bytes = header_size
                .checked_sub(8)
                .filter(|b| {
                    *b >= 0
                        && (*b as u32).is_multiple_of(8)
                        && (*b as usize) / 8 <= MAX_HEADER_PAIRS
                })
                .ok_or(TokenizerFileError::BadHeaderSize(header_size))?;
            let mut version = None;
            for _ in 0..pairs_bytes / 8 {
                let code = r.i32("header pair")?;
                let value = r.i32("header pair")?;
                let key =
                    TokenizerKey::from_code(code).ok_or(TokenizerFileError::UnknownKey(code))?;
                match key {
                    TokenizerKey::Version => version = Some(value),
                    TokenizerKey::VocabSize => vocab_size = Some(value),
                    TokenizerKey::MaxTokenLength => max_token_length = Some(value),
                    TokenizerKey::BosId => bos_id = Some(value),
                    TokenizerKey::EosId | TokenizerKey::ChatEosId => {
                        if eos_ids.len() >= MAX_HEADER_PAIRS {
                            return Err(bad_value(key, value));
                        }
                        eos_ids.push(value)
                    }
                    TokenizerKey::PadId => {}
                    TokenizerKey::ChatTemplate => chat_template_len = value,
                    TokenizerKey::ChatStop => {
                        if value < 0 || stop_lens.len() >= MAX_CHAT_STOPS {
                            return Err(bad_value(key, value));
                        }
                        stop_lens.push(value)
                    }
                    TokenizerKey::NEosTokens => n_eos = value,
                    TokenizerKey::AddBos => add_bos = value == 1,
                }
            }
            if version != Some(1) {
                return Err(TokenizerFileError::BadVersion(version));
            }
        } else {
            return Err(TokenizerFileError::BadMagic(magic));
        }

        let vocab_size =
            vocab_size.ok_or(TokenizerFileError::MissingKey(TokenizerKey::VocabSize))?;
        if vocab_size <= 0 || vocab_size as u32 > MAX_VOCAB_SIZE {
            return Err(bad_value(TokenizerKey::VocabSize, vocab_size));
        }
        let vocab_size = vocab_size as u32;
        let max_len =
            max_token_length.ok_or(TokenizerFileError::MissingKey(TokenizerKey::MaxTokenLength))?;
        if max_len < 1 || max_len as u32 > MAX_TOKEN_LENGTH {
            return Err(bad_value(TokenizerKey::MaxTokenLength, max_len));
        }
        let max_len = max_len as u32;
        let bos = bos_id.ok_or(TokenizerFileError::MissingKey(TokenizerKey::BosId))?;
        if bos < 0 || bos as u32 >= vocab_size {
            return Err(bad_value(TokenizerKey::BosId, bos));
        }

        let mut chat_stops = Vec::new();
        let mut extension = None;
        for len in stop_lens {
            let blob = r.take(len as usize, "chat stop region")?;
            if blob.starts_with(&EXTENSION_MAGIC) {
                if extension.is_some() {
                    return Err(TokenizerFileError::BadExtension(
                        "more than one extension blob",
                    ));
                }
                extension = Some(AirllamaExtension::decode(blob, vocab_size)?);
            } else {
                chat_stops.push(blob.to_vec());
            }
        }
        let chat_template = if chat_template_len > 0 {
            Some(
                r.take(chat_template_len as usize, "chat template")?
                    .to_vec(),
            )
        } else {
            None
        };
        if n_eos < 0 || n_eos as usize > r.rest().len() / 4 {
            return Err(bad_value(TokenizerKey::NEosTokens, n_eos));
        }
        for _ in 0..n_eos {
            eos_ids.push(r.i32("eos id")?);
        }
        let eos_ids = eos_ids
            .into_iter()
            .map(|id| {
                if id >= 0 && (id as u32) < vocab_size {
                    Ok(id as u32)
                } else {
                    Err(TokenizerFileError::BadEosId(id))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;

        // Every token takes at least 9 bytes (score, length, one byte): bound the allocation.
        if vocab_size as usize > r.rest().len() / 9 {
            return Err(TokenizerFileError::Truncated { what: "vocabulary" });
        }
        let mut vocab = Vec::with_capacity(vocab_size as usize);
        for id in 0..vocab_size {
            let score = f32::from_bits(r.u32("token score")?);
            let length = r.u32("token length")?;
            if length == 0 || length > max_len {
                return Err(TokenizerFileError::BadTokenLength {
                    id,
                    length,
                    max: max_len,
                });
            }
            let bytes = r.take(length as usize, "token bytes")?.to_vec();
            vocab.push(Token { bytes, score });
        }
        if !r.rest().is_empty() {
            return Err(TokenizerFileError::TrailingBytes(r.rest().len()));
        }
        Ok(TokenizerFile {
            vocab,
            bos_id: bos as u32,
            add_bos,
            eos_ids,
            chat_template,
            chat_stops,
            extension,
        })
    }

    /// Length of the longest token in bytes (the `MAX_TOKEN_LENGTH` key the writer emits).
    pub fn max_token_length(&self) -> u32 {
        self.vocab
            .iter()
            .map(|t| t.bytes.len() as u32)
            .max()
            .unwrap_or(0)
    }

    /// The model's real bos id: the extension's when present, else the `BOS_ID` key.
    pub fn true_bos_id(&self) -> Option<u32> {
        match &self.extension {
            Some(ext) => ext.bos_id,
            None => Some(self.bos_id),
        }
    }

    /// Whether prompts really start with bos (the extension's flag when present).
    pub fn true_add_bos(&self) -> bool {
        self.extension
            .as_ref()
            .map_or(self.add_bos, |ext| ext.add_bos)
    }

    /// Whether `id` is a special token, matched verbatim in text and never produced by merges.
    ///
    /// With the extension's token types this is the token's class; without them it is dllama's
    /// rule (`id >= bos_id`).
    pub fn is_special(&self, id: u32) -> bool {
        match &self.extension {
            Some(ext) if !ext.token_types.is_empty() => ext
                .token_types
                .get(id as usize)
                .is_some_and(|t| t.is_special()),
            _ => id >= self.bos_id,
        }
    }

    /// The GGUF id of every token, `v[id]`, when the converter renumbered tokens so that
    /// dllama's regular/special split holds (`docs/CONVERT.md`); `None` when the file records
    /// no renumbering (nothing moved, or an earlier converter or another tool wrote it).
    ///
    /// The map is a `CHAT_STOP` region starting with [`ID_MAP_MAGIC`]: `u32` version, `u32`
    /// count, then count × (`u32` id in this file, `u32` GGUF id) for the tokens that moved.
    pub fn source_ids(&self) -> Result<Option<Vec<u32>>, TokenizerFileError> {
        let Some(region) = self
            .chat_stops
            .iter()
            .find(|r| r.starts_with(&ID_MAP_MAGIC))
        else {
            return Ok(None);
        };
        let bad = TokenizerFileError::BadExtension;
        let n = self.vocab.len();
        let mut r = Reader::new(&region[ID_MAP_MAGIC.len()..]);
        let map = |_| bad("truncated id map");
        if r.u32("id map version").map_err(map)? != ID_MAP_VERSION {
            return Err(bad("unsupported id map version"));
        }
        let count = r.u32("id map count").map_err(map)? as usize;
        if count > n || count * 8 != r.rest().len() {
            return Err(bad("id map count differs from its length"));
        }
        let mut source: Vec<u32> = (0..n as u32).collect();
        let mut moved = vec![false; n];
        for _ in 0..count {
            let file_id = r.u32("id map entry").map_err(map)? as usize;
            let gguf_id = r.u32("id map entry").map_err(map)?;
            if file_id >= n || gguf_id as usize >= n || moved[file_id] {
                return Err(bad("id map entry out of range or repeated"));
            }
            moved[file_id] = true;
            source[file_id] = gguf_id;
        }
        let mut used = vec![false; n];
        for &g in &source {
            if std::mem::replace(&mut used[g as usize], true) {
                return Err(bad("id map is not a permutation"));
            }
        }
        Ok(Some(source))
    }

    /// The `CHAT_STOP` region [`TokenizerFile::source_ids`] reads, for the tokens in `moved`
    /// as (id in the file, GGUF id) pairs.
    pub fn id_map_region(moved: &[(u32, u32)]) -> Vec<u8> {
        let mut out = ID_MAP_MAGIC.to_vec();
        out.extend_from_slice(&ID_MAP_VERSION.to_le_bytes());
        out.extend_from_slice(&(moved.len() as u32).to_le_bytes());
        for &(file_id, gguf_id) in moved {
            out.extend_from_slice(&file_id.to_le_bytes());
            out.extend_from_slice(&gguf_id.to_le_bytes());
        }
        out
    }

    /// Checks what the writer (and dllama's loader) needs; the parser guarantees the same.
    fn validate(&self) -> Result<(), TokenizerFileError> {
        let n = self.vocab.len();
        if n == 0 || n > MAX_VOCAB_SIZE as usize {
            return Err(TokenizerFileError::BadValue {
                key: TokenizerKey::VocabSize,
                value: n as i64,
            });
        }
        let max = self.max_token_length();
        for (id, t) in self.vocab.iter().enumerate() {
            let length = t.bytes.len();
            if length == 0 || length > MAX_TOKEN_LENGTH as usize {
                return Err(TokenizerFileError::BadTokenLength {
                    id: id as u32,
                    length: length.min(u32::MAX as usize) as u32,
                    max,
                });
            }
        }
        if self.bos_id as usize >= n {
            return Err(TokenizerFileError::BadValue {
                key: TokenizerKey::BosId,
                value: i64::from(self.bos_id),
            });
        }
        if let Some(&id) = self.eos_ids.iter().find(|&&id| id as usize >= n) {
            return Err(TokenizerFileError::BadEosId(id as i32));
        }
        if let Some(t) = &self.chat_template
            && (t.is_empty() || t.len() > i32::MAX as usize)
        {
            return Err(TokenizerFileError::BadValue {
                key: TokenizerKey::ChatTemplate,
                value: t.len() as i64,
            });
        }
        for stop in &self.chat_stops {
            if stop.starts_with(&EXTENSION_MAGIC) || stop.len() > i32::MAX as usize {
                return Err(TokenizerFileError::BadValue {
                    key: TokenizerKey::ChatStop,
                    value: stop.len() as i64,
                });
            }
        }
        if self.chat_stops.len() + usize::from(self.extension.is_some()) > MAX_CHAT_STOPS {
            return Err(TokenizerFileError::BadValue {
                key: TokenizerKey::ChatStop,
                value: self.chat_stops.len() as i64,
            });
        }
        if let Some(ext) = &self.extension {
            if ext.bos_id.is_some_and(|b| b as usize >= n) {
                return Err(TokenizerFileError::BadExtension("bos id out of range"));
            }
            if !ext.token_types.is_empty() && ext.token_types.len() != n {
                return Err(TokenizerFileError::BadExtension(
                    "token type count differs from the vocabulary size",
                ));
            }
        }
        Ok(())
    }

    /// Serialises the file: keys in the order version, vocab size, max token length, bos id,
    /// chat template, eos count, add bos, then one `CHAT_STOP` key per foreign region and one
    /// for the extension (the order of dllama's golden files).
    pub fn to_bytes(&self) -> Result<Vec<u8>, TokenizerFileError> {
        self.validate()?;
        let mut pairs: Vec<(TokenizerKey, i32)> = vec![
            (TokenizerKey::Version, 1),
            (TokenizerKey::VocabSize, self.vocab.len() as i32),
            (TokenizerKey::MaxTokenLength, self.max_token_length() as i32),
            (TokenizerKey::BosId, self.bos_id as i32),
        ];
        if let Some(t) = &self.chat_template {
            pairs.push((TokenizerKey::ChatTemplate, t.len() as i32));
        }
        pairs.push((TokenizerKey::NEosTokens, self.eos_ids.len() as i32));
        pairs.push((TokenizerKey::AddBos, i32::from(self.add_bos)));
        let mut blobs: Vec<u8> = Vec::new();
        for stop in &self.chat_stops {
            pairs.push((TokenizerKey::ChatStop, stop.len() as i32));
            blobs.extend_from_slice(stop);
        }
        if let Some(ext) = &self.extension {
            pairs.push((TokenizerKey::ChatStop, ext.encoded_len() as i32));
            ext.encode(&mut blobs);
        }

        let mut out = Vec::new();
        out.extend_from_slice(&TOKENIZER_MAGIC.to_le_bytes());
        out.extend_from_slice(&((8 + pairs.len() * 8) as i32).to_le_bytes());
        for (key, value) in pairs {
            out.extend_from_slice(&(key as i32).to_le_bytes());
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&blobs);
        if let Some(t) = &self.chat_template {
            out.extend_from_slice(t);
        }
        for id in &self.eos_ids {
            out.extend_from_slice(&(*id as i32).to_le_bytes());
        }
        for t in &self.vocab {
            out.extend_from_slice(&t.score.to_le_bytes());
            out.extend_from_slice(&(t.bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&t.bytes);
        }
        Ok(out)
    }

    /// Writes the file to `w` (see [`TokenizerFile::to_bytes`]).
    pub fn write_to<W: Write>(&self, mut w: W) -> Result<(), TokenizerFileError> {
        w.write_all(&self.to_bytes()?)?;
        Ok(())
    }
}

/// Fuzz oracle for the `.t` parser: any input either fails to parse with an error or parses to
/// a file whose encoding parses back and re-encodes to the same bytes. Panics only when that
/// invariant breaks.
pub fn fuzz_parse(data: &[u8]) {
    let Ok(file) = TokenizerFile::parse(data) else {
        return;
    };
    let bytes = file.to_bytes().expect("a parsed tokenizer must encode");
    let again = TokenizerFile::parse(&bytes).expect("an encoded tokenizer must parse");
    assert_eq!(
        again.to_bytes().expect("re-encode"),
        bytes,
        "re-encoding differs"
    );
    assert_eq!(again.vocab.len(), file.vocab.len());
    assert_eq!(again.true_bos_id(), file.true_bos_id());
    for id in 0..file.vocab.len() as u32 {
        assert_eq!(again.is_special(id), file.is_special(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TokenizerFile {
        TokenizerFile {
            vocab: vec![
                Token {
                    bytes: b"<s>".to_vec(),
                    score: 0.0,
                },
                Token {
                    bytes: b"a".to_vec(),
                    score: -1.0,
                },
                Token {
                    bytes: b"ab".to_vec(),
                    score: -2.5,
                },
            ],
            bos_id: 0,
            add_bos: true,
            eos_ids: vec![0, 2],
            chat_template: Some(b"{{x}}".to_vec()),
            chat_stops: vec![b"stop".to_vec()],
            extension: Some(AirllamaExtension {
                kind: VocabKind::ByteLevelBpe,
                bos_id: Some(0),
                add_bos: false,
                token_types: vec![TokenType::Control, TokenType::Normal, TokenType::Normal],
            }),
        }
    }

    #[test]
    fn round_trip_with_every_part() {
        let file = sample();
        let bytes = file.to_bytes().unwrap();
        assert_eq!(TokenizerFile::parse(&bytes).unwrap(), file);
    }

    #[test]
    fn id_map_reads_back_and_malformed_maps_are_errors() {
        let mut file = sample();
        assert_eq!(file.source_ids().unwrap(), None);
        let n = file.vocab.len() as u32;
        file.chat_stops = vec![TokenizerFile::id_map_region(&[(0, n - 1), (n - 1, 0)])];
        let again = TokenizerFile::parse(&file.to_bytes().unwrap()).unwrap();
        let mut want: Vec<u32> = (0..n).collect();
        want.swap(0, n as usize - 1);
        assert_eq!(again.source_ids().unwrap(), Some(want));
        let bad_maps: [Vec<u8>; 5] = [
            TokenizerFile::id_map_region(&[(0, n)]),
            TokenizerFile::id_map_region(&[(0, 1)]),
            TokenizerFile::id_map_region(&[(0, 1), (0, 2)]),
            TokenizerFile::id_map_region(&[(0, 1), (1, 0)])[..20].to_vec(),
            {
                let mut v = TokenizerFile::id_map_region(&[]);
                v[8] = 2;
                v
            },
        ];
        for region in bad_maps {
            file.chat_stops = vec![region];
            let parsed = TokenizerFile::parse(&file.to_bytes().unwrap()).unwrap();
            assert!(matches!(
                parsed.source_ids(),
                Err(TokenizerFileError::BadExtension(_))
            ));
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().to_bytes().unwrap();
        for n in 0..bytes.len() {
            assert!(
                TokenizerFile::parse(&bytes[..n]).is_err(),
                "prefix {n} parsed"
            );
        }
    }

    #[test]
    fn special_tokens_follow_the_extension() {
        let mut file = sample();
        assert!(file.is_special(0));
        assert!(!file.is_special(2));
        file.extension = None;
        assert!(file.is_special(2), "dllama's rule: ids >= bos are special");
    }
}
