//! Opening a file for direct I/O and finding the alignment its reads need.
//!
//! `O_DIRECT` reads bypass the page cache, so their buffer address, file offset and length must
//! be multiples of what the device (or file system) can transfer: its logical block size, not
//! the page size. Linux 6.1+ reports it per file with `statx(STATX_DIOALIGN)`; for a block
//! device the `BLKSSZGET` ioctl gives it; older kernels expose it for the file's device in
//! sysfs. When none of these answer we assume 4096, a multiple of every logical block size in
//! use, so the reads stay valid (just coarser).
//!
//! Some file systems (tmpfs, some FUSE and network mounts) refuse `O_DIRECT` at `open` with
//! `EINVAL`; the file is then opened for ordinary buffered reads, which need no alignment, and
//! [`OpenedFile::direct`] says so.
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The alignment used when the device does not report one.
pub const FALLBACK_ALIGN: usize = 4096;

/// Largest alignment accepted from the kernel or sysfs; anything larger is treated as garbage.
const MAX_ALIGN: usize = 1 << 20;

/// Where an alignment came from (reported so a user can tell a measured value from a guess).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlignSource {
    /// `statx(STATX_DIOALIGN)` on the open file.
    Statx,
    /// The `BLKSSZGET` ioctl (the file is a block device).
    BlockDevice,
    /// `/sys/dev/block/<major>:<minor>/queue/logical_block_size` of the file's device.
    Sysfs,
    /// Nothing answered: [`FALLBACK_ALIGN`].
    Assumed,
    /// The file is read through the page cache; no alignment is required, the reader still uses
    /// [`FALLBACK_ALIGN`] so both modes read the same ranges.
    Buffered,
}

/// The alignment direct reads of one file need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectAlignment {
    /// Buffer address alignment.
    pub memory: usize,
    /// File offset and length alignment.
    pub offset: usize,
    /// How it was found.
    pub source: AlignSource,
}

impl DirectAlignment {
    /// One alignment good for both the buffer and the file offset: the larger of the two
    /// (both are powers of two, so the larger is a multiple of the smaller).
    pub fn block(&self) -> usize {
        self.memory.max(self.offset)
    }
}

/// A file opened for streaming reads.
#[derive(Debug)]
pub struct OpenedFile {
    /// The file.
    pub file: File,
    /// Whether reads bypass the page cache (`O_DIRECT` was accepted).
    pub direct: bool,
    /// The alignment reads use.
    pub align: DirectAlignment,
    /// File size in bytes.
    pub len: u64,
}

/// Opens `path` read-only with `O_DIRECT` when `want_direct` (falling back to buffered reads
/// where the file system refuses it) and finds the alignment its direct reads need.
pub fn open_for_streaming(path: &Path, want_direct: bool) -> io::Result<OpenedFile> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut direct = false;
    let mut fd = -1;
    if want_direct {
        // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call; `open` does
        // not retain the pointer.
        fd = unsafe {
            libc::open(
                c_path.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECT | libc::O_CLOEXEC,
            )
        };
        if fd >= 0 {
            direct = true;
        } else {
            let err = io::Error::last_os_error();
            // EINVAL: the file system does not support O_DIRECT (tmpfs). Anything else (no such
            // file, permission) is the caller's problem and would fail buffered too.
            if err.raw_os_error() != Some(libc::EINVAL) {
                return Err(err);
            }
        }
    }
    if fd < 0 {
        // SAFETY: as above.
        fd = unsafe { libc::open(c_path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: `fd` was just returned by a successful `open` and is owned by nothing else; the
    // `File` takes ownership and closes it.
    let file = unsafe { File::from_raw_fd(fd) };
    let len = file.metadata()?.len();
    let align = if direct {
        probe_alignment(&file)
    } else {
        DirectAlignment {
            memory: FALLBACK_ALIGN,
            offset: FALLBACK_ALIGN,
            source: AlignSource::Buffered,
        }
    };
    Ok(OpenedFile {
        file,
        direct,
        align,
        len,
    })
}

fn sane(value: u64) -> Option<usize> {
    let v = usize::try_from(value).ok()?;
    (v.is_power_of_two() && v <= MAX_ALIGN).then_some(v)
}

/// The alignment of direct reads of `file`: statx, then `BLKSSZGET`, then sysfs, then
/// [`FALLBACK_ALIGN`].
pub fn probe_alignment(file: &File) -> DirectAlignment {
    let fd = file.as_raw_fd();
    // SAFETY: `statx` is plain old data; all-zero is a valid value of it.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the duration of the call, the empty path with AT_EMPTY_PATH
    // names that fd, and `stx` is a valid, writable `statx` the kernel fills.
    let rc = unsafe {
        libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN | libc::STATX_TYPE,
            &mut stx,
        )
    };
    if rc == 0
        && stx.stx_mask & libc::STATX_DIOALIGN != 0
        && let (Some(memory), Some(offset)) = (
            sane(u64::from(stx.stx_dio_mem_align)),
            sane(u64::from(stx.stx_dio_offset_align)),
        )
    {
        return DirectAlignment {
            memory,
            offset,
            source: AlignSource::Statx,
        };
    }
    let Ok(meta) = file.metadata() else {
        return assumed();
    };
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if meta.file_type().is_block_device() {
        let mut size: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one `int` through the pointer, which points at `size`, alive
        // for the call; `fd` is an open block device.
        let rc = unsafe { libc::ioctl(fd, libc::BLKSSZGET, &mut size as *mut libc::c_int) };
        if rc == 0
            && let Some(v) = u64::try_from(size).ok().and_then(sane)
        {
            return DirectAlignment {
                memory: v,
                offset: v,
                source: AlignSource::BlockDevice,
            };
        }
        return assumed();
    }
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    for rel in ["queue/logical_block_size", "../queue/logical_block_size"] {
        let path = format!("/sys/dev/block/{major}:{minor}/{rel}");
        if let Some(v) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .and_then(sane)
        {
            return DirectAlignment {
                memory: v,
                offset: v,
                source: AlignSource::Sysfs,
            };
        }
    }
    assumed()
}

fn assumed() -> DirectAlignment {
    DirectAlignment {
        memory: FALLBACK_ALIGN,
        offset: FALLBACK_ALIGN,
        source: AlignSource::Assumed,
    }
}
