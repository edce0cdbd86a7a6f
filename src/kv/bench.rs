//! Measurements, not tests: run in release with
//! `cargo test --release --lib kv::bench -- --ignored --nocapture --test-threads 1`.
//! `TALLY_BENCH_DIR` (default: the system temp dir) holds the 10,000,000-pair files.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use super::*;

const LOOKUPS: usize = 2_000_000;

/// ns per lookup of the whole path (parse, check, find, escape) and of each step, with the
/// default 10,000-pair sample and with 10,000,000 pairs (cache misses dominate there).
#[test]
#[ignore]
fn lookup_ns() {
    for pairs in [DEFAULT_SAMPLE_PAIRS, 10_000_000] {
        let dataset = sample(pairs, DEFAULT_SEED);
        let replica = Replica::build(&dataset);
        // Keys in a scrambled order so consecutive lookups do not share table cache lines; the
        // key texts are read sequentially (prefetched) and copied into one hot body buffer, as a
        // body sits in a hot socket buffer in the server.
        let keys: Vec<u128> = dataset.iter().map(|(k, _)| k).collect();
        let texts: Vec<[u8; 36]> = (0..LOOKUPS.min(1 << 20))
            .map(|i| uuid_v4::format_uuid(keys[(i * 7_919 + 13) % keys.len()]))
            .collect();
        const PREFIX: &[u8] = b"{\"key\": \"";
        let mut scratch = LookupScratch::new();
        let mut out = Vec::with_capacity(4096);
        let mut body = Vec::with_capacity(128);
        body.extend_from_slice(PREFIX);
        body.extend_from_slice(&[b'0'; 36]);
        body.extend_from_slice(b"\"}");
        let key_range = PREFIX.len()..PREFIX.len() + 36;
        let mut template = body.clone();

        let timed = |name: &str, f: &mut dyn FnMut(&[u8; 36])| {
            let start = Instant::now();
            for i in 0..LOOKUPS {
                f(&texts[i % texts.len()]);
            }
            let ns = start.elapsed().as_nanos() as f64 / LOOKUPS as f64;
            println!("{pairs:>10} pairs  {name:<38} {ns:7.1} ns");
        };
        timed("full: lookup + write_json_string", &mut |text| {
            // simd-json unescapes in place, so each lookup gets a fresh copy, as from a socket.
            template[key_range.clone()].copy_from_slice(text);
            body.clear();
            body.extend_from_slice(&template);
            out.clear();
            match lookup(&replica, &mut scratch, &mut body) {
                Lookup::Found(v) => write_json_string(&mut out, v),
                other => panic!("{other:?}"),
            }
            black_box(&out);
        });
        timed("simd-json parse + key field only", &mut |text| {
            template[key_range.clone()].copy_from_slice(text);
            body.clear();
            body.extend_from_slice(&template);
            black_box(scratch.key(&mut body).ok());
        });
        timed("parse_uuid_v4 only", &mut |text| {
            let text = std::str::from_utf8(text).expect("ASCII");
            black_box(parse_uuid_v4(black_box(text)));
        });
        let parsed: Vec<u128> = texts
            .iter()
            .map(|t| parse_uuid_v4(std::str::from_utf8(t).expect("ASCII")).expect("v4"))
            .collect();
        let mut i = 0;
        timed("Replica::get only", &mut |_| {
            black_box(replica.get(parsed[i % parsed.len()]));
            i += 1;
        });
        let value = dataset.iter().next().expect("non-empty").1;
        timed("write_json_string only", &mut |_| {
            out.clear();
            write_json_string(&mut out, value);
            black_box(&out);
        });
    }
}

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
