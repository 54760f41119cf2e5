//! A streaming ZIP writer (PKWARE APPNOTE 6.3.10), for studies downloaded as one archive. Entries
//! are stored (DICOM pixel data barely compresses, and storing keeps the server at wire speed),
//! each followed by a data descriptor because its CRC is only known once its bytes have passed.
//! ZIP64 records are written only where a size, an offset or the entry count needs them, so
//! ordinary studies open in every unzip tool, and studies beyond 4 GiB still open in current ones.

use std::time::SystemTime;

const LOCAL_HEADER: u32 = 0x0403_4b50;
const DATA_DESCRIPTOR: u32 = 0x0807_4b50;
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const ZIP64_END: u32 = 0x0606_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
const END: u32 = 0x0605_4b50;
/// Bit 3: sizes and CRC follow the data; bit 11: names are UTF-8.
const FLAGS: u16 = 0x0008 | 0x0800;
const VERSION_ZIP64: u16 = 45;
const VERSION_PLAIN: u16 = 20;
const MADE_BY_UNIX: u16 = 3 << 8;
const U32_MAX: u64 = 0xFFFF_FFFF;

struct Entry {
    name: String,
    offset: u64,
    size: u64,
    crc: u32,
    zip64: bool,
}

/// The writer's state: call [`ZipWriter::begin`], then [`ZipWriter::data`] for each chunk,
/// [`ZipWriter::end`], and at last [`ZipWriter::finish`]; each returns the bytes to send.
pub struct ZipWriter {
    offset: u64,
    entries: Vec<Entry>,
    hasher: crc32fast::Hasher,
    written: u64,
    time: u16,
    date: u16,
}

impl Default for ZipWriter {
    fn default() -> Self {
        ZipWriter::new(SystemTime::now())
    }
}

impl ZipWriter {
    pub fn new(now: SystemTime) -> ZipWriter {
        let (time, date) = dos_time(now);
        ZipWriter { offset: 0, entries: Vec::new(), hasher: crc32fast::Hasher::new(), written: 0, time, date }
    }

    /// The local header of an entry of `size` bytes (known upfront: it decides ZIP64).
    pub fn begin(&mut self, name: &str, size: u64) -> Vec<u8> {
        let zip64 = size >= U32_MAX || self.offset >= U32_MAX;
        let mut out = Vec::with_capacity(30 + name.len() + 20);
        put32(&mut out, LOCAL_HEADER);
        put16(&mut out, if zip64 { VERSION_ZIP64 } else { VERSION_PLAIN });
        put16(&mut out, FLAGS);
        put16(&mut out, 0); // stored
        put16(&mut out, self.time);
        put16(&mut out, self.date);
        put32(&mut out, 0); // CRC, sizes: in the data descriptor
        let placeholder = if zip64 { u32::MAX } else { 0 };
        put32(&mut out, placeholder);
        put32(&mut out, placeholder);
        put16(&mut out, name.len() as u16);
        put16(&mut out, if zip64 { 20 } else { 0 });
        out.extend_from_slice(name.as_bytes());
        if zip64 {
            put16(&mut out, 0x0001);
            put16(&mut out, 16);
            put64(&mut out, 0);
            put64(&mut out, 0);
        }
        self.entries.push(Entry { name: name.to_string(), offset: self.offset, size, crc: 0, zip64 });
        self.hasher = crc32fast::Hasher::new();
        self.written = 0;
        self.offset += out.len() as u64;
        out
    }

    /// Accounts for a chunk of the current entry's bytes (sent as they are).
    pub fn data(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
        self.written += chunk.len() as u64;
        self.offset += chunk.len() as u64;
    }

    /// The data descriptor closing the current entry. The size announced in [`begin`] must be
    /// what was written: a mismatch would corrupt the archive, so it is an error.
    ///
    /// [`begin`]: ZipWriter::begin
    pub fn end(&mut self) -> Result<Vec<u8>, String> {
        let crc = std::mem::take(&mut self.hasher).finalize();
        let entry = self.entries.last_mut().ok_or("no entry was begun")?;
        if self.written != entry.size {
            return Err(format!("{}: {} bytes announced, {} written", entry.name, entry.size, self.written));
        }
        entry.crc = crc;
        let mut out = Vec::with_capacity(24);
        put32(&mut out, DATA_DESCRIPTOR);
        put32(&mut out, crc);
        if entry.zip64 {
            put64(&mut out, entry.size);
            put64(&mut out, entry.size);
        } else {
            put32(&mut out, entry.size as u32);
            put32(&mut out, entry.size as u32);
        }
        self.offset += out.len() as u64;
        Ok(out)
    }

    /// The central directory and the end records.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let directory_offset = self.offset;
        for entry in &self.entries {
            let big_size = entry.size >= U32_MAX;
            let big_offset = entry.offset >= U32_MAX;
            let mut extra = Vec::new();
            if big_size || big_offset {
                put16(&mut extra, 0x0001);
                let length = if big_size { 16 } else { 0 } + if big_offset { 8 } else { 0 };
                put16(&mut extra, length);
                if big_size {
                    put64(&mut extra, entry.size);
                    put64(&mut extra, entry.size);
                }
                if big_offset {
                    put64(&mut extra, entry.offset);
                }
            }
            let version = if entry.zip64 || !extra.is_empty() { VERSION_ZIP64 } else { VERSION_PLAIN };
            put32(&mut out, CENTRAL_HEADER);
            put16(&mut out, MADE_BY_UNIX | version);
            put16(&mut out, version);
            put16(&mut out, FLAGS);
            put16(&mut out, 0);
            put16(&mut out, self.time);
            put16(&mut out, self.date);
            put32(&mut out, entry.crc);
            let size = if big_size { u32::MAX } else { entry.size as u32 };
            put32(&mut out, size);
            put32(&mut out, size);
            put16(&mut out, entry.name.len() as u16);
            put16(&mut out, extra.len() as u16);
            put16(&mut out, 0); // comment
            put16(&mut out, 0); // disk
            put16(&mut out, 0); // internal attributes
            put32(&mut out, 0o100_644 << 16); // a regular file, rw-r--r--
            put32(&mut out, if big_offset { u32::MAX } else { entry.offset as u32 });
            out.extend_from_slice(entry.name.as_bytes());
            out.extend_from_slice(&extra);
        }
        let directory_size = out.len() as u64;
        let count = self.entries.len() as u64;
        let zip64 = count >= 0xFFFF || directory_offset >= U32_MAX || directory_size >= U32_MAX;
        if zip64 {
            let record_offset = directory_offset + directory_size;
            put32(&mut out, ZIP64_END);
            put64(&mut out, 44);
            put16(&mut out, MADE_BY_UNIX | VERSION_ZIP64);
            put16(&mut out, VERSION_ZIP64);
            put32(&mut out, 0);
            put32(&mut out, 0);
            put64(&mut out, count);
            put64(&mut out, count);
            put64(&mut out, directory_size);
            put64(&mut out, directory_offset);
            put32(&mut out, ZIP64_LOCATOR);
            put32(&mut out, 0);
            put64(&mut out, record_offset);
            put32(&mut out, 1);
        }
        put32(&mut out, END);
        put16(&mut out, 0);
        put16(&mut out, 0);
        let short_count = if zip64 { 0xFFFF } else { count as u16 };
        put16(&mut out, short_count);
        put16(&mut out, short_count);
        put32(&mut out, if zip64 { u32::MAX } else { directory_size as u32 });
        put32(&mut out, if zip64 { u32::MAX } else { directory_offset as u32 });
        put16(&mut out, 0);
        self.offset += out.len() as u64;
        out
    }
}

fn put16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// MS-DOS time and date (UTC; the format has no zone) of `now`.
fn dos_time(now: SystemTime) -> (u16, u16) {
    let seconds = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = crate::civil::date_from_days(days as i64);
    let year = year.clamp(1980, 2107);
    let time = (((rest / 3600) << 11) | ((rest % 3600 / 60) << 5) | ((rest % 60) / 2)) as u16;
    let date = (((year - 1980) << 9) | (month << 5) | day) as u16;
    (time, date)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dos_time_of_a_known_instant() {
        // 2026-11-25 17:30:08 UTC.
        let (time, date) = dos_time(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_627_808));
        assert_eq!(date, (46 << 9) | (11 << 5) | 25);
        assert_eq!(time, (17 << 11) | (30 << 5) | 4);
    }

    #[test]
    fn a_two_entry_archive_has_consistent_records() {
        let mut zip = ZipWriter::new(SystemTime::UNIX_EPOCH);
        let mut bytes = Vec::new();
        for (name, data) in [("a/1.dcm", &b"hello"[..]), ("a/2.dcm", &b"world!"[..])] {
            bytes.extend(zip.begin(name, data.len() as u64));
            zip.data(data);
            bytes.extend_from_slice(data);
            bytes.extend(zip.end().unwrap());
        }
        bytes.extend(zip.finish());
        let end = bytes.len() - 22;
        assert_eq!(&bytes[end..end + 4], &END.to_le_bytes());
        assert_eq!(u16::from_le_bytes([bytes[end + 10], bytes[end + 11]]), 2);
        let directory_offset = u32::from_le_bytes(bytes[end + 16..end + 20].try_into().unwrap()) as usize;
        assert_eq!(&bytes[directory_offset..directory_offset + 4], &CENTRAL_HEADER.to_le_bytes());
        let crc = u32::from_le_bytes(bytes[directory_offset + 16..directory_offset + 20].try_into().unwrap());
        assert_eq!(crc, crc32fast::hash(b"hello"));
    }

    #[test]
    fn entries_beyond_4_gib_get_zip64_records() {
        let mut zip = ZipWriter::new(SystemTime::UNIX_EPOCH);
        zip.offset = 5 << 30; // as if 5 GiB had been written
        let header = zip.begin("late.dcm", 4);
        assert_eq!(u16::from_le_bytes([header[4], header[5]]), VERSION_ZIP64);
        assert_eq!(&header[30 + 8..30 + 10], &1u16.to_le_bytes(), "a ZIP64 extra field");
        zip.data(b"abcd");
        assert_eq!(zip.end().unwrap().len(), 24, "8-byte sizes in the descriptor");
        let tail = zip.finish();
        let find = |signature: u32| tail.windows(4).position(|w| w == signature.to_le_bytes());
        let central = find(CENTRAL_HEADER).unwrap();
        let extra_length = u16::from_le_bytes([tail[central + 30], tail[central + 31]]);
        assert_eq!(extra_length, 12, "the offset in a ZIP64 extra field");
        assert_eq!(&tail[central + 42..central + 46], &u32::MAX.to_le_bytes());
        assert!(find(ZIP64_END).is_some() && find(ZIP64_LOCATOR).is_some());
    }

    #[test]
    fn a_short_entry_is_an_error() {
        let mut zip = ZipWriter::new(SystemTime::UNIX_EPOCH);
        zip.begin("x", 10);
        zip.data(b"12345");
        assert!(zip.end().is_err());
    }
}
