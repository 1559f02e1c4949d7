//! A veth pair between two network namespaces that a test creates and always deletes, for the
//! tests that attach real XDP programs (`xdp_netns.rs`, `deploy.rs`). Shared so that both get
//! the same cleanup on panic and the same thread-local way of entering a namespace.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};

pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2 `ip` is required");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces (`sender`, `receiver`) joined by a veth pair, and a bpffs pin directory for
/// the receiver's XDP program; all deleted on drop, also when the test panics.
pub struct Netns {
    pub sender: String,
    pub receiver: String,
    pub sender_if: String,
    pub receiver_if: String,
    pub pin_path: PathBuf,
}

impl Netns {
    /// Names carry `tag`, the process id and a counter, so test binaries and the tests in one
    /// binary, running at the same time, never share a namespace or an interface name (which
    /// must stay within 15 bytes). `macs` (sender, receiver) fixes the link addresses for
    /// tests that install static neighbours. Addresses are `addr/prefix`; IPv6 ones skip
    /// duplicate address detection, which would keep them unusable for a second or more.
    pub fn create(
        tag: char,
        macs: Option<(&str, &str)>,
        sender_addrs: &[&str],
        receiver_addrs: &[&str],
    ) -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}{tag}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // Built before the first `ip` call, so a failing step still deletes what was made.
        let ns = Netns {
            sender: format!("sl{tag}a{id}"),
            receiver: format!("sl{tag}b{id}"),
            sender_if: format!("v{tag}a{id}"),
            receiver_if: format!("v{tag}b{id}"),
            pin_path: PathBuf::from(format!("/sys/fs/bpf/sluice-test-{id}")),
        };
        ip(&["netns", "add", &ns.sender]);
        ip(&["netns", "add", &ns.receiver]);
        let (sender_mac, receiver_mac) = match macs {
            Some((s, r)) => (vec!["address", s], vec!["address", r]),
            None => (vec![], vec![]),
        };
        let mut link = vec!["link", "add", &ns.sender_if];
        link.extend(&sender_mac);
        link.extend(["netns", &ns.sender, "type", "veth", "peer", "name"]);
        link.push(&ns.receiver_if);
        link.extend(&receiver_mac);
        link.extend(["netns", &ns.receiver]);
        ip(&link);
        for (netns, dev, addrs) in [
            (&ns.sender, &ns.sender_if, sender_addrs),
            (&ns.receiver, &ns.receiver_if, receiver_addrs),
        ] {
            for addr in addrs {
                let mut args = vec!["-n", netns, "addr", "add", addr, "dev", dev];
                if addr.contains(':') {
                    args.push("nodad");
                }
                ip(&args);
            }
            ip(&["-n", netns, "link", "set", dev, "up"]);
            ip(&["-n", netns, "link", "set", "lo", "up"]);
        }
        ns
    }

    pub fn xdp_attached(&self) -> bool {
        let out = Command::new("ip")
            .args([
                "-n",
                &self.receiver,
                "link",
                "show",
                "dev",
                &self.receiver_if,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("xdp")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace destroys its veth end, which detaches any XDP program on it.
        for netns in [&self.sender, &self.receiver] {
            let _ = Command::new("ip").args(["netns", "del", netns]).status();
        }
        if self.pin_path.exists() {
            for entry in std::fs::read_dir(&self.pin_path)
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = std::fs::remove_file(entry.path());
            }
            let _ = std::fs::remove_dir(&self.pin_path);
        }
    }
}

/// Runs `f` on a fresh thread inside namespace `name` (setns affects only the calling thread,
/// so the test thread itself never changes namespace). Sockets created there stay bound to it.
/// A panic in `f` is re-raised with its own message.
pub fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        enter_netns(&path);
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

pub fn enter_netns(path: &str) {
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: setns on an open namespace fd; affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// Spawns `command` with only its network namespace changed to `netns` (setns between fork and
/// exec): `ip netns exec` would also give the child a private /sys, hiding the daemon's XDP
/// pins from the test and from `sluice top`.
pub fn spawn_in_netns(command: &mut Command, netns: &str) -> Child {
    let netns_file = std::fs::File::open(format!("/run/netns/{netns}")).unwrap();
    let fd = netns_file.as_raw_fd();
    // SAFETY: the closure only calls setns (async-signal-safe) on an fd that stays open until
    // spawn returns.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(command, move || {
            if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let child = command.spawn().unwrap();
    drop(netns_file);
    child
}
