//! Finding the PostgreSQL server binaries (`postgres`, `initdb`) installed on this machine.
//!
//! Order, as docs/operations.md "Requirements" lists it: `PATH`, then
//! `pg_config --bindir`, then the newest `/usr/lib/postgresql/<version>/bin` (Debian's layout).

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where Debian and Ubuntu install each major version's server binaries.
const DEBIAN_LIB_ROOT: &str = "/usr/lib/postgresql";

/// The two server programs the embedded cluster needs, as absolute paths with symlinks resolved
/// (so `initdb` finds the `postgres` and `share/` beside the real files).
#[derive(Debug, Clone)]
pub struct PgBinaries {
    pub postgres: PathBuf,
    pub initdb: PathBuf,
}

impl PgBinaries {
    /// Looks in this process's `PATH`, then asks `pg_config`, then scans `/usr/lib/postgresql`.
    pub fn find() -> Option<PgBinaries> {
        let path_var = std::env::var_os("PATH");
        Self::find_in(
            path_var.as_deref(),
            pg_config_bindir(),
            Path::new(DEBIAN_LIB_ROOT),
        )
    }

    /// The search itself, with its three sources given, so tests can run it on fixtures.
    pub fn find_in(
        path_var: Option<&OsStr>,
        pg_config_bindir: Option<PathBuf>,
        lib_root: &Path,
    ) -> Option<PgBinaries> {
        if let Some(path_var) = path_var {
            let on_path = |name: &str| {
                std::env::split_paths(path_var)
                    .map(|dir| dir.join(name))
                    .find(|candidate| is_executable(candidate))
            };
            if let (Some(postgres), Some(initdb)) = (on_path("postgres"), on_path("initdb")) {
                if let Some(found) = Self::resolved(postgres, initdb) {
                    return Some(found);
                }
            }
        }
        if let Some(dir) = pg_config_bindir {
            if let Some(found) = Self::in_dir(&dir) {
                return Some(found);
            }
        }
        newest_versioned_bindir(lib_root).and_then(|dir| Self::in_dir(&dir))
    }

    fn in_dir(dir: &Path) -> Option<PgBinaries> {
        let postgres = dir.join("postgres");
        let initdb = dir.join("initdb");
        if is_executable(&postgres) && is_executable(&initdb) {
            Self::resolved(postgres, initdb)
        } else {
            None
        }
    }

    fn resolved(postgres: PathBuf, initdb: PathBuf) -> Option<PgBinaries> {
        Some(PgBinaries {
            postgres: std::fs::canonicalize(postgres).ok()?,
            initdb: std::fs::canonicalize(initdb).ok()?,
        })
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `pg_config --bindir`, if `pg_config` is installed and answers.
fn pg_config_bindir() -> Option<PathBuf> {
    let output = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let dir = String::from_utf8(output.stdout).ok()?;
    let dir = dir.trim();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// The `<root>/<version>/bin` with the highest version (`16` beats `9.6`: compared numerically).
fn newest_versioned_bindir(root: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(root).ok()?;
    entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version: Vec<u32> = name
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<_>>()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| bin.is_dir())
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn fake_bindir(dir: &Path) {
        fs::create_dir_all(dir).expect("create fixture dir");
        for name in ["postgres", "initdb"] {
            let file = dir.join(name);
            fs::write(&file, "#!/bin/sh\n").expect("write fixture");
            fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).expect("chmod fixture");
        }
    }

    fn fixture_root(tag: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("tally-bin-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        root
    }

    #[test]
    fn newest_version_under_lib_root_wins_numerically() {
        let root = fixture_root("newest");
        fake_bindir(&root.join("9.6/bin"));
        fake_bindir(&root.join("16/bin"));
        fake_bindir(&root.join("15/bin"));
        let found = PgBinaries::find_in(Some(OsStr::new("")), None, &root).expect("found");
        assert!(found.postgres.ends_with("16/bin/postgres"), "{found:?}");
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn path_is_searched_before_lib_root() {
        let root = fixture_root("path");
        fake_bindir(&root.join("lib/16/bin"));
        fake_bindir(&root.join("onpath"));
        let path_var = root.join("onpath").into_os_string();
        let found = PgBinaries::find_in(Some(&path_var), None, &root.join("lib")).expect("found");
        assert!(found.initdb.ends_with("onpath/initdb"), "{found:?}");
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn nothing_installed_finds_nothing() {
        let root = fixture_root("none");
        assert!(PgBinaries::find_in(None, None, &root).is_none());
    }
}
