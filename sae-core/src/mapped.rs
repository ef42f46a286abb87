//! Files mapped into memory read-only. A checkpoint is read in place, never whole: a tensor's
//! bytes are copied out once (into the dtype the model computes in), and the pages they were
//! read from are handed back to the page cache at once, so a process holds each weight once.
//!
//! A tensor stored in the dtype it is computed in is not copied at all on the CPU backends: it
//! is a view of the mapped pages ([`MappedFile::shared`]), which the kernel brings in as they
//! are read (a 1 GB embedding table of which a prompt reads 128 rows costs 128 rows of memory),
//! as transformers does.
//!
//! A mapped file that another process truncates makes the kernel raise SIGBUS on the next read of
//! a page past the new end. Each read checks first that the file still has the size and
//! modification time it had when it was opened, and fails with a clear error if not; for the
//! remaining race (a file cut during the copy itself) [`report_bus_errors`] turns the signal into
//! a one-line message and exit status 1 instead of a bare crash.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use std::sync::Arc;

use burn::tensor::{AllocationProperty, Bytes};
use memmap2::{Mmap, UncheckedAdvice};

use crate::error::{Result, SaeError};

/// A file mapped read-only, with what identified it when it was opened.
pub struct MappedFile {
    path: PathBuf,
    file: File,
    /// Shared with the tensors that are views of it.
    map: Arc<Mmap>,
    modified: Option<SystemTime>,
}

impl MappedFile {
    /// Maps `path` read-only.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(SaeError::io(&path))?;
        let modified = file.metadata().and_then(|m| m.modified()).ok();
        // SAFETY: the map is only read, and a change to the file under it is detected before
        // each read (`read`); a truncation racing a read is reported by `report_bus_errors`.
        let map = unsafe { Mmap::map(&file) }.map_err(SaeError::io(&path))?;
        Ok(MappedFile {
            path,
            file,
            map: Arc::new(map),
            modified,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All the file's bytes as they were mapped (for headers; tensors go through [`Self::read`]).
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Runs `read` over the bytes in `range` once the file is known to be unchanged since it was
    /// opened, then releases the pages read (they stay in the page cache, not in this process).
    pub fn read<T>(&self, range: Range<usize>, read: impl FnOnce(&[u8]) -> T) -> Result<T> {
        self.check_unchanged()?;
        let bytes = self
            .map
            .get(range.clone())
            .ok_or_else(|| SaeError::ChangedFile {
                file: self.path.clone(),
                what: format!(
                    "bytes {}..{} lie past its end ({} bytes)",
                    range.start,
                    range.end,
                    self.map.len()
                ),
            })?;
        let out = read(bytes);
        // SAFETY: a read-only shared file mapping: dropping its pages loses nothing, the next
        // access reads them again from the file.
        let _ = unsafe {
            self.map
                .unchecked_advise_range(UncheckedAdvice::DontNeed, range.start, range.len())
        };
        Ok(out)
    }

    /// The bytes in `range` as tensor bytes that keep the mapping alive and are read in place
    /// (copied only if written to), once the file is known to be unchanged; `None` when they
    /// do not start on a multiple of `align` bytes (a tensor needs its elements aligned).
    pub fn shared(&self, range: Range<usize>, align: usize) -> Result<Option<Bytes>> {
        if range.end > self.map.len() {
            // The same error as a read past the end.
            return self.read(range, |_| None);
        }
        self.check_unchanged()?;
        if !(self.map.as_ptr() as usize + range.start).is_multiple_of(align) {
            return Ok(None);
        }
        let view = MapView {
            map: Arc::clone(&self.map),
            range,
        };
        Ok(Some(Bytes::from_shared(
            bytes::Bytes::from_owner(view),
            AllocationProperty::File,
        )))
    }

    /// An error unless the file still has the size and modification time it was mapped with.
    fn check_unchanged(&self) -> Result<()> {
        let meta = self.file.metadata().map_err(SaeError::io(&self.path))?;
        let changed = |what: String| SaeError::ChangedFile {
            file: self.path.clone(),
            what,
        };
        if meta.len() != self.map.len() as u64 {
            return Err(changed(format!(
                "it was {} bytes when opened and is {} bytes now (truncated or rewritten while in use)",
                self.map.len(),
                meta.len()
            )));
        }
        if meta.modified().ok() != self.modified {
            return Err(changed(
                "it was modified after it was opened (rewritten while in use)".into(),
            ));
        }
        Ok(())
    }
}

/// A range of a mapping, owning a reference to it.
struct MapView {
    map: Arc<Mmap>,
    range: Range<usize>,
}

impl AsRef<[u8]> for MapView {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }
}

/// Makes a SIGBUS (a mapped file cut short while it is being read) end the process with one
/// clear sentence on stderr and exit status 1. Binaries call it once at start.
#[cfg(unix)]
pub fn report_bus_errors() {
    extern "C" fn on_bus_error(_: libc::c_int) {
        const MESSAGE: &[u8] = b"error: a memory-mapped file (a checkpoint or tensor file) was truncated or replaced by another process while it was being read (SIGBUS); nothing was written by this step; rerun once the file is complete\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe.
        unsafe {
            libc::write(2, MESSAGE.as_ptr().cast(), MESSAGE.len());
            libc::_exit(1);
        }
    }
    // SAFETY: installs a handler that only calls async-signal-safe functions.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_bus_error as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
    }
}

/// Without SIGBUS there is nothing to report.
#[cfg(not(unix))]
pub fn report_bus_errors() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_range_and_refuses_a_file_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, (0u8..=255).collect::<Vec<_>>()).unwrap();
        let mapped = MappedFile::open(&path).unwrap();
        assert_eq!(
            mapped.read(10..14, |b| b.to_vec()).unwrap(),
            [10, 11, 12, 13]
        );
        // The pages were released, not lost: the same bytes read again.
        assert_eq!(
            mapped.read(10..14, |b| b.to_vec()).unwrap(),
            [10, 11, 12, 13]
        );
        let past = mapped.read(250..300, |b| b.len()).unwrap_err().to_string();
        assert!(
            past.contains("bytes 250..300 lie past its end (256 bytes)"),
            "{past}"
        );

        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(100)
            .unwrap();
        let cut = mapped.read(10..14, |b| b.to_vec()).unwrap_err().to_string();
        assert!(
            cut.contains("was 256 bytes when opened and is 100 bytes now"),
            "{cut}"
        );
    }

    #[test]
    fn shared_views_read_in_place_when_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, (0u8..64).collect::<Vec<_>>()).unwrap();
        let mapped = MappedFile::open(&path).unwrap();
        let view = mapped.shared(8..16, 4).unwrap().unwrap();
        assert_eq!(&view[..], &[8, 9, 10, 11, 12, 13, 14, 15]);
        // The view keeps the mapping alive after the file object is gone.
        drop(mapped);
        assert_eq!(view[0], 8);
        let mapped = MappedFile::open(&path).unwrap();
        assert!(
            mapped.shared(10..18, 4).unwrap().is_none(),
            "misaligned for 4-byte values"
        );
        assert!(mapped.shared(60..70, 2).is_err(), "past the end");
    }

    /// Run in a child process by `a_bus_error_is_reported_in_one_sentence`: touches a page of a
    /// mapping whose file was cut, bypassing the check, as a racing truncation would.
    #[test]
    #[ignore = "run by a_bus_error_is_reported_in_one_sentence in a child process"]
    fn touch_a_page_past_the_end() {
        let Some(path) = std::env::var_os("SAE_TEST_SIGBUS_FILE") else {
            return;
        };
        report_bus_errors();
        let mapped = MappedFile::open(&path).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        let byte = std::hint::black_box(mapped.bytes()[3 * 4096]);
        println!("read {byte} past the end");
    }

    #[cfg(unix)]
    #[test]
    fn a_bus_error_is_reported_in_one_sentence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, vec![7u8; 4 * 4096]).unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "mapped::tests::touch_a_page_past_the_end",
                "--nocapture",
            ])
            .env("SAE_TEST_SIGBUS_FILE", &path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
        assert!(
            stderr.contains(
                "was truncated or replaced by another process while it was being read (SIGBUS)"
            ),
            "{stderr}"
        );
    }
}
