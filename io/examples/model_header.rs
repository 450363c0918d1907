//! Decode a dllama `.m` model's header and tensor layout with airllama-io, reading only the
//! header's bytes (the layout follows from them and the file size).
//!
//! Run it with `cargo run -p airllama-io --example model_header -- path/to/model.m`
//! (`airllama gen-model --output tiny.m` writes a small model to try it on).
use std::fs::File;
use std::io::BufReader;
use std::process::ExitCode;

use airllama_io::layout::ModelLayout;
use airllama_io::model::ModelHeader;

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: model_header <model.m>");
        return ExitCode::from(2);
    };
    match describe(std::path::Path::new(&path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn describe(path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let file = File::open(path)?;
    let file_size = file.metadata()?.len();
    // A bounded read of the header: every value is checked (typed errors, never a panic).
    let header = ModelHeader::read_from(&mut BufReader::new(file))?;
    let c = header.config();
    println!(
        "{}: {} weights, dim {}, {} layers, {} heads ({} KV), vocab {}, context {}",
        c.arch.name(),
        c.weight_type.name(),
        c.dim,
        c.n_layers,
        c.n_heads,
        c.n_kv_heads,
        c.vocab_size,
        c.seq_len
    );
    // The tensor table: where each tensor sits in the file, as dllama reads it.
    let layout = ModelLayout::new(&header, file_size)?;
    for t in layout.tensors().iter().take(6) {
        println!(
            "  layer {:>2} {:<12} {:>5} x {:<5} {:>4} at byte {}",
            t.layer,
            t.role.to_string(),
            t.rows,
            t.cols,
            t.float_type.name(),
            t.offset
        );
    }
    println!(
        "  ... {} tensors, {} bytes in all",
        layout.tensors().len(),
        layout.file_size()
    );
    Ok(())
}
