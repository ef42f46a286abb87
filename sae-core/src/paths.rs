//! Relative names read from files (a cache's image files and hook points, a dataset's shard
//! list, a model's weight map), resolved under their folder without leaving it.

use std::path::{Component, Path, PathBuf};

/// Whether a name may pass through symbolic links under its folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Refuse a symbolic link anywhere between the folder and the named file, the file included.
    Refuse,
    /// Follow them, for folders whose own layout links files elsewhere (a Hugging Face cache
    /// snapshot links each file to `../../blobs/<hash>`).
    Follow,
}

/// Why a name read from a file does not stay inside its folder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Escape {
    /// An absolute path (or, on Windows, one with a drive prefix).
    #[error("is an absolute path")]
    Absolute,
    /// A path with a `..` component.
    #[error("leaves the folder through `..`")]
    ParentDir,
    /// A path through a symbolic link (the link is named).
    #[error("passes through the symbolic link {}", .0.display())]
    Symlink(PathBuf),
}

/// `root/name`, refused when `name` is absolute, has a `..` component, or (with
/// [`Links::Refuse`]) passes through a symbolic link under `root` (`root` itself may be one).
/// The walk stops at the first part that does not exist: opening it then fails on its own.
pub fn join_inside(root: &Path, name: &str, links: Links) -> Result<PathBuf, Escape> {
    let mut parts = Vec::new();
    for component in Path::new(name).components() {
        match component {
            Component::Normal(part) => parts.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(Escape::ParentDir),
            Component::RootDir | Component::Prefix(_) => return Err(Escape::Absolute),
        }
    }
    let mut path = root.to_path_buf();
    let mut checking = links == Links::Refuse;
    for part in parts {
        path.push(part);
        if checking {
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_symlink() => return Err(Escape::Symlink(path)),
                Ok(_) => {}
                Err(_) => checking = false,
            }
        }
    }
    Ok(path)
}
