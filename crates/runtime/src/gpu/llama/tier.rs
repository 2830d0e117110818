//! The tiers below the GPU: a streamed layer's matrices read from their file, into the
//! pinned tier at load or into staging at a step.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::stream::StreamedMat;
use crate::gpu::GpuError;

/// Bytes one thread reads at a time.
const READ_PIECE_BYTES: usize = 16 << 20;

/// Reads matrix `m` of `layer` as it is in its file into `dst` (its `bytes`).
pub(super) fn read_mat(
    files: &[Option<(PathBuf, File)>],
    layer: usize,
    m: &StreamedMat,
    dst: &mut [u8],
    threads: usize,
) -> Result<(), GpuError> {
    debug_assert_eq!(dst.len(), m.bytes);
    let Some((path, file)) = &files[m.file] else {
        unreachable!("Streamer::new opens every file a streamed matrix comes from")
    };
    read_at_parallel(file, m.file_offset, dst, threads).map_err(|source| GpuError::StreamRead {
        path: path.clone(),
        layer,
        source,
    })
}

/// Fills a pinned layer: each matrix read at its packed offset.
pub(super) fn fill(
    files: &[Option<(PathBuf, File)>],
    layer: usize,
    mats: &[StreamedMat],
    dst: &mut [u8],
    threads: usize,
) -> Result<(), GpuError> {
    for m in mats {
        read_mat(
            files,
            layer,
            m,
            &mut dst[m.offset..m.offset + m.bytes],
            threads,
        )?;
    }
    Ok(())
}

/// `pread`s `dst.len()` bytes at `offset` on up to `threads` threads, in pieces of
/// [`READ_PIECE_BYTES`]. Plain reads rather than hoist-io's engine: the destination is a
/// caller's pinned buffer filled at a step, where the engine plans whole tensors into its own
/// memory.
fn read_at_parallel(
    file: &File,
    offset: u64,
    dst: &mut [u8],
    threads: usize,
) -> std::io::Result<()> {
    let pieces: Vec<(u64, &mut [u8])> = dst
        .chunks_mut(READ_PIECE_BYTES)
        .enumerate()
        .map(|(i, c)| (offset + (i * READ_PIECE_BYTES) as u64, c))
        .collect();
    if pieces.len() <= 1 || threads <= 1 {
        for (at, c) in pieces {
            file.read_exact_at(c, at)?;
        }
        return Ok(());
    }
    let per = pieces.len().div_ceil(threads);
    let mut groups: Vec<Vec<(u64, &mut [u8])>> = Vec::new();
    let mut it = pieces.into_iter().peekable();
    while it.peek().is_some() {
        groups.push(it.by_ref().take(per).collect());
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = groups
            .into_iter()
            .map(|g| {
                scope.spawn(move || -> std::io::Result<()> {
                    for (at, c) in g {
                        file.read_exact_at(c, at)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_reads_return_the_file_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..(READ_PIECE_BYTES * 2 + 12345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        for threads in [1, 3] {
            let mut dst = vec![0u8; bytes.len() - 100];
            read_at_parallel(&file, 100, &mut dst, threads).unwrap();
            assert!(dst == bytes[100..], "threads {threads}");
        }
        // Past the end: an error, not a short read.
        let mut dst = vec![0u8; 200];
        assert!(read_at_parallel(&file, bytes.len() as u64 - 100, &mut dst, 2).is_err());
    }
}
