//! Where the server's Unix socket lives (the data directory, or a private `/tmp` directory
//! when that path is too long for `sun_path`) and the connection string naming it.

use std::io;
use std::path::{Path, PathBuf};

use super::data_dir::chown;
use super::error::io_error;
use super::{EmbeddedError, RunAs};

/// Unix socket only, so the port merely names the socket file; the socket directory is private.
pub(super) const PORT: u16 = 5432;
pub(super) const SOCKET_FILE: &str = ".s.PGSQL.5432";
/// `sizeof(sockaddr_un.sun_path)` is 108 on Linux, one byte of which is the NUL.
const SUN_PATH_MAX_BYTES: usize = 107;

/// Whether the socket can live in `dir`: `<dir>/.s.PGSQL.5432` fits in `sun_path`, and the
/// path survives quoting in `unix_socket_directories` and the connection string.
pub(super) fn socket_dir_fits(dir: &Path) -> bool {
    match dir.to_str() {
        Some(text) => {
            text.len() + 1 + SOCKET_FILE.len() <= SUN_PATH_MAX_BYTES && !text.contains('"')
        }
        None => false,
    }
}

/// A fresh `/tmp/tally-pg-XXXXXX` (mode 0700, owned by the cluster's user).
pub(super) fn private_socket_dir(run_as: Option<&RunAs>) -> Result<PathBuf, EmbeddedError> {
    let mut template = *b"/tmp/tally-pg-XXXXXX\0";
    // SAFETY: template is a writable NUL-terminated buffer ending in six X, as mkdtemp requires.
    let made = unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) };
    let fallback = PathBuf::from("/tmp/tally-pg-XXXXXX");
    if made.is_null() {
        return Err(io_error("create", &fallback)(io::Error::last_os_error()));
    }
    let name = &template[..template.len() - 1];
    let dir = PathBuf::from(String::from_utf8_lossy(name).into_owned());
    if let Some(user) = run_as {
        chown(&dir, user)?;
    }
    Ok(dir)
}

/// A conninfo value in single quotes, escaping `\` and `'` (libpq's rules, which
/// tokio-postgres follows), when it holds anything that would end a bare value.
pub(super) fn quote_conninfo(value: &str) -> String {
    if !value.is_empty() && !value.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return value.to_owned();
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('\'');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_data_dirs_do_not_host_the_socket() {
        assert!(socket_dir_fits(Path::new("/work/app/.tally/pg")));
        let long = format!("/tmp/{}", "d".repeat(100));
        assert!(!socket_dir_fits(Path::new(&long)));
        // Exactly at the limit: 93 + 1 + 13 = 107 bytes.
        let edge = format!("/{}", "e".repeat(92));
        assert!(socket_dir_fits(Path::new(&edge)));
        let over = format!("/{}", "e".repeat(93));
        assert!(!socket_dir_fits(Path::new(&over)));
    }

    #[test]
    fn conninfo_values_are_quoted_only_when_needed() {
        assert_eq!(quote_conninfo("/tmp/x"), "/tmp/x");
        assert_eq!(quote_conninfo("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(quote_conninfo("/tmp/it's"), "'/tmp/it\\'s'");
    }
}
