//! The loaders hoist is compared with in `hoist bench`, written the way common loaders work.

use std::fs::File;

use hoist_format::TensorTable;

/// Per-tensor mmap + memcpy, one thread: what safetensors' `load_file` does (map the file,
/// copy each tensor into its own allocation). Returns the tensors in `selection` order.
pub fn per_tensor_mmap(table: &TensorTable, selection: &[usize]) -> std::io::Result<Vec<Vec<u8>>> {
    let mut maps = Vec::with_capacity(table.files.len());
    for f in &table.files {
        let file = File::open(&f.path)?;
        // SAFETY: read-only mapping of a checkpoint nobody writes during the benchmark.
        maps.push(unsafe { memmap2::Mmap::map(&file)? });
    }
    let mut out = Vec::with_capacity(selection.len());
    for &i in selection {
        let t = &table.tensors[i];
        let src = maps[t.file]
            .get(t.offset as usize..t.end() as usize)
            .ok_or_else(|| {
                std::io::Error::other(format!(
                    "{}: tensor '{}' is past the end of the file",
                    table.files[t.file].path.display(),
                    t.name
                ))
            })?;
        out.push(src.to_vec());
    }
    Ok(out)
}

/// One buffered sequential reader: each file read whole, front to back, by one thread into one
/// buffer; tensors are views into it.
pub fn sequential_read(table: &TensorTable) -> std::io::Result<Vec<Vec<u8>>> {
    table.files.iter().map(|f| std::fs::read(&f.path)).collect()
}
