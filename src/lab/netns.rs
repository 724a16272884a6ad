//! Network namespaces that remove themselves: the substrate of `palisade lab` and of the
//! end-to-end tests.
//!
//! Modelled on ztunnel's `test_helpers/netns.rs`: a [`Netns`] is a named namespace
//! (`ip netns add`) with a unique name, loopback up, deleted when dropped. Code runs
//! inside it on a thread of its own ([`Netns::run`]) and programs through
//! [`Netns::command`]. Nothing here touches the caller's own namespace, except creating
//! the veth pair that [`veth`] moves at once into the two namespaces it joins.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";
/// Where `ip netns exec` finds a namespace's own files (`/etc/netns/NAME/resolv.conf`).
const ETC_NETNS_DIR: &str = "/etc/netns";

/// Makes names unique within this process; the process id makes them unique across.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named network namespace with loopback up, deleted on drop. Dropping it deletes the
/// name only: processes still running inside are not killed (their namespace lives on
/// until they exit), so callers stop what they started first.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// The namespace's own resolv.conf, when it has one.
    resolv_conf: Option<PathBuf>,
}

impl Netns {
    /// Creates `PREFIX-PID-N`, unique among concurrent tests and processes, and brings
    /// its loopback up. Needs root (CAP_SYS_ADMIN).
    pub fn new(prefix: &str) -> io::Result<Netns> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        ip(&["netns", "add", &name])?;
        // From here on, Drop removes it, whatever fails next.
        let netns = Netns {
            name,
            resolv_conf: None,
        };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// Its name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file that holds it open, `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// Gives the namespace's processes their own `/etc/resolv.conf`, as a pod's containers
    /// have: written to `/etc/netns/NAME/resolv.conf` (where `ip netns exec` looks too) and
    /// bind-mounted over `/etc/resolv.conf` in a mount namespace of the process's own by
    /// [`Netns::command`]. Removed with the namespace.
    pub fn set_resolv_conf(&mut self, text: &str) -> io::Result<()> {
        let dir = PathBuf::from(ETC_NETNS_DIR).join(&self.name);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("resolv.conf");
        std::fs::write(&path, text)?;
        self.resolv_conf = Some(path);
        Ok(())
    }

    /// A command that runs `program` inside the namespace (it enters the namespace
    /// between fork and exec), seeing the namespace's resolv.conf when it has one. Do not
    /// set `uid`/`gid` on it: the standard library drops privileges before entering, which
    /// then fails; use [`Netns::command_as`].
    pub fn command(&self, program: &str) -> Command {
        self.command_with(program, None)
    }

    /// Like [`Netns::command`], but the program runs as `uid` (with gid `uid` and no
    /// supplementary groups), after entering the namespace: how the proxy runs as 2190.
    pub fn command_as(&self, program: &str, uid: u32) -> Command {
        self.command_with(program, Some(uid))
    }

    fn command_with(&self, program: &str, uid: Option<u32>) -> Command {
        // Allocate before fork: only async-signal-safe calls may run in the child.
        let path = CString::new(self.path().as_os_str().as_bytes())
            .expect("a namespace path holds no NUL byte: names come from Netns::new");
        let resolv = self.resolv_conf.as_ref().map(|p| {
            CString::new(p.as_os_str().as_bytes())
                .expect("a resolv.conf path holds no NUL byte: names come from Netns::new")
        });
        let root = c"/";
        let target = c"/etc/resolv.conf";
        let mut command = Command::new(program);
        // SAFETY: the closure only makes raw system calls (open, setns, close, unshare,
        // mount, setgroups, setgid, setuid) on memory allocated before the fork.
        unsafe {
            command.pre_exec(move || {
                let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let entered = libc::setns(fd, libc::CLONE_NEWNET);
                let error = io::Error::last_os_error();
                libc::close(fd);
                if entered != 0 {
                    return Err(error);
                }
                // As `ip netns exec` does: a mount namespace of its own in which the
                // namespace's resolv.conf covers the machine's.
                if let Some(resolv) = &resolv {
                    if libc::unshare(libc::CLONE_NEWNS) != 0
                        || libc::mount(
                            std::ptr::null(),
                            root.as_ptr(),
                            std::ptr::null(),
                            libc::MS_SLAVE | libc::MS_REC,
                            std::ptr::null(),
                        ) != 0
                        || libc::mount(
                            resolv.as_ptr(),
                            target.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND,
                            std::ptr::null(),
                        ) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                if let Some(uid) = uid {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(uid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        command
    }

    /// Runs `f` on a new thread that has entered the namespace, and returns its result.
    /// Sockets `f` opens live in the namespace. A panic in `f` is passed on.
    pub fn run<F, T>(&self, f: F) -> io::Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let file = File::open(self.path())?;
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                // SAFETY: setns on a valid descriptor; it changes only this thread, which
                // ends when `f` returns.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                drop(file);
                Ok(f())
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs `ip ARGS...` inside the namespace (`ip -n NAME ARGS...`).
    pub fn ip(&self, args: &[&str]) -> io::Result<()> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.resolv_conf.is_some() {
            let _ = std::fs::remove_dir_all(PathBuf::from(ETC_NETNS_DIR).join(&self.name));
        }
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!(
                "palisade lab: could not delete network namespace {}: {e}",
                self.name
            );
        }
    }
}

/// Creates a veth pair: `a_if` in `a`, `b_if` in `b`, both up. It goes away with either
/// namespace.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> io::Result<()> {
    ip(&[
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])
}

/// Runs `ip ARGS...`; a failure says which command and what `ip` printed.
fn ip(args: &[&str]) -> io::Result<()> {
    let output = Command::new("ip").args(args).output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("could not run `ip {}`: {e}", args.join(" ")),
        )
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "`ip {}` failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
    use std::time::Duration;

    fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
    }

    #[test]
    fn names_are_unique_and_the_namespace_goes_away_on_drop() {
        let a = Netns::new("pal-t").unwrap();
        let b = Netns::new("pal-t").unwrap();
        assert_ne!(a.name(), b.name());
        assert!(a.name().contains(&std::process::id().to_string()));
        let path = a.path();
        assert!(path.exists());
        drop(a);
        assert!(!path.exists());
    }

    #[test]
    fn run_is_inside_and_isolated() {
        let ns = Netns::new("pal-t").unwrap();
        let other = Netns::new("pal-t").unwrap();
        let (listener, port) = ns
            .run(|| {
                let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
                let port = l.local_addr().unwrap().port();
                (l, port)
            })
            .unwrap();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        // Loopback works inside the namespace, and the listener is not visible outside it.
        ns.run(|| connect(addr).unwrap()).unwrap();
        let refused = other.run(|| connect(addr)).unwrap();
        assert_eq!(
            refused.unwrap_err().kind(),
            io::ErrorKind::ConnectionRefused
        );
        drop(listener);
    }

    #[test]
    fn run_passes_on_panics() {
        let ns = Netns::new("pal-t").unwrap();
        let caught = std::panic::catch_unwind(|| ns.run(|| panic!("inside")).unwrap());
        assert!(caught.is_err());
    }

    #[test]
    fn command_runs_inside() {
        let ns = Netns::new("pal-t").unwrap();
        let out = ns
            .command("ip")
            .args(["-o", "link", "show"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.lines().count(),
            1,
            "a fresh namespace has only lo: {text}"
        );
        assert!(text.contains(": lo:"), "{text}");

        let out = ns.command_as("id", 2190).arg("-u").output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2190");
    }

    #[test]
    fn commands_see_the_namespace_s_resolv_conf_and_the_machine_keeps_its_own() {
        let before = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let mut ns = Netns::new("pal-t").unwrap();
        ns.set_resolv_conf("nameserver 192.0.2.53\nsearch lab.test\n")
            .unwrap();
        let out = ns.command("cat").arg("/etc/resolv.conf").output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "nameserver 192.0.2.53\nsearch lab.test\n"
        );
        let out = ns
            .command_as("cat", 2190)
            .arg("/etc/resolv.conf")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("192.0.2.53"));
        assert_eq!(
            std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            before
        );
        let dir = PathBuf::from(ETC_NETNS_DIR).join(ns.name());
        assert!(dir.exists());
        drop(ns);
        assert!(!dir.exists(), "removed with the namespace");
    }

    #[test]
    fn ip_errors_say_what_failed() {
        let ns = Netns::new("pal-t").unwrap();
        let err = ns
            .ip(&["link", "set", "nosuchdev", "up"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nosuchdev") && err.contains(ns.name()),
            "{err}"
        );
    }

    #[test]
    fn veth_joins_two_namespaces() {
        let a = Netns::new("pal-t").unwrap();
        let b = Netns::new("pal-t").unwrap();
        veth(&a, "va", &b, "vb").unwrap();
        a.ip(&["addr", "add", "10.200.0.1/24", "dev", "va"])
            .unwrap();
        b.ip(&["addr", "add", "10.200.0.2/24", "dev", "vb"])
            .unwrap();
        let listener = b
            .run(|| TcpListener::bind("10.200.0.2:0").unwrap())
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"hi").unwrap();
        });
        let mut got = String::new();
        a.run(|| connect(addr).unwrap().read_to_string(&mut got).unwrap())
            .unwrap();
        server.join().unwrap();
        assert_eq!(got, "hi");
    }
}
