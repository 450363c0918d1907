//! The streaming reader against plain `std::fs` reads: every engine (io_uring, pread), direct and
//! buffered, unaligned ranges, many requests in flight, slot ownership, errors. A kernel that
//! lacks io_uring or a file system that refuses `O_DIRECT` makes the corresponding case check
//! the fallback instead of failing.
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use airllama_io::stream::{EngineChoice, StreamError, StreamOptions, StreamReader};
use proptest::prelude::*;

/// A scratch directory on the same disk as the repository (not /tmp, which may be tmpfs and
/// refuse O_DIRECT).
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("stream_reader");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A file of `len` pseudo-random bytes.
fn data_file(name: &str, len: usize) -> (PathBuf, Vec<u8>) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ len as u64;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let path = scratch(name);
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    (path, data)
}

fn uring_available() -> bool {
    io_uring_probe::available()
}

mod io_uring_probe {
    /// Whether this kernel lets us create a ring at all (seccomp and old kernels do not).
    pub fn available() -> bool {
        // The reader's own fallback reason is the probe: open a one-slot reader on a small file.
        let path = super::scratch("probe.bin");
        std::fs::write(&path, [0u8; 16]).unwrap();
        let r = airllama_io::stream::StreamReader::open(
            &path,
            &airllama_io::stream::StreamOptions::new(1, 4096),
        )
        .unwrap();
        r.fallback_reason().is_none()
    }
}

fn options(engine: EngineChoice, direct: bool, slots: usize, slot: usize) -> StreamOptions {
    let mut o = StreamOptions::new(slots, slot);
    o.engine = engine;
    o.direct = direct;
    // Small chunks so one request is many kernel reads.
    o.chunk_size = 8192;
    o.max_in_flight = 6;
    o
}

fn check_ranges(reader: &mut StreamReader, data: &[u8], ranges: &[Range<u64>]) {
    // Keep as many requests in flight as the ring has slots, redeem them in order.
    let mut pending = std::collections::VecDeque::new();
    let mut next = 0;
    while next < ranges.len() || !pending.is_empty() {
        while next < ranges.len() && reader.free_slots() > 0 {
            pending.push_back((
                ranges[next].clone(),
                reader.submit(ranges[next].clone()).unwrap(),
            ));
            next += 1;
        }
        let (range, ticket) = pending.pop_front().unwrap();
        let slot = reader.wait(ticket).unwrap();
        assert_eq!(
            &slot[..],
            &data[range.start as usize..range.end as usize],
            "range {range:?}"
        );
        assert_eq!(slot.file_range(), range);
    }
}

fn engines() -> Vec<(EngineChoice, bool)> {
    vec![
        (EngineChoice::Auto, true),
        (EngineChoice::Auto, false),
        (EngineChoice::Pread, true),
        (EngineChoice::Pread, false),
    ]
}

#[test]
fn unaligned_ranges_read_exactly_with_every_engine() {
    let (path, data) = data_file("exact.bin", 1_000_003);
    let ranges: Vec<Range<u64>> = vec![
        0..1,
        1..2,
        511..513,
        4095..4097,
        12_345..98_765,
        0..200_000,
        999_000..1_000_003,
        1_000_003..1_000_003,
        77..77,
        300_001..500_000,
    ];
    for (engine, direct) in engines() {
        let mut reader = StreamReader::open(&path, &options(engine, direct, 3, 256 << 10)).unwrap();
        if engine == EngineChoice::Auto && uring_available() {
            assert_eq!(reader.engine_name(), "io_uring");
        } else {
            assert_eq!(reader.engine_name(), "pread");
            assert!(reader.fallback_reason().is_some());
        }
        if !direct {
            assert!(!reader.is_direct());
        }
        let a = reader.alignment();
        assert!(a.memory.is_power_of_two() && a.offset.is_power_of_two());
        check_ranges(&mut reader, &data, &ranges);
        let stats = reader.take_stats();
        assert_eq!(stats.requests, ranges.len() as u64);
        // Every request reads at least its bytes (aligned ranges read more).
        let wanted: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        assert!(stats.bytes_read >= wanted, "{stats:?}");
        assert_eq!(reader.free_slots(), 3);
    }
}

#[test]
fn direct_io_is_used_where_the_file_system_allows_it() {
    let (path, _) = data_file("direct.bin", 10_000);
    let reader = StreamReader::open(&path, &options(EngineChoice::Auto, true, 1, 16384)).unwrap();
    // The target dir is on a disk file system here; on tmpfs O_DIRECT is refused and the reader
    // must have fallen back to buffered reads rather than failing.
    let fs_refuses = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_direct()
        .open(&path)
        .is_err();
    assert_eq!(reader.is_direct(), !fs_refuses);
}

trait DirectFlag {
    fn custom_flags_direct(&mut self) -> &mut Self;
}

impl DirectFlag for std::fs::OpenOptions {
    fn custom_flags_direct(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_DIRECT)
    }
}

#[test]
fn tmpfs_falls_back_to_buffered_reads() {
    let dir = Path::new("/dev/shm");
    if !dir.is_dir() {
        eprintln!("skipped: no /dev/shm");
        return;
    }
    let path = dir.join(format!("airllama-stream-test-{}", std::process::id()));
    let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let result = StreamReader::open(&path, &options(EngineChoice::Auto, true, 2, 65536));
    let mut reader = match result {
        Ok(r) => r,
        Err(e) => {
            std::fs::remove_file(&path).unwrap();
            panic!("{e}");
        }
    };
    let direct_refused = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_direct()
        .open(&path)
        .is_err();
    if direct_refused {
        assert!(!reader.is_direct());
    }
    check_ranges(&mut reader, &data, &[3..40_000, 49_999..50_000]);
    drop(reader);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_slot_has_one_owner_and_returns_on_drop() {
    let (path, data) = data_file("owner.bin", 100_000);
    let mut reader =
        StreamReader::open(&path, &options(EngineChoice::Auto, true, 2, 65536)).unwrap();
    let t1 = reader.submit(10..20_000).unwrap();
    let t2 = reader.submit(20_000..40_000).unwrap();
    // Both slots are taken (one per request in flight): a third request must wait.
    assert!(matches!(reader.submit(0..10), Err(StreamError::NoFreeSlot)));
    let a = reader.wait(t1).unwrap();
    let b = reader.wait(t2).unwrap();
    assert_ne!(a.slot(), b.slot());
    assert!(matches!(reader.submit(0..10), Err(StreamError::NoFreeSlot)));
    assert_eq!(&a[..], &data[10..20_000]);
    let slot_a = a.slot();
    drop(a);
    assert_eq!(reader.free_slots(), 1);
    let t3 = reader.submit(50_000..60_000).unwrap();
    let c = reader.wait(t3).unwrap();
    assert_eq!(c.slot(), slot_a);
    assert_eq!(&c[..], &data[50_000..60_000]);
    // b was not disturbed by the read into the other slot.
    assert_eq!(&b[..], &data[20_000..40_000]);
    // A handle outlives its reader: the memory is shared, not freed under it.
    drop(reader);
    assert_eq!(&b[..], &data[20_000..40_000]);
}

#[test]
fn requests_that_do_not_fit_are_refused() {
    let (path, _) = data_file("refuse.bin", 100_000);
    let mut reader =
        StreamReader::open(&path, &options(EngineChoice::Auto, true, 1, 8192)).unwrap();
    assert!(matches!(
        reader.submit(0..100_001),
        Err(StreamError::OutOfFile { .. })
    ));
    assert!(matches!(
        reader.submit(0..50_000),
        Err(StreamError::TooLarge { .. })
    ));
    // An 8 KiB slot holds 8 KiB only when the range is aligned; one byte more needs another block.
    let align = reader.alignment().block() as u64;
    assert_eq!(
        reader.covering_len(&(1..8192)),
        8192u64.next_multiple_of(align)
    );
    if align <= 8192 {
        assert!(matches!(
            reader.submit(1..8193),
            Err(StreamError::TooLarge { .. })
        ));
    }
    // The ring is still usable after refusals.
    let t = reader.submit(0..8192).unwrap();
    assert_eq!(reader.wait(t).unwrap().len(), 8192);
    let bad = StreamReader::open(&scratch("no-such-file"), &StreamOptions::new(1, 4096));
    assert!(matches!(bad, Err(StreamError::Open { .. })));
}

#[test]
fn dropping_a_reader_with_reads_in_flight_is_safe() {
    let (path, _) = data_file("inflight.bin", 2_000_000);
    for engine in [EngineChoice::Auto, EngineChoice::Pread] {
        let mut reader = StreamReader::open(&path, &options(engine, true, 4, 1 << 20)).unwrap();
        let _t: Vec<_> = (0..4)
            .map(|i| reader.submit(i * 400_000..(i + 1) * 400_000).unwrap())
            .collect();
        drop(reader);
    }
}

#[test]
fn memlock_error_names_the_limit() {
    let e = StreamError::Memlock {
        bytes: 1 << 20,
        limit: Some(65536),
        source: std::io::Error::from_raw_os_error(libc::ENOMEM),
    };
    let msg = e.to_string();
    assert!(
        msg.contains("65536 bytes") && msg.contains("ulimit -l"),
        "{msg}"
    );
    // The live limit is readable (unlimited reads as None).
    let _ = airllama_io::stream::memlock_limit();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn any_ranges_read_back_exactly(
        starts in proptest::collection::vec((0u64..300_000, 0u64..70_000), 1..12),
        pread in any::<bool>(),
        direct in any::<bool>(),
    ) {
        let (path, data) = data_file(&format!("prop-{}.bin", std::process::id()), 370_001);
        let engine = if pread { EngineChoice::Pread } else { EngineChoice::Auto };
        let mut reader = StreamReader::open(&path, &options(engine, direct, 3, 80_000)).unwrap();
        let ranges: Vec<_> = starts.iter().map(|&(s, l)| s..(s + l).min(370_001)).collect();
        check_ranges(&mut reader, &data, &ranges);
    }
}

/// The memlock limit the fallback test sets: an unprivileged user's default.
const CHILD_MEMLOCK: u64 = 8 << 20;

/// `CAP_IPC_LOCK` from linux/capability.h (the libc crate does not export capabilities): the
/// capability that lets a process lock memory beyond its limit.
const CAP_IPC_LOCK: libc::c_ulong = 14;

/// Run by `memlock_limit_too_low_falls_back_to_unlocked_buffers` in a child process that has no
/// CAP_IPC_LOCK (root with it dropped from the bounding set, or user nobody); does nothing
/// otherwise. Lowers its own RLIMIT_MEMLOCK to 8 MiB, opens a 16 MiB ring on the file the
/// parent names, and checks that every byte reads back right and that the fallback was
/// reported.
#[test]
fn memlock_fallback_child() {
    let Ok(path) = std::env::var("AIRLLAMA_MEMLOCK_CHILD") else {
        return;
    };
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` and `setrlimit` read/write one `rlimit` through a pointer to a live
    // local; lowering the soft limit needs no privilege.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim), 0);
        lim.rlim_cur = CHILD_MEMLOCK.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim), 0);
    }
    let limit_kib = lim.rlim_cur / 1024;
    let data = std::fs::read(&path).unwrap();
    let slot = 4 << 20;
    let mut reader = StreamReader::open(Path::new(&path), &StreamOptions::new(4, slot)).unwrap();
    assert!(
        (reader.n_slots() * reader.slot_size()) as u64 > CHILD_MEMLOCK,
        "the ring must exceed the limit"
    );
    assert!(!reader.locked(), "locked a ring above the memlock limit");
    let warning = reader
        .warning()
        .expect("the fallback must be reported")
        .to_string();
    assert!(
        warning.contains(&format!("RLIMIT_MEMLOCK is {limit_kib} KiB"))
            && warning.contains("unlocked buffers")
            && warning.contains("ulimit -l"),
        "{warning}"
    );
    if reader.engine_name() == "io_uring" {
        // Registered buffers are charged to the same limit, so io_uring must read into
        // unregistered buffers here (the `READ` path).
        assert!(!reader.registered_buffers(), "registered above the limit");
        assert!(warning.contains("unregistered io_uring reads"), "{warning}");
    }
    // Unaligned ranges that cover the whole file, each nearly a slot, then some small ones.
    let len = data.len() as u64;
    let mut ranges: Vec<Range<u64>> = (0..len)
        .step_by(3_999_999)
        .map(|s| s..(s + 3_999_999).min(len))
        .collect();
    ranges.extend([1..2, 4095..4097, len - 1..len, 1_000_001..1_200_000]);
    check_ranges(&mut reader, &data, &ranges);
    println!(
        "MEMLOCK-CHILD-OK uid {} engine {} direct {} registered {}: {warning}",
        // SAFETY: `getuid` only reads this process's credentials.
        unsafe { libc::getuid() },
        reader.engine_name(),
        reader.is_direct(),
        reader.registered_buffers()
    );
}

/// Runs `memlock_fallback_child` on `file` with `setup` applied to the command; returns its
/// output.
fn run_memlock_child(
    file: &Path,
    setup: impl FnOnce(&mut std::process::Command),
) -> std::io::Result<std::process::Output> {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "memlock_fallback_child", "--nocapture"])
        .env("AIRLLAMA_MEMLOCK_CHILD", file);
    setup(&mut command);
    command.output()
}

fn assert_child_ok(who: &str, out: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("MEMLOCK-CHILD-OK"),
        "{who}: {}\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!(
        "{who}: {}",
        stdout
            .lines()
            .find(|l| l.contains("MEMLOCK-CHILD-OK"))
            .unwrap()
    );
}

/// An 8 MiB memlock limit (an unprivileged user's default) and a 16 MiB ring: the reader must
/// stream with an unlocked ring and say so, not refuse. Run as root without CAP_IPC_LOCK (which
/// would ignore the limit) and as user nobody; as any other user, as that user.
#[test]
fn memlock_limit_too_low_falls_back_to_unlocked_buffers() {
    use std::os::unix::process::CommandExt;
    let (path, _) = data_file("memlock.bin", (12 << 20) + 12_345);
    // SAFETY: `geteuid` only reads this process's credentials.
    if unsafe { libc::geteuid() } != 0 {
        let out = run_memlock_child(&path, |_| {}).unwrap();
        assert_child_ok("this user", &out);
        return;
    }
    let out = run_memlock_child(&path, |c| {
        // SAFETY: runs in the forked child before exec and only calls `prctl`, which is
        // async-signal-safe and touches no memory of the parent.
        unsafe {
            c.pre_exec(|| {
                if libc::prctl(libc::PR_CAPBSET_DROP, CAP_IPC_LOCK, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
    })
    .unwrap();
    assert_child_ok("root without CAP_IPC_LOCK", &out);
    // User nobody must be able to reach the test binary and the data file; where the build
    // lives in a private directory it cannot, and the root run above is the test.
    match run_memlock_child(&path, |c| {
        c.uid(65534).gid(65534);
    }) {
        Ok(out) => assert_child_ok("user nobody", &out),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!(
                "user nobody skipped: cannot run {:?}: {e}",
                std::env::current_exe()
            );
        }
        Err(e) => panic!("running the child as nobody: {e}"),
    }
}

#[test]
fn sequential_read_reports_what_it_read() {
    let (path, _) = data_file("sequential.bin", 3 << 20);
    let (bytes, time) = airllama_io::stream::sequential_read(
        &path,
        1 << 20,
        2,
        std::time::Duration::from_millis(50),
        true,
    )
    .unwrap();
    assert!(bytes >= 1 << 20 && bytes % (1 << 20) == 0, "{bytes}");
    assert!(time >= std::time::Duration::from_millis(50));
}

#[test]
fn mapped_files_read_and_release() {
    let (path, data) = data_file("mapped.bin", 100_000);
    let map = airllama_io::stream::MappedFile::open(&path).unwrap();
    assert_eq!(map.bytes(), &data[..]);
    map.release(4096..50_000).unwrap();
    // Released pages fault back in with the same bytes.
    assert_eq!(map.bytes(), &data[..]);
    airllama_io::stream::drop_cache(&std::fs::File::open(&path).unwrap(), 0..100_000).unwrap();
}
