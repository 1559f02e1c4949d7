//! Giving up root once start-up is done (`user`, `group` at the top of the config).
//!
//! Sluice starts as root because binding port 514, raising `SO_RCVBUF` past `rmem_max` and
//! loading XDP need it. Once sockets are bound and XDP is attached, [`drop_privileges`]:
//!
//! 1. hands `data_dir` (spool, dead letters, file output) and the XDP pin directory to the
//!    target user, so the daemon can keep creating spool segments and remove its pins at exit;
//! 2. sets supplementary groups, gid and uid with glibc's `setgroups`/`setresgid`/`setresuid`,
//!    which glibc applies to **every thread** of the process (the readers, workers and sink
//!    runtime are already running). Threads other than the calling one lose all capabilities
//!    with the uid change, as the kernel does for any uid change away from root;
//! 3. in the calling (main) thread, which kept its permitted set through `PR_SET_KEEPCAPS`,
//!    re-owns whatever other threads created between step 1 and 2, then reduces its permitted,
//!    effective and bounding sets to the caller's `keep` list and clears inheritable/ambient;
//! 4. reads `/proc/self/task/*/status` and refuses to go on unless every thread has the new
//!    uid/gid and no capability outside `keep`.
//!
//! What is kept is decided by the caller (`cli/run.rs`): nothing without XDP; `CAP_BPF` with
//! XDP, because on kernels before 6.5 with `kernel.unprivileged_bpf_disabled` set (Debian's
//! default) every `bpf()` call of a non-root process needs it, including the map reads behind
//! the `sluice_xdp_*` counters. Detaching needs no capability: the programs are attached
//! through bpf_links, released by closing their fds, and their pins sit in a directory the
//! service user owns after step 1.

use std::ffi::{CString, c_char, c_int};
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "user `{0}` does not exist: create it (e.g. `useradd --system --no-create-home --shell /usr/sbin/nologin {0}`) or change `user`"
    )]
    NoSuchUser(String),
    #[error("group `{0}` does not exist: create it (`groupadd --system {0}`) or change `group`")]
    NoSuchGroup(String),
    #[error(
        "the config sets `user = \"{user}\"` but sluice was started as uid {uid}, not root: start it as root (the systemd unit does) or remove `user`"
    )]
    NotRoot { user: String, uid: u32 },
    #[error("{context}: {source}")]
    Os {
        context: String,
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Caps {
        context: String,
        source: caps::errors::CapsError,
    },
    #[error("after switching to {user}: {problem}")]
    Verify { user: String, problem: String },
}

/// Who the daemon becomes: resolved once at start-up, before anything is bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the user's groups from the group database, plus `gid`.
    pub groups: Vec<u32>,
}

impl Identity {
    /// Looks up `user` (and `group`, default: the user's login group) and checks that the
    /// process can switch to it.
    pub fn resolve(user: &str, group: Option<&str>) -> Result<Identity, PrivilegeError> {
        let (uid, login_gid) =
            passwd_entry(user)?.ok_or_else(|| PrivilegeError::NoSuchUser(user.to_owned()))?;
        let gid = match group {
            None => login_gid,
            Some(name) => {
                group_entry(name)?.ok_or_else(|| PrivilegeError::NoSuchGroup(name.to_owned()))?
            }
        };
        let mut groups = group_list(user, gid)?;
        groups.sort_unstable();
        groups.dedup();
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 && euid != uid {
            return Err(PrivilegeError::NotRoot {
                user: user.to_owned(),
                uid: euid,
            });
        }
        Ok(Identity {
            user: user.to_owned(),
            uid,
            gid,
            groups,
        })
    }

    /// True when the process already runs as this identity (nothing to drop).
    pub fn is_current(&self) -> bool {
        // SAFETY: getters without preconditions.
        unsafe { libc::geteuid() == self.uid && libc::getegid() == self.gid }
    }

    /// Whether this identity may create files in `dir`, judged from its mode bits (ACLs are
    /// not consulted). Used before start-up to refuse a file sink directory the daemon could
    /// not write after the switch.
    pub fn can_write_dir(&self, dir: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::metadata(dir) else {
            return false;
        };
        let mode = meta.mode();
        if meta.uid() == self.uid {
            mode & 0o300 == 0o300
        } else if meta.gid() == self.gid || self.groups.contains(&meta.gid()) {
            mode & 0o030 == 0o030
        } else {
            mode & 0o003 == 0o003
        }
    }
}

/// Switches the whole process to `identity`, keeping only `keep` (see the module comment).
/// `own` are directory trees handed to the identity first (created when missing).
pub fn drop_privileges(
    identity: &Identity,
    keep: &[Capability],
    own: &[PathBuf],
) -> Result<(), PrivilegeError> {
    if identity.is_current() {
        tracing::info!(user = %identity.user, "already running as the configured user");
        return Ok(());
    }
    for tree in own {
        std::fs::create_dir_all(tree).map_err(|source| PrivilegeError::Os {
            context: format!("creating {}", tree.display()),
            source,
        })?;
        chown_tree(tree, identity.uid, identity.gid)?;
    }
    let caps_err = |context: &str| {
        let context = context.to_owned();
        move |source| PrivilegeError::Caps { context, source }
    };
    caps::securebits::set_keepcaps(true).map_err(caps_err("prctl(PR_SET_KEEPCAPS)"))?;
    let os = |context: &str| PrivilegeError::Os {
        context: context.to_owned(),
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: the pointer and length describe `identity.groups`, alive for the call. glibc's
    // setgroups/setresgid/setresuid signal every thread to make the same call (the setxid
    // broadcast), so all threads end up with these ids.
    unsafe {
        if libc::setgroups(identity.groups.len(), identity.groups.as_ptr()) != 0 {
            return Err(os("setgroups"));
        }
        if libc::setresgid(identity.gid, identity.gid, identity.gid) != 0 {
            return Err(os("setresgid"));
        }
        if libc::setresuid(identity.uid, identity.uid, identity.uid) != 0 {
            return Err(os("setresuid"));
        }
    }

    // Files other threads created as root after the first pass: re-own them with the
    // capabilities this thread kept, now that every new file belongs to the new uid.
    let permitted = caps::read(None, CapSet::Permitted).map_err(caps_err("reading CapPrm"))?;
    let cleanup: CapsHashSet = [
        Capability::CAP_CHOWN,
        Capability::CAP_FOWNER,
        Capability::CAP_DAC_OVERRIDE,
        Capability::CAP_DAC_READ_SEARCH,
        Capability::CAP_SETPCAP,
    ]
    .into_iter()
    .filter(|c| permitted.contains(c))
    .collect();
    caps::set(None, CapSet::Effective, &cleanup).map_err(caps_err("raising CapEff"))?;
    for tree in own {
        chown_tree(tree, identity.uid, identity.gid)?;
    }
    if cleanup.contains(&Capability::CAP_SETPCAP) {
        // Only execve consults the bounding set and sluice never execs; dropping it anyway
        // makes /proc/PID/status show exactly what the daemon can still do.
        // Only capabilities this kernel knows: dropping an unknown one fails with EINVAL.
        for cap in caps::runtime::thread_all_supported() {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)
                    .map_err(caps_err("dropping from the bounding set"))?;
            }
        }
    }
    let kept: CapsHashSet = keep
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    caps::clear(None, CapSet::Ambient).map_err(caps_err("clearing CapAmb"))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_err("clearing CapInh"))?;
    caps::set(None, CapSet::Effective, &kept).map_err(caps_err("setting CapEff"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(caps_err("setting CapPrm"))?;
    caps::securebits::set_keepcaps(false).map_err(caps_err("prctl(PR_SET_KEEPCAPS, 0)"))?;
    verify(identity, keep)?;
    let mut names: Vec<String> = kept.iter().map(|c| c.to_string()).collect();
    names.sort();
    tracing::info!(
        user = %identity.user,
        uid = identity.uid,
        gid = identity.gid,
        capabilities = ?names,
        "dropped root"
    );
    Ok(())
}

/// Every thread of this process must run as `identity` with no capability outside `keep`.
pub fn verify(identity: &Identity, keep: &[Capability]) -> Result<(), PrivilegeError> {
    let allowed: u64 = keep.iter().map(|c| c.bitmask()).fold(0, |a, b| a | b);
    let fail = |problem: String| PrivilegeError::Verify {
        user: identity.user.clone(),
        problem,
    };
    let tasks = std::fs::read_dir("/proc/self/task").map_err(|source| PrivilegeError::Os {
        context: "reading /proc/self/task".into(),
        source,
    })?;
    for task in tasks.flatten() {
        // A thread may exit while we look; only what is still there matters.
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let tid = task.file_name().to_string_lossy().into_owned();
        let status = TaskStatus::parse(&status)
            .ok_or_else(|| fail(format!("cannot parse /proc/self/task/{tid}/status")))?;
        if status.uids.iter().any(|&u| u != identity.uid) {
            return Err(fail(format!("thread {tid} has uids {:?}", status.uids)));
        }
        if status.gids.iter().any(|&g| g != identity.gid) {
            return Err(fail(format!("thread {tid} has gids {:?}", status.gids)));
        }
        for (set, value) in [("CapEff", status.cap_eff), ("CapPrm", status.cap_prm)] {
            if value & !allowed != 0 {
                return Err(fail(format!(
                    "thread {tid} still has {set} {value:016x} (allowed {allowed:016x})"
                )));
            }
        }
    }
    Ok(())
}

/// The credential lines of `/proc/PID/task/TID/status` (also used by the tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStatus {
    /// real, effective, saved, filesystem
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub cap_eff: u64,
    pub cap_prm: u64,
    pub cap_bnd: u64,
}

impl TaskStatus {
    pub fn parse(status: &str) -> Option<TaskStatus> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let ids = |name: &str| -> Option<[u32; 4]> {
            let mut it = field(name)?.split_whitespace().map(|v| v.parse().ok());
            Some([it.next()??, it.next()??, it.next()??, it.next()??])
        };
        let mask = |name: &str| u64::from_str_radix(field(name)?, 16).ok();
        Some(TaskStatus {
            uids: ids("Uid:")?,
            gids: ids("Gid:")?,
            cap_eff: mask("CapEff:")?,
            cap_prm: mask("CapPrm:")?,
            cap_bnd: mask("CapBnd:")?,
        })
    }
}

/// `lchown -R`: symlinks are re-owned, never followed.
fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<(), PrivilegeError> {
    let io = |what: &str, p: &Path| {
        let context = format!("{what} {}", p.display());
        move |source| PrivilegeError::Os { context, source }
    };
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(io("chown", path))?;
    let meta = std::fs::symlink_metadata(path).map_err(io("stat", path))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(io("reading", path))? {
            let entry = entry.map_err(io("reading", path))?;
            match chown_tree(&entry.path(), uid, gid) {
                // A spool segment may be deleted while we walk.
                Err(PrivilegeError::Os { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
    }
    Ok(())
}

/// Calls a `get*nam_r` function, growing its buffer on ERANGE.
fn lookup<T>(
    what: &str,
    name: &str,
    call: impl Fn(*const c_char, *mut c_char, usize) -> (c_int, Option<T>),
) -> Result<Option<T>, PrivilegeError> {
    let cname = CString::new(name).map_err(|_| PrivilegeError::Os {
        context: format!("{what} `{name}`"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "contains a NUL byte"),
    })?;
    let mut buf: Vec<c_char> = vec![0; 4096];
    loop {
        let (rc, found) = call(cname.as_ptr(), buf.as_mut_ptr(), buf.len());
        match rc {
            0 => return Ok(found),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
            // "Not found" comes back as 0 with a null result, or as one of these on some NSS
            // modules.
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
            errno => {
                return Err(PrivilegeError::Os {
                    context: format!("looking up {what} `{name}`"),
                    source: std::io::Error::from_raw_os_error(errno),
                });
            }
        }
    }
}

fn passwd_entry(name: &str) -> Result<Option<(u32, u32)>, PrivilegeError> {
    lookup("user", name, |cname, buf, len| {
        // SAFETY: zeroed passwd is a valid out-parameter (plain integers and pointers).
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: all pointers are valid for the call; `buf` has `len` bytes.
        let rc = unsafe { libc::getpwnam_r(cname, &mut entry, buf, len, &mut result) };
        let found = (rc == 0 && !result.is_null()).then_some((entry.pw_uid, entry.pw_gid));
        (rc, found)
    })
}

fn group_entry(name: &str) -> Result<Option<u32>, PrivilegeError> {
    lookup("group", name, |cname, buf, len| {
        // SAFETY: zeroed group is a valid out-parameter (plain integers and pointers).
        let mut entry: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: all pointers are valid for the call; `buf` has `len` bytes.
        let rc = unsafe { libc::getgrnam_r(cname, &mut entry, buf, len, &mut result) };
        let found = (rc == 0 && !result.is_null()).then_some(entry.gr_gid);
        (rc, found)
    })
}

/// The user's groups from the group database, `gid` first.
fn group_list(user: &str, gid: u32) -> Result<Vec<u32>, PrivilegeError> {
    let cname = CString::new(user).map_err(|_| PrivilegeError::NoSuchUser(user.to_owned()))?;
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut count = groups.len() as c_int;
        // SAFETY: `groups` has room for `count` entries; getgrouplist writes at most that many
        // and reports the needed size in `count` when it returns -1.
        let rc =
            unsafe { libc::getgrouplist(cname.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            return Ok(groups);
        }
        if count as usize <= groups.len() || groups.len() > 1 << 16 {
            return Ok(vec![gid]);
        }
        groups.resize(count as usize, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_root_and_rejects_unknown_names() {
        let root = Identity::resolve("root", None).unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0));
        assert!(matches!(
            Identity::resolve("sluice-surely-no-such-user", None),
            Err(PrivilegeError::NoSuchUser(_))
        ));
        assert!(matches!(
            Identity::resolve("root", Some("sluice-surely-no-such-group")),
            Err(PrivilegeError::NoSuchGroup(_))
        ));
    }

    #[test]
    fn parses_task_status() {
        let text = "Name:\tsluice\nUid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\n\
                    CapInh:\t0000000000000000\nCapPrm:\t0000008000000000\nCapEff:\t0000008000000000\n\
                    CapBnd:\t0000008000000000\n";
        let s = TaskStatus::parse(text).unwrap();
        assert_eq!(s.uids, [65534; 4]);
        assert_eq!(s.cap_eff, Capability::CAP_BPF.bitmask());
        assert_eq!(s.cap_prm, 1 << 39);
        assert!(TaskStatus::parse("Uid:\t1\t2\n").is_none());
    }

    #[test]
    fn current_process_passes_verify_for_itself() {
        // SAFETY: getters without preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let me = Identity {
            user: "me".into(),
            uid,
            gid,
            groups: vec![gid],
        };
        let all: Vec<Capability> = caps::all().into_iter().collect();
        // Test threads may run with different creds only if someone changed them; all equal here.
        verify(&me, &all).unwrap();
        if uid == 0 {
            // Root has capabilities outside an empty keep list: verify must say so.
            let err = verify(&me, &[]).unwrap_err().to_string();
            assert!(err.contains("CapEff") || err.contains("CapPrm"), "{err}");
        }
    }

    #[test]
    fn chown_tree_reowns_everything_without_following_symlinks() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to chown");
            return;
        }
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("a/link")).unwrap();
        chown_tree(dir.path(), 65534, 65534).unwrap();
        for p in ["", "a", "a/b", "a/b/f"] {
            let m = std::fs::symlink_metadata(dir.path().join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (65534, 65534), "{p}");
        }
        assert_eq!(std::fs::metadata(outside.path()).unwrap().uid(), 0);
        let nobody = Identity {
            user: "nobody".into(),
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
        };
        assert!(nobody.can_write_dir(&dir.path().join("a")));
        let root_dir = tempfile::tempdir().unwrap();
        assert!(!nobody.can_write_dir(root_dir.path()));
    }
}
