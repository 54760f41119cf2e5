//! What `kura upload` was handed, turned into a list of instances: files, folders (recursive),
//! DICOMDIR files (PS3.10 §7.2: the files its directory records reference, resolved inside its
//! folder) and ZIP archives (read with the `zip` crate, held to limits on entries, entry size,
//! inflated bytes and inflation ratio). Every instance is parsed once here (the framing of the
//! whole file checked, the data set up to Pixel Data) for the UIDs it is grouped and resumed by.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dicom_dictionary_std::tags;

use crate::dicom::part10;

pub const DEFAULT_ZIP_MAX_ENTRIES: u64 = 100_000;
pub const DEFAULT_ZIP_MAX_TOTAL_BYTES: u64 = 64 * 1024 * 1024 * 1024;
/// Inflated bytes per compressed byte of an entry over [`RATIO_CHECKED_ABOVE`]. Deflate tops out
/// near 1032:1; CT and MR deflate 2–5:1, and only near-uniform images come close to this.
pub const DEFAULT_ZIP_MAX_RATIO: u64 = 250;
/// Smaller entries are held to the entry and total caps only: a blank slice may deflate 900:1,
/// and a many-entry bomb is stopped by the declared and inflated totals.
const RATIO_CHECKED_ABOVE: u64 = 8 * 1024 * 1024;
/// A DICOMDIR is an index: larger than this it is not one we read.
const MAX_DICOMDIR_BYTES: u64 = 64 * 1024 * 1024;
/// Folder nesting followed at most (symbolic links to folders are not followed at all).
const MAX_DEPTH: usize = 64;
/// The Media Storage Directory Storage SOP Class (PS3.4 Annex F): a DICOMDIR, not an instance.
const DICOMDIR_SOP_CLASS: &str = "1.2.840.10008.1.3.10";

/// Limits on what is read from input.
#[derive(Debug, Clone, Copy)]
pub struct InputLimits {
    pub max_instance_bytes: u64,
    pub zip_max_entries: u64,
    pub zip_max_total_bytes: u64,
    pub zip_max_ratio: u64,
}

/// Where an instance's bytes are.
#[derive(Debug, Clone)]
pub enum Origin {
    File(PathBuf),
    ZipEntry { archive: Arc<PathBuf>, index: usize, name: String, compressed: u64 },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::ZipEntry { archive, name, .. } => write!(f, "{}!{name}", archive.display()),
        }
    }
}

/// An instance found in the input, with the UIDs its upload is planned by.
#[derive(Debug, Clone)]
pub struct Scanned {
    pub origin: Origin,
    pub size: u64,
    pub study_uid: String,
    pub sop_uid: String,
}

/// An input that is not sent, and why.
#[derive(Debug, Clone)]
pub struct LocalFailure {
    pub origin: String,
    pub sop_uid: Option<String>,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Gathered {
    pub instances: Vec<Scanned>,
    /// Files that are not DICOM PS3.10 (no `DICM` prefix), and DICOMDIRs inside ZIP archives.
    pub not_dicom: u64,
    pub failures: Vec<LocalFailure>,
}

/// Inputs that stop the upload before anything is sent.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: refused as a zip bomb: {reason}")]
    ZipBomb { path: String, reason: String },
    #[error("{path}: not a readable ZIP archive: {reason}")]
    Zip { path: String, reason: String },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> InputError + '_ {
    move |source| InputError::Io { path: path.display().to_string(), source }
}

/// Reads every input; a ZIP archive over its limits refuses the whole upload (nothing of it
/// may be sent half-way), a single unreadable instance is a [`LocalFailure`].
pub fn gather(paths: &[PathBuf], limits: &InputLimits) -> Result<Gathered, InputError> {
    let mut walker = Walker { limits: *limits, gathered: Gathered::default(), seen: HashSet::new() };
    for path in paths {
        let meta = std::fs::metadata(path).map_err(io_error(path))?;
        if meta.is_dir() {
            walker.folder(path, 0)?;
        } else {
            walker.file(path, meta.len())?;
        }
    }
    Ok(walker.gathered)
}

struct Walker {
    limits: InputLimits,
    gathered: Gathered,
    /// Canonical paths already taken: a file named by a DICOMDIR and found by the walk too is
    /// sent once.
    seen: HashSet<PathBuf>,
}

impl Walker {
    fn folder(&mut self, dir: &Path, depth: usize) -> Result<(), InputError> {
        if depth > MAX_DEPTH {
            self.fail(dir.display().to_string(), None, format!("nested deeper than {MAX_DEPTH} folders"));
            return Ok(());
        }
        let mut entries: Vec<PathBuf> =
            std::fs::read_dir(dir).map_err(io_error(dir))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for path in entries {
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            if meta.is_dir() {
                self.folder(&path, depth + 1)?;
            } else if meta.file_type().is_symlink() {
                // A link to a file is followed; a link to a folder could loop and is not.
                if let Ok(target) = std::fs::metadata(&path)
                    && target.is_file()
                {
                    self.file(&path, target.len())?;
                }
            } else if meta.is_file() {
                self.file(&path, meta.len())?;
            }
        }
        Ok(())
    }

    fn fail(&mut self, origin: String, sop_uid: Option<String>, reason: String) {
        self.gathered.failures.push(LocalFailure { origin, sop_uid, reason });
    }

    fn file(&mut self, path: &Path, size: u64) -> Result<(), InputError> {
        let canonical = std::fs::canonicalize(path).map_err(io_error(path))?;
        if !self.seen.insert(canonical) {
            return Ok(());
        }
        let mut head = [0u8; part10::HEADER_LEN];
        let read = read_head(path, &mut head).map_err(io_error(path))?;
        if head[..read].starts_with(b"PK\x03\x04") || head[..read].starts_with(b"PK\x05\x06") {
            return self.zip(path);
        }
        if !part10::has_dicm_prefix(&head[..read]) {
            self.gathered.not_dicom += 1;
            return Ok(());
        }
        if is_dicomdir_name(path) {
            return self.dicomdir(path, size);
        }
        if size > self.limits.max_instance_bytes {
            let reason = format!("{size} bytes, more than --max-instance-bytes {}", self.limits.max_instance_bytes);
            self.fail(path.display().to_string(), None, reason);
            return Ok(());
        }
        let file = File::open(path).map_err(io_error(path))?;
        match part10::parse(BufReader::new(file), size) {
            Ok(parsed) if parsed.sop_class_uid == DICOMDIR_SOP_CLASS => self.dicomdir(path, size),
            Ok(parsed) => {
                self.gathered.instances.push(Scanned {
                    origin: Origin::File(path.to_path_buf()),
                    size,
                    study_uid: parsed.study_uid,
                    sop_uid: parsed.sop_instance_uid,
                });
                Ok(())
            }
            Err(error) => {
                self.fail(path.display().to_string(), None, error.to_string());
                Ok(())
            }
        }
    }

    /// The files a DICOMDIR's directory records name (Referenced File ID, (0004,1500)), each
    /// resolved inside the DICOMDIR's folder: a component that is empty, `.`, `..` or holds a
    /// separator, and a path that leaves the folder through a link, is refused.
    fn dicomdir(&mut self, path: &Path, size: u64) -> Result<(), InputError> {
        if size > MAX_DICOMDIR_BYTES {
            self.fail(path.display().to_string(), None, format!("a DICOMDIR of more than {MAX_DICOMDIR_BYTES} bytes"));
            return Ok(());
        }
        let object = match dicom_object::OpenFileOptions::new().open_file(path) {
            Ok(object) => object,
            Err(error) => {
                self.fail(path.display().to_string(), None, format!("unreadable DICOMDIR: {error}"));
                return Ok(());
            }
        };
        let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let folder = std::fs::canonicalize(folder).map_err(io_error(folder))?;
        let mut referenced = Vec::new();
        if let Ok(records) = object.element(tags::DIRECTORY_RECORD_SEQUENCE)
            && let Some(items) = records.items()
        {
            for item in items {
                if let Ok(file_id) = item.element(tags::REFERENCED_FILE_ID)
                    && let Ok(components) = file_id.to_multi_str()
                {
                    referenced.push(components.iter().map(|c| c.trim().to_string()).collect::<Vec<_>>());
                }
            }
        }
        for components in referenced {
            let shown = format!("{} -> {}", path.display(), components.join("\\"));
            match resolve_inside(&folder, &components) {
                Ok(file) => {
                    let size = std::fs::metadata(&file).map_err(io_error(&file))?.len();
                    self.file(&file, size)?;
                }
                Err(reason) => self.fail(shown, None, reason),
            }
        }
        Ok(())
    }

    fn zip(&mut self, path: &Path) -> Result<(), InputError> {
        let shown = path.display().to_string();
        let zip_error =
            |error: zip::result::ZipError| InputError::Zip { path: shown.clone(), reason: error.to_string() };
        let mut archive = zip::ZipArchive::new(File::open(path).map_err(io_error(path))?).map_err(zip_error)?;
        let limits = self.limits;
        let bomb = |reason: String| InputError::ZipBomb { path: shown.clone(), reason };
        if archive.len() as u64 > limits.zip_max_entries {
            return Err(bomb(format!("{} entries, more than {}", archive.len(), limits.zip_max_entries)));
        }
        // The sizes the central directory declares, checked before anything is inflated.
        let mut declared_total = 0u64;
        for index in 0..archive.len() {
            let entry = archive.by_index_raw(index).map_err(zip_error)?;
            declared_total = declared_total.saturating_add(entry.size());
            check_ratio(entry.size(), entry.compressed_size(), limits.zip_max_ratio)
                .map_err(|r| bomb(format!("{}: {r}", entry_name(&entry, index))))?;
        }
        if declared_total > limits.zip_max_total_bytes {
            return Err(bomb(format!(
                "declares {declared_total} inflated bytes, more than {}",
                limits.zip_max_total_bytes
            )));
        }
        let archive_path = Arc::new(path.to_path_buf());
        let mut inflated_total = 0u64;
        for index in 0..archive.len() {
            let (name, compressed, is_dir) = {
                let entry = archive.by_index_raw(index).map_err(zip_error)?;
                (entry_name(&entry, index), entry.compressed_size(), entry.is_dir())
            };
            if is_dir {
                continue;
            }
            let origin = Origin::ZipEntry { archive: archive_path.clone(), index, name: name.clone(), compressed };
            let cap = limits
                .max_instance_bytes
                .min(limits.zip_max_total_bytes - inflated_total.min(limits.zip_max_total_bytes));
            let bytes = match read_zip_entry(&mut archive, index, compressed, cap, limits.zip_max_ratio) {
                Ok(bytes) => bytes,
                Err(EntryError::Bomb(reason)) => return Err(bomb(format!("{name}: {reason}"))),
                Err(EntryError::TooLarge) if cap < limits.max_instance_bytes => {
                    return Err(bomb(format!("inflates to more than {} bytes", limits.zip_max_total_bytes)));
                }
                Err(error) => {
                    self.fail(origin.to_string(), None, error.to_string());
                    continue;
                }
            };
            inflated_total += bytes.len() as u64;
            if !part10::has_dicm_prefix(&bytes) || is_dicomdir_name(Path::new(&name)) {
                self.gathered.not_dicom += 1;
                continue;
            }
            let size = bytes.len() as u64;
            match part10::parse(Cursor::new(&bytes), size) {
                Ok(parsed) if parsed.sop_class_uid == DICOMDIR_SOP_CLASS => self.gathered.not_dicom += 1,
                Ok(parsed) => self.gathered.instances.push(Scanned {
                    origin,
                    size,
                    study_uid: parsed.study_uid,
                    sop_uid: parsed.sop_instance_uid,
                }),
                Err(error) => self.fail(origin.to_string(), None, error.to_string()),
            }
        }
        Ok(())
    }
}

/// An entry's name as stored (for messages only: nothing is extracted under it).
fn entry_name<R: Read>(entry: &zip::read::ZipFile<'_, R>, index: usize) -> String {
    entry.name().map(|name| name.into_owned()).unwrap_or_else(|_| format!("entry {index}"))
}

fn read_head(path: &Path, head: &mut [u8]) -> std::io::Result<usize> {
    let mut file = File::open(path)?;
    let mut read = 0;
    while read < head.len() {
        match file.read(&mut head[read..])? {
            0 => break,
            n => read += n,
        }
    }
    Ok(read)
}

fn is_dicomdir_name(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.eq_ignore_ascii_case("DICOMDIR"))
}

fn check_ratio(size: u64, compressed: u64, max_ratio: u64) -> Result<(), String> {
    if size > RATIO_CHECKED_ABOVE && size / compressed.max(1) > max_ratio {
        return Err(format!("{size} bytes from {compressed} compressed, more than {max_ratio}:1"));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum EntryError {
    #[error("larger than --max-instance-bytes")]
    TooLarge,
    #[error("{0}")]
    Bomb(String),
    #[error("{0}")]
    Read(String),
}

/// An entry's bytes, read no further than `cap` (whatever its header declared) and held to the
/// ratio as they inflate.
fn read_zip_entry(
    archive: &mut zip::ZipArchive<File>,
    index: usize,
    compressed: u64,
    cap: u64,
    max_ratio: u64,
) -> Result<Vec<u8>, EntryError> {
    let entry = archive.by_index(index).map_err(|e| EntryError::Read(e.to_string()))?;
    if entry.size() > cap {
        return Err(EntryError::TooLarge);
    }
    // The declared size was checked against the cap: it may size the buffer.
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    let mut limited = entry.take(cap.saturating_add(1));
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = limited.read(&mut chunk).map_err(|e| EntryError::Read(e.to_string()))?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
        if bytes.len() as u64 > cap {
            return Err(EntryError::TooLarge);
        }
        check_ratio(bytes.len() as u64, compressed, max_ratio).map_err(EntryError::Bomb)?;
    }
    Ok(bytes)
}

/// A Referenced File ID resolved below `folder` (canonical), or why not.
fn resolve_inside(folder: &Path, components: &[String]) -> Result<PathBuf, String> {
    if components.is_empty() {
        return Err("empty Referenced File ID".into());
    }
    let mut path = folder.to_path_buf();
    for component in components {
        if component.is_empty() || component == "." || component == ".." || component.contains(['/', '\\', '\0', ':']) {
            return Err(format!("Referenced File ID component {component:?} is not a plain name"));
        }
        let exact = path.join(component);
        // Media written on case-insensitive systems: the record says `IM0001`, the disk `im0001`.
        path = if exact.exists() { exact } else { find_ignoring_case(&path, component).unwrap_or(exact) };
    }
    let canonical = std::fs::canonicalize(&path).map_err(|e| format!("referenced file: {e}"))?;
    if !canonical.starts_with(folder) {
        return Err("the referenced file lies outside the DICOMDIR's folder".into());
    }
    if !canonical.is_file() {
        return Err("the referenced path is not a file".into());
    }
    Ok(canonical)
}

fn find_ignoring_case(dir: &Path, name: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .map(|e| e.path())
}

/// Reads instances' bytes for the prepare step, keeping ZIP archives open between entries.
#[derive(Default)]
pub struct SourceReader {
    archives: HashMap<PathBuf, zip::ZipArchive<File>>,
}

impl SourceReader {
    /// The bytes of `origin`, at most `max_bytes` (checked before they are allocated).
    pub fn read(&mut self, origin: &Origin, max_bytes: u64, max_ratio: u64) -> Result<Vec<u8>, String> {
        match origin {
            Origin::File(path) => {
                let file = File::open(path).map_err(|e| e.to_string())?;
                let size = file.metadata().map_err(|e| e.to_string())?.len();
                if size > max_bytes {
                    return Err(format!("{size} bytes, more than --max-instance-bytes {max_bytes}"));
                }
                let mut bytes = Vec::with_capacity(size as usize);
                file.take(max_bytes + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
                if bytes.len() as u64 > max_bytes {
                    return Err("the file grew beyond --max-instance-bytes while read".into());
                }
                Ok(bytes)
            }
            Origin::ZipEntry { archive, index, compressed, .. } => {
                if !self.archives.contains_key(archive.as_path()) {
                    let file = File::open(archive.as_path()).map_err(|e| e.to_string())?;
                    let opened = zip::ZipArchive::new(file).map_err(|e| e.to_string())?;
                    self.archives.insert(archive.to_path_buf(), opened);
                }
                let opened = self.archives.get_mut(archive.as_path()).expect("inserted above");
                read_zip_entry(opened, *index, *compressed, max_bytes, max_ratio).map_err(|e| e.to_string())
            }
        }
    }
}
