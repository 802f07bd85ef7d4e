//! A pod VM for the containerd shim: started (restored from the warm-start
//! snapshot) by [`super::start`] as every pod's, then driven over the agent
//! link by many task-service threads at once.
//!
//! # Design
//! One dispatcher thread reads the agent link. Replies go to the thread
//! that sent the request (matched by id); events go, in the agent's order,
//! to the shim's handler, so a container's last output is written before its
//! exit is reported. When the link ends (the guest powered off, or the VMM
//! was killed) the handler gets [`VmEvent::Gone`] and every pending request
//! fails.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Child;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guest_agent::protocol::{AgentMessage, Event, NetworkConfig, Reply, Request};

use crate::net::Tap;
use crate::pod::agent_client::AgentLink;
use crate::pod::start::{pod_config, start_vm, Pod, PodDir};
use crate::pod::vm_inputs::{GuestInputs, NetBackend};
use crate::pod::vmm_api;
use crate::pod::vmm_process;

/// How long a restored (or, the first time, cold-booted) guest has to answer.
const AGENT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a request may wait for its reply. Generous: a Run (mounting the
/// image, starting the process) took over 60 s here with three pod VMs on
/// two loaded cores, the guest's ring 0 being emulated.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Heartbeats are not watched here (the link's end is); a slow period keeps
/// the guest's work low.
const HEARTBEAT_MS: u64 = guest_agent::protocol::DEFAULT_HEARTBEAT_MS;
/// How long the guest has to stop its containers and power off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// Errors of the pod VM.
#[derive(Debug, thiserror::Error)]
pub enum PodVmError {
    /// The VM did not start or its agent did not answer.
    #[error("the pod VM did not start: {0} (see {1}/console.log and vmm.log)")]
    Start(String, String),
    /// The agent refused a request.
    #[error("the guest agent refused {what}: {reason}")]
    Refused {
        /// The request.
        what: &'static str,
        /// The agent's message.
        reason: String,
    },
    /// The link is gone: the VM stopped.
    #[error("the guest agent did not answer {0}: the pod VM has stopped (see the shim's log in containerd's)")]
    NoAnswer(&'static str),
    /// No reply within the request timeout (300 s).
    #[error("the guest agent did not answer {0} within {secs} s; the guest hangs or the host is overloaded", secs = REQUEST_TIMEOUT.as_secs())]
    Timeout(&'static str),
    /// Hot-attaching an image failed.
    #[error(transparent)]
    Attach(#[from] crate::pod::vmm_api::VmmApiError),
    /// Local I/O failed.
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
}

/// What the dispatcher hands to the shim.
#[derive(Debug)]
pub enum VmEvent {
    /// An agent event.
    Agent(Event),
    /// The agent link ended: the VM is gone.
    Gone,
}

type Pending = Arc<Mutex<HashMap<u64, Sender<Result<Reply, String>>>>>;

/// A running pod VM.
pub struct PodVm {
    dir: PodDir,
    vmm: Mutex<Child>,
    link: Mutex<AgentLink>,
    pending: Pending,
    /// Keeps the VMM's parent thread alive; dropped after `Drop` stopped the VMM.
    _vmm_parent: Sender<()>,
}

impl PodVm {
    /// Starts the VM for `inputs` in `dir`, on the pod network `net` (none:
    /// no network), configures it as `hostname`, and starts the dispatcher
    /// that feeds `on_event`.
    pub(crate) fn start(
        dir: PodDir,
        inputs: &GuestInputs,
        state: &Path,
        hostname: &str,
        net: Option<(Tap, NetworkConfig)>,
        on_event: Box<dyn Fn(VmEvent) + Send>,
    ) -> Result<Arc<PodVm>, PodVmError> {
        // The VMM child gets SIGKILL when the thread that forked it ends
        // (PR_SET_PDEATHSIG), and ttrpc's request threads come and go: so
        // a thread of our own forks it and lives as long as this PodVm.
        let (result_tx, result_rx) = mpsc::channel();
        let (hold_tx, hold_rx) = mpsc::channel::<()>();
        let inputs = inputs.clone();
        let state = state.to_path_buf();
        let name = hostname.to_string();
        let (tap, network) = net.unzip();
        let mac = network.as_ref().map(|n| n.mac);
        std::thread::Builder::new()
            .name("vmm-parent".into())
            .spawn(move || {
                let pod = Pod { name };
                let deadline = Instant::now() + AGENT_TIMEOUT;
                let backend = match (&tap, mac) {
                    (Some(tap), Some(mac)) => NetBackend::Tap {
                        fd: tap.as_fd(),
                        mac,
                    },
                    _ => NetBackend::Detached,
                };
                let started = start_vm(&pod, &dir, &inputs, &state, backend, false, deadline);
                // The VMM has its own copy; the tap lives as long as it does.
                drop(tap);
                let _ = result_tx.send((dir, started));
                // Returns when the PodVm (holding the sender) is dropped.
                let _ = hold_rx.recv();
            })
            .map_err(|e| PodVmError::Io("cannot start the VMM's parent thread".into(), e))?;
        let (dir, started) = result_rx
            .recv()
            .map_err(|_| PodVmError::Start("the VMM's parent thread died".into(), String::new()))?;
        let (vmm, link) = started.map_err(|f| {
            // The pod dir goes with the failed Create: keep the logs' tails.
            log_tails(&dir.path);
            PodVmError::Start(f.reason, dir.path.display().to_string())
        })?;
        let rx = match link.subscribe() {
            Ok(rx) => rx,
            Err(e) => {
                let mut vmm = vmm;
                vmm_process::stop(&mut vmm);
                return Err(PodVmError::Start(
                    e.to_string(),
                    dir.path.display().to_string(),
                ));
            }
        };
        let vm = Arc::new(PodVm {
            dir,
            vmm: Mutex::new(vmm),
            link: Mutex::new(link),
            pending: Arc::default(),
            _vmm_parent: hold_tx,
        });
        let pending = vm.pending.clone();
        let dir_path = vm.dir.path.clone();
        std::thread::Builder::new()
            .name("agent-dispatch".into())
            .spawn(move || {
                for msg in rx {
                    match msg {
                        Ok(AgentMessage::Reply { id, result }) => {
                            if let Some(tx) = lock(&pending).remove(&id) {
                                let _ = tx.send(result);
                            }
                        }
                        Ok(AgentMessage::Event(Event::Heartbeat { .. })) => {}
                        Ok(AgentMessage::Event(event)) => on_event(VmEvent::Agent(event)),
                        Err(e) => {
                            log::info!(
                                "agent link ended: {}",
                                crate::error_chain::error_chain(&e, ": ")
                            );
                            break;
                        }
                    }
                }
                // Dropping the senders fails every waiting request.
                lock(&pending).clear();
                log_tails(&dir_path);
                on_event(VmEvent::Gone);
            })
            .map_err(|e| PodVmError::Io("cannot start the agent dispatcher".into(), e))?;
        let config = pod_config(hostname, HEARTBEAT_MS, network)
            .map_err(|e| PodVmError::Io("cannot read /dev/urandom".into(), e))?;
        if let Err(e) = vm.request("configure", Request::Configure(config)) {
            vm.stop();
            return Err(e);
        }
        Ok(vm)
    }

    /// Sends `request` and waits for its reply.
    pub fn request(&self, what: &'static str, request: Request) -> Result<Reply, PodVmError> {
        let (tx, rx) = mpsc::channel();
        {
            // Holding `pending` across the send: the dispatcher cannot see
            // the reply before its entry exists.
            let mut pending = lock(&self.pending);
            let id = lock(&self.link)
                .send(request)
                .map_err(|_| PodVmError::NoAnswer(what))?;
            pending.insert(id, tx);
        }
        match rx.recv_timeout(REQUEST_TIMEOUT) {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(reason)) => Err(PodVmError::Refused { what, reason }),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(PodVmError::Timeout(what)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(PodVmError::NoAnswer(what)),
        }
    }

    /// The VMM's process id.
    pub fn vmm_pid(&self) -> u32 {
        lock(&self.vmm).id()
    }

    /// Hot-attaches `image` to the VM's next empty disk slot; returns the
    /// guest's device for it. The guest sees its size a little later (the
    /// agent waits for it before mounting).
    pub fn attach_image(&self, image: &Path) -> Result<String, PodVmError> {
        let index = vmm_api::attach_disk(&self.dir.api_sock(), image)?;
        Ok(crate::pod::spec::device_name(index))
    }

    /// The pod's directory (console and VMM logs).
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// The VMM's hybrid-vsock socket, for connections into the guest.
    pub fn vsock(&self) -> std::path::PathBuf {
        self.dir.vsock()
    }

    /// Asks the guest to stop its containers and power off, then makes sure
    /// the VMM is gone and reaped.
    pub fn stop(&self) {
        let running = matches!(lock(&self.vmm).try_wait(), Ok(None));
        if running && self.request("shutdown", Request::Shutdown).is_ok() {
            let _ = vmm_process::wait_for_exit(&mut lock(&self.vmm), SHUTDOWN_GRACE);
        }
        vmm_process::stop(&mut lock(&self.vmm));
    }
}

impl Drop for PodVm {
    fn drop(&mut self) {
        vmm_process::stop(&mut lock(&self.vmm));
    }
}

/// Logs the last lines of the pod VM's console and VMM logs in `dir`.
fn log_tails(dir: &Path) {
    for file in ["console.log", "vmm.log"] {
        for line in vmm_process::log_tail(&dir.join(file), 10) {
            log::info!("{file}: {line}");
        }
    }
}

/// Locks `m`, ignoring poisoning: a panicking holder aborts the process
/// (`panic = "abort"`), so a poisoned lock is never observed in release.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
