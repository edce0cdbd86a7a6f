//! Dataset files to a [`Dataset`]: the format by extension (`.json`, `.jsonl`/`.ndjson`, `.csv`),
//! and every failure as a [`LoadError`] naming the file, the position and the reason. Touches
//! the file system (the dataset file) and kv's dataset builder; nothing of sockets or threads.
//!
//! The whole file is read and checked as UTF-8 at once (one pass of std's validator, after
//! which the readers slice `str` freely), then parsed in one pass that decodes each value
//! straight into the dataset's arena; `kv::bench` measures the whole load.
//!
//! - [`load`] (here): reads the file, picks the reader by [`Format`], places a duplicate key.
//! - `json_object`, `json_lines`, `csv_records`: one reader each, a method of the shared
//!   `loader::Loader`, which adds every pair to the dataset being built.
//! - `error` ([`LoadError`]) and `position` ([`Position`]): what went wrong, and where.
mod csv_records;
mod error;
mod format;
mod json_lines;
mod json_object;
mod loader;
mod position;
#[cfg(test)]
mod tests;

use std::path::Path;

use crate::kv::dataset::{Dataset, DatasetBuilder, DuplicateKey};
use error::key_text;
pub use error::LoadError;
pub(crate) use format::Format;
use loader::Loader;
use position::pair_position;
pub use position::Position;

/// Bytes a single `read` system call may copy in [`read_in_slices`].
const READ_SLICE_BYTES: usize = 1 << 20;

/// The whole file, read [`READ_SLICE_BYTES`] at a time. `std::fs::read` asks for it in one
/// `read`, and the kernel copies large page-cache folios in long batches between two
/// reschedule points: on a kernel without forced preemption (PREEMPT_NONE) a serving core
/// that wakes meanwhile waits for the copy, even behind a SCHED_IDLE reload thread. A slice
/// keeps each such wait short; lookup latency across a reload with and without slices is in
/// commit e9308b2 and docs/benchmarks.md ("Dataset reload").
fn read_in_slices(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata().map_or(0, |m| m.len() as usize);
    let mut bytes = Vec::with_capacity(size);
    // `take` caps each `read` at the slice; `read_to_end` fills the spare capacity without
    // zeroing it, and probes with a small buffer before growing past the file's size.
    while (&mut file)
        .take(READ_SLICE_BYTES as u64)
        .read_to_end(&mut bytes)?
        > 0
    {}
    Ok(bytes)
}

/// Loads a dataset file; the format comes from its extension.
pub fn load(path: &Path) -> Result<Dataset, LoadError> {
    let format = Format::of(path).ok_or_else(|| LoadError::UnknownExtension {
        path: path.to_owned(),
    })?;
    let bytes = read_in_slices(path).map_err(|reason| LoadError::Read {
        path: path.to_owned(),
        reason,
    })?;
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => text,
        Err(e) => {
            let valid = e.valid_up_to();
            // The prefix is valid UTF-8, so the position can be computed on it.
            let prefix = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
            return Err(LoadError::NotUtf8 {
                path: path.to_owned(),
                at: Position::of_offset(prefix, valid),
            });
        }
    };
    let mut loader = Loader {
        path,
        text,
        builder: DatasetBuilder::new(),
        positions: Vec::new(),
    };
    // A UTF-8 byte order mark is not data.
    let start = if text.starts_with('\u{feff}') { 3 } else { 0 };
    match format {
        Format::Json => loader.json(start)?,
        Format::JsonLines => loader.json_lines(start)?,
        Format::Csv => loader.csv(start)?,
    }
    let Loader {
        builder, positions, ..
    } = loader;
    // The text is only needed again to place a duplicate, which reads the file anew; freeing it
    // first keeps the peak at about the file size plus the dataset.
    drop(bytes);
    builder
        .finish()
        .map_err(|DuplicateKey { first, second, key }| {
            let position = pair_position(path, format, &positions);
            LoadError::DuplicateKey {
                path: path.to_owned(),
                at: position(second),
                first: position(first),
                key: key_text(key),
            }
        })
}
