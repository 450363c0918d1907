//! Standard output for commands whose reader may go away (`airllama chat | head`).
//!
//! Rust ignores SIGPIPE, so a write to a closed pipe returns `EPIPE`: `println!` then panics
//! (exit 101 with a backtrace hint), and a write whose error is ignored lets the command go on
//! generating at full CPU for nobody. Here a closed stdout ends the process the way C tools end
//! (`yes | head`): it dies of SIGPIPE, silently, and the shell sees status 141. Only stdout
//! writes do this: sockets keep getting `EPIPE` as an error, so a worker that hangs up is still
//! reported by name.
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Ends the process as SIGPIPE's default action would: the reader of stdout is gone, so
/// nothing is left to say. Cleanup signal handlers are not involved (SIGPIPE is not one of
/// theirs), and the workers of a root see their connection close.
pub fn reader_gone() -> ! {
    // SAFETY: restoring a signal's default action and raising it are plain libc calls with no
    // memory arguments; with SIG_DFL the raise terminates the process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    // Only reached if SIGPIPE is blocked in this thread: leave with the status a shell would
    // report for it.
    std::process::exit(128 + libc::SIGPIPE)
}

/// Set by `--json`: the live log is left out, so stdout holds only the JSON [`write_json`]
/// prints.
static QUIET: AtomicBool = AtomicBool::new(false);

/// Leaves the live log ([`write_out`], [`say`]) out from now on.
pub fn set_quiet() {
    QUIET.store(true, Ordering::Relaxed);
}

/// Writes `value` as pretty JSON and a line break to stdout, even when quiet.
pub fn write_json(value: &serde_json::Value) {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    write_raw(&text);
}

/// Writes `text` to stdout and flushes it (the output is a live log), unless [`set_quiet`]
/// was called. A closed stdout ends the process ([`reader_gone`]); other write errors (a full
/// disk behind a redirect) are ignored as `print!` callers expect nothing back.
pub fn write_out(text: &str) {
    if !QUIET.load(Ordering::Relaxed) {
        write_raw(text);
    }
}

fn write_raw(text: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        reader_gone();
    }
}

/// Writes `line` and a line break to stdout, flushed; see [`write_out`].
pub fn say(line: &str) {
    let mut text = String::with_capacity(line.len() + 1);
    text.push_str(line);
    text.push('\n');
    write_out(&text);
}

/// A panic hook for the `println!`s this module does not see (other commands, libraries): a
/// panic whose message is the standard library's "failed printing to stdout" over a broken
/// pipe ends the process quietly as [`reader_gone`] does; any other panic goes to the hook
/// that was installed before.
pub fn install_broken_pipe_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            reader_gone();
        }
        previous(info);
    }));
}
