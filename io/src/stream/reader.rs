//! [`StreamReader`]: reads byte ranges of one file into the ring's slots, many chunks in flight.
//!
//! A request names a file byte range. The reader widens it to the aligned range that covers it,
//! takes a free slot, cuts the aligned range into chunks (`chunk_size` bytes, a few MiB) and
//! keeps up to `max_in_flight` chunks submitted to io_uring as `READ_FIXED` into the
//! registered slot. [`StreamReader::wait`] returns the slot as a [`LoadedSlot`] that derefs to
//! exactly the requested bytes.
//!
//! Where io_uring cannot be used (kernel before 5.1, seccomp filters, a refused buffer
//! registration) the same requests are served by one thread calling `pread`; the reason is
//! kept in [`StreamReader::fallback_reason`] so the caller can say so once.
use std::collections::{HashMap, VecDeque};
use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, types};

use super::StreamError;
use super::align::{OpenedFile, open_for_streaming};
use super::ring::{LoadedSlot, PoolMemory};

/// Default bytes per read submitted to the kernel.
pub const DEFAULT_CHUNK: usize = 4 << 20;
/// Default number of chunk reads kept in flight.
pub const DEFAULT_IN_FLIGHT: usize = 8;

/// Which engine to read with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineChoice {
    /// io_uring with fixed buffers, falling back to `pread` when unavailable.
    Auto,
    /// Always the `pread` thread (for tests and for comparing the engines).
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
    /// `n_slots` slots of `slot_size` bytes, `O_DIRECT`, io_uring, 4 MiB chunks, depth 8.
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
    /// Bytes the kernel delivered (the aligned covering ranges, not just the requested bytes).
    pub bytes_read: u64,
    /// Requests completed.
    pub requests: u64,
    /// Wall time with at least one read in flight. Completions are noticed when the reader is
    /// polled or waited on, so this is exact to the caller's polling granularity.
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

#[derive(Clone, Copy, Debug)]
struct Chunk {
    ticket: u64,
    slot: usize,
    buf_offset: usize,
    file_offset: u64,
    len: usize,
}

#[derive(Debug)]
struct Request {
    slot: usize,
    inner: Range<usize>,
    file_range: Range<u64>,
    pending: usize,
    error: Option<io::Error>,
}

/// The raw start of a slot, sent to the pread thread.
struct SendPtr(*mut u8);
// SAFETY: the pointer is only used by the pread thread while the slot belongs to an in-flight
// request, during which no other code touches that slot's bytes (see `ring`).
unsafe impl Send for SendPtr {}

struct Job {
    id: u64,
    buf: SendPtr,
    len: usize,
    offset: u64,
}

enum Engine {
    Uring(Box<IoUring>),
    Pread {
        jobs: Option<mpsc::Sender<Job>>,
        done: mpsc::Receiver<(u64, io::Result<usize>)>,
        thread: Option<JoinHandle<()>>,
    },
}

/// Reads byte ranges of one file into a ring of pinned, aligned, registered buffers.
pub struct StreamReader {
    // Field order is drop order: the engine (ring with its registered buffers, or the pread
    // thread) goes first, then the pool memory it pointed into, then the file.
    engine: Engine,
    pool: Arc<PoolMemory>,
    file: OpenedFile,
    fallback: Option<String>,
    chunk_size: usize,
    max_in_flight: usize,
    requests: HashMap<u64, Request>,
    queued: VecDeque<Chunk>,
    in_flight: HashMap<u64, Chunk>,
    next_ticket: u64,
    next_chunk: u64,
    stats: ReadStats,
    busy_since: Option<Instant>,
}

impl std::fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader")
            .field("direct", &self.file.direct)
            .field("align", &self.file.align)
            .field("engine", &self.engine_name())
            .field("pool", &self.pool)
            .finish()
    }
}

fn pread_thread(
    fd: std::fs::File,
    jobs: mpsc::Receiver<Job>,
    done: mpsc::Sender<(u64, io::Result<usize>)>,
) {
    use std::os::unix::fs::FileExt;
    for job in jobs {
        // SAFETY: the reader sent the start of `len` bytes inside a slot owned by an in-flight
        // request; nothing else reads or writes them until this job's completion is received.
        let buf = unsafe { std::slice::from_raw_parts_mut(job.buf.0, job.len) };
        let mut got = 0;
        let result = loop {
            if got == buf.len() {
                break Ok(got);
            }
            match fd.read_at(&mut buf[got..], job.offset + got as u64) {
                Ok(0) => break Ok(got),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if done.send((job.id, result)).is_err() {
            return;
        }
    }
}

impl StreamReader {
    /// Opens `path` and allocates, pins and registers the ring.
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
        let (engine, fallback) = match options.engine {
            EngineChoice::Pread => (Self::pread_engine(&file)?, Some("pread requested".into())),
            EngineChoice::Auto => match Self::uring_engine(&pool, options.max_in_flight) {
                Ok(ring) => (Engine::Uring(Box::new(ring)), None),
                Err(why) => (Self::pread_engine(&file)?, Some(why)),
            },
        };
        Ok(StreamReader {
            engine,
            pool,
            file,
            fallback,
            chunk_size,
            max_in_flight: options.max_in_flight,
            requests: HashMap::new(),
            queued: VecDeque::new(),
            in_flight: HashMap::new(),
            next_ticket: 0,
            next_chunk: 0,
            stats: ReadStats::default(),
            busy_since: None,
        })
    }

    fn uring_engine(pool: &PoolMemory, depth: usize) -> Result<IoUring, String> {
        let entries = depth.next_power_of_two().clamp(8, 4096) as u32;
        let ring = IoUring::new(entries).map_err(|e| format!("io_uring unavailable ({e})"))?;
        let mut probe = io_uring::Probe::new();
        // A kernel without IORING_REGISTER_PROBE (before 5.6) still has READ_FIXED (5.1).
        if ring.submitter().register_probe(&mut probe).is_ok()
            && !probe.is_supported(opcode::ReadFixed::CODE)
        {
            return Err("io_uring lacks READ_FIXED".into());
        }
        let iovecs: Vec<libc::iovec> = (0..pool.n_slots())
            .map(|i| libc::iovec {
                iov_base: pool.slot_ptr(i).cast(),
                iov_len: pool.slot_size(),
            })
            .collect();
        // SAFETY: every iovec spans one slot of the pool's allocation, which the reader keeps
        // alive: it holds an `Arc` to the pool, and the ring is dropped (unregistering the
        // buffers) before that `Arc`, by `StreamReader`'s field order.
        unsafe { ring.submitter().register_buffers(&iovecs) }
            .map_err(|e| format!("cannot register the ring's buffers with io_uring ({e})"))?;
        Ok(ring)
    }

    fn pread_engine(file: &OpenedFile) -> Result<Engine, StreamError> {
        let fd = file.file.try_clone().map_err(StreamError::Io)?;
        let (job_tx, job_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("airllama-pread".into())
            .spawn(move || pread_thread(fd, job_rx, done_tx))
            .map_err(StreamError::Io)?;
        Ok(Engine::Pread {
            jobs: Some(job_tx),
            done: done_rx,
            thread: Some(thread),
        })
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
        match self.engine {
            Engine::Uring(_) => "io_uring",
            Engine::Pread { .. } => "pread",
        }
    }

    /// Why the pread thread is used instead of io_uring (`None` with io_uring).
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback.as_deref()
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
        covering(range, self.file.align.block() as u64).end
            - covering(range, self.file.align.block() as u64).start
    }

    /// Takes the statistics gathered since the last call and resets them.
    pub fn take_stats(&mut self) -> ReadStats {
        if let Some(since) = self.busy_since {
            let now = Instant::now();
            self.stats.read_time += now - since;
            self.busy_since = Some(now);
        }
        std::mem::take(&mut self.stats)
    }

    /// Starts reading `range` of the file into a free slot.
    pub fn submit(&mut self, range: Range<u64>) -> Result<ReadTicket, StreamError> {
        if range.start > range.end || range.end > self.file.len {
            return Err(StreamError::OutOfFile {
                range,
                file_len: self.file.len,
            });
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
        // Reads past the file's last block would only return 0; stop at it.
        let read_end = cover.end.min(self.file.len.next_multiple_of(align));
        let mut pending = 0;
        let mut at = cover.start;
        while at < read_end {
            let len = (read_end - at).min(self.chunk_size as u64) as usize;
            self.queued.push_back(Chunk {
                ticket,
                slot,
                buf_offset: (at - cover.start) as usize,
                file_offset: at,
                len,
            });
            pending += 1;
            at += len as u64;
        }
        let inner_start = (range.start - cover.start) as usize;
        self.requests.insert(
            ticket,
            Request {
                slot,
                inner: inner_start..inner_start + (range.end - range.start) as usize,
                file_range: range,
                pending,
                error: None,
            },
        );
        self.pump()?;
        Ok(ReadTicket(ticket))
    }

    /// Reaps whatever completed, without blocking, and refills the queue.
    pub fn poll(&mut self) -> Result<(), StreamError> {
        while let Some((id, res)) = self.reap(false)? {
            self.complete(id, res);
        }
        self.pump()
    }

    /// Whether the request of `ticket` has completed (after a [`StreamReader::poll`]).
    pub fn is_ready(&self, ticket: &ReadTicket) -> bool {
        self.requests.get(&ticket.0).is_some_and(|r| r.pending == 0)
    }

    /// Blocks until the request of `ticket` is complete and returns its slot.
    pub fn wait(&mut self, ticket: ReadTicket) -> Result<LoadedSlot, StreamError> {
        let started = Instant::now();
        let mut blocked = false;
        let result = loop {
            let Some(req) = self.requests.get(&ticket.0) else {
                break Err(StreamError::BadRing("unknown ticket"));
            };
            if req.pending == 0 {
                let req = self.requests.remove(&ticket.0).expect("present");
                let slot = LoadedSlot::new(
                    Arc::clone(&self.pool),
                    req.slot,
                    req.inner,
                    req.file_range.clone(),
                );
                if let Some(source) = req.error {
                    drop(slot);
                    break Err(StreamError::Read {
                        range: req.file_range,
                        source,
                    });
                }
                self.stats.requests += 1;
                break Ok(slot);
            }
            blocked = true;
            match self.reap(true)? {
                Some((id, res)) => self.complete(id, res),
                None => {
                    break Err(StreamError::BadRing(
                        "request pending with nothing in flight",
                    ));
                }
            }
            self.pump()?;
        };
        if blocked {
            self.stats.wait_time += started.elapsed();
        }
        result
    }

    /// Pushes queued chunks to the engine while the depth allows, then submits.
    fn pump(&mut self) -> Result<(), StreamError> {
        let mut pushed = false;
        while self.in_flight.len() < self.max_in_flight {
            let Some(chunk) = self.queued.pop_front() else {
                break;
            };
            let id = self.next_chunk;
            self.next_chunk += 1;
            // SAFETY: `buf_offset + len` lies inside the chunk's slot (the covering range fits
            // the slot, checked in `submit`), so the pointer stays in the pool's allocation. For
            // both engines the slot belongs to an in-flight request until every chunk's
            // completion is reaped, and the pool memory outlives the engine.
            let buf = unsafe { self.pool.slot_ptr(chunk.slot).add(chunk.buf_offset) };
            match &mut self.engine {
                Engine::Uring(ring) => {
                    use std::os::fd::AsRawFd;
                    let entry = opcode::ReadFixed::new(
                        types::Fd(self.file.file.as_raw_fd()),
                        buf,
                        chunk.len as u32,
                        chunk.slot as u16,
                    )
                    .offset(chunk.file_offset)
                    .build()
                    .user_data(id);
                    // SAFETY: the entry's buffer is registered slot `chunk.slot` (index and
                    // range checked above) and stays valid and untouched until its completion
                    // is reaped; the fd outlives the ring (both owned by `self`, the ring is
                    // drained in `Drop` first).
                    let full = unsafe { ring.submission().push(&entry).is_err() };
                    if full {
                        ring.submit().map_err(StreamError::Io)?;
                        self.queued.push_front(chunk);
                        continue;
                    }
                }
                Engine::Pread { jobs, .. } => {
                    let sender = jobs.as_ref().ok_or(StreamError::BadRing("reader closed"))?;
                    sender
                        .send(Job {
                            id,
                            buf: SendPtr(buf),
                            len: chunk.len,
                            offset: chunk.file_offset,
                        })
                        .map_err(|_| StreamError::BadRing("the pread thread stopped"))?;
                }
            }
            if self.in_flight.is_empty() && self.busy_since.is_none() {
                self.busy_since = Some(Instant::now());
            }
            self.in_flight.insert(id, chunk);
            pushed = true;
        }
        if pushed && let Engine::Uring(ring) = &mut self.engine {
            ring.submit().map_err(StreamError::Io)?;
        }
        Ok(())
    }

    /// One completion: blocking waits for it when something is in flight.
    fn reap(&mut self, block: bool) -> Result<Option<(u64, io::Result<usize>)>, StreamError> {
        if self.in_flight.is_empty() {
            return Ok(None);
        }
        match &mut self.engine {
            Engine::Uring(ring) => loop {
                if let Some(cqe) = ring.completion().next() {
                    let res = cqe.result();
                    let res = if res < 0 {
                        Err(io::Error::from_raw_os_error(-res))
                    } else {
                        Ok(res as usize)
                    };
                    return Ok(Some((cqe.user_data(), res)));
                }
                if !block {
                    return Ok(None);
                }
                match ring.submit_and_wait(1) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                    Err(e) => return Err(StreamError::Io(e)),
                }
            },
            Engine::Pread { done, .. } => {
                let got = if block {
                    done.recv().ok()
                } else {
                    done.try_recv().ok()
                };
                match got {
                    Some(c) => Ok(Some(c)),
                    None if block => Err(StreamError::BadRing("the pread thread stopped")),
                    None => Ok(None),
                }
            }
        }
    }

    /// Accounts one chunk completion.
    fn complete(&mut self, id: u64, res: io::Result<usize>) {
        let Some(chunk) = self.in_flight.remove(&id) else {
            return;
        };
        if self.in_flight.is_empty()
            && let Some(since) = self.busy_since.take()
        {
            self.stats.read_time += since.elapsed();
        }
        let Some(req) = self.requests.get_mut(&chunk.ticket) else {
            return;
        };
        req.pending -= 1;
        match res {
            Ok(n) => {
                self.stats.bytes_read += n as u64;
                if n < chunk.len {
                    let reached = chunk.file_offset + n as u64;
                    if n == 0 || reached >= self.file.len {
                        // End of file: fine when the requested bytes are all in.
                        if reached < req.file_range.end && req.error.is_none() {
                            req.error = Some(io::Error::from(io::ErrorKind::UnexpectedEof));
                        }
                    } else {
                        // A short read before the end of the file: read the rest.
                        req.pending += 1;
                        self.queued.push_front(Chunk {
                            buf_offset: chunk.buf_offset + n,
                            file_offset: reached,
                            len: chunk.len - n,
                            ..chunk
                        });
                    }
                }
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) => {
                req.pending += 1;
                self.queued.push_front(chunk);
            }
            Err(e) => {
                if req.error.is_none() {
                    req.error = Some(e);
                }
            }
        }
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        // Every read in flight must finish before the ring (and maybe the pool) goes away: the
        // kernel or the pread thread is still writing into those slots.
        self.queued.clear();
        while !self.in_flight.is_empty() {
            match self.reap(true) {
                Ok(Some((id, _))) => {
                    self.in_flight.remove(&id);
                }
                _ => break,
            }
        }
        if !self.in_flight.is_empty() {
            // The engine failed with reads still outstanding: their target memory must never be
            // reused, so the pool is leaked rather than freed under a pending write.
            std::mem::forget(Arc::clone(&self.pool));
        }
        if let Engine::Pread { jobs, thread, .. } = &mut self.engine {
            jobs.take();
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
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
