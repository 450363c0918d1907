//! airllama: `worker::serve_session` — the worker's whole session loop (handshake, mesh, net and
//! node configs, weights, control packets, forwards with their pipe syncs, stop) over real
//! loopback sockets. The input is the byte stream a root sends; it is written in chunks whose
//! sizes come from the input's length (so the worker's reads see partial messages), then the
//! write side is shut down, and everything the worker sends is drained. The session must end
//! with `Ok` or a typed `Err`: a panic, an abort or a hang (libFuzzer's `-timeout`) is a bug.
//!
//! The scripted world around the worker:
//! - one listener on 127.0.0.1 for every iteration (a `OnceLock`), its backlog emptied after
//!   each session, so a connection left over never becomes the next session's root.
//! - `--net-timeout` 200 ms and `--max-memory` 256 MiB, so a hostile stream can neither stall
//!   an iteration for long nor make it reserve gigabytes.
//! - peers: the handshake's peer addresses are rewritten to a local sink before the stream is
//!   sent, so the fuzzer never makes the worker resolve names or connect to a real port on this
//!   machine. Each fake peer (those the worker connects to, at the sink, and up to
//!   `MAX_FAKE_PEERS` the harness connects to the worker, for the ones it accepts) sends zeros
//!   and drains what it gets, so sessions of 3 and more nodes run their forwards too.
//! - `--net-turbo` on, except for inputs whose length is a multiple of 4; one thread per op;
//!   no `--model` (the shared-storage greeting needs a silent root) and no `--mem-budget`.
//!
//! `AIRLLAMA_FUZZ_VERBOSE=1` prints the worker's log and how each session ended (to see what a
//! seed or a crash input reaches: `cargo fuzz run worker_session <file>`).
#![no_main]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use airllama::worker::{WorkerOptions, serve_session};
use airllama_kernels::backend::Backend;
use airllama_net::Handshake;
use airllama_net::transport::Listener;

/// Most peer connections the harness opens to the worker (for the peers it accepts); a
/// handshake asking for more gets this many, and the worker times out waiting for the rest.
const MAX_FAKE_PEERS: usize = 16;
/// Most zero bytes a fake peer sends in one session.
const FAKE_PEER_BYTES: usize = 4 << 20;

struct World {
    /// The worker's listener.
    listener: Listener,
    /// The same socket, to empty its backlog between sessions.
    backlog: TcpListener,
    port: u16,
    /// Where every peer address of a handshake points (non-blocking).
    sink: TcpListener,
    sink_port: u16,
    options: WorkerOptions,
    verbose: bool,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let std_listener = TcpListener::bind("127.0.0.1:0").expect("binding the worker listener");
        let port = std_listener.local_addr().unwrap().port();
        let backlog = std_listener.try_clone().unwrap();
        let mut listener = Listener::from_std(std_listener);
        let net_timeout = Some(Duration::from_millis(200));
        listener.set_timeout(net_timeout);
        let sink = TcpListener::bind("127.0.0.1:0").expect("binding the peer sink");
        sink.set_nonblocking(true).unwrap();
        let sink_port = sink.local_addr().unwrap().port();
        World {
            listener,
            backlog,
            port,
            sink,
            sink_port,
            options: WorkerOptions {
                host: "127.0.0.1".into(),
                port,
                n_threads: 1,
                turbo: true,
                backend: Backend::detect(),
                max_memory: 256 << 20,
                streaming: None,
                model: None,
                cache_dir: None,
                net_timeout,
                allow: Default::default(),
            },
            verbose: std::env::var_os("AIRLLAMA_FUZZ_VERBOSE").is_some_and(|v| v != "0"),
        }
    })
}

/// The stream as sent: with every peer address of a decodable handshake pointing at the sink;
/// and how many peers the handshake names, and how many of them the worker accepts (it
/// connects to the others).
fn script(data: &[u8], sink_port: u16) -> (Vec<u8>, usize, usize) {
    let Ok((mut hello, used)) = Handshake::decode_prefix(data) else {
        return (data.to_vec(), 0, 0);
    };
    for peer in &mut hello.peers {
        peer.host = "127.0.0.1".into();
        peer.port = sink_port;
    }
    let accepted = (0..hello.peers.len() as u32)
        .filter(|&i| !hello.connects_to_peer(i))
        .count();
    let mut out = Vec::with_capacity(data.len() + 16 * hello.peers.len());
    hello.encode(&mut out);
    out.extend_from_slice(&data[used..]);
    (out, hello.peers.len(), accepted)
}

/// `data` in the chunks it is written in: sizes from single bytes to 64 KiB, a fixed
/// pseudo-random sequence per input length.
fn chunks(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    const SIZES: [usize; 8] = [1, 2, 5, 17, 255, 1024, 4096, 65536];
    let mut state = (data.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let (chunk, tail) = rest.split_at(SIZES[(state % 8) as usize].min(rest.len()));
        rest = tail;
        Some(chunk)
    })
}

/// The fake peers: every connection accepted at the sink and every one in `conns` gets zeros
/// (up to [`FAKE_PEER_BYTES`]) and has what it receives read and dropped, until `stop`.
fn fake_peers(sink: &TcpListener, conns: Vec<TcpStream>, stop: &AtomicBool) {
    let mut conns: Vec<(TcpStream, usize)> = conns.into_iter().map(|c| (c, 0)).collect();
    let zeros = [0u8; 16 << 10];
    let mut buf = [0u8; 16 << 10];
    let mut sink_ok = true;
    while !stop.load(Ordering::Relaxed) {
        while sink_ok {
            match sink.accept() {
                Ok((c, _)) => {
                    if c.set_nonblocking(true).is_ok() {
                        conns.push((c, 0));
                    }
                }
                Err(e) => {
                    // Out of descriptors (a handshake naming a thousand peers): stop accepting.
                    sink_ok = e.kind() == ErrorKind::WouldBlock;
                    break;
                }
            }
        }
        let mut fds: Vec<libc::pollfd> = conns
            .iter()
            .map(|(c, sent)| libc::pollfd {
                fd: c.as_raw_fd(),
                events: if *sent < FAKE_PEER_BYTES {
                    libc::POLLIN | libc::POLLOUT
                } else {
                    libc::POLLIN
                },
                revents: 0,
            })
            .collect();
        fds.push(libc::pollfd {
            fd: sink.as_raw_fd(),
            events: if sink_ok { libc::POLLIN } else { 0 },
            revents: 0,
        });
        // SAFETY: `fds` is a live, exclusively borrowed array of `fds.len()` pollfd structs.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 5) };
        let mut open = Vec::with_capacity(conns.len());
        for ((mut c, mut sent), fd) in conns.into_iter().zip(&fds) {
            let mut alive = fd.revents & (libc::POLLERR | libc::POLLNVAL) == 0;
            if alive && fd.revents & (libc::POLLIN | libc::POLLHUP) != 0 {
                loop {
                    match c.read(&mut buf) {
                        Ok(0) => {
                            alive = false;
                            break;
                        }
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => {
                            alive = false;
                            break;
                        }
                    }
                }
            }
            if alive && fd.revents & libc::POLLOUT != 0 {
                let n = zeros.len().min(FAKE_PEER_BYTES - sent);
                match c.write(&zeros[..n]) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => alive = false,
                }
            }
            if alive {
                open.push((c, sent));
            }
        }
        conns = open;
    }
}

/// Closes every connection waiting in the worker's backlog (fake peers of a session that ended
/// before it accepted them).
fn empty_backlog(w: &World) {
    if w.backlog.set_nonblocking(true).is_err() {
        return;
    }
    while let Ok((c, _)) = w.backlog.accept() {
        let _ = c.shutdown(Shutdown::Both);
    }
    w.backlog
        .set_nonblocking(false)
        .expect("making the worker listener blocking again");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let w = world();
    let (stream, n_peers, accepted) = script(data, w.sink_port);
    let root = TcpStream::connect(("127.0.0.1", w.port)).expect("connecting to the worker");
    let _ = root.set_nodelay(true);
    // The peers this worker accepts connect after the root (the backlog keeps that order).
    let peers: Vec<TcpStream> = (0..accepted.min(MAX_FAKE_PEERS))
        .filter_map(|_| TcpStream::connect(("127.0.0.1", w.port)).ok())
        .filter(|c| c.set_nonblocking(true).is_ok())
        .collect();
    let stop = AtomicBool::new(false);
    let mut reader = root.try_clone().expect("cloning the root socket");
    let mut writer = root;
    let result = std::thread::scope(|s| {
        let writer = s.spawn(move || {
            for chunk in chunks(&stream) {
                if writer.write_all(chunk).is_err() {
                    break;
                }
            }
            let _ = writer.shutdown(Shutdown::Write);
        });
        let reader = s.spawn(move || {
            let mut buf = [0u8; 64 << 10];
            while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
        });
        let peers = (n_peers > 0).then(|| s.spawn(|| fake_peers(&w.sink, peers, &stop)));
        let mut log = |line: &str| {
            if w.verbose {
                eprintln!("worker: {line}");
            }
        };
        // Both of dllama's network modes: blocking reads for one length in four.
        let mut options = w.options.clone();
        options.turbo = !data.len().is_multiple_of(4);
        let result = serve_session(&w.listener, &options, &mut log);
        // The session's sockets are closed: the writer and reader end. Joined explicitly (the
        // scope's own wait returns before a thread has run its TLS destructors, and
        // LeakSanitizer then reports the thread's handle as leaked).
        stop.store(true, Ordering::Relaxed);
        writer.join().expect("the writer thread panicked");
        reader.join().expect("the reader thread panicked");
        if let Some(peers) = peers {
            peers.join().expect("the fake-peer thread panicked");
        }
        result
    });
    empty_backlog(w);
    // Ok or a typed error are both fine; the error must at least format.
    match result {
        Ok(forwards) if w.verbose => eprintln!("session: Ok after {forwards} forward(s)"),
        Ok(_) => {}
        Err(e) => {
            let text = e.to_string();
            if w.verbose {
                eprintln!("session: Err: {text}");
            }
        }
    }
});
