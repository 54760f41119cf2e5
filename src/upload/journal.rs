//! The upload journal: an append-only file of the instances a server acknowledged (listed in
//! a Store Instances Response's Referenced SOP Sequence, PS3.18 §10.5.3 and Annex I), so that a
//! restart after a cut link or a crash re-sends none of them, even where the uploader may not
//! search the server (an `uploader` key without `reader` is answered 403 by QIDO-RS).
//!
//! One record a line: `ack`, the DICOMweb root, the Study and the SOP Instance UID, separated
//! by tabs. A batch's records are written with one `write` and made durable by `sync_data`
//! before the next request leaves. A line cut short by a power cut has no newline and is
//! ignored on reading (its instance is sent again: the server takes identical bytes as a no-op).

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// Lines longer than this are not records (two UIDs of at most 64 characters and a URL).
const MAX_LINE: u64 = 4096;

pub struct Journal {
    path: PathBuf,
    root: String,
    file: File,
    acknowledged: HashSet<String>,
}

impl Journal {
    /// Opens (or creates) the journal and reads what it holds for `root`.
    pub fn open(path: &Path, root: &str) -> std::io::Result<Journal> {
        let mut file = crate::durable_fs::open_append(path)?;
        let mut torn = false;
        let mut acknowledged = HashSet::new();
        let mut reader = BufReader::new(File::open(path)?);
        let mut line = Vec::new();
        loop {
            line.clear();
            // Bounded: a line longer than any record is read in pieces and none of them matches.
            let n = (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            let Some(record) = line.strip_suffix(b"\n") else {
                torn = true;
                continue;
            };
            torn = false;
            let Ok(record) = std::str::from_utf8(record) else { continue };
            let mut fields = record.split('\t');
            if let (Some("ack"), Some(record_root), Some(_study), Some(sop), None) =
                (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
                && record_root == root
            {
                acknowledged.insert(sop.to_string());
            }
        }
        if torn {
            // Ends the torn record, so that the next one starts on a line of its own.
            file.write_all(b"\n")?;
            file.sync_data()?;
        }
        Ok(Journal { path: path.to_path_buf(), root: root.to_string(), file, acknowledged })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn contains(&self, sop_uid: &str) -> bool {
        self.acknowledged.contains(sop_uid)
    }

    /// Records instances of `study_uid` as acknowledged, durably, before returning.
    pub fn record(&mut self, study_uid: &str, sop_uids: &[String]) -> std::io::Result<()> {
        let mut text = String::new();
        for sop_uid in sop_uids.iter().filter(|uid| !self.acknowledged.contains(*uid)) {
            // UIDs are digits and dots (checked when the instance was read); the root has no tab.
            text.push_str(&format!("ack\t{}\t{study_uid}\t{sop_uid}\n", self.root));
        }
        if text.is_empty() {
            return Ok(());
        }
        self.file.write_all(text.as_bytes())?;
        self.file.sync_data()?;
        self.acknowledged.extend(sop_uids.iter().cloned());
        Ok(())
    }
}

/// `$XDG_STATE_HOME/kura/upload-journal`, else `~/.local/state/kura/upload-journal`.
pub fn default_path() -> Option<PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME").filter(|dir| !dir.is_empty()).map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME").filter(|dir| !dir.is_empty()).map(|home| Path::new(&home).join(".local/state"))
    })?;
    Some(state.join("kura").join("upload-journal"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_per_root_and_torn_lines_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/journal");
        let mut journal = Journal::open(&path, "http://a/dicomweb").unwrap();
        journal.record("1.2", &["1.2.3".into(), "1.2.4".into()]).unwrap();
        let mut other = Journal::open(&path, "http://b/dicomweb").unwrap();
        other.record("1.2", &["1.2.5".into()]).unwrap();
        // A power cut in the middle of a record: no newline.
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"ack\thttp://a/dicomweb\t1.2\t1.2.6").unwrap();
        let reopened = Journal::open(&path, "http://a/dicomweb").unwrap();
        assert!(reopened.contains("1.2.3") && reopened.contains("1.2.4"));
        assert!(!reopened.contains("1.2.5"), "another server's record");
        assert!(!reopened.contains("1.2.6"), "a torn record");
        let mut reopened = reopened;
        reopened.record("1.2", &["1.2.7".into()]).unwrap();
        assert!(Journal::open(&path, "http://a/dicomweb").unwrap().contains("1.2.7"), "a record after a torn one");
    }
}
