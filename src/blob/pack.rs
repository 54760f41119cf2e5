//! Pack files: small blobs appended to a shared log, made durable by one `fdatasync` for every
//! blob appended before it (group commit).
//!
//! Why: a file per blob costs two cache flushes per instance (the file's `fdatasync` and its
//! directory's `fsync`); for an instance of a few KiB that is the whole cost of storing it
//! (measured on this machine kind, benches/README.md: 2,364 files/s with the syncs of a group
//! issued one after the other, against 92,859 entries/s appended to one log with one
//! `fdatasync` per 400). Large blobs keep their own files, whose syncs run in parallel and whose
//! space comes back with an unlink.
//!
//! Layout: `{root}/packs/{n:08x}`. Each entry is an 8-byte header — a 4-byte mark (`LIVE` or
//! `DEAD`) and the little-endian u32 length — followed by the bytes. A process appends only to
//! the pack it created (a new one per run and every [`PACK_BYTES`]), so a torn tail after a
//! crash is never appended to: the walk of a pack stops at the first header that is not a
//! mark. Whatever a crash tore was never made durable, hence never acknowledged.
//!
//! Deleting an entry marks it `DEAD` and punches the whole file-system blocks of its bytes out
//! of the file (`FALLOC_FL_PUNCH_HOLE`); a pack of another run whose entries are all dead is
//! unlinked. Entries are never moved, so no compaction ever blocks a reader or a writer; the
//! cost is that the blocks shared by small live and dead entries come back only with the pack.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{BlobError, BlobId, BlobResult};
use crate::durable_fs;

/// The largest blob stored in a pack; larger ones get a file of their own.
pub const MAX_ENTRY: usize = 256 * 1024;
/// A pack is closed, and the next one started, once it holds this many bytes.
pub const PACK_BYTES: u64 = 64 * 1024 * 1024;

const HEADER: u64 = 8;
const LIVE: &[u8; 4] = b"KPL1";
const DEAD: &[u8; 4] = b"KPD1";

/// Pack blob ids have the top bit set; a file blob's id (allocated by the catalog) never has.
const PACK_BIT: u64 = 1 << 63;
const OFFSET_BITS: u32 = 40;
const OFFSET_MASK: u64 = (1 << OFFSET_BITS) - 1;
/// Pack numbers fit in the 23 bits left.
const MAX_PACK: u32 = (1 << 23) - 1;

/// Where a pack blob is: its pack and the offset of its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub pack: u32,
    pub offset: u64,
}

impl Entry {
    pub fn of(id: BlobId) -> Option<Entry> {
        (id & PACK_BIT != 0)
            .then_some(Entry { pack: ((id & !PACK_BIT) >> OFFSET_BITS) as u32, offset: id & OFFSET_MASK })
    }

    pub fn id(self) -> BlobId {
        PACK_BIT | (u64::from(self.pack) << OFFSET_BITS) | self.offset
    }
}

/// The pack being appended to.
struct Active {
    number: u32,
    file: Arc<File>,
    length: u64,
}

pub struct Packs {
    dir: PathBuf,
    active: Mutex<Option<Active>>,
    /// Everything before (pack, length) is durable.
    synced: Mutex<(u32, u64)>,
    /// One `fdatasync` at a time; the callers that wait for it find their entries covered.
    sync_turn: tokio::sync::Mutex<()>,
    next_number: Mutex<u32>,
}

impl Packs {
    pub fn open(root: &Path) -> std::io::Result<Packs> {
        let dir = root.join("packs");
        durable_fs::create_dir_all(&dir)?;
        let last = Self::numbers_in(&dir)?.into_iter().max();
        Ok(Packs {
            dir,
            active: Mutex::new(None),
            synced: Mutex::new((0, 0)),
            sync_turn: tokio::sync::Mutex::new(()),
            next_number: Mutex::new(last.map_or(1, |n| n + 1)),
        })
    }

    fn numbers_in(dir: &Path) -> std::io::Result<Vec<u32>> {
        let mut numbers = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Some(n) = entry?.file_name().to_str().and_then(|n| u32::from_str_radix(n, 16).ok()) {
                numbers.push(n);
            }
        }
        Ok(numbers)
    }

    fn path(&self, pack: u32) -> PathBuf {
        self.dir.join(format!("{pack:08x}"))
    }

    /// Appends a blob (at most [`MAX_ENTRY`] bytes). It is readable at once and durable after
    /// [`Packs::make_durable`]. Blocking: call it off the async workers.
    pub fn append(&self, bytes: &[u8]) -> BlobResult<BlobId> {
        assert!(bytes.len() <= MAX_ENTRY, "pack entries are small");
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let needed = HEADER + bytes.len() as u64;
        if active.as_ref().is_none_or(|a| a.length > 0 && a.length + needed > PACK_BYTES) {
            if let Some(full) = active.take() {
                // Everything waiting on the old pack is covered before it is left behind.
                full.file.sync_data()?;
                let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
                *synced = (*synced).max((full.number, full.length));
            }
            *active = Some(self.start_pack()?);
        }
        let pack = active.as_mut().expect("started above");
        let mut entry = Vec::with_capacity(needed as usize);
        entry.extend_from_slice(LIVE);
        entry.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        entry.extend_from_slice(bytes);
        pack.file.write_all_at(&entry, pack.length)?;
        let id = Entry { pack: pack.number, offset: pack.length }.id();
        pack.length += needed;
        Ok(id)
    }

    /// A new pack file whose name is durable before anything in it can be acknowledged.
    fn start_pack(&self) -> BlobResult<Active> {
        let mut next = self.next_number.lock().unwrap_or_else(|p| p.into_inner());
        if *next > MAX_PACK {
            return Err(BlobError::Io(std::io::Error::other("pack numbers exhausted")));
        }
        let number = *next;
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(self.path(number))?;
        durable_fs::sync_dir(&self.dir)?;
        *next += 1;
        Ok(Active { number, file: Arc::new(file), length: 0 })
    }

    /// Returns once the given entries (appended before) are durable. Concurrent callers share
    /// one `fdatasync`: the first to take the turn syncs everything appended so far.
    pub async fn make_durable(&self, entries: &[Entry]) -> BlobResult<()> {
        let Some(last) = entries.iter().max().copied() else { return Ok(()) };
        let covered = |synced: (u32, u64)| synced.0 > last.pack || (synced.0 == last.pack && synced.1 > last.offset);
        if covered(*self.synced.lock().unwrap_or_else(|p| p.into_inner())) {
            return Ok(());
        }
        let _turn = self.sync_turn.lock().await;
        if covered(*self.synced.lock().unwrap_or_else(|p| p.into_inner())) {
            return Ok(());
        }
        let (number, file, length) = {
            let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
            let Some(active) = active.as_ref() else { return Ok(()) };
            (active.number, active.file.clone(), active.length)
        };
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(|e| BlobError::Io(std::io::Error::other(e)))??;
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        *synced = (*synced).max((number, length));
        debug_assert!(covered(*synced));
        Ok(())
    }

    fn open_pack(&self, pack: u32, id: BlobId) -> BlobResult<File> {
        OpenOptions::new().read(true).write(true).open(self.path(pack)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => BlobError::Missing(id),
            _ => BlobError::Io(e),
        })
    }

    /// The file holding a live entry, and where its bytes are (offset, length).
    pub fn locate(&self, id: BlobId) -> BlobResult<(File, u64, u64)> {
        let entry = Entry::of(id).ok_or(BlobError::Missing(id))?;
        let file = self.open_pack(entry.pack, id)?;
        let mut header = [0u8; HEADER as usize];
        file.read_exact_at(&mut header, entry.offset).map_err(|_| BlobError::Missing(id))?;
        if &header[..4] != LIVE {
            return Err(BlobError::Missing(id));
        }
        let length = u64::from(u32::from_le_bytes(header[4..].try_into().expect("4 bytes")));
        Ok((file, entry.offset + HEADER, length))
    }

    /// Deletes entries durably: each is marked dead and its blocks are given back; then packs of
    /// earlier runs that hold nothing live any more are removed. Missing entries are skipped.
    pub fn delete(&self, ids: &[BlobId]) -> BlobResult<()> {
        let mut entries: Vec<Entry> = ids.iter().filter_map(|&id| Entry::of(id)).collect();
        entries.sort();
        let active = self.active.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|a| a.number);
        for group in entries.chunk_by(|a, b| a.pack == b.pack) {
            let pack = group[0].pack;
            let file = match self.open_pack(pack, group[0].id()) {
                Ok(file) => file,
                Err(BlobError::Missing(_)) => continue,
                Err(e) => return Err(e),
            };
            for entry in group {
                let mut header = [0u8; HEADER as usize];
                if file.read_exact_at(&mut header, entry.offset).is_err() || &header[..4] != LIVE {
                    continue;
                }
                let length = u64::from(u32::from_le_bytes(header[4..].try_into().expect("4 bytes")));
                file.write_all_at(DEAD, entry.offset)?;
                punch_hole(&file, entry.offset + HEADER, length);
            }
            file.sync_data()?;
            if Some(pack) != active && walk(&file)?.iter().all(|(_, _, live)| !live) {
                durable_fs::remove_file(&self.path(pack))?;
            }
        }
        Ok(())
    }

    /// The live entries of every pack (the sweep after an unclean stop).
    pub fn list(&self) -> BlobResult<Vec<BlobId>> {
        let mut ids = Vec::new();
        for pack in Self::numbers_in(&self.dir)? {
            let file = File::open(self.path(pack))?;
            for (offset, _, live) in walk(&file)? {
                if live {
                    ids.push(Entry { pack, offset }.id());
                }
            }
        }
        Ok(ids)
    }
}

/// The entries of a pack: (header offset, length, live), up to the first torn or unwritten
/// header.
fn walk(file: &File) -> std::io::Result<Vec<(u64, u64, bool)>> {
    let size = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1024 * 1024, file);
    reader.seek(SeekFrom::Start(0))?;
    let mut entries = Vec::new();
    let mut offset = 0u64;
    let mut header = [0u8; HEADER as usize];
    while offset + HEADER <= size {
        reader.read_exact(&mut header)?;
        let live = &header[..4] == LIVE;
        let length = u64::from(u32::from_le_bytes(header[4..].try_into().expect("4 bytes")));
        if !(live || &header[..4] == DEAD) || length > MAX_ENTRY as u64 || offset + HEADER + length > size {
            break;
        }
        entries.push((offset, length, live));
        offset += HEADER + length;
        reader.seek_relative(length as i64)?;
    }
    Ok(entries)
}

/// Gives back the whole file-system blocks inside `[offset, offset + length)`. Best effort: a
/// file system without hole punching keeps the space until the pack goes.
fn punch_hole(file: &File, offset: u64, length: u64) {
    use std::os::fd::AsRawFd;
    const BLOCK: u64 = 4096;
    let start = offset.div_ceil(BLOCK) * BLOCK;
    let end = (offset + length) / BLOCK * BLOCK;
    if end > start {
        // SAFETY: fallocate on an open descriptor with a range inside the file.
        unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                start as libc::off_t,
                (end - start) as libc::off_t,
            );
        }
    }
}

/// Whether the entry whose bytes start at `start` is still live. A delete marks the header
/// `DEAD` before it punches the bytes out, so bytes read before this answers `true` were read
/// before the punch: a reader that checks after each read never hands out the zeros of a
/// concurrent delete as if they were the instance.
pub fn still_live(file: &File, start: u64) -> bool {
    let mut mark = [0u8; 4];
    file.read_exact_at(&mut mark, start - HEADER).is_ok() && &mark == LIVE
}

/// A blocking reader over one pack entry; a read that overlaps a concurrent delete fails
/// (`NotFound`) instead of returning the punched-out zeros.
pub struct EntryReader {
    file: File,
    start: u64,
    length: u64,
    position: u64,
}

impl EntryReader {
    pub fn new(file: File, start: u64, length: u64) -> EntryReader {
        EntryReader { file, start, length, position: 0 }
    }
}

impl Read for EntryReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.length.saturating_sub(self.position);
        let want = (buf.len() as u64).min(left) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.start + self.position)?;
        if !still_live(&self.file, self.start) {
            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "the blob was deleted while it was read"));
        }
        self.position += n as u64;
        Ok(n)
    }
}

impl Seek for EntryReader {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(delta) => self.length.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        self.position =
            target.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_never_look_like_file_ids() {
        let entry = Entry { pack: MAX_PACK, offset: PACK_BYTES + 5 };
        assert_eq!(Entry::of(entry.id()), Some(entry));
        assert_eq!(Entry::of(12345), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn append_read_delete_walk() {
        let dir = tempfile::tempdir().unwrap();
        let packs = Packs::open(dir.path()).unwrap();
        let a = packs.append(b"first blob").unwrap();
        let big = vec![7u8; 100_000];
        let b = packs.append(&big).unwrap();
        packs.make_durable(&[Entry::of(a).unwrap(), Entry::of(b).unwrap()]).await.unwrap();
        let (file, start, length) = packs.locate(b).unwrap();
        let mut read = Vec::new();
        EntryReader::new(file, start, length).read_to_end(&mut read).unwrap();
        assert_eq!(read, big);
        assert_eq!(packs.list().unwrap(), vec![a, b]);

        packs.delete(&[b, b]).unwrap();
        assert!(matches!(packs.locate(b), Err(BlobError::Missing(_))));
        assert_eq!(packs.list().unwrap(), vec![a]);
        let (file, start, length) = packs.locate(a).unwrap();
        let mut read = Vec::new();
        EntryReader::new(file, start, length).read_to_end(&mut read).unwrap();
        assert_eq!(read, b"first blob");

        // A torn tail (a header promising more than was written) ends the walk.
        let pack = dir.path().join("packs").join(format!("{:08x}", Entry::of(a).unwrap().pack));
        let file = OpenOptions::new().append(true).open(&pack).unwrap();
        file.write_all_at(b"KPL1\xff\x00\x00\x00abc", std::fs::metadata(&pack).unwrap().len()).unwrap();
        assert_eq!(packs.list().unwrap(), vec![a]);

        // The next run starts a new pack; the old one goes once nothing in it lives.
        drop(packs);
        let packs = Packs::open(dir.path()).unwrap();
        let c = packs.append(b"next run").unwrap();
        assert_ne!(Entry::of(c).unwrap().pack, Entry::of(a).unwrap().pack);
        packs.delete(&[a]).unwrap();
        assert!(!pack.exists(), "a pack of an earlier run with nothing live is removed");
        assert_eq!(packs.list().unwrap(), vec![c]);
    }
}
