//! Network namespaces: a handle by path or fd, and running code inside one without changing
//! the calling thread's namespace.
//!
//! How: `setns(2)` changes only the calling thread, so [`Netns::run`] does it on a fresh,
//! short-lived thread and returns the result. Sockets keep the namespace they were created in,
//! so a netlink or packet socket opened by such a thread works on the pod's interfaces for as
//! long as it lives, from any thread of the program. The program's own threads never move.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};

/// `NS_GET_NSTYPE` from linux/nsfs.h: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// A network namespace, held open by a file descriptor.
///
/// Why: a pod's namespace is named by a path (`/run/netns/X`, `/proc/PID/ns/net`) that can
/// vanish while Berth works on it; holding the fd keeps the namespace itself alive and lets
/// the kernel be told "this namespace" unambiguously (moving links, creating veth peers).
#[derive(Clone)]
pub struct Netns {
    label: String,
    fd: Arc<OwnedFd>,
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Netns({})", self.label)
    }
}

impl Netns {
    /// Opens the namespace at `path` (`/run/netns/NAME`, `/proc/PID/ns/net`, a bind mount).
    ///
    /// Fails with [`ErrorKind::Netns`] when the path does not exist or is not a network
    /// namespace.
    pub fn open(path: impl AsRef<Path>) -> Result<Netns> {
        let path = path.as_ref();
        let label = path.display().to_string();
        let err = |source| {
            Error::new(
                "opening",
                &label,
                None,
                ErrorKind::Netns {
                    path: label.clone(),
                    source,
                },
            )
        };
        let file = File::open(path).map_err(err)?;
        let fd = OwnedFd::from(file);
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd's namespace type.
        let ty = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE as _) };
        if ty < 0 {
            let e = std::io::Error::last_os_error();
            let msg = if e.raw_os_error() == Some(libc::ENOTTY) {
                std::io::Error::other("not a namespace file")
            } else {
                e
            };
            return Err(err(msg));
        }
        if ty != libc::CLONE_NEWNET {
            return Err(err(std::io::Error::other(format!(
                "a namespace of another type ({ty:#x}), not a network namespace"
            ))));
        }
        Ok(Netns {
            label,
            fd: Arc::new(fd),
        })
    }

    /// The network namespace of process `pid` (`/proc/PID/ns/net`).
    pub fn of_pid(pid: u32) -> Result<Netns> {
        Netns::open(format!("/proc/{pid}/ns/net"))
    }

    /// The calling thread's own network namespace.
    ///
    /// Why: compare against it (tests assert the caller never moved), or hand it to
    /// [`crate::Links::move_to_netns`] to bring a link back.
    pub fn current() -> Result<Netns> {
        Netns::open("/proc/thread-self/ns/net")
    }

    /// Wraps an already open namespace fd; `label` names it in errors.
    ///
    /// Why: runtimes may pass a namespace as an fd. It is not checked here; an fd that is not
    /// a network namespace fails on first use.
    pub fn from_fd(fd: OwnedFd, label: impl Into<String>) -> Netns {
        Netns {
            label: label.into(),
            fd: Arc::new(fd),
        }
    }

    /// The path or label this handle was made from. Why: errors and logs name it.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The namespace's inode number: equal for two handles of the same namespace.
    ///
    /// Why: tell whether two paths name one namespace, or that a thread did not move.
    pub fn id(&self) -> Result<u64> {
        let f = File::from(
            self.fd
                .try_clone()
                .map_err(|e| self.error("inspecting", e))?,
        );
        Ok(f.metadata().map_err(|e| self.error("inspecting", e))?.ino())
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    /// The calling thread, and every other thread of the program, stay where they are.
    ///
    /// Why: everything that must happen "inside the pod" (opening sockets there, reading its
    /// `/proc/sys/net`, a syscall with no namespace argument) without the program's own
    /// threads ever changing namespace. The thread lives only as long as `f`.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let fd = self.fd.as_raw_fd();
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                // SAFETY: fd is a valid namespace fd owned by self for the whole scope.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(f())
            });
            match h.join() {
                Ok(r) => r.map_err(|e| self.error("entering", e)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    fn error(&self, op: &'static str, e: std::io::Error) -> Error {
        let kind = if matches!(e.raw_os_error(), Some(libc::EPERM)) {
            ErrorKind::PermissionDenied
        } else {
            ErrorKind::Netns {
                path: self.label.clone(),
                source: e,
            }
        };
        Error::new(op, "network namespace", Some(&self.label), kind)
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Netns {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_refuses_what_is_not_a_network_namespace() {
        let e = Netns::open("/nonexistent/berth-ns").unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Netns { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/berth-ns"), "{e}");
        let e = Netns::open("/proc/self/ns/uts").unwrap_err();
        assert!(e.to_string().contains("not a network namespace"), "{e}");
        let e = Netns::open("/etc/hostname").unwrap_err();
        assert!(e.to_string().contains("not a namespace file"), "{e}");
    }

    #[test]
    fn current_namespace_opens_and_runs_in_place() {
        let me = Netns::current().unwrap();
        let id = me.id().unwrap();
        assert_eq!(Netns::of_pid(std::process::id()).unwrap().id().unwrap(), id);
        // Entering one's own namespace needs CAP_SYS_ADMIN; without it the error says so.
        match me.run(|| Netns::current().map(|n| n.id().ok())) {
            Ok(inner) => assert_eq!(inner.unwrap(), Some(id)),
            Err(e) => assert!(matches!(e.kind, ErrorKind::PermissionDenied), "{e}"),
        }
    }
}
