//! GGUF vocabulary → `.t` tokenizer file.
//!
//! Token strings become the raw bytes they decode to: GPT-2 byte-level BPE strings through the
//! inverse of GPT-2's byte-to-unicode table (`Ġ` → space), SentencePiece strings with `▁` as a
//! space and `<0xXX>` as that byte, as dllama's `convert-tokenizer-hf.py` does. Characters outside
//! the table are kept as their UTF-8 bytes (added tokens are stored verbatim in GGUF).
//!
//! Scores come from `tokenizer.ggml.scores`, or else `-id` like dllama's converter (byte-level
//! BPE vocabularies list merged tokens in merge order, so a lower id is an earlier merge).
//!
//! dllama takes every id `>= BOS_ID` as special. When the GGUF's control tokens do not sit at the
//! end (SmolLM2: ids 0..=16, bos 1), [`VocabOrder`] relabels the vocabulary so that they do: the
//! specials move to the last ids, bos first, and `BOS_ID` / `ADD_BOS` get the true values (the
//! model's embedding and classifier rows move with them). The true bos id, add-bos flag and
//! every token's class also go into the [`AirllamaExtension`] that dllama skips. See
//! `docs/CONVERT.md`.
use super::ConvertError;
use crate::gguf::{GgufArray, GgufHeader, GgufValue};
use crate::tokenizer_file::{AirllamaExtension, Token, TokenType, TokenizerFile, VocabKind};

/// GPT-2's byte-to-unicode table, inverted: `table[char]` for the 256 chars it uses.
///
/// Printable Latin-1 bytes (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`) stand for themselves; the other 68
/// bytes are mapped, in byte order, to U+0100 onwards.
pub fn gpt2_unicode_to_byte(c: char) -> Option<u8> {
    let code = c as u32;
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    if printable(code) {
        return Some(code as u8);
    }
    let n = code.checked_sub(0x100)?;
    // The n-th byte (in increasing order) that is not printable.
    (0u32..256)
        .filter(|&b| !printable(b))
        .nth(n as usize)
        .map(|b| b as u8)
}

fn gpt2_token_bytes(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    for c in s.chars() {
        match gpt2_unicode_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

fn sentencepiece_token_bytes(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    if b.len() == 6
        && b.starts_with(b"<0x")
        && b[5] == b'>'
        && let Ok(v) = u8::from_str_radix(&s[3..5], 16)
    {
        return vec![v];
    }
    s.replace('\u{2581}', " ").into_bytes()
}

fn meta<'a>(gguf: &'a GgufHeader, key: &'static str) -> Option<&'a GgufValue> {
    gguf.get(key)
}

fn bad(key: &'static str, reason: &'static str) -> ConvertError {
    ConvertError::BadMetadata { key, reason }
}

fn token_id(gguf: &GgufHeader, key: &'static str, n: usize) -> Result<Option<u32>, ConvertError> {
    match meta(gguf, key) {
        None => Ok(None),
        Some(v) => {
            let id = v.as_u64().ok_or(bad(key, "not a non-negative integer"))?;
            if id >= n as u64 {
                return Err(bad(key, "not a token id of the vocabulary"));
            }
            Ok(Some(id as u32))
        }
    }
}

/// The GGUF's token classes (`tokenizer.ggml.token_type`, empty when absent) and its bos id.
///
/// `n` is the vocabulary size the ids are checked against.
fn token_classes(
    gguf: &GgufHeader,
    n: usize,
) -> Result<(Vec<TokenType>, Option<u32>), ConvertError> {
    const KEY: &str = "tokenizer.ggml.token_type";
    let types: Vec<TokenType> = match meta(gguf, KEY) {
        None => Vec::new(),
        Some(v) => {
            let codes = v
                .as_array()
                .and_then(GgufArray::to_i64s)
                .ok_or(bad(KEY, "not an array of integers"))?;
            if codes.len() != n {
                return Err(bad(KEY, "length differs from the vocabulary"));
            }
            codes
                .into_iter()
                .map(|c| TokenType::from_code(c).ok_or(bad(KEY, "unknown token type")))
                .collect::<Result<_, _>>()?
        }
    };
    let bos = token_id(gguf, "tokenizer.ggml.bos_token_id", n)?;
    Ok((types, bos))
}

/// How the converter numbers the tokens: ids in the `.t` file, and rows of the embedding and
/// the classifier in the `.m` file, against the GGUF's ids.
///
/// dllama's tokenizer splits the vocabulary at its `BOS_ID` key: ids below are regular (merged
/// by score), ids from it on are special (matched verbatim), and its chat loop only works when
/// the chat markers are special. Vocabularies with their control tokens first (SmolLM2: ids
/// 0..=16, bos 1; SentencePiece Llama 2: `<s>` 1, `</s>` 2 before the byte tokens) cannot satisfy
/// that rule under their own ids, and dllama refuses unknown header keys, so the converter
/// relabels: the special tokens (control, user-defined, and bos) move to the last ids, bos
/// first, and the ordinary tokens that sat there take their places; every other token keeps its
/// GGUF id. Moving an embedding row and a classifier row together with the token changes no
/// computation, only the numbers. When the rule already holds (Llama 3, Qwen3) or the GGUF has
/// no token types, the order is the identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VocabOrder {
    /// `source[file_id]` is the GGUF id; empty for the identity.
    source: Vec<u32>,
    /// `file[gguf_id]` is the file id; empty for the identity.
    file: Vec<u32>,
}

impl VocabOrder {
    /// No relabeling.
    pub fn identity() -> VocabOrder {
        VocabOrder::default()
    }

    /// The order for a vocabulary with these GGUF token types and bos id (see the type docs).
    pub fn for_dllama(types: &[TokenType], bos: Option<u32>) -> VocabOrder {
        let n = types.len();
        if dllama_rule_holds(types, bos) {
            return VocabOrder::identity();
        }
        let is_special = |id: usize| types[id].is_special() || bos == Some(id as u32);
        let specials: Vec<u32> = bos
            .into_iter()
            .chain(
                (0..n)
                    .filter(|&id| is_special(id) && bos != Some(id as u32))
                    .map(|id| id as u32),
            )
            .collect();
        let k = specials.len();
        if k == 0 || k == n {
            return VocabOrder::identity();
        }
        let tail = n - k;
        let mut source: Vec<u32> = (0..n as u32).collect();
        for (j, &s) in specials.iter().enumerate() {
            source[tail + j] = s;
        }
        // The ordinary tokens the specials displaced from the tail, in order, fill the slots
        // the specials left, in order; both lists have the same length.
        let mut freed: Vec<u32> = specials
            .iter()
            .copied()
            .filter(|&s| (s as usize) < tail)
            .collect();
        freed.sort_unstable();
        let displaced = (tail..n).filter(|&id| !is_special(id)).map(|id| id as u32);
        for (slot, token) in freed.into_iter().zip(displaced) {
            source[slot as usize] = token;
        }
        let mut file = vec![0u32; n];
        for (file_id, &gguf_id) in source.iter().enumerate() {
            file[gguf_id as usize] = file_id as u32;
        }
        VocabOrder { source, file }
    }

    /// The order `tokenizer_from_gguf` and `ModelPlan` use for this GGUF: from its token types
    /// and bos id (identity when it has no token types).
    pub fn from_gguf(gguf: &GgufHeader) -> Result<VocabOrder, ConvertError> {
        let n = match meta(gguf, "tokenizer.ggml.token_type") {
            None => return Ok(VocabOrder::identity()),
            Some(v) => v
                .as_array()
                .map(GgufArray::len)
                .ok_or(bad("tokenizer.ggml.token_type", "not an array of integers"))?,
        };
        let (types, bos) = token_classes(gguf, n)?;
        Ok(VocabOrder::for_dllama(&types, bos))
    }

    /// Whether every token keeps its GGUF id.
    pub fn is_identity(&self) -> bool {
        self.source.iter().enumerate().all(|(i, &s)| i as u32 == s)
    }

    /// The GGUF id of file id `id`.
    pub fn source_id(&self, id: u32) -> u32 {
        self.source.get(id as usize).copied().unwrap_or(id)
    }

    /// The file id of GGUF id `id`.
    pub fn file_id(&self, id: u32) -> u32 {
        self.file.get(id as usize).copied().unwrap_or(id)
    }

    /// Vocabulary size this order was made for (0 for the identity).
    pub fn len(&self) -> usize {
        self.source.len()
    }

    /// Whether this is the empty identity order.
    pub fn is_empty(&self) -> bool {
        self.source.is_empty()
    }

    /// `(gguf id, file id)` of every token that moved, by GGUF id.
    pub fn moved(&self) -> Vec<(u32, u32)> {
        self.file
            .iter()
            .enumerate()
            .filter(|&(g, &f)| g as u32 != f)
            .map(|(g, &f)| (g as u32, f))
            .collect()
    }
}

/// dllama's tokenizer rule: every ordinary (normal, byte) token below the bos id and every
/// control or user-defined token at or above it; the bos token itself and the other classes
/// (unknown, unused, undefined) may sit anywhere.
fn dllama_rule_holds(types: &[TokenType], bos: Option<u32>) -> bool {
    let Some(bos) = bos else { return false };
    types.iter().enumerate().all(|(id, t)| {
        let id = id as u32;
        if id == bos {
            true
        } else if matches!(t, TokenType::Normal | TokenType::Byte) {
            id < bos
        } else if t.is_special() {
            id >= bos
        } else {
            true
        }
    })
}

/// Builds the `.t` contents from a GGUF's `tokenizer.*` metadata, with token ids relabeled by
/// [`VocabOrder::from_gguf`] (the same order `write_model` gives the embedding and classifier
/// rows).
pub fn tokenizer_from_gguf(gguf: &GgufHeader) -> Result<TokenizerFile, ConvertError> {
    const MODEL: &str = "tokenizer.ggml.model";
    const TOKENS: &str = "tokenizer.ggml.tokens";
    let model = meta(gguf, MODEL)
        .ok_or(ConvertError::MissingMetadata(MODEL))?
        .as_str()
        .ok_or(bad(MODEL, "not a string"))?;
    let kind = match model {
        "gpt2" => VocabKind::ByteLevelBpe,
        "llama" => VocabKind::SentencePiece,
        other => return Err(ConvertError::UnsupportedTokenizer(other.to_string())),
    };
    let strings = match meta(gguf, TOKENS).ok_or(ConvertError::MissingMetadata(TOKENS))? {
        GgufValue::Array(GgufArray::String(v)) => v,
        _ => return Err(bad(TOKENS, "not an array of strings")),
    };
    let n = strings.len();
    if n == 0 {
        return Err(bad(TOKENS, "empty vocabulary"));
    }

    let scores: Option<Vec<f32>> = match meta(gguf, "tokenizer.ggml.scores") {
        None => None,
        Some(v) => {
            let s = v
                .as_array()
                .and_then(GgufArray::to_f32s)
                .ok_or(bad("tokenizer.ggml.scores", "not an array of floats"))?;
            if s.len() != n {
                return Err(bad(
                    "tokenizer.ggml.scores",
                    "length differs from the vocabulary",
                ));
            }
            Some(s)
        }
    };
    let (source_types, source_bos) = token_classes(gguf, n)?;
    let order = VocabOrder::for_dllama(&source_types, source_bos);

    let mut vocab = Vec::with_capacity(n);
    for file_id in 0..n as u32 {
        let id = order.source_id(file_id);
        let raw = &strings[id as usize];
        let s = std::str::from_utf8(raw).map_err(|_| ConvertError::BadToken {
            id,
            reason: "not UTF-8",
        })?;
        let bytes = match kind {
            VocabKind::ByteLevelBpe => gpt2_token_bytes(s),
            _ => sentencepiece_token_bytes(s),
        };
        if bytes.is_empty() {
            return Err(ConvertError::BadToken {
                id,
                reason: "empty (dllama cannot load empty tokens)",
            });
        }
        // The score belongs to the token (its merge rank), not to its number.
        let score = scores.as_ref().map_or(-(id as f32), |s| s[id as usize]);
        vocab.push(Token { bytes, score });
    }
    let token_types: Vec<TokenType> = if source_types.is_empty() {
        Vec::new()
    } else {
        (0..n as u32)
            .map(|f| source_types[order.source_id(f) as usize])
            .collect()
    };

    let true_bos = source_bos.map(|b| order.file_id(b));
    let true_add_bos = match meta(gguf, "tokenizer.ggml.add_bos_token") {
        Some(v) => v
            .as_bool()
            .ok_or(bad("tokenizer.ggml.add_bos_token", "not a bool"))?,
        // llama.cpp's defaults: SentencePiece vocabularies start with bos, GPT-2 ones do not.
        None => kind == VocabKind::SentencePiece,
    };
    let mut eos_ids = Vec::new();
    for key in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some(id) = token_id(gguf, key, n)?.map(|id| order.file_id(id))
            && !eos_ids.contains(&id)
        {
            eos_ids.push(id);
        }
    }
    let chat_template = match meta(gguf, "tokenizer.chat_template") {
        None => None,
        Some(v) => {
            let t = v
                .as_bytes()
                .ok_or(bad("tokenizer.chat_template", "not a string"))?;
            (!t.is_empty()).then(|| t.to_vec())
        }
    };

    let (bos_id, add_bos) = dllama_bos(&token_types, true_bos, true_add_bos, n);
    // The renumbering is recorded, so that GGUF (Hugging Face) ids can be recovered.
    let moved: Vec<(u32, u32)> = order.moved().iter().map(|&(g, f)| (f, g)).collect();
    let chat_stops = if moved.is_empty() {
        Vec::new()
    } else {
        vec![TokenizerFile::id_map_region(&moved)]
    };
    Ok(TokenizerFile {
        vocab,
        bos_id,
        add_bos,
        eos_ids,
        chat_template,
        chat_stops,
        extension: Some(AirllamaExtension {
            kind,
            bos_id: true_bos,
            add_bos: true_add_bos,
            token_types,
        }),
    })
}

/// `file` with its tokens back at their GGUF ids ([`TokenizerFile::source_ids`]), as the
/// converter wrote it before it renumbered tokens for dllama: `BOS_ID` then holds dllama's split
/// point when the GGUF order breaks dllama's rule ([`dllama_bos`]), the true bos in the
/// extension. A file without an id map is returned as it is. For comparisons with Hugging
/// Face's ids.
pub fn in_gguf_order(file: &TokenizerFile) -> Result<TokenizerFile, ConvertError> {
    let Some(source) = file.source_ids()? else {
        return Ok(file.clone());
    };
    let n = source.len();
    // A parsed file has every id in range; a hand-built one gets an error, not a panic.
    let out_of_range = || {
        ConvertError::Tokenizer(crate::tokenizer_file::TokenizerFileError::BadExtension(
            "an id outside the vocabulary",
        ))
    };
    let gguf_id = |f: u32| source.get(f as usize).copied().ok_or_else(out_of_range);
    let mut file_of = vec![0u32; n];
    for (f, &g) in source.iter().enumerate() {
        file_of[g as usize] = f as u32;
    }
    let mut out = file.clone();
    out.vocab = file_of
        .iter()
        .map(|&f| file.vocab.get(f as usize).cloned().ok_or_else(out_of_range))
        .collect::<Result<_, _>>()?;
    out.eos_ids = file
        .eos_ids
        .iter()
        .map(|&f| gguf_id(f))
        .collect::<Result<_, _>>()?;
    out.chat_stops
        .retain(|r| !r.starts_with(&crate::tokenizer_file::ID_MAP_MAGIC));
    match &mut out.extension {
        Some(ext) => {
            ext.bos_id = ext.bos_id.map(gguf_id).transpose()?;
            if !ext.token_types.is_empty() {
                ext.token_types = file_of
                    .iter()
                    .map(|&f| {
                        ext.token_types
                            .get(f as usize)
                            .copied()
                            .ok_or_else(out_of_range)
                    })
                    .collect::<Result<_, _>>()?;
            }
            (out.bos_id, out.add_bos) = dllama_bos(&ext.token_types, ext.bos_id, ext.add_bos, n);
        }
        None => out.bos_id = gguf_id(file.bos_id)?,
    }
    Ok(out)
}

/// The `BOS_ID` / `ADD_BOS` pair to show C++ dllama, which treats ids `>= BOS_ID` as special.
///
/// After [`VocabOrder`] has relabeled the vocabulary, dllama's rule holds whenever the model has
/// a bos token and the true values are written. Without a bos (or token types) the split is put
/// one past the last ordinary token (at most the last id, so `vocab[BOS_ID]` stays a valid
/// token for dllama) and add-bos is turned off, since dllama would prepend that id.
pub fn dllama_bos(types: &[TokenType], bos: Option<u32>, add_bos: bool, n: usize) -> (u32, bool) {
    if let Some(bos) = bos
        && dllama_rule_holds(types, Some(bos))
    {
        return (bos, add_bos);
    }
    let ordinary = |t: &TokenType| matches!(t, TokenType::Normal | TokenType::Byte);
    let last_ordinary = types.iter().rposition(ordinary).map_or(n - 1, |i| i + 1);
    ((last_ordinary.min(n - 1)) as u32, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection() {
        let mut seen = [false; 256];
        let mut count = 0;
        for c in (0u32..0x200).filter_map(char::from_u32) {
            if let Some(b) = gpt2_unicode_to_byte(c) {
                assert!(!seen[b as usize], "byte {b} twice");
                seen[b as usize] = true;
                count += 1;
            }
        }
        assert_eq!(count, 256);
        assert_eq!(gpt2_unicode_to_byte('Ġ'), Some(b' '));
        assert_eq!(gpt2_unicode_to_byte('Ċ'), Some(b'\n'));
        assert_eq!(gpt2_unicode_to_byte('Ā'), Some(0));
        assert_eq!(gpt2_unicode_to_byte('a'), Some(b'a'));
    }

    #[test]
    fn token_strings_decode_to_bytes() {
        assert_eq!(gpt2_token_bytes("Ġthe"), b" the");
        assert_eq!(gpt2_token_bytes("Ã©"), "é".as_bytes());
        assert_eq!(gpt2_token_bytes("<|im_start|>"), b"<|im_start|>");
        assert_eq!(sentencepiece_token_bytes("▁the"), b" the");
        assert_eq!(sentencepiece_token_bytes("<0x0A>"), b"\n");
        assert_eq!(sentencepiece_token_bytes("<0xZZ>"), b"<0xZZ>");
    }

    #[test]
    fn specials_first_move_to_the_end_bos_first() {
        use TokenType::*;
        // SmolLM2-like: controls 0..=2, bos 1, eos 2; ordinary 3..=7.
        let types = [
            Control, Control, Control, Normal, Normal, Normal, Normal, Normal,
        ];
        let order = VocabOrder::for_dllama(&types, Some(1));
        assert!(!order.is_identity());
        let source: Vec<u32> = (0..8).map(|f| order.source_id(f)).collect();
        // Ordinary 5..=7 take the freed slots 0..=2; the specials end the vocabulary, bos first.
        assert_eq!(source, [5, 6, 7, 3, 4, 1, 0, 2]);
        for g in 0..8 {
            assert_eq!(order.source_id(order.file_id(g)), g);
        }
        let relabeled: Vec<TokenType> = source.iter().map(|&s| types[s as usize]).collect();
        assert!(dllama_rule_holds(&relabeled, Some(order.file_id(1))));
        assert_eq!(order.moved().len(), 6);
        // SentencePiece: <unk> stays, <s> and </s> swap with the last two pieces.
        let types = [Unknown, Control, Control, Byte, Byte, Normal, Normal];
        let order = VocabOrder::for_dllama(&types, Some(1));
        let source: Vec<u32> = (0..7).map(|f| order.source_id(f)).collect();
        assert_eq!(source, [0, 5, 6, 3, 4, 1, 2]);
        // Already in dllama's order (Llama 3): identity.
        let types = [Normal, Byte, Control, Control];
        assert!(VocabOrder::for_dllama(&types, Some(2)).is_identity());
        // A bos typed as a normal token still opens the special range.
        let types = [Normal, Normal, Control, Normal];
        let order = VocabOrder::for_dllama(&types, Some(0));
        let source: Vec<u32> = (0..4).map(|f| order.source_id(f)).collect();
        assert_eq!(source, [3, 1, 0, 2]);
        // Nothing special at all: nothing moves.
        assert!(VocabOrder::for_dllama(&[Normal, Normal], None).is_identity());
    }

    #[test]
    fn bos_split_keeps_dllama_convention_or_moves() {
        use TokenType::*;
        // Specials at the end (Llama 3 style): true values kept.
        assert_eq!(
            dllama_bos(&[Normal, Normal, Control, Control], Some(2), true, 4),
            (2, true)
        );
        // Specials first (SmolLM2 style): split after the last ordinary token, no add-bos.
        assert_eq!(
            dllama_bos(
                &[Control, Control, Normal, Normal, Control],
                Some(1),
                true,
                5
            ),
            (4, false)
        );
        assert_eq!(
            dllama_bos(&[Control, Control, Normal, Normal], Some(1), false, 4),
            (3, false)
        );
    }
}
