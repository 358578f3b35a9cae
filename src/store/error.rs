//! What can go wrong in the store: sled itself, or a stored value that does not decode.

#[derive(Debug)]
pub enum StoreError {
    Sled(sled::Error),
    Corrupt(String),
    Format(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Sled(e) => write!(f, "store: {e}"),
            StoreError::Corrupt(m) => write!(f, "store: corrupt record: {m}"),
            StoreError::Format(m) => write!(f, "store: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Sled(e)
    }
}
