//! File-system steps that survive a power cut, not only a process crash.
//!
//! A write or a new directory entry reaches the disk only when it is fsynced: a killed process
//! keeps the page cache, a power cut does not. These helpers fsync what they create, and the
//! directory that names it (PS: POSIX makes no promise for a new name without the directory's
//! fsync, and ext4 with `data=ordered` loses it in practice).

use std::fs::File;
use std::io::Write;
use std::path::Path;

/// fsyncs a directory, making the names created or removed in it durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `create_dir_all` that also fsyncs the parent of every directory it creates.
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    sync_dir(parent)
}

/// Replaces `path` with `bytes` atomically and durably: a temporary file is written and
/// fsynced, renamed over `path`, and the directory fsynced.
pub fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    let temporary = dir.join(name);
    let mut file = File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    sync_dir(dir)
}

/// Removes a file if it exists, and fsyncs its directory.
pub fn remove_file(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    sync_dir(dir)
}

/// Opens `path` for appending, creating it (and its directories) durably when it is new: the
/// new name is fsynced into its directory before any record is appended, so that an append
/// later made durable by `sync_data` cannot be lost with the name.
pub fn open_append(path: &Path) -> std::io::Result<File> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    create_dir_all(dir)?;
    let existed = path.exists();
    let file = std::fs::OpenOptions::new().create(true).append(true).read(true).open(path)?;
    if !existed {
        file.sync_all()?;
        sync_dir(dir)?;
    }
    Ok(file)
}

/// fsyncs a directory only when its entries may have changed since the last fsync through it:
/// adding, removing or renaming a name moves the directory's modification time. For a
/// directory whose names change rarely (sled's, between snapshots) but whose files are synced
/// on every commit, this saves one cache flush per commit.
pub struct DirSync {
    dir: std::path::PathBuf,
    synced: std::sync::Mutex<Option<(i64, i64, i64, i64)>>,
}

impl DirSync {
    pub fn new(dir: &Path) -> DirSync {
        DirSync { dir: dir.to_path_buf(), synced: std::sync::Mutex::new(None) }
    }

    pub fn sync(&self) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        // The stamp is read before the fsync: a change after it moves the stamp again, and the
        // next call syncs.
        let meta = std::fs::metadata(&self.dir)?;
        let stamp = (meta.mtime(), meta.mtime_nsec(), meta.ctime(), meta.ctime_nsec());
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        if *synced != Some(stamp) {
            sync_dir(&self.dir)?;
            *synced = Some(stamp);
        }
        Ok(())
    }
}
