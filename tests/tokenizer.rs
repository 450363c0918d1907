//! The tokenizer against dllama's `Tokenizer` (tokenizer.cpp) and SmolLM2's Hugging Face
//! tokenizer.
//!
//! Ids labelled "dllama" were printed by a small C++ program that links dllama's `tokenizer.cpp`
//! and calls `Tokenizer::encode(text, …, isStart = true, addSpecialTokens = true)` /
//! `Tokenizer::decode` on the same `.t` file. Ids labelled "Hugging Face" were printed by the
//! `tokenizers` Python package (0.23) with a BPE model built from the SmolLM2 GGUF's
//! `tokenizer.ggml.tokens` and `tokenizer.ggml.merges`, SmolLM2's pre-tokenizer (individual
//! digits, then byte-level with the GPT-2 pattern) and its control tokens as special tokens.
#[macro_use]
mod golden_support;

use std::path::PathBuf;

use airllama::tokenizer::{DecodeError, EncodeError, StreamDecoder, Tokenizer};
use airllama_io::tokenizer_file::{AirllamaExtension, Token, TokenType, TokenizerFile, VocabKind};
use proptest::prelude::*;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/golden");

fn golden_tokenizer() -> Tokenizer {
    Tokenizer::load(&PathBuf::from(GOLDEN).join("llama-q40/tokenizer.t")).unwrap()
}

/// Prompt tokens the C++ root sent to its workers in a recorded session.
fn recorded_prompt_tokens(scenario: &str) -> (String, Vec<u32>) {
    let path = PathBuf::from(GOLDEN).join(scenario).join("manifest.json");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let n = manifest["n_prompt_tokens"].as_u64().unwrap() as usize;
    let ids = manifest["input_tokens_by_position"].as_array().unwrap()[..n]
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    (manifest["prompt"].as_str().unwrap().to_string(), ids)
}

#[test]
fn golden_prompts_give_the_recorded_prompt_tokens() {
    golden_or_skip!();
    let tok = golden_tokenizer();
    for (scenario, n) in [("llama-q40/2nodes", 39), ("llama-q40/2nodes-long", 103)] {
        let (prompt, ids) = recorded_prompt_tokens(scenario);
        assert_eq!(ids.len(), n);
        assert_eq!(tok.encode(&prompt, true, true).unwrap(), ids, "{scenario}");
    }
}

/// dllama's ids for prompts on the golden 288-token vocabulary (bytes 0..=255, 30 merges, `<s>`
/// 286, `</s>` 287).
const GOLDEN_ENCODINGS: &[(&str, &[u32])] = &[
    (
        "hello world abc, the quick brown fox jumps over a log",
        &[
            286, 285, 32, 281, 261, 272, 276, 44, 284, 32, 113, 117, 105, 99, 107, 32, 98, 114,
            111, 119, 110, 32, 102, 111, 120, 32, 106, 117, 109, 112, 115, 32, 111, 118, 264, 272,
            32, 258, 103,
        ],
    ),
    (
        "once upon a time there was a small robot who lived in a quiet town by the sea; each morning it walked along the shore, counting shells",
        &[
            286, 267, 99, 101, 32, 117, 112, 267, 272, 274, 105, 109, 101, 284, 266, 273, 97, 115,
            272, 32, 115, 109, 97, 257, 32, 114, 111, 98, 111, 116, 273, 104, 111, 32, 108, 105,
            118, 101, 100, 32, 263, 272, 32, 113, 117, 105, 101, 116, 274, 111, 119, 110, 32, 98,
            121, 284, 32, 115, 101, 97, 59, 32, 101, 97, 99, 104, 32, 109, 260, 110, 278, 32, 105,
            116, 273, 97, 108, 107, 101, 100, 272, 258, 110, 103, 284, 32, 115, 104, 260, 101, 44,
            32, 99, 111, 117, 110, 116, 278, 32, 115, 256, 257, 115,
        ],
    ),
    ("", &[286]),
    ("a", &[286, 97]),
    ("Hello, World!", &[286, 72, 101, 280, 44, 32, 87, 282, 33]),
    (
        "  two  spaces and\ttab\nnewline",
        &[
            286, 32, 274, 259, 32, 32, 115, 112, 97, 99, 270, 32, 283, 9, 116, 275, 10, 110, 101,
            119, 108, 263, 101,
        ],
    ),
    (
        "café naïve 😃 — ünïcödé",
        &[
            286, 99, 97, 102, 195, 169, 32, 110, 97, 195, 175, 118, 101, 32, 240, 159, 152, 131,
            32, 226, 128, 148, 32, 195, 188, 110, 195, 175, 99, 195, 182, 100, 195, 169,
        ],
    ),
    (
        "<s>hi</s> there<s>",
        &[286, 286, 104, 105, 287, 284, 266, 286],
    ),
    (
        "the the the thethe ing inging",
        &[286, 277, 284, 284, 284, 277, 32, 278, 32, 278, 278],
    ),
    (
        "1234567890 !@#$%^&*()",
        &[
            286, 49, 50, 51, 52, 53, 54, 55, 56, 57, 48, 32, 33, 64, 35, 36, 37, 94, 38, 42, 40, 41,
        ],
    ),
];

#[test]
fn golden_vocabulary_encodes_like_dllama() {
    golden_or_skip!();
    let tok = golden_tokenizer();
    assert!(!tok.uses_recorded_token_classes());
    for (text, ids) in GOLDEN_ENCODINGS {
        assert_eq!(&tok.encode(text, true, true).unwrap(), ids, "{text:?}");
    }
    // Without special tokens `<s>` is spelled with bytes (and merges).
    let plain = tok.encode("<s>", false, false).unwrap();
    assert!(!plain.contains(&286), "{plain:?}");
    assert_eq!(tok.decode_all(&plain).unwrap(), "<s>");
}

fn decode_each(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut d = StreamDecoder::new();
    ids.iter()
        .map(|&id| d.decode(tok, id).unwrap().to_string())
        .collect()
}

#[test]
fn streaming_decode_matches_dllama() {
    golden_or_skip!();
    let tok = golden_tokenizer();
    // dllama: NULL, NULL, NULL, NULL, "😃", "!" (bos prints nothing; the emoji waits for its
    // fourth byte).
    assert_eq!(
        decode_each(&tok, &[286, 240, 159, 152, 131, 33]),
        ["", "", "", "", "😃", "!"]
    );
    // dllama: a cut-short sequence becomes one U+FFFD, shown with the next character.
    assert_eq!(
        decode_each(&tok, &[240, 159, 152, 240, 159, 152, 131]),
        ["", "", "", "", "", "", "\u{fffd}😃"]
    );
    // dllama: stray continuation bytes, one U+FFFD per run, then again after "a".
    assert_eq!(
        decode_each(&tok, &[128, 128, 97, 195, 97]),
        ["", "", "\u{fffd}a", "", "\u{fffd}a"]
    );
    // dllama: multi-byte pieces and a split em dash.
    assert_eq!(
        decode_each(&tok, &[104, 284, 226, 128, 148, 285]),
        ["h", " the", "", "", "—", "hello"]
    );
}

#[test]
fn decoder_survives_what_aborts_dllama() {
    golden_or_skip!();
    let tok = golden_tokenizer();
    // 30 lead bytes in a row: dllama's 17-byte decode buffer overflows and its assertion
    // aborts the process. Here the run is one U+FFFD before the next character.
    let mut ids = vec![200u32; 30];
    ids.push(97);
    let out = decode_each(&tok, &ids);
    assert!(out[..30].iter().all(String::is_empty));
    assert_eq!(out[30], "\u{fffd}a");
    // A million invalid bytes keep the state bounded and still give one U+FFFD.
    let mut d = StreamDecoder::new();
    for _ in 0..1_000_000 {
        assert_eq!(d.decode(&tok, 0xff).unwrap(), "");
    }
    assert_eq!(d.decode(&tok, 33).unwrap(), "\u{fffd}!");
}

#[test]
fn eos_flushes_held_bytes_and_resets() {
    golden_or_skip!();
    let tok = golden_tokenizer();
    // dllama returns the held "\xc3" raw at eos and keeps it (then "\u{fffd}a"); airllama
    // emits U+FFFD at eos and starts afresh.
    assert_eq!(decode_each(&tok, &[195, 287, 97]), ["", "\u{fffd}", "a"]);
    assert_eq!(decode_each(&tok, &[287]), [""]);
    assert!(tok.is_eos(287));
    assert_eq!(tok.eos_ids(), &[287]);
    let mut d = StreamDecoder::new();
    assert_eq!(
        d.decode(&tok, 288),
        Err(DecodeError::UnknownId {
            id: 288,
            vocab_size: 288
        })
    );
}

/// A vocabulary where one string names several regular ids (as `▁`/`<0x20>` do in
/// SentencePiece files), scores that tie, and a score at dllama's -1e10 floor.
fn duplicates_vocabulary() -> TokenizerFile {
    let vocab: &[(&[u8], f32)] = &[
        (b"a", -1.0),
        (b"b", -2.0),
        (b"ab", -3.0),
        (b"ab", -0.5),
        (b" ", -4.0),
        (b"ab", -9.0),
        (b"b", -1.5),
        (b"bab", -2.5),
        (b"ba", -2.0),
        (b"c", 0.0),
        (b"cc", -1e10),
        (b"<s>", 0.0),
        (b"</s>", 0.0),
    ];
    TokenizerFile {
        vocab: vocab
            .iter()
            .map(|(b, s)| Token {
                bytes: b.to_vec(),
                score: *s,
            })
            .collect(),
        bos_id: 11,
        add_bos: true,
        eos_ids: vec![12],
        chat_template: None,
        chat_stops: vec![],
        extension: None,
    }
}

#[test]
fn duplicate_pieces_resolve_like_dllamas_bsearch() {
    let tok = Tokenizer::from_file(&duplicates_vocabulary());
    // dllama's ids for this vocabulary, written as a .t file (the writer's key order).
    let cases: &[(&str, &[u32])] = &[
        ("ab", &[11, 2]),
        ("abab bab", &[11, 0, 7, 4, 7]),
        ("babab ba", &[11, 8, 7, 4, 8]),
        ("cc c", &[11, 9, 9, 4, 9]),
        ("<s>ab</s>b", &[11, 11, 2, 12, 1]),
        ("bb", &[11, 1, 1]),
    ];
    for (text, ids) in cases {
        assert_eq!(&tok.encode(text, true, true).unwrap(), ids, "{text:?}");
    }
}

#[test]
fn unencodable_text_is_an_error() {
    let tok = Tokenizer::from_file(&duplicates_vocabulary());
    assert_eq!(
        tok.encode("abz", true, true),
        Err(EncodeError::Unencodable { offset: 2 })
    );
    assert_eq!(
        tok.encode("a\u{e9}", false, true),
        Err(EncodeError::Unencodable { offset: 1 })
    );
}

mod tokenizer_support;
use tokenizer_support::smollm2;

/// Hugging Face's ids for SmolLM2-135M-Instruct (no bos: its tokenizer adds none).
const SMOLLM2_HF: &[(&str, &[u32])] = &[
    ("The capital of France is", &[504, 3575, 282, 4649, 314]),
    (
        "Hello, world! 12345 numbers",
        &[19556, 28, 905, 17, 216, 33, 34, 35, 36, 37, 2966],
    ),
    (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        &[
            1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 198,
        ],
    ),
    (
        "  multiple   spaces\tand tabs\nnewline",
        &[216, 2701, 256, 5600, 197, 397, 29416, 198, 28160],
    ),
    (
        "Café naïve 😃 — ünïcödé, “quotes” and don't can't I'm",
        &[
            51, 1939, 2756, 15486, 46494, 40303, 221, 1841, 5549, 137, 94, 25972, 83, 7466, 84,
            2756, 28, 619, 385, 2346, 573, 284, 1326, 982, 416, 982, 339, 5248,
        ],
    ),
    // Hugging Face's Digits pre-tokenizer: a space run before a digit stays whole.
    ("  0. Definitions.", &[256, 32, 30, 39331, 30]),
    (
        "    7.  This requirement modifies the requirement in section 4 to",
        &[
            289, 39, 30, 216, 669, 9702, 46912, 260, 9702, 281, 3246, 216, 36, 288,
        ],
    ),
    (
        "It's 3.14159 and 1,000,000 or 2^10=1024",
        &[
            1589, 506, 216, 35, 30, 33, 36, 33, 37, 41, 284, 216, 33, 28, 32, 32, 32, 28, 32, 32,
            32, 355, 216, 34, 78, 33, 32, 45, 33, 32, 34, 36,
        ],
    ),
    (
        "日本語のテキストです。",
        &[
            23274, 115, 40993, 179, 120, 248, 26453, 11100, 224, 10391, 251, 10391, 134, 11100,
            226, 7365, 117, 39958, 19076,
        ],
    ),
    (
        "Привет, как дела?",
        &[
            155, 249, 46879, 16464, 32547, 28, 31338, 6511, 13760, 33427, 42292, 6511, 47,
        ],
    ),
    (
        "مرحبا بالعالم",
        &[
            21706, 20602, 44626, 31462, 10805, 45726, 22208, 34966, 22208, 21706,
        ],
    ),
    (
        "HELLO WORLD I'LL WE'VE",
        &[
            56, 4210, 6426, 35612, 16284, 339, 23, 16421, 26587, 23, 18525,
        ],
    ),
    ("\t\ttabs", &[197, 197, 100, 7366]),
    ("trailing spaces   ", &[4861, 4966, 5600, 333]),
    // Letter numbers (Roman numerals) are `\\p{N}`: isolated like digits.
    (
        "\u{216b} chapter \u{2177}",
        &[173, 223, 121, 3532, 216, 173, 223, 132],
    ),
    (
        "\u{928}\u{92e}\u{938}\u{94d}\u{924}\u{947} \u{926}\u{941}\u{928}\u{93f}\u{92f}\u{93e}",
        &[
            30658, 35090, 38770, 16525, 26293, 30581, 12335, 116, 42990, 30658, 27011, 32932, 18075,
        ],
    ),
    (
        "e\u{301}te\u{301} cafe\u{301}",
        &[85, 151, 219, 676, 151, 219, 1020, 4565, 151, 219],
    ),
    (
        "x\u{b2}+y\u{b3}=z\u{bd}",
        &[104, 19133, 27, 105, 39050, 45, 106, 16738],
    ),
];

#[test]
fn smollm2_encodes_like_hugging_face() {
    let Some(file) = smollm2() else { return };
    let tok = Tokenizer::from_file(&file);
    assert!(tok.uses_recorded_token_classes());
    assert_eq!(tok.kind(), VocabKind::ByteLevelBpe);
    assert_eq!(
        (tok.bos_id(), tok.add_bos(), tok.eos_ids()),
        (Some(1), false, &[2][..])
    );
    for (text, ids) in SMOLLM2_HF {
        assert_eq!(&tok.encode(text, true, true).unwrap(), ids, "{text:?}");
        // bos (`<|im_start|>`) decodes to nothing and eos (`<|im_end|>`) ends a stream.
        let plain = text.replace("<|im_start|>", "").replace("<|im_end|>", "");
        assert_eq!(tok.decode_all(ids).unwrap(), plain);
    }
    let pieces: Vec<String> = tok
        .encode("The capital of France is", true, true)
        .unwrap()
        .iter()
        .map(|&id| String::from_utf8(tok.piece(id).unwrap().to_vec()).unwrap())
        .collect();
    assert_eq!(pieces, ["The", " capital", " of", " France", " is"]);
}

/// dllama's ids for the same SmolLM2 `.t` (dllama skips the airllama extension, so `<|im_start|>`
/// is spelled with bytes and no pre-tokenizer runs).
const SMOLLM2_DLLAMA: &[(&str, &[u32])] = &[
    ("The capital of France is", &[504, 3575, 282, 4649, 314]),
    (
        "Hello, world! 12345 numbers",
        &[19556, 28, 905, 17, 216, 33, 34, 35, 36, 37, 2966],
    ),
    (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        &[
            44, 108, 306, 79, 3738, 108, 46, 4093, 198, 1780, 314, 216, 34, 27, 34, 15137, 108,
            306, 79, 486, 108, 46, 198, 44, 108, 306, 79, 3738, 108, 46, 520, 9531, 198,
        ],
    ),
    (
        "  multiple   spaces\tand tabs\nnewline",
        &[256, 30404, 256, 5600, 197, 397, 29416, 198, 28160],
    ),
    (
        "Café naïve 😃 — ünïcödé, “quotes” and don't can't I'm",
        &[
            51, 1939, 2756, 15486, 46494, 40303, 221, 1841, 5549, 137, 94, 25972, 83, 7466, 84,
            2756, 28, 619, 385, 2346, 573, 284, 1326, 982, 416, 982, 339, 5248,
        ],
    ),
];

#[test]
fn smollm2_without_the_extension_encodes_like_dllama() {
    let Some(mut file) = smollm2() else { return };
    file.extension = None;
    let tok = Tokenizer::from_file(&file);
    for (text, ids) in SMOLLM2_DLLAMA {
        assert_eq!(&tok.encode(text, true, true).unwrap(), ids, "{text:?}");
    }
}

/// dllama's `Tokenizer::encode`, transcribed loop for loop (quadratic rescans, a sorted table
/// and a midpoint binary search): the oracle for the heap-based merge.
fn dllama_encode_oracle(file: &TokenizerFile, text: &[u8]) -> Option<Vec<u32>> {
    let bos = file.bos_id as usize;
    let pieces: Vec<&[u8]> = file.vocab.iter().map(|t| &t.bytes[..]).collect();
    let mut sorted: Vec<usize> = (0..bos).collect();
    sorted.sort_by(|&a, &b| pieces[a].cmp(pieces[b]));
    let find = |key: &[u8]| -> Option<usize> {
        let (mut lo, mut hi) = (0, sorted.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match key.cmp(pieces[sorted[mid]]) {
                std::cmp::Ordering::Less => hi = mid,
                std::cmp::Ordering::Greater => lo = mid + 1,
                std::cmp::Ordering::Equal => return Some(sorted[mid]),
            }
        }
        None
    };
    let mut tokens = Vec::new();
    if file.add_bos {
        tokens.push(bos);
    }
    let mut buf = Vec::new();
    let mut c = 0;
    while c < text.len() {
        if let Some(id) = (bos..pieces.len()).find(|&id| text[c..].starts_with(pieces[id])) {
            tokens.push(id);
            c += pieces[id].len();
            continue;
        }
        buf.push(text[c]);
        if let Some(id) = find(&buf) {
            tokens.push(id);
            buf.clear();
        }
        c += 1;
    }
    if !buf.is_empty() {
        return None;
    }
    loop {
        let (mut best_score, mut best) = (-1e10f32, None);
        for i in 0..tokens.len().saturating_sub(1) {
            let pair = [pieces[tokens[i]], pieces[tokens[i + 1]]].concat();
            if let Some(id) = find(&pair)
                && file.vocab[id].score > best_score
            {
                best_score = file.vocab[id].score;
                best = Some((i, id));
            }
        }
        let Some((i, id)) = best else { break };
        tokens[i] = id;
        tokens.remove(i + 1);
    }
    Some(tokens.into_iter().map(|t| t as u32).collect())
}

/// The decoder's policy stated directly: valid UTF-8 passes, each maximal run of ill-formed
/// bytes becomes one U+FFFD.
fn decode_reference(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut invalid = false;
    for chunk in bytes.utf8_chunks() {
        if !chunk.valid().is_empty() {
            if invalid {
                out.push('\u{fffd}');
                invalid = false;
            }
            out.push_str(chunk.valid());
        }
        if !chunk.invalid().is_empty() {
            invalid = true;
        }
    }
    if invalid {
        out.push('\u{fffd}');
    }
    out
}

/// Bytes that collide often and exercise UTF-8 edge cases.
fn alphabet_byte() -> impl Strategy<Value = u8> {
    prop::sample::select(vec![
        b'a', b'b', b'c', b' ', b'<', b'>', 0xc3, 0xa9, 0xe2, 0x80, 0x94, 0xf0, 0x9f, 0xff, 0xed,
        0xa0,
    ])
}

fn score() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -10.0f32..10.0,
        1 => Just(f32::NAN),
        1 => Just(-1e10f32),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(f32::INFINITY),
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
    ]
}

fn token_type() -> impl Strategy<Value = TokenType> {
    prop::sample::select(vec![
        TokenType::Undefined,
        TokenType::Normal,
        TokenType::Unknown,
        TokenType::Control,
        TokenType::UserDefined,
        TokenType::Unused,
        TokenType::Byte,
    ])
}

/// Any `.t` file the parser accepts, small enough to collide: hostile scores, duplicate pieces,
/// odd bos splits, extensions with arbitrary token classes.
fn hostile_file() -> impl Strategy<Value = TokenizerFile> {
    let token = (prop::collection::vec(alphabet_byte(), 1..5), score())
        .prop_map(|(bytes, score)| Token { bytes, score });
    prop::collection::vec(token, 1..40).prop_flat_map(|vocab| {
        let n = vocab.len() as u32;
        let extension = (
            prop::sample::select(vec![
                VocabKind::Unspecified,
                VocabKind::ByteLevelBpe,
                VocabKind::SentencePiece,
            ]),
            prop::option::of(0..n),
            any::<bool>(),
            prop_oneof![
                Just(Vec::new()),
                prop::collection::vec(token_type(), n as usize..=n as usize)
            ],
        )
            .prop_map(|(kind, bos_id, add_bos, token_types)| AirllamaExtension {
                kind,
                bos_id,
                add_bos,
                token_types,
            });
        let extension = prop::option::of(extension);
        (
            Just(vocab),
            0..n,
            any::<bool>(),
            prop::collection::vec(0..n, 0..3),
            extension,
        )
            .prop_map(
                |(vocab, bos_id, add_bos, eos_ids, extension)| TokenizerFile {
                    vocab,
                    bos_id,
                    add_bos,
                    eos_ids,
                    chat_template: None,
                    chat_stops: vec![],
                    extension,
                },
            )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn hostile_tokenizers_never_panic(
        file in hostile_file(),
        text in prop::collection::vec(alphabet_byte(), 0..64),
        ids in prop::collection::vec(0u32..48, 0..64),
    ) {
        let tok = Tokenizer::from_bytes(&file.to_bytes().unwrap()).unwrap();
        for (start, special) in [(true, true), (true, false), (false, true), (false, false)] {
            match tok.encode_bytes(&text, start, special) {
                Ok(out) => {
                    prop_assert!(out.iter().all(|&id| (id as usize) < tok.vocab_size()));
                    tok.decode_all(&out).unwrap();
                }
                Err(EncodeError::Unencodable { offset }) => prop_assert!(offset < text.len()),
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
        let mut d = StreamDecoder::new();
        for &id in &ids {
            match d.decode(&tok, id) {
                Ok(_) => prop_assert!((id as usize) < tok.vocab_size()),
                Err(DecodeError::UnknownId { .. }) => prop_assert!((id as usize) >= tok.vocab_size()),
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
        let _ = d.finish();
    }

    #[test]
    fn heap_merges_equal_dllamas_rescans(
        file in hostile_file(),
        text in prop::collection::vec(alphabet_byte(), 0..64),
    ) {
        let mut file = file;
        file.extension = None;
        let tok = Tokenizer::from_file(&file);
        let ours = tok.encode_bytes(&text, true, true).ok();
        prop_assert_eq!(ours, dllama_encode_oracle(&file, &text));
    }

    #[test]
    fn streaming_decode_is_split_independent(
        bytes in prop::collection::vec(alphabet_byte(), 0..64),
        cuts in prop::collection::vec(0usize..64, 0..8),
    ) {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
        cuts.push(0);
        cuts.push(bytes.len());
        cuts.sort_unstable();
        let mut d = StreamDecoder::new();
        let mut out = String::new();
        for w in cuts.windows(2) {
            out.push_str(d.decode_bytes(&bytes[w[0]..w[1]]));
        }
        out.push_str(d.finish());
        prop_assert_eq!(out, decode_reference(&bytes));
    }
}

/// All SmolLM2 prompts above joined by newlines: merges over a longer text.
fn smollm2_joined() -> String {
    SMOLLM2_HF
        .iter()
        .map(|(t, _)| *t)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn smollm2_long_text_matches_both_references() {
    let Some(file) = smollm2() else { return };
    let text = smollm2_joined();
    // Hugging Face's ids.
    let hf: &[u32] = &[
        504, 3575, 282, 4649, 314, 198, 19556, 28, 905, 17, 216, 33, 34, 35, 36, 37, 2966, 198, 1,
        4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 8866, 2701, 256, 5600,
        197, 397, 29416, 198, 28160, 198, 51, 1939, 2756, 15486, 46494, 40303, 221, 1841, 5549,
        137, 94, 25972, 83, 7466, 84, 2756, 28, 619, 385, 2346, 573, 284, 1326, 982, 416, 982, 339,
        5248, 11181, 32, 30, 39331, 30, 2367, 39, 30, 216, 669, 9702, 46912, 260, 9702, 281, 3246,
        216, 36, 288, 198, 1589, 506, 216, 35, 30, 33, 36, 33, 37, 41, 284, 216, 33, 28, 32, 32,
        32, 28, 32, 32, 32, 355, 216, 34, 78, 33, 32, 45, 33, 32, 34, 36, 198, 23274, 115, 40993,
        179, 120, 248, 26453, 11100, 224, 10391, 251, 10391, 134, 11100, 226, 7365, 117, 39958,
        19076, 198, 155, 249, 46879, 16464, 32547, 28, 31338, 6511, 13760, 33427, 42292, 6511, 47,
        198, 21706, 20602, 44626, 31462, 10805, 45726, 22208, 34966, 22208, 21706, 198, 56, 4210,
        6426, 35612, 16284, 339, 23, 16421, 26587, 23, 18525, 3354, 197, 100, 7366, 198, 4861,
        4966, 5600, 333, 198, 173, 223, 121, 3532, 216, 173, 223, 132, 198, 30658, 35090, 38770,
        16525, 26293, 30581, 12335, 116, 42990, 30658, 27011, 32932, 18075, 198, 85, 151, 219, 676,
        151, 219, 1020, 4565, 151, 219, 198, 104, 19133, 27, 105, 39050, 45, 106, 16738,
    ];
    assert_eq!(
        Tokenizer::from_file(&file)
            .encode(&text, true, true)
            .unwrap(),
        hf
    );
    // dllama's ids for the same .t (extension ignored).
    let dllama: &[u32] = &[
        504, 3575, 282, 4649, 314, 198, 19556, 28, 905, 17, 216, 33, 34, 35, 36, 37, 2966, 198, 44,
        108, 306, 79, 3738, 108, 46, 4093, 198, 1780, 314, 216, 34, 27, 34, 15137, 108, 306, 79,
        486, 108, 46, 198, 44, 108, 306, 79, 3738, 108, 46, 520, 9531, 39892, 30404, 256, 5600,
        197, 397, 29416, 198, 28160, 198, 51, 1939, 2756, 15486, 46494, 40303, 221, 1841, 5549,
        137, 94, 25972, 83, 7466, 84, 2756, 28, 619, 385, 2346, 573, 284, 1326, 982, 416, 982, 339,
        5248, 11181, 32, 30, 39331, 30, 2367, 39, 30, 256, 1348, 9702, 46912, 260, 9702, 281, 3246,
        216, 36, 288, 198, 1589, 506, 216, 35, 30, 33, 36, 33, 37, 41, 284, 216, 33, 28, 32, 32,
        32, 28, 32, 32, 32, 355, 216, 34, 78, 33, 32, 45, 33, 32, 34, 36, 198, 23274, 115, 40993,
        179, 120, 248, 26453, 11100, 224, 10391, 251, 10391, 134, 11100, 226, 7365, 117, 39958,
        19076, 198, 155, 249, 46879, 16464, 32547, 28, 31338, 6511, 13760, 33427, 42292, 6511, 47,
        198, 21706, 20602, 44626, 31462, 10805, 45726, 22208, 34966, 22208, 21706, 198, 56, 4210,
        6426, 35612, 16284, 339, 23, 16421, 26587, 23, 18525, 3558, 100, 7366, 198, 4861, 4966,
        5600, 333, 198, 173, 223, 121, 3532, 4636, 223, 132, 198, 30658, 35090, 38770, 16525,
        26293, 30581, 12335, 116, 42990, 30658, 27011, 32932, 18075, 198, 85, 151, 219, 676, 151,
        219, 1020, 4565, 151, 219, 198, 104, 19133, 27, 105, 39050, 45, 106, 16738,
    ];
    let mut plain = file;
    plain.extension = None;
    assert_eq!(
        Tokenizer::from_file(&plain)
            .encode(&text, true, true)
            .unwrap(),
        dllama
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Corrupted `.t` bytes: either a typed error, or a tokenizer that encodes and decodes
    /// without panicking.
    #[test]
    fn corrupted_files_never_panic(
        file in hostile_file(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        text in prop::collection::vec(alphabet_byte(), 0..32),
    ) {
        let mut bytes = file.to_bytes().unwrap();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let keep = bytes.len() - cut.index(bytes.len() / 8 + 1);
        bytes.truncate(keep);
        if let Ok(tok) = Tokenizer::from_bytes(&bytes) {
            if let Ok(ids) = tok.encode_bytes(&text, true, true) {
                tok.decode_all(&ids).unwrap();
            }
            let ids: Vec<u32> = text.iter().map(|&b| u32::from(b)).collect();
            let _ = tok.decode_all(&ids);
        }
    }
}
