//! Fuzzes the dataset readers (`.json`, `.jsonl`, `.csv`): no input may panic, and whatever one
//! accepts survives a round trip through every format (written back out by `kv::write`, read
//! again, the same pairs in the same order). The first input byte picks the format.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use tally::kv;

const FORMATS: [&str; 3] = ["json", "jsonl", "csv"];

fn scratch_file(ext: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tally-fuzz-{}.{ext}", std::process::id()))
}

fn pairs(dataset: &kv::Dataset) -> Vec<(u128, String)> {
    dataset.iter().map(|(k, v)| (k, v.to_owned())).collect()
}

fuzz_target!(|input: &[u8]| {
    let Some((&pick, text)) = input.split_first() else {
        return;
    };
    let path = scratch_file(FORMATS[usize::from(pick) % FORMATS.len()]);
    std::fs::write(&path, text).expect("the scratch file is writable");
    let Ok(dataset) = kv::load(&path) else {
        return;
    };
    let expected = pairs(&dataset);
    for ext in FORMATS {
        let again = scratch_file(ext);
        kv::write(&dataset, &again).expect("a loaded dataset can be written");
        let reloaded = kv::load(&again).unwrap_or_else(|e| panic!("{ext} round trip: {e}"));
        assert_eq!(pairs(&reloaded), expected, "{ext} round trip changed the pairs");
    }
});
