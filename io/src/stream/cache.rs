//! Page-cache helpers around streaming: a read-only map for sparse lookups (the embedding
//! table, of which a forward touches a few rows) and dropping a file range from the cache.
use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::Path;

/// Asks the kernel to drop `range` of `file` from the page cache (`POSIX_FADV_DONTNEED`): clean
/// pages go at once, so the next read of them comes from the disk. Used after writing a spill
/// file (its pages should not sit in memory the budget does not count) and by benchmarks that
/// must not be served from the cache.
pub fn drop_cache(file: &File, range: Range<u64>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = range.end.saturating_sub(range.start);
    let (Ok(start), Ok(len)) = (i64::try_from(range.start), i64::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: `posix_fadvise` only reads its integer arguments; `file` keeps the fd open.
    let rc =
        unsafe { libc::posix_fadvise(file.as_raw_fd(), start, len, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// A whole file mapped read-only.
///
/// Mapping is what lets a sparse table be used without reading it: only the pages touched are
/// read (and count in memory). As with any file map, the file must not be truncated or
/// rewritten while mapped; model files are opened read-only and never written by airllama.
#[derive(Debug)]
pub struct MappedFile {
    map: memmap2::Mmap,
    file: File,
    path: std::path::PathBuf,
}

impl MappedFile {
    /// Maps `path` read-only.
    pub fn open(path: &Path) -> io::Result<MappedFile> {
        let file = File::open(path)?;
        // SAFETY: the map is read-only and private to this process; airllama never writes the
        // model file, and the documented contract is that nobody truncates it while mapped
        // (the same contract as every mmap-based model loader).
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(MappedFile {
            map,
            file,
            path: path.to_path_buf(),
        })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Checks that the file still covers the whole map. A mapped page past the end of a file
    /// that another process truncated raises SIGBUS when touched; calling this before each use
    /// turns that into an error naming the sizes (a truncation in the instant between the check
    /// and the read is the one window left).
    pub fn check_len(&self) -> io::Result<()> {
        let len = self.file.metadata()?.len();
        if len < self.map.len() as u64 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} shrank from {} to {len} bytes while it was mapped (truncated or \
                     rewritten by another process)",
                    self.path.display(),
                    self.map.len()
                ),
            ));
        }
        Ok(())
    }

    /// Unmaps the pages of `range` from this process (`MADV_DONTNEED`) and drops them from the
    /// page cache, so they are read from disk again when next touched: an mmap-based loader
    /// kept within a memory budget.
    pub fn release(&self, range: Range<u64>) -> io::Result<()> {
        let page = 4096u64;
        let start = range.start / page * page;
        let end = range.end.min(self.map.len() as u64);
        if start >= end {
            return Ok(());
        }
        // SAFETY: the map is read-only, so no page holds private modifications; dropping the
        // pages only makes the next access fault the same file bytes back in, and slices
        // borrowed from `bytes()` keep reading identical contents.
        unsafe {
            self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                start as usize,
                (end - start) as usize,
            )?;
        }
        drop_cache(&self.file, start..end)
    }
}
