//! Which OS user runs the embedded cluster. PostgreSQL refuses to run as root, so when tally
//! is root the cluster runs as `postgres`, and that user must be able to reach and own its
//! directories. Never as `nobody`: the cluster trusts every connection on its socket, and
//! every other process running as `nobody` would own that socket too.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The unprivileged account the server runs as when tally itself runs as root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Tried in order when tally is root: dedicated accounts only (not `nobody`, see above).
const CANDIDATE_USERS: [&str; 1] = ["postgres"];

/// Who the cluster's processes run as, decided from tally's own effective uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterUser {
    /// tally is not root: the cluster runs as tally's own user, no switch needed.
    TallyItself,
    /// tally is root: the cluster runs as this unprivileged account.
    Unprivileged(RunAs),
    /// tally is root and no `postgres` account exists: the cluster cannot run.
    NoUnprivilegedAccount,
}

impl ClusterUser {
    /// Which user the embedded cluster must run as for this process.
    pub fn for_current_process() -> ClusterUser {
        // SAFETY: geteuid has no preconditions and cannot fail.
        Self::choose(unsafe { libc::geteuid() }, lookup)
    }

    /// The choice itself, for effective uid `euid` and a user database `lookup`.
    fn choose(euid: u32, lookup: impl Fn(&str) -> Option<RunAs>) -> ClusterUser {
        if euid != 0 {
            return ClusterUser::TallyItself;
        }
        match CANDIDATE_USERS.iter().find_map(|name| lookup(name)) {
            Some(user) => ClusterUser::Unprivileged(user),
            None => ClusterUser::NoUnprivilegedAccount,
        }
    }
}

impl RunAs {
    /// Whether this user may search (`x`) `dir`, judged from its mode bits the way the kernel
    /// would for a process with exactly this uid and primary gid. That is what the child gets:
    /// std drops supplementary groups when it switches uid (`setgroups(0)`). ACLs are ignored.
    pub fn can_search(&self, dir: &Path) -> std::io::Result<bool> {
        let meta = std::fs::metadata(dir)?;
        let mode = meta.mode();
        let bit = if meta.uid() == self.uid {
            0o100
        } else if meta.gid() == self.gid {
            0o010
        } else {
            0o001
        };
        Ok(mode & bit != 0)
    }
}

fn lookup(name: &str) -> Option<RunAs> {
    let c_name = CString::new(name).ok()?;
    // SAFETY: a zeroed passwd is a valid out-parameter (plain integers and null pointers).
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, buf.len() is its true size; getpwnam_r
    // (unlike getpwnam) is thread-safe and only writes into what we pass.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    Some(RunAs {
        name: name.to_owned(),
        uid: entry.pw_uid,
        gid: entry.pw_gid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(name: &str, uid: u32) -> RunAs {
        RunAs {
            name: name.to_owned(),
            uid,
            gid: uid,
        }
    }

    #[test]
    fn as_root_the_cluster_runs_as_postgres() {
        let users = |name: &str| match name {
            "postgres" => Some(account("postgres", 101)),
            "nobody" => Some(account("nobody", 65534)),
            _ => None,
        };
        assert_eq!(
            ClusterUser::choose(0, users),
            ClusterUser::Unprivileged(account("postgres", 101))
        );
        assert_eq!(ClusterUser::choose(1000, users), ClusterUser::TallyItself);
    }

    #[test]
    fn nobody_is_never_the_cluster_s_user() {
        // Any process running as `nobody` could use a trust-auth socket that `nobody` owns.
        let users = |name: &str| (name == "nobody").then(|| account("nobody", 65534));
        assert_eq!(
            ClusterUser::choose(0, users),
            ClusterUser::NoUnprivilegedAccount
        );
    }
}
