//! The import graph of `src/` has no circle: every module uses only modules below it in the
//! order docs/architecture.md's Layers section gives. A new `use` that points upward fails here.

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

/// The top-level module a source file belongs to (`src/server/conn/batch.rs` -> `server`).
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
    for line in statements(text) {
        let line = line.as_str();
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

/// Modules whose children may use what the parent's own file defines, and why.
const PARENT_ITEMS_SHARED: &[(&str, &str)] = &[(
    "server::tally_ring",
    "the Ring's state is one struct whose impl is split across the files that own each part",
)];

/// A source file's module path (`src/server/conn/batch.rs` -> `server::conn::batch`,
/// `mod.rs` names its directory, `lib.rs` and `main.rs` the crate).
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

/// Every path a file names from `crate::`, `super::` or `self::` (comments left out),
/// resolved to an absolute module path; a `{...}` group gives one path per item.
fn paths_named(text: &str, own: &[String]) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for line in statements(text) {
        let line = line.as_str();
        let bytes = line.as_bytes();
        let mut at = 0;
        while at < line.len() {
            let rest = &line[at..];
            let start = ["crate::", "super::", "self::"]
                .iter()
                .filter_map(|p| rest.find(p))
                .min();
            let Some(start) = start else { break };
            let begin = at + start;
            let preceded = begin > 0
                && (bytes[begin - 1].is_ascii_alphanumeric()
                    || bytes[begin - 1] == b'_'
                    || bytes[begin - 1] == b':');
            let (path, end) = read_path(&line[begin..]);
            at = begin + end.max(1);
            if preceded {
                continue;
            }
            for item in path {
                if let Some(resolved) = resolve(&item, own) {
                    found.push(resolved);
                }
            }
        }
    }
    found
}

/// The file's lines with comments left out, except that a `use` statement rustfmt broke over
/// several lines comes back as one.
fn statements(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut open: Option<String> = None;
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
        if let Some(statement) = open.as_mut() {
            statement.push_str(line);
            if line.ends_with(';') {
                out.extend(open.take());
            }
        } else if (line.starts_with("use ") || line.contains(" use ")) && !line.ends_with(';') {
            open = Some(line.to_string());
        } else {
            out.push(line.to_string());
        }
    }
    out.extend(open);
    out
}

/// Reads `a::b::{c, d::e}` from the start of `s`: the paths it names (a group's items each
/// continue the prefix; deeper groups are cut at their first segment) and where it ends.
fn read_path(s: &str) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    let mut i = 0;
    let bytes = s.as_bytes();
    loop {
        let ident: String = s[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if ident.is_empty() {
            if bytes.get(i) == Some(&b'{') {
                let close = s[i..].find('}').map_or(s.len(), |c| i + c);
                let items = s[i + 1..close]
                    .split(',')
                    .filter_map(|item| {
                        let first: String = item
                            .trim()
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        (!first.is_empty() && first != "self").then(|| {
                            let mut path = prefix.clone();
                            path.push(first);
                            path
                        })
                    })
                    .collect();
                return (items, close);
            }
            return (vec![prefix], i);
        }
        i += ident.len();
        prefix.push(ident);
        if s[i..].starts_with("::") {
            i += 2;
        } else {
            return (vec![prefix], i);
        }
    }
}

/// `crate::a::b` -> `[a, b]`; `super::x` from `own` -> `own`'s parent + `x`. Leading
/// `self`/`super`/`crate` are consumed; `None` for a path that leaves the crate.
fn resolve(path: &[String], own: &[String]) -> Option<Vec<String>> {
    let mut base: Vec<String> = own.to_vec();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {}
        _ => return None,
    }
    while rest.first().map(String::as_str) == Some("super") {
        base.pop()?;
        rest = &rest[1..];
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// A module file's declared children, and its re-exports as (name, child) pairs.
type ModuleFile = (BTreeSet<String>, Vec<(String, String)>);

/// The child modules a module file declares (`mod x;`, `pub mod x;`), and the names it
/// re-exports from them (`pub use x::{A, B}` -> A and B belong to x).
fn children_and_reexports(text: &str) -> ModuleFile {
    let mut children = BTreeSet::new();
    let mut reexports = Vec::new();
    for line in statements(text) {
        let decl = line
            .strip_prefix("pub mod ")
            .or_else(|| line.strip_prefix("pub(crate) mod "))
            .or_else(|| line.strip_prefix("pub(super) mod "))
            .or_else(|| line.strip_prefix("mod "));
        if let Some(name) = decl.and_then(|d| d.strip_suffix(';')) {
            children.insert(name.to_string());
        }
        let reexport = ["pub use ", "pub(crate) use ", "pub(super) use "]
            .iter()
            .find_map(|prefix| line.strip_prefix(prefix));
        if let Some(body) = reexport {
            let (paths, _) = read_path(body.trim_end_matches(';'));
            for path in paths {
                if let (Some(first), Some(last)) = (path.first(), path.last()) {
                    reexports.push((last.clone(), first.clone()));
                }
            }
        }
    }
    (children, reexports)
}

#[test]
fn inside_every_module_no_child_uses_its_parent_and_siblings_form_no_circle() {
    use std::collections::BTreeMap;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // Each module's declared children and re-exports, from its own file.
    let mut modules: BTreeMap<Vec<String>, ModuleFile> = BTreeMap::new();
    let mut texts = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable source");
        let own = module_path(&src, file);
        modules.insert(own.clone(), children_and_reexports(&text));
        texts.push((file.clone(), own, text));
    }
    let mut problems = Vec::new();
    // Edges between siblings, keyed by their parent.
    let mut edges: BTreeMap<Vec<String>, BTreeSet<(String, String)>> = BTreeMap::new();
    for (file, own, text) in &texts {
        if own.first().is_some_and(|m| m == "main") || own.last().is_some_and(|m| is_test(m)) {
            continue;
        }
        for target in paths_named(without_inline_tests(text), own) {
            let common = own.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common >= own.len() || common >= target.len() {
                continue; // the module itself or something inside it
            }
            let parent = own[..common].to_vec();
            let Some((children, reexports)) = modules.get(&parent) else {
                continue;
            };
            let from = &own[common];
            let named = &target[common];
            let to = if children.contains(named) {
                Some(named.clone())
            } else {
                reexports
                    .iter()
                    .find(|(name, _)| name == named)
                    .map(|(_, child)| child.clone())
                    .filter(|child| children.contains(child))
            };
            match to {
                Some(to) if &to != from => {
                    edges.entry(parent).or_default().insert((from.clone(), to));
                }
                Some(_) => {}
                None if parent.is_empty() => {} // the crate root: the top-level layers test
                None => {
                    let parent_name = parent.join("::");
                    if !PARENT_ITEMS_SHARED.iter().any(|(m, _)| *m == parent_name) {
                        problems.push(format!(
                            "{}: uses {named}, defined in its parent `{parent_name}` (an arrow \
                             up: move it into a child of its own)",
                            file.display()
                        ));
                    }
                }
            }
        }
    }
    for (parent, edges) in &edges {
        if parent.is_empty() {
            continue; // top-level modules: ranked by the layers test above
        }
        if let Some(circle) = find_circle(edges) {
            problems.push(format!(
                "inside `{}`: an import circle {}",
                parent.join("::"),
                circle.join(" -> ")
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The file up to its inline test module (`mod tests {`), which by convention ends the file:
/// what a test module uses is exempt, like a test file's.
fn without_inline_tests(text: &str) -> &str {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        let inline_test = trimmed
            .strip_prefix("mod ")
            .and_then(|rest| rest.strip_suffix('{'))
            .is_some_and(|name| is_test(name.trim()));
        if inline_test {
            return &text[..offset];
        }
        offset += line.len();
    }
    text
}

/// Test and measurement modules sit beside what they test and use it freely; nothing uses
/// them.
fn is_test(module: &str) -> bool {
    module == "tests"
        || module.ends_with("_tests")
        || module == "bench"
        || module.ends_with("_bench")
}

/// A circle in a directed graph, as the nodes along it, if there is one.
fn find_circle(edges: &BTreeSet<(String, String)>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeSet<(String, String)>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for (_, to) in edges.iter().filter(|(from, _)| from == node) {
            if let Some(circle) = visit(to, edges, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for (from, _) in edges {
        if let Some(circle) = visit(from, edges, &mut Vec::new(), &mut done) {
            return Some(circle);
        }
    }
    None
}

#[test]
fn the_submodule_checker_resolves_paths_and_sees_circles() {
    let own: Vec<String> = ["server", "conn", "batch"].map(String::from).to_vec();
    assert_eq!(
        paths_named("use super::buffers::{Input, shrink};", &own),
        vec![
            ["server", "conn", "buffers", "Input"]
                .map(String::from)
                .to_vec(),
            ["server", "conn", "buffers", "shrink"]
                .map(String::from)
                .to_vec(),
        ]
    );
    assert_eq!(
        paths_named("use crate::server::context::ConnContext;", &own),
        vec![["server", "context", "ConnContext"]
            .map(String::from)
            .to_vec()]
    );
    assert_eq!(
        paths_named("use super::{\n    state::State,\n    Conn,\n};\n", &own).len(),
        2,
        "a use statement over several lines is read whole"
    );
    let edges: BTreeSet<(String, String)> = [("a", "b"), ("b", "c"), ("c", "a")]
        .iter()
        .map(|(x, y)| (x.to_string(), y.to_string()))
        .collect();
    assert!(find_circle(&edges).is_some());
    let edges: BTreeSet<(String, String)> = [("a", "b"), ("b", "c"), ("a", "c")]
        .iter()
        .map(|(x, y)| (x.to_string(), y.to_string()))
        .collect();
    assert_eq!(find_circle(&edges), None);
}
