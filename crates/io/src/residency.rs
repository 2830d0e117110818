//! Page-cache residency of file ranges (`mincore` over a read-only mapping that is never
//! touched, so asking costs no I/O) and eviction (`posix_fadvise(DONTNEED)`, checked).

use std::fs::File;
use std::path::Path;

/// Residency of one file's pages.
pub struct FileResidency {
    map: Option<memmap2::Mmap>,
    page_bytes: u64,
    scratch: Vec<u8>,
}

impl FileResidency {
    /// Prepares residency queries on `file` (maps it without reading it).
    pub fn new(file: &File) -> std::io::Result<FileResidency> {
        let len = file.metadata()?.len();
        // SAFETY: the mapping is only passed to mincore, never dereferenced, so a file changing
        // under it cannot cause a fault here.
        let map = if len == 0 {
            None
        } else {
            Some(unsafe { memmap2::MmapOptions::new().map(file)? })
        };
        Ok(FileResidency {
            map,
            page_bytes: page_bytes(),
            scratch: Vec::new(),
        })
    }

    /// Bytes of `[offset, offset + len)` whose pages are in the page cache.
    pub fn resident_bytes(&mut self, offset: u64, len: u64) -> std::io::Result<u64> {
        let Some(map) = &self.map else { return Ok(0) };
        let end = (offset + len).min(map.len() as u64);
        if offset >= end {
            return Ok(0);
        }
        let first = offset / self.page_bytes * self.page_bytes;
        let pages = (end - first).div_ceil(self.page_bytes) as usize;
        self.scratch.resize(pages, 0);
        // SAFETY: [first, end) lies inside the mapping and `first` is page-aligned; scratch has
        // one byte per page of that range, as mincore requires.
        let rc = unsafe {
            libc::mincore(
                map.as_ptr().add(first as usize) as *mut libc::c_void,
                (end - first) as usize,
                self.scratch.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let resident = self.scratch.iter().filter(|&&b| b & 1 == 1).count() as u64;
        Ok((resident * self.page_bytes).min(end - first))
    }

    /// Whether every page of `[offset, offset + len)` is in the page cache.
    pub fn is_resident(&mut self, offset: u64, len: u64) -> std::io::Result<bool> {
        let Some(map) = &self.map else {
            return Ok(false);
        };
        let end = (offset + len).min(map.len() as u64);
        let first = offset / self.page_bytes * self.page_bytes;
        Ok(self.resident_bytes(offset, len)? >= end.saturating_sub(first))
    }
}

impl FileResidency {
    /// Whether `[offset, offset + len)` looks cached, judged by `probes` pages spread evenly
    /// over it (first and last included). Asking about every page of a 13.5 GB checkpoint took
    /// ~150 ms on a 16-core host, a third of a warm load; a few pages per chunk answer the
    /// question that matters (read it buffered or direct?) in microseconds. A wrong guess costs
    /// speed, never correctness.
    pub fn probably_resident(
        &mut self,
        offset: u64,
        len: u64,
        probes: u64,
    ) -> std::io::Result<bool> {
        let pages = len.div_ceil(self.page_bytes).max(1);
        let probes = probes.clamp(1, pages);
        for k in 0..probes {
            let page = if probes == 1 {
                0
            } else {
                k * (pages - 1) / (probes - 1)
            };
            if !self.is_resident(offset + page * self.page_bytes, 1)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The system's page size.
pub fn page_bytes() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// What [`evict`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Eviction {
    /// File size.
    pub size_bytes: u64,
    /// Bytes cached before.
    pub resident_before_bytes: u64,
    /// Bytes still cached after (0 when eviction took).
    pub resident_after_bytes: u64,
}

/// Drops `path`'s pages from the page cache (flushing dirty ones first), without root, and
/// checks with `mincore` that they went.
pub fn evict(path: &Path) -> std::io::Result<Eviction> {
    let file = File::open(path)?;
    let size_bytes = file.metadata()?.len();
    let mut res = FileResidency::new(&file)?;
    let resident_before_bytes = res.resident_bytes(0, size_bytes)?;
    // Dirty pages are not dropped by DONTNEED; write them back first.
    file.sync_all()?;
    // SAFETY: fadvise on an open descriptor; offset 0 with length 0 means the whole file.
    let rc = unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
            0,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    let resident_after_bytes = res.resident_bytes(0, size_bytes)?;
    Ok(Eviction {
        size_bytes,
        resident_before_bytes,
        resident_after_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn evict_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mut f = File::create(&p).unwrap();
        f.write_all(&vec![7u8; 1 << 20]).unwrap();
        drop(f);
        let e = evict(&p).unwrap();
        assert_eq!(e.size_bytes, 1 << 20);
        // tmpfs cannot drop pages of a file that lives only in memory.
        if e.resident_after_bytes == 0 {
            let mut r = FileResidency::new(&File::open(&p).unwrap()).unwrap();
            assert!(!r.probably_resident(0, 1 << 20, 4).unwrap());
            let mut buf = Vec::new();
            File::open(&p).unwrap().read_to_end(&mut buf).unwrap();
            assert!(r.is_resident(0, 1 << 20).unwrap());
            assert!(r.probably_resident(0, 1 << 20, 4).unwrap());
            assert!(r.probably_resident(4096, 1, 4).unwrap());
        }
    }
}
