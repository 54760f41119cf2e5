//! The embedded blob store: a file per large blob, and pack files for small ones, under the
//! data directory.
//!
//! Chosen by measurement (benches/README.md): a large instance in a file of its own, written
//! sequentially and fdatasynced once, then its directory fsynced, comes within a few percent of
//! the disk's fsynced write bandwidth when uploads run in parallel, reads straight from the page
//! cache with `pread`, and gives space back with a plain unlink — no compaction that could block
//! readers or writers. A blob of at most [`pack::MAX_ENTRY`] bytes is kept in memory while it is
//! written and appended to a pack when it finishes (see `pack`): its durability is one shared
//! `fdatasync` instead of two flushes of its own.
//!
//! Layout: `{root}/{id & 0xff:02x}/{id:016x}` for files, `{root}/packs/{n:08x}` for packs. The
//! 256 fan-out directories are created (and fsynced) when the store opens, so a put only ever
//! adds a name to an existing directory; consecutive ids land in different directories, which
//! keeps each one small (4,000 files per directory at a million instances).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;

use super::pack::{self, Entry, EntryReader, Packs};
use super::{BlobError, BlobId, BlobRead, BlobResult, BlobStore, BlobWrite, FinishedBlob};
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
    packs: Arc<Packs>,
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
        let packs = Arc::new(Packs::open(root)?);
        Ok(Arc::new(LocalBlobStore { root: root.to_path_buf(), min_free, packs }))
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

/// A blob being written: kept in memory while it is small enough for a pack, in a file of its
/// own once it is not.
struct LocalWrite {
    id: BlobId,
    path: PathBuf,
    dir: PathBuf,
    min_free: u64,
    packs: Arc<Packs>,
    file: Option<File>,
    buffer: Vec<u8>,
    length: u64,
}

impl LocalWrite {
    /// Writes the buffer out to the blob's own file, creating it the first time.
    fn drain(&mut self) -> BlobResult<()> {
        tokio::task::block_in_place(|| -> BlobResult<()> {
            check_room(&self.dir, self.min_free)?;
            let file = match &mut self.file {
                Some(file) => file,
                None => self.file.insert(OpenOptions::new().write(true).create_new(true).open(&self.path)?),
            };
            Ok(file.write_all(&self.buffer)?)
        })?;
        self.buffer.clear();
        Ok(())
    }
}

impl BlobWrite for LocalWrite {
    fn write(&mut self, bytes: &[u8]) -> BoxFuture<'_, BlobResult<()>> {
        self.buffer.extend_from_slice(bytes);
        self.length += bytes.len() as u64;
        let spill =
            if self.file.is_none() { self.length > pack::MAX_ENTRY as u64 } else { self.buffer.len() >= WRITE_BUFFER };
        let outcome = if spill { self.drain() } else { Ok(()) };
        Box::pin(std::future::ready(outcome))
    }

    fn finish(self: Box<Self>) -> BoxFuture<'static, BlobResult<FinishedBlob>> {
        let mut this = *self;
        Box::pin(async move {
            let length = this.length;
            let Some(mut file) = this.file.take() else {
                let id = tokio::task::block_in_place(|| {
                    check_room(&this.dir, this.min_free)?;
                    this.packs.append(&this.buffer)
                })?;
                return Ok(FinishedBlob { id, length });
            };
            let id = this.id;
            tokio::task::spawn_blocking(move || -> BlobResult<FinishedBlob> {
                file.write_all(&this.buffer)?;
                // fdatasync covers the data and the length; the directory fsync covers the name.
                file.sync_data()?;
                durable_fs::sync_dir(&this.dir)?;
                Ok(FinishedBlob { id, length })
            })
            .await
            .map_err(|e| BlobError::Io(std::io::Error::other(e)))?
        })
    }

    fn abort(self: Box<Self>) -> BoxFuture<'static, BlobResult<()>> {
        let path = self.file.is_some().then(|| self.path.clone());
        drop(self);
        Box::pin(async move {
            let Some(path) = path else { return Ok(()) };
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
        let packs = self.packs.clone();
        Box::pin(async move {
            if path.exists() {
                return Err(BlobError::Io(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("blob {id} exists"),
                )));
            }
            Ok(Box::new(LocalWrite {
                id,
                path,
                dir,
                min_free,
                packs,
                file: None,
                buffer: Vec::with_capacity(64 * 1024),
                length: 0,
            }) as Box<dyn BlobWrite>)
        })
    }

    fn make_durable<'a>(&'a self, ids: &'a [BlobId]) -> BoxFuture<'a, BlobResult<()>> {
        // Files are durable when they finish; pack entries share the pack's sync.
        let entries: Vec<Entry> = ids.iter().filter_map(|&id| Entry::of(id)).collect();
        Box::pin(async move { self.packs.make_durable(&entries).await })
    }

    fn reader(&self, id: BlobId) -> BlobResult<Box<dyn BlobRead>> {
        // The parsers read element headers a few bytes at a time: buffer them.
        if Entry::of(id).is_some() {
            let (file, start, length) = self.packs.locate(id)?;
            return Ok(Box::new(std::io::BufReader::with_capacity(64 * 1024, EntryReader::new(file, start, length))));
        }
        Ok(Box::new(std::io::BufReader::with_capacity(64 * 1024, self.open_file(id)?)))
    }

    fn read_range(&self, id: BlobId, offset: u64, length: u64) -> BoxStream<'static, BlobResult<Bytes>> {
        use futures_util::StreamExt;
        let opened = match Entry::of(id) {
            // A pack entry: its bytes start past its header and end where it says.
            Some(_) => self.packs.locate(id).and_then(|(file, start, size)| {
                if offset.saturating_add(length) > size {
                    return Err(BlobError::Short(id));
                }
                Ok((file, start))
            }),
            None => self.open_file(id).map(|file| (file, 0)),
        };
        let (file, base) = match opened {
            Ok((file, base)) => (Arc::new(file), base),
            Err(e) => return Box::pin(futures_util::stream::once(std::future::ready(Err(e)))),
        };
        let packed = Entry::of(id).is_some();
        let (offset, end) = (base + offset, base + offset.saturating_add(length));
        let pieces =
            (offset..end).step_by(READ_PIECE as usize).map(move |at| (at, (end - at).min(READ_PIECE) as usize));
        // Each piece is one `pread` on the blocking pool; the next one is read while the
        // current one is being sent (two in flight), so disk and socket work at the same time.
        Box::pin(
            futures_util::stream::iter(pieces)
                .map(move |(at, want)| {
                    let file = file.clone();
                    async move {
                        tokio::task::spawn_blocking(move || {
                            let bytes = read_exact_at(&file, id, at, want)?;
                            // A pack entry deleted while it was read has had its bytes punched out.
                            if packed && !pack::still_live(&file, base) {
                                return Err(BlobError::Missing(id));
                            }
                            Ok(bytes)
                        })
                        .await
                        .map_err(|e| BlobError::Io(std::io::Error::other(e)))?
                    }
                })
                .buffered(READ_AHEAD),
        )
    }

    fn delete(&self, ids: Vec<BlobId>) -> BoxFuture<'_, BlobResult<()>> {
        let (packed, files): (Vec<BlobId>, Vec<BlobId>) = ids.into_iter().partition(|&id| Entry::of(id).is_some());
        let paths: Vec<PathBuf> = files.into_iter().map(|id| self.path_of(id)).collect();
        let packs = self.packs.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || -> BlobResult<()> {
                for path in paths {
                    durable_fs::remove_file(&path)?;
                }
                packs.delete(&packed)
            })
            .await
            .map_err(|e| BlobError::Io(std::io::Error::other(e)))?
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
        ids.extend(self.packs.list()?);
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
        assert_eq!(writer.finish().await.unwrap(), FinishedBlob { id: 0x1234, length: bytes.len() as u64 });
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

        store.delete(vec![0x1234]).await.unwrap();
        store.delete(vec![0x1234]).await.unwrap();
        assert!(store.list().unwrap().is_empty());
        assert!(matches!(store.reader(0x1234), Err(BlobError::Missing(0x1234))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_blobs_go_to_a_pack_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::open(&dir.path().join("blobs"), 0).unwrap();
        let bytes: Vec<u8> = (0..5_000u32).map(|i| (i % 253) as u8).collect();
        let mut writer = store.create(9).await.unwrap();
        writer.write(&bytes[..1000]).await.unwrap();
        writer.write(&bytes[1000..]).await.unwrap();
        let finished = writer.finish().await.unwrap();
        assert_ne!(finished.id, 9, "a small blob is named by its place in a pack");
        assert_eq!(finished.length, 5_000);
        assert!(!dir.path().join("blobs/09/0000000000000009").exists());
        store.make_durable(&[finished.id]).await.unwrap();

        let range: Vec<Bytes> = store.read_range(finished.id, 100, 4_900).try_collect().await.unwrap();
        assert_eq!(range.concat(), bytes[100..]);
        let past_end: Result<Vec<Bytes>, _> = store.read_range(finished.id, 4_990, 11).try_collect().await;
        assert!(matches!(past_end, Err(BlobError::Short(_))));
        let mut reader = store.reader(finished.id).unwrap();
        std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(4_000)).unwrap();
        let mut tail = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut tail).unwrap();
        assert_eq!(tail, bytes[4_000..]);
        assert_eq!(store.list().unwrap(), vec![finished.id]);

        store.delete(vec![finished.id]).await.unwrap();
        assert!(store.list().unwrap().is_empty());
        assert!(matches!(store.reader(finished.id), Err(BlobError::Missing(_))));
    }
}
