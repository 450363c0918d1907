//! Blocking TCP transport for the dllama protocol, mirroring dllama's `nn-network.cpp`:
//!
//! * every socket gets `TCP_NODELAY` and (Linux) `TCP_QUICKACK`, like `setNoDelay` /
//!   `setQuickAck`; the listener reuses its address (`SO_REUSEADDR`, set by std on Unix);
//! * every `send` carries at most 4096 bytes (dllama's `MAX_CHUNK_SIZE`);
//! * "turbo" mode switches all sockets to non-blocking and spins on `EAGAIN` instead of
//!   sleeping in the kernel ([`Network::set_turbo`]; [`ControlReader`] switches a worker on
//!   after a control packet and off after ~1 s of process CPU time without one, as
//!   `runWorkerApp` does);
//! * a worker accepts the root, reads the handshake, ACKs, waits for the root-ready ACK, then
//!   connects to the workers listed after itself and accepts those listed before, in list order
//!   (`NnNetwork::serve`).
//!
//! One difference on purpose: dllama's sync writes its slice to every connection and only then
//! reads, which deadlocks once slices outgrow the socket buffers of both ends. [`Network::exchange`]
//! writes and reads in the same loop (non-blocking calls, `poll` when nothing moves outside
//! turbo mode), so the bytes on each connection are the same and no size can deadlock.
//!
//! A worker, as `runWorkerApp` (compute left out):
//!
//! ```no_run
//! use airllama_net::SyncPlan;
//! use airllama_net::transport::{ControlReader, Listener, NetError};
//!
//! fn serve() -> Result<(), NetError> {
//!     let listener = Listener::bind("0.0.0.0", 9999)?;
//!     loop {
//!         let mut session = listener.accept_root()?;
//!         let net = session.read_net_config()?;
//!         let node = session.read_node_config(&net)?;
//!         let plan = SyncPlan::new(&net, &node).expect("checked when the node config decoded");
//!         while let Some((_header, target)) = session.next_weight(&node)? {
//!             let mut weight = vec![0u8; target.n_bytes as usize]; // or the op's own memory
//!             session.read_weight_data(&mut weight)?;
//!         }
//!         let mut pipes: Vec<Vec<u8>> =
//!             net.pipes.iter().map(|p| vec![0; p.size.n_bytes() as usize]).collect();
//!         let mut control = ControlReader::new(true);
//!         loop {
//!             let packet = control.next(&mut session.network, &net, &node)?;
//!             if packet.is_stop() {
//!                 break;
//!             }
//!             for sync in plan.syncs() {
//!                 // ... run the ops of segment `sync.segment` first ...
//!                 for step in plan.steps_of(*sync, packet.batch_size) {
//!                     session.network.sync_step(&step, &mut pipes[sync.pipe_index as usize])?;
//!                 }
//!             }
//!         }
//!     }
//! }
//! ```

use std::io::{self, Read, Write};
use std::net::{
    Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, ToSocketAddrs,
};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use crate::codec::ACK;
use crate::config::{NetConfig, NodeConfig, WeightHeader, WeightTarget};
use crate::error::DecodeError;
use crate::limits::MAX_CONFIG_MESSAGE_BYTES;
use crate::messages::{ControlPacket, Handshake, PeerAddress, WeightMessage};
use crate::plan::{SyncStep, connection_node};

/// dllama's `MAX_CHUNK_SIZE`: the most bytes one `send` call carries.
pub const MAX_CHUNK_SIZE: usize = 4096;

/// How many `EAGAIN`s a worker tolerates, before any byte of a control packet arrived, before
/// it checks its idle clock (dllama's `maxAttempts` in `tryReadControlPacket`).
pub const CONTROL_READ_ATTEMPTS: u64 = 10_000;

/// Process CPU time a worker in turbo mode may spin without a control packet before it goes
/// back to blocking sockets (dllama: `clock() - startTime > CLOCKS_PER_SEC`).
pub const TURBO_IDLE_CPU_TIME: Duration = Duration::from_secs(1);

/// Which end of a connection an error concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Socket index on this node (0 = root on a worker).
    pub connection: u32,
    /// dllama node index of the other end.
    pub node: u32,
    /// Its address, once connected: errors name it so an operator knows which machine
    /// (dllama's protocol is IPv4 only).
    pub addr: Option<SocketAddrV4>,
}

impl Peer {
    fn new(connection: u32, node: u32) -> Peer {
        Peer {
            connection,
            node,
            addr: None,
        }
    }
}

impl core::fmt::Display for Peer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.addr {
            Some(addr) => write!(
                f,
                "node {} at {addr} (connection {})",
                self.node, self.connection
            ),
            None => write!(f, "node {} (connection {})", self.node, self.connection),
        }
    }
}

/// Who a timed-out exchange blames, after [`culprit`]'s grace.
enum Culprit {
    /// Bytes can move again after all: the exchange goes on.
    Moving,
    /// The peer the time-out names.
    Peer(Peer),
}

/// The longest a timed-out exchange that waited on several peers watches them before it names
/// one (the time-out itself, if shorter).
const BLAME_GRACE: Duration = Duration::from_secs(2);

/// When an exchange times out while several peers owe it bytes, the first in order is not
/// always the stalled one: in a mesh, a live worker that waits on a stalled peer owes the root
/// its own bytes too. Such a worker gives up on the session when its own `--net-timeout` runs
/// out, and closes its connections; the stalled peer does not. So, for up to [`BLAME_GRACE`]
/// (or `limit`), watch the owing connections (`fds`, one per `owing` peer): one that hangs up
/// is not the culprit, and once all but one have, the last is named. Bytes becoming
/// available mean the exchange can go on. Without hang-ups the first owing peer is named, as
/// before; a single owing peer is named at once.
fn culprit(owing: &[Peer], fds: &mut [libc::pollfd], limit: Option<Duration>) -> Culprit {
    let first = owing.first().copied().unwrap_or(Peer::new(0, 0));
    if owing.len() < 2 || owing.len() != fds.len() {
        return Culprit::Peer(first);
    }
    let grace = limit.map_or(BLAME_GRACE, |l| l.min(BLAME_GRACE));
    let until = std::time::Instant::now() + grace;
    let mut hung_up = vec![false; fds.len()];
    loop {
        let alive: Vec<Peer> = owing
            .iter()
            .zip(&hung_up)
            .filter(|(_, gone)| !**gone)
            .map(|(peer, _)| *peer)
            .collect();
        let named = Culprit::Peer(alive.first().copied().unwrap_or(first));
        let left = until.saturating_duration_since(std::time::Instant::now());
        if alive.len() <= 1 || left.is_zero() {
            return named;
        }
        for (fd, gone) in fds.iter_mut().zip(&hung_up) {
            if *gone {
                // poll ignores a negative descriptor.
                fd.fd = -1;
            }
            fd.revents = 0;
        }
        let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: `fds` is a live, exclusively borrowed array of `fds.len()` pollfds.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if rc < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return named;
        }
        for (fd, gone) in fds.iter().zip(hung_up.iter_mut()) {
            if *gone || fd.revents == 0 {
                continue;
            }
            if fd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                *gone = true;
            } else if fd.revents & libc::POLLIN != 0 {
                let mut byte = 0u8;
                // SAFETY: one writable byte at `byte`; MSG_PEEK leaves it in the socket.
                let peeked = unsafe {
                    libc::recv(
                        fd.fd,
                        (&raw mut byte).cast(),
                        1,
                        libc::MSG_PEEK | libc::MSG_DONTWAIT,
                    )
                };
                match peeked {
                    0 => *gone = true,
                    k if k > 0 => return Culprit::Moving,
                    _ => {}
                }
            } else if fd.revents & libc::POLLOUT != 0 {
                return Culprit::Moving;
            }
        }
    }
}

/// How long a node spins on a non-blocking socket that has nothing for it (turbo mode) before
/// it sleeps in `poll` instead: a forward's usual gaps stay spins, a stalled peer costs no CPU.
pub const SPIN_BEFORE_SLEEP: Duration = Duration::from_millis(2);

/// Waiting for a peer that owes bytes: spin briefly in turbo mode, then sleep in `poll`, and
/// give up once `limit` has passed without progress (`--net-timeout`).
struct Stall {
    since: std::time::Instant,
    limit: Option<Duration>,
    turn: u64,
    /// Spin before sleeping (turbo mode).
    spin: bool,
}

impl Stall {
    fn new(limit: Option<Duration>, spin: bool) -> Stall {
        Stall {
            since: std::time::Instant::now(),
            limit,
            turn: 0,
            spin,
        }
    }

    /// Bytes moved: the clock starts again.
    fn progressed(&mut self) {
        self.since = std::time::Instant::now();
        self.turn = 0;
    }

    /// Waits after a would-block until `fds` may be ready. `kernel_waited` says the call was
    /// a blocking socket's, whose would-block means its own time-out (the limit) ran out.
    /// `Ok(false)` = the limit passed with no progress.
    fn wait(&mut self, kernel_waited: bool, fds: &mut [libc::pollfd]) -> io::Result<bool> {
        let waited = self.since.elapsed();
        if kernel_waited {
            return Ok(self.limit.is_none());
        }
        if self.spin && waited < SPIN_BEFORE_SLEEP {
            spin_wait(self.turn);
            self.turn += 1;
            return Ok(true);
        }
        let ms = match self.limit {
            None => -1,
            Some(limit) => {
                let left = limit.saturating_sub(waited);
                if left.is_zero() {
                    return Ok(false);
                }
                libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX)
            }
        };
        loop {
            // SAFETY: `fds` is a live, exclusively borrowed array of `fds.len()` pollfds.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            if rc >= 0 {
                // On a time-out the caller retries once and comes back here with no time left.
                return Ok(true);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn waited(&self) -> Duration {
        self.since.elapsed()
    }
}

/// Transport errors, each naming the operation and, once connected, the peer.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A socket call failed on an established connection.
    #[error("{context} with {peer}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The other end.
        peer: Peer,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The other end owed bytes and sent none for the whole `--net-timeout`.
    #[error("{peer} sent nothing for {} s during {context} (--net-timeout)", waited.as_secs())]
    TimedOut {
        /// What was being done.
        context: &'static str,
        /// The silent end.
        peer: Peer,
        /// How long this node waited.
        waited: Duration,
    },
    /// The other end closed the connection.
    #[error("{peer} closed the connection during {context}")]
    Closed {
        /// What was being done.
        context: &'static str,
        /// The other end.
        peer: Peer,
    },
    /// Binding, accepting or connecting failed.
    #[error("{context} {addr}: {source}")]
    Setup {
        /// What was being done.
        context: &'static str,
        /// The address involved.
        addr: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The peer sent bytes that do not decode or contradict the session.
    #[error("from {peer}: {source}")]
    Decode {
        /// The other end.
        peer: Peer,
        /// Why.
        #[source]
        source: DecodeError,
    },
    /// A connection was refused before any byte was read from it.
    #[error("connection from {addr} refused: {why}")]
    Refused {
        /// Who connected.
        addr: SocketAddr,
        /// Why.
        why: &'static str,
    },
    /// The root named a peer worker this worker may not contact (`--allow-root`).
    #[error("{root} named the peer worker {peer}, which is outside --allow-root; session refused")]
    PeerNotAllowed {
        /// The root that sent the handshake.
        root: Peer,
        /// The named peer.
        peer: SocketAddr,
    },
    /// Waiting for the sync sockets failed.
    #[error("poll on the sync sockets: {source}")]
    Poll {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A caller-supplied buffer or index does not fit the plan (a bug in the caller).
    #[error("{context}")]
    Usage {
        /// What was wrong.
        context: &'static str,
    },
}

type Result<T> = core::result::Result<T, NetError>;

fn setup_error(
    context: &'static str,
    addr: impl core::fmt::Display,
    source: io::Error,
) -> NetError {
    NetError::Setup {
        context,
        addr: addr.to_string(),
        source,
    }
}

/// Sets `TCP_NODELAY` and, on Linux, `TCP_QUICKACK` (dllama's `setNoDelay` + `setQuickAck`).
fn configure(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    set_quick_ack(stream.as_raw_fd())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_quick_ack(fd: RawFd) -> io::Result<()> {
    let value: libc::c_int = 1;
    // SAFETY: `fd` is an open socket owned by the caller for the duration of the call; the
    // option value points to a live c_int and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&value as *const libc::c_int).cast(),
            core::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_quick_ack(_fd: RawFd) -> io::Result<()> {
    // dllama only sets it where TCP_QUICKACK exists.
    Ok(())
}

/// One `send` of at most [`MAX_CHUNK_SIZE`] bytes that never blocks; `Ok(None)` = would block.
fn send_nonblocking(fd: RawFd, data: &[u8]) -> io::Result<Option<usize>> {
    let len = data.len().min(MAX_CHUNK_SIZE);
    loop {
        // SAFETY: `data` is a live slice of at least `len` bytes for the duration of the call and
        // `fd` is an open socket owned by the Network.
        let n = unsafe {
            libc::send(
                fd,
                data.as_ptr().cast(),
                len,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// One `recv` that never blocks; `Ok(None)` = would block, `Ok(Some(0))` = closed.
fn recv_nonblocking(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: `buf` is a live, exclusively borrowed slice of `buf.len()` writable bytes and
        // `fd` is an open socket owned by the Network.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// Waits up to `timeout` for `fd` to become readable (or hung up); false when the time ran out.
fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis().max(u128::from(!left.is_zero())))
            .unwrap_or(libc::c_int::MAX);
        // SAFETY: `pfd` is one live, exclusively borrowed pollfd struct.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc > 0 {
            return Ok(true);
        }
        if rc == 0 {
            if left.is_zero() {
                return Ok(false);
            }
            continue;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One turn of a turbo-mode busy wait, `turn` counting from 0. dllama retries at once; we
/// also give the CPU away (`sched_yield`) every 64th turn, which costs nothing when no other
/// thread wants the core and keeps two spinning peers on an oversubscribed machine from
/// starving each other, while the retry count of a control-packet read still means about what
/// it means in dllama.
fn spin_wait(turn: u64) {
    if turn % 64 == 63 {
        std::thread::yield_now();
    } else {
        core::hint::spin_loop();
    }
}

/// Process CPU time (what C's `clock()` measures, which dllama's turbo timeout uses).
pub fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec the call writes into.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// One connection: the stream, bytes read ahead while decoding a message, and byte counters.
#[derive(Debug)]
struct Connection {
    stream: TcpStream,
    peer: Peer,
    /// The socket is non-blocking (turbo mode).
    nonblocking: bool,
    /// `--net-timeout`: the longest this node waits for bytes the peer owes.
    timeout: Option<Duration>,
    /// Bytes received but not yet consumed (only ever filled while decoding a config
    /// message; every read drains it first).
    ahead: Vec<u8>,
    ahead_start: usize,
    sent: u64,
    received: u64,
}

impl Connection {
    fn new(stream: TcpStream, mut peer: Peer) -> Result<Connection> {
        peer.addr = match stream.peer_addr() {
            Ok(SocketAddr::V4(a)) => Some(a),
            Ok(SocketAddr::V6(a)) => a
                .ip()
                .to_ipv4_mapped()
                .map(|ip| SocketAddrV4::new(ip, a.port())),
            Err(_) => None,
        };
        configure(&stream).map_err(|source| NetError::Io {
            context: "configuring socket",
            peer,
            source,
        })?;
        Ok(Connection {
            stream,
            peer,
            nonblocking: false,
            timeout: None,
            ahead: Vec::new(),
            ahead_start: 0,
            sent: 0,
            received: 0,
        })
    }

    /// Sets `--net-timeout`: a blocking socket's own send and receive time-outs, so a read or
    /// write that gets nothing for that long returns (and the caller reports it).
    fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        self.timeout = timeout.filter(|t| !t.is_zero());
        self.stream
            .set_read_timeout(self.timeout)
            .and_then(|()| self.stream.set_write_timeout(self.timeout))
            .map_err(|e| self.io("setting the socket time-outs", e))
    }

    fn timed_out(&self, context: &'static str, stall: &Stall) -> NetError {
        NetError::TimedOut {
            context,
            peer: self.peer,
            waited: stall.waited(),
        }
    }

    /// Waits after a would-block for the socket to become ready for `events`; an error once
    /// the peer has been silent for the whole time-out.
    fn stall_wait(&self, stall: &mut Stall, events: i16, context: &'static str) -> Result<()> {
        let mut fds = [libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events,
            revents: 0,
        }];
        match stall.wait(!self.nonblocking, &mut fds) {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.timed_out(context, stall)),
            Err(source) => Err(NetError::Poll { source }),
        }
    }

    fn io(&self, context: &'static str, source: io::Error) -> NetError {
        NetError::Io {
            context,
            peer: self.peer,
            source,
        }
    }

    /// Copies read-ahead bytes into `dst`; returns how many.
    fn take_ahead(&mut self, dst: &mut [u8]) -> usize {
        let avail = self.ahead.get(self.ahead_start..).unwrap_or(&[]);
        let n = avail.len().min(dst.len());
        if let (Some(d), Some(s)) = (dst.get_mut(..n), avail.get(..n)) {
            d.copy_from_slice(s);
        }
        self.ahead_start += n;
        if self.ahead_start >= self.ahead.len() {
            self.ahead.clear();
            self.ahead_start = 0;
        }
        n
    }

    /// Applies one non-blocking send or receive to the position `pos` in its buffer: true when
    /// bytes moved, false on would-block; zero bytes means the peer closed.
    fn advance(
        &self,
        moved: io::Result<Option<usize>>,
        pos: &mut usize,
        context: &'static str,
    ) -> Result<bool> {
        match moved {
            Ok(Some(0)) => Err(NetError::Closed {
                context,
                peer: self.peer,
            }),
            Ok(Some(k)) => {
                *pos += k;
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(self.io(context, e)),
        }
    }

    /// One read of whatever is available (blocking unless the socket is non-blocking).
    fn read_some(&mut self, buf: &mut [u8], context: &'static str) -> Result<Option<usize>> {
        let n = self.take_ahead(buf);
        if n > 0 {
            return Ok(Some(n));
        }
        loop {
            match self.stream.read(buf) {
                Ok(0) if !buf.is_empty() => {
                    return Err(NetError::Closed {
                        context,
                        peer: self.peer,
                    });
                }
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(self.io(context, e)),
            }
        }
    }

    /// Reads exactly `buf.len()` bytes, waiting at most until `deadline` (a blocking socket
    /// that sleeps in `poll`); false when the time ran out before they all arrived.
    fn read_exact_before(
        &mut self,
        buf: &mut [u8],
        deadline: std::time::Instant,
        context: &'static str,
    ) -> Result<bool> {
        let mut done = 0;
        while let Some(rest) = buf.get_mut(done..) {
            if rest.is_empty() {
                break;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let ready = self.ahead_start < self.ahead.len()
                || wait_readable(self.stream.as_raw_fd(), left).map_err(|e| self.io(context, e))?;
            if !ready {
                return Ok(false);
            }
            self.stream
                .set_nonblocking(true)
                .map_err(|e| self.io(context, e))?;
            let got = self.read_some(rest, context);
            self.stream
                .set_nonblocking(false)
                .map_err(|e| self.io(context, e))?;
            done += got?.unwrap_or(0);
        }
        self.received += buf.len() as u64;
        Ok(true)
    }

    /// dllama's `tryReadSocket`: reads all of `buf`; with `max_attempts > 0` gives up (false)
    /// after that many would-blocks as long as no byte has arrived.
    fn try_read_exact(
        &mut self,
        buf: &mut [u8],
        mut max_attempts: u64,
        context: &'static str,
    ) -> Result<bool> {
        let mut done = 0;
        let mut stall = Stall::new(self.timeout, self.nonblocking);
        while let Some(rest) = buf.get_mut(done..) {
            if rest.is_empty() {
                break;
            }
            match self.read_some(rest, context)? {
                Some(n) => {
                    done += n;
                    stall.progressed();
                }
                None if done == 0 && max_attempts > 0 => {
                    // Waiting for a message to begin (a worker between forwards) is idleness,
                    // not a stall: dllama's attempt count, never the time-out.
                    max_attempts -= 1;
                    if max_attempts == 0 {
                        return Ok(false);
                    }
                    if self.nonblocking {
                        spin_wait(stall.turn);
                        stall.turn += 1;
                    }
                }
                None => self.stall_wait(&mut stall, libc::POLLIN, context)?,
            }
        }
        self.received += buf.len() as u64;
        Ok(true)
    }

    /// dllama's `NnNetwork::write`: 4096-byte chunks, spinning on would-block in turbo mode.
    fn write_chunks(&mut self, data: &[u8], context: &'static str) -> Result<()> {
        let mut stall = Stall::new(self.timeout, self.nonblocking);
        for chunk in data.chunks(MAX_CHUNK_SIZE) {
            let mut done = 0;
            while let Some(rest) = chunk.get(done..) {
                if rest.is_empty() {
                    break;
                }
                match self.stream.write(rest) {
                    Ok(0) => {
                        return Err(NetError::Closed {
                            context,
                            peer: self.peer,
                        });
                    }
                    Ok(n) => {
                        done += n;
                        // A blocking send returns short only when its time-out ran out (or a
                        // signal came): then the peer has been stalling all along, and the
                        // clock keeps running.
                        if self.nonblocking || n == rest.len() {
                            stall.progressed();
                        } else if let Some(limit) = self.timeout
                            && stall.waited() >= limit
                        {
                            return Err(self.timed_out(context, &stall));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.stall_wait(&mut stall, libc::POLLOUT, context)?;
                    }
                    Err(e) => return Err(self.io(context, e)),
                }
            }
        }
        self.sent += data.len() as u64;
        Ok(())
    }

    /// Decodes one message with `decode`, reading more whenever it reports truncation. Never
    /// buffers more than [`MAX_CONFIG_MESSAGE_BYTES`]; bytes read past the message stay in
    /// `ahead` for the next read.
    fn read_message<T>(
        &mut self,
        context: &'static str,
        mut decode: impl FnMut(&[u8]) -> core::result::Result<(T, usize), DecodeError>,
    ) -> Result<T> {
        // Start from any read-ahead bytes.
        let mut buf: Vec<u8> = self.ahead.get(self.ahead_start..).unwrap_or(&[]).to_vec();
        self.ahead.clear();
        self.ahead_start = 0;
        loop {
            match decode(&buf) {
                Ok((message, used)) => {
                    let extra = buf.get(used..).unwrap_or(&[]);
                    self.ahead.extend_from_slice(extra);
                    self.received += used as u64;
                    return Ok(message);
                }
                Err(e) => {
                    let Some(needed) = e.needed() else {
                        return Err(NetError::Decode {
                            peer: self.peer,
                            source: e,
                        });
                    };
                    let want = buf.len().saturating_add(needed);
                    if want > MAX_CONFIG_MESSAGE_BYTES {
                        return Err(NetError::Decode {
                            peer: self.peer,
                            source: DecodeError::LimitExceeded {
                                context,
                                value: want as u64,
                                limit: MAX_CONFIG_MESSAGE_BYTES as u64,
                            },
                        });
                    }
                    // Read at least what is missing, and whatever else is already there (up to
                    // 64 KiB), so a long message is not re-parsed once per field.
                    let start = buf.len();
                    let room = needed.max(64 << 10).min(MAX_CONFIG_MESSAGE_BYTES - start);
                    buf.resize(start + room, 0);
                    let mut got = 0;
                    let mut stall = Stall::new(self.timeout, self.nonblocking);
                    while got < needed {
                        let Some(dst) = buf.get_mut(start + got..) else {
                            break;
                        };
                        // `ahead` was moved into `buf` above, so this reads the socket.
                        match self.read_some(dst, context)? {
                            Some(n) => {
                                got += n;
                                stall.progressed();
                            }
                            None => self.stall_wait(&mut stall, libc::POLLIN, context)?,
                        }
                    }
                    buf.truncate(start + got);
                }
            }
        }
    }
}

/// A node's connections, indexed as dllama indexes its sockets (see [`crate::plan`]).
#[derive(Debug)]
pub struct Network {
    conns: Vec<Connection>,
    turbo: bool,
}

/// What one connection sends in an [`Network::exchange`]: the same `data` to each listed
/// connection.
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// Bytes to send.
    pub data: &'a [u8],
    /// Connections that get a copy.
    pub connections: core::ops::Range<u32>,
}

impl Network {
    fn new(conns: Vec<Connection>) -> Network {
        Network {
            conns,
            turbo: false,
        }
    }

    /// Number of connections (`nNodes - 1`).
    pub fn n_connections(&self) -> u32 {
        self.conns.len() as u32
    }

    /// The peer behind a connection.
    pub fn peer(&self, connection: u32) -> Option<Peer> {
        self.conns.get(connection as usize).map(|c| c.peer)
    }

    fn conn(&mut self, connection: u32) -> Result<&mut Connection> {
        self.conns
            .get_mut(connection as usize)
            .ok_or(NetError::Usage {
                context: "connection index out of range",
            })
    }

    /// dllama's `setTurbo`: non-blocking sockets (spin) when on, blocking when off.
    pub fn set_turbo(&mut self, enabled: bool) -> Result<()> {
        for c in &mut self.conns {
            c.stream
                .set_nonblocking(enabled)
                .map_err(|e| c.io("switching turbo mode", e))?;
            c.nonblocking = enabled;
        }
        self.turbo = enabled;
        Ok(())
    }

    /// Sets `--net-timeout` on every connection: the longest this node waits for bytes a
    /// message or a forward in progress owes it (`None` or zero: forever). Waiting for a
    /// control packet to begin is never limited.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        for c in &mut self.conns {
            c.set_timeout(timeout)?;
        }
        Ok(())
    }

    /// Whether the sockets are non-blocking.
    pub fn is_turbo(&self) -> bool {
        self.turbo
    }

    /// Writes `data` to one connection in 4096-byte chunks.
    pub fn write(&mut self, connection: u32, data: &[u8]) -> Result<()> {
        self.conn(connection)?.write_chunks(data, "write")
    }

    /// Reads exactly `buf.len()` bytes from one connection.
    pub fn read_exact(&mut self, connection: u32, buf: &mut [u8]) -> Result<()> {
        self.conn(connection)?.try_read_exact(buf, 0, "read")?;
        Ok(())
    }

    /// dllama's `tryReadWithMaxAttempts`: false when, in turbo mode, `max_attempts`
    /// would-blocks passed before the first byte arrived (0 = wait forever).
    pub fn try_read_exact(
        &mut self,
        connection: u32,
        buf: &mut [u8],
        max_attempts: u64,
    ) -> Result<bool> {
        self.conn(connection)?
            .try_read_exact(buf, max_attempts, "read")
    }

    /// Sends an ACK.
    pub fn write_ack(&mut self, connection: u32) -> Result<()> {
        self.conn(connection)?
            .write_chunks(&ACK.to_le_bytes(), "writing ACK")
    }

    /// Reads an ACK; anything else is a decode error.
    pub fn read_ack(&mut self, connection: u32) -> Result<()> {
        let c = self.conn(connection)?;
        let mut word = [0u8; 4];
        c.try_read_exact(&mut word, 0, "reading ACK")?;
        crate::messages::decode_ack(&word).map_err(|source| NetError::Decode {
            peer: c.peer,
            source,
        })
    }

    /// Reads one message whose length is only known by decoding it (handshake, configs, weight
    /// headers), with `decode` a `decode_prefix` function.
    pub fn read_message<T>(
        &mut self,
        connection: u32,
        decode: impl FnMut(&[u8]) -> core::result::Result<(T, usize), DecodeError>,
    ) -> Result<T> {
        self.read_message_as(connection, "message", decode)
    }

    /// As [`Network::read_message`], naming the message in errors (`context`).
    pub fn read_message_as<T>(
        &mut self,
        connection: u32,
        context: &'static str,
        decode: impl FnMut(&[u8]) -> core::result::Result<(T, usize), DecodeError>,
    ) -> Result<T> {
        self.conn(connection)?.read_message(context, decode)
    }

    /// Writes `outgoing.data` to each of its connections and fills every `incoming` buffer from
    /// its connection, all at once: sends go out in 4096-byte chunks round-robin (dllama's
    /// `writeMany`), reads proceed meanwhile (dllama's `readMany` runs after the writes; doing
    /// both together keeps the bytes per connection identical and cannot deadlock).
    pub fn exchange(
        &mut self,
        outgoing: Option<Outgoing<'_>>,
        incoming: &mut [(u32, &mut [u8])],
    ) -> Result<()> {
        let n = self.conns.len();
        let (out_data, out_range) = match outgoing {
            Some(o) => (o.data, o.connections),
            None => (&[][..], 0..0),
        };
        if out_range.end as usize > n || incoming.iter().any(|(c, _)| *c as usize >= n) {
            return Err(NetError::Usage {
                context: "exchange connection out of range",
            });
        }
        let mut out_pos: Vec<usize> = vec![0; out_range.len()];
        let mut in_pos: Vec<usize> = vec![0; incoming.len()];
        // Read-ahead bytes first.
        for ((c, buf), pos) in incoming.iter_mut().zip(in_pos.iter_mut()) {
            if let Some(conn) = self.conns.get_mut(*c as usize) {
                *pos += conn.take_ahead(buf);
            }
        }
        let limit = self.conns.iter().filter_map(|c| c.timeout).min();
        let mut stall = Stall::new(limit, self.turbo);
        loop {
            let mut pending = false;
            let mut progress = false;
            for (i, c) in out_range.clone().enumerate() {
                let (Some(pos), Some(conn)) = (out_pos.get_mut(i), self.conns.get_mut(c as usize))
                else {
                    continue;
                };
                let Some(rest) = out_data.get(*pos..).filter(|r| !r.is_empty()) else {
                    continue;
                };
                pending = true;
                let sent = send_nonblocking(conn.stream.as_raw_fd(), rest);
                progress |= conn.advance(sent, pos, "sync write")?;
            }
            for ((c, buf), pos) in incoming.iter_mut().zip(in_pos.iter_mut()) {
                let Some(conn) = self.conns.get_mut(*c as usize) else {
                    continue;
                };
                let Some(rest) = buf.get_mut(*pos..).filter(|r| !r.is_empty()) else {
                    continue;
                };
                pending = true;
                let received = recv_nonblocking(conn.stream.as_raw_fd(), rest);
                progress |= conn.advance(received, pos, "sync read")?;
            }
            if !pending {
                break;
            }
            if progress {
                stall.progressed();
                continue;
            }
            let mut fds = Vec::with_capacity(n);
            // The connections still owed something, in order: one of them a time-out names.
            let mut owing: Vec<Peer> = Vec::with_capacity(n);
            for (i, c) in out_range.clone().enumerate() {
                let waiting = out_pos.get(i).is_some_and(|p| *p < out_data.len());
                if let (true, Some(conn)) = (waiting, self.conns.get(c as usize)) {
                    owing.push(conn.peer);
                    fds.push(libc::pollfd {
                        fd: conn.stream.as_raw_fd(),
                        events: libc::POLLOUT,
                        revents: 0,
                    });
                }
            }
            for ((c, buf), pos) in incoming.iter().zip(in_pos.iter()) {
                if let (true, Some(conn)) = (*pos < buf.len(), self.conns.get(*c as usize)) {
                    owing.push(conn.peer);
                    fds.push(libc::pollfd {
                        fd: conn.stream.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    });
                }
            }
            // The calls above never block: outside turbo mode every wait is a sleep in poll.
            match stall.wait(false, &mut fds) {
                Ok(true) => {}
                Ok(false) => match culprit(&owing, &mut fds, stall.limit) {
                    Culprit::Moving => stall.progressed(),
                    Culprit::Peer(peer) => {
                        return Err(NetError::TimedOut {
                            context: "sync",
                            peer,
                            waited: stall.waited(),
                        });
                    }
                },
                Err(source) => return Err(NetError::Poll { source }),
            }
        }
        for c in out_range {
            if let Some(conn) = self.conns.get_mut(c as usize) {
                conn.sent += out_data.len() as u64;
            }
        }
        for (c, buf) in incoming.iter() {
            if let Some(conn) = self.conns.get_mut(*c as usize) {
                conn.received += buf.len() as u64;
            }
        }
        Ok(())
    }

    /// dllama's `writeAll`: the same bytes to every connection (the root's control packets).
    pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
        let connections = 0..self.n_connections();
        self.exchange(Some(Outgoing { data, connections }), &mut [])
    }

    /// Runs one [`SyncStep`] over `pipe` (the whole pipe's memory): sends this node's bytes of
    /// the step and fills the bytes the step receives.
    pub fn sync_step(&mut self, step: &SyncStep, pipe: &mut [u8]) -> Result<()> {
        let (send_offset, send_len, send_to) = step.sends();
        let send_len = if send_to.is_empty() { 0 } else { send_len };
        // Carve the pipe into the disjoint regions the step touches, in address order.
        let mut regions: Vec<(u64, u64, Option<u32>)> = Vec::new();
        if send_len > 0 {
            regions.push((send_offset, send_len, None));
        }
        for t in step.receives() {
            regions.push((t.offset, t.len, Some(t.connection)));
        }
        regions.sort_by_key(|r| r.0);
        let mut rest: &mut [u8] = pipe;
        let mut cursor = 0u64;
        let mut send: &[u8] = &[];
        let mut incoming: Vec<(u32, &mut [u8])> = Vec::new();
        for (offset, len, recv_from) in regions {
            let skip = offset.checked_sub(cursor).ok_or(NetError::Usage {
                context: "overlapping sync regions",
            })?;
            let skip = usize::try_from(skip).map_err(|_| NetError::Usage {
                context: "sync offset",
            })?;
            let len_usize = usize::try_from(len).map_err(|_| NetError::Usage {
                context: "sync length",
            })?;
            let (_, tail) = rest.split_at_mut_checked(skip).ok_or(NetError::Usage {
                context: "sync step does not fit the pipe buffer",
            })?;
            let (region, tail) = tail
                .split_at_mut_checked(len_usize)
                .ok_or(NetError::Usage {
                    context: "sync step does not fit the pipe buffer",
                })?;
            match recv_from {
                Some(c) => incoming.push((c, region)),
                None => send = region,
            }
            rest = tail;
            cursor = offset + len;
        }
        let outgoing = (send_len > 0).then_some(Outgoing {
            data: send,
            connections: send_to,
        });
        self.exchange(outgoing, &mut incoming)
    }

    /// Bytes sent and received per connection since the last reset (dllama's `getStats`).
    pub fn stats(&self) -> Vec<(u64, u64)> {
        self.conns.iter().map(|c| (c.sent, c.received)).collect()
    }

    /// Zeroes the byte counters.
    pub fn reset_stats(&mut self) {
        for c in &mut self.conns {
            c.sent = 0;
            c.received = 0;
        }
    }

    /// The root side of dllama's `NnNetwork::connect`: connects to every worker in order,
    /// sends each its handshake and reads its ACK, then sends every worker the root-ready ACK.
    /// Connection `i` is worker `i` (node `i + 1`).
    pub fn connect_to_workers(workers: &[PeerAddress]) -> Result<Network> {
        Ok(Network::connect_inner(workers, None, None)?.0)
    }

    /// As [`Network::connect_to_workers`] (with `greeting_wait`, as
    /// [`Network::connect_to_workers_shared`]) and `--net-timeout` applied from the first
    /// connect on: a worker that accepts but never answers is named instead of waited for.
    pub fn connect_to_workers_within(
        workers: &[PeerAddress],
        greeting_wait: Option<Duration>,
        timeout: Option<Duration>,
    ) -> Result<(Network, Vec<bool>)> {
        Network::connect_inner(workers, greeting_wait, timeout.filter(|t| !t.is_zero()))
    }

    /// As [`Network::connect_to_workers`] for a root that loads from shared storage (see
    /// [`crate::shared_storage`]): connects to every worker, waits up to `wait` in silence for
    /// their greetings, answers each greeting, then greets all workers as dllama does. Returns
    /// the network and, per worker, whether it greeted (and so will load its own slices).
    pub fn connect_to_workers_shared(
        workers: &[PeerAddress],
        wait: Duration,
    ) -> Result<(Network, Vec<bool>)> {
        Network::connect_inner(workers, Some(wait), None)
    }

    fn connect_inner(
        workers: &[PeerAddress],
        greeting_wait: Option<Duration>,
        timeout: Option<Duration>,
    ) -> Result<(Network, Vec<bool>)> {
        let open = |i: usize, worker: &PeerAddress| -> Result<Connection> {
            let mut conn = Connection::new(
                connect_within(worker, timeout)?,
                Peer::new(i as u32, i as u32 + 1),
            )?;
            conn.set_timeout(timeout)?;
            Ok(conn)
        };
        let n_workers = u32::try_from(workers.len())
            .ok()
            .filter(|n| (1..=crate::limits::MAX_WORKERS).contains(n))
            .ok_or(NetError::Usage {
                context: "worker count out of range",
            })?;
        let mut greeted = vec![false; workers.len()];
        let mut conns = Vec::with_capacity(workers.len());
        if let Some(wait) = greeting_wait {
            // Every connection first, so that the workers' silence windows run in parallel.
            for (i, worker) in workers.iter().enumerate() {
                conns.push(open(i, worker)?);
            }
            let deadline = std::time::Instant::now() + wait;
            loop {
                let waiting: Vec<usize> = (0..conns.len())
                    .filter(|i| greeted.get(*i) == Some(&false))
                    .collect();
                let mut fds: Vec<libc::pollfd> = conns
                    .iter()
                    .zip(&greeted)
                    .filter(|(_, g)| !**g)
                    .map(|(c, _)| libc::pollfd {
                        fd: c.stream.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    })
                    .collect();
                if fds.is_empty() {
                    break;
                }
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
                // SAFETY: `fds` is a live, exclusively borrowed array of `fds.len()` pollfds.
                let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
                if rc < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(NetError::Poll { source: e });
                }
                if rc == 0 {
                    break;
                }
                for (pfd, i) in fds.iter().zip(waiting) {
                    if pfd.revents == 0 {
                        continue;
                    }
                    let (Some(conn), Some(greeted)) = (conns.get_mut(i), greeted.get_mut(i)) else {
                        continue;
                    };
                    answer_greeting(conn, deadline)?;
                    *greeted = true;
                }
            }
        }
        for (i, worker) in workers.iter().enumerate() {
            if greeting_wait.is_none() {
                conns.push(open(i, worker)?);
            }
            let conn = conns.get_mut(i).ok_or(NetError::Usage {
                context: "a worker without a connection",
            })?;
            let peer = conn.peer;
            let hello = Handshake {
                n_workers,
                worker_index: i as u32,
                peers: workers
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, w)| w.clone())
                    .collect(),
            };
            let mut bytes = Vec::new();
            hello.encode(&mut bytes);
            conn.write_chunks(&bytes, "writing handshake")?;
            let mut word = [0u8; 4];
            conn.try_read_exact(&mut word, 0, "reading handshake ACK")?;
            crate::messages::decode_ack(&word)
                .map_err(|source| NetError::Decode { peer, source })?;
        }
        let mut network = Network::new(conns);
        for i in 0..n_workers {
            network.write_ack(i)?;
        }
        Ok((network, greeted))
    }

    /// Sends worker `connection` the shared-storage load request (in place of its weight
    /// records).
    pub fn send_load_request(
        &mut self,
        connection: u32,
        request: &crate::shared_storage::LoadRequest,
    ) -> Result<()> {
        let mut bytes = Vec::new();
        request.encode(&mut bytes);
        self.write(connection, &bytes)
    }

    /// Waits for worker `connection`'s answer to its load request.
    pub fn read_load_result(
        &mut self,
        connection: u32,
    ) -> Result<crate::shared_storage::LoadResult> {
        self.read_message_as(
            connection,
            "shared-storage load result",
            crate::shared_storage::LoadResult::decode_prefix,
        )
    }
}

/// The root's side of a session (dllama's `NnRootConfigWriter`, `NnRootWeightLoader` and
/// `RootLlmInference`), on a [`Network`] from [`Network::connect_to_workers`].
impl Network {
    /// Sends worker `connection` the net config and its node config, waiting for the ACK after
    /// each (`writeNet` + `writeNode`).
    pub fn send_configs(
        &mut self,
        connection: u32,
        net: &NetConfig,
        node: &NodeConfig,
    ) -> Result<()> {
        let mut bytes = Vec::new();
        net.encode(&mut bytes);
        self.write(connection, &bytes)?;
        self.read_ack(connection)?;
        bytes.clear();
        node.encode(&mut bytes);
        self.write(connection, &bytes)?;
        self.read_ack(connection)
    }

    /// Sends one weight record (`writeWeight`): header, then `data`.
    pub fn send_weight(
        &mut self,
        connection: u32,
        name: &str,
        op_index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        let mut header = Vec::new();
        WeightMessage::Record(WeightHeader {
            name: name.into(),
            op_index,
            offset,
            n_bytes: data.len() as u64,
        })
        .encode(&mut header);
        self.write(connection, &header)?;
        self.write(connection, data)
    }

    /// Ends the weight stream of every worker and waits for each one's ACK, in order
    /// (`NnRootWeightLoader::finish`).
    pub fn finish_weights(&mut self) -> Result<()> {
        for connection in 0..self.n_connections() {
            self.write(connection, &0u32.to_le_bytes())?;
            self.read_ack(connection)?;
        }
        Ok(())
    }

    /// Sends a control packet to every worker (`writeAll`); a batch size of 0 stops them.
    pub fn send_control(&mut self, packet: ControlPacket) -> Result<()> {
        self.write_all(&packet.to_bytes())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // dllama's destroySocket: shutdown, then close (the drop of the stream).
        for c in &self.conns {
            let _ = c.stream.shutdown(Shutdown::Both);
        }
    }
}

/// dllama's `connectSocket`: IPv4 only, first address the resolver gives.
/// Reads a worker's greeting (its first bytes arrived) and answers it: this session loads from
/// shared storage.
fn answer_greeting(conn: &mut Connection, deadline: std::time::Instant) -> Result<()> {
    use crate::shared_storage::{GREETING_SIZE, PROTOCOL_VERSION, RootReply, WorkerGreeting};
    let mut bytes = [0u8; GREETING_SIZE];
    // A worker writes its greeting in one send; allow a round trip or two for its tail.
    let tail = deadline.max(std::time::Instant::now() + Duration::from_secs(2));
    if !conn.read_exact_before(&mut bytes, tail, "reading the worker's greeting")? {
        return Err(NetError::Decode {
            peer: conn.peer,
            source: DecodeError::Truncated {
                context: "shared-storage greeting",
                needed: bytes.len(),
            },
        });
    }
    WorkerGreeting::decode_prefix(&bytes).map_err(|source| NetError::Decode {
        peer: conn.peer,
        source,
    })?;
    let mut reply = Vec::new();
    RootReply {
        version: PROTOCOL_VERSION,
        shared_storage: true,
    }
    .encode(&mut reply);
    conn.write_chunks(&reply, "answering the worker's greeting")
}

/// Connects to `peer`, giving up after `timeout` (a black-holed address otherwise takes the
/// kernel's SYN retries, minutes).
fn connect_within(peer: &PeerAddress, timeout: Option<Duration>) -> Result<TcpStream> {
    let Some(timeout) = timeout else {
        return connect(peer);
    };
    let addr = resolve(peer)?;
    TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| setup_error("connecting to", format!("{}:{}", peer.host, peer.port), e))
}

/// The IPv4 address of `peer`.
fn resolve(peer: &PeerAddress) -> Result<SocketAddr> {
    let target = format!("{}:{}", peer.host, peer.port);
    (peer.host.as_str(), peer.port)
        .to_socket_addrs()
        .map_err(|e| setup_error("resolving", &target, e))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| {
            setup_error(
                "resolving",
                &target,
                io::Error::new(io::ErrorKind::NotFound, "no IPv4 address"),
            )
        })
}

fn connect(peer: &PeerAddress) -> Result<TcpStream> {
    let addr = resolve(peer)?;
    TcpStream::connect(addr)
        .map_err(|e| setup_error("connecting to", format!("{}:{}", peer.host, peer.port), e))
}

/// A worker's listening socket. It stays open across sessions: after a session ends, call
/// [`Listener::accept_root`] again (dllama closes and re-creates it; keeping it means no window
/// in which the root's connect is refused).
#[derive(Debug)]
pub struct Listener {
    inner: TcpListener,
    /// `--net-timeout` for the sessions it accepts.
    timeout: Option<Duration>,
    /// `--allow-root`: who may connect (as root, or as a peer worker).
    allow: crate::allow::AllowList,
}

impl Listener {
    /// dllama's `createServerSocket`: an IPv4 address (`0.0.0.0` for all) and a port.
    pub fn bind(host: &str, port: u16) -> Result<Listener> {
        let ip: Ipv4Addr = host.parse().map_err(|_| {
            setup_error(
                "invalid bind host",
                host,
                io::Error::new(io::ErrorKind::InvalidInput, "not an IPv4 address"),
            )
        })?;
        let addr = SocketAddrV4::new(ip, port);
        let inner = TcpListener::bind(addr).map_err(|e| setup_error("binding", addr, e))?;
        Ok(Listener::from_std(inner))
    }

    /// Wraps a bound std listener (tests bind port 0).
    pub fn from_std(inner: TcpListener) -> Listener {
        Listener {
            inner,
            timeout: None,
            allow: crate::allow::AllowList::default(),
        }
    }

    /// `--net-timeout` of the sessions this listener accepts: the longest a session waits for
    /// bytes its root or a peer owes (`None` or zero: forever). Waiting for a root to connect,
    /// or for a control packet to begin, is never limited.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout.filter(|t| !t.is_zero());
    }

    /// `--allow-root`: connections from elsewhere are closed before a byte is read
    /// ([`NetError::Refused`]); the peers a root names must be allowed, and an accepted peer
    /// connection must come from the address of a peer the root named.
    pub fn set_allowed(&mut self, allow: crate::allow::AllowList) {
        self.allow = allow;
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.inner
            .local_addr()
            .map_err(|e| setup_error("local address of", "listener", e))
    }

    /// Accepts the next connection from an allowed address; one from elsewhere is closed
    /// unread and reported.
    fn accept_allowed(&self) -> Result<TcpStream> {
        loop {
            let stream = self.accept()?;
            match stream.peer_addr() {
                Ok(addr) if self.allow.allows(addr.ip()) => return Ok(stream),
                Ok(addr) => {
                    let _ = stream.shutdown(Shutdown::Both);
                    return Err(NetError::Refused {
                        addr,
                        why: "not in --allow-root",
                    });
                }
                // Reset before it was accepted: nobody to serve.
                Err(_) => continue,
            }
        }
    }

    /// Accepts the next peer worker of the mesh: with an allowlist, only from one of
    /// `expected` (the addresses the root named for the workers listed before this one);
    /// other connections are closed unread, for at most the session's time-out.
    fn accept_peer(&self, expected: &[std::net::IpAddr]) -> Result<TcpStream> {
        let started = std::time::Instant::now();
        loop {
            if let Some(limit) = self.timeout {
                let left = limit.saturating_sub(started.elapsed());
                if !wait_readable(self.inner.as_raw_fd(), left)
                    .map_err(|e| setup_error("waiting for a peer on", "the listener", e))?
                {
                    return Err(NetError::Setup {
                        context: "no peer worker connected to",
                        addr: self.local_addr()?.to_string(),
                        source: io::Error::new(io::ErrorKind::TimedOut, "--net-timeout"),
                    });
                }
            }
            let stream = self.accept()?;
            let Ok(addr) = stream.peer_addr() else {
                continue;
            };
            if !self.allow.is_restricted() || expected.contains(&addr.ip()) {
                return Ok(stream);
            }
            // Not a peer the root named: someone else (perhaps the real root, if the
            // handshake was forged). Closed unread.
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn accept(&self) -> Result<TcpStream> {
        loop {
            match self.inner.accept() {
                Ok((stream, _)) => return Ok(stream),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(setup_error("accepting on", self.local_addr()?, e)),
            }
        }
    }

    /// dllama's `NnNetwork::serve` after the listen: accepts the root, reads the handshake,
    /// ACKs it, waits for the root-ready ACK, then builds the mesh — for each other worker in
    /// list order, connects to it if it is listed after this worker, else accepts the next
    /// incoming connection (dllama cannot tell which worker connects; neither can we).
    pub fn accept_root(&self) -> Result<WorkerSession> {
        self.accept_root_greeting(false)
    }

    /// As [`Listener::accept_root`]; with `greet` (a worker that can read the model itself)
    /// it greets a root that stays silent for [`crate::shared_storage::WORKER_SILENCE`] and
    /// learns from the reply whether the session loads from shared storage
    /// ([`WorkerSession::shared_storage`]). A root that speaks first gets dllama's protocol.
    pub fn accept_root_greeting(&self, greet: bool) -> Result<WorkerSession> {
        use crate::shared_storage::{GREETING_SIZE, RootReply, WORKER_SILENCE, WorkerGreeting};
        let root = self.accept_allowed()?;
        let mut root = Connection::new(root, Peer::new(0, 0))?;
        root.set_timeout(self.timeout)?;
        let root_peer = root.peer;
        let mut shared_storage = false;
        if greet
            && !wait_readable(root.stream.as_raw_fd(), WORKER_SILENCE)
                .map_err(|e| root.io("waiting for the root's first byte", e))?
        {
            let mut bytes = Vec::new();
            WorkerGreeting::current().encode(&mut bytes);
            root.write_chunks(&bytes, "writing the shared-storage greeting")?;
            let mut reply = [0u8; GREETING_SIZE];
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            if !root.read_exact_before(&mut reply, deadline, "reading the root's reply")? {
                return Err(NetError::Decode {
                    peer: root_peer,
                    source: DecodeError::Truncated {
                        context: "shared-storage reply",
                        needed: reply.len(),
                    },
                });
            }
            let (reply, _) =
                RootReply::decode_prefix(&reply).map_err(|source| NetError::Decode {
                    peer: root_peer,
                    source,
                })?;
            shared_storage = reply.shared_storage;
        }
        let hello = root.read_message("handshake", Handshake::decode_prefix)?;
        root.write_chunks(&ACK.to_le_bytes(), "writing handshake ACK")?;
        let mut word = [0u8; 4];
        root.try_read_exact(&mut word, 0, "reading root-ready ACK")?;
        crate::messages::decode_ack(&word).map_err(|source| NetError::Decode {
            peer: root_peer,
            source,
        })?;
        let node_index = hello.node_index();
        // Every peer the root names must be allowed; the ones this worker accepts must then
        // connect from those addresses.
        let mut accepted_from = Vec::new();
        for (i, peer_addr) in hello.peers.iter().enumerate() {
            let ip = resolve(peer_addr)?.ip();
            if !self.allow.allows(ip) {
                return Err(NetError::PeerNotAllowed {
                    root: root_peer,
                    peer: SocketAddr::new(ip, peer_addr.port),
                });
            }
            if !hello.connects_to_peer(i as u32) {
                accepted_from.push(ip);
            }
        }
        let mut conns = vec![root];
        for (i, peer_addr) in hello.peers.iter().enumerate() {
            let i = i as u32;
            let peer = Peer::new(i + 1, connection_node(node_index, i + 1));
            let stream = if hello.connects_to_peer(i) {
                connect_within(peer_addr, self.timeout)?
            } else {
                self.accept_peer(&accepted_from)?
            };
            let mut conn = Connection::new(stream, peer)?;
            conn.set_timeout(self.timeout)?;
            conns.push(conn);
        }
        Ok(WorkerSession {
            handshake: hello,
            network: Network::new(conns),
            weights_done: false,
            pending_weight: None,
            shared_storage,
        })
    }
}

/// A worker's session with a root, from the handshake to the stop packet. The methods follow
/// `runWorkerApp`'s order: [`read_net_config`](Self::read_net_config),
/// [`read_node_config`](Self::read_node_config), [`next_weight`](Self::next_weight) /
/// [`read_weight_data`](Self::read_weight_data) until `None`, then a [`ControlReader`] and the
/// syncs of each forward.
#[derive(Debug)]
pub struct WorkerSession {
    /// What the root said in the handshake.
    pub handshake: Handshake,
    /// Connection 0 = root, then the other workers.
    pub network: Network,
    weights_done: bool,
    /// Data bytes of the last weight header, not yet read.
    pending_weight: Option<u64>,
    /// The root asked for a shared-storage session: a [`crate::shared_storage::LoadRequest`]
    /// follows the node config instead of weight records.
    pub shared_storage: bool,
}

impl WorkerSession {
    fn root_peer(&self) -> Peer {
        self.network
            .conns
            .first()
            .map_or(Peer::new(0, 0), |c| c.peer)
    }

    /// Reads the root's shared-storage load request (a session with
    /// [`WorkerSession::shared_storage`], after the node config).
    pub fn read_load_request(&mut self) -> Result<crate::shared_storage::LoadRequest> {
        self.network.read_message_as(
            0,
            "shared-storage load request",
            crate::shared_storage::LoadRequest::decode_prefix,
        )
    }

    /// Answers the load request.
    pub fn send_load_result(&mut self, result: &crate::shared_storage::LoadResult) -> Result<()> {
        let mut bytes = Vec::new();
        result.encode(&mut bytes);
        self.network.write(0, &bytes)
    }

    /// Reads the net config, checks it against the handshake (node count), and ACKs it.
    pub fn read_net_config(&mut self) -> Result<NetConfig> {
        let net = self
            .network
            .read_message_as(0, "net config", NetConfig::decode_prefix)?;
        if net.n_nodes != self.handshake.n_workers + 1 {
            return Err(NetError::Decode {
                peer: self.root_peer(),
                source: DecodeError::Inconsistent {
                    context: "nNodes vs handshake worker count",
                },
            });
        }
        self.network.write_ack(0)?;
        Ok(net)
    }

    /// Reads the node config, checks it against `net` and the handshake (node index), and ACKs
    /// it.
    pub fn read_node_config(&mut self, net: &NetConfig) -> Result<NodeConfig> {
        let node = self
            .network
            .read_message_as(0, "node config", |b| NodeConfig::decode_prefix(b, net))?;
        if node.node_index != self.handshake.node_index() {
            return Err(NetError::Decode {
                peer: self.root_peer(),
                source: DecodeError::Inconsistent {
                    context: "nodeIndex vs handshake worker index",
                },
            });
        }
        self.network.write_ack(0)?;
        Ok(node)
    }

    /// Reads the next weight record header and checks it against `node` (the op exists, the
    /// bytes fit its weight) before anything is read or allocated for its data. `None` after
    /// the terminator, which this ACKs. The caller then reads exactly `n_bytes` with
    /// [`read_weight_data`](Self::read_weight_data), typically straight into the op's weight.
    pub fn next_weight(
        &mut self,
        node: &NodeConfig,
    ) -> Result<Option<(WeightHeader, WeightTarget)>> {
        if self.weights_done {
            return Ok(None);
        }
        if self.pending_weight.is_some() {
            return Err(NetError::Usage {
                context: "next_weight before the previous record's data was read",
            });
        }
        match self.network.read_message_as(
            0,
            "weight record header",
            WeightMessage::decode_prefix,
        )? {
            WeightMessage::End => {
                self.weights_done = true;
                self.network.write_ack(0)?;
                Ok(None)
            }
            WeightMessage::Record(header) => {
                let target = node
                    .check_weight(&header)
                    .map_err(|source| NetError::Decode {
                        peer: self.root_peer(),
                        source,
                    })?;
                self.pending_weight = Some(target.n_bytes);
                Ok(Some((header, target)))
            }
        }
    }

    /// Reads the data of the record [`next_weight`](Self::next_weight) returned; `dst` must be
    /// exactly its `n_bytes` long.
    pub fn read_weight_data(&mut self, dst: &mut [u8]) -> Result<()> {
        if self.pending_weight != Some(dst.len() as u64) {
            return Err(NetError::Usage {
                context: "weight data buffer is not the record's nBytes",
            });
        }
        self.network
            .conn(0)?
            .try_read_exact(dst, 0, "weight data")?;
        self.pending_weight = None;
        Ok(())
    }
}

/// Reads control packets as dllama's worker loop does, switching turbo mode: on after a
/// forward packet (when enabled), off after [`TURBO_IDLE_CPU_TIME`] of process CPU time spent
/// spinning without one.
#[derive(Debug)]
pub struct ControlReader {
    turbo_allowed: bool,
    idle_limit: Duration,
    attempts: u64,
    first_attempt: bool,
    start: Duration,
}

impl ControlReader {
    /// `turbo` = dllama's `--net-turbo` (default on).
    pub fn new(turbo: bool) -> ControlReader {
        ControlReader {
            turbo_allowed: turbo,
            idle_limit: TURBO_IDLE_CPU_TIME,
            attempts: CONTROL_READ_ATTEMPTS,
            first_attempt: true,
            start: Duration::ZERO,
        }
    }

    /// Changes the idle CPU time after which turbo mode is left (tests).
    pub fn with_idle_limit(mut self, limit: Duration) -> ControlReader {
        self.idle_limit = limit;
        self
    }

    /// Changes how many would-blocks a turbo-mode read waits before checking the idle clock
    /// (tests; at least 1).
    pub fn with_read_attempts(mut self, attempts: u64) -> ControlReader {
        self.attempts = attempts.max(1);
        self
    }

    /// Waits for the next control packet from the root and checks it against the configs. A
    /// stop packet is returned as is (the session is then over: drop it and accept again).
    pub fn next(
        &mut self,
        network: &mut Network,
        net: &NetConfig,
        node: &NodeConfig,
    ) -> Result<ControlPacket> {
        let mut bytes = [0u8; ControlPacket::WIRE_SIZE];
        loop {
            if self.first_attempt {
                self.start = process_cpu_time();
            }
            if !network
                .conn(0)?
                .try_read_exact(&mut bytes, self.attempts, "control packet")?
            {
                if network.is_turbo()
                    && !self.first_attempt
                    && process_cpu_time().saturating_sub(self.start) > self.idle_limit
                {
                    network.set_turbo(false)?;
                }
                self.first_attempt = false;
                continue;
            }
            let root = network.conns.first().map_or(Peer::new(0, 0), |c| c.peer);
            let packet = ControlPacket::decode(&bytes)
                .and_then(|p| p.check(net, node).map(|()| p))
                .map_err(|source| NetError::Decode { peer: root, source })?;
            if packet.is_stop() {
                return Ok(packet);
            }
            if self.turbo_allowed && !network.is_turbo() {
                network.set_turbo(true)?;
            }
            self.first_attempt = true;
            return Ok(packet);
        }
    }
}
