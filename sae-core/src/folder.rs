//! Output folders that survive crashes and second writers: an exclusive lock per folder
//! ([`FolderLock`]: one run, cache or conversion writes a folder at a time), folders written
//! whole beside their place and swapped in ([`write_dir_atomically`]: a kill or a full disk at
//! any moment leaves the old folder or the new one, never a mix), and the removal of what a
//! killed writer left behind ([`remove_leftovers`]).
//!
//! Every helper file lives beside the folder, named after it: `.NAME.lock` (kept: removing a
//! lock file others may have open would let two writers in), `.NAME.tmp-PID` (a folder being
//! written) and `.NAME.old-PID` (the folder being replaced).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, SaeError};

/// The exclusive right to write a folder, held until dropped (or the process ends, however it
/// ends: the operating system releases the lock).
#[derive(Debug)]
pub struct FolderLock {
    _file: File,
}

impl FolderLock {
    /// Takes the lock of `dir` (which need not exist yet; its parent is created), or fails with
    /// [`SaeError::InUse`] naming the process that holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = beside(dir, "lock")?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(SaeError::io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(SaeError::InUse {
                    dir: dir.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(SaeError::io(&path)(e)),
        }
        // The holder's process id, for the message a second writer gets.
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        written.map_err(SaeError::io(&path))?;
        Ok(FolderLock { _file: file })
    }
}

/// The path of `dir`'s helper `.NAME.<suffix>` beside it.
fn beside(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let (parent, name) = parent_and_name(dir)?;
    Ok(parent.join(format!(".{name}.{suffix}")))
}

/// `dir`'s parent folder (created, symlinks and `..` resolved, so that every spelling of a
/// folder finds the same lock) and its name.
fn parent_and_name(dir: &Path) -> Result<(PathBuf, String)> {
    let absolute = std::path::absolute(dir).map_err(SaeError::io(dir))?;
    let resolved = absolute.canonicalize().unwrap_or(absolute);
    let (Some(parent), Some(name)) = (resolved.parent(), resolved.file_name()) else {
        return Err(SaeError::io(dir)(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "an output folder needs a parent folder to stage its files in",
        )));
    };
    std::fs::create_dir_all(parent).map_err(SaeError::io(parent))?;
    let parent = parent.canonicalize().map_err(SaeError::io(parent))?;
    Ok((parent, name.to_string_lossy().into()))
}

/// Clears what a killed writer of `dir` left beside it: a folder it had moved aside to replace
/// `dir` goes back in place when `dir` is missing; temporary folders are removed. Call it holding
/// `dir`'s [`FolderLock`], so that no live writer's folder is taken.
pub fn remove_leftovers(dir: &Path) -> Result<()> {
    let (parent, name) = parent_and_name(dir)?;
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return Ok(());
    };
    let (tmp, old) = (format!(".{name}.tmp-"), format!(".{name}.old-"));
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let file = p.file_name().unwrap_or_default().to_string_lossy();
            file.starts_with(&tmp) || file.starts_with(&old)
        })
        .collect();
    found.sort();
    let place = parent.join(&name);
    for path in found {
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        if file.starts_with(&old) && std::fs::symlink_metadata(&place).is_err() {
            std::fs::rename(&path, &place).map_err(SaeError::io(&place))?;
        } else {
            remove_path(&path)?;
        }
    }
    Ok(())
}

/// Runs `write` on a fresh temporary folder beside `dir`, flushes what it wrote to disk and
/// swaps it in for `dir` (see [`replace_dir`]). On an error the temporary folder is removed and
/// `dir` is untouched.
pub fn write_dir_atomically<E: From<SaeError>>(
    dir: &Path,
    write: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    write_dir_with(dir, write, exchange, &mut |_| Ok(()))
}

/// [`write_dir_atomically`] with [`replace`]'s `exchange` and `fault`.
pub(crate) fn write_dir_with<E: From<SaeError>>(
    dir: &Path,
    write: impl FnOnce(&Path) -> std::result::Result<(), E>,
    exchange: Exchange,
    fault: &mut dyn FnMut(ReplaceStep) -> std::io::Result<()>,
) -> std::result::Result<(), E> {
    let tmp = beside(dir, &format!("tmp-{}", std::process::id()))?;
    let result = (|| {
        if tmp.exists() {
            remove_path(&tmp)?;
        }
        std::fs::create_dir_all(&tmp).map_err(SaeError::io(&tmp))?;
        write(&tmp)?;
        sync_tree(&tmp)?;
        replace(&tmp, dir, exchange, fault)?;
        Ok(())
    })();
    if result.is_err() && tmp.exists() {
        let _ = remove_path(&tmp);
    }
    result
}

/// Puts the complete folder `new` in place of `dir` and removes the old `dir`. Where the file
/// system can exchange two names atomically (Linux's `renameat2(RENAME_EXCHANGE)`), `dir` is at
/// every moment either the old folder or the new one. Elsewhere the old folder is moved aside,
/// the new one moved in, then the old one removed: an error between those steps moves the old
/// folder back, and after a kill there [`remove_leftovers`] does.
pub fn replace_dir(new: &Path, dir: &Path) -> Result<()> {
    replace(new, dir, exchange, &mut |_| Ok(()))
}

/// A way to exchange two names atomically: `Ok(false)` where the file system cannot.
pub(crate) type Exchange = fn(&Path, &Path) -> std::io::Result<bool>;

/// The moments of [`replace`] at which a test injects a failure (a kill, a full disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplaceStep {
    /// (Without an atomic exchange) the old folder is moved aside, the new one not yet in.
    MovedAside,
    /// The new folder has taken `dir`'s place; the old one is still beside it.
    Swapped,
}

/// [`replace_dir`] with the exchange it tries (`exchange`, or a stand-in that cannot) and
/// `fault` called at each [`ReplaceStep`].
pub(crate) fn replace(
    new: &Path,
    dir: &Path,
    exchange: Exchange,
    fault: &mut dyn FnMut(ReplaceStep) -> std::io::Result<()>,
) -> Result<()> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if std::fs::symlink_metadata(dir).is_err() {
        std::fs::rename(new, dir).map_err(SaeError::io(dir))?;
        return sync_dir(parent);
    }
    if exchange(new, dir).map_err(SaeError::io(dir))? {
        // `new` now holds the old folder.
        fault(ReplaceStep::Swapped).map_err(SaeError::io(dir))?;
        sync_dir(parent)?;
        return remove_path(new);
    }
    let old = beside(dir, &format!("old-{}", std::process::id()))?;
    std::fs::rename(dir, &old).map_err(SaeError::io(dir))?;
    let moved_in = fault(ReplaceStep::MovedAside).and_then(|()| std::fs::rename(new, dir));
    if let Err(e) = moved_in {
        let _ = std::fs::rename(&old, dir);
        return Err(SaeError::io(dir)(e));
    }
    fault(ReplaceStep::Swapped).map_err(SaeError::io(dir))?;
    sync_dir(parent)?;
    remove_path(&old)
}

/// Exchanges the names `a` and `b` atomically; `false` where the system cannot.
#[cfg(target_os = "linux")]
pub(crate) fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: both paths are NUL-terminated strings that live across the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => Ok(false),
        _ => Err(error),
    }
}

/// Exchanges the names `a` and `b` atomically; `false` where the system cannot.
#[cfg(not(target_os = "linux"))]
pub(crate) fn exchange(_: &Path, _: &Path) -> std::io::Result<bool> {
    Ok(false)
}

/// Removes a file or a folder with everything in it (a symlink itself, never its target).
fn remove_path(path: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(path).map_err(SaeError::io(path))?;
    let removed = if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    removed.map_err(SaeError::io(path))
}

/// Flushes every file under `dir` to disk, then `dir` itself.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(SaeError::io(dir))? {
        let path = entry.map_err(SaeError::io(dir))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(SaeError::io(&path))?;
        }
    }
    sync_dir(dir)
}

/// Flushes a folder's entries (the renames into it) to disk.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(SaeError::io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(root: &Path, name: &str, text: &str) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a"), text).unwrap();
        dir
    }

    fn text(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("a")).unwrap()
    }

    fn names(root: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_second_lock_of_a_folder_names_the_holder() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("run");
        let held = FolderLock::acquire(&dir).unwrap();
        match FolderLock::acquire(&root.path().join("x/../run")) {
            Err(SaeError::InUse { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("the second lock was not refused: {other:?}"),
        }
        drop(held);
        FolderLock::acquire(&dir).unwrap();
    }

    /// The stand-in for a file system without an atomic exchange.
    fn cannot_exchange(_: &Path, _: &Path) -> std::io::Result<bool> {
        Ok(false)
    }

    fn fail_at(at: ReplaceStep) -> impl FnMut(ReplaceStep) -> std::io::Result<()> {
        move |step| {
            if step == at {
                Err(std::io::Error::other("killed"))
            } else {
                Ok(())
            }
        }
    }

    // A failure (a kill, a full disk) right after the new folder is swapped in leaves the new
    // folder complete, with the exchange and without; the old one, left beside it, is what
    // `remove_leftovers` clears.
    #[test]
    fn a_failure_after_the_swap_leaves_the_new_folder() {
        for exchange in [exchange, cannot_exchange] {
            let root = tempfile::tempdir().unwrap();
            let dir = folder(root.path(), "out", "old");
            let new = folder(root.path(), ".out.tmp-1", "new");
            replace(&new, &dir, exchange, &mut fail_at(ReplaceStep::Swapped)).unwrap_err();
            assert_eq!(text(&dir), "new");
            assert_eq!(names(root.path()).len(), 2);
            remove_leftovers(&dir).unwrap();
            assert_eq!(names(root.path()), ["out"]);
            assert_eq!(text(&dir), "new");
        }
    }

    // Without an atomic exchange: an error between moving the old folder aside and moving the
    // new one in puts the old folder back; a kill there leaves it aside, and the next writer's
    // `remove_leftovers` puts it back.
    #[test]
    fn a_failure_between_the_moves_puts_the_old_folder_back() {
        let root = tempfile::tempdir().unwrap();
        let dir = folder(root.path(), "out", "old");
        let new = folder(root.path(), "new", "new");
        let at = ReplaceStep::MovedAside;
        replace(&new, &dir, cannot_exchange, &mut fail_at(at)).unwrap_err();
        assert_eq!(text(&dir), "old");
        assert_eq!(text(&new), "new");

        let old = beside(&dir, "old-1").unwrap();
        std::fs::rename(&dir, &old).unwrap();
        remove_leftovers(&dir).unwrap();
        assert_eq!(text(&dir), "old");
        assert_eq!(names(root.path()), ["new", "out"]);
    }

    #[test]
    fn a_failed_write_keeps_the_previous_folder() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("step-00000001");
        let write = |text: &'static str| {
            move |tmp: &Path| std::fs::write(tmp.join("a"), text).map_err(SaeError::io(tmp))
        };
        write_dir_atomically(&dir, write("good")).unwrap();
        let full_disk = |tmp: &Path| -> Result<()> {
            write("half")(tmp)?;
            Err(SaeError::io(tmp.join("b"))(
                std::io::Error::from_raw_os_error(28),
            ))
        };
        let err = write_dir_atomically(&dir, full_disk).unwrap_err();
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(cause.contains("No space left on device"), "{cause}");
        assert_eq!(text(&dir), "good");
        assert_eq!(names(root.path()), ["step-00000001"]);
        write_dir_atomically(&dir, write("better")).unwrap();
        assert_eq!(text(&dir), "better");
        assert_eq!(names(root.path()), ["step-00000001"]);
    }
}
