//! The store's one error enum.

/// Why a store operation did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The record does not exist.
    #[error("no such record")]
    NotFound,
    /// The record exists and the write required that it did not.
    #[error("the record already exists")]
    AlreadyExists,
    /// `If-Match` did not match the record's current etag (or the record is absent).
    #[error("the etag does not match the current record")]
    PreconditionFailed,
    /// A continuation token that this store did not hand out.
    #[error("the continuation token is not valid")]
    InvalidContinuation,
    /// The storage engine failed (disk full, I/O error, ...).
    #[error("storage backend failure")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored value does not decode: the data directory is damaged or from an
    /// incompatible version.
    #[error("stored {table} record '{key}' does not decode")]
    Corrupt {
        /// Which table.
        table: &'static str,
        /// Which key.
        key: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// A record could not be encoded (a bug: every model type serializes).
    #[error("record does not encode")]
    Encode(#[source] serde_json::Error),
    /// A flush failed earlier: the store refuses writes until a flush succeeds again (each
    /// write attempt first probes with one). Reads are unaffected.
    #[error("the store is refusing writes after a failed flush")]
    Unhealthy,
    /// The group-commit thread has stopped; the store is unusable.
    #[error("the store is closed")]
    Closed,
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Backend(Box::new(e))
    }
}
