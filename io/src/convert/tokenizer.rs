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
//! end (SmolLM2: ids 0..=16, bos 1), the `BOS_ID` key is set to dllama's split point instead (one
//! past the last ordinary token, at most the last id) and `ADD_BOS` to 0, so that C++ dllama still
//! builds its BPE vocabulary from every ordinary token; the true bos id, add-bos flag and every
//! token's class go into the [`AirllamaExtension`] that dllama skips. See `docs/CONVERT.md`.
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

/// Builds the `.t` contents from a GGUF's `tokenizer.*` metadata.
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
    let token_types: Vec<TokenType> = match meta(gguf, "tokenizer.ggml.token_type") {
        None => Vec::new(),
        Some(v) => {
            const KEY: &str = "tokenizer.ggml.token_type";
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

    let mut vocab = Vec::with_capacity(n);
    for (id, raw) in strings.iter().enumerate() {
        let s = std::str::from_utf8(raw).map_err(|_| ConvertError::BadToken {
            id: id as u32,
            reason: "not UTF-8",
        })?;
        let bytes = match kind {
            VocabKind::ByteLevelBpe => gpt2_token_bytes(s),
            _ => sentencepiece_token_bytes(s),
        };
        if bytes.is_empty() {
            return Err(ConvertError::BadToken {
                id: id as u32,
                reason: "empty (dllama cannot load empty tokens)",
            });
        }
        let score = scores.as_ref().map_or(-(id as f32), |s| s[id]);
        vocab.push(Token { bytes, score });
    }

    let true_bos = token_id(gguf, "tokenizer.ggml.bos_token_id", n)?;
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
        if let Some(id) = token_id(gguf, key, n)?
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
    Ok(TokenizerFile {
        vocab,
        bos_id,
        add_bos,
        eos_ids,
        chat_template,
        chat_stops: Vec::new(),
        extension: Some(AirllamaExtension {
            kind,
            bos_id: true_bos,
            add_bos: true_add_bos,
            token_types,
        }),
    })
}

/// The `BOS_ID` / `ADD_BOS` pair to show C++ dllama, which treats ids `>= BOS_ID` as special.
///
/// If every control/user-defined token is at or after the bos id and every ordinary or byte
/// token before it, dllama's rule holds and the true values are written. Otherwise the split is
/// moved to one past the last ordinary token (at most the last id, so `vocab[BOS_ID]` stays a
/// valid token for dllama) and add-bos is turned off, since dllama would prepend that id.
pub fn dllama_bos(types: &[TokenType], bos: Option<u32>, add_bos: bool, n: usize) -> (u32, bool) {
    let ordinary = |t: &TokenType| matches!(t, TokenType::Normal | TokenType::Byte);
    if let Some(bos) = bos {
        let holds = types.iter().enumerate().all(|(id, t)| {
            if ordinary(t) {
                (id as u32) < bos
            } else if t.is_special() {
                id as u32 >= bos
            } else {
                true
            }
        });
        if holds {
            return (bos, add_bos);
        }
    }
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
