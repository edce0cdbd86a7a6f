//! Measurements, not tests: run in release with
//! `cargo test --release --lib api::kv_bench -- --ignored --nocapture --test-threads 1`.

use std::hint::black_box;
use std::time::Instant;

use super::lookup::{lookup, Lookup, LookupScratch};
use crate::kv::*;

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
            .map(|i| format_uuid(keys[(i * 7_919 + 13) % keys.len()]))
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
