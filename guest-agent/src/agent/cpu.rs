//! Keeps containers' glibc off AVX where the guest kernel cannot switch AVX
//! state.
//!
//! On nested PVM, user-mode `cpuid` and `xgetbv` run on the host and report
//! the host's AVX (up to AVX-512), while the guest kernel, booted `noxsave`
//! with a template that hides AVX, saves only the FXSAVE (x87/SSE) state
//! when it switches tasks. Two processes that both use AVX then corrupt each
//! other's YMM/ZMM registers: busybox's glibc `memcpy`/`strlen` picks AVX2
//! variants, and a pipeline such as `nc -l | wc -c` crashed (exit 139) or
//! hung under load. glibc reads `GLIBC_TUNABLES` before it picks its string
//! functions, so masking AVX there fixes every glibc program; programs that
//! pick AVX on their own (Go, for one) are not covered (docs/NESTED-KVM.md).
//!
//! The check compares what user mode sees with what the kernel supports
//! (`/proc/cpuinfo` flags), so it is a no-op on hardware virtualization,
//! where `cpuid` traps and both agree.

use std::sync::OnceLock;

/// The glibc features masked: every AVX level, and FMA, which needs AVX
/// state too. Unknown names are ignored by glibc.
const MASK_AVX: &str = "glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512CD,-AVX512BW,\
-AVX512DQ,-AVX512VL,-AVX512ER,-AVX512PF,-AVX512_VBMI,-AVX512_VBMI2,-AVX_VNNI,-FMA,-FMA4";

/// The value to give `GLIBC_TUNABLES` for a container whose own value is
/// `current`, or `None` to leave it alone.
pub fn glibc_tunables(current: Option<&str>) -> Option<String> {
    if !*AVX_LEAKS.get_or_init(avx_leaks) {
        return None;
    }
    Some(merge_tunables(current))
}

static AVX_LEAKS: OnceLock<bool> = OnceLock::new();

fn avx_leaks() -> bool {
    let user_mode = std::arch::is_x86_feature_detected!("avx");
    let kernel = std::fs::read_to_string("/proc/cpuinfo")
        .map(|info| kernel_has_avx(&info))
        .unwrap_or(true);
    let leaks = user_mode && !kernel;
    if leaks {
        log::info!(
            "user mode sees AVX that the kernel does not save; masking it from glibc in containers"
        );
    }
    leaks
}

/// Whether the first `flags` line of `/proc/cpuinfo` lists `avx`.
fn kernel_has_avx(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags").and_then(|r| r.split_once(':')))
        .is_some_and(|(_, flags)| flags.split_whitespace().any(|f| f == "avx"))
}

/// Adds the AVX mask to a container's own tunables (`:`-separated).
fn merge_tunables(current: Option<&str>) -> String {
    match current {
        Some(own) if !own.is_empty() => format!("{own}:{MASK_AVX}"),
        _ => MASK_AVX.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_flags_line_decides() {
        let with = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2\nbugs\t: x\n";
        let without = "processor\t: 0\nflags\t\t: fpu sse2 avx512_bf16 avxfoo\n";
        assert!(kernel_has_avx(with));
        assert!(!kernel_has_avx(without));
        assert!(!kernel_has_avx("no flags here"));
    }

    #[test]
    fn a_container_keeps_its_own_tunables() {
        assert_eq!(merge_tunables(None), MASK_AVX);
        assert_eq!(merge_tunables(Some("")), MASK_AVX);
        assert_eq!(
            merge_tunables(Some("glibc.malloc.arena_max=1")),
            format!("glibc.malloc.arena_max=1:{MASK_AVX}")
        );
    }
}
