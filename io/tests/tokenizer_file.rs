//! `.t` tokenizer file: the golden files, round trips, malformed input and the fuzz oracle.
#[macro_use]
#[path = "../../tests/golden_support/mod.rs"]
mod golden_support;

use airllama_io::tokenizer_file::{
    AirllamaExtension, EXTENSION_MAGIC, Token, TokenType, TokenizerFile, TokenizerFileError,
    VocabKind, fuzz_parse,
};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/golden");

fn golden(variant: &str) -> Vec<u8> {
    let path = format!("{GOLDEN}/{variant}/tokenizer.t");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn golden_tokenizers_parse_and_rewrite_byte_identically() {
    golden_or_skip!();
    for variant in ["llama-q40", "llama-f32", "qwen3-q40", "qwen3moe-q40"] {
        let bytes = golden(variant);
        let t = TokenizerFile::parse(&bytes).unwrap();
        assert_eq!(t.vocab.len(), 288);
        assert_eq!(t.bos_id, 286);
        assert_eq!(t.eos_ids, [287]);
        assert!(t.add_bos);
        assert_eq!(t.max_token_length(), 5);
        assert_eq!(t.chat_template, None);
        assert_eq!(t.extension, None);
        assert_eq!(
            t.vocab[0],
            Token {
                bytes: vec![0],
                score: -1000.0
            }
        );
        assert_eq!(
            t.vocab[285],
            Token {
                bytes: b"hello".to_vec(),
                score: -30.0
            }
        );
        assert_eq!(t.vocab[286].bytes, b"<s>");
        assert_eq!(t.vocab[287].bytes, b"</s>");
        // Without the extension, dllama's rule decides what is special.
        assert!(!t.is_special(285));
        assert!(t.is_special(286));
        assert_eq!(t.true_bos_id(), Some(286));
        assert_eq!(t.to_bytes().unwrap(), bytes, "{variant}: rewrite differs");
    }
}

fn smollm_like() -> TokenizerFile {
    let mut vocab = vec![
        Token {
            bytes: b"<|endoftext|>".to_vec(),
            score: 0.0,
        },
        Token {
            bytes: b"<|im_start|>".to_vec(),
            score: -1.0,
        },
        Token {
            bytes: b"<|im_end|>".to_vec(),
            score: -2.0,
        },
    ];
    for b in 0..=255u8 {
        vocab.push(Token {
            bytes: vec![b],
            score: -(vocab.len() as f32),
        });
    }
    let mut token_types = vec![TokenType::Control; 3];
    token_types.extend(std::iter::repeat_n(TokenType::Normal, 256));
    TokenizerFile {
        vocab,
        bos_id: 258,
        add_bos: false,
        eos_ids: vec![2],
        chat_template: Some(b"<|im_start|>{{ message }}<|im_end|>".to_vec()),
        chat_stops: vec![],
        extension: Some(AirllamaExtension {
            kind: VocabKind::ByteLevelBpe,
            bos_id: Some(1),
            add_bos: false,
            token_types,
        }),
    }
}

#[test]
fn extension_round_trips_and_decides_special_tokens() {
    let t = smollm_like();
    let bytes = t.to_bytes().unwrap();
    let back = TokenizerFile::parse(&bytes).unwrap();
    assert_eq!(back, t);
    assert_eq!(back.true_bos_id(), Some(1));
    assert!(!back.true_add_bos());
    assert!(back.is_special(0) && back.is_special(1) && back.is_special(2));
    assert!(!back.is_special(3) && !back.is_special(258));
    // The extension sits in a CHAT_STOP region right after the header, where dllama skips it:
    // header = 8 + 8 pairs (version, vocab, max len, bos, template, n eos, add bos, chat stop).
    let header = 8 + 8 * 8;
    assert_eq!(&bytes[4..8], &(header as i32).to_le_bytes());
    assert_eq!(&bytes[header - 8..header - 4], &8i32.to_le_bytes());
    assert_eq!(&bytes[header..header + 8], &EXTENSION_MAGIC);
}

#[test]
fn malformed_files_get_typed_errors() {
    let good = smollm_like().to_bytes().unwrap();
    for n in 0..good.len() {
        assert!(
            TokenizerFile::parse(&good[..n]).is_err(),
            "prefix {n} parsed"
        );
    }
    let mut extra = good.clone();
    extra.push(0);
    assert!(matches!(
        TokenizerFile::parse(&extra),
        Err(TokenizerFileError::TrailingBytes(1))
    ));
    let mut magic = good.clone();
    magic[0] = 0;
    assert!(matches!(
        TokenizerFile::parse(&magic),
        Err(TokenizerFileError::BadMagic(_))
    ));

    let pair = |bytes: &mut Vec<u8>, index: usize, key: i32, value: i32| {
        bytes[8 + 8 * index..12 + 8 * index].copy_from_slice(&key.to_le_bytes());
        bytes[12 + 8 * index..16 + 8 * index].copy_from_slice(&value.to_le_bytes());
    };
    let mut unknown = good.clone();
    pair(&mut unknown, 0, 11, 1);
    assert!(matches!(
        TokenizerFile::parse(&unknown),
        Err(TokenizerFileError::UnknownKey(11))
    ));
    let mut version = good.clone();
    pair(&mut version, 0, 0, 2);
    assert!(matches!(
        TokenizerFile::parse(&version),
        Err(TokenizerFileError::BadVersion(Some(2)))
    ));
    let mut vocab = good.clone();
    pair(&mut vocab, 1, 1, i32::MAX);
    assert!(TokenizerFile::parse(&vocab).is_err());
    let mut bos = good.clone();
    pair(&mut bos, 3, 3, 259);
    assert!(matches!(
        TokenizerFile::parse(&bos),
        Err(TokenizerFileError::BadValue { .. })
    ));
    let mut max_len = good.clone();
    pair(&mut max_len, 2, 2, 5);
    assert!(matches!(
        TokenizerFile::parse(&max_len),
        Err(TokenizerFileError::BadTokenLength { id: 0, .. })
    ));
    let mut header_size = good.clone();
    header_size[4..8].copy_from_slice(&13i32.to_le_bytes());
    assert!(matches!(
        TokenizerFile::parse(&header_size),
        Err(TokenizerFileError::BadHeaderSize(13))
    ));

    let mut t = smollm_like();
    t.vocab[5].bytes.clear();
    assert!(matches!(
        t.to_bytes(),
        Err(TokenizerFileError::BadTokenLength { id: 5, .. })
    ));
    let mut t = smollm_like();
    t.eos_ids.push(1000);
    assert!(matches!(
        t.to_bytes(),
        Err(TokenizerFileError::BadEosId(1000))
    ));
    let mut t = smollm_like();
    t.extension.as_mut().unwrap().token_types.pop();
    assert!(matches!(
        t.to_bytes(),
        Err(TokenizerFileError::BadExtension(_))
    ));
}

#[test]
fn old_header_format_is_read() {
    let mut bytes = 0x0056_7123u32.to_le_bytes().to_vec();
    for v in [2i32, 3, 0, 1, -1] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    for (score, s) in [(0.0f32, &b"<s>"[..]), (-1.0, b"ab")] {
        bytes.extend_from_slice(&score.to_le_bytes());
        bytes.extend_from_slice(&(s.len() as u32).to_le_bytes());
        bytes.extend_from_slice(s);
    }
    let t = TokenizerFile::parse(&bytes).unwrap();
    assert_eq!(t.vocab.len(), 2);
    assert_eq!(t.eos_ids, [1]);
    assert_eq!(TokenizerFile::parse(&t.to_bytes().unwrap()).unwrap(), t);
}

#[test]
fn fuzz_oracle_over_seeds_and_mutations() {
    golden_or_skip!();
    let seeds = [golden("llama-q40"), smollm_like().to_bytes().unwrap()];
    let mut state = 12345u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    for seed in &seeds {
        fuzz_parse(seed);
        for _ in 0..3000 {
            let mut m = seed.clone();
            for _ in 0..1 + next() % 3 {
                // Bias toward the header, where the structure is.
                let at = if next() % 2 == 0 { next() % 96 } else { next() } % m.len();
                m[at] = next() as u8;
            }
            fuzz_parse(&m);
        }
    }
}

/// The fuzz target's committed seed corpus passes the oracle.
#[test]
fn fuzz_corpus_passes_the_oracle() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/tokenizer_file");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        fuzz_parse(&bytes);
        n += 1;
    }
    assert!(n >= 2, "seed corpus missing in {dir}");
}
