//! The embedded blob store: one file per blob under the data directory.
//!
//! Chosen by measurement (benches/README.md): one file per instance, written sequentially and
//! fdatasynced once, then its directory fsynced, comes within a few percent of the disk's
//! fsynced write bandwidth, reads straight from the page cache with `pread`, and gives space
//! back with a plain unlink — no compaction that could block readers or writers.
//!
//! Layout: `{root}/{id & 0xff:02x}/{id:016x}`. The 256 fan-out directories are created (and
//! fsynced) when the store opens, so a put only ever adds a name to an existing directory;
//! consecutive ids land in different directories, which keeps each one small (4,000 files per
//! directory at a million instances).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;

use super::{BlobError, BlobId, BlobRead, BlobResult, BlobStore, BlobWrite};
use crate::durable_fs;
use crate::store::BoxFuture;

/// Bytes gathered before one `write` system call.
const WRITE_BUFFER: usize = 1024 * 1024;
/// Bytes read per blocking call when streaming.
const READ_PIECE: u64 = 1024 * 1024;
/// Pieces read ahead of the one being sent.
const READ_AHEAD: usize = 2;

/// Writes run on the calling worker with `block_in_place` (short page-cache writes) or on the
/// blocking pool (fsyncs): it needs tokio's multi-thread runtime.
pub struct LocalBlobStore {
    root: PathBuf,
    /// Free bytes kept on the file system for the catalog and the index.
    min_free: u64,
}

/// Bytes available to an unprivileged writer on the file system holding `path`.
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a statvfs struct the call fills in.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// Refuses to write when the file system holding `path` has less than `min_free` bytes free.
fn check_room(path: &Path, min_free: u64) -> BlobResult<()> {
    if min_free > 0 && free_bytes(path)? < min_free {
        return Err(BlobError::Full { reserve_mib: min_free / (1024 * 1024) });
    }
    Ok(())
}

impl LocalBlobStore {
    /// Opens (or creates) the store in `root`, with its fan-out directories durable. Writes are
    /// refused while fewer than `min_free` bytes are free on its file system.
    pub fn open(root: &Path, min_free: u64) -> BlobResult<Arc<LocalBlobStore>> {
        durable_fs::create_dir_all(root)?;
        let mut created = false;
        for fan in 0..=255u8 {
            let dir = root.join(format!("{fan:02x}"));
            if !dir.is_dir() {
                std::fs::create_dir(&dir)?;
                created = true;
            }
        }
        if created {
            durable_fs::sync_dir(root)?;
        }
        Ok(Arc::new(LocalBlobStore { root: root.to_path_buf(), min_free }))
    }

    fn dir_of(&self, id: BlobId) -> PathBuf {
        self.root.join(format!("{:02x}", id & 0xff))
    }

    fn path_of(&self, id: BlobId) -> PathBuf {
        self.dir_of(id).join(format!("{id:016x}"))
    }

    fn open_file(&self, id: BlobId) -> BlobResult<File> {
        File::open(self.path_of(id)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => BlobError::Missing(id),
            _ => BlobError::Io(e),
        })
    }
}

struct LocalWrite {
    file: File,
    path: PathBuf,
    dir: PathBuf,
    min_free: u64,
    buffer: Vec<u8>,
    length: u64,
}

impl LocalWrite {
    fn drain(&mut self) -> BlobResult<()> {
        if !self.buffer.is_empty() {
            tokio::task::block_in_place(|| -> BlobResult<()> {
                check_room(&self.dir, self.min_free)?;
                Ok(self.file.write_all(&self.buffer)?)
            })?;
            self.buffer.clear();
        }
        Ok(())
    }
}

impl BlobWrite for LocalWrite {
    fn write(&mut self, bytes: &[u8]) -> BoxFuture<'_, BlobResult<()>> {
        self.buffer.extend_from_slice(bytes);
        self.length += bytes.len() as u64;
        let outcome = if self.buffer.len() >= WRITE_BUFFER { self.drain() } else { Ok(()) };
        Box::pin(std::future::ready(outcome))
    }

    fn finish(self: Box<Self>) -> BoxFuture<'static, BlobResult<u64>> {
        let mut this = *self;
        Box::pin(async move {
            tokio::task::spawn_blocking(move || -> BlobResult<u64> {
                this.file.write_all(&this.buffer)?;
                // fdatasync covers the data and the length; the directory fsync covers the name.
                this.file.sync_data()?;
                durable_fs::sync_dir(&this.dir)?;
                Ok(this.length)
            })
            .await
            .map_err(|e| BlobError::Io(std::io::Error::other(e)))?
        })
    }

    fn abort(self: Box<Self>) -> BoxFuture<'static, BlobResult<()>> {
        let path = self.path.clone();
        drop(self);
        Box::pin(async move {
            // No fsync: an unfinished blob that reappears after a power cut is swept anyway.
            match tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Ok(Err(e)) => Err(BlobError::Io(e)),
                Err(e) => Err(BlobError::Io(std::io::Error::other(e))),
            }
        })
    }
}

impl BlobStore for LocalBlobStore {
    fn create(&self, id: BlobId) -> BoxFuture<'_, BlobResult<Box<dyn BlobWrite>>> {
        let path = self.path_of(id);
        let dir = self.dir_of(id);
        let min_free = self.min_free;
        Box::pin(async move {
            let file = tokio::task::block_in_place(|| -> BlobResult<File> {
                check_room(&dir, min_free)?;
                Ok(OpenOptions::new().write(true).create_new(true).open(&path)?)
            })?;
            Ok(Box::new(LocalWrite { file, path, dir, min_free, buffer: Vec::with_capacity(64 * 1024), length: 0 })
                as Box<dyn BlobWrite>)
        })
    }

    fn reader(&self, id: BlobId) -> BlobResult<Box<dyn BlobRead>> {
        // The parsers read element headers a few bytes at a time: buffer them.
        Ok(Box::new(std::io::BufReader::with_capacity(64 * 1024, self.open_file(id)?)))
    }

    fn read_range(&self, id: BlobId, offset: u64, length: u64) -> BoxStream<'static, BlobResult<Bytes>> {
        use futures_util::StreamExt;
        let file = match self.open_file(id) {
            Ok(file) => Arc::new(file),
            Err(e) => return Box::pin(futures_util::stream::once(std::future::ready(Err(e)))),
        };
        let end = offset.saturating_add(length);
        let pieces =
            (offset..end).step_by(READ_PIECE as usize).map(move |at| (at, (end - at).min(READ_PIECE) as usize));
        // Each piece is one `pread` on the blocking pool; the next one is read while the
        // current one is being sent (two in flight), so disk and socket work at the same time.
        Box::pin(
            futures_util::stream::iter(pieces)
                .map(move |(at, want)| {
                    let file = file.clone();
                    async move {
                        tokio::task::spawn_blocking(move || read_exact_at(&file, id, at, want))
                            .await
                            .map_err(|e| BlobError::Io(std::io::Error::other(e)))?
                    }
                })
                .buffered(READ_AHEAD),
        )
    }

    fn delete(&self, id: BlobId) -> BoxFuture<'_, BlobResult<()>> {
        let path = self.path_of(id);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || durable_fs::remove_file(&path))
                .await
                .map_err(|e| BlobError::Io(std::io::Error::other(e)))??;
            Ok(())
        })
    }

    fn list(&self) -> BlobResult<Vec<BlobId>> {
        let mut ids = Vec::new();
        for fan in 0..=255u8 {
            let dir = self.root.join(format!("{fan:02x}"));
            for entry in std::fs::read_dir(&dir)? {
                let name = entry?.file_name();
                if let Some(id) = name.to_str().and_then(|n| u64::from_str_radix(n, 16).ok()) {
                    ids.push(id);
                }
            }
        }
        Ok(ids)
    }
}

/// `want` bytes at `at`, or `Short` if the blob ends first.
fn read_exact_at(file: &File, id: BlobId, at: u64, want: usize) -> BlobResult<Bytes> {
    let mut buffer = vec![0u8; want];
    let mut filled = 0;
    while filled < want {
        match file.read_at(&mut buffer[filled..], at + filled as u64) {
            Ok(0) => return Err(BlobError::Short(id)),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BlobError::Io(e)),
        }
    }
    Ok(Bytes::from(buffer))
}

#[cfg(test)]
mod tests {
    use futures_util::TryStreamExt;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn put_read_range_delete_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::open(&dir.path().join("blobs"), 0).unwrap();
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut writer = store.create(0x1234).await.unwrap();
        for piece in bytes.chunks(70_000) {
            writer.write(piece).await.unwrap();
        }
        assert_eq!(writer.finish().await.unwrap(), bytes.len() as u64);
        assert!(dir.path().join("blobs/34/0000000000001234").is_file());

        let range: Vec<Bytes> = store.read_range(0x1234, 1_000_001, 1_500_000).try_collect().await.unwrap();
        assert_eq!(range.concat(), bytes[1_000_001..2_500_001]);
        let past_end: Result<Vec<Bytes>, _> = store.read_range(0x1234, 2_999_990, 100).try_collect().await;
        assert!(matches!(past_end, Err(BlobError::Short(0x1234))));

        let mut reader = store.reader(0x1234).unwrap();
        let mut all = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut all).unwrap();
        assert_eq!(all, bytes);

        // A second blob, aborted: nothing of it remains.
        let mut aborted = store.create(7).await.unwrap();
        aborted.write(b"partial").await.unwrap();
        aborted.abort().await.unwrap();
        assert_eq!(store.list().unwrap(), vec![0x1234]);
        assert!(store.create(0x1234).await.is_err(), "an existing blob is never overwritten");

        store.delete(0x1234).await.unwrap();
        store.delete(0x1234).await.unwrap();
        assert!(store.list().unwrap().is_empty());
        assert!(matches!(store.reader(0x1234), Err(BlobError::Missing(0x1234))));
    }
}
