//! What can go wrong in the store: sled itself, or a stored value that does not decode.

#[derive(Debug)]
pub enum StoreError {
    Sled(sled::Error),
    Corrupt(String),
    Format(String),
    /// Another process holds the store's lock: most likely another tracegate on the same path.
    InUse,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Sled(e) => write!(f, "store: {e}"),
            StoreError::Corrupt(m) => write!(f, "store: corrupt record: {m}"),
            StoreError::Format(m) => write!(f, "store: {m}"),
            StoreError::InUse => f.write_str(
                "another process holds this store (is another tracegate running on it?): stop it, or set storage.path to another directory",
            ),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            // sled takes an exclusive lock on its files when it opens them; 0.34 reports a lock
            // held elsewhere as an `Other` error with this wording (vendor/sled, config.rs).
            sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock") => StoreError::InUse,
            e => StoreError::Sled(e),
        }
    }
}
