//! The marker that makes a directory a hoist-made synthetic checkpoint, and the rules built on
//! it: hoist writes only into a missing or empty directory or one it marked, and removes only
//! the files its marker lists, so a mistyped directory can never cost anyone their data.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::error::{io_err, SynthError};
use crate::writer::{partial_path, write_atomic};

/// The marker's file name. It lists the files hoist wrote; hidden, as it is bookkeeping.
pub const MARKER_FILE_NAME: &str = ".hoist-synthetic.json";
/// Version of the marker's contents: a marker of another version is not trusted.
const MARKER_VERSION: u64 = 1;
/// Entries named in errors, at most.
const ENTRIES_SHOWN: usize = 4;

/// One file hoist wrote into a synthetic checkpoint directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarkedFile {
    /// File name inside the directory.
    pub name: String,
    /// Its size when hoist finished it; `None` while the checkpoint is being written.
    pub bytes: Option<u64>,
}

/// What a marker records.
#[derive(Clone, Debug, PartialEq)]
pub struct Marker {
    /// The preset written, where the layout is one (`None` for a custom layout).
    pub preset: Option<String>,
    /// The layout (`ModelSpec`'s debug form): a checkpoint is reused only for the same one.
    pub layout: String,
    /// Seed of the contents.
    pub seed: u64,
    /// Whether every file was written; false marks an interrupted write, to be redone.
    pub complete: bool,
    /// Whether hoist created the directory (and so may remove it once empty).
    pub created_dir: bool,
    /// Files hoist wrote (or, while incomplete, is writing), the marker itself excluded.
    pub files: Vec<MarkedFile>,
}

impl Marker {
    fn to_json(&self) -> Value {
        let files: Vec<Value> = self
            .files
            .iter()
            .map(|f| json!({ "name": f.name, "bytes": f.bytes }))
            .collect();
        json!({
            "hoist_synthetic": MARKER_VERSION,
            "preset": self.preset,
            "layout": self.layout,
            "seed": self.seed,
            "complete": self.complete,
            "created_dir": self.created_dir,
            "files": files,
        })
    }

    fn from_json(v: &Value) -> Result<Marker, String> {
        if v["hoist_synthetic"].as_u64() != Some(MARKER_VERSION) {
            return Err(format!("hoist_synthetic is not {MARKER_VERSION}"));
        }
        let text = |key: &str| {
            v[key]
                .as_str()
                .map(str::to_string)
                .ok_or(format!("no {key}"))
        };
        let flag = |key: &str| v[key].as_bool().ok_or(format!("no {key}"));
        let mut files = Vec::new();
        for f in v["files"].as_array().ok_or("no files")? {
            let name = f["name"].as_str().ok_or("a file without a name")?;
            // The list decides what hoist deletes: nothing outside the directory, ever.
            let plain = !name.is_empty()
                && !name.contains(['/', '\0'])
                && name != "."
                && name != ".."
                && name != MARKER_FILE_NAME;
            if !plain {
                return Err(format!("'{name}' is not a file name"));
            }
            let bytes = match &f["bytes"] {
                Value::Null => None,
                b => Some(b.as_u64().ok_or(format!("{name}: bytes is not a size"))?),
            };
            files.push(MarkedFile {
                name: name.to_string(),
                bytes,
            });
        }
        let complete = flag("complete")?;
        if complete && files.iter().any(|f| f.bytes.is_none()) {
            return Err("a complete checkpoint with a file of unknown size".into());
        }
        Ok(Marker {
            preset: v["preset"].as_str().map(str::to_string),
            layout: text("layout")?,
            seed: v["seed"].as_u64().ok_or("no seed")?,
            complete,
            created_dir: flag("created_dir")?,
            files,
        })
    }

    /// The marker in `dir`, or `None` where there is none.
    pub fn read(dir: &Path) -> Result<Option<Marker>, SynthError> {
        let path = dir.join(MARKER_FILE_NAME);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path, "read")(e)),
        };
        let bad = |reason: String| SynthError::BadMarker {
            path: path.clone(),
            reason,
        };
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        Marker::from_json(&v).map(Some).map_err(bad)
    }

    /// Writes the marker into `dir` through a temporary file, so it is never seen half-written.
    pub(crate) fn write(&self, dir: &Path) -> Result<(), SynthError> {
        write_atomic(
            &dir.join(MARKER_FILE_NAME),
            self.to_json().to_string().as_bytes(),
        )
    }

    fn owns(&self, name: &str) -> bool {
        let partial = |n: &str| format!("{n}{}", crate::writer::PARTIAL_SUFFIX);
        name == MARKER_FILE_NAME
            || name == partial(MARKER_FILE_NAME)
            || self
                .files
                .iter()
                .any(|f| f.name == name || partial(&f.name) == name)
    }
}

/// What a directory holds, as far as synthetic checkpoints go.
#[derive(Clone, Debug, PartialEq)]
pub enum DirState {
    /// No such directory: hoist may create it.
    Missing,
    /// An empty directory (leftovers of an interrupted marker write aside).
    Empty,
    /// A directory hoist marked.
    Synthetic {
        /// Its marker.
        marker: Marker,
        /// Entries hoist did not write (added by someone since): hoist leaves them alone.
        others: Vec<String>,
    },
}

/// What `dir` holds; [`SynthError::NotOurs`] where it holds anything without hoist's marker.
pub fn inspect_dir(dir: &Path) -> Result<DirState, SynthError> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(DirState::Missing),
        Err(e) => return Err(io_err(dir, "read")(e)),
        Ok(m) if !m.is_dir() => {
            return Err(SynthError::NotADirectory {
                path: dir.to_path_buf(),
            })
        }
        Ok(_) => {}
    }
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err(dir, "read"))? {
        let e = e.map_err(io_err(dir, "read"))?;
        entries.push(e.file_name().to_string_lossy().into_owned());
    }
    entries.sort();
    match Marker::read(dir)? {
        Some(marker) => {
            entries.retain(|n| !marker.owns(n));
            Ok(DirState::Synthetic {
                marker,
                others: entries,
            })
        }
        None => {
            let marker_partial = partial_path(Path::new(MARKER_FILE_NAME));
            entries.retain(|n| Path::new(n) != marker_partial);
            if entries.is_empty() {
                return Ok(DirState::Empty);
            }
            let mut shown = entries[..entries.len().min(ENTRIES_SHOWN)].join(", ");
            if entries.len() > ENTRIES_SHOWN {
                shown.push_str(&format!(" and {} more", entries.len() - ENTRIES_SHOWN));
            }
            Err(SynthError::NotOurs {
                dir: dir.to_path_buf(),
                entries: shown,
            })
        }
    }
}

/// Whether `f` is still in `dir` as hoist wrote it: `Ok(false)` where it is gone,
/// [`SynthError::Changed`] where something else now has its name.
pub(crate) fn still_ours(dir: &Path, f: &MarkedFile) -> Result<bool, SynthError> {
    let path = dir.join(&f.name);
    let m = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(&path, "read")(e)),
    };
    let found = if m.file_type().is_symlink() {
        "now a symbolic link".to_string()
    } else if !m.is_file() {
        "no longer a regular file".to_string()
    } else {
        match f.bytes {
            Some(b) if b != m.len() => format!("{} bytes, hoist wrote {b}", m.len()),
            _ => return Ok(true),
        }
    };
    Err(SynthError::Changed { path, found })
}

/// Removes the files `marker` lists from `dir` (and their temporaries), after checking every
/// one is still hoist's, so a refusal removes nothing; the marker itself goes last, and only
/// with `and_marker`. Returns the paths removed.
pub(crate) fn remove_own_files(
    dir: &Path,
    marker: &Marker,
    and_marker: bool,
) -> Result<Vec<PathBuf>, SynthError> {
    let mut doomed = Vec::new();
    for f in &marker.files {
        if still_ours(dir, f)? {
            doomed.push(dir.join(&f.name));
        }
        doomed.push(partial_path(&dir.join(&f.name)));
    }
    let marker_path = dir.join(MARKER_FILE_NAME);
    doomed.push(partial_path(&marker_path));
    if and_marker {
        doomed.push(marker_path);
    }
    let mut removed = Vec::new();
    for path in doomed {
        // Temporaries may not exist; a directory under a temporary's name is not hoist's.
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => {}
            _ => continue,
        }
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path, "remove")(e)),
        }
    }
    Ok(removed)
}

/// What [`remove_checkpoint`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removal {
    /// Files removed, the marker included.
    pub removed: Vec<PathBuf>,
    /// Entries left in place because hoist did not write them.
    pub kept: Vec<String>,
    /// Whether the directory went too (hoist created it and nothing else was left in it).
    pub dir_removed: bool,
}

/// Removes the synthetic checkpoint in `dir`: exactly the files its marker lists, then the
/// directory if hoist created it and it is left empty. A directory without hoist's marker is
/// refused ([`SynthError::NotOurs`]) unless empty; a listed file that changed since hoist wrote
/// it is refused ([`SynthError::Changed`]) before anything is removed.
pub fn remove_checkpoint(dir: &Path) -> Result<Removal, SynthError> {
    let (marker, others) = match inspect_dir(dir)? {
        DirState::Missing | DirState::Empty => return Ok(Removal::default()),
        DirState::Synthetic { marker, others } => (marker, others),
    };
    let removed = remove_own_files(dir, &marker, true)?;
    let dir_removed = marker.created_dir
        && others.is_empty()
        && match std::fs::remove_dir(dir) {
            Ok(()) => true,
            // Someone added a file meanwhile: theirs, so the directory stays.
            Err(e) if e.kind() == ErrorKind::DirectoryNotEmpty => false,
            Err(e) => return Err(io_err(dir, "remove")(e)),
        };
    Ok(Removal {
        removed,
        kept: others,
        dir_removed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{prepare_checkpoint, preset, ModelSpec};

    /// A fresh directory path (not created) inside a temporary directory removed when dropped.
    struct Scratch(tempfile::TempDir);
    impl Scratch {
        fn new(test: &str) -> Scratch {
            Scratch(
                tempfile::Builder::new()
                    .prefix(&format!("hoist-synth-marker-{test}-"))
                    .tempdir()
                    .unwrap(),
            )
        }
        fn dir(&self) -> PathBuf {
            self.0.path().join("ckpt")
        }
    }

    fn tiny() -> ModelSpec {
        preset("tiny").unwrap().spec
    }

    fn prepare(spec: &ModelSpec, dir: &Path, seed: u64) -> Result<crate::Prepared, SynthError> {
        prepare_checkpoint(spec, dir, seed, &mut |_| {})
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    const TINY_FILES: [&str; 3] = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ];

    #[test]
    fn a_fresh_checkpoint_is_marked_then_reused() {
        let s = Scratch::new("fresh");
        let dir = s.dir();
        let mut written = 0u64;
        let p = prepare_checkpoint(&tiny(), &dir, 1, &mut |b| written += b).unwrap();
        assert!(!p.reused);
        assert_eq!(written, tiny().total_bytes());
        let m = Marker::read(&dir).unwrap().unwrap();
        assert_eq!(m.preset.as_deref(), Some("tiny"));
        assert!(m.complete && m.created_dir);
        let listed: Vec<&str> = m.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(listed, TINY_FILES);
        for f in &m.files {
            let len = std::fs::metadata(dir.join(&f.name)).unwrap().len();
            assert_eq!(f.bytes, Some(len));
        }
        let mut again = 0u64;
        let p = prepare_checkpoint(&tiny(), &dir, 1, &mut |b| again += b).unwrap();
        assert!(p.reused);
        assert_eq!(again, 0, "a reused checkpoint is not rewritten");
    }

    #[test]
    fn a_directory_without_the_marker_is_refused_untouched() {
        let s = Scratch::new("foreign");
        let dir = s.dir();
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("model.safetensors"), b"someone's weights").unwrap();
        let e = prepare(&tiny(), &dir, 1).unwrap_err();
        assert!(
            matches!(e, SynthError::NotOurs { .. }) && e.to_string().contains("model.safetensors"),
            "{e}"
        );
        assert!(matches!(
            remove_checkpoint(&dir),
            Err(SynthError::NotOurs { .. })
        ));
        assert_eq!(names(&dir), ["model.safetensors"]);
        assert_eq!(
            std::fs::read(dir.join("model.safetensors")).unwrap(),
            b"someone's weights"
        );
        let file = s.0.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            prepare(&tiny(), &file, 1),
            Err(SynthError::NotADirectory { .. })
        ));
    }

    #[test]
    fn removal_takes_exactly_the_listed_files() {
        let s = Scratch::new("remove");
        let dir = s.dir();
        prepare(&tiny(), &dir, 1).unwrap();
        std::fs::write(dir.join("config.json"), b"{}").unwrap();
        let r = remove_checkpoint(&dir).unwrap();
        assert_eq!(r.removed.len(), 4, "{r:?}");
        assert_eq!(r.kept, ["config.json"]);
        assert!(!r.dir_removed);
        assert_eq!(names(&dir), ["config.json"]);

        // A directory the user made stays, empty; one hoist made goes.
        std::fs::remove_file(dir.join("config.json")).unwrap();
        prepare(&tiny(), &dir, 1).unwrap();
        let r = remove_checkpoint(&dir).unwrap();
        assert!(!r.dir_removed);
        assert!(names(&dir).is_empty());
        std::fs::remove_dir(&dir).unwrap();
        prepare(&tiny(), &dir, 1).unwrap();
        assert!(remove_checkpoint(&dir).unwrap().dir_removed);
        assert!(!dir.exists());
        assert_eq!(remove_checkpoint(&dir).unwrap(), Removal::default());
    }

    #[test]
    fn a_replaced_file_is_neither_reused_overwritten_nor_removed() {
        let s = Scratch::new("changed");
        let dir = s.dir();
        prepare(&tiny(), &dir, 1).unwrap();
        let shard = dir.join(TINY_FILES[0]);
        std::fs::write(&shard, b"the user's own file now").unwrap();
        for seed in [1, 2] {
            let e = prepare(&tiny(), &dir, seed).unwrap_err();
            assert!(matches!(e, SynthError::Changed { .. }), "{e}");
        }
        let e = remove_checkpoint(&dir).unwrap_err();
        assert!(e.to_string().contains(TINY_FILES[0]), "{e}");
        assert_eq!(std::fs::read(&shard).unwrap(), b"the user's own file now");
        assert_eq!(names(&dir).len(), 4, "nothing was removed");
    }

    #[test]
    fn another_layout_replaces_only_hoists_files() {
        let s = Scratch::new("relayout");
        let dir = s.dir();
        prepare(&tiny(), &dir, 1).unwrap();
        std::fs::write(dir.join("config.json"), b"{}").unwrap();
        let one_file = ModelSpec {
            max_shard_bytes: None,
            ..tiny()
        };
        let p = prepare(&one_file, &dir, 1).unwrap();
        assert!(!p.reused);
        assert_eq!(p.root, dir.join("model.safetensors"));
        assert_eq!(
            names(&dir),
            [MARKER_FILE_NAME, "config.json", "model.safetensors"]
        );
        let m = Marker::read(&dir).unwrap().unwrap();
        assert_eq!(m.preset, None, "a custom layout");
        assert!(m.created_dir, "still the directory hoist created");

        // A new layout's file name taken by someone else's file: refused, nothing removed.
        std::fs::write(dir.join(TINY_FILES[0]), b"mine").unwrap();
        let before = names(&dir);
        let e = prepare(&tiny(), &dir, 1).unwrap_err();
        assert!(matches!(e, SynthError::NotOurs { .. }), "{e}");
        assert_eq!(names(&dir), before);
    }

    #[test]
    fn a_marker_naming_paths_outside_is_not_trusted() {
        let s = Scratch::new("escape");
        let dir = s.dir();
        std::fs::create_dir(&dir).unwrap();
        let victim = s.0.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let marker = serde_json::json!({
            "hoist_synthetic": 1, "preset": "tiny", "layout": "x", "seed": 1,
            "complete": true, "created_dir": true,
            "files": [{ "name": "../victim", "bytes": 4 }],
        });
        std::fs::write(dir.join(MARKER_FILE_NAME), marker.to_string()).unwrap();
        for e in [
            remove_checkpoint(&dir).unwrap_err(),
            prepare(&tiny(), &dir, 1).unwrap_err(),
        ] {
            assert!(matches!(e, SynthError::BadMarker { .. }), "{e}");
        }
        assert!(victim.exists());
    }

    #[test]
    fn an_interrupted_write_is_redone() {
        let s = Scratch::new("interrupted");
        let dir = s.dir();
        std::fs::create_dir(&dir).unwrap();
        // What a write killed in its first shard leaves: the incomplete marker and a temporary.
        let pending = Marker {
            preset: Some("tiny".into()),
            layout: format!("{:?}", tiny()),
            seed: 1,
            complete: false,
            created_dir: false,
            files: TINY_FILES
                .iter()
                .map(|n| MarkedFile {
                    name: n.to_string(),
                    bytes: None,
                })
                .collect(),
        };
        pending.write(&dir).unwrap();
        let partial = partial_path(&dir.join(TINY_FILES[0]));
        std::fs::write(&partial, b"half").unwrap();
        let p = prepare(&tiny(), &dir, 1).unwrap();
        assert!(!p.reused);
        assert!(!partial.exists());
        let m = Marker::read(&dir).unwrap().unwrap();
        assert!(m.complete && !m.created_dir);
        assert_eq!(names(&dir).len(), 4);

        // Only the marker's own temporary (killed while writing it): as good as empty.
        let bare = s.0.path().join("bare");
        std::fs::create_dir(&bare).unwrap();
        std::fs::write(partial_path(&bare.join(MARKER_FILE_NAME)), b"{").unwrap();
        assert_eq!(inspect_dir(&bare).unwrap(), DirState::Empty);
    }
}
