//! The length-prefixed fields every store encoding is made of (segments, body records, piece
//! lists, commit records): a big-endian u32 length, then the bytes. A leaf: `layout` and
//! `dedup` both write and read with it.

use crate::store::error::StoreError;

/// A big-endian u32 from the front of `bytes`, and what follows it.
pub(super) fn take_u32(bytes: &[u8]) -> Result<(u32, &[u8]), StoreError> {
    if bytes.len() < 4 {
        return Err(StoreError::Corrupt("length cut short".into()));
    }
    let (n, rest) = bytes.split_at(4);
    Ok((u32::from_be_bytes(n.try_into().expect("4 bytes")), rest))
}

/// A field written by [`put_slice`]: its bytes, and what follows them.
pub(super) fn take_slice(bytes: &[u8]) -> Result<(&[u8], &[u8]), StoreError> {
    let (len, rest) = take_u32(bytes)?;
    let len = len as usize;
    if rest.len() < len {
        return Err(StoreError::Corrupt("record cut short".into()));
    }
    Ok(rest.split_at(len))
}

/// Appends `bytes` behind their length (a u32): what [`take_slice`] reads.
pub(super) fn put_slice(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Appends what `write` writes behind its length (a u32), without a copy.
pub(super) fn put_written(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    write(out);
    let len = (out.len() - len_at - 4) as u32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}
