//! Body segments in append-only files beside sled (store format 6): `<store>/bodies/<id>.log`,
//! where a file's id is the seq of the first segment written into it.
//!
//! sled copies a leaf node on every insert, so its cost is per insert; a body segment closed at
//! sled's ~6 KB leaf-friendly size meant one insert per two agent steps. Here a body segment is
//! one `pwrite` into the page cache whatever its size, and its span segment no longer has to
//! close early because of it: a span segment is sized by its spans alone, its bodies follow in
//! one record. sled keeps a 25-byte [`BodyRef`] under the segment's `B` key, so every rule about
//! `B` keys (commit records, torn batches, retention, orphaned bases) is unchanged.
//!
//! A record is `seq(8) len: u32 crc32: u32` then `len` bytes (the segment as `segment_codec`
//! stores it). Writes go to the active file until it passes [`FILE_BYTES`]; the recorder is the
//! only writer. Readers `pread` concurrently: a record is written before the sled insert that
//! names it, so whatever a reader can find is already in the file.
//!
//! Durability: [`BodyLog::sync`] runs before sled's flush, so a durable reference never names
//! bytes that are not. At open, the last file is cut back to the end of the last record sled
//! names (a batch a crash cut short leaves bytes after it), and files past it are removed.
//! Deleting a span rewrites its body segment inline in sled and [`BodyLog::erase`]s the old
//! record (zeros over it): deleted text does not stay on disk. Retention frees whole files:
//! those below the first file any remaining reference names.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::store::error::StoreError;

/// A file is closed (and the next one started) once it holds this many bytes.
pub(crate) const FILE_BYTES: u64 = 64 << 20;
/// The first byte of a `B` value that is a reference (an inline segment starts with `Z` or 0).
const REF_TAG: u8 = b'F';
const REF_BYTES: usize = 25;
const HEADER_BYTES: usize = 16;
/// Largest record accepted when reading (a segment's stored bytes; the header is a u32).
const MAX_RECORD_BYTES: u32 = 1 << 30;

/// Where a body segment's stored bytes are: file, offset of the record's header, length of
/// the bytes after it, and their CRC-32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BodyRef {
    pub(crate) file: u64,
    pub(crate) offset: u64,
    pub(crate) len: u32,
    pub(crate) crc: u32,
}

impl BodyRef {
    pub(crate) fn encode(&self) -> [u8; REF_BYTES] {
        let mut out = [0u8; REF_BYTES];
        out[0] = REF_TAG;
        out[1..9].copy_from_slice(&self.file.to_be_bytes());
        out[9..17].copy_from_slice(&self.offset.to_be_bytes());
        out[17..21].copy_from_slice(&self.len.to_be_bytes());
        out[21..25].copy_from_slice(&self.crc.to_be_bytes());
        out
    }

    /// The reference a `B` value holds; `None` when the value is a segment itself.
    pub(crate) fn decode(value: &[u8]) -> Option<BodyRef> {
        if value.len() != REF_BYTES || value[0] != REF_TAG {
            return None;
        }
        let u64_at = |at: usize| u64::from_be_bytes(value[at..at + 8].try_into().expect("8 bytes"));
        let u32_at = |at: usize| u32::from_be_bytes(value[at..at + 4].try_into().expect("4 bytes"));
        Some(BodyRef { file: u64_at(1), offset: u64_at(9), len: u32_at(17), crc: u32_at(21) })
    }

    /// The offset just past the record.
    fn end(&self) -> u64 {
        self.offset + HEADER_BYTES as u64 + u64::from(self.len)
    }
}

struct Active {
    id: u64,
    file: Arc<File>,
    len: u64,
    /// Written since the last sync.
    dirty: bool,
}

/// The folder of body files: the writer's active file and a handle on every file for readers.
pub(crate) struct BodyLog {
    dir: PathBuf,
    file_bytes: u64,
    active: Mutex<Option<Active>>,
    files: RwLock<BTreeMap<u64, Arc<File>>>,
}

/// The first body-file reference among `B` values, in the order given (oldest first for
/// retention, newest first for recovery); `None` when none refers to a file.
pub(crate) fn first_body_ref(
    values: impl Iterator<Item = sled::Result<sled::IVec>>,
) -> Result<Option<BodyRef>, StoreError> {
    for value in values {
        if let Some(body_ref) = BodyRef::decode(&value?) {
            return Ok(Some(body_ref));
        }
    }
    Ok(None)
}

fn file_name(id: u64) -> String {
    format!("{id:020}.log")
}

fn io_error(e: io::Error) -> StoreError {
    StoreError::Sled(sled::Error::Io(e))
}

impl BodyLog {
    /// Opens (or creates) the folder and every body file in it.
    pub(crate) fn open(dir: &Path) -> Result<BodyLog, StoreError> {
        std::fs::create_dir_all(dir).map_err(io_error)?;
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(io_error)? {
            let entry = entry.map_err(io_error)?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".log")).and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let file = OpenOptions::new().read(true).write(true).open(entry.path()).map_err(io_error)?;
            files.insert(id, Arc::new(file));
        }
        Ok(BodyLog {
            dir: dir.to_path_buf(),
            file_bytes: FILE_BYTES,
            active: Mutex::new(None),
            files: RwLock::new(files),
        })
    }

    #[cfg(test)]
    pub(crate) fn set_file_bytes(&mut self, bytes: u64) {
        self.file_bytes = bytes;
    }

    /// Makes the files agree with the last reference sled holds (`None`: sled names no file):
    /// its file is cut back to the end of its record (bytes after it belong to a batch a
    /// crash cut short) and becomes the active file; files after it are removed.
    pub(crate) fn recover(&self, last: Option<BodyRef>) -> Result<(), StoreError> {
        // Locked in the order `append` takes them: the active file, then the handles.
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let mut files = self.files.write().unwrap_or_else(|p| p.into_inner());
        let first_unused = last.map_or(0, |r| r.file + 1);
        let after: Vec<u64> = files.range(first_unused..).map(|(id, _)| *id).collect();
        for id in after {
            files.remove(&id);
            std::fs::remove_file(self.dir.join(file_name(id))).map_err(io_error)?;
            tracing::warn!(file = id, "removed a body file no committed batch refers to");
        }
        let Some(last) = last else { return Ok(()) };
        let Some(file) = files.get(&last.file) else {
            tracing::warn!(
                file = last.file,
                "a body file the store refers to is missing: its spans read without bodies"
            );
            return Ok(());
        };
        let len = file.metadata().map_err(io_error)?.len();
        if len > last.end() {
            file.set_len(last.end()).map_err(io_error)?;
            tracing::warn!(
                file = last.file,
                bytes = len - last.end(),
                "cut off the bodies of a write a crash cut short"
            );
        } else if len < last.end() {
            tracing::warn!(
                file = last.file,
                "a body file is shorter than the store expects: the last bodies read as lost"
            );
        }
        *active = Some(Active { id: last.file, file: file.clone(), len: len.min(last.end()), dirty: false });
        Ok(())
    }

    /// Appends segment `seq`'s stored bytes; the reference to keep under its `B` key.
    pub(crate) fn append(&self, seq: u64, bytes: &[u8]) -> Result<BodyRef, StoreError> {
        let len = u32::try_from(bytes.len()).ok().filter(|n| *n <= MAX_RECORD_BYTES);
        let len = len.ok_or_else(|| StoreError::Corrupt(format!("a body segment of {} bytes", bytes.len())))?;
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if active.as_ref().is_none_or(|a| a.len >= self.file_bytes) {
            if let Some(done) = active.take() {
                if done.dirty {
                    done.file.sync_data().map_err(io_error)?;
                }
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(self.dir.join(file_name(seq)))
                .map_err(io_error)?;
            let file = Arc::new(file);
            self.files.write().unwrap_or_else(|p| p.into_inner()).insert(seq, file.clone());
            *active = Some(Active { id: seq, file, len: 0, dirty: false });
        }
        let a = active.as_mut().expect("an active file was just opened");
        let crc = crc32fast::hash(bytes);
        let mut header = [0u8; HEADER_BYTES];
        header[..8].copy_from_slice(&seq.to_be_bytes());
        header[8..12].copy_from_slice(&len.to_be_bytes());
        header[12..].copy_from_slice(&crc.to_be_bytes());
        let body_ref = BodyRef { file: a.id, offset: a.len, len, crc };
        // Past the active length whatever happens: a failed write leaves no reference, and the
        // next record starts after whatever it left.
        a.len = body_ref.end();
        a.dirty = true;
        a.file.write_all_at(&header, body_ref.offset).map_err(io_error)?;
        a.file.write_all_at(bytes, body_ref.offset + HEADER_BYTES as u64).map_err(io_error)?;
        Ok(body_ref)
    }

    /// The stored bytes a reference names, checked against its CRC.
    pub(crate) fn read(&self, r: &BodyRef) -> Result<Vec<u8>, StoreError> {
        let file = self.files.read().unwrap_or_else(|p| p.into_inner()).get(&r.file).cloned();
        let file = file.ok_or_else(|| StoreError::Corrupt(format!("body file {} is missing", r.file)))?;
        if r.len > MAX_RECORD_BYTES {
            return Err(StoreError::Corrupt(format!("a body reference claims {} bytes", r.len)));
        }
        let mut bytes = vec![0u8; r.len as usize];
        file.read_exact_at(&mut bytes, r.offset + HEADER_BYTES as u64).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => StoreError::Corrupt(format!("body file {} ends before its record", r.file)),
            _ => io_error(e),
        })?;
        if crc32fast::hash(&bytes) != r.crc {
            return Err(StoreError::Corrupt(format!("a body record of file {} is damaged", r.file)));
        }
        Ok(bytes)
    }

    /// Overwrites a record with zeros (its segment was rewritten elsewhere: deleted text).
    pub(crate) fn erase(&self, r: &BodyRef) -> Result<(), StoreError> {
        let Some(file) = self.files.read().unwrap_or_else(|p| p.into_inner()).get(&r.file).cloned() else {
            return Ok(());
        };
        let zeros = vec![0u8; (HEADER_BYTES as u64 + u64::from(r.len)).min(1 << 20) as usize];
        let mut at = r.offset;
        while at < r.end() {
            let n = (r.end() - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], at).map_err(io_error)?;
            at += n as u64;
        }
        // The active file is synced with the next flush; another is synced now.
        match self.active.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(active) if active.id == r.file => active.dirty = true,
            _ => file.sync_data().map_err(io_error)?,
        }
        Ok(())
    }

    /// Makes every appended record durable (called before sled's flush).
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = active.as_mut().filter(|a| a.dirty) {
            a.file.sync_data().map_err(io_error)?;
            a.dirty = false;
        }
        Ok(())
    }

    /// Removes every file below `first_needed` (the first file a remaining reference names;
    /// `u64::MAX` when none does). Returns the bytes freed.
    pub(crate) fn remove_files_before(&self, first_needed: u64) -> Result<u64, StoreError> {
        // Locked in the order `append` takes them: the active file, then the handles.
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let mut files = self.files.write().unwrap_or_else(|p| p.into_inner());
        let old: Vec<u64> = files.range(..first_needed).map(|(id, _)| *id).collect();
        let mut freed = 0;
        for id in old {
            if active.as_ref().is_some_and(|a| a.id == id) {
                *active = None;
            }
            if let Some(file) = files.remove(&id) {
                freed += file.metadata().map(|m| m.len()).unwrap_or(0);
            }
            std::fs::remove_file(self.dir.join(file_name(id))).map_err(io_error)?;
        }
        Ok(freed)
    }

    /// Bytes of every body file (what bodies cost on disk, erased records included).
    pub(crate) fn file_bytes_on_disk(&self) -> u64 {
        let files = self.files.read().unwrap_or_else(|p| p.into_inner());
        files.values().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_and_damage_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let log = BodyLog::open(dir.path()).unwrap();
        let a = log.append(7, b"first segment").unwrap();
        let b = log.append(8, b"second").unwrap();
        assert_eq!((a.file, b.file), (7, 7));
        assert_eq!(log.read(&a).unwrap(), b"first segment");
        assert_eq!(log.read(&b).unwrap(), b"second");
        assert_eq!(BodyRef::decode(&b.encode()), Some(b));
        assert_eq!(BodyRef::decode(b"\0\0\0\x01"), None);
        log.erase(&a).unwrap();
        assert!(log.read(&a).is_err(), "an erased record no longer reads");
        assert_eq!(log.read(&b).unwrap(), b"second");
        let past = BodyRef { offset: 1 << 20, ..b };
        assert!(log.read(&past).is_err());
        let lying = BodyRef { len: u32::MAX, ..b };
        assert!(log.read(&lying).is_err());
    }

    #[test]
    fn files_roll_over_and_whole_files_are_freed() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = BodyLog::open(dir.path()).unwrap();
        log.set_file_bytes(100);
        let refs: Vec<BodyRef> = (1..=6).map(|seq| log.append(seq, &[seq as u8; 60]).unwrap()).collect();
        let files: Vec<u64> = refs.iter().map(|r| r.file).collect();
        assert_eq!(files, [1, 1, 3, 3, 5, 5]);
        assert!(log.remove_files_before(5).unwrap() > 0);
        assert!(log.read(&refs[0]).is_err());
        assert_eq!(log.read(&refs[5]).unwrap(), [6u8; 60]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        log.remove_files_before(u64::MAX).unwrap();
        let again = log.append(9, b"after all were freed").unwrap();
        assert_eq!(again.file, 9);
        assert_eq!(log.read(&again).unwrap(), b"after all were freed");
    }

    #[test]
    fn recovery_cuts_bytes_after_the_last_reference_and_removes_later_files() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, torn) = {
            let mut log = BodyLog::open(dir.path()).unwrap();
            log.set_file_bytes(100);
            let kept = log.append(1, &[1; 30]).unwrap();
            let torn = log.append(2, &[2; 30]).unwrap();
            log.append(3, &[3; 80]).unwrap(); // a later file, also never committed
            (kept, torn)
        };
        let log = BodyLog::open(dir.path()).unwrap();
        log.recover(Some(kept)).unwrap();
        assert_eq!(std::fs::metadata(dir.path().join(file_name(1))).unwrap().len(), kept.end());
        assert!(!dir.path().join(file_name(3)).exists());
        let next = log.append(4, b"next").unwrap();
        assert_eq!(next.offset, torn.offset, "appends continue where the last committed record ends");
        assert_eq!(log.read(&kept).unwrap(), [1; 30]);
        assert_eq!(log.read(&next).unwrap(), b"next");
    }
}
