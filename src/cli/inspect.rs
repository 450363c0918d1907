//! `airllama inspect <file.m> [--nodes N]`: the header, the tensor layout table and, with
//! `--nodes`, each node's byte ranges, as dllama's root would cut them.
//!
//! Only the header bytes are read (a bounded read) and the file size taken from its metadata:
//! the layout follows from those two alone, so inspecting a multi-gigabyte model costs nothing.
use std::fmt::Write as _;
use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::process::ExitCode;

use airllama_io::layout::{ModelLayout, NodeSplit, SplitKind, TensorEntry};
use airllama_io::model::{HeaderKey, ModelConfig, ModelHeader};
use anyhow::Context as _;

/// Flags of this subcommand.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The dllama model file (.m).
    pub model: PathBuf,
    /// Also print each node's slice of every tensor for this many nodes (root included), and
    /// check that the model splits over them.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub nodes: Option<u32>,
    /// With --nodes: also print the identity table --shared-storage uses (a BLAKE3-128 digest
    /// of every weight record each node loads, with its file bytes): what each node will read
    /// and check. Reads the whole model once unless the table is cached.
    #[arg(long, requires = "nodes")]
    pub identity: bool,
    /// Where the identity table is cached (default: as `inference --shared-storage`).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Print one JSON object (file, header keys, model, tensors, and with --nodes each node's
    /// share) instead of the text report.
    #[arg(long, conflicts_with = "identity")]
    pub json: bool,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let text = if args.json {
        let mut text = serde_json::to_string_pretty(&render_json(&args)?)?;
        text.push('\n');
        text
    } else {
        render(&args)?
    };
    super::output::write_out(&text);
    Ok(ExitCode::SUCCESS)
}

/// The header and layout of `args.model`, read as [`render`] reads them.
fn open_layout(path: &std::path::Path) -> anyhow::Result<(ModelHeader, ModelLayout, u64)> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let file_size = file
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    let header = ModelHeader::read_from(&mut BufReader::new(file))
        .with_context(|| format!("{} is not a valid .m model", path.display()))?;
    let layout = ModelLayout::new(&header, file_size)
        .with_context(|| format!("{}: tensors do not match the file", path.display()))?;
    Ok((header, layout, file_size))
}

/// The report as one JSON value: the same facts as the text, with numbers as numbers, for
/// scripts (as `llama-bench -o json` is).
fn render_json(args: &Args) -> anyhow::Result<serde_json::Value> {
    use serde_json::{Value, json};
    let (header, layout, file_size) = open_layout(&args.model)?;
    let c = layout.config();
    let keys: Vec<Value> = header
        .pairs()
        .iter()
        .map(|&(key, value)| json!({"key": key.name(), "code": key.code(), "value": value}))
        .collect();
    let tensors: Vec<Value> = layout
        .tensors()
        .iter()
        .map(|t| {
            json!({
                "layer": t.layer,
                "tensor": tensor_name(t),
                "type": t.float_type.name(),
                "rows": t.rows,
                "cols": t.cols,
                "offset": t.offset,
                "bytes": t.size,
                "split": split_name(t.split()),
            })
        })
        .collect();
    let mut report = json!({
        "file": args.model.display().to_string(),
        "file_size": file_size,
        "header_size": header.header_size(),
        "header": keys,
        "model": {
            "arch": c.arch.name(),
            "weights": c.weight_type.name(),
            "dim": c.dim,
            "layers": c.n_layers,
            "heads": c.n_heads,
            "kv_heads": c.n_kv_heads,
            "head_dim": c.head_dim,
            "q_dim": c.q_dim,
            "kv_dim": c.kv_dim,
            "ffn_dim": c.ffn_dim(),
            "hidden_dim": c.hidden_dim,
            "experts": c.n_experts,
            "active_experts": c.n_active_experts,
            "vocab": c.vocab_size,
            "seq_len": c.seq_len,
            "hidden_act": c.hidden_act.name(),
            "rope": c.rope_type.name(),
            "rope_theta": c.rope_theta,
            "norm_epsilon": c.norm_epsilon.value(),
        },
        "tensors": tensors,
    });
    if let Some(n_nodes) = args.nodes {
        let split = layout
            .node_split(n_nodes)
            .with_context(|| format!("the model cannot be split over {n_nodes} nodes"))?;
        let nodes: Vec<Value> = (0..n_nodes)
            .map(|node| {
                let (count, bytes) = split
                    .node_slices(node)
                    .fold((0u64, 0u64), |(c, b), s| (c + 1, b + s.bytes.total_bytes()));
                json!({"node": node, "tensors": count, "bytes": bytes})
            })
            .collect();
        report["nodes"] = Value::Array(nodes);
    }
    Ok(report)
}

/// The whole report as text.
fn render(args: &Args) -> anyhow::Result<String> {
    let path = &args.model;
    let (header, layout, file_size) = open_layout(path)?;

    let mut out = String::new();
    writeln!(
        out,
        "{}: {} ({} bytes)",
        path.display(),
        human(file_size),
        file_size
    )?;
    write_header(&mut out, &header)?;
    write_config(&mut out, layout.config())?;
    write_tensors(&mut out, &layout)?;
    if let Some(n_nodes) = args.nodes {
        let split = layout
            .node_split(n_nodes)
            .with_context(|| format!("the model cannot be split over {n_nodes} nodes"))?;
        write_slices(&mut out, &split)?;
        if args.identity {
            write_identity(&mut out, args, &header, &layout, n_nodes)?;
        }
    }
    Ok(out)
}

/// Each node's weight records (what `--shared-storage` has it read and verify) with their
/// file bytes and digests.
fn write_identity(
    out: &mut String,
    args: &Args,
    header: &ModelHeader,
    layout: &ModelLayout,
    n_nodes: u32,
) -> anyhow::Result<()> {
    use airllama::graph::{GraphParams, LlmGraph, SyncFloatType, WeightPlan};
    use airllama::shared_storage::{IdentityTable, TableSource, default_cache_dir, hex};
    let sync = match header.config().weight_type {
        airllama_kernels::block::FloatType::Q40 => SyncFloatType::Q80,
        _ => SyncFloatType::F32,
    };
    let graph = LlmGraph::build(header, GraphParams::dllama(n_nodes, sync, 0))
        .with_context(|| format!("the model cannot run on {n_nodes} nodes"))?;
    let plan = WeightPlan::new(&graph, layout).context("the weights cannot be distributed")?;
    let file = File::open(&args.model)?;
    let cache_dir = args.cache_dir.clone().or_else(default_cache_dir);
    let (table, source) = IdentityTable::load_or_build(
        &file,
        &args.model,
        header.header_size(),
        &plan,
        cache_dir.as_deref(),
        &mut |_, _| {},
    )?;
    let place = match &source {
        TableSource::Cached(p) => format!("cached in {}", p.display()),
        TableSource::Built { saved: Ok(p) } => format!("built now, saved to {}", p.display()),
        TableSource::Built { saved: Err(why) } => format!("built now, not saved: {why}"),
    };
    writeln!(
        out,
        "
Identity table over {n_nodes} nodes ({place})
  header digest {}, file {} bytes",
        hex(&table.header_digest),
        table.file_size
    )?;
    for node in 0..n_nodes {
        let loads: Vec<_> = plan
            .loads()
            .iter()
            .zip(&table.records)
            .filter(|(l, _)| l.node == node)
            .collect();
        let bytes: u64 = loads.iter().map(|(l, _)| l.header.n_bytes).sum();
        writeln!(
            out,
            "  node {node}: {} records, {} ({bytes} bytes){}",
            loads.len(),
            human(bytes),
            if node == 0 {
                " (the root reads its own)"
            } else {
                ""
            }
        )?;
        for (load, d) in loads {
            let t = layout.tensors().get(load.tensor);
            writeln!(
                out,
                "    {} {:<14} op {:<3} +{:<8} {:>10} B  {}  file {}",
                hex(d),
                t.map(tensor_name).unwrap_or_default(),
                load.header.op_index,
                load.header.offset,
                load.header.n_bytes,
                load.header.name,
                load.bytes
            )?;
        }
    }
    Ok(())
}

fn write_header(out: &mut String, header: &ModelHeader) -> std::fmt::Result {
    writeln!(
        out,
        "\nHeader: {} bytes, {} keys (file order)",
        header.header_size(),
        header.pairs().len()
    )?;
    let c = header.config();
    for &(key, value) in header.pairs() {
        let meaning = match key {
            HeaderKey::ArchType => format!("{} ({value:#x})", c.arch.name()),
            HeaderKey::HiddenAct => format!("{} ({value})", c.hidden_act.name()),
            HeaderKey::WeightFloatType => format!("{} ({value})", c.weight_type.name()),
            HeaderKey::NormEpsilon => format!("{:e} ({value})", c.norm_epsilon.value()),
            HeaderKey::RopeType if c.arch.has_qk_norm() => {
                format!(
                    "{value} (overridden: {} always uses falcon RoPE)",
                    c.arch.name()
                )
            }
            _ => value.to_string(),
        };
        writeln!(
            out,
            "  {:<32} {meaning}",
            format!("{} ({})", key.name(), key.code())
        )?;
    }
    Ok(())
}

fn write_config(out: &mut String, c: &ModelConfig) -> std::fmt::Result {
    writeln!(out, "\nModel (with dllama's defaults and derived values)")?;
    let rows: [(&str, String); 14] = [
        ("arch", c.arch.name().to_string()),
        ("weights", c.weight_type.name().to_string()),
        ("dim", c.dim.to_string()),
        ("layers", c.n_layers.to_string()),
        (
            "heads / kv heads",
            format!("{} / {}", c.n_heads, c.n_kv_heads),
        ),
        ("head dim", c.head_dim.to_string()),
        ("q dim / kv dim", format!("{} / {}", c.q_dim, c.kv_dim)),
        (
            "feed-forward dim",
            if c.is_moe() {
                format!("{} per expert (hidden_dim {})", c.ffn_dim(), c.hidden_dim)
            } else {
                c.ffn_dim().to_string()
            },
        ),
        (
            "experts",
            if c.is_moe() {
                format!("{}, {} active", c.n_experts, c.n_active_experts)
            } else {
                "none".to_string()
            },
        ),
        ("vocab", c.vocab_size.to_string()),
        ("seq len", c.seq_len.to_string()),
        ("hidden act", c.hidden_act.name().to_string()),
        (
            "rope",
            format!("{}, theta {}", c.rope_type.name(), c.rope_theta),
        ),
        ("norm epsilon", format!("{:e}", c.norm_epsilon.value())),
    ];
    for (name, value) in rows {
        writeln!(out, "  {name:<18} {value}")?;
    }
    if c.rope_type == airllama_io::model::RopeKind::Llama31 {
        writeln!(
            out,
            "  {:<18} factor {}, low {}, high {}, original seq len {}",
            "rope scaling",
            c.rope_scaling_factor,
            c.rope_scaling_low_freq_factor,
            c.rope_scaling_high_freq_factor,
            c.rope_scaling_orig_max_seq_len
        )?;
    }
    Ok(())
}

fn split_name(kind: SplitKind) -> &'static str {
    match kind {
        SplitKind::RootOnly => "root only",
        SplitKind::Replicated => "all nodes",
        SplitKind::Rows => "rows",
        SplitKind::Columns => "columns",
    }
}

fn tensor_name(t: &TensorEntry) -> String {
    match t.expert {
        Some(e) => format!("{}[{e}]", t.role),
        None => t.role.to_string(),
    }
}

fn write_tensors(out: &mut String, layout: &ModelLayout) -> std::fmt::Result {
    writeln!(out, "\nTensors: {} in file order", layout.tensors().len())?;
    writeln!(
        out,
        "  {:>5} {:>5}  {:<14} {:<5} {:>13} {:>14} {:>12}  split",
        "#", "layer", "tensor", "type", "rows x cols", "offset", "bytes"
    )?;
    for (i, t) in layout.tensors().iter().enumerate() {
        writeln!(
            out,
            "  {:>5} {:>5}  {:<14} {:<5} {:>13} {:>14} {:>12}  {}",
            i,
            t.layer,
            tensor_name(t),
            t.float_type.name(),
            format!("{}x{}", t.rows, t.cols),
            t.offset,
            t.size,
            split_name(t.split())
        )?;
    }
    writeln!(
        out,
        "  header {} + tensors {} = {} bytes = file size",
        layout.header_size(),
        layout.file_size() - layout.header_size(),
        layout.file_size()
    )
}

fn write_slices(out: &mut String, split: &NodeSplit<'_>) -> std::fmt::Result {
    let layout = split.layout();
    let n = split.n_nodes();
    writeln!(out, "\nNode slices over {n} nodes (node 0 = root)")?;
    for node in 0..n {
        let (count, bytes) = split
            .node_slices(node)
            .fold((0u64, 0u64), |(c, b), s| (c + 1, b + s.bytes.total_bytes()));
        writeln!(
            out,
            "  node {node}: {count} tensors, {} ({bytes} bytes)",
            human(bytes)
        )?;
    }
    for (i, t) in layout.tensors().iter().enumerate() {
        match t.split() {
            SplitKind::RootOnly | SplitKind::Replicated => continue,
            SplitKind::Rows | SplitKind::Columns => {}
        }
        writeln!(
            out,
            "  #{i} layer {} {} ({}, {} bytes per node)",
            t.layer,
            tensor_name(t),
            split_name(t.split()),
            split.slice_bytes(i).unwrap_or(0)
        )?;
        for node in 0..n {
            if let Some(s) = split.slice(i, node) {
                write!(out, "      node {node}: {}", s.bytes)?;
                if s.op_offset != 0 {
                    write!(out, " (record offset {})", s.op_offset)?;
                }
                writeln!(out)?;
            }
        }
    }
    Ok(())
}

/// Bytes in binary units.
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
#[macro_use]
#[path = "../../tests/golden_support/mod.rs"]
mod golden_support;

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(variant: &str) -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/golden"))
            .join(variant)
            .join("model.m")
    }

    #[test]
    fn inspects_a_golden_model_with_node_slices() {
        golden_or_skip!();
        let args = Args {
            model: golden("qwen3moe-q40"),
            nodes: Some(3),
            identity: false,
            cache_dir: None,
            json: false,
        };
        let text = render(&args).unwrap();
        assert!(text.contains("arch_type (1)"), "{text}");
        assert!(text.contains("Qwen3 MoE (0xabcd02)"));
        assert!(text.contains("q dim / kv dim     384 / 192"));
        assert!(text.contains("header 144 + tensors 1765504 = 1765648 bytes = file size"));
        // w2 of expert 2, layer 0, node 1: 192 rows of 36 bytes, every 108 bytes.
        assert!(text.contains("node 1: 192 rows × 36 B from"), "{text}");
        assert!(text.contains("Node slices over 3 nodes"));
    }

    #[test]
    fn refuses_a_bad_split_and_a_missing_file() {
        golden_or_skip!();
        let args = Args {
            model: golden("llama-q40"),
            nodes: Some(4),
            identity: false,
            cache_dir: None,
            json: false,
        };
        let err = format!("{:#}", render(&args).unwrap_err());
        assert!(
            err.contains("n_kv_heads = 6 does not divide by 4 nodes"),
            "{err}"
        );
        let args = Args {
            model: golden("no-such-variant"),
            nodes: None,
            identity: false,
            cache_dir: None,
            json: false,
        };
        assert!(render(&args).is_err());
        let text = render(&Args {
            model: golden("llama-f32"),
            nodes: None,
            identity: false,
            cache_dir: None,
            json: false,
        })
        .unwrap();
        assert!(!text.contains("Node slices"));
    }

    #[test]
    fn prints_the_identity_table_each_node_checks() {
        golden_or_skip!();
        let dir = std::env::temp_dir().join(format!("airllama-inspect-id-{}", std::process::id()));
        let args = Args {
            model: golden("llama-q40"),
            nodes: Some(3),
            identity: true,
            cache_dir: Some(dir.clone()),
            json: false,
        };
        let built = render(&args).unwrap();
        assert!(
            built.contains("Identity table over 3 nodes (built now, saved to"),
            "{built}"
        );
        assert!(built.contains("node 1: 38 records"), "{built}");
        let cached = render(&args).unwrap();
        assert!(cached.contains("(cached in"), "{cached}");
        // Same digests either way.
        let digests = |t: &str| {
            t.lines()
                .filter(|l| l.starts_with("    ") && l.contains(" op "))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(digests(&built), digests(&cached));
        assert!(!digests(&built).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
