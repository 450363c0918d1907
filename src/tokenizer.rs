//! Text ↔ token ids with dllama's algorithm, and a streaming UTF-8 decoder.
//!
//! [`Tokenizer`] is built from a parsed `.t` file ([`TokenizerFile`]). Encoding is dllama's
//! (`Tokenizer::encode` in `tokenizer.cpp`), so a prompt gives the ids the C++ root would feed
//! the model:
//!
//! 1. optional bos;
//! 2. a left-to-right scan of the text: at each byte the first special token (in id order) that
//!    the text starts with is taken verbatim; otherwise the byte joins a pending buffer, and as
//!    soon as the pending bytes spell a regular token, that token is emitted (with byte tokens in
//!    the vocabulary every byte is found: the byte fallback);
//! 3. score-ordered merging: repeatedly, of all adjacent pairs whose concatenation is a regular
//!    token, the one whose result has the highest score is merged (the leftmost on ties; scores
//!    at or below `-1e10` never merge, as dllama's initial best score excludes them).
//!
//! Bytes that never spell a token give [`EncodeError::Unencodable`] (dllama aborts).
//!
//! ```
//! use airllama::tokenizer::{StreamDecoder, Tokenizer};
//! use airllama_io::tokenizer_file::{Token, TokenizerFile};
//!
//! let token = |s: &str, score: f32| Token { bytes: s.as_bytes().to_vec(), score };
//! let file = TokenizerFile {
//!     vocab: vec![token("a", 0.0), token("b", 0.0), token("ab", -1.0), token("<s>", 0.0)],
//!     bos_id: 3, // dllama: ids >= 3 are special
//!     add_bos: true,
//!     eos_ids: vec![3],
//!     chat_template: None,
//!     chat_stops: vec![],
//!     extension: None,
//! };
//! let tokenizer = Tokenizer::from_file(&file);
//! let ids = tokenizer.encode("abab", true, true).unwrap();
//! assert_eq!(ids, [3, 2, 2]);
//! let mut decoder = StreamDecoder::new();
//! let text: String = ids
//!     .iter()
//!     .map(|&id| decoder.decode(&tokenizer, id).unwrap().to_string())
//!     .collect();
//! assert_eq!(text, "abab");
//! ```
//!
//! dllama runs step 3 as a quadratic rescan after each merge; here a heap keyed by
//! (score, position) with lazy invalidation picks the same pair in `O(n log n)`.
//!
//! # Which ids are special
//!
//! dllama treats every id `>= bos_id` as special and everything below as regular. That is right
//! for Llama-style vocabularies (the golden files, Llama 3) and wrong for SmolLM2, whose control
//! tokens are ids 0..=16. airllama's converter records each token's class in an extension blob
//! of the `.t` file (see `airllama_io::tokenizer_file`); when present, the tokenizer uses those
//! classes, the recorded true bos id and add-bos flag. Files without the extension behave
//! exactly as in dllama.
//!
//! With those classes, special tokens are also cut out of the text before the scan and never
//! take part in merges, and for byte-level BPE vocabularies (GPT-2 style: SmolLM2, Llama 3,
//! Qwen) the text between them is first split into pre-tokens by GPT-2's pattern, merged one by
//! one, as Hugging Face's tokenizers do; when the vocabulary shows it was trained with digits
//! split one by one (single-digit tokens and no other token holding a digit, as SmolLM2), each
//! numeric character is its own pre-token. Merges follow the `.t` scores (the converter writes
//! `-id`, i.e. earlier-trained merges first), not a merge list, which the `.t` format does not
//! carry. On SmolLM2 this gives Hugging Face's ids for every line of a 1294-line mixed
//! corpus (English, code, CJK, Cyrillic, Arabic, emoji). Other vocabularies' own pre-tokenizer
//! patterns (Llama 3's `\p{N}{1,3}`, …) are approximated by GPT-2's.
//!
//! When the same bytes name several regular tokens (SentencePiece vocabularies often have
//! `▁` and `<0x20>`), dllama's `bsearch` over its `qsort`ed table decides which id is used; the
//! table here reproduces that choice (glibc's `qsort` is a stable merge sort at these sizes, and
//! `bsearch` probes midpoints).
//!
//! # Decoding
//!
//! [`StreamDecoder`] turns a stream of ids into text pieces that are always valid UTF-8, holding
//! back an incomplete multi-byte sequence until the bytes that finish it arrive (see its docs
//! for the replacement-character policy). Unlike dllama's fixed-size decode buffer, which
//! aborts on long runs of invalid byte tokens, its state is bounded (at most three held bytes and
//! one flag), so any id sequence decodes.
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;

use airllama_io::tokenizer_file::{TokenizerFile, TokenizerFileError, VocabKind};

/// dllama's initial best merge score: a merge must score strictly higher to happen.
const MIN_MERGE_SCORE: f32 = -1e10;

/// Why a tokenizer could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    /// The file could not be read.
    #[error("reading tokenizer file {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The `.t` bytes are malformed.
    #[error(transparent)]
    File(#[from] TokenizerFileError),
    /// The `.t` file at `path` is malformed.
    #[error("tokenizer file {path}: {source}")]
    Malformed {
        /// The path.
        path: String,
        /// What is wrong.
        #[source]
        source: TokenizerFileError,
    },
}

/// Why a text could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The bytes from `offset` on form no token (the vocabulary has no byte fallback for them).
    ///
    /// dllama aborts on an assertion here.
    #[error("text from byte {offset} cannot be spelled with the vocabulary")]
    Unencodable {
        /// Byte offset in the text where the unmatched bytes begin.
        offset: usize,
    },
}

/// Why an id could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The id is not in the vocabulary.
    #[error("token id {id} is out of the vocabulary (size {vocab_size})")]
    UnknownId {
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab_size: usize,
    },
}

/// A loaded vocabulary: encode text to ids (dllama's algorithm), look up pieces, know bos/eos.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    pieces: Vec<Box<[u8]>>,
    scores: Vec<f32>,
    /// Regular token bytes → the id dllama's lookup returns for them.
    regular: HashMap<Box<[u8]>, u32>,
    /// Special ids in increasing order, grouped by first byte for the prefix scan.
    specials_by_first_byte: HashMap<u8, Vec<u32>>,
    special: Vec<bool>,
    bos_id: Option<u32>,
    add_bos: bool,
    eos_ids: Vec<u32>,
    chat_template: Option<String>,
    max_token_length: usize,
    kind: VocabKind,
    uses_extension: bool,
    /// Byte-level BPE trained with every digit as its own pre-token (see [`Tokenizer::from_file`]).
    isolate_digits: bool,
}

impl Tokenizer {
    /// Reads and parses a `.t` file.
    pub fn load(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|source| TokenizerError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Tokenizer::from_bytes(&bytes).map_err(|e| match e {
            TokenizerError::File(source) => TokenizerError::Malformed {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    /// Parses `.t` bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Tokenizer, TokenizerError> {
        Ok(Tokenizer::from_file(&TokenizerFile::parse(bytes)?))
    }

    /// Builds the tokenizer from a parsed file (the parser has validated every id and length).
    pub fn from_file(file: &TokenizerFile) -> Tokenizer {
        let n = file.vocab.len();
        let pieces: Vec<Box<[u8]>> = file
            .vocab
            .iter()
            .map(|t| t.bytes.clone().into_boxed_slice())
            .collect();
        let scores: Vec<f32> = file.vocab.iter().map(|t| t.score).collect();
        let special: Vec<bool> = (0..n).map(|id| file.is_special(id as u32)).collect();

        let mut specials_by_first_byte: HashMap<u8, Vec<u32>> = HashMap::new();
        for (id, piece) in pieces.iter().enumerate() {
            if special[id]
                && let Some(&first) = piece.first()
            {
                specials_by_first_byte
                    .entry(first)
                    .or_default()
                    .push(id as u32);
            }
        }

        let regular = dllama_lookup_table(&pieces, &special);
        let chat_template = file
            .chat_template
            .as_ref()
            .map(|t| String::from_utf8_lossy(t).into_owned());
        let max_token_length = pieces.iter().map(|p| p.len()).max().unwrap_or(0);
        let kind = file
            .extension
            .as_ref()
            .map_or(VocabKind::Unspecified, |e| e.kind);
        let uses_extension = file
            .extension
            .as_ref()
            .is_some_and(|e| !e.token_types.is_empty());
        // A vocabulary trained with digits split one by one (SmolLM2's `Digits` pre-tokenizer)
        // has single-digit tokens and no other token containing a digit; the .t file does not
        // name the pre-tokenizer, so this is read off the vocabulary.
        let regular_with_digit = |single: bool| {
            regular
                .keys()
                .any(|k| (k.len() == 1) == single && k.iter().any(u8::is_ascii_digit))
        };
        let isolate_digits = kind == VocabKind::ByteLevelBpe
            && uses_extension
            && regular_with_digit(true)
            && !regular_with_digit(false);
        Tokenizer {
            bos_id: file.true_bos_id(),
            add_bos: file.true_add_bos(),
            eos_ids: file.eos_ids.clone(),
            kind,
            uses_extension,
            isolate_digits,
            pieces,
            scores,
            regular,
            specials_by_first_byte,
            special,
            chat_template,
            max_token_length,
        }
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// The bytes token `id` stands for.
    pub fn piece(&self, id: u32) -> Option<&[u8]> {
        self.pieces.get(id as usize).map(|p| &p[..])
    }

    /// The merge score of token `id`.
    pub fn score(&self, id: u32) -> Option<f32> {
        self.scores.get(id as usize).copied()
    }

    /// Whether `id` is a special token (matched verbatim in text, never built by merges).
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The beginning-of-sequence id, if the vocabulary has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Whether [`Tokenizer::encode`] prepends bos at the start of a sequence.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Every id that ends generation (dllama stops at any of them).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Whether `id` ends generation.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }

    /// The Jinja chat template stored in the file (lossily decoded), if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Longest token in bytes.
    pub fn max_token_length(&self) -> usize {
        self.max_token_length
    }

    /// The vocabulary family recorded by airllama's converter ([`VocabKind::Unspecified`] for
    /// files written by dllama's converter).
    pub fn kind(&self) -> VocabKind {
        self.kind
    }

    /// Whether special tokens come from the converter's recorded token classes rather than
    /// dllama's `id >= bos_id` rule.
    pub fn uses_recorded_token_classes(&self) -> bool {
        self.uses_extension
    }

    /// Encodes `text` as dllama does (`encode(text, tokens, &n, is_start, add_special_tokens)`).
    ///
    /// `is_start` prepends bos when the vocabulary asks for it; `add_special_tokens` lets special
    /// tokens written in the text (`<|im_start|>`) be recognised.
    pub fn encode(
        &self,
        text: &str,
        is_start: bool,
        add_special_tokens: bool,
    ) -> Result<Vec<u32>, EncodeError> {
        self.encode_bytes(text.as_bytes(), is_start, add_special_tokens)
    }

    /// [`Tokenizer::encode`] for arbitrary bytes (dllama takes a C string; any bytes work here).
    pub fn encode_bytes(
        &self,
        bytes: &[u8],
        is_start: bool,
        add_special_tokens: bool,
    ) -> Result<Vec<u32>, EncodeError> {
        let mut tokens: Vec<u32> = Vec::with_capacity(bytes.len() + 1);
        if is_start
            && self.add_bos
            && let Some(bos) = self.bos_id
        {
            tokens.push(bos);
        }
        if self.uses_extension {
            self.encode_isolated(bytes, add_special_tokens, &mut tokens)?;
        } else {
            // dllama: one scan over the whole text, then merges over the whole list (bos
            // included).
            self.scan(bytes, 0, add_special_tokens, &mut tokens)?;
            self.merge(&mut tokens);
        }
        Ok(tokens)
    }

    /// Encoding with the converter's token classes: special tokens are cut out first and never
    /// take part in merges, and for byte-level BPE vocabularies the text between them is split
    /// into GPT-2 pre-tokens that are merged separately (as Hugging Face tokenizers do).
    fn encode_isolated(
        &self,
        bytes: &[u8],
        add_special_tokens: bool,
        tokens: &mut Vec<u32>,
    ) -> Result<(), EncodeError> {
        let mut text_start = 0usize;
        let mut i = 0usize;
        let encode_text = |range: std::ops::Range<usize>, tokens: &mut Vec<u32>| {
            let text = &bytes[range.clone()];
            let chunks = if self.kind == VocabKind::ByteLevelBpe {
                gpt2_pre_tokens(text, self.isolate_digits)
            } else {
                std::iter::once(0..text.len()).collect()
            };
            for chunk in chunks {
                let mut part = Vec::new();
                self.scan(
                    &text[chunk.clone()],
                    range.start + chunk.start,
                    false,
                    &mut part,
                )?;
                self.merge(&mut part);
                tokens.extend_from_slice(&part);
            }
            Ok::<(), EncodeError>(())
        };
        while i < bytes.len() {
            if add_special_tokens && let Some(id) = self.special_prefix(&bytes[i..]) {
                encode_text(text_start..i, tokens)?;
                tokens.push(id);
                i += self.pieces[id as usize].len();
                text_start = i;
            } else {
                i += 1;
            }
        }
        encode_text(text_start..bytes.len(), tokens)
    }

    /// dllama's left-to-right scan: special tokens (when enabled) taken verbatim, other bytes
    /// gathered until they spell a regular token. `offset` is `bytes`' place in the whole text,
    /// for errors.
    fn scan(
        &self,
        bytes: &[u8],
        offset: usize,
        add_special_tokens: bool,
        tokens: &mut Vec<u32>,
    ) -> Result<(), EncodeError> {
        // Offset where the pending (not yet matched) bytes began, and the bytes themselves.
        let mut pending_start = 0usize;
        let mut pending: Vec<u8> = Vec::with_capacity(self.max_token_length.max(4));
        let mut i = 0usize;
        while let Some(&b) = bytes.get(i) {
            if add_special_tokens && let Some(id) = self.special_prefix(&bytes[i..]) {
                tokens.push(id);
                i += self.pieces[id as usize].len();
                continue;
            }
            if pending.is_empty() {
                pending_start = i;
            }
            pending.push(b);
            if let Some(&id) = self.regular.get(&pending[..]) {
                tokens.push(id);
                pending.clear();
            } else if pending.len() >= self.max_token_length {
                // No token is longer: these bytes can never be matched (dllama would go on
                // until its buffer assertion fires).
                return Err(EncodeError::Unencodable {
                    offset: offset + pending_start,
                });
            }
            i += 1;
        }
        if !pending.is_empty() {
            return Err(EncodeError::Unencodable {
                offset: offset + pending_start,
            });
        }
        Ok(())
    }

    /// The first special token (lowest id) that `text` starts with.
    fn special_prefix(&self, text: &[u8]) -> Option<u32> {
        let candidates = self.specials_by_first_byte.get(text.first()?)?;
        candidates
            .iter()
            .copied()
            .find(|&id| text.starts_with(&self.pieces[id as usize]))
    }

    /// The id of the regular token spelled by `a` followed by `b`, with its score, if it may
    /// merge.
    fn merge_of(&self, a: u32, b: u32, buf: &mut Vec<u8>) -> Option<(u32, f32)> {
        buf.clear();
        buf.extend_from_slice(&self.pieces[a as usize]);
        buf.extend_from_slice(&self.pieces[b as usize]);
        let id = *self.regular.get(&buf[..])?;
        let score = self.scores[id as usize];
        (score > MIN_MERGE_SCORE).then_some((id, score))
    }

    /// dllama's merge loop: always the best-scoring pair, leftmost on ties.
    fn merge(&self, tokens: &mut Vec<u32>) {
        let n = tokens.len();
        if n < 2 {
            return;
        }
        // A doubly linked list over the original positions; merged nodes keep the left index,
        // so index order is left-to-right order, as dllama's array index is.
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut alive = vec![true; n];
        let mut buf = Vec::with_capacity(2 * self.max_token_length);
        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<MergeCandidate>,
                    tokens: &[u32],
                    left: usize,
                    right: usize,
                    buf: &mut Vec<u8>| {
            if let Some((id, score)) = self.merge_of(tokens[left], tokens[right], buf) {
                heap.push(MergeCandidate {
                    score,
                    left,
                    right,
                    left_id: tokens[left],
                    right_id: tokens[right],
                    merged: id,
                });
            }
        };
        for left in 0..n - 1 {
            push(&mut heap, tokens, left, left + 1, &mut buf);
        }
        while let Some(c) = heap.pop() {
            let valid = alive[c.left]
                && alive[c.right]
                && next[c.left] == c.right
                && tokens[c.left] == c.left_id
                && tokens[c.right] == c.right_id;
            if !valid {
                continue;
            }
            tokens[c.left] = c.merged;
            alive[c.right] = false;
            let after = next[c.right];
            next[c.left] = after;
            if after < n {
                prev[after] = c.left;
                push(&mut heap, tokens, c.left, after, &mut buf);
            }
            let before = prev[c.left];
            if before < n {
                push(&mut heap, tokens, before, c.left, &mut buf);
            }
        }
        let mut out = 0;
        for i in 0..n {
            if alive[i] {
                tokens[out] = tokens[i];
                out += 1;
            }
        }
        tokens.truncate(out);
    }

    /// Decodes a whole id sequence to text (a [`StreamDecoder`] run to its end).
    pub fn decode_all(&self, ids: &[u32]) -> Result<String, DecodeError> {
        let mut decoder = StreamDecoder::new();
        let mut text = String::new();
        for &id in ids {
            text.push_str(decoder.decode(self, id)?);
        }
        text.push_str(decoder.finish());
        Ok(text)
    }
}

/// A possible merge of the adjacent nodes `left`, `right` (valid while both still hold the ids
/// recorded here and are still adjacent).
#[derive(Debug)]
struct MergeCandidate {
    score: f32,
    left: usize,
    right: usize,
    left_id: u32,
    right_id: u32,
    merged: u32,
}

impl PartialEq for MergeCandidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for MergeCandidate {}
impl PartialOrd for MergeCandidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for MergeCandidate {
    /// Greater = merged first: higher score (compared as dllama's `>`, so `-0.0 == 0.0`; NaN
    /// scores never get here), then the smaller position.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// The regular-token table: bytes → the id dllama's `findRegularToken` returns.
///
/// dllama `qsort`s the regular tokens by `strcmp` and `bsearch`es them. Bytes spelled by one
/// token map to it; for bytes spelled by several, the sort (stable: glibc sorts with a merge
/// sort) and `bsearch`'s midpoint probes decide, and are replayed here.
fn dllama_lookup_table(pieces: &[Box<[u8]>], special: &[bool]) -> HashMap<Box<[u8]>, u32> {
    let mut sorted: Vec<u32> = (0..pieces.len() as u32)
        .filter(|&id| !special[id as usize])
        .collect();
    sorted.sort_by(|&a, &b| pieces[a as usize].cmp(&pieces[b as usize]));
    let mut table: HashMap<Box<[u8]>, u32> = HashMap::with_capacity(sorted.len());
    let mut i = 0;
    while i < sorted.len() {
        let key = &pieces[sorted[i] as usize];
        let mut j = i + 1;
        while j < sorted.len() && pieces[sorted[j] as usize] == *key {
            j += 1;
        }
        let id = if j - i == 1 {
            sorted[i]
        } else {
            glibc_bsearch(&sorted, pieces, key)
        };
        table.insert(key.clone(), id);
        i = j;
    }
    table
}

/// glibc's `bsearch` over `sorted` for a key known to be present.
fn glibc_bsearch(sorted: &[u32], pieces: &[Box<[u8]>], key: &[u8]) -> u32 {
    let (mut lo, mut hi) = (0usize, sorted.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        match key.cmp(&pieces[sorted[mid] as usize]) {
            Ordering::Less => hi = mid,
            Ordering::Greater => lo = mid + 1,
            Ordering::Equal => return sorted[mid],
        }
    }
    // Unreachable for a present key; the first equal entry is the natural answer.
    sorted[lo.min(sorted.len() - 1)]
}

/// Streaming detokenizer: ids in, valid UTF-8 text out.
///
/// Policy (dllama's, made bounded and strict):
/// - bos decodes to nothing;
/// - an eos id flushes: any held bytes become one U+FFFD (dllama returns them raw), and the
///   decoder starts afresh;
/// - any other token's bytes are appended to the stream; complete characters are returned, and
///   the bytes of an incomplete trailing character are held back until later tokens complete it;
/// - a maximal run of bytes that cannot form a character (stray continuation bytes, a sequence
///   cut short, bytes that are never valid in UTF-8, overlong forms, surrogates) becomes a single
///   U+FFFD, emitted just before the next valid character (or at a flush) — dllama emits one
///   U+FFFD per such run too, but keeps the run's bytes in a fixed buffer and aborts when it is
///   long; here only a flag is kept.
///
/// Validity follows the Unicode standard (Table 3-7), so the output is always a `&str`. dllama
/// checks only lead/continuation bit patterns and passes overlong forms, surrogates and code
/// points above U+10FFFF through as ill-formed bytes; for well-formed UTF-8 the two agree.
#[derive(Clone, Debug, Default)]
pub struct StreamDecoder {
    partial: [u8; 4],
    partial_len: u8,
    needed: u8,
    invalid_run: bool,
    out: String,
}

impl StreamDecoder {
    /// A decoder with nothing held.
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    /// Forgets any held bytes (dllama's `resetDecoder`).
    pub fn reset(&mut self) {
        self.partial_len = 0;
        self.needed = 0;
        self.invalid_run = false;
        self.out.clear();
    }

    /// Whether bytes are held back waiting for more.
    pub fn has_pending(&self) -> bool {
        self.partial_len > 0 || self.invalid_run
    }

    /// Feeds one token id; returns the text it completes (possibly empty).
    pub fn decode(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<&str, DecodeError> {
        self.out.clear();
        let piece = tokenizer.piece(id).ok_or(DecodeError::UnknownId {
            id,
            vocab_size: tokenizer.vocab_size(),
        })?;
        if tokenizer.bos_id() == Some(id) {
            return Ok(&self.out);
        }
        if tokenizer.is_eos(id) {
            self.flush();
            return Ok(&self.out);
        }
        for &b in piece {
            self.push_byte(b);
        }
        Ok(&self.out)
    }

    /// Feeds raw bytes (as if from a token); returns the completed text.
    pub fn decode_bytes(&mut self, bytes: &[u8]) -> &str {
        self.out.clear();
        for &b in bytes {
            self.push_byte(b);
        }
        &self.out
    }

    /// Ends the stream: held bytes become U+FFFD; the decoder is reset.
    pub fn finish(&mut self) -> &str {
        self.out.clear();
        self.flush();
        &self.out
    }

    fn flush(&mut self) {
        if self.partial_len > 0 {
            self.invalid_run = true;
        }
        if self.invalid_run {
            self.out.push(char::REPLACEMENT_CHARACTER);
        }
        self.partial_len = 0;
        self.needed = 0;
        self.invalid_run = false;
    }

    fn emit(&mut self, c: char) {
        if self.invalid_run {
            self.out.push(char::REPLACEMENT_CHARACTER);
            self.invalid_run = false;
        }
        self.out.push(c);
    }

    fn push_byte(&mut self, b: u8) {
        if self.partial_len > 0 {
            let second = self.partial_len == 1;
            let ok = match (second, self.partial[0]) {
                (true, 0xe0) => (0xa0..=0xbf).contains(&b),
                (true, 0xed) => (0x80..=0x9f).contains(&b),
                (true, 0xf0) => (0x90..=0xbf).contains(&b),
                (true, 0xf4) => (0x80..=0x8f).contains(&b),
                _ => (0x80..=0xbf).contains(&b),
            };
            if ok {
                self.partial[self.partial_len as usize] = b;
                self.partial_len += 1;
                if self.partial_len == self.needed {
                    let len = self.partial_len as usize;
                    self.partial_len = 0;
                    self.needed = 0;
                    let c = std::str::from_utf8(&self.partial[..len])
                        .ok()
                        .and_then(|s| s.chars().next())
                        .unwrap_or(char::REPLACEMENT_CHARACTER);
                    self.emit(c);
                }
                return;
            }
            // The held sequence is cut short: it joins the invalid run, and `b` starts afresh.
            self.partial_len = 0;
            self.needed = 0;
            self.invalid_run = true;
        }
        let needed = match b {
            0x00..=0x7f => {
                self.emit(char::from(b));
                return;
            }
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => {
                self.invalid_run = true;
                return;
            }
        };
        self.partial[0] = b;
        self.partial_len = 1;
        self.needed = needed;
    }
}

/// What the GPT-2 pre-tokenizer pattern sees of a character.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CharClass {
    /// `\p{L}` (approximated by Unicode `Alphabetic` minus numerics).
    Letter,
    /// `\p{N}`.
    Number,
    /// `\s` (Unicode `White_Space`).
    Space,
    /// Anything else, and bytes that are not UTF-8.
    Other,
}

/// A character (or a stray byte) of the text being pre-tokenized.
#[derive(Clone, Copy, Debug)]
struct PreTokenUnit {
    c: Option<char>,
    start: usize,
    class: CharClass,
}

/// Splits text as GPT-2's pre-tokenizer pattern does (after cutting out each numeric character
/// when `isolate_digits`, as Hugging Face's `Digits(individual_digits)` does):
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
///
/// Hugging Face's byte-level BPE runs this regex before merging, so no merge crosses a word
/// boundary. `\p{N}` is `char::is_numeric`; `\p{L}` is approximated by `char::is_alphabetic` on
/// the rest (which also admits the combining marks that are `Other_Alphabetic`, e.g. Devanagari
/// vowel signs); bytes that are not UTF-8 count as punctuation.
fn gpt2_pre_tokens(text: &[u8], isolate_digits: bool) -> Vec<std::ops::Range<usize>> {
    let mut units: Vec<PreTokenUnit> = Vec::with_capacity(text.len());
    let mut at = 0usize;
    for chunk in text.utf8_chunks() {
        for c in chunk.valid().chars() {
            // Numeric first: letter numbers (Roman numerals) are `Alphabetic` but `\p{N}`.
            let class = if c.is_numeric() {
                CharClass::Number
            } else if c.is_alphabetic() {
                CharClass::Letter
            } else if c.is_whitespace() {
                CharClass::Space
            } else {
                CharClass::Other
            };
            units.push(PreTokenUnit {
                c: Some(c),
                start: at,
                class,
            });
            at += c.len_utf8();
        }
        for _ in chunk.invalid() {
            units.push(PreTokenUnit {
                c: None,
                start: at,
                class: CharClass::Other,
            });
            at += 1;
        }
    }
    let byte_at = |u: usize| units.get(u).map_or(text.len(), |x| x.start);
    let mut out = Vec::new();
    // With isolated digits every numeric character is a pre-token of its own and the pattern
    // runs on each stretch between them separately (its look-ahead ends at the stretch's end).
    let mut span_start = 0usize;
    while span_start < units.len() {
        let span_end = if isolate_digits {
            units[span_start..]
                .iter()
                .position(|x| x.class == CharClass::Number)
                .map_or(units.len(), |p| span_start + p)
        } else {
            units.len()
        };
        if span_end == span_start {
            out.push(byte_at(span_start)..byte_at(span_start + 1));
            span_start += 1;
            continue;
        }
        let span = &units[span_start..span_end];
        let mut u = 0usize;
        while u < span.len() {
            let end = gpt2_match_end(span, u);
            out.push(byte_at(span_start + u)..byte_at(span_start + end));
            u = end;
        }
        span_start = span_end;
    }
    out
}

/// The unit index where the GPT-2 pattern's match starting at unit `u` ends (always `> u`).
fn gpt2_match_end(units: &[PreTokenUnit], u: usize) -> usize {
    let n = units.len();
    if units[u].c == Some('\'') {
        for suffix in ["s", "t", "re", "ve", "m", "ll", "d"] {
            let len = suffix.chars().count();
            let matches = units.len() > u + len
                && suffix
                    .chars()
                    .zip(&units[u + 1..=u + len])
                    .all(|(s, unit)| unit.c == Some(s));
            if matches {
                return u + 1 + len;
            }
        }
    }
    // ` ?X+` for letters, numbers and other: an optional leading space, then a run of one class.
    let run_start = if units[u].c == Some(' ')
        && units
            .get(u + 1)
            .is_some_and(|x| x.class != CharClass::Space)
    {
        u + 1
    } else {
        u
    };
    let class = units[run_start].class;
    if class != CharClass::Space {
        let mut e = run_start + 1;
        while e < n && units[e].class == class {
            e += 1;
        }
        return e;
    }
    // `\s+(?!\S)` then `\s+`: a whitespace run leaves its last character to the next word.
    let mut e = u;
    while e < n && units[e].class == CharClass::Space {
        e += 1;
    }
    if e < n && e - u >= 2 { e - 1 } else { e }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str, isolate_digits: bool) -> Vec<&str> {
        gpt2_pre_tokens(text.as_bytes(), isolate_digits)
            .into_iter()
            .map(|r| &text[r])
            .collect()
    }

    #[test]
    fn gpt2_pattern_splits_words_contractions_and_spaces() {
        assert_eq!(
            split("Hello, world! don't  stop\t\tnow   ", false),
            [
                "Hello", ",", " world", "!", " don", "'t", " ", " stop", "\t", "\t", "now", "   "
            ]
        );
        assert_eq!(split("it's 2024 ok", false), ["it", "'s", " 2024", " ok"]);
        assert_eq!(
            split("it's 2024 ok", true),
            ["it", "'s", " ", "2", "0", "2", "4", " ok"]
        );
        assert_eq!(split("  0.", true), ["  ", "0", "."]);
        assert_eq!(split("'S x", false), ["'", "S", " x"]);
        assert!(split("", false).is_empty());
        // Letter numbers are numbers, isolated like digits.
        assert_eq!(
            split("\u{216b} ch \u{2177}", true),
            ["\u{216b}", " ch", " ", "\u{2177}"]
        );
    }

    #[test]
    fn invalid_utf8_counts_as_punctuation() {
        let text = b"ab\xff\xfe cd";
        let parts: Vec<&[u8]> = gpt2_pre_tokens(text, false)
            .into_iter()
            .map(|r| &text[r])
            .collect();
        assert_eq!(parts, [&b"ab"[..], b"\xff\xfe", b" cd"]);
    }
}
