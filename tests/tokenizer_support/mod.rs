//! Finding SmolLM2's tokenizer for the real-vocabulary tests.
use std::path::PathBuf;

use airllama_io::convert::tokenizer::in_gguf_order;
use airllama_io::convert::tokenizer_from_gguf;
use airllama_io::gguf::GgufFile;
use airllama_io::tokenizer_file::TokenizerFile;

/// The model cache of `scripts/fetch-smollm2.sh` and `scripts/quickstart.sh`.
fn cache_dir() -> PathBuf {
    std::env::var_os("AIRLLAMA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/models"))
}

/// SmolLM2-135M-Instruct's `.t`: the file named by `AIRLLAMA_SMOLLM2_T`, else the one
/// `scripts/quickstart.sh` converts into the cache, else converted in memory from the GGUF that
/// `scripts/fetch-smollm2.sh` downloads (as `airllama convert gguf` would write it). `None`, with
/// a printed SKIPPED line, when none is there.
///
/// The file is returned with its tokens at their GGUF ids (Hugging Face's ids, which the tests
/// compare with): the converter renumbers SmolLM2's 17 control tokens to the end of the
/// vocabulary for dllama's chat and records how, and `in_gguf_order` undoes that, giving the
/// layout earlier converters wrote (`docs/CONVERT.md`).
pub fn smollm2() -> Option<TokenizerFile> {
    smollm2_as_written().map(|f| in_gguf_order(&f).expect("SmolLM2 .t id map"))
}

fn smollm2_as_written() -> Option<TokenizerFile> {
    let t = match std::env::var_os("AIRLLAMA_SMOLLM2_T") {
        Some(p) => PathBuf::from(p),
        None => cache_dir().join("smollm2-135m-instruct.t"),
    };
    if let Ok(bytes) = std::fs::read(&t) {
        return Some(TokenizerFile::parse(&bytes).expect("SmolLM2 .t parses"));
    }
    let gguf = cache_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if std::env::var_os("AIRLLAMA_SMOLLM2_T").is_none()
        && let Ok(file) = GgufFile::open(&gguf)
    {
        let converted = tokenizer_from_gguf(file.header()).expect("SmolLM2 GGUF converts");
        let bytes = converted.to_bytes().expect("converted .t encodes");
        return Some(TokenizerFile::parse(&bytes).expect("converted .t parses"));
    }
    eprintln!(
        "SKIPPED: no SmolLM2 tokenizer at {} nor GGUF at {} (run scripts/fetch-smollm2.sh or \
         scripts/quickstart.sh, or set AIRLLAMA_SMOLLM2_T)",
        t.display(),
        gguf.display()
    );
    None
}
