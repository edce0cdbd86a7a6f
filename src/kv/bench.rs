//! Measurements, not tests: run in release with
//! `cargo test --release --lib kv::bench -- --ignored --nocapture --test-threads 1`.
//! `TALLY_BENCH_DIR` (default: the system temp dir) holds the 10,000,000-pair files.

use std::path::PathBuf;
use std::time::Instant;

use super::*;

fn bench_file(ext: &str) -> PathBuf {
    let dir = std::env::var_os("TALLY_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    dir.join(format!("tally-kv-10m.{ext}"))
}

/// Writes the 10,000,000-pair sample (seed 1) in every format, timing each.
#[test]
#[ignore]
fn write_10m() {
    let start = Instant::now();
    let dataset = sample(10_000_000, 1);
    println!("sample(10M): {:?}", start.elapsed());
    for ext in ["json", "jsonl", "csv"] {
        let path = bench_file(ext);
        let start = Instant::now();
        write(&dataset, &path).expect("write");
        let size = std::fs::metadata(&path).expect("written").len();
        println!(
            "write {}: {:?}, {size} bytes",
            path.display(),
            start.elapsed()
        );
    }
}

/// Loads the file named by `TALLY_BENCH_EXT` (json, jsonl or csv; default json) written by
/// `write_10m`, builds one replica, prints times and sizes. Run under `/usr/bin/time -v` for RSS,
/// with `--exact kv::bench::load_10m` (the name is a prefix of the next bench's).
#[test]
#[ignore]
fn load_10m() {
    let ext = std::env::var("TALLY_BENCH_EXT").unwrap_or_else(|_| "json".to_owned());
    let path = bench_file(&ext);
    let start = Instant::now();
    let dataset = load(&path).expect("load");
    let loaded = start.elapsed();
    println!("after load: peak RSS {}", peak_rss());
    let start = Instant::now();
    let replica = Replica::build(&dataset);
    let built = start.elapsed();
    println!(
        "{}: {} pairs, load {loaded:?}, replica build {built:?}, raw {} bytes, replica {} bytes ({:.2}x raw)",
        path.display(),
        dataset.len(),
        dataset.raw_bytes(),
        replica.memory_bytes(),
        replica.memory_bytes() as f64 / dataset.raw_bytes() as f64
    );
    println!("after replica build: peak RSS {}", peak_rss());
    assert_eq!(replica.len(), 10_000_000);
}

/// This process's peak resident set so far (`VmHWM` in /proc/self/status).
fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            Some(line["VmHWM:".len()..].trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The library path for `.json`, measured against the hand-written reader `load` uses for it:
/// simd-json parses the whole `write_10m` object file as one document, in place (the file is
/// read into a buffer with simd-json's padding, so there is no second copy), and the tape is
/// walked into a dataset as `load` would, keeping each key's byte offset for duplicate
/// reports. Run under `/usr/bin/time -v` for RSS.
#[test]
#[ignore]
fn load_10m_json_with_simd_json() {
    use simd_json::Node;
    use std::io::Read as _;

    let path = bench_file("json");
    let start = Instant::now();
    let mut file = std::fs::File::open(&path).expect("open");
    let len = file.metadata().expect("metadata").len() as usize;
    let mut bytes = Vec::with_capacity(len + simd_json::INPUT_PADDING);
    file.read_to_end(&mut bytes).expect("read");
    std::str::from_utf8(&bytes).expect("UTF-8, as load checks");
    bytes.resize(len + simd_json::INPUT_PADDING, b' ');
    let base = bytes.as_ptr() as usize;
    let mut buffers = simd_json::Buffers::new(len);
    let mut tape = simd_json::Tape::null();
    simd_json::fill_tape_padded(&mut bytes, len, &mut buffers, &mut tape).expect("JSON");
    let parsed = start.elapsed();
    let nodes = &tape.0;
    let Some(&Node::Object { len: pairs, .. }) = nodes.first() else {
        panic!("not an object");
    };
    let mut builder = dataset::DatasetBuilder::new();
    let mut positions: Vec<u64> = Vec::with_capacity(pairs);
    for pair in nodes[1..].chunks_exact(2) {
        let [Node::String(key), Node::String(value)] = pair else {
            panic!("not a string pair");
        };
        builder.values.push_str(value);
        builder
            .push_key(parse_uuid_v4(key).expect("UUID v4"))
            .expect("fits");
        // The key's opening quote: simd-json's strings point into the input.
        positions.push((key.as_ptr() as usize - base - 1) as u64);
    }
    let walked = start.elapsed();
    println!("after tape walk: peak RSS {}", peak_rss());
    drop(tape);
    drop(buffers);
    drop(bytes);
    let dataset = builder.finish().expect("no duplicates");
    let loaded = start.elapsed();
    println!(
        "{}: {} pairs, simd-json parse {parsed:?}, tape walked {walked:?}, load {loaded:?}, raw {} bytes",
        path.display(),
        dataset.len(),
        dataset.raw_bytes(),
    );
    println!("after load: peak RSS {}", peak_rss());
    assert_eq!(dataset.len(), 10_000_000);
}
