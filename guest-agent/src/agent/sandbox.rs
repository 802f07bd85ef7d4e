//! What a container's (or an exec's) child process does between fork and
//! exec, and the pid-namespace switch its parent makes around the fork.
//!
//! # Design
//!
//! **Mount namespace.** A container with a root file system `unshare`s a
//! mount namespace in the child, makes every mount a slave (nothing it does
//! propagates back to the agent), and `pivot_root`s into its overlay, then
//! detaches the old root, so nothing of the agent's file system is left in
//! the namespace. (`pivot_root` refuses an initramfs root, which has no
//! parent mount; the agent moved its root onto a bind mount at boot, see
//! `init::mount_filesystems`.) Then, inside the new root, it makes the
//! runtime spec's mounts in order (`/proc` of its pid namespace, `/sys`, a
//! tmpfs `/dev` into which the guest's `null`, `zero`, `full`, `random`,
//! `urandom` and `tty` are bind-mounted, `devpts`, ...), then the volumes
//! and the pod's `/etc` files, then masks `maskedPaths`, makes
//! `readonlyPaths` and, if asked, the root read-only (see `oci/mod.rs` for
//! the whole order, capabilities and seccomp included). The parent clones each
//! bind source into a detached mount (`open_tree(OPEN_TREE_CLONE)`, Linux
//! 5.2) that the child attaches with `move_mount` after entering its root,
//! so every target path is resolved inside the container's root: a symlink
//! in the image cannot point a mount outside it. A volume's `subPath` is
//! cloned from the descriptor `volume.rs` resolved it to, not by path, so a
//! symlink a container plants in the volume cannot redirect it either.
//!
//! **Pid namespace.** A new pid namespace affects only the children of the
//! process that enters it, so the *parent* thread switches the namespace its
//! children are born in ([`PidNsForChildren`]: `unshare(CLONE_NEWPID)` for a
//! container, `setns` into the container's for an exec), forks through
//! `std::process::Command` as usual, and switches back. The child is then
//! the namespace's pid 1 (or a member of the container's), while the agent
//! sees it as its own direct child: its exit status, the 127/126
//! exec-failure codes, the pipes and the process group work exactly as for a
//! container without namespaces, with no intermediate process.
//!
//! **Exec.** The child `setns`es into the container's mount namespace (which
//! also sets its root and cwd to the container's), joins its cgroup and takes
//! its user and working directory.
//!
//! A failing step writes its [`Step`] (and the index of the bind mount) to a
//! report pipe before the child exits, so the error names the step.
//!
//! Only async-signal-safe work happens in the child: raw syscalls through
//! nix, on paths prepared by the parent (short paths are converted on the
//! stack) and on file descriptors opened by the parent.
//!
//! # Limitations
//!
//! Network, IPC and UTS namespaces are the pod's (the agent's): containers
//! reach each other on localhost. There is no user namespace. An `rbind`
//! of a guest path copies one mount, not the mounts below it.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::sys::stat::Mode;
use nix::unistd::{chdir, pivot_root, setgid, setgroups, setsid, setuid};
use nix::NixPath;

use super::oci::mounts::{MountKind, SpecMount};
use super::oci::{FsPlan, ProcessSecurity};
use super::rootfs::{Bind, ContainerRoot};
use super::user::User;

/// The guest's device nodes bind-mounted into every container's `/dev`.
pub const DEV_NODES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
/// Symlinks every container's `/dev` gets.
const DEV_LINKS: [(&str, &str); 5] = [
    ("pts/ptmx", "/dev/ptmx"),
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
];

/// A step of the child's setup; its failure is reported by this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    /// Clearing the signal mask.
    SignalMask = 1,
    /// `setsid`.
    Setsid,
    /// Making the pty the controlling terminal.
    ControllingTty,
    /// Joining the cgroup.
    Cgroup,
    /// `unshare(CLONE_NEWNS)`.
    Unshare,
    /// Making the mounts slaves.
    Propagation,
    /// Entering the new root (`pivot_root`).
    EnterRoot,
    /// Mounting a spec mount; the index says which.
    Mount,
    /// Masking `maskedPaths`, making `readonlyPaths` read-only.
    Paths,
    /// Binding the default device nodes into a tmpfs `/dev`.
    Dev,
    /// Mounting a bind (pod file or volume); the index says which.
    Bind,
    /// Joining the container's mount namespace.
    JoinMounts,
    /// Changing to the working directory.
    Cwd,
    /// `setgroups`, `setgid`, `setuid`.
    User,
    /// Making the root read-only.
    ReadonlyRoot,
    /// Rlimits, OOM score, umask, bounding set, seccomp (before the user
    /// switch).
    SecurityBeforeUser,
    /// Capability sets, `no_new_privs`, seccomp (after it).
    SecurityAfterUser,
}

impl Step {
    const ALL: [Step; 17] = [
        Step::SignalMask,
        Step::Setsid,
        Step::ControllingTty,
        Step::Cgroup,
        Step::Unshare,
        Step::Propagation,
        Step::EnterRoot,
        Step::Mount,
        Step::Paths,
        Step::Dev,
        Step::Bind,
        Step::JoinMounts,
        Step::Cwd,
        Step::User,
        Step::ReadonlyRoot,
        Step::SecurityBeforeUser,
        Step::SecurityAfterUser,
    ];

    fn from_u8(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| *s as u8 == b)
    }

    /// What the step does, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Step::SignalMask => "clear the signal mask",
            Step::Setsid => "start a session",
            Step::ControllingTty => "take the pty as controlling terminal",
            Step::Cgroup => "join the cgroup",
            Step::Unshare => "create a mount namespace",
            Step::Propagation => "make the mounts private",
            Step::EnterRoot => "enter the root file system",
            Step::Mount => "mount",
            Step::Paths => "mask or make read-only linux.maskedPaths/readonlyPaths",
            Step::Dev => "bind the device nodes into /dev",
            Step::Bind => "bind-mount",
            Step::JoinMounts => "join the container's mount namespace",
            Step::Cwd => "change to the working directory",
            Step::User => "switch user",
            Step::ReadonlyRoot => "make the root read-only (root.readonly)",
            Step::SecurityBeforeUser => {
                "apply rlimits, oomScoreAdj, umask, seccomp or the bounding set"
            }
            Step::SecurityAfterUser => "apply capabilities, noNewPrivileges or seccomp",
        }
    }
}

/// A setup failure read back from the report pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// The failed step.
    pub step: Step,
    /// For [`Step::Bind`] and [`Step::Mount`]: which one.
    pub index: usize,
}

/// A bind mount as the child makes it: from a detached copy of the source
/// that the parent made.
#[derive(Debug)]
struct ChildBind {
    /// From `open_tree(OPEN_TREE_CLONE)`.
    tree: OwnedFd,
    target: String,
    dir: bool,
    read_only: bool,
}

/// The mount namespace of a container with a root file system, as its child
/// builds it.
#[derive(Debug)]
pub struct MountPlan {
    /// The merged overlay, in the agent's view.
    root: String,
    dev_nodes: Vec<ChildBind>,
    /// The spec's mounts, in order (binds with their source cloned).
    mounts: Vec<ChildMount>,
    /// The pod's files and volumes.
    binds: Vec<ChildBind>,
    masked_paths: Vec<String>,
    readonly_paths: Vec<String>,
    readonly_root: bool,
}

/// One of the spec's mounts as the child makes it.
#[derive(Debug)]
struct ChildMount {
    spec: SpecMount,
    /// A bind's source, cloned by the parent.
    bind: Option<ChildBind>,
}

/// `OPEN_TREE_CLONE`, from include/uapi/linux/mount.h.
const OPEN_TREE_CLONE: libc::c_uint = 1;
/// `MOVE_MOUNT_F_EMPTY_PATH`, from include/uapi/linux/mount.h.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// `open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)`: a
/// detached bind mount of `path`, which [`attach_tree`] can mount in another
/// mount namespace (a plain bind mount's source must be in the caller's).
fn clone_tree(path: &Path) -> nix::Result<OwnedFd> {
    open_tree(libc::AT_FDCWD, path, 0)
}

/// [`clone_tree`] of what `fd` (an `O_PATH` descriptor) is open on:
/// `open_tree(fd, "", ... | AT_EMPTY_PATH)`.
fn clone_opened_tree(fd: BorrowedFd) -> nix::Result<OwnedFd> {
    open_tree(
        fd.as_raw_fd(),
        Path::new(""),
        libc::AT_EMPTY_PATH as libc::c_uint,
    )
}

/// `open_tree(dirfd, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | extra)`.
fn open_tree(dirfd: RawFd, path: &Path, extra: libc::c_uint) -> nix::Result<OwnedFd> {
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | extra;
    let fd = path.with_nix_path(|p| {
        // SAFETY: `p` is a NUL-terminated path that outlives the call;
        // `dirfd` is AT_FDCWD or a borrowed fd, passed by value (a bad one
        // is EBADF); the syscall takes no other pointer and returns a new fd
        // or -1.
        unsafe { libc::syscall(libc::SYS_open_tree, dirfd, p.as_ptr(), flags) }
    })?;
    let fd = RawFd::try_from(Errno::result(fd)?).map_err(|_| Errno::EBADF)?;
    // SAFETY: `fd` was just returned by open_tree and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `move_mount(tree, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`:
/// mounts a tree from [`clone_tree`] on `target`.
fn attach_tree(tree: &OwnedFd, target: &Path) -> nix::Result<()> {
    let r = target.with_nix_path(|t| {
        // SAFETY: `tree` is an open fd from open_tree, the empty path and
        // `t` are NUL-terminated strings that outlive the call.
        unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        }
    })?;
    Errno::result(r).map(drop)
}

impl MountPlan {
    /// Opens every bind source of `root` (the pod files and volumes) and of
    /// `fs` (the spec's binds), and the device nodes from `dev` (the guest's
    /// `/dev`).
    pub fn new(root: &ContainerRoot, dev: &Path, fs: FsPlan) -> Result<Self, (String, Errno)> {
        let child_bind = |b: &Bind| {
            let tree = match &b.opened {
                Some(fd) => clone_opened_tree(fd.as_fd()),
                None => clone_tree(&b.source),
            };
            let tree = tree.map_err(|e| (b.source.display().to_string(), e))?;
            Ok(ChildBind {
                tree,
                target: b.target.clone(),
                dir: b.dir,
                read_only: b.read_only,
            })
        };
        let dev_nodes = DEV_NODES
            .iter()
            .map(|n| Bind {
                source: dev.join(n),
                opened: None,
                target: format!("/dev/{n}"),
                dir: false,
                read_only: false,
            })
            .filter(|b| b.source.exists())
            .map(|b| child_bind(&b))
            .collect::<Result<_, _>>()?;
        let binds = root
            .binds()
            .iter()
            .map(child_bind)
            .collect::<Result<_, _>>()?;
        let mounts = fs
            .mounts
            .into_iter()
            .map(|spec| {
                let bind = match &spec.kind {
                    MountKind::Bind { source, .. } => Some(child_bind(&Bind {
                        source: source.into(),
                        opened: None,
                        target: spec.target.clone(),
                        dir: Path::new(source).is_dir(),
                        read_only: spec.flags.contains(MsFlags::MS_RDONLY),
                    })?),
                    MountKind::Fs { .. } => None,
                };
                Ok(ChildMount { spec, bind })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            root: root.merged().display().to_string(),
            dev_nodes,
            mounts,
            binds,
            masked_paths: fs.masked_paths,
            readonly_paths: fs.readonly_paths,
            readonly_root: fs.readonly_root,
        })
    }

    /// The targets of the spec's mounts, in order, to name a failed one.
    pub fn mount_targets(&self) -> Vec<String> {
        self.mounts.iter().map(|m| m.spec.target.clone()).collect()
    }

    /// In the child: a new mount namespace rooted at the overlay, with the
    /// spec's mounts, the pod's binds, the masked and read-only paths.
    fn enter(&self) -> Result<(), (Step, usize, Errno)> {
        let at = |step| move |e| (step, 0, e);
        unshare(CloneFlags::CLONE_NEWNS).map_err(at(Step::Unshare))?;
        let slave = MsFlags::MS_REC | MsFlags::MS_SLAVE;
        mount(None::<&str>, "/", None::<&str>, slave, None::<&str>)
            .map_err(at(Step::Propagation))?;
        self.enter_root().map_err(at(Step::EnterRoot))?;
        for (i, m) in self.mounts.iter().enumerate() {
            spec_mount(m).map_err(|e| (Step::Mount, i, e))?;
            if m.spec.target == "/dev"
                && matches!(&m.spec.kind, MountKind::Fs { fstype, .. } if fstype == "tmpfs")
            {
                self.populate_dev().map_err(at(Step::Dev))?;
            }
        }
        for (i, b) in self.binds.iter().enumerate() {
            bind(b).map_err(|e| (Step::Bind, i, e))?;
        }
        for path in &self.masked_paths {
            mask(path).map_err(at(Step::Paths))?;
        }
        for path in &self.readonly_paths {
            read_only(path).map_err(at(Step::Paths))?;
        }
        if self.readonly_root {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            mount(None::<&str>, "/", None::<&str>, flags, None::<&str>)
                .map_err(at(Step::ReadonlyRoot))?;
        }
        Ok(())
    }

    /// `pivot_root` into the overlay and detach the old root.
    fn enter_root(&self) -> nix::Result<()> {
        chdir(self.root.as_str())?;
        pivot_root(".", ".")?;
        // The old root is now stacked on `.`: detach it.
        umount2(".", MntFlags::MNT_DETACH)?;
        chdir("/")
    }

    /// The guest's default device nodes and the usual links in a fresh
    /// tmpfs `/dev`, as runc creates its default devices.
    fn populate_dev(&self) -> nix::Result<()> {
        for node in &self.dev_nodes {
            bind(node)?;
        }
        for (target, link) in DEV_LINKS {
            match std::os::unix::fs::symlink(target, link) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_errno(e)),
            }
        }
        Ok(())
    }
}

/// Makes one of the spec's mounts (inside the container's root).
fn spec_mount(m: &ChildMount) -> nix::Result<()> {
    let target = m.spec.target.as_str();
    match (&m.spec.kind, &m.bind) {
        (MountKind::Bind { recursive, .. }, Some(b)) => {
            let _ = recursive; // open_tree(OPEN_TREE_CLONE) copies one mount.
            bind(b)?;
        }
        (MountKind::Fs { fstype, source }, _) => {
            std::fs::create_dir_all(target).map_err(io_errno)?;
            mount(
                Some(source.as_str()),
                target,
                Some(fstype.as_str()),
                m.spec.flags,
                m.spec.data.as_deref(),
            )?;
        }
        (MountKind::Bind { .. }, None) => return Err(Errno::EINVAL),
    }
    if !m.spec.propagation.is_empty() {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            m.spec.propagation,
            None::<&str>,
        )?;
    }
    Ok(())
}

/// Masks `path` as runc does: `/dev/null` over a file, an empty read-only
/// tmpfs over a directory; a missing path is left alone.
fn mask(path: &str) -> nix::Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_errno(e)),
    };
    if meta.is_dir() {
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
    } else {
        mount(
            Some("/dev/null"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    }
}

/// Makes `path` a read-only bind of itself; a missing path is left alone.
fn read_only(path: &str) -> nix::Result<()> {
    let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
    match mount(Some(path), path, None::<&str>, flags, None::<&str>) {
        Ok(()) => {}
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    }
    let ro = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    mount(None::<&str>, path, None::<&str>, ro, None::<&str>)
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Creates the target (a directory, or an empty file in an existing or new
/// directory), bind-mounts the source on it, and remounts it read-only if
/// asked. Runs inside the container's root.
fn bind(b: &ChildBind) -> nix::Result<()> {
    let target = Path::new(&b.target);
    if b.dir {
        std::fs::create_dir_all(target).map_err(io_errno)?;
    } else {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io_errno)?;
        }
        let flags = OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
        match open(target, flags, Mode::from_bits_truncate(0o644)) {
            // A symlink stays: the mount follows it, inside this root.
            Ok(_) | Err(Errno::ELOOP | Errno::EISDIR) => {}
            Err(e) => return Err(e),
        }
    }
    attach_tree(&b.tree, target)?;
    if b.read_only {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(None::<&str>, target, None::<&str>, flags, None::<&str>)?;
    }
    Ok(())
}

/// Everything the child does between fork and exec, in order: signal mask,
/// session (and controlling tty), cgroup, mount namespace (new, or the
/// container's), working directory, user.
#[derive(Debug, Default)]
pub struct ChildSetup {
    /// The cgroup's `cgroup.procs`, open for writing.
    pub cgroup_procs: Option<File>,
    /// Build a new mount namespace (a container with a root file system).
    pub mounts: Option<MountPlan>,
    /// Join this mount namespace (an exec into such a container).
    pub join_mounts: Option<OwnedFd>,
    /// The working directory, resolved in the final root.
    pub cwd: Option<CString>,
    /// Who to become; `None` stays root.
    pub user: Option<User>,
    /// Make stdin (a pty slave) the controlling terminal.
    pub controlling_tty: bool,
    /// Capabilities, seccomp, rlimits, ... of the runtime spec.
    pub security: ProcessSecurity,
}

impl ChildSetup {
    /// The targets of the spec's mounts, in order, to name a failed one.
    pub fn mount_targets(&self) -> Vec<String> {
        self.mounts
            .as_ref()
            .map(MountPlan::mount_targets)
            .unwrap_or_default()
    }

    /// The targets of the bind mounts, in order, to name a failed one.
    pub fn bind_targets(&self) -> Vec<String> {
        let binds = self.mounts.iter().flat_map(|m| &m.binds);
        binds.map(|b| b.target.clone()).collect()
    }

    /// Runs the setup in the child; on failure writes the step to `report`.
    ///
    /// Runs between fork and exec: only async-signal-safe calls (see the
    /// module doc).
    pub fn run(&self, report: RawFd) -> std::io::Result<()> {
        self.steps().map_err(|(step, index, errno)| {
            let bytes = [step as u8, u8::try_from(index).unwrap_or(u8::MAX)];
            write_report(report, bytes);
            std::io::Error::from_raw_os_error(errno as i32)
        })
    }

    fn steps(&self) -> Result<(), (Step, usize, Errno)> {
        let at = |step| move |e| (step, 0, e);
        // The agent blocks SIGCHLD/SIGTERM/SIGINT for its signalfd and std
        // passes the mask on: without this the container could not be
        // stopped with SIGTERM.
        sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
            .map_err(at(Step::SignalMask))?;
        // Its own session and process group, so the container's processes
        // can be killed together even without a cgroup.
        setsid().map_err(at(Step::Setsid))?;
        if self.controlling_tty {
            set_controlling_tty(0).map_err(at(Step::ControllingTty))?;
        }
        if let Some(procs) = &self.cgroup_procs {
            join_cgroup(procs).map_err(at(Step::Cgroup))?;
        }
        if let Some(plan) = &self.mounts {
            plan.enter()?;
        }
        if let Some(ns) = &self.join_mounts {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNS).map_err(at(Step::JoinMounts))?;
        }
        if let Some(cwd) = &self.cwd {
            chdir(cwd.as_c_str()).map_err(at(Step::Cwd))?;
        }
        self.security
            .before_user()
            .map_err(at(Step::SecurityBeforeUser))?;
        if let Some(u) = &self.user {
            setgroups(&u.groups).map_err(at(Step::User))?;
            setgid(u.gid).map_err(at(Step::User))?;
            setuid(u.uid).map_err(at(Step::User))?;
        }
        self.security
            .after_user()
            .map_err(at(Step::SecurityAfterUser))?;
        Ok(())
    }
}

/// Writes the two report bytes; nothing to do if that fails.
fn write_report(fd: RawFd, bytes: [u8; 2]) {
    // SAFETY: `fd` is the write end of the parent's report pipe, inherited
    // across fork and open until exec (close-on-exec); the buffer is a
    // 2-byte local array.
    let _ = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
}

/// Reads what a failed child reported on `report` (the read end), if it did.
pub fn read_report(report: &OwnedFd) -> Option<Failure> {
    let mut buf = [0u8; 2];
    let n = nix::unistd::read(report, &mut buf).ok()?;
    (n == 2).then_some(())?;
    Some(Failure {
        step: Step::from_u8(buf[0])?,
        index: usize::from(buf[1]),
    })
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is open.
fn join_cgroup(procs: &File) -> nix::Result<()> {
    let mut f = procs;
    f.write_all(b"0").map_err(io_errno)
}

/// `ioctl(fd, TIOCSCTTY, 0)`: makes the terminal on `fd` the session's
/// controlling terminal (the caller must lead a session without one).
fn set_controlling_tty(fd: RawFd) -> nix::Result<()> {
    // SAFETY: TIOCSCTTY takes an int argument by value (0: do not steal the
    // terminal from another session) and touches no user memory; a bad `fd`
    // is reported as EBADF.
    let r = unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) };
    Errno::result(r).map(drop)
}

/// While alive, the calling thread's children are born in another pid
/// namespace; dropping it switches back to the thread's own.
#[derive(Debug)]
pub struct PidNsForChildren {
    own: File,
}

impl PidNsForChildren {
    fn own() -> nix::Result<File> {
        File::open("/proc/thread-self/ns/pid").map_err(io_errno)
    }

    /// Children are born in a new pid namespace, the first as its pid 1.
    pub fn new_namespace() -> nix::Result<Self> {
        let own = Self::own()?;
        unshare(CloneFlags::CLONE_NEWPID)?;
        Ok(Self { own })
    }

    /// Children are born in the pid namespace `ns` (open on
    /// `/proc/<pid>/ns/pid`).
    pub fn join(ns: &File) -> nix::Result<Self> {
        let own = Self::own()?;
        setns(ns.as_fd(), CloneFlags::CLONE_NEWPID)?;
        Ok(Self { own })
    }
}

impl Drop for PidNsForChildren {
    fn drop(&mut self) {
        // Our own active namespace is always a valid target.
        if let Err(e) = setns(self.own.as_fd(), CloneFlags::CLONE_NEWPID) {
            log::error!("cannot switch back to the agent's pid namespace: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    use guest_agent::protocol::{ExecSpec, RunSpec, VolumeFile, VolumeFiles, VolumeMount};

    use super::*;
    use crate::agent::container::{Container, ContainerError, Termination};
    use crate::agent::oci::test_util::{merge, set_cwd};
    use crate::agent::rootfs::{Filesystems, Layout};
    use crate::agent::volume;

    /// A pod on a private tmpfs: the image (a plain directory), the run
    /// directory and the pod's /etc files.
    struct Pod {
        work: PathBuf,
        lower: PathBuf,
        fs: Filesystems,
    }

    impl Pod {
        fn new(work: &Path) -> Self {
            let lower = work.join("image");
            for d in ["bin", "etc", "tmp", "home/web"] {
                std::fs::create_dir_all(lower.join(d)).unwrap();
            }
            std::fs::copy("/bin/busybox", lower.join("bin/busybox")).unwrap();
            for applet in [
                "sh", "cat", "ls", "id", "echo", "sleep", "test", "readlink", "grep", "touch",
                "mkdir",
            ] {
                std::os::unix::fs::symlink("busybox", lower.join("bin").join(applet)).unwrap();
            }
            std::fs::write(
                lower.join("etc/passwd"),
                "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n",
            )
            .unwrap();
            std::fs::write(lower.join("etc/hosts"), "image's own hosts\n").unwrap();
            let pod_etc = work.join("pod-etc");
            std::fs::create_dir_all(&pod_etc).unwrap();
            std::fs::write(pod_etc.join("hosts"), "10.0.0.2\tweb-0\n").unwrap();
            std::fs::write(pod_etc.join("hostname"), "web-0\n").unwrap();
            let fs = Filesystems::new(Layout {
                run: work.join("run"),
                pod_etc,
                ..Layout::default()
            });
            Self {
                work: work.to_path_buf(),
                lower,
                fs,
            }
        }

        fn start(&self, spec: &RunSpec) -> Result<Container, ContainerError> {
            let root = self
                .fs
                .prepare(
                    &spec.name,
                    &self.lower,
                    &spec.volume_mounts,
                    spec.resolv_conf.as_deref(),
                )
                .unwrap();
            Container::start(spec, None, Some(root), &mut Default::default())
        }

        /// Runs `script` to its end; stdout, stderr and how it ended.
        fn run(&self, spec: &RunSpec) -> (String, String, Termination) {
            let mut c = self.start(spec).unwrap();
            let (out, err, t) = c.wait_output();
            c.finish();
            let s = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
            (s(out), s(err), t)
        }
    }

    /// `sh -c script` with the mounts and namespaces containerd gives a
    /// container.
    fn sh(name: &str, script: &str) -> RunSpec {
        let mut run = RunSpec {
            name: name.into(),
            spec: Box::new(guest_agent::protocol::process_spec(
                vec!["sh".into(), "-c".into(), script.into()],
                vec!["PATH=/bin".into()],
                None,
            )),
            rootfs: Some(guest_agent::protocol::Rootfs {
                device: "(test: a directory)".into(),
                fstype: "none".into(),
            }),
            ..RunSpec::default()
        };
        let ro = ["nosuid", "noexec", "nodev", "ro"];
        merge(
            &mut run,
            serde_json::json!({
                "mounts": [
                    {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
                    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                    {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ro}
                ],
                "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
            }),
        );
        run
    }

    /// Runs `test` on a thread in a private mount namespace, with a fresh
    /// tmpfs as its work directory; skips (saying why) when not root or
    /// when namespaces are refused.
    fn in_private_mounts(test: impl FnOnce(&Path) + Send + 'static) {
        static N: AtomicU32 = AtomicU32::new(0);
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: needs root for mount and pid namespaces");
            return;
        }
        let work = std::env::temp_dir().join(format!(
            "unipod-sandbox-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&work).unwrap();
        let dir = work.clone();
        let outcome = std::thread::spawn(move || {
            if let Err(e) = unshare(CloneFlags::CLONE_NEWNS) {
                eprintln!("SKIPPED: unshare(CLONE_NEWNS) refused: {e}");
                return;
            }
            let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
            mount(None::<&str>, "/", None::<&str>, private, None::<&str>).unwrap();
            mount(
                Some("tmpfs"),
                &dir,
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .unwrap();
            test(&dir);
        })
        .join();
        // The tmpfs went with the thread's namespace.
        std::fs::remove_dir_all(&work).unwrap();
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }

    #[test]
    fn a_container_writes_to_its_own_layer_in_its_own_root() {
        in_private_mounts(|work| {
            let pod = Pod::new(work);
            let marker = format!("/tmp/unipod-host-marker-{}", std::process::id());
            std::fs::write(&marker, "host").unwrap();
            let script = format!(
                "echo made > /made; cat /made; cat {marker} || echo no-marker; \
                 cat /etc/hosts /etc/hostname; echo pid $$; \
                 test -c /dev/null && test -e /dev/pts/ptmx && echo dev-ok; \
                 echo x > /sys/x 2>/dev/null || echo sys-ro"
            );
            let (out, err, t) = pod.run(&sh("web", &script));
            std::fs::remove_file(&marker).unwrap();
            assert_eq!(t, Termination::Exited(0), "{out}{err}");
            assert!(out.contains("made\n"), "{out}");
            assert!(
                out.contains("no-marker"),
                "the host's root is hidden: {out}"
            );
            assert!(
                out.contains("10.0.0.2\tweb-0\nweb-0\n"),
                "the pod's files: {out}"
            );
            assert!(
                out.contains("pid 1\n"),
                "pid 1 of its own pid namespace: {out}"
            );
            assert!(out.contains("dev-ok") && out.contains("sys-ro"), "{out}");
            assert!(!pod.lower.join("made").exists(), "the image is not written");
            assert!(
                !pod.work.join("run/containers/web").exists(),
                "finish removes the overlay"
            );

            // A restart gets a fresh writable layer.
            let (out, _, t) = pod.run(&sh("web", "cat /made || echo fresh"));
            assert_eq!((out.as_str(), t), ("fresh\n", Termination::Exited(0)));
        });
    }

    #[test]
    fn a_container_s_own_resolv_conf_replaces_the_pod_s() {
        in_private_mounts(|work| {
            let pod = Pod::new(work);
            std::fs::write(work.join("pod-etc/resolv.conf"), "nameserver 10.0.0.1\n").unwrap();
            let (out, _, t) = pod.run(&sh("plain", "cat /etc/resolv.conf"));
            assert_eq!(
                (out.as_str(), t),
                ("nameserver 10.0.0.1\n", Termination::Exited(0))
            );
            let mut own = sh("own", "cat /etc/resolv.conf; cat /etc/hostname");
            own.resolv_conf = Some("nameserver 10.89.0.53\nsearch cri.test\n".into());
            let (out, _, t) = pod.run(&own);
            assert_eq!(
                (out.as_str(), t),
                (
                    "nameserver 10.89.0.53\nsearch cri.test\nweb-0\n",
                    Termination::Exited(0)
                ),
                "its own resolv.conf, the pod's other files"
            );
            assert_eq!(
                std::fs::read_to_string(work.join("pod-etc/resolv.conf")).unwrap(),
                "nameserver 10.0.0.1\n",
                "the pod's file is untouched"
            );
        });
    }

    #[test]
    fn a_shared_pid_namespace_is_the_agent_s() {
        in_private_mounts(|work| {
            let pod = Pod::new(work);
            let mut spec = sh("web", "echo $$");
            merge(
                &mut spec,
                serde_json::json!({"linux": {"namespaces": [{"type": "mount"}]}}),
            );
            let mut c = pod.start(&spec).unwrap();
            let pid = c.pid();
            let (out, _, _) = c.wait_output();
            c.finish();
            assert_eq!(String::from_utf8_lossy(&out), format!("{pid}\n"));
        });
    }

    #[test]
    fn users_are_looked_up_in_the_image() {
        in_private_mounts(|work| {
            let pod = Pod::new(work);
            let mut spec = sh("web", "id -u; id -g; cwd=$(pwd); echo $cwd");
            spec.image_user = Some("nobody".into());
            set_cwd(&mut spec, "/home/web");
            let (out, _, t) = pod.run(&spec);
            assert_eq!(
                (out.as_str(), t),
                ("65534\n65534\n/home/web\n", Termination::Exited(0))
            );

            spec.image_user = Some("ghost".into());
            let root = pod.fs.prepare("web", &pod.lower, &[], None).unwrap();
            let err =
                Container::start(&spec, None, Some(root), &mut Default::default()).unwrap_err();
            assert!(err.to_string().contains("\"ghost\""), "{err}");
            assert!(!pod.work.join("run/containers/web").exists(), "cleaned up");
        });
    }

    #[test]
    fn volumes_are_shared_and_read_only_when_asked() {
        in_private_mounts(|work| {
            let pod = Pod::new(work);
            let volume = |path: &str, read_only| VolumeMount {
                name: "data".into(),
                path: path.into(),
                read_only,
                sub_path: None,
            };
            let mut writer = sh("writer", "echo shared > /data/f && echo wrote");
            writer.volume_mounts = vec![volume("/data", false)];
            let (out, err, _) = pod.run(&writer);
            assert_eq!(out, "wrote\n", "{err}");

            let mut reader = sh(
                "reader",
                "cat /srv/ro/f; echo no > /srv/ro/g || echo refused",
            );
            reader.volume_mounts = vec![volume("/srv/ro", true)];
            let (out, err, _) = pod.run(&reader);
            assert_eq!(out, "shared\nrefused\n");
            assert!(err.contains("Read-only file system"), "{err}");
        });
    }

    fn volume_mount(
        name: &str,
        path: &str,
        read_only: bool,
        sub_path: Option<&str>,
    ) -> VolumeMount {
        VolumeMount {
            name: name.into(),
            path: path.into(),
            read_only,
            sub_path: sub_path.map(Into::into),
        }
    }

    /// The files of volume `cfg`: `key` holding `text`, and more.
    fn cfg(text: &str, more: &[&str]) -> VolumeFiles {
        let file = |path: &str, data: &str| VolumeFile {
            path: path.into(),
            data: data.into(),
            mode: 0o644,
        };
        let mut files = vec![file("key", text)];
        files.extend(more.iter().map(|p| file(p, "")));
        VolumeFiles {
            name: "cfg".into(),
            files,
        }
    }

    #[test]
    fn a_running_container_sees_a_written_volume_swap_but_its_sub_path_does_not() {
        in_private_mounts(|work| {
            let pod = Pod::new(work);
            let volumes = pod.fs.volumes_dir();
            volume::write(&volumes, &cfg("v1\n", &[])).unwrap();
            let mut spec = sh(
                "web",
                "cat /cfg/key; echo > /scratch/ready; n=0; \
                 while test ! -e /cfg/go && test $n -lt 1000; do sleep 0.01; n=$((n+1)); done; \
                 cat /cfg/key; ls /cfg; cat /etc/app.conf",
            );
            spec.volume_mounts = vec![
                volume_mount("cfg", "/cfg", true, None),
                volume_mount("scratch", "/scratch", false, None),
                volume_mount("cfg", "/etc/app.conf", true, Some("key")),
            ];
            let mut c = pod.start(&spec).unwrap();
            let ready = volumes.join("scratch/ready");
            let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !ready.exists() && std::time::Instant::now() < give_up {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            volume::write(&volumes, &cfg("v2\n", &["go"])).unwrap();
            let (out, err, t) = c.wait_output();
            c.finish();
            let (out, err) = (String::from_utf8_lossy(&out), String::from_utf8_lossy(&err));
            assert_eq!(t, Termination::Exited(0), "{out}{err}");
            assert_eq!(out, "v1\nv2\ngo\nkey\nv1\n", "{err}");
        });
    }

    #[test]
    fn sub_paths_bind_what_they_resolve_to_inside_the_volume_only() {
        in_private_mounts(|work| {
            let pod = Pod::new(work);
            let volumes = pod.fs.volumes_dir();
            volume::write(&volumes, &cfg("v1\n", &[])).unwrap();
            let mut spec = sh(
                "web",
                "cat /etc/app.conf; echo x > /d/f && echo wrote; \
                 echo no > /etc/app.conf || echo refused",
            );
            spec.volume_mounts = vec![
                volume_mount("cfg", "/etc/app.conf", true, Some("key")),
                volume_mount("data", "/d", false, Some("sub/dir")),
            ];
            let (out, err, t) = pod.run(&spec);
            assert_eq!(t, Termination::Exited(0), "{out}{err}");
            assert_eq!(out, "v1\nwrote\nrefused\n", "{err}");
            assert_eq!(
                std::fs::read_to_string(volumes.join("data/sub/dir/f")).unwrap(),
                "x\n",
                "the missing sub path was made as a directory"
            );

            // A link a container could plant: the start fails, naming the mount.
            std::os::unix::fs::symlink("/etc", volumes.join("data/esc")).unwrap();
            let mounts = [volume_mount("data", "/x", false, Some("esc/passwd"))];
            let err = pod
                .fs
                .prepare("esc", &pod.lower, &mounts, None)
                .unwrap_err();
            assert_eq!(
                crate::agent::logger::Chain(&err).to_string(),
                "volume mount \"data\" at \"/x\": subPath: \"esc/passwd\" leads outside \
                 the volume (through a symlink)"
            );
            assert!(!pod.work.join("run/containers/esc").exists(), "cleaned up");
        });
    }

    #[test]
    fn the_spec_s_security_settings_apply_as_runc_applies_them() {
        in_private_mounts(|work| {
            let pod = Pod::new(work);
            let script = "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; \
                          echo kcore=$(cat /proc/kcore | wc -c); \
                          touch /x 2>/dev/null || echo root-ro; \
                          echo 1 > /proc/sys/kernel/shm_rmid_forced 2>/dev/null || echo sys-ro; \
                          mkdir /dev/shm/d 2>&1; id -G";
            let mut spec = sh("web", script);
            let caps = ["CAP_CHOWN", "CAP_SETGID", "CAP_SETUID"];
            merge(
                &mut spec,
                serde_json::json!({
                    "root": {"path": "rootfs", "readonly": true},
                    "process": {
                        "user": {"uid": 0, "gid": 0, "additionalGids": [1234]},
                        "noNewPrivileges": true,
                        "capabilities": {"bounding": caps, "effective": ["CAP_CHOWN"], "permitted": caps}
                    },
                    "linux": {
                        "maskedPaths": ["/proc/kcore", "/proc/missing"],
                        "readonlyPaths": ["/proc/sys"],
                        "seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 28}
                        ]}
                    }
                }),
            );
            let (out, err, t) = pod.run(&spec);
            assert_eq!(t, Termination::Exited(0), "{out}{err}");
            let lines: Vec<&str> = out.lines().collect();
            // Root's exec makes its effective set the bounding set, under
            // runc too: the kernel's rule for uid 0, not the spec's.
            assert!(lines.contains(&"CapEff:\t00000000000000c1"), "{out}");
            assert!(lines.contains(&"CapBnd:\t00000000000000c1"), "{out}");
            assert!(lines.contains(&"NoNewPrivs:\t1"), "{out}");
            assert!(lines.contains(&"Seccomp:\t2"), "{out}");
            assert!(lines.contains(&"kcore=0"), "{out}");
            assert!(
                lines.contains(&"root-ro") && lines.contains(&"sys-ro"),
                "{out}"
            );
            assert!(
                out.contains("No space left on device"),
                "seccomp errnoRet: {out}"
            );
            assert!(lines.contains(&"0 1234"), "additional gids: {out}");
        });
    }

    #[test]
    fn an_unknown_mount_type_fails_the_start_naming_it() {
        in_private_mounts(|work| {
            let pod = Pod::new(work);
            let mut spec = sh("web", "true");
            merge(
                &mut spec,
                serde_json::json!({"mounts": [{"destination": "/mnt", "type": "nfs", "source": "h:/"}]}),
            );
            let err = pod.start(&spec).unwrap_err();
            let err = crate::agent::logger::Chain(&err).to_string();
            assert!(
                err.contains("mounts[0] (/mnt)") && err.contains("nfs"),
                "{err}"
            );
        });
    }

    #[test]
    fn a_failed_bind_names_its_target() {
        in_private_mounts(|work| {
            let pod = Pod::new(work);
            // A file where the volume's directory should go.
            let mut spec = sh("web", "true");
            spec.volume_mounts = vec![VolumeMount {
                name: "data".into(),
                path: "/etc/passwd/data".into(),
                read_only: false,
                sub_path: None,
            }];
            let err = pod.start(&spec).unwrap_err();
            let msg = crate::agent::logger::Chain(&err).to_string();
            assert!(msg.contains("bind-mount /etc/passwd/data"), "{msg}");
            assert_eq!(err.start_exit_code(), 126);
        });
    }

    #[test]
    fn exec_enters_the_container_s_root_and_pid_namespace() {
        in_private_mounts(|work| {
            let pod = Pod::new(work);
            let spec = sh("web", "echo inside > /made; exec sleep 30");
            let mut c = pod.start(&spec).unwrap();
            let made = pod.work.join("run/containers/web/rootfs/made");
            let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !made.exists() && std::time::Instant::now() < give_up {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let exec = ExecSpec {
                id: "look".into(),
                container: "web".into(),
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    "cat /made; readlink /proc/1/exe; echo $$".into(),
                ],
                stdin: true,
                ..ExecSpec::default()
            };
            let mut e = Container::exec(&exec, &c).unwrap();
            e.write_stdin(b"").unwrap();
            let (out, err, t) = e.wait_output();
            let out = String::from_utf8_lossy(&out);
            assert_eq!(
                t,
                Termination::Exited(0),
                "{out}{}",
                String::from_utf8_lossy(&err)
            );
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines[..2], ["inside", "/bin/busybox"], "{out}");
            let inner: u32 = lines[2].parse().unwrap();
            assert!(
                inner > 1 && inner != e.pid(),
                "a pid of the container's namespace: {out}"
            );

            let cat = ExecSpec {
                id: "cat".into(),
                container: "web".into(),
                argv: vec!["cat".into()],
                stdin: true,
                ..ExecSpec::default()
            };
            let mut e = Container::exec(&cat, &c).unwrap();
            e.write_stdin(b"hi").unwrap();
            e.write_stdin(b"").unwrap();
            let (out, _, t) = e.wait_output();
            assert_eq!((out.as_slice(), t), (&b"hi"[..], Termination::Exited(0)));

            // SIGTERM to a pid 1 without a handler is dropped; SIGKILL is not.
            c.signal(15).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(100));
            assert!(nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(i32::try_from(c.pid()).unwrap()),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG)
            )
            .is_ok_and(|s| s == nix::sys::wait::WaitStatus::StillAlive));
            c.kill_all();
            let (_, _, t) = c.wait_output();
            assert_eq!(t, Termination::Signaled(9));
            c.finish();
        });
    }
}
