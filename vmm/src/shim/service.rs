//! The task service: containerd's task API v2 on top of [`PodVm`].

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex, Weak};

use containerd_shim::api::{self, Status};
use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{EnumOrUnknown, Message as _, MessageDyn, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::protos::types::mount::Mount;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{DeleteResponse, ExitSignal, Flags, StartOpts, TtrpcContext, TtrpcResult};
use guest_agent::protocol::{
    ContainerStats, Event, ExecSpec, NetworkConfig, Reply, Request, Stream,
};
use sha2::{Digest as _, Sha256};

use super::rootfs;
use super::spec::{guest_hostname, ContainerSpec};
use crate::net::attachment::{resolv_conf_search, resolv_conf_servers};
use crate::net::{cni, Tap};
use crate::pod::pod_vm::{lock, PodVm, VmEvent};
use crate::pod::start::{guest_inputs, state_root, PodDir};
use crate::pod::vm_inputs::MAX_IMAGES_PER_POD;

/// Seeds the erofs UUID of every packed rootfs ("unipod" in hex).
const ROOTFS_UUID_SEED: &str = "756e69706f64";
/// The longest pod directory name (see [`pod_dir_name`]).
const POD_DIR_NAME_MAX: usize = 20;
/// Exit status of a process whose VM went away.
const EXIT_VM_GONE: u32 = 255;
/// Exit status of a created task killed before it started (SIGKILL).
const EXIT_KILLED: u32 = 137;
/// The type of [`Metrics`] in a stats `Any`, as containerd's typeurl names
/// it (the proto's full name, with no `type.googleapis.com/` prefix).
const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// The shim: both the `start`/`delete` commands and the task service.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

/// An event for containerd: its topic and message.
type QueuedEvent = (&'static str, Box<dyn MessageDyn>);

struct Inner {
    namespace: String,
    id: String,
    bundle: PathBuf,
    /// This shim's ttrpc socket (`unix:///run/containerd/s/<hash>`).
    socket: String,
    exit: ExitSignal,
    /// Events for the publisher thread, in the order they must reach
    /// containerd.
    events: Mutex<Option<Sender<QueuedEvent>>>,
    /// The publisher thread, joined at exit so that no event is lost.
    publisher_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    pod: Mutex<PodState>,
    changed: Condvar,
    vm: Mutex<Option<Arc<PodVm>>>,
}

#[derive(Default)]
struct PodState {
    tasks: HashMap<String, Task>,
    /// Agent name -> (task id, exec id).
    by_agent_name: HashMap<String, (String, Option<String>)>,
    next_name: u64,
    /// The VM's image disks: (sha256 of the erofs image, guest device).
    disks: Vec<(String, String)>,
}

struct Task {
    bundle: PathBuf,
    spec: ContainerSpec,
    device: String,
    main: Process,
    execs: HashMap<String, Process>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Created,
    Running,
    /// Running, with its container's cgroup frozen.
    Paused,
    Stopped,
}

struct Process {
    agent_name: String,
    pid: u32,
    state: State,
    /// Whether /tasks/start (or exec-started) is out: /tasks/exit waits for it.
    start_published: bool,
    exit: Option<(u32, Timestamp)>,
    stdin: String,
    stdout_path: String,
    stderr_path: String,
    terminal: bool,
    stdout: Option<Arc<File>>,
    stderr: Option<Arc<File>>,
    /// An exec's process spec, until Start.
    exec: Option<ExecSpec>,
}

impl Process {
    fn new(agent_name: String, stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Self {
        Process {
            agent_name,
            pid: 0,
            state: State::Created,
            start_published: false,
            exit: None,
            stdin: stdin.into(),
            stdout_path: stdout.into(),
            stderr_path: stderr.into(),
            terminal,
            stdout: None,
            stderr: None,
            exec: None,
        }
    }

    /// Opens containerd's output FIFOs; containerd holds their read ends.
    fn open_output(&mut self) -> TtrpcResult<()> {
        let open = |p: &str| -> TtrpcResult<Option<Arc<File>>> {
            if p.is_empty() {
                return Ok(None);
            }
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .map(|f| Some(Arc::new(f)))
                .map_err(|e| {
                    err(
                        Code::INTERNAL,
                        format!("cannot open the output FIFO {p}: {e}"),
                    )
                })
        };
        self.stdout = open(&self.stdout_path)?;
        self.stderr = open(&self.stderr_path)?;
        Ok(())
    }
}

fn err(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

fn not_found(id: &str, exec_id: &str) -> ttrpc::Error {
    if exec_id.is_empty() {
        err(Code::NOT_FOUND, format!("task {id} not found"))
    } else {
        err(
            Code::NOT_FOUND,
            format!("exec {exec_id} of task {id} not found"),
        )
    }
}

fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut t = Timestamp::new();
    t.seconds = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    t.nanos = i32::try_from(d.subsec_nanos()).unwrap_or(0);
    t
}

/// Where the shims of `namespace` keep their pods' directories.
fn shim_root(namespace: &str) -> PathBuf {
    state_root(None).join("shim").join(namespace)
}

/// Where the shim of pod `pod_id` in `namespace` keeps its VM's files.
fn pod_dir_path(namespace: &str, pod_id: &str) -> PathBuf {
    shim_root(namespace).join(pod_dir_name(pod_id))
}

/// A pod's directory name: its id, cut to [`POD_DIR_NAME_MAX`] characters.
/// CRI's ids are 64 random hex digits, which would push the VM's vsock
/// socket path past the 108 bytes a Unix socket address holds; 20 of them
/// are as unique in practice (Docker shows 12).
fn pod_dir_name(pod_id: &str) -> &str {
    pod_id
        .char_indices()
        .nth(POD_DIR_NAME_MAX)
        .map_or(pod_id, |(end, _)| &pod_id[..end])
}

impl Inner {
    /// Queues `event`; callers may hold the pod lock, since the ttrpc call
    /// to containerd happens on the publisher thread.
    fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        if let Some(events) = lock(&self.events).as_ref() {
            let _ = events.send((topic, event));
        }
    }

    fn publish_exit(&self, task_id: &str, exec_id: Option<&str>, p: &Process) {
        let Some((status, at)) = &p.exit else { return };
        self.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: task_id.into(),
                id: exec_id.unwrap_or(task_id).into(),
                pid: p.pid,
                exit_status: *status,
                exited_at: MessageField::some(at.clone()),
                ..Default::default()
            }),
        );
    }

    /// Records an exit; publishes it unless Start has yet to publish the start.
    fn exited(&self, pod: &mut PodState, agent_name: &str, status: u32) {
        let Some((task_id, exec_id)) = pod.by_agent_name.get(agent_name).cloned() else {
            return;
        };
        let Some(task) = pod.tasks.get_mut(&task_id) else {
            return;
        };
        let p = match &exec_id {
            Some(e) => match task.execs.get_mut(e) {
                Some(p) => p,
                None => return,
            },
            None => &mut task.main,
        };
        if p.exit.is_some() {
            return;
        }
        p.exit = Some((status, now()));
        p.state = State::Stopped;
        // EOF for containerd's copiers.
        p.stdout = None;
        p.stderr = None;
        if p.start_published {
            self.publish_exit(&task_id, exec_id.as_deref(), p);
        }
        self.changed.notify_all();
    }

    fn on_vm_event(&self, event: VmEvent) {
        match event {
            VmEvent::Agent(Event::Output {
                name, stream, data, ..
            }) => {
                let out = {
                    let pod = lock(&self.pod);
                    find(&pod, &name).and_then(|p| match stream {
                        Stream::Stdout => p.stdout.clone(),
                        Stream::Stderr => p.stderr.clone().or_else(|| p.stdout.clone()),
                    })
                };
                // Outside the lock: a slow reader must not stall the RPCs.
                if let Some(f) = out {
                    let _ = (&*f).write_all(&data);
                }
            }
            VmEvent::Agent(Event::ContainerExited {
                name, exit_code, ..
            }) => {
                let mut pod = lock(&self.pod);
                self.exited(
                    &mut pod,
                    &name,
                    u32::try_from(exit_code).unwrap_or(EXIT_VM_GONE),
                );
            }
            VmEvent::Agent(Event::Oom { name }) => {
                let pod = lock(&self.pod);
                if let Some((task_id, _)) = pod.by_agent_name.get(&name) {
                    self.publish(
                        topics::TASK_OOM_EVENT_TOPIC,
                        Box::new(TaskOOM {
                            container_id: task_id.clone(),
                            ..Default::default()
                        }),
                    );
                }
            }
            VmEvent::Agent(_) => {}
            VmEvent::Gone => {
                log::warn!("the pod VM is gone; every process exits with {EXIT_VM_GONE}");
                let mut pod = lock(&self.pod);
                let names: Vec<String> = pod.by_agent_name.keys().cloned().collect();
                for name in names {
                    let live = find(&pod, &name).is_some_and(|p| p.state != State::Stopped);
                    if live {
                        self.exited(&mut pod, &name, EXIT_VM_GONE);
                    }
                }
            }
        }
    }

    fn vm(&self) -> TtrpcResult<Arc<PodVm>> {
        lock(&self.vm)
            .clone()
            .ok_or_else(|| err(Code::FAILED_PRECONDITION, "the pod VM is not running"))
    }

    /// Starts the pod VM in `dir` with `image` as its first disk.
    fn start_vm(
        self: &Arc<Self>,
        spec: &ContainerSpec,
        image: &Path,
        dir: PodDir,
    ) -> TtrpcResult<()> {
        let state = state_root(None);
        let mut inputs = guest_inputs(None, None, crate::config::DEFAULT_MEM_MIB)
            .map_err(|e| err(Code::FAILED_PRECONDITION, e.to_string()))?;
        inputs.images = vec![image.to_path_buf()];
        let weak: Weak<Inner> = Arc::downgrade(self);
        let on_event = Box::new(move |ev: VmEvent| {
            if let Some(inner) = weak.upgrade() {
                inner.on_vm_event(ev);
            }
        });
        let hostname = guest_hostname(spec.hostname.as_deref(), &spec.pod_id);
        let net = match &spec.netns {
            Some(netns) => Some(pod_network(spec, netns)?),
            None => None,
        };
        let vm = PodVm::start(dir, &inputs, &state, &hostname, net, on_event)
            .map_err(|e| err(Code::INTERNAL, crate::error_chain::error_chain(&e, ": ")))?;
        log::info!("pod VM started: VMM pid {}", vm.vmm_pid());
        if let Some(netns) = &spec.netns {
            // CRI's PortForward dials localhost in the pod's namespace. A pod
            // runs without it, so a failure is only reported.
            if let Err(e) = crate::pod::port_forward::serve_in_netns(netns, vm.vsock()) {
                log::warn!("{}", crate::error_chain::error_chain(&e, ": "));
            }
        }
        *lock(&self.vm) = Some(vm);
        Ok(())
    }

    /// The disk of the running pod VM that holds this container's rootfs:
    /// one with the same image bytes (a pod's containers often share an
    /// image), else the image hot-attached to the VM's next free slot.
    fn disk_in_running_vm(
        &self,
        vm: &PodVm,
        req: &api::CreateTaskRequest,
        bundle: &Path,
    ) -> TtrpcResult<String> {
        let image = vm.dir().join(format!("{}.erofs", req.id));
        let digest = pack_and_digest(bundle, &req.rootfs, &image)?;
        // Held across the attach, so that two Creates bringing the same new
        // image attach it once; the VMM answers at once.
        let mut pod = lock(&self.pod);
        if let Some((_, device)) = pod.disks.iter().find(|(d, _)| *d == digest) {
            let _ = std::fs::remove_file(&image);
            return Ok(device.clone());
        }
        // The image stays in the pod directory, with the first one, for
        // the VM's life.
        let device = vm.attach_image(&image).map_err(|e| {
            let _ = std::fs::remove_file(&image);
            err(
                Code::INTERNAL,
                format!(
                    "container {}: cannot add its image to the pod VM ({} of at most {MAX_IMAGES_PER_POD} different images in use): {}",
                    req.id,
                    pod.disks.len(),
                    crate::error_chain::error_chain(&e, ": ")
                ),
            )
        })?;
        log::info!("container {}: image attached as {device}", req.id);
        pod.disks.push((digest, device.clone()));
        Ok(device)
    }

    /// Freezes (pause) or thaws (resume) task `id`'s container.
    fn freeze(&self, id: &str, frozen: bool) -> TtrpcResult<()> {
        let (from, to, what) = if frozen {
            (State::Running, State::Paused, "pause")
        } else {
            (State::Paused, State::Running, "resume")
        };
        let name = {
            let mut pod = lock(&self.pod);
            let p = process(&mut pod, id, "")?;
            if p.state != from {
                return Err(err(
                    Code::FAILED_PRECONDITION,
                    format!("cannot {what} task {id}: it is {:?}", p.state),
                ));
            }
            p.agent_name.clone()
        };
        let request = if frozen {
            Request::Pause { name }
        } else {
            Request::Resume { name }
        };
        self.vm()?
            .request(what, request)
            .map_err(|e| err(Code::INTERNAL, crate::error_chain::error_chain(&e, ": ")))?;
        let mut pod = lock(&self.pod);
        let p = process(&mut pod, id, "")?;
        // It may have exited meanwhile.
        if p.state == from {
            p.state = to;
        }
        Ok(())
    }

    fn stop_vm(&self) {
        let vm = lock(&self.vm).take();
        if let Some(vm) = vm {
            vm.stop();
        }
    }
}

/// Joins the pod VM to the network CNI made in `netns`: a tap redirected to
/// and from its interface, whose address the guest takes, with the DNS
/// settings CRI wrote for the pod.
fn pod_network(spec: &ContainerSpec, netns: &Path) -> TtrpcResult<(Tap, NetworkConfig)> {
    let joined = cni::join(netns).map_err(|e| {
        err(
            Code::FAILED_PRECONDITION,
            crate::error_chain::error_chain(&e, ": "),
        )
    })?;
    let mut guest = joined.guest;
    if let Some(text) = &spec.resolv_conf_text {
        guest.dns_servers = resolv_conf_servers(text);
        guest.dns_search = resolv_conf_search(text);
    }
    log::info!(
        "pod network: {} takes {}/{} via {} from {} in {}",
        joined.tap.name(),
        guest.address,
        guest.prefix_len,
        guest.gateway,
        joined.interface,
        netns.display()
    );
    Ok((joined.tap, guest))
}

/// Packs the rootfs into `image` and returns the image's sha256. The UUID
/// seed is fixed so that the same tree packs to the same bytes.
fn pack_and_digest(bundle: &Path, mounts: &[Mount], image: &Path) -> TtrpcResult<String> {
    rootfs::pack(bundle, mounts, image, ROOTFS_UUID_SEED)
        .map_err(|e| err(Code::INTERNAL, crate::error_chain::error_chain(&e, ": ")))?;
    let digest = File::open(image).and_then(|mut f| {
        let mut hasher = Sha256::new();
        std::io::copy(&mut f, &mut hasher)?;
        Ok(hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>())
    });
    digest.map_err(|e| {
        let _ = std::fs::remove_file(image);
        err(
            Code::INTERNAL,
            format!("cannot read {}: {e}", image.display()),
        )
    })
}

fn find<'a>(pod: &'a PodState, agent_name: &str) -> Option<&'a Process> {
    let (task_id, exec_id) = pod.by_agent_name.get(agent_name)?;
    let task = pod.tasks.get(task_id)?;
    match exec_id {
        Some(e) => task.execs.get(e),
        None => Some(&task.main),
    }
}

fn process<'a>(pod: &'a mut PodState, id: &str, exec_id: &str) -> TtrpcResult<&'a mut Process> {
    let task = pod.tasks.get_mut(id).ok_or_else(|| not_found(id, ""))?;
    if exec_id.is_empty() {
        Ok(&mut task.main)
    } else {
        task.execs
            .get_mut(exec_id)
            .ok_or_else(|| not_found(id, exec_id))
    }
}

fn status(state: State) -> EnumOrUnknown<Status> {
    EnumOrUnknown::new(match state {
        State::Created => Status::CREATED,
        State::Running => Status::RUNNING,
        State::Paused => Status::PAUSED,
        State::Stopped => Status::STOPPED,
    })
}

/// containerd's cgroup v2 metrics for a container's stats; `max` limits
/// (`None`) are `u64::MAX`, as runc reports them.
fn metrics(s: &ContainerStats) -> Metrics {
    let limit = |l: Option<u64>| l.unwrap_or(u64::MAX);
    Metrics {
        pids: MessageField::some(PidsStat {
            current: s.pids.unwrap_or(0),
            limit: limit(s.pids_limit),
            ..Default::default()
        }),
        cpu: MessageField::some(CPUStat {
            usage_usec: s.cpu_usage_usec,
            user_usec: s.cpu_user_usec,
            system_usec: s.cpu_system_usec,
            ..Default::default()
        }),
        memory: MessageField::some(MemoryStat {
            usage: s.memory_bytes.unwrap_or(0),
            usage_limit: limit(s.memory_limit_bytes),
            anon: s.memory_anon_bytes.unwrap_or(0),
            file: s.memory_file_bytes.unwrap_or(0),
            ..Default::default()
        }),
        memory_events: MessageField::some(MemoryEvents {
            oom_kill: s.oom_kills.unwrap_or(0),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Feeds containerd's stdin FIFO of a process to the agent; EOF closes it.
fn pump_stdin(vm: Arc<PodVm>, path: String, agent_name: String) {
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let Ok(mut f) = File::open(&path) else { return };
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match f.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => 0,
                };
                let data = buf[..n].to_vec();
                let request = Request::Stdin {
                    name: agent_name.clone(),
                    data,
                };
                if vm.request("stdin", request).is_err() || n == 0 {
                    return;
                }
            }
        });
}

impl containerd_shim::Shim for Service {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut containerd_shim::Config) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        Service {
            inner: Arc::new(Inner {
                namespace: args.namespace.clone(),
                id: args.id.clone(),
                socket: args.socket.clone(),
                bundle,
                exit: ExitSignal::default(),
                events: Mutex::new(None),
                publisher_thread: Mutex::new(None),
                pod: Mutex::default(),
                changed: Condvar::new(),
                vm: Mutex::default(),
            }),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        let spec = ContainerSpec::load(&self.inner.bundle, &opts.id)
            .map_err(|e| containerd_shim::Error::InvalidArgument(e.to_string()))?;
        let (_pid, address) = containerd_shim::spawn(opts, &spec.pod_id, Vec::new())?;
        Ok(address)
    }

    /// containerd's cleanup after a shim died: nothing of the container may
    /// stay (its mount, its pod's VM when it was the sandbox).
    fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        rootfs::unmount(&self.inner.bundle.join("rootfs"));
        if let Ok(spec) = ContainerSpec::load(&self.inner.bundle, &self.inner.id) {
            if spec.is_sandbox {
                let dir = pod_dir_path(&self.inner.namespace, &spec.pod_id);
                kill_leftover_vmm(&dir);
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        let mut response = DeleteResponse::new();
        response.exit_status = EXIT_KILLED;
        response.exited_at = MessageField::some(now());
        Ok(response)
    }

    fn wait(&mut self) {
        self.inner.exit.wait();
        self.inner.stop_vm();
        // Closing the queue ends the publisher once it has sent the rest.
        lock(&self.inner.events).take();
        let publisher = lock(&self.inner.publisher_thread).take();
        if let Some(handle) = publisher {
            let _ = handle.join();
        }
        // The crate removes the socket only when the bundle still has its
        // `address` file, which containerd may have removed by now.
        if let Some(path) = self.inner.socket.strip_prefix("unix://") {
            let _ = std::fs::remove_file(path);
        }
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let (tx, rx) = mpsc::channel::<QueuedEvent>();
        let namespace = self.inner.namespace.clone();
        let spawned = std::thread::Builder::new()
            .name("publisher".into())
            .spawn(move || {
                for (topic, event) in rx {
                    if let Err(e) = publisher.publish(Context::default(), topic, &namespace, event)
                    {
                        log::warn!("cannot publish {topic}: {e}");
                    }
                }
            });
        match spawned {
            Ok(handle) => {
                *lock(&self.inner.events) = Some(tx);
                *lock(&self.inner.publisher_thread) = Some(handle);
            }
            Err(e) => log::error!("cannot start the event publisher thread: {e}"),
        }
        self.clone()
    }
}

/// Kills the VMM whose pid `dir/vmm.pid` records, if that pid is still a
/// `unipod` process (not a reused pid).
fn kill_leftover_vmm(dir: &Path) {
    let Some(pid) = std::fs::read_to_string(dir.join("vmm.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    let is_vmm = std::fs::read_link(format!("/proc/{pid}/exe"))
        .is_ok_and(|exe| exe.file_name().is_some_and(|n| n == "unipod"));
    if is_vmm {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

impl containerd_shim::Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let inner = &self.inner;
        let bundle = PathBuf::from(&req.bundle);
        let spec = ContainerSpec::load(&bundle, &req.id).map_err(|e| {
            err(
                Code::INVALID_ARGUMENT,
                crate::error_chain::error_chain(&e, ": "),
            )
        })?;
        let terminal = req.terminal || spec.terminal;
        let agent_name = {
            let mut pod = lock(&inner.pod);
            pod.next_name += 1;
            format!("c{}", pod.next_name)
        };
        let mut main = Process::new(
            agent_name.clone(),
            &req.stdin,
            &req.stdout,
            &req.stderr,
            terminal,
        );
        let running_vm = lock(&inner.vm).clone();
        let device = match running_vm {
            Some(vm) => inner.disk_in_running_vm(&vm, &req, &bundle)?,
            None => {
                // A leftover directory of a killed shim is wiped by create.
                let dir = PodDir::create(&shim_root(&inner.namespace), pod_dir_name(&spec.pod_id))
                    .map_err(|e| err(Code::INTERNAL, crate::error_chain::error_chain(&e, ": ")))?;
                let image = dir.path.join(format!("{}.erofs", req.id));
                let digest = pack_and_digest(&bundle, &req.rootfs, &image)?;
                main.open_output()?;
                // On failure `dir`, with the image, is removed.
                inner.start_vm(&spec, &image, dir)?;
                let device = "/dev/vda".to_string();
                lock(&inner.pod).disks.push((digest, device.clone()));
                device
            }
        };
        if main.stdout.is_none() && main.stderr.is_none() {
            main.open_output()?;
        }
        {
            let mut pod = lock(&inner.pod);
            pod.by_agent_name
                .insert(agent_name.clone(), (req.id.clone(), None));
            pod.tasks.insert(
                req.id.clone(),
                Task {
                    bundle: bundle.clone(),
                    spec,
                    device,
                    main,
                    execs: HashMap::new(),
                },
            );
        }
        let pid = std::process::id();
        inner.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                checkpoint: req.checkpoint.clone(),
                pid,
                ..Default::default()
            }),
        );
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let inner = &self.inner;
        let vm = inner.vm()?;
        let request = {
            let mut pod = lock(&inner.pod);
            let task = pod
                .tasks
                .get(&req.id)
                .ok_or_else(|| not_found(&req.id, ""))?;
            let mut run =
                task.spec
                    .run_spec(&task.main.agent_name, &task.device, task.main.terminal);
            run.stdin = !task.main.stdin.is_empty();
            let p = process(&mut pod, &req.id, &req.exec_id)?;
            if p.state != State::Created {
                return Err(err(
                    Code::FAILED_PRECONDITION,
                    format!(
                        "{} {} was started already",
                        if req.exec_id.is_empty() {
                            "task"
                        } else {
                            "exec"
                        },
                        if req.exec_id.is_empty() {
                            &req.id
                        } else {
                            &req.exec_id
                        }
                    ),
                ));
            }
            match p.exec.take() {
                Some(exec) => Request::Exec(exec),
                None => Request::Run(run),
            }
        };
        let is_exec = !req.exec_id.is_empty();
        let reply = vm.request(if is_exec { "exec" } else { "run" }, request);
        let mut pod = lock(&inner.pod);
        let p = process(&mut pod, &req.id, &req.exec_id)?;
        let pid = match reply {
            Ok(Reply::Started { pid }) => pid,
            Ok(other) => {
                return Err(err(
                    Code::INTERNAL,
                    format!("unexpected agent reply {other:?}"),
                ))
            }
            Err(e) => {
                p.state = State::Stopped;
                p.stdout = None;
                p.stderr = None;
                return Err(err(
                    Code::INTERNAL,
                    crate::error_chain::error_chain(&e, ": "),
                ));
            }
        };
        p.pid = pid;
        if p.exit.is_none() {
            p.state = State::Running;
        }
        p.start_published = true;
        let stdin = (!p.stdin.is_empty()).then(|| (p.stdin.clone(), p.agent_name.clone()));
        if is_exec {
            inner.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid,
                    ..Default::default()
                }),
            );
        } else {
            inner.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: req.id.clone(),
                    pid,
                    ..Default::default()
                }),
            );
        }
        // An exit that came in before the start event went out.
        let exec_id = is_exec.then_some(req.exec_id.as_str());
        let p = process(&mut pod, &req.id, &req.exec_id)?;
        inner.publish_exit(&req.id, exec_id, p);
        drop(pod);
        if let Some((path, name)) = stdin {
            pump_stdin(vm, path, name);
        }
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let mut pod = lock(&self.inner.pod);
        let bundle = pod
            .tasks
            .get(&req.id)
            .map(|t| t.bundle.display().to_string())
            .unwrap_or_default();
        let p = process(&mut pod, &req.id, &req.exec_id)?;
        let mut r = api::StateResponse {
            id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            bundle,
            pid: p.pid,
            status: status(p.state),
            stdin: p.stdin.clone(),
            stdout: p.stdout_path.clone(),
            stderr: p.stderr_path.clone(),
            terminal: p.terminal,
            ..Default::default()
        };
        if let Some((code, at)) = &p.exit {
            r.exit_status = *code;
            r.exited_at = MessageField::some(at.clone());
        }
        Ok(r)
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let inner = &self.inner;
        let name = {
            let mut pod = lock(&inner.pod);
            let p = process(&mut pod, &req.id, &req.exec_id)?;
            match p.state {
                State::Stopped => {
                    return Err(err(Code::NOT_FOUND, "process already finished"));
                }
                State::Created => {
                    // Never started: nothing runs in the guest to signal.
                    let name = p.agent_name.clone();
                    p.start_published = true;
                    inner.exited(&mut pod, &name, EXIT_KILLED);
                    return Ok(api::Empty::default());
                }
                State::Running | State::Paused => p.agent_name.clone(),
            }
        };
        let signal = i32::try_from(req.signal).map_err(|_| {
            err(
                Code::INVALID_ARGUMENT,
                format!("signal {} is out of range", req.signal),
            )
        })?;
        inner
            .vm()?
            .request("signal", Request::Signal { name, signal })
            .map_err(|e| err(Code::INTERNAL, crate::error_chain::error_chain(&e, ": ")))?;
        Ok(api::Empty::default())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let inner = &self.inner;
        let mut pod = lock(&inner.pod);
        loop {
            let p = process(&mut pod, &req.id, &req.exec_id)?;
            if let Some((code, at)) = &p.exit {
                return Ok(api::WaitResponse {
                    exit_status: *code,
                    exited_at: MessageField::some(at.clone()),
                    ..Default::default()
                });
            }
            pod = inner
                .changed
                .wait(pod)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let inner = &self.inner;
        let mut pod = lock(&inner.pod);
        let p = process(&mut pod, &req.id, &req.exec_id)?;
        if matches!(p.state, State::Running | State::Paused) {
            return Err(err(
                Code::FAILED_PRECONDITION,
                format!("{} is still running; kill it first", p.agent_name),
            ));
        }
        let (code, at) = p.exit.clone().unwrap_or((0, now()));
        let pid = p.pid;
        let agent_name = p.agent_name.clone();
        pod.by_agent_name.remove(&agent_name);
        let last = if req.exec_id.is_empty() {
            let task = pod.tasks.remove(&req.id).expect("found by process() above");
            for exec in task.execs.values() {
                pod.by_agent_name.remove(&exec.agent_name);
            }
            rootfs::unmount(&task.bundle.join("rootfs"));
            inner.publish(
                topics::TASK_DELETE_EVENT_TOPIC,
                Box::new(TaskDelete {
                    container_id: req.id.clone(),
                    pid,
                    exit_status: code,
                    exited_at: MessageField::some(at.clone()),
                    ..Default::default()
                }),
            );
            pod.tasks.is_empty()
        } else {
            if let Some(task) = pod.tasks.get_mut(&req.id) {
                task.execs.remove(&req.exec_id);
            }
            false
        };
        drop(pod);
        if last {
            inner.stop_vm();
        }
        Ok(api::DeleteResponse {
            pid,
            exit_status: code,
            exited_at: MessageField::some(at),
            ..Default::default()
        })
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let inner = &self.inner;
        let process_json: serde_json::Value =
            serde_json::from_slice(&req.spec.value).map_err(|e| {
                err(
                    Code::INVALID_ARGUMENT,
                    format!("exec spec: not a JSON OCI process: {e}"),
                )
            })?;
        let argv: Vec<String> = process_json["args"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if argv.is_empty() {
            return Err(err(Code::INVALID_ARGUMENT, "exec spec: args: empty"));
        }
        let env: Vec<String> = process_json["env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut pod = lock(&inner.pod);
        let task = pod
            .tasks
            .get(&req.id)
            .ok_or_else(|| not_found(&req.id, ""))?;
        match task.main.state {
            State::Running => {}
            State::Paused => {
                return Err(err(
                    Code::FAILED_PRECONDITION,
                    format!("task {} is paused; resume it first", req.id),
                ))
            }
            _ => {
                return Err(err(
                    Code::FAILED_PRECONDITION,
                    format!("task {} is not running", req.id),
                ))
            }
        }
        if task.execs.contains_key(&req.exec_id) {
            return Err(err(
                Code::ALREADY_EXISTS,
                format!("exec {} exists", req.exec_id),
            ));
        }
        let container = task.main.agent_name.clone();
        pod.next_name += 1;
        let agent_name = format!("x{}", pod.next_name);
        let mut p = Process::new(
            agent_name.clone(),
            &req.stdin,
            &req.stdout,
            &req.stderr,
            req.terminal,
        );
        p.exec = Some(ExecSpec {
            id: agent_name.clone(),
            container,
            argv,
            env,
            stdin: !req.stdin.is_empty(),
            tty: req.terminal,
        });
        // Opening blocks until containerd's reader is there; it already is.
        p.open_output()?;
        pod.by_agent_name
            .insert(agent_name, (req.id.clone(), Some(req.exec_id.clone())));
        pod.tasks
            .get_mut(&req.id)
            .expect("looked up above under the same lock")
            .execs
            .insert(req.exec_id.clone(), p);
        inner.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::default())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let name = {
            let mut pod = lock(&self.inner.pod);
            let p = process(&mut pod, &req.id, &req.exec_id)?;
            if p.exec.is_some() || p.stdin.is_empty() || p.state == State::Stopped {
                return Ok(api::Empty::default());
            }
            p.agent_name.clone()
        };
        let request = Request::Stdin {
            name,
            data: Vec::new(),
        };
        // The stdin pump may have closed it already.
        let _ = self.inner.vm()?.request("stdin", request);
        Ok(api::Empty::default())
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let pod = lock(&self.inner.pod);
        let task = pod
            .tasks
            .get(&req.id)
            .ok_or_else(|| not_found(&req.id, ""))?;
        let processes = std::iter::once(&task.main)
            .chain(task.execs.values())
            .filter(|p| p.state == State::Running)
            .map(|p| containerd_shim::protos::types::task::ProcessInfo {
                pid: p.pid,
                ..Default::default()
            })
            .collect();
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.inner.freeze(&req.id, true)?;
        self.inner.publish(
            topics::TASK_PAUSED_EVENT_TOPIC,
            Box::new(TaskPaused {
                container_id: req.id,
                ..Default::default()
            }),
        );
        Ok(api::Empty::default())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        self.inner.freeze(&req.id, false)?;
        self.inner.publish(
            topics::TASK_RESUMED_EVENT_TOPIC,
            Box::new(TaskResumed {
                container_id: req.id,
                ..Default::default()
            }),
        );
        Ok(api::Empty::default())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let name = {
            let mut pod = lock(&self.inner.pod);
            let p = process(&mut pod, &req.id, &req.exec_id)?;
            if !p.terminal {
                return Err(err(
                    Code::FAILED_PRECONDITION,
                    format!("{} has no tty to resize", p.agent_name),
                ));
            }
            p.agent_name.clone()
        };
        let size = |v: u32, what: &str| {
            u16::try_from(v).map_err(|_| {
                err(
                    Code::INVALID_ARGUMENT,
                    format!("{what} {v} is too large (65535 at most)"),
                )
            })
        };
        let request = Request::ResizePty {
            name,
            rows: size(req.height, "height")?,
            cols: size(req.width, "width")?,
        };
        self.inner
            .vm()?
            .request("resize-pty", request)
            .map_err(|e| err(Code::INTERNAL, crate::error_chain::error_chain(&e, ": ")))?;
        Ok(api::Empty::default())
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let name = {
            let mut pod = lock(&self.inner.pod);
            process(&mut pod, &req.id, "")?.agent_name.clone()
        };
        let reply = self
            .inner
            .vm()?
            .request("stats", Request::Stats { name })
            .map_err(|e| err(Code::INTERNAL, crate::error_chain::error_chain(&e, ": ")))?;
        let Reply::Stats(stats) = reply else {
            return Err(err(
                Code::INTERNAL,
                format!("unexpected agent reply {reply:?}"),
            ));
        };
        let value = metrics(&stats)
            .write_to_bytes()
            .map_err(|e| err(Code::INTERNAL, format!("cannot encode the metrics: {e}")))?;
        Ok(api::StatsResponse {
            stats: MessageField::some(Any {
                type_url: METRICS_TYPE_URL.into(),
                value,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let pod = lock(&self.inner.pod);
        let task_pid = pod.tasks.get(&req.id).map_or(0, |t| t.main.pid);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if !lock(&self.inner.pod).tasks.is_empty() {
            return Ok(api::Empty::default());
        }
        self.inner.stop_vm();
        self.inner.exit.signal();
        Ok(api::Empty::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_pod_ids_are_cut_for_the_directory_name() {
        let cri_id = "c324c6fe21bfa1fabea88883b04efcd868670d1ac43dd63de1ae92da4c9273e6";
        assert_eq!(pod_dir_name(cri_id), "c324c6fe21bfa1fabea8");
        assert_eq!(pod_dir_name("shim-hi"), "shim-hi");
        assert_eq!(
            pod_dir_name("ééééééééééééééééééééé"),
            "éééééééééééééééééééé"
        );
    }
}
