//! Output files that are never left half-written: not by an error, a panic, Ctrl-C or `kill`.
//!
//! `convert` and `gen-model` write each output to `<name>.partial` beside its target and rename
//! it into place only when every output is complete, so a truncated file never carries a name
//! that looks valid. [`PartialOutputs`] owns those partial files: dropping it (an error, a
//! panic) removes them, and [`PartialOutputs::commit`] renames them.
//!
//! A signal runs no destructor, so the partial paths are also kept in a static table of C
//! strings, filled before a file is created. A SIGINT, SIGTERM or SIGHUP handler unlinks every
//! path in it (`unlink` is async-signal-safe; nothing in the handler allocates or locks) and
//! then re-raises the signal with the default action, so the process still dies of it and its
//! parent sees the usual status (130 for Ctrl-C in a shell). A signal the process was started
//! with ignored (`nohup`, a background job of a non-interactive shell) stays ignored.
use std::cell::UnsafeCell;
use std::ffi::c_int;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

use anyhow::Context;

/// Signals after which no partial output may remain.
const SIGNALS: [c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Partial paths a process can have at once (`convert` has two, `gen-model` one).
const SLOTS: usize = 16;
/// Longest path (with its NUL) a slot holds: Linux's `PATH_MAX`.
const PATH_BYTES: usize = 4096;

/// Slot states. A slot only moves forward (free → filling → armed → retired) and is never
/// reused, so the handler can never read a path while it is being rewritten.
const FREE: u8 = 0;
const FILLING: u8 = 1;
const ARMED: u8 = 2;
const RETIRED: u8 = 3;

/// One partial path for the signal handler: a NUL-terminated absolute path, read by the
/// handler only while `state` is [`ARMED`].
struct Slot {
    state: AtomicU8,
    path: UnsafeCell<[u8; PATH_BYTES]>,
}

// SAFETY: `path` is written only by the thread that moved `state` from FREE to FILLING (so by
// one thread, once), and read (by the handler) only after `state` is ARMED, published with
// release/acquire ordering after the write; it is never written again after that.
unsafe impl Sync for Slot {}

impl Slot {
    const fn new() -> Slot {
        Slot {
            state: AtomicU8::new(FREE),
            path: UnsafeCell::new([0; PATH_BYTES]),
        }
    }
}

static TABLE: [Slot; SLOTS] = [const { Slot::new() }; SLOTS];

/// The handler: unlinks every armed partial path, then re-raises the signal. `SA_RESETHAND`
/// restored the default action on entry and the signal is blocked while the handler runs, so
/// the raised signal is delivered, and kills the process, as the handler returns.
extern "C" fn remove_partial_outputs(signal: c_int) {
    for slot in &TABLE {
        if slot.state.load(Ordering::Acquire) == ARMED {
            // SAFETY: an armed slot holds a NUL-terminated path that nobody writes any more
            // (see `Slot`); `unlink` is async-signal-safe.
            unsafe { libc::unlink(slot.path.get().cast()) };
        }
    }
    // SAFETY: `raise` is async-signal-safe; with the default action restored it terminates the
    // process once this handler returns.
    unsafe { libc::raise(signal) };
}

/// Installs the handler for [`SIGNALS`] once per process (except where a signal is ignored);
/// a failure is reported to every caller, not only the first.
fn install_handler() -> anyhow::Result<()> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| install_now().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn install_now() -> anyhow::Result<()> {
    for signal in SIGNALS {
        // SAFETY: `sigaction` fills the zeroed struct for `signal` without installing anything
        // (the new-action pointer is null).
        let old = unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut old) != 0 {
                return Err(std::io::Error::last_os_error()).context("reading a signal action");
            }
            old
        };
        if old.sa_sigaction == libc::SIG_IGN {
            continue;
        }
        // SAFETY: the action is fully initialised (zeroed, then every field set) and its
        // handler only calls async-signal-safe functions on static data; the mask blocks the
        // other cleanup signals so the handler never interrupts itself.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = remove_partial_outputs as extern "C" fn(c_int) as usize;
            action.sa_flags = libc::SA_RESETHAND;
            libc::sigemptyset(&mut action.sa_mask);
            for s in SIGNALS {
                libc::sigaddset(&mut action.sa_mask, s);
            }
            if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error())
                    .context("installing the interrupt handler");
            }
        }
    }
    Ok(())
}

/// Puts `path` in a free slot of the table and arms it; returns the slot.
fn arm(path: &Path) -> anyhow::Result<usize> {
    let bytes = path.as_os_str().as_bytes();
    anyhow::ensure!(
        !bytes.contains(&0),
        "{} contains a NUL byte",
        path.display()
    );
    anyhow::ensure!(
        bytes.len() < PATH_BYTES,
        "{} is longer than {} bytes",
        path.display(),
        PATH_BYTES - 1
    );
    let index = TABLE
        .iter()
        .position(|slot| {
            slot.state
                .compare_exchange(FREE, FILLING, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })
        .context("too many partial output files at once")?;
    let slot = &TABLE[index];
    // SAFETY: this thread moved the slot from FREE to FILLING, so it is the slot's only writer
    // and the handler does not read it until it is ARMED below; `bytes.len() < PATH_BYTES`
    // leaves room for the NUL (the slot's bytes start as zeros and were never written).
    unsafe {
        let dst = slot.path.get().cast::<u8>();
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len());
        *dst.add(bytes.len()) = 0;
    }
    slot.state.store(ARMED, Ordering::Release);
    Ok(index)
}

/// Takes slot `index` out of the handler's sight for good.
fn retire(index: usize) {
    TABLE[index].state.store(RETIRED, Ordering::Release);
}

/// `<path>.partial`: where an output is written until it is complete.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

/// One output being written.
#[derive(Debug)]
struct Output {
    slot: usize,
    partial: PathBuf,
    target: PathBuf,
}

/// The partial files of one command's outputs, removed unless [`PartialOutputs::commit`]
/// renames them into place: on drop (an error or a panic) and on SIGINT/SIGTERM/SIGHUP.
#[derive(Debug)]
pub struct PartialOutputs {
    outputs: Vec<Output>,
}

impl PartialOutputs {
    /// Installs the signal handler (once per process); no output yet.
    pub fn new() -> anyhow::Result<PartialOutputs> {
        install_handler()?;
        Ok(PartialOutputs {
            outputs: Vec::new(),
        })
    }

    /// Registers an output: returns the `<target>.partial` path to write it to, which from now
    /// on is removed by a signal or by dropping `self`. Call it before creating the file, so
    /// no instant exists in which the file is there and the handler does not know it.
    pub fn add(&mut self, target: &Path) -> anyhow::Result<PathBuf> {
        anyhow::ensure!(
            self.outputs.iter().all(|o| o.target != target),
            "{} is named as two outputs",
            target.display()
        );
        let partial = partial_path(target);
        // Absolute, so the handler's unlink does not depend on the working directory.
        let absolute = std::path::absolute(&partial)
            .with_context(|| format!("resolving {}", partial.display()))?;
        let slot = arm(&absolute)?;
        self.outputs.push(Output {
            slot,
            partial,
            target: target.to_path_buf(),
        });
        Ok(self.outputs.last().expect("just pushed").partial.clone())
    }

    /// Flushes every partial file to disk and renames each onto its target, with the cleanup
    /// signals held back meanwhile so an interrupt cannot land between two renames (one that
    /// arrives then is delivered after: the outputs are complete and the process dies of it).
    pub fn commit(mut self) -> anyhow::Result<()> {
        for o in &self.outputs {
            // Data first, then the name: a crash after the rename must not leave a complete
            // looking name over missing blocks.
            std::fs::File::open(&o.partial)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("flushing {}", o.partial.display()))?;
        }
        let blocked = SignalBlock::new();
        let mut renamed = 0;
        let result = self.outputs.iter().try_for_each(|o| {
            std::fs::rename(&o.partial, &o.target).with_context(|| {
                format!("renaming {} to {}", o.partial.display(), o.target.display())
            })?;
            retire(o.slot);
            renamed += 1;
            Ok(())
        });
        self.outputs.drain(..renamed);
        drop(blocked);
        result
    }
}

impl Drop for PartialOutputs {
    fn drop(&mut self) {
        for o in self.outputs.drain(..) {
            // Best effort: the file may never have been created.
            let _ = std::fs::remove_file(&o.partial);
            retire(o.slot);
        }
    }
}

/// [`SIGNALS`] blocked for this thread while alive (the previous mask comes back on drop).
struct SignalBlock {
    old: libc::sigset_t,
}

impl SignalBlock {
    fn new() -> SignalBlock {
        // SAFETY: both sets are initialised by `sigemptyset`/`pthread_sigmask` before use, and
        // changing this thread's mask affects nothing else.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in SIGNALS {
                libc::sigaddset(&mut set, s);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            SignalBlock { old }
        }
    }
}

impl Drop for SignalBlock {
    fn drop(&mut self) {
        // SAFETY: restores the mask `new` saved for this same thread (the block lives on one
        // thread's stack; it is neither Send nor shared).
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("airllama-cleanup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn dropped_outputs_are_removed_and_committed_ones_renamed() {
        let dir = scratch("x").parent().unwrap().to_path_buf();
        let (a, b) = (dir.join("a.m"), dir.join("b.t"));
        let mut outputs = PartialOutputs::new().unwrap();
        let pa = outputs.add(&a).unwrap();
        assert_eq!(pa, dir.join("a.m.partial"));
        std::fs::write(&pa, b"model").unwrap();
        assert!(outputs.add(&a).is_err(), "the same target twice");
        drop(outputs);
        assert!(!pa.exists() && !a.exists());

        let mut outputs = PartialOutputs::new().unwrap();
        let pa = outputs.add(&a).unwrap();
        let pb = outputs.add(&b).unwrap();
        std::fs::write(&pa, b"model").unwrap();
        std::fs::write(&pb, b"tokens").unwrap();
        outputs.commit().unwrap();
        assert!(!pa.exists() && !pb.exists());
        assert_eq!(std::fs::read(&a).unwrap(), b"model");
        assert_eq!(std::fs::read(&b).unwrap(), b"tokens");
        // Every slot used above is retired, never handed out again.
        let armed = TABLE
            .iter()
            .filter(|s| s.state.load(Ordering::Acquire) == ARMED)
            .count();
        assert_eq!(armed, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
