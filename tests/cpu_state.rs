//! End-to-end test of user register state in the guest: no process may see
//! its vector registers changed by another (docs/NESTED-KVM.md, "Vector
//! registers"). On nested PVM hosts guest user mode runs on the real CPU,
//! and a guest kernel that saves only FXSAVE state must keep user mode off
//! AVX; everywhere else the kernel saves the state. Either way a program
//! that uses YMM/ZMM registers must keep them, or fault loudly (SIGILL).
//!
//! The busybox test image carries `vecstress` (guest-agent/examples/
//! vecstress.rs): `probe` reports what a process is told and allowed,
//! `regs` holds a per-process pattern in every vector register across
//! blocking syscalls, `signals` across a signal whose handler overwrites
//! them (the kernel must restore them from the signal frame), `memchr`
//! checks library code that picks AVX2 at run time.
//!
//! The pod has two vCPUs (its containers' CPU limits, one core each), so
//! the loops run in parallel and tasks move between vCPUs: the VMM's
//! extended-state save (vmm/src/arch/x86_64/xstate.rs, the kernel's
//! `vmm_xstate`) is served by both vCPU threads, and a task's state saved
//! on one vCPU must come back on the other. Each container reports the
//! CPUs it sees, which checks that both started. This is also the suite's
//! test of SMP start-up: the pod's warm-start snapshot is made by a
//! template VM that cold-boots with two vCPUs (the first run, and after the
//! kernel or initramfs changes), and restored.

mod common;

use std::time::{Duration, Instant};

use common::pod::{cmd, import_busybox, manifest, remove, run_pod, status, text, unipod};
use common::{shared_state_dir, skip_without_kvm};

/// Several copies at once in each container, so the guest switches
/// between them with their registers loaded.
const SCRIPT: &str = r#"echo "cpus $(grep -c ^processor /proc/cpuinfo)"
vecstress probe
pids=""
for i in 1 2 3; do vecstress regs 3000 & pids="$pids $!"; done
vecstress signals 500 & pids="$pids $!"
vecstress memchr 1500 & pids="$pids $!"
for p in $pids; do wait $p; echo "vecstress exit $?"; done
"#;

/// vCPUs of the pod's VM: each container asks for one core (a request,
/// not a limit, so no CFS quota throttles the loops).
const VCPUS: usize = 2;

/// Register loops (`regs` and `signals`) per container.
const REGISTER_LOOPS: usize = 4;

/// How long the pod may take: six register loops of 3,000 syscalls each,
/// two of 500 signals and two library loops, on a guest whose kernel may
/// be emulated.
const POD_BUDGET: Duration = Duration::from_secs(900);

/// SIGILL, as the shell reports a child it killed.
const EXIT_SIGILL: i32 = 128 + 4;

#[test]
fn no_process_sees_its_vector_registers_changed_by_another() {
    if skip_without_kvm("no_process_sees_its_vector_registers_changed_by_another") {
        return;
    }
    let state = shared_state_dir();
    import_busybox(&state);
    let pod = "vecstress";
    remove(&state, pod);
    let script = SCRIPT.replace('\n', "\n        ");
    // The same container twice, so two sets of loops run at once.
    let containers: String = ["a", "b"]
        .iter()
        .map(|name| {
            format!(
                r#"    - name: {name}
      image: busybox:latest
      resources:
        requests:
          memory: "64Mi"
          cpu: "1"
        limits:
          memory: "96Mi"
      command: ["sh", "-c"]
      args:
      - |
        {script}
"#
            )
        })
        .collect();
    let path = manifest(
        pod,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\nspec:\n  \
             restartPolicy: Never\n  containers:\n{containers}"
        ),
    );
    let out = run_pod(&state, &path, &["--detach"])
        .output()
        .expect("runs");
    assert!(out.status.success(), "run --detach: {:?}", text(&out));

    // The agent's own work beside the loops: execs into both containers.
    let deadline = Instant::now() + POD_BUDGET;
    let mut execs = 0;
    loop {
        let phase = status(&state, pod)["status"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if phase == "Succeeded" || phase == "Failed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pod {pod} still {phase} after {POD_BUDGET:?}"
        );
        if phase == "Running" {
            let container = if execs % 2 == 0 { "a" } else { "b" };
            let exec = cmd(
                &state,
                "exec",
                &[pod, "-c", container, "--", "echo", "alive"],
            )
            .output()
            .expect("exec runs");
            let (stdout, _) = text(&exec);
            // The container may end between the phase read and the exec.
            if exec.status.success() {
                assert_eq!(stdout, "alive\n", "exec output intact");
                execs += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    let mut logs = String::new();
    let mut cpus = Vec::new();
    for container in ["a", "b"] {
        let (stdout, stderr) = text(&unipod(&state, "logs", &[pod, "-c", container]));
        let seen: Vec<String> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("cpus "))
            .map(str::to_owned)
            .collect();
        cpus.push((container, seen));
        logs.push_str(&stdout);
        logs.push_str(&stderr);
    }
    eprintln!("--- logs ({execs} execs beside the loops) ---\n{logs}");
    remove(&state, pod);
    for (container, seen) in cpus {
        assert_eq!(
            seen,
            [VCPUS.to_string()],
            "container {container} sees the pod's {VCPUS} vCPUs (a host with fewer \
             cores gives fewer: {:?})",
            std::thread::available_parallelism()
        );
    }
    check_outcome(&logs);
}

/// The verdict on both containers' logs, whichever way the guest keeps
/// register state safe.
fn check_outcome(logs: &str) {
    let bad: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("CORRUPTED") || l.contains("WRONG"))
        .collect();
    assert!(
        bad.is_empty(),
        "vector registers were silently corrupted:\n{}",
        bad.join("\n")
    );
    let probes: Vec<&str> = logs
        .lines()
        .filter(|l| l.starts_with("vecstress probe:"))
        .collect();
    assert_eq!(probes.len(), 2, "one probe per container");
    let field = |name: &str| {
        let key = format!(" {name}=");
        let at = probes[0].find(&key).map(|i| i + key.len());
        at.map(|i| probes[0][i..].split_whitespace().next().unwrap_or_default())
            .unwrap_or_else(|| panic!("{name} missing from {}", probes[0]))
            .to_string()
    };
    let avx_faults = field("exec.avx") == "sigill";
    let avx_offered = field("detected.avx2") == "1";
    assert!(
        !(avx_faults && avx_offered),
        "std_detect offers AVX2 although AVX instructions fault: {}",
        probes[0]
    );
    let exits: Vec<i32> = logs
        .lines()
        .filter_map(|l| l.strip_prefix("vecstress exit ")?.trim().parse().ok())
        .collect();
    assert_eq!(
        exits.len(),
        2 * (REGISTER_LOOPS + 1),
        "every copy reported its exit"
    );
    let regs_ok =
        logs.matches("vecstress regs: ok").count() + logs.matches("vecstress signals: ok").count();
    let memchr_ok = logs.matches("vecstress memchr: ok").count();
    assert_eq!(memchr_ok, 2, "library code got every answer right");
    if avx_faults {
        // Kept off AVX: the register loops must fail loudly, not run.
        assert_eq!(regs_ok, 0, "AVX faults in the probe but ran in a loop");
        assert_eq!(
            exits.iter().filter(|&&e| e == EXIT_SIGILL).count(),
            2 * REGISTER_LOOPS,
            "each register loop ends with SIGILL: {exits:?}"
        );
    } else {
        // AVX runs: the kernel must keep every process's registers.
        assert_eq!(
            regs_ok,
            2 * REGISTER_LOOPS,
            "each register loop kept its registers"
        );
        assert!(exits.iter().all(|&e| e == 0), "{exits:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::check_outcome;

    const PROBE_KEPT_OFF: &str = "vecstress probe: cpuid.osxsave=1 cpuid.avx=1 cpuid.avx2=1 cpuid.avx512f=1 xcr0=0x3 detected.avx2=0 detected.avx512f=0 exec.avx=sigill exec.avx512=sigill";
    const PROBE_SAVED: &str = "vecstress probe: cpuid.osxsave=1 cpuid.avx=1 cpuid.avx2=1 cpuid.avx512f=0 xcr0=0x7 detected.avx2=1 detected.avx512f=0 exec.avx=ok exec.avx512=absent";

    /// Two containers' logs: three `regs` lines and a `signals` line
    /// (`regs` with the mode's name changed), each loop exiting with
    /// `regs_exit`.
    fn logs(probe: &str, regs: &str, regs_exit: i32) -> String {
        let signals = regs.replace("vecstress regs:", "vecstress signals:");
        let one = format!(
            "{probe}\n{regs}\n{regs}\n{regs}\n{signals}\n\
             vecstress memchr: ok rounds=1500 wrong=0 avx2_detected=0\n\
             vecstress exit {regs_exit}\nvecstress exit {regs_exit}\nvecstress exit {regs_exit}\n\
             vecstress exit {regs_exit}\nvecstress exit 0\n"
        );
        one.repeat(2)
    }

    #[test]
    fn loud_faults_pass() {
        check_outcome(&logs(PROBE_KEPT_OFF, "", 132));
    }

    #[test]
    fn kept_registers_pass() {
        check_outcome(&logs(
            PROBE_SAVED,
            "vecstress regs: ok width=ymm rounds=3000",
            0,
        ));
    }

    #[test]
    #[should_panic(expected = "silently corrupted")]
    fn corruption_fails() {
        check_outcome(&logs(
            PROBE_SAVED,
            "vecstress regs: CORRUPTED width=zmm rounds=3000 corrupted_rounds=1203",
            1,
        ));
    }

    #[test]
    #[should_panic(expected = "silently corrupted")]
    fn corruption_across_a_signal_fails() {
        let logs = logs(PROBE_SAVED, "vecstress regs: ok width=zmm rounds=3000", 0).replacen(
            "vecstress signals: ok width=zmm rounds=3000",
            "vecstress signals: CORRUPTED width=zmm rounds=500 corrupted_rounds=500",
            1,
        );
        check_outcome(&logs);
    }

    #[test]
    #[should_panic(expected = "each register loop kept")]
    fn a_loop_that_died_otherwise_fails() {
        check_outcome(&logs(PROBE_SAVED, "", 139));
    }
}
