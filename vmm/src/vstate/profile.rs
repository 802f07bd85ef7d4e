//! A sampling profiler of the guest: where the vCPUs spend their time.
//!
//! On nested PVM hosts the guest's ring-0 code runs in KVM's instruction
//! emulator (docs/NESTED-KVM.md), so guest kernel work is the cost of
//! nearly everything, and host profilers see only the emulator. This one
//! kicks every vCPU thread out of `KVM_RUN` at a fixed interval and records
//! the guest's RIP; `bench/guest_profile.py` turns the counts into guest
//! kernel functions with the vmlinux symbols.
//!
//! # Design
//! - A sampler thread sends the vCPU kick signal every interval; each vCPU
//!   thread reads its RIP when `KVM_RUN` returns EINTR (so pauses for a
//!   snapshot also count a sample, which does not matter).
//! - A halted vCPU is woken by the kick too, so idle time shows up as the
//!   guest's idle loop (`default_idle`), and user mode as addresses below
//!   the kernel's half.
//! - Developer tool: it runs only with `unipod boot --guest-profile`, and its
//!   thread starts before the main thread's seccomp filter, so it has none.
//!
//! # Limitations
//! - Each sample is one extra exit, so the guest runs a little slower while
//!   profiled.
//! - On nested PVM, guest user mode is under-sampled: a pod whose shell
//!   loop kept the guest in user mode most of its time showed 4% of
//!   samples there. Compare kernel functions with each other, not with
//!   `[user]`.

use std::fmt::Write as _;
use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often each vCPU is sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(1);

/// Distinct guest addresses a profile holds; later new ones are counted
/// as dropped.
const SLOTS: usize = 1 << 16;

/// The samples of one VM run, written to `path` when it ends.
///
/// A fixed open-addressing table of atomics, allocated up front: the vCPU
/// threads record without allocating (a new malloc arena makes glibc open
/// /proc/sys/vm/overcommit_memory, which their seccomp filter forbids).
pub struct GuestProfile {
    path: PathBuf,
    /// Guest RIPs; 0 is a free slot.
    rips: Box<[AtomicU64]>,
    /// Samples per slot.
    counts: Box<[AtomicU64]>,
    /// Samples of addresses that found no free slot.
    dropped: AtomicU64,
    stop: AtomicBool,
}

impl GuestProfile {
    /// A profile that will be written to `path`.
    pub fn new(path: &Path) -> Arc<GuestProfile> {
        let table = || (0..SLOTS).map(|_| AtomicU64::new(0)).collect();
        Arc::new(GuestProfile {
            path: path.to_path_buf(),
            rips: table(),
            counts: table(),
            dropped: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        })
    }

    /// Counts one sample at `rip`; never allocates.
    pub fn record(&self, rip: u64) {
        // RIP 0 would read as a free slot; it is not code anyone runs.
        let rip = rip.max(1);
        let start =
            usize::try_from(xxhash_rust::xxh3::xxh3_64(&rip.to_le_bytes())).unwrap_or(0) % SLOTS;
        for i in 0..SLOTS {
            let slot = (start + i) % SLOTS;
            match self.rips[slot].compare_exchange(0, rip, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {}
                Err(found) if found == rip => {}
                Err(_) => continue,
            }
            self.counts[slot].fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Where the profile goes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts kicking the `vcpus` threads every [`SAMPLE_INTERVAL`] until
    /// the returned sampler is finished or dropped.
    ///
    /// # Safety
    /// The sampler must be dropped (or finished) before any handle in
    /// `vcpus` is joined or dropped, so that their pthreads stay valid, and
    /// the kick signal's handler must be installed.
    pub unsafe fn start_sampler(
        self: &Arc<Self>,
        vcpus: &[JoinHandle<()>],
    ) -> std::io::Result<Sampler> {
        let vcpus: Vec<libc::pthread_t> = vcpus.iter().map(|t| t.as_pthread_t()).collect();
        let profile = self.clone();
        let thread = std::thread::Builder::new()
            .name("guest-profile".into())
            .spawn(move || {
                while !profile.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(SAMPLE_INTERVAL);
                    for &thread in &vcpus {
                        // SAFETY: the Sampler joins this thread before the
                        // vCPU handles go (start_sampler's contract), and
                        // the signal has a handler.
                        unsafe { libc::pthread_kill(thread, super::vcpu::kick_signal()) };
                    }
                }
            })?;
        Ok(Sampler {
            profile: self.clone(),
            thread: Some(thread),
        })
    }

    fn render(&self) -> String {
        let mut rows: Vec<(u64, u64)> = self
            .rips
            .iter()
            .zip(self.counts.iter())
            .map(|(rip, n)| (n.load(Ordering::Relaxed), rip.load(Ordering::Relaxed)))
            .filter(|&(n, _)| n > 0)
            .collect();
        rows.sort_unstable_by(|a, b| b.cmp(a));
        let total: u64 = rows.iter().map(|(n, _)| n).sum();
        let dropped = self.dropped.load(Ordering::Relaxed);
        let mut out = format!("# samples {total}\n");
        if dropped > 0 {
            let _ = writeln!(out, "# dropped {dropped} (more than {SLOTS} addresses)");
        }
        for (n, rip) in rows {
            let _ = writeln!(out, "{n} {rip:#x}");
        }
        out
    }
}

/// The running sampler thread; stopped and joined on drop.
pub struct Sampler {
    profile: Arc<GuestProfile>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Stops sampling and writes the profile: a `# samples N` line, then
    /// `COUNT RIP` lines, most samples first.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.stop();
        std::fs::write(&self.profile.path, self.profile.render())
    }

    fn stop(&mut self) {
        self.profile.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_past_the_table_are_counted_as_dropped() {
        let p = GuestProfile::new(Path::new("/nonexistent"));
        for rip in 1..=(SLOTS as u64 + 2) {
            p.record(rip);
        }
        p.record(7);
        let text = p.render();
        assert!(
            text.starts_with(&format!("# samples {}\n# dropped 2 ", SLOTS + 1)),
            "{}",
            &text[..80]
        );
        assert!(text.contains("\n2 0x7\n"), "a known address still counts");
    }

    #[test]
    fn samples_are_counted_per_rip_and_listed_most_first() {
        let p = GuestProfile::new(Path::new("/nonexistent"));
        for rip in [0xffff_ffff_8100_0000u64, 0x40_1000, 0xffff_ffff_8100_0000] {
            p.record(rip);
        }
        assert_eq!(
            p.render(),
            "# samples 3\n2 0xffffffff81000000\n1 0x401000\n"
        );
    }
}
