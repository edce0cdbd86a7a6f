//! The import graph of `src/` has no circle: every module uses only modules below it in the
//! order README.md's Architecture section gives. A new `use` that points upward fails here.

use std::collections::BTreeSet;
use std::path::Path;

/// Top-level modules from the top (start-up) to the bottom (bytes); a module may use only
/// modules of a lower rank. Modules of equal rank know nothing of each other.
const LAYERS: &[(&str, u8)] = &[
    ("main", 10),
    ("compose", 9),
    ("config", 8),
    ("server", 7),
    ("api", 6),
    ("counter", 4),
    ("kv", 4),
    ("postgres", 4),
    ("metrics", 2),
    ("http", 1),
];

fn rank(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

/// The top-level module a source file belongs to (`src/server/conn.rs` -> `server`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("non-empty path");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_string()
}

/// Top-level modules a file names as `crate::x` (or `tally::x` from the binary), comments
/// left out.
fn uses(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find(prefix) {
            let after = &rest[at + prefix.len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
            rest = after;
        }
        // `use tally::{a, b}` in the binary.
        if let Some(at) = line.find(&format!("{prefix}{{")) {
            let list = &line[at + prefix.len() + 1..];
            let list = &list[..list.find('}').unwrap_or(list.len())];
            for name in list.split(',') {
                let name = name.trim().split("::").next().unwrap_or("").trim();
                if !name.is_empty() {
                    found.insert(name.to_string());
                }
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_uses_only_modules_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut upward = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" {
            continue; // declares the modules; uses none of them
        }
        let own =
            rank(&module).unwrap_or_else(|| panic!("src module `{module}` is missing from LAYERS"));
        let text = std::fs::read_to_string(file).expect("readable source");
        let prefix = if module == "main" {
            "tally::"
        } else {
            "crate::"
        };
        for used in uses(&text, prefix) {
            if used == module {
                continue;
            }
            let theirs = rank(&used)
                .unwrap_or_else(|| panic!("{}: uses unknown module `{used}`", file.display()));
            if theirs >= own {
                upward.push(format!("{} ({module}) uses {used}", file.display()));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "uses that are not downward:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_checker_sees_uses_in_its_three_forms() {
    let text = "use crate::http::Status;\nfn f() { crate::kv::lookup(); }\n// crate::server::x\n";
    assert_eq!(
        uses(text, "crate::"),
        ["http", "kv"].map(String::from).into_iter().collect()
    );
    assert_eq!(
        uses("use tally::{kv, server};", "tally::"),
        ["kv", "server"].map(String::from).into_iter().collect()
    );
}
