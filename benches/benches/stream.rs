//! Layer streaming benchmark: a synthetic Q40 llama (Llama-2-7B shape, about 4.2 GB, written by
//! airllama's own generator, never committed) decoded under `--mem-budget` (512M by default):
//!
//! - `disk`: the disk's `O_DIRECT` sequential bandwidth, io_uring, 4 MiB blocks, QD 4/8/16;
//! - `stream`: layer streaming with prefetch (reads of the next layers overlap the compute);
//! - `serial`: read-then-compute (each layer read when its first op needs it);
//! - `readonly`: the streamer alone (each streamed op's weight asked for in order, no compute):
//!   the read path's ceiling on this disk;
//! - `mmap`: a plain mmap loader held to the same budget by releasing each layer's pages from
//!   the process and the page cache right after use (an idealised loader: it evicts exactly
//!   what it will not need soonest, which no kernel reclaim does);
//! - `mmap-cgroup`: a plain mmap loader that releases nothing, run in a memory cgroup (v1 or
//!   v2; needs root) limited to the streaming run's peak RSS, so the kernel's reclaim keeps it
//!   within the same memory (skipped where no cgroup can be made).
//!
//! The mmap runs read through the page cache, so the device's `read_ahead_kb` sets how much
//! each page fault reads. They run at the device's setting and, with
//! `AIRLLAMA_STREAM_MMAP_READAHEAD_KB=<kb>` (root only), again at that setting (e.g. 128, the
//! kernel's default for most disks), which is put back afterwards.
//!
//! Every mode runs in its own child process (so peak RSS is per mode) with the file dropped
//! from the page cache first; the whole set is repeated back to back, since the disk's speed
//! varies. Not a criterion bench: one decode is seconds long. Run with
//! `cargo bench -p airllama-benches --bench stream`; environment: `AIRLLAMA_STREAM_DIR` (where
//! the model is written; default the target tmp dir), `AIRLLAMA_STREAM_BUDGET` (512M),
//! `AIRLLAMA_STREAM_TOKENS` (decode steps, 6), `AIRLLAMA_STREAM_REPEATS` (2),
//! `AIRLLAMA_STREAM_THREADS` (2), `AIRLLAMA_STREAM_LAYERS` (32), `AIRLLAMA_STREAM_CHUNK` and
//! `AIRLLAMA_STREAM_DEPTH` (the reader's read size and queue depth),
//! `AIRLLAMA_STREAM_KEEP=1` to keep the model file afterwards.
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use airllama::executor::{Executor, ExecutorOptions, NoSync, WeightFeed};
use airllama::graph::{GraphParams, LlmGraph, SyncFloatType, WeightPlan};
use airllama::streaming::synthetic::{LlamaShape, write_model};
use airllama::streaming::{MapMode, ModelStreaming, StreamingOptions, parse_size};
use airllama_io::layout::ModelLayout;
use airllama_io::model::ModelHeader;
use airllama_io::stream::{drop_cache, sequential_read};
use airllama_kernels::backend::Backend;
use airllama_kernels::block::FloatType;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn shape() -> LlamaShape {
    let mut s = LlamaShape::LLAMA2_7B;
    s.seq_len = 128;
    s.n_layers = env_or("AIRLLAMA_STREAM_LAYERS", "32")
        .parse()
        .expect("layers");
    s
}

fn model_path() -> PathBuf {
    let dir = PathBuf::from(env_or("AIRLLAMA_STREAM_DIR", env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&dir).expect("model dir");
    dir.join(format!("stream-bench-{}l.m", shape().n_layers))
}

/// `(name, value)` lines of /proc/self/status and /proc/self/io, in bytes.
fn proc_value(file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with(key)) else {
        return 0;
    };
    let v: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if line.ends_with("kB") { v * 1024 } else { v }
}

fn child(mode: &str) {
    let path = model_path();
    let budget = parse_size(&env_or("AIRLLAMA_STREAM_BUDGET", "512M")).expect("budget");
    let tokens: u32 = env_or("AIRLLAMA_STREAM_TOKENS", "6")
        .parse()
        .expect("tokens");
    let threads: usize = env_or("AIRLLAMA_STREAM_THREADS", "2")
        .parse()
        .expect("threads");
    let file = File::open(&path).expect("model");
    let file_len = file.metadata().expect("metadata").len();
    let header = ModelHeader::read_from(&mut std::io::BufReader::new(&file)).expect("header");
    let layout = ModelLayout::new(&header, file_len).expect("layout");
    let graph =
        LlmGraph::build(&header, GraphParams::dllama(1, SyncFloatType::Q80, 0)).expect("graph");
    let plan = WeightPlan::new(&graph, &layout).expect("plan");
    let node = &graph.nodes[0];
    let mut options = StreamingOptions::new(budget);
    options.overlap = mode != "serial";
    if let Ok(cgroup) = std::env::var("AIRLLAMA_STREAM_CGROUP") {
        join_cgroup(Path::new(&cgroup));
    }
    let map = match mode {
        "mmap" => MapMode::Released,
        "mmap-cgroup" => MapMode::Plain,
        _ => MapMode::Off,
    };
    let mut s = ModelStreaming::plan(&path, node, &plan, &options, map).expect("streaming plan");
    let exec_options = ExecutorOptions::new(Backend::detect(), threads);
    let streamed_ops = s.streamer.streamed_ops();
    let mut exec = Executor::with_streamed_weights(
        &graph.net,
        node,
        &exec_options,
        &s.streamer.streamed_ops(),
    )
    .expect("executor");
    for load in plan.node_loads(0) {
        if !s.is_resident(node, &load.target) {
            continue;
        }
        let dst = exec.weight_mut(&load.target).expect("weight");
        let mut at = 0;
        for r in load.bytes.ranges() {
            let n = (r.end - r.start) as usize;
            file.read_exact_at(&mut dst[at..at + n], r.start)
                .expect("read");
            at += n;
        }
    }
    drop_cache(&file, 0..file_len).expect("drop cache");
    let weights: u64 = node.ops().map(|(_, _, op)| op.weight_size.n_bytes()).sum();
    let buffers = node.required_memory(&graph.net) - weights;
    let token_pipe = graph.pipes.token as usize;
    let (mut wall, mut bytes, mut read_time, mut wait) =
        (Duration::ZERO, 0u64, Duration::ZERO, Duration::ZERO);
    let mut io_before = 0;
    // Position 0 is a warm-up (first touches of buffers and the map); positions 1.. are timed.
    for position in 0..=tokens {
        let ids: &mut [f32] =
            bytemuck::cast_slice_mut(exec.pipe_mut(token_pipe).expect("token pipe"));
        ids[0] = ((position * 7919) % 32000) as f32;
        let started = Instant::now();
        s.streamer.begin_forward().expect("begin");
        if mode == "readonly" {
            // The streamer's own ceiling: every streamed op's weight asked for in step order,
            // no compute in between.
            for (op, streamed) in streamed_ops.iter().enumerate() {
                if *streamed {
                    s.streamer.weight(op).expect("weight");
                }
            }
        } else {
            exec.forward_with(
                position,
                1,
                &mut NoSync,
                Some(&mut s.streamer as &mut dyn WeightFeed),
            )
            .expect("forward");
        }
        let st = s.streamer.end_forward();
        if position == 0 {
            io_before = proc_value("/proc/self/io", "read_bytes:");
        } else {
            wall += started.elapsed();
            bytes += st.bytes_read;
            read_time += st.read_time;
            wait += st.io_wait;
        }
    }
    let disk_bytes = proc_value("/proc/self/io", "read_bytes:") - io_before;
    let p = s.streamer.plan();
    let reader = s.streamer.reader();
    println!(
        "RESULT mode={mode} tokens={tokens} wall_s={:.4} tok_s={:.4} stream_bytes={bytes} disk_bytes={disk_bytes} read_s={:.4} wait_s={:.4} compute_s={:.4} slots={} slot_mb={:.1} resident_mb={:.1} streamed_units={} hwm_mb={:.1} buffers_mb={:.1} engine={} direct={}",
        wall.as_secs_f64(),
        tokens as f64 / wall.as_secs_f64(),
        read_time.as_secs_f64(),
        wait.as_secs_f64(),
        (wall - wait).as_secs_f64(),
        p.n_slots,
        p.slot_size as f64 / 1048576.0,
        p.resident_bytes as f64 / 1048576.0,
        s.streamer.n_streamed_units(),
        proc_value("/proc/self/status", "VmHWM:") as f64 / 1048576.0,
        buffers as f64 / 1048576.0,
        reader.map_or("mmap", |r| r.engine_name()),
        reader.is_some_and(|r| r.is_direct()),
    );
}

fn field(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A memory cgroup of its own for one child (v2 `memory.max`, or v1 `memory.limit_in_bytes`),
/// or `None` where this process may not make one (not root, no memory controller).
fn memory_cgroup(limit: u64) -> Option<PathBuf> {
    let name = format!("airllama-stream-bench-{}", std::process::id());
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers");
    let (dir, limit_file) = if std::fs::read_to_string(v2).is_ok_and(|c| c.contains("memory")) {
        let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
        (Path::new("/sys/fs/cgroup").join(name), "memory.max")
    } else {
        (
            Path::new("/sys/fs/cgroup/memory").join(name),
            "memory.limit_in_bytes",
        )
    };
    let _ = std::fs::remove_dir(&dir);
    std::fs::create_dir(&dir).ok()?;
    if std::fs::write(dir.join(limit_file), limit.to_string()).is_err() {
        let _ = std::fs::remove_dir(&dir);
        return None;
    }
    Some(dir)
}

/// Moves this process into `cgroup` (before it maps or allocates anything large).
fn join_cgroup(cgroup: &Path) {
    let pid = std::process::id().to_string();
    let procs = if cgroup.join("cgroup.procs").exists() && cgroup.join("memory.max").exists() {
        cgroup.join("cgroup.procs")
    } else {
        cgroup.join("tasks")
    };
    std::fs::write(&procs, pid).expect("join the memory cgroup");
}

/// The `read_ahead_kb` of the block device a file lives on: page faults on a map of the file
/// read that much around (and ahead of) the faulting page, so it decides how fast an mmap
/// loader reads. `O_DIRECT` reads ignore it.
struct ReadaheadSetting {
    file: PathBuf,
    original: u64,
}

/// Puts the device's readahead back when dropped.
struct ReadaheadGuard<'a>(&'a ReadaheadSetting);

impl ReadaheadSetting {
    fn of(path: &Path) -> Option<ReadaheadSetting> {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(path).ok()?.dev();
        // Linux's encoding of a device number (glibc's gnu_dev_major / gnu_dev_minor).
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
        let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
        let base = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
        // A partition has no queue of its own: its disk's is one level up.
        [
            base.join("queue/read_ahead_kb"),
            base.join("../queue/read_ahead_kb"),
        ]
        .into_iter()
        .find_map(|file| {
            let original = std::fs::read_to_string(&file).ok()?.trim().parse().ok()?;
            Some(ReadaheadSetting { file, original })
        })
    }

    fn set(&self, kb: u64) -> std::io::Result<ReadaheadGuard<'_>> {
        std::fs::write(&self.file, kb.to_string())?;
        Ok(ReadaheadGuard(self))
    }
}

impl Drop for ReadaheadGuard<'_> {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0.file, self.0.original.to_string());
    }
}

fn run_child(mode: &str) -> String {
    run_child_in(mode, None)
}

fn run_child_in(mode: &str, cgroup: Option<&Path>) -> String {
    let exe = std::env::current_exe().expect("exe");
    let mut command = Command::new(exe);
    command.env("AIRLLAMA_STREAM_CHILD", mode);
    if let Some(c) = cgroup {
        command.env("AIRLLAMA_STREAM_CGROUP", c);
    }
    let out = command.output().expect("child");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.starts_with("RESULT"))
        .unwrap_or_else(|| {
            panic!(
                "{mode} child failed: {}\n{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_string();
    println!("{line}");
    line
}

/// The disk's O_DIRECT sequential bandwidth at QD 4, 8 and 16 (GB/s each).
fn disk_bandwidth(path: &Path) -> Vec<f64> {
    let mut all = Vec::new();
    for depth in [4, 8, 16] {
        let file = File::open(path).expect("model");
        drop_cache(&file, 0..file.metadata().expect("meta").len()).expect("drop cache");
        let (bytes, t) =
            sequential_read(path, 4 << 20, depth, Duration::from_secs(3), true).expect("disk");
        let bw = bytes as f64 / t.as_secs_f64() / 1e9;
        println!(
            "DISK qd={depth} bytes={bytes} s={:.3} GB/s={bw:.3}",
            t.as_secs_f64()
        );
        all.push(bw);
    }
    all
}

fn main() {
    if let Ok(mode) = std::env::var("AIRLLAMA_STREAM_CHILD") {
        child(&mode);
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` would run this as a test: skip.
    if !std::env::args().any(|a| a == "--bench") {
        println!("stream bench: run with `cargo bench --bench stream`");
        return;
    }
    let path = model_path();
    let shape = shape();
    let params = shape.params(FloatType::Q40);
    if !path.exists() {
        let started = Instant::now();
        let size = write_model(&path, &params, 1).expect("generate model");
        println!(
            "generated {} ({size} bytes) in {:.1}s",
            path.display(),
            started.elapsed().as_secs_f64()
        );
    }
    let repeats: usize = env_or("AIRLLAMA_STREAM_REPEATS", "2")
        .parse()
        .expect("repeats");
    for rep in 0..repeats {
        println!("--- repeat {rep}");
        let mut disks = disk_bandwidth(&path);
        let stream = run_child("stream");
        let serial = run_child("serial");
        let readahead = ReadaheadSetting::of(&path);
        if let Some(r) = &readahead {
            println!("DEVICE {} read_ahead_kb={}", r.file.display(), r.original);
        }
        // The mmap baselines at the device's readahead, then (if asked, and if this process
        // may change it) at another one, e.g. 128, the kernel's default for most disks.
        let mut settings: Vec<Option<u64>> = vec![None];
        if let Ok(kb) = std::env::var("AIRLLAMA_STREAM_MMAP_READAHEAD_KB") {
            settings.push(Some(kb.parse().expect("AIRLLAMA_STREAM_MMAP_READAHEAD_KB")));
        }
        let mut baselines = Vec::new();
        for setting in settings {
            let label = match (setting, &readahead) {
                (None, Some(r)) => format!("{}k", r.original),
                (None, None) => "device".to_string(),
                (Some(kb), _) => format!("{kb}k"),
            };
            let _guard = match (setting, &readahead) {
                (None, _) => None,
                (Some(kb), Some(r)) => match r.set(kb) {
                    Ok(guard) => Some(guard),
                    Err(e) => {
                        println!("mmap at read_ahead_kb={kb}: skipped ({e})");
                        continue;
                    }
                },
                (Some(kb), None) => {
                    println!("mmap at read_ahead_kb={kb}: skipped (no block device found)");
                    continue;
                }
            };
            let mmap = run_child("mmap");
            // A plain map under a memory cgroup as large as the streaming run's peak RSS:
            // the kernel's reclaim, not the loader, keeps it within the budget.
            let limit = (field(&stream, "hwm_mb") * 1048576.0) as u64;
            let cgroup = memory_cgroup(limit);
            let mmap_cgroup = match &cgroup {
                Some(c) => run_child_in("mmap-cgroup", Some(c)),
                None => {
                    println!("mmap-cgroup: skipped (cannot create a memory cgroup here)");
                    String::new()
                }
            };
            if let Some(c) = cgroup {
                let _ = std::fs::remove_dir(c);
            }
            baselines.push((label, mmap, mmap_cgroup));
        }
        let readonly = run_child("readonly");
        // Streaming again after the baselines: the disk drifts over minutes, so each ratio
        // below uses the mean of the two streaming runs that bracket the baselines.
        let stream_after = run_child("stream");
        disks.extend(disk_bandwidth(&path));
        // The disk's speed drifts (and bursts after idle periods): compare with the mean of
        // the six measurements around the runs, and show the fastest too.
        let disk = disks.iter().sum::<f64>() / disks.len() as f64;
        let disk_max = disks.iter().copied().fold(0.0, f64::max);
        let bw = |l: &str| field(l, "disk_bytes") / field(l, "wall_s") / 1e9;
        let tok = |l: &str| field(l, "tok_s");
        let stream_tok = (tok(&stream) + tok(&stream_after)) / 2.0;
        let stream_bw = (bw(&stream) + bw(&stream_after)) / 2.0;
        println!(
            "SUMMARY rep={rep} disk_GBps={disk:.3} (max {disk_max:.3}) stream_tok_s={stream_tok:.3} ({:.3} before, {:.3} after) stream_GBps={stream_bw:.3} ({:.0}% of disk) serial_tok_s={:.3} stream/serial={:.2}x stream_hwm_MB={:.0} readonly_GBps={:.3} ({:.0}% of disk)",
            tok(&stream),
            tok(&stream_after),
            100.0 * stream_bw / disk,
            tok(&serial),
            stream_tok / tok(&serial),
            field(&stream, "hwm_mb"),
            bw(&readonly),
            100.0 * bw(&readonly) / disk,
        );
        for (label, mmap, mmap_cgroup) in &baselines {
            println!(
                "SUMMARY rep={rep} readahead={label} mmap_tok_s={:.3} mmap_GBps={:.3} stream/mmap={:.2}x mmap_cgroup_tok_s={:.3} mmap_cgroup_GBps={:.3} stream/mmap_cgroup={:.2}x",
                tok(mmap),
                bw(mmap),
                stream_tok / tok(mmap),
                tok(mmap_cgroup),
                bw(mmap_cgroup),
                stream_tok / tok(mmap_cgroup),
            );
        }
    }
    if std::env::var("AIRLLAMA_STREAM_KEEP").as_deref() != Ok("1") {
        let _ = std::fs::remove_file(&path);
    }
}
