//! [`ReloadError`]: why a reload did not happen (the old dataset keeps serving). Pure data
//! and its messages.

use std::path::PathBuf;

use super::swap::SWAP_WAIT;
use crate::kv::LoadError;

/// Why a reload did not happen; the old dataset keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(
        "{}: refused: the reload could need {needed} bytes (old replicas {old} + the new \
         file's {file_bytes} bytes x (1 + {cores} cores)), over --kv-reload-max-bytes {limit}",
        path.display()
    )]
    OverMemoryLimit {
        path: PathBuf,
        needed: u64,
        old: u64,
        file_bytes: u64,
        cores: usize,
        limit: u64,
    },
    #[error("{}: cannot read the dataset file: {reason}", path.display())]
    Stat {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("tally is stopping")]
    Stopping,
    #[error(
        "only {swapped} of {cores} cores swapped in the new dataset within {SWAP_WAIT:?}; \
         the others serve the old one until they do"
    )]
    SwapTimeout { swapped: usize, cores: usize },
}
