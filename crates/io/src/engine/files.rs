//! The plan's files, opened once per load: a buffered descriptor always, an O_DIRECT one where
//! the filesystem takes it (probed with one aligned read, since some filesystems accept the
//! flag at open and refuse the reads).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use super::IoError;
use crate::plan::Plan;

/// Open descriptors of a plan's files.
pub struct OpenFiles {
    buffered: Vec<File>,
    direct: Vec<Option<File>>,
    /// `path (error)` of each file whose O_DIRECT descriptor was refused.
    refused: Vec<String>,
}

impl OpenFiles {
    /// Opens every file of `plan`; with `want_direct`, also an O_DIRECT descriptor where
    /// possible (a refusal adds one line to `notes`).
    pub fn open(
        plan: &Plan,
        want_direct: bool,
        notes: &mut Vec<String>,
    ) -> Result<OpenFiles, IoError> {
        let mut buffered = Vec::with_capacity(plan.files.len());
        let mut direct = Vec::with_capacity(plan.files.len());
        let mut refused = Vec::new();
        for f in &plan.files {
            let b = File::open(&f.path).map_err(|source| IoError::Open {
                path: f.path.clone(),
                source,
            })?;
            buffered.push(b);
            if !want_direct {
                direct.push(None);
                continue;
            }
            match open_direct(&f.path, plan.config.align_bytes) {
                Ok(d) => direct.push(Some(d)),
                Err(e) => {
                    refused.push(format!("{} ({e})", f.path.display()));
                    direct.push(None);
                }
            }
        }
        if !refused.is_empty() {
            notes.push(format!(
                "O_DIRECT refused, reading through the page cache: {}",
                refused.join(", ")
            ));
        }
        Ok(OpenFiles {
            buffered,
            direct,
            refused,
        })
    }

    /// `path (error)` of each file whose O_DIRECT descriptor was refused (empty when none was
    /// asked for).
    pub fn direct_refused(&self) -> &[String] {
        &self.refused
    }

    /// The buffered descriptor of file `i`.
    pub fn buffered(&self, i: usize) -> &File {
        &self.buffered[i]
    }

    /// The O_DIRECT descriptor of file `i`, if the filesystem allows one.
    pub fn direct(&self, i: usize) -> Option<&File> {
        self.direct[i].as_ref()
    }

    pub(crate) fn count(&self) -> usize {
        self.buffered.len()
    }
}

fn open_direct(path: &std::path::Path, align_bytes: u64) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    // One aligned read proves the filesystem serves O_DIRECT reads, not only opens.
    let layout = std::alloc::Layout::from_size_align(align_bytes as usize, align_bytes as usize)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    // SAFETY: layout has non-zero size; freed below.
    let buf = unsafe { std::alloc::alloc(layout) };
    if buf.is_null() {
        return Err(std::io::Error::from(std::io::ErrorKind::OutOfMemory));
    }
    // SAFETY: buf holds align_bytes writable bytes, aligned as O_DIRECT requires.
    let rc = unsafe {
        libc::pread(
            f.as_raw_fd(),
            buf as *mut libc::c_void,
            align_bytes as usize,
            0,
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: allocated above with the same layout.
    unsafe { std::alloc::dealloc(buf, layout) };
    if rc < 0 {
        return Err(err);
    }
    Ok(f)
}
