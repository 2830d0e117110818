//! Deciding what a path is (file, index, directory) and dispatching to the format parser.

use std::collections::BTreeMap;
use std::fs::{File, FileType};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{FormatError, TensorTable};

/// The name Hugging Face gives a sharded checkpoint's index.
pub const INDEX_FILE_NAME: &str = "model.safetensors.index.json";

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> FormatError {
    FormatError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens `path` for reading if it is a regular file; returns it with its size in bytes.
///
/// The type is checked before the open because opening a FIFO for reading blocks until a
/// writer appears (a hang, not an error), and again on the open descriptor, which is what the
/// reads will use.
pub(crate) fn open_regular(path: &Path) -> Result<(File, u64), FormatError> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    refuse_non_regular(path, meta.file_type())?;
    let f = File::open(path).map_err(|e| io_err(path, e))?;
    let meta = f.metadata().map_err(|e| io_err(path, e))?;
    refuse_non_regular(path, meta.file_type())?;
    Ok((f, meta.len()))
}

fn refuse_non_regular(path: &Path, ty: FileType) -> Result<(), FormatError> {
    if ty.is_file() {
        return Ok(());
    }
    Err(FormatError::NotRegularFile {
        path: path.to_path_buf(),
        kind: kind_of(ty),
    })
}

#[cfg(unix)]
fn kind_of(ty: FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ty.is_dir() {
        "a directory"
    } else if ty.is_fifo() {
        "a FIFO"
    } else if ty.is_socket() {
        "a socket"
    } else if ty.is_char_device() {
        "a character device"
    } else if ty.is_block_device() {
        "a block device"
    } else {
        "an unknown kind of file"
    }
}

#[cfg(not(unix))]
fn kind_of(ty: FileType) -> &'static str {
    match ty.is_dir() {
        true => "a directory",
        false => "an unknown kind of file",
    }
}

pub(crate) fn open(path: &Path) -> Result<TensorTable, FormatError> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    if meta.is_dir() {
        return open_dir(path);
    }
    if path.extension().is_some_and(|e| e == "json") {
        return crate::index::parse_index(path);
    }
    let mut magic = [0u8; 4];
    let (mut f, size_bytes) = open_regular(path)?;
    let got = read_up_to(&mut f, &mut magic).map_err(|e| io_err(path, e))?;
    if got == 4 && &magic == b"GGUF" {
        return crate::gguf::parse_gguf(path);
    }
    if path.extension().is_some_and(|e| e == "gguf") {
        if got < magic.len() {
            return Err(FormatError::Truncated {
                path: path.to_path_buf(),
                what: "the GGUF magic".into(),
                need_bytes: magic.len() as u64,
                have_bytes: size_bytes,
            });
        }
        return Err(crate::gguf::bad_magic(path, &magic));
    }
    let (file, tensors, metadata) = crate::safetensors::parse_safetensors(path, 0)?;
    TensorTable::from_parts(
        path.to_path_buf(),
        vec![file],
        tensors,
        metadata,
        Vec::new(),
    )
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A directory: its index if present, else all its `.safetensors` files (as one checkpoint),
/// else its single `.gguf` file.
fn open_dir(dir: &Path) -> Result<TensorTable, FormatError> {
    let index = dir.join(INDEX_FILE_NAME);
    // Whatever its type: an index that is not a regular file is refused, not passed over.
    if index.exists() {
        return crate::index::parse_index(&index);
    }
    let mut safetensors = Vec::new();
    let mut gguf = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let p = entry.path();
        if !p.is_file() {
            continue;
        }
        match p.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => safetensors.push(p),
            Some("gguf") => gguf.push(p),
            _ => {}
        }
    }
    safetensors.sort();
    gguf.sort();
    if !safetensors.is_empty() {
        return open_files(dir.to_path_buf(), &safetensors);
    }
    match gguf.len() {
        0 => Err(FormatError::UnknownFormat {
            path: dir.to_path_buf(),
            reason: format!("directory holds no {INDEX_FILE_NAME}, .safetensors or .gguf file"),
        }),
        1 => crate::gguf::parse_gguf(&gguf[0]),
        n => Err(FormatError::UnknownFormat {
            path: dir.to_path_buf(),
            reason: format!("directory holds {n} .gguf files; name the one to load"),
        }),
    }
}

/// Several safetensors files taken together as one checkpoint; names must be unique across them.
pub fn open_files(root: PathBuf, paths: &[PathBuf]) -> Result<TensorTable, FormatError> {
    let mut files = Vec::with_capacity(paths.len());
    let mut tensors = Vec::new();
    let mut metadata = BTreeMap::new();
    for (i, p) in paths.iter().enumerate() {
        let (file, ts, meta) = crate::safetensors::parse_safetensors(p, i)?;
        files.push(file);
        tensors.extend(ts);
        for (k, v) in meta {
            metadata.entry(k).or_insert(v);
        }
    }
    TensorTable::from_parts(root, files, tensors, metadata, Vec::new())
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use crate::{FormatError, TensorTable};

    /// Opens `path` on another thread, failing if that takes more than a few seconds (a read
    /// of a FIFO without a writer never returns).
    fn open_within_seconds(path: std::path::PathBuf) -> Result<TensorTable, FormatError> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(TensorTable::open(&path));
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("opening a non-regular file hangs")
    }

    #[cfg(unix)]
    #[test]
    fn non_regular_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.safetensors");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let fifo = dir.path().join("f.gguf");
        let made_fifo = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success());
        let mut cases = vec![
            (socket, "a socket"),
            ("/dev/null".into(), "a character device"),
        ];
        if made_fifo {
            cases.push((fifo, "a FIFO"));
        } else {
            eprintln!("no mkfifo: the FIFO case is left to the CLI tests");
        }
        for (path, kind) in cases {
            let e = open_within_seconds(path.clone()).unwrap_err();
            assert!(
                matches!(&e, FormatError::NotRegularFile { kind: k, .. } if *k == kind),
                "{}: {e}",
                path.display()
            );
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
    }

    #[test]
    fn an_index_that_is_not_a_file_is_refused_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(super::INDEX_FILE_NAME)).unwrap();
        let e = open_within_seconds(dir.path().to_path_buf()).unwrap_err();
        assert!(
            matches!(
                e,
                FormatError::NotRegularFile {
                    kind: "a directory",
                    ..
                }
            ),
            "{e}"
        );
    }
}
