//! [`StreamReader`]: reads byte ranges of one file into the ring's slots, many chunks in flight.
//!
//! A request names a file byte range. The reader widens it to the aligned range that covers it,
//! takes a free slot and hands the request to its I/O thread, which cuts the aligned range into
//! chunks (`chunk_size` bytes) and keeps up to `max_in_flight` of them submitted to io_uring as
//! `READ_FIXED` into the registered slot. [`StreamReader::wait`] returns the slot as a
//! [`LoadedSlot`] that derefs to exactly the requested bytes.
//!
//! Why a thread: the disk is kept busy only if a finished chunk is replaced at once. The
//! caller (the executor) only comes back to the reader between ops, several milliseconds
//! apart, while a queue of a few MiB drains in one or two; the I/O thread sleeps in the kernel
//! until completions arrive and refills the queue then, so reads keep flowing however long an
//! op computes. It costs a wake-up per few completions and no CPU otherwise.
//!
//! Where io_uring cannot be used (kernel before 5.1, seccomp filters) the same thread serves
//! the chunks with `pread`, one at a time; the reason is kept in
//! [`StreamReader::fallback_reason`] so the caller can say so once.
//!
//! An unprivileged user's memlock limit (8 MiB by default) usually refuses both the ring's
//! `mlock` and io_uring's buffer registration (which is charged to the same limit). Streaming
//! still works then: the ring stays unlocked, and io_uring reads into it with plain `READ`
//! (the kernel pins each read's pages itself) where registration fails, or `pread` where even
//! `READ` is missing (before 5.6). [`StreamReader::warning`] says once what that costs.
use std::collections::{HashMap, VecDeque};
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, types};

use super::StreamError;
use super::align::{OpenedFile, open_for_streaming};
use super::ring::{LoadedSlot, PoolMemory};

/// Default bytes per read submitted to the kernel.
///
/// Measured on the development VM's virtio disk with fio (io_uring, `O_DIRECT`): 512 KiB
/// reads 16 deep (8 MiB in flight) gave 2.9 GB/s where 4 MiB reads 4–16 deep gave 1.9–2.3 GB/s
/// and 256-deep queues 2.0 GB/s; NVMe drives also reach their peak with a few MiB in flight.
pub const DEFAULT_CHUNK: usize = 512 << 10;
/// Default number of chunk reads kept in flight.
pub const DEFAULT_IN_FLIGHT: usize = 16;

/// Which engine to read with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineChoice {
    /// io_uring with fixed buffers, with unregistered buffers where registration is refused,
    /// falling back to `pread` when io_uring is unavailable.
    Auto,
    /// Always `pread` (for tests and for comparing the engines).
    Pread,
}

/// How to open a [`StreamReader`].
#[derive(Clone, Debug)]
pub struct StreamOptions {
    /// Ring slots.
    pub n_slots: usize,
    /// Bytes per slot: at least the largest aligned range one request covers (see
    /// [`StreamReader::covering_len`]).
    pub slot_size: usize,
    /// Try `O_DIRECT` (bypassing the page cache).
    pub direct: bool,
    /// Engine.
    pub engine: EngineChoice,
    /// Bytes per kernel read.
    pub chunk_size: usize,
    /// Chunk reads in flight at most (queue depth).
    pub max_in_flight: usize,
}

impl StreamOptions {
    /// `n_slots` slots of `slot_size` bytes, `O_DIRECT`, io_uring, [`DEFAULT_CHUNK`] reads
    /// [`DEFAULT_IN_FLIGHT`] deep.
    pub fn new(n_slots: usize, slot_size: usize) -> StreamOptions {
        StreamOptions {
            n_slots,
            slot_size,
            direct: true,
            engine: EngineChoice::Auto,
            chunk_size: DEFAULT_CHUNK,
            max_in_flight: DEFAULT_IN_FLIGHT,
        }
    }
}

/// What the reader did since the stats were last taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Bytes the kernel delivered (the aligned covering ranges, not just the requested bytes),
    /// counted when their request is collected.
    pub bytes_read: u64,
    /// Requests completed.
    pub requests: u64,
    /// Wall time with at least one read in flight, as the I/O thread saw it.
    pub read_time: Duration,
    /// Time spent blocked in [`StreamReader::wait`] (the compute waiting for I/O).
    pub wait_time: Duration,
}

impl ReadStats {
    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &ReadStats) {
        self.bytes_read += other.bytes_read;
        self.requests += other.requests;
        self.read_time += other.read_time;
        self.wait_time += other.wait_time;
    }
}

/// A submitted request; redeem it with [`StreamReader::wait`]. A ticket that is never waited
/// on keeps its slot until the reader is dropped.
#[derive(Debug, PartialEq, Eq, Hash)]
#[must_use = "a ticket holds a ring slot until it is waited on"]
pub struct ReadTicket(u64);

/// A pointer into a slot, sent to the I/O thread with a request.
#[derive(Clone, Copy, Debug)]
struct SlotPtr(*mut u8);
// SAFETY: the I/O thread writes through the pointer only while the slot belongs to the
// in-flight request it came with; the reader creates no reference to that slot's bytes until
// the thread has reported the request done (see `ring` for the slot states).
unsafe impl Send for SlotPtr {}

/// A read request as the I/O thread gets it: the aligned file range `file_start..read_end`
/// into slot `slot` (registered buffer index) starting at `buf`.
struct ThreadRequest {
    ticket: u64,
    slot: usize,
    buf: SlotPtr,
    file_start: u64,
    read_end: u64,
    /// The end of the bytes the caller asked for: a read that stops at the end of the file
    /// before it is an error.
    needed_end: u64,
}

/// What the I/O thread reports.
enum ThreadEvent {
    /// Request `ticket` finished: `bytes` delivered, `error` if any chunk failed.
    Done {
        ticket: u64,
        bytes: u64,
        error: Option<io::Error>,
    },
    /// The engine failed: every request not reported done is lost (and its slot must never be
    /// reused, the kernel may still write into it).
    Fatal(io::Error),
}

/// Time with reads in flight, shared between the I/O thread (which knows) and
/// [`StreamReader::take_stats`].
#[derive(Default)]
struct BusyClock {
    total: Duration,
    since: Option<Instant>,
}

impl BusyClock {
    fn start(&mut self) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
        }
    }

    fn stop(&mut self) {
        if let Some(since) = self.since.take() {
            self.total += since.elapsed();
        }
    }

    /// The busy time so far (an open interval counted up to now) and a reset.
    fn take(&mut self) -> Duration {
        if let Some(since) = self.since {
            let now = Instant::now();
            self.total += now - since;
            self.since = Some(now);
        }
        std::mem::take(&mut self.total)
    }
}

fn lock(clock: &Mutex<BusyClock>) -> std::sync::MutexGuard<'_, BusyClock> {
    // A poisoned clock only means a panic elsewhere; its numbers are still plain data.
    clock.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request's state on the caller's side.
#[derive(Debug)]
struct Request {
    slot: usize,
    inner: Range<usize>,
    file_range: Range<u64>,
    /// `None` while reading; then the bytes delivered and the error, if any.
    done: Option<(u64, Option<io::Error>)>,
}

/// Reads byte ranges of one file into a ring of pinned, aligned, registered buffers.
pub struct StreamReader {
    // Field order is drop order, but `Drop` already stopped and joined the I/O thread (which
    // owns the ring and its registered buffers) before any field goes.
    commands: Option<mpsc::Sender<ThreadRequest>>,
    events: mpsc::Receiver<ThreadEvent>,
    thread: Option<JoinHandle<()>>,
    engine_name: &'static str,
    registered: bool,
    pool: Arc<PoolMemory>,
    file: OpenedFile,
    fallback: Option<String>,
    warning: Option<String>,
    requests: HashMap<u64, Request>,
    next_ticket: u64,
    fatal: Option<io::Error>,
    stats: ReadStats,
    busy: Arc<Mutex<BusyClock>>,
}

impl std::fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader")
            .field("direct", &self.file.direct)
            .field("align", &self.file.align)
            .field("engine", &self.engine_name)
            .field("registered", &self.registered)
            .field("pool", &self.pool)
            .finish()
    }
}

/// One kernel read: `len` bytes of the file at `file_offset` into `buf` (inside `slot`).
#[derive(Clone, Copy, Debug)]
struct Chunk {
    ticket: u64,
    slot: usize,
    buf: SlotPtr,
    file_offset: u64,
    len: usize,
}

/// A request's progress in the I/O thread.
struct Pending {
    chunks_left: usize,
    bytes: u64,
    needed_end: u64,
    error: Option<io::Error>,
}

enum ThreadEngine {
    /// io_uring; `fixed` when the slots are registered buffers (`READ_FIXED`), otherwise plain
    /// `READ` into the same memory.
    Uring {
        ring: Box<IoUring>,
        fixed: bool,
    },
    Pread,
}

/// The I/O thread's state. It owns the ring (and so the buffer registration); field order is
/// drop order, so the ring goes before the pool memory it points into.
struct IoThread {
    engine: ThreadEngine,
    _pool: Arc<PoolMemory>,
    file: std::fs::File,
    file_len: u64,
    chunk_size: usize,
    depth: usize,
    commands: mpsc::Receiver<ThreadRequest>,
    events: mpsc::Sender<ThreadEvent>,
    busy: Arc<Mutex<BusyClock>>,
    queued: VecDeque<Chunk>,
    in_flight: HashMap<u64, Chunk>,
    pending: HashMap<u64, Pending>,
    next_chunk: u64,
}

impl IoThread {
    fn run(mut self) {
        let mut open = true;
        loop {
            if self.queued.is_empty() && self.in_flight.is_empty() {
                if !open {
                    return;
                }
                // Idle: sleep until the next request (or the reader's drop).
                match self.commands.recv() {
                    Ok(r) => self.accept(r),
                    Err(_) => return,
                }
            }
            while open {
                match self.commands.try_recv() {
                    Ok(r) => self.accept(r),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => open = false,
                }
            }
            if !open {
                // The reader is gone: nobody wants the rest, only what is in flight must land.
                self.queued.clear();
            }
            if let Err(e) = self.step() {
                let _ = self.events.send(ThreadEvent::Fatal(e));
                return;
            }
        }
    }

    fn accept(&mut self, r: ThreadRequest) {
        let mut at = r.file_start;
        let mut n = 0;
        while at < r.read_end {
            let len = (r.read_end - at).min(self.chunk_size as u64) as usize;
            self.queued.push_back(Chunk {
                ticket: r.ticket,
                slot: r.slot,
                // SAFETY: `at - file_start < read_end - file_start <= slot_size` (checked by
                // `StreamReader::submit`), so the pointer stays inside the request's slot.
                buf: SlotPtr(unsafe { r.buf.0.add((at - r.file_start) as usize) }),
                file_offset: at,
                len,
            });
            n += 1;
            at += len as u64;
        }
        self.pending.insert(
            r.ticket,
            Pending {
                chunks_left: n,
                bytes: 0,
                needed_end: r.needed_end,
                error: None,
            },
        );
        if n == 0 {
            self.finish(r.ticket);
        }
    }

    /// Keeps the queue full and waits for (at least one) completion.
    fn step(&mut self) -> io::Result<()> {
        match &mut self.engine {
            ThreadEngine::Uring { ring, fixed } => {
                while self.in_flight.len() < self.depth {
                    let Some(chunk) = self.queued.pop_front() else {
                        break;
                    };
                    let id = self.next_chunk;
                    let fd = types::Fd(self.file.as_raw_fd());
                    let entry = if *fixed {
                        opcode::ReadFixed::new(fd, chunk.buf.0, chunk.len as u32, chunk.slot as u16)
                            .offset(chunk.file_offset)
                            .build()
                    } else {
                        opcode::Read::new(fd, chunk.buf.0, chunk.len as u32)
                            .offset(chunk.file_offset)
                            .build()
                    }
                    .user_data(id);
                    // SAFETY: the entry's buffer lies in slot `chunk.slot` (registered when
                    // `fixed`) and belongs to an in-flight request until this completion is
                    // reaped; the fd is this thread's own and outlives the ring's in-flight
                    // reads (the thread only returns once `in_flight` is empty, or on a fatal
                    // error, when the reader leaks the pool rather than free memory the kernel
                    // may still write).
                    if unsafe { ring.submission().push(&entry) }.is_err() {
                        self.queued.push_front(chunk);
                        break;
                    }
                    self.next_chunk += 1;
                    self.in_flight.insert(id, chunk);
                }
                if self.in_flight.is_empty() {
                    return Ok(());
                }
                lock(&self.busy).start();
                // Wake up once a quarter of the queue has landed: fewer wake-ups, and three
                // quarters stay in flight meanwhile.
                let want = (self.in_flight.len() / 4).max(1);
                match ring.submit_and_wait(want) {
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                        ) => {}
                    Err(e) => return Err(e),
                }
                let done: Vec<(u64, i32)> = ring
                    .completion()
                    .map(|cqe| (cqe.user_data(), cqe.result()))
                    .collect();
                for (id, res) in done {
                    let res = if res < 0 {
                        Err(io::Error::from_raw_os_error(-res))
                    } else {
                        Ok(res as usize)
                    };
                    if let Some(chunk) = self.in_flight.remove(&id) {
                        self.complete(chunk, res);
                    }
                }
                if self.in_flight.is_empty() {
                    lock(&self.busy).stop();
                }
            }
            ThreadEngine::Pread => {
                let Some(chunk) = self.queued.pop_front() else {
                    return Ok(());
                };
                lock(&self.busy).start();
                // SAFETY: the chunk lies inside the slot of an in-flight request (see
                // `accept`), which nothing else reads or writes until its completion is
                // reported.
                let buf = unsafe { std::slice::from_raw_parts_mut(chunk.buf.0, chunk.len) };
                let res = loop {
                    match self.file.read_at(buf, chunk.file_offset) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        other => break other,
                    }
                };
                self.complete(chunk, res);
                if self.queued.is_empty() {
                    lock(&self.busy).stop();
                }
            }
        }
        Ok(())
    }

    /// Accounts one chunk's completion: short reads are continued, errors kept for the
    /// request.
    fn complete(&mut self, chunk: Chunk, res: io::Result<usize>) {
        let Some(req) = self.pending.get_mut(&chunk.ticket) else {
            return;
        };
        req.chunks_left -= 1;
        match res {
            Ok(n) => {
                req.bytes += n as u64;
                if n < chunk.len {
                    let reached = chunk.file_offset + n as u64;
                    if n == 0 || reached >= self.file_len {
                        // End of file: fine when the requested bytes are all in.
                        if reached < req.needed_end && req.error.is_none() {
                            req.error = Some(io::Error::from(io::ErrorKind::UnexpectedEof));
                        }
                    } else {
                        // A short read before the end of the file: read the rest.
                        req.chunks_left += 1;
                        self.queued.push_front(Chunk {
                            // SAFETY: `n < chunk.len`, so this stays inside the chunk.
                            buf: SlotPtr(unsafe { chunk.buf.0.add(n) }),
                            file_offset: reached,
                            len: chunk.len - n,
                            ..chunk
                        });
                    }
                }
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) => {
                req.chunks_left += 1;
                self.queued.push_front(chunk);
            }
            Err(e) => {
                if req.error.is_none() {
                    req.error = Some(e);
                }
            }
        }
        if req.chunks_left == 0 {
            self.finish(chunk.ticket);
        }
    }

    fn finish(&mut self, ticket: u64) {
        if let Some(req) = self.pending.remove(&ticket) {
            // A closed channel means the reader is gone and wants nothing more.
            let _ = self.events.send(ThreadEvent::Done {
                ticket,
                bytes: req.bytes,
                error: req.error,
            });
        }
    }
}

impl StreamReader {
    /// Opens `path`, allocates, pins and registers the ring, and starts the I/O thread.
    pub fn open(path: &Path, options: &StreamOptions) -> Result<StreamReader, StreamError> {
        if options.chunk_size == 0 || options.max_in_flight == 0 {
            return Err(StreamError::BadRing(
                "chunk size and depth must be at least 1",
            ));
        }
        if options.n_slots > usize::from(u16::MAX) {
            return Err(StreamError::BadRing("at most 65535 slots"));
        }
        let file =
            open_for_streaming(path, options.direct).map_err(|source| StreamError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let align = file.align.block();
        let pool = PoolMemory::new(options.n_slots, options.slot_size, align)?;
        // Kernel reads must keep the alignment too; u32 is READ_FIXED's length field.
        let chunk_size = options
            .chunk_size
            .next_multiple_of(align)
            .min(u32::MAX as usize / align * align)
            .min(pool.slot_size());
        let depth = options.max_in_flight.min(4096);
        let (engine, fallback, unregistered) = match options.engine {
            EngineChoice::Pread => (ThreadEngine::Pread, Some("pread requested".into()), None),
            EngineChoice::Auto => match Self::uring_engine(&pool, depth) {
                Ok((ring, unregistered)) => (
                    ThreadEngine::Uring {
                        ring: Box::new(ring),
                        fixed: unregistered.is_none(),
                    },
                    None,
                    unregistered,
                ),
                Err(why) => (ThreadEngine::Pread, Some(why), None),
            },
        };
        let (engine_name, registered) = match engine {
            ThreadEngine::Uring { fixed, .. } => ("io_uring", fixed),
            ThreadEngine::Pread => ("pread", false),
        };
        let warning = ring_warning(&pool, unregistered.as_deref());
        let (command_tx, command_rx) = mpsc::channel();
        let (event_tx, event_rx) = mpsc::channel();
        let busy = Arc::new(Mutex::new(BusyClock::default()));
        let io = IoThread {
            engine,
            _pool: Arc::clone(&pool),
            file: file.file.try_clone().map_err(StreamError::Io)?,
            file_len: file.len,
            chunk_size,
            depth,
            commands: command_rx,
            events: event_tx,
            busy: Arc::clone(&busy),
            queued: VecDeque::new(),
            in_flight: HashMap::new(),
            pending: HashMap::new(),
            next_chunk: 0,
        };
        let thread = spawn_io_thread(io)?;
        Ok(StreamReader {
            commands: Some(command_tx),
            events: event_rx,
            thread: Some(thread),
            engine_name,
            registered,
            pool,
            file,
            fallback,
            warning,
            requests: HashMap::new(),
            next_ticket: 0,
            fatal: None,
            stats: ReadStats::default(),
            busy,
        })
    }

    /// An io_uring for the pool's slots, and why its buffers are not registered (`None` when
    /// they are, so reads use `READ_FIXED`; otherwise plain `READ`). `Err` (why) when io_uring
    /// cannot serve the reads at all and `pread` must.
    fn uring_engine(pool: &PoolMemory, depth: usize) -> Result<(IoUring, Option<String>), String> {
        let entries = depth.next_power_of_two().clamp(8, 4096) as u32;
        let ring = IoUring::new(entries).map_err(|e| format!("io_uring unavailable ({e})"))?;
        let mut probe = io_uring::Probe::new();
        // A kernel without IORING_REGISTER_PROBE (before 5.6) still has READ_FIXED (5.1), but
        // not READ (5.6): unregistered reads need the probe to say so.
        let probed = ring.submitter().register_probe(&mut probe).is_ok();
        let has_fixed = !probed || probe.is_supported(opcode::ReadFixed::CODE);
        let has_read = probed && probe.is_supported(opcode::Read::CODE);
        if !has_fixed && !has_read {
            return Err("io_uring lacks READ_FIXED and READ".into());
        }
        let registration = if has_fixed {
            let iovecs: Vec<libc::iovec> = (0..pool.n_slots())
                .map(|i| libc::iovec {
                    iov_base: pool.slot_ptr(i).cast(),
                    iov_len: pool.slot_size(),
                })
                .collect();
            // SAFETY: every iovec spans one slot of the pool's allocation, which stays alive
            // as long as the ring: the I/O thread that owns the ring also holds an `Arc` to the
            // pool, declared after the ring so it is dropped (unregistering the buffers) first.
            unsafe { ring.submitter().register_buffers(&iovecs) }
                .map_err(|e| format!("io_uring could not register the read ring's buffers ({e})"))
        } else {
            Err("io_uring lacks READ_FIXED".to_string())
        };
        match registration {
            Ok(()) => Ok((ring, None)),
            Err(why) if has_read => Ok((ring, Some(why))),
            Err(why) => Err(why),
        }
    }

    /// Whether reads bypass the page cache.
    pub fn is_direct(&self) -> bool {
        self.file.direct
    }

    /// The alignment reads use.
    pub fn alignment(&self) -> super::DirectAlignment {
        self.file.align
    }

    /// The file's size.
    pub fn file_len(&self) -> u64 {
        self.file.len
    }

    /// `"io_uring"` or `"pread"`.
    pub fn engine_name(&self) -> &'static str {
        self.engine_name
    }

    /// Why `pread` is used instead of io_uring (`None` with io_uring).
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// Whether the ring is locked in memory (`mlock`). It is not when the memlock limit
    /// refused it (see [`StreamReader::warning`]); streaming works either way.
    pub fn locked(&self) -> bool {
        self.pool.is_locked()
    }

    /// Whether io_uring reads into registered (fixed) buffers; `false` with `pread` and where
    /// registration was refused.
    pub fn registered_buffers(&self) -> bool {
        self.registered
    }

    /// What the reader had to give up to open, and what that costs, in one line for the caller
    /// to show the user once: the ring could not be locked (the memlock limit, as for every
    /// unprivileged user by default) or its buffers could not be registered with io_uring.
    /// `None` when the ring is locked and, with io_uring, registered (why `pread` is used
    /// instead is [`StreamReader::fallback_reason`]).
    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    /// Bytes per slot.
    pub fn slot_size(&self) -> usize {
        self.pool.slot_size()
    }

    /// Slots in the ring.
    pub fn n_slots(&self) -> usize {
        self.pool.n_slots()
    }

    /// Slots neither loaded nor being read.
    pub fn free_slots(&self) -> usize {
        self.pool.n_free()
    }

    /// Bytes of the aligned range that covers `range` (what a slot must hold for it).
    pub fn covering_len(&self, range: &Range<u64>) -> u64 {
        let c = covering(range, self.file.align.block() as u64);
        c.end - c.start
    }

    /// Takes the statistics gathered since the last call and resets them.
    pub fn take_stats(&mut self) -> ReadStats {
        let mut stats = std::mem::take(&mut self.stats);
        stats.read_time = lock(&self.busy).take();
        stats
    }

    fn engine_failed(&self) -> StreamError {
        match &self.fatal {
            Some(e) => StreamError::Io(io::Error::new(
                e.kind(),
                format!("the I/O engine failed: {e}"),
            )),
            None => StreamError::BadRing("the I/O thread stopped"),
        }
    }

    /// Starts reading `range` of the file into a free slot.
    pub fn submit(&mut self, range: Range<u64>) -> Result<ReadTicket, StreamError> {
        if range.start > range.end || range.end > self.file.len {
            return Err(StreamError::OutOfFile {
                range,
                file_len: self.file.len,
            });
        }
        if self.fatal.is_some() {
            return Err(self.engine_failed());
        }
        let align = self.file.align.block() as u64;
        let cover = covering(&range, align);
        let cover_len = cover.end - cover.start;
        if cover_len > self.pool.slot_size() as u64 {
            return Err(StreamError::TooLarge {
                bytes: cover_len,
                slot_size: self.pool.slot_size(),
            });
        }
        let slot = self.pool.check_out().ok_or(StreamError::NoFreeSlot)?;
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let request = ThreadRequest {
            ticket,
            slot,
            buf: SlotPtr(self.pool.slot_ptr(slot)),
            file_start: cover.start,
            // Reads past the file's last block would only return 0; stop at it.
            read_end: cover.end.min(self.file.len.next_multiple_of(align)),
            needed_end: range.end,
        };
        let sent = self
            .commands
            .as_ref()
            .is_some_and(|c| c.send(request).is_ok());
        if !sent {
            // The thread never saw the slot: it is still free.
            self.pool.check_in(slot);
            self.poll()?;
            return Err(self.engine_failed());
        }
        let inner_start = (range.start - cover.start) as usize;
        self.requests.insert(
            ticket,
            Request {
                slot,
                inner: inner_start..inner_start + (range.end - range.start) as usize,
                file_range: range,
                done: None,
            },
        );
        Ok(ReadTicket(ticket))
    }

    fn take_event(&mut self, event: ThreadEvent) {
        match event {
            ThreadEvent::Done {
                ticket,
                bytes,
                error,
            } => {
                self.stats.bytes_read += bytes;
                if let Some(req) = self.requests.get_mut(&ticket) {
                    req.done = Some((bytes, error));
                }
            }
            ThreadEvent::Fatal(e) => self.fatal = Some(e),
        }
    }

    /// Collects what completed, without blocking. (The I/O thread refills the queue by
    /// itself; polling only makes [`StreamReader::is_ready`] current.)
    pub fn poll(&mut self) -> Result<(), StreamError> {
        while let Ok(event) = self.events.try_recv() {
            self.take_event(event);
        }
        Ok(())
    }

    /// Whether the request of `ticket` has completed (after a [`StreamReader::poll`]).
    pub fn is_ready(&self, ticket: &ReadTicket) -> bool {
        self.requests
            .get(&ticket.0)
            .is_some_and(|r| r.done.is_some())
    }

    /// Blocks until the request of `ticket` is complete and returns its slot.
    pub fn wait(&mut self, ticket: ReadTicket) -> Result<LoadedSlot, StreamError> {
        let started = Instant::now();
        let mut blocked = false;
        let result = loop {
            let Some(req) = self.requests.get(&ticket.0) else {
                break Err(StreamError::BadRing("unknown ticket"));
            };
            if req.done.is_some() {
                let req = self.requests.remove(&ticket.0).expect("present");
                let (_, error) = req.done.expect("done");
                let slot = LoadedSlot::new(
                    Arc::clone(&self.pool),
                    req.slot,
                    req.inner,
                    req.file_range.clone(),
                );
                if let Some(source) = error {
                    drop(slot);
                    break Err(StreamError::Read {
                        range: req.file_range,
                        source,
                    });
                }
                self.stats.requests += 1;
                break Ok(slot);
            }
            if self.fatal.is_some() {
                // Its slot may still be written by the kernel: it is never handed out again.
                break Err(self.engine_failed());
            }
            blocked = true;
            match self.events.recv() {
                Ok(event) => self.take_event(event),
                Err(_) => break Err(self.engine_failed()),
            }
        };
        if blocked {
            self.stats.wait_time += started.elapsed();
        }
        result
    }
}

fn spawn_io_thread(io: IoThread) -> Result<JoinHandle<()>, StreamError> {
    std::thread::Builder::new()
        .name("airllama-io".into())
        .spawn(move || io.run())
        .map_err(StreamError::Io)
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        // Closing the channel tells the thread to drop the queued reads and return once every
        // read in flight has landed; only then may the ring and the pool go.
        self.commands.take();
        let clean = self.thread.take().is_some_and(|t| t.join().is_ok());
        while let Ok(event) = self.events.try_recv() {
            self.take_event(event);
        }
        if !clean || self.fatal.is_some() {
            // The engine failed with reads maybe still outstanding: their target memory must
            // never be reused, so the pool is leaked rather than freed under a pending write.
            std::mem::forget(Arc::clone(&self.pool));
        }
    }
}

/// The one warning a reader gives: what streaming with an unlocked ring and/or unregistered
/// buffers (`unregistered` = why registration failed) costs, and how to avoid it.
fn ring_warning(pool: &PoolMemory, unregistered: Option<&str>) -> Option<String> {
    match (pool.lock_failure(), unregistered) {
        (None, None) => None,
        (None, Some(why)) => Some(format!(
            "{why}; streaming with unregistered io_uring reads: the kernel pins each read's pages"
        )),
        (Some(f), unregistered) => {
            let limit = f
                .limit
                .map_or("unlimited".to_string(), |l| format!("{} KiB", l / 1024));
            let (how, cost) = if unregistered.is_some() {
                (
                    "unlocked buffers and unregistered io_uring reads",
                    "reads may page-fault, the ring may be swapped out and the kernel pins each \
                     read's pages",
                )
            } else {
                (
                    "unlocked buffers",
                    "reads may page-fault and the ring may be swapped out",
                )
            };
            Some(format!(
                "the read ring ({:.1} MiB) could not be locked in memory: RLIMIT_MEMLOCK is \
                 {limit} (mlock: {}); streaming with {how}: {cost}; raise `ulimit -l` to at \
                 least {} (KiB) to lock it",
                f.bytes as f64 / (1u64 << 20) as f64,
                f.error,
                f.bytes.div_ceil(1024),
            ))
        }
    }
}

/// The aligned range covering `range`.
fn covering(range: &Range<u64>, align: u64) -> Range<u64> {
    let start = range.start / align * align;
    let end = range.end.next_multiple_of(align);
    start..end.max(start)
}

/// Sequential read throughput of `path` through the same machinery the streamer uses:
/// `depth` reads of `block` bytes in flight (one slot each), for about `duration`, wrapping
/// around the file. Returns the bytes read and the time taken. With `direct`, the page cache
/// is bypassed, so this is the disk's `O_DIRECT` sequential bandwidth.
pub fn sequential_read(
    path: &Path,
    block: usize,
    depth: usize,
    duration: Duration,
    direct: bool,
) -> Result<(u64, Duration), StreamError> {
    let mut options = StreamOptions::new(depth, block);
    options.chunk_size = block;
    options.max_in_flight = depth;
    options.direct = direct;
    let mut reader = StreamReader::open(path, &options)?;
    let len = reader.file_len();
    let block = block as u64;
    if len < block {
        return Err(StreamError::BadRing("file smaller than one block"));
    }
    let mut next = 0u64;
    let mut queue = VecDeque::new();
    let started = Instant::now();
    let mut bytes = 0u64;
    loop {
        while reader.free_slots() > 0 {
            if next + block > len {
                next = 0;
            }
            queue.push_back(reader.submit(next..next + block)?);
            next += block;
        }
        let slot = reader.wait(queue.pop_front().expect("submitted"))?;
        bytes += slot.len() as u64;
        drop(slot);
        if started.elapsed() >= duration {
            break;
        }
    }
    let elapsed = started.elapsed();
    while let Some(t) = queue.pop_front() {
        drop(reader.wait(t)?);
    }
    Ok((bytes, elapsed))
}
