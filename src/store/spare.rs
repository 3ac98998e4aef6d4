//! Zero-filled spare segments. Appending to a file changes its size, so
//! every `fdatasync` of a growing segment also commits the filesystem
//! journal; overwriting blocks that were already written (zeros) is a pure
//! data flush. Measured on this project's ext4 VMs, write + fdatasync of
//! 64 KiB: 350 µs appending, 280 µs into fallocate'd space, 175 µs into
//! zero-filled space. A helper thread keeps one zero-filled file of the
//! segment size ready (written and synced off the commit path); the
//! persister renames it into place when it moves to a new segment. A log
//! scan ends cleanly at the first all-zero record header.

use parking_lot::{Condvar, Mutex};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A spare's file name: `spare-<n>.tmp` (a fresh name each time, so the
/// next one is never the file just renamed into place).
fn spare_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("spare-{n}.tmp"))
}

#[derive(Default)]
struct Slot {
    ready: Option<(PathBuf, File)>,
    stop: bool,
    made: u64,
}

pub(super) struct Spares {
    dir: PathBuf,
    size: u64,
    slot: Mutex<Slot>,
    changed: Condvar,
}

impl Spares {
    /// Starts the helper thread; a stale spare from an earlier run is removed.
    pub(super) fn start(dir: &Path, size: u64) -> std::io::Result<Arc<Self>> {
        for e in std::fs::read_dir(dir)?.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("spare-") && name.ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let s = Arc::new(Spares {
            dir: dir.to_path_buf(),
            size,
            slot: Mutex::default(),
            changed: Condvar::new(),
        });
        let me = s.clone();
        std::thread::Builder::new().name("warren-spare".into()).spawn(move || me.run())?;
        Ok(s)
    }

    fn run(&self) {
        loop {
            let path = {
                let mut slot = self.slot.lock();
                while slot.ready.is_some() && !slot.stop {
                    self.changed.wait(&mut slot);
                }
                if slot.stop {
                    return;
                }
                slot.made += 1;
                spare_path(&self.dir, slot.made)
            };
            match self.prepare(&path) {
                Ok(f) => {
                    let mut slot = self.slot.lock();
                    if slot.stop {
                        let _ = std::fs::remove_file(&path);
                        return;
                    }
                    slot.ready = Some((path, f));
                }
                Err(e) => {
                    // Without spares the persister appends to new files:
                    // slower syncs, same guarantees. Retry later.
                    tracing::warn!(error = %e, "message store: cannot prepare a spare segment");
                    let mut slot = self.slot.lock();
                    self.changed.wait_for(&mut slot, std::time::Duration::from_secs(5));
                    if slot.stop {
                        return;
                    }
                }
            }
        }
    }

    fn prepare(&self, path: &Path) -> std::io::Result<File> {
        let mut f = OpenOptions::new().create_new(true).read(true).write(true).open(path)?;
        let zeros = vec![0u8; 1 << 20];
        let mut left = self.size;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            f.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        f.sync_all()?;
        Ok(f)
    }

    /// Renames the ready spare to `target` (which must not exist) and
    /// returns it open for writing at offset 0; `None` if no spare is ready
    /// or the rename failed (the caller then creates the file itself).
    pub(super) fn take(&self, target: &Path) -> Option<File> {
        if target.exists() {
            return None;
        }
        let (path, f) = self.slot.lock().ready.take()?;
        let placed = std::fs::rename(&path, target)
            // The new name must survive a crash like the records synced into it.
            .and_then(|_| File::open(&self.dir)?.sync_all());
        // Only now may the helper start the next spare.
        self.changed.notify_all();
        match placed {
            Ok(()) => Some(f),
            Err(e) => {
                tracing::warn!(error = %e, "message store: cannot put a spare segment in place");
                None
            }
        }
    }

    pub(super) fn stop(&self) {
        let mut slot = self.slot.lock();
        slot.stop = true;
        if let Some((path, _)) = slot.ready.take() {
            let _ = std::fs::remove_file(path);
        }
        self.changed.notify_all();
    }
}
