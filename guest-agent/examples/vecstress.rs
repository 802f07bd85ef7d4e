//! `vecstress`: checks that a process's vector registers survive other
//! processes' use of them, for the nested-PVM CPU-state tests
//! (tests/cpu_state.rs, docs/NESTED-KVM.md). A test program, not part of
//! unipod: `make images` builds it (static, musl) into the busybox test image
//! as `/usr/local/bin/vecstress`.
//!
//! - `vecstress probe` prints what this process is told and allowed: the
//!   CPUID bits (OSXSAVE, AVX, AVX2, AVX-512F), XCR0 from `xgetbv`, what
//!   Rust's `std_detect` concludes, and whether an AVX and an AVX-512
//!   instruction actually execute (in a child, so SIGILL is a finding).
//! - `vecstress regs ROUNDS` fills every YMM register (every ZMM and mask
//!   register where the CPU has AVX-512) with a pattern of its own pid and
//!   round, makes a syscall that blocks or yields (`sched_yield`,
//!   `nanosleep`, a pipe round trip, `getppid`) in the same `asm!` block, and
//!   compares the registers afterwards. It does not ask the OS first, as
//!   hand-written or JIT code may not: where the OS has not enabled the
//!   state, the first instruction raises SIGILL, which is loud, not silent.
//! - `vecstress signals ROUNDS` does the same with a syscall that signals
//!   the process itself, so a handler that overwrites every vector register
//!   runs while the pattern is live: the kernel must bring the pattern back
//!   from the signal frame at sigreturn, upper halves and masks included.
//! - `vecstress memchr ROUNDS` exercises library code that picks AVX2 at run
//!   time (the `memchr` crate) between blocking syscalls and checks every
//!   answer.
//!
//! Each mode prints one `vecstress MODE: ...` line and exits 0 when every
//! check held, 1 on any mismatch, 2 on bad usage.

use std::arch::asm;
use std::arch::x86_64::{__cpuid, __cpuid_count, CpuidResult};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let rounds = |i: usize| args.get(i).and_then(|r| r.parse::<u64>().ok());
    match (args.get(1).map(String::as_str), rounds(2)) {
        (Some("probe"), _) => probe(),
        (Some("regs"), Some(n)) => regs(n),
        (Some("signals"), Some(n)) => signals(n),
        (Some("memchr"), Some(n)) => memchr_checks(n),
        _ => {
            eprintln!("usage: vecstress probe | regs ROUNDS | signals ROUNDS | memchr ROUNDS");
            ExitCode::from(2)
        }
    }
}

struct Cpu {
    osxsave: bool,
    avx: bool,
    avx2: bool,
    avx512f: bool,
}

fn cpu() -> Cpu {
    let (l1, l7): (CpuidResult, CpuidResult) = (__cpuid(1), __cpuid_count(7, 0));
    Cpu {
        osxsave: l1.ecx & (1 << 27) != 0,
        avx: l1.ecx & (1 << 28) != 0,
        avx2: l7.ebx & (1 << 5) != 0,
        avx512f: l7.ebx & (1 << 16) != 0,
    }
}

/// Runs `f` in a forked child, so that a fault is a finding: `Ok` with
/// what `f` returned, or how the child ended (`sigill`, ...).
fn in_child(f: fn() -> u64) -> Result<u64, String> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err("pipe-failed".to_string());
    }
    // SAFETY: the program is single-threaded here, so the child may run
    // any code; it only calls `f`, `write` and `_exit`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let value = f().to_le_bytes();
        // SAFETY: writes 8 bytes from a live buffer, then ends the child
        // without running the parent's destructors.
        unsafe {
            libc::write(fds[1], value.as_ptr().cast(), value.len());
            libc::_exit(0)
        }
    }
    // SAFETY: closes the write end the parent does not use.
    unsafe { libc::close(fds[1]) };
    if pid < 0 {
        return Err("fork-failed".to_string());
    }
    let mut value = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a live buffer, then closes it.
    let got = unsafe {
        let n = libc::read(fds[0], value.as_mut_ptr().cast(), value.len());
        libc::close(fds[0]);
        n
    };
    let mut status = 0;
    // SAFETY: `status` is a valid out pointer; `pid` is our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFSIGNALED(status) {
        return Err(match libc::WTERMSIG(status) {
            libc::SIGILL => "sigill".to_string(),
            sig => format!("signal{sig}"),
        });
    }
    if got != 8 || libc::WEXITSTATUS(status) != 0 {
        return Err(format!("exit{}", libc::WEXITSTATUS(status)));
    }
    Ok(u64::from_le_bytes(value))
}

fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: xgetbv only reads XCR0; where the OS has not set CR4.OSXSAVE it
    // raises #UD, which `probe` runs in a child to observe.
    unsafe { asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

fn verdict(result: Result<u64, String>) -> String {
    result.map_or_else(|why| why, |_| "ok".to_string())
}

fn probe() -> ExitCode {
    let cpu = cpu();
    let xcr0 = in_child(xgetbv0).map_or_else(|why| why, |v| format!("0x{v:x}"));
    let avx_exec = verdict(in_child(|| {
        // SAFETY: executes one AVX instruction to see whether it faults.
        unsafe { asm!("vpxor ymm0, ymm0, ymm0", out("ymm0") _, options(nomem, nostack)) };
        0
    }));
    let avx512_exec = if cpu.avx512f {
        verdict(in_child(|| {
            // SAFETY: executes one AVX-512 instruction to see whether it faults.
            unsafe { asm!("vpxord zmm0, zmm0, zmm0", out("zmm0") _, options(nomem, nostack)) };
            0
        }))
    } else {
        "absent".to_string()
    };
    println!(
        "vecstress probe: cpuid.osxsave={} cpuid.avx={} cpuid.avx2={} cpuid.avx512f={} xcr0={xcr0} \
         detected.avx2={} detected.avx512f={} exec.avx={avx_exec} exec.avx512={avx512_exec}",
        u8::from(cpu.osxsave),
        u8::from(cpu.avx),
        u8::from(cpu.avx2),
        u8::from(cpu.avx512f),
        u8::from(std::is_x86_feature_detected!("avx2")),
        u8::from(std::is_x86_feature_detected!("avx512f")),
    );
    ExitCode::SUCCESS
}

/// The syscall a round makes: number and three arguments.
struct Syscall {
    nr: i64,
    args: [usize; 3],
}

/// Cycles through syscalls that give up the CPU in different ways.
fn syscall_for(round: u64, pipe: &[i32; 2], byte: &mut u8, nap: &libc::timespec) -> Syscall {
    let ptr = |p: *const u8| p as usize;
    match round % 4 {
        0 => Syscall {
            nr: libc::SYS_sched_yield,
            args: [0; 3],
        },
        1 => Syscall {
            nr: libc::SYS_nanosleep,
            args: [ptr((nap as *const libc::timespec).cast()), 0, 0],
        },
        // A write the next round's read takes back: the read never blocks
        // forever, whatever the scheduling.
        2 => Syscall {
            nr: libc::SYS_write,
            args: [usize::try_from(pipe[1]).unwrap_or(0), ptr(byte), 1],
        },
        _ => Syscall {
            nr: libc::SYS_read,
            args: [usize::try_from(pipe[0]).unwrap_or(0), ptr(byte), 1],
        },
    }
}

/// Loads 16 YMM registers from `src`, makes the syscall, stores them to `dst`.
///
/// # Safety
/// `src` and `dst` point to 512 bytes each; the syscall's arguments are valid
/// for it.
unsafe fn ymm_round(src: *const u8, dst: *mut u8, call: &Syscall) {
    // SAFETY: as the caller promises; rcx and r11 are clobbered by `syscall`.
    unsafe {
        asm!(
            "vmovdqu ymm0, [{s}]", "vmovdqu ymm1, [{s}+32]", "vmovdqu ymm2, [{s}+64]",
            "vmovdqu ymm3, [{s}+96]", "vmovdqu ymm4, [{s}+128]", "vmovdqu ymm5, [{s}+160]",
            "vmovdqu ymm6, [{s}+192]", "vmovdqu ymm7, [{s}+224]", "vmovdqu ymm8, [{s}+256]",
            "vmovdqu ymm9, [{s}+288]", "vmovdqu ymm10, [{s}+320]", "vmovdqu ymm11, [{s}+352]",
            "vmovdqu ymm12, [{s}+384]", "vmovdqu ymm13, [{s}+416]", "vmovdqu ymm14, [{s}+448]",
            "vmovdqu ymm15, [{s}+480]",
            "syscall",
            "vmovdqu [{d}], ymm0", "vmovdqu [{d}+32], ymm1", "vmovdqu [{d}+64], ymm2",
            "vmovdqu [{d}+96], ymm3", "vmovdqu [{d}+128], ymm4", "vmovdqu [{d}+160], ymm5",
            "vmovdqu [{d}+192], ymm6", "vmovdqu [{d}+224], ymm7", "vmovdqu [{d}+256], ymm8",
            "vmovdqu [{d}+288], ymm9", "vmovdqu [{d}+320], ymm10", "vmovdqu [{d}+352], ymm11",
            "vmovdqu [{d}+384], ymm12", "vmovdqu [{d}+416], ymm13", "vmovdqu [{d}+448], ymm14",
            "vmovdqu [{d}+480], ymm15",
            s = in(reg) src,
            d = in(reg) dst,
            inout("rax") call.nr => _,
            in("rdi") call.args[0],
            in("rsi") call.args[1],
            in("rdx") call.args[2],
            out("rcx") _, out("r11") _,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
            out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
            out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
            options(nostack),
        );
    }
}

/// Loads 32 ZMM and 7 mask registers from `src`, makes the syscall, stores
/// them to `dst`.
///
/// # Safety
/// `src` and `dst` point to [`ZMM_BYTES`] bytes each; the syscall's
/// arguments are valid for it.
unsafe fn zmm_round(src: *const u8, dst: *mut u8, call: &Syscall) {
    // SAFETY: as the caller promises; rcx and r11 are clobbered by `syscall`.
    unsafe {
        asm!(
            "vmovdqu64 zmm0, [{s}]", "vmovdqu64 zmm1, [{s}+64]", "vmovdqu64 zmm2, [{s}+128]",
            "vmovdqu64 zmm3, [{s}+192]", "vmovdqu64 zmm4, [{s}+256]", "vmovdqu64 zmm5, [{s}+320]",
            "vmovdqu64 zmm6, [{s}+384]", "vmovdqu64 zmm7, [{s}+448]", "vmovdqu64 zmm8, [{s}+512]",
            "vmovdqu64 zmm9, [{s}+576]", "vmovdqu64 zmm10, [{s}+640]", "vmovdqu64 zmm11, [{s}+704]",
            "vmovdqu64 zmm12, [{s}+768]", "vmovdqu64 zmm13, [{s}+832]", "vmovdqu64 zmm14, [{s}+896]",
            "vmovdqu64 zmm15, [{s}+960]", "vmovdqu64 zmm16, [{s}+1024]", "vmovdqu64 zmm17, [{s}+1088]",
            "vmovdqu64 zmm18, [{s}+1152]", "vmovdqu64 zmm19, [{s}+1216]", "vmovdqu64 zmm20, [{s}+1280]",
            "vmovdqu64 zmm21, [{s}+1344]", "vmovdqu64 zmm22, [{s}+1408]", "vmovdqu64 zmm23, [{s}+1472]",
            "vmovdqu64 zmm24, [{s}+1536]", "vmovdqu64 zmm25, [{s}+1600]", "vmovdqu64 zmm26, [{s}+1664]",
            "vmovdqu64 zmm27, [{s}+1728]", "vmovdqu64 zmm28, [{s}+1792]", "vmovdqu64 zmm29, [{s}+1856]",
            "vmovdqu64 zmm30, [{s}+1920]", "vmovdqu64 zmm31, [{s}+1984]",
            "kmovq k1, [{s}+2048]", "kmovq k2, [{s}+2056]", "kmovq k3, [{s}+2064]",
            "kmovq k4, [{s}+2072]", "kmovq k5, [{s}+2080]", "kmovq k6, [{s}+2088]",
            "kmovq k7, [{s}+2096]",
            "syscall",
            "vmovdqu64 [{d}], zmm0", "vmovdqu64 [{d}+64], zmm1", "vmovdqu64 [{d}+128], zmm2",
            "vmovdqu64 [{d}+192], zmm3", "vmovdqu64 [{d}+256], zmm4", "vmovdqu64 [{d}+320], zmm5",
            "vmovdqu64 [{d}+384], zmm6", "vmovdqu64 [{d}+448], zmm7", "vmovdqu64 [{d}+512], zmm8",
            "vmovdqu64 [{d}+576], zmm9", "vmovdqu64 [{d}+640], zmm10", "vmovdqu64 [{d}+704], zmm11",
            "vmovdqu64 [{d}+768], zmm12", "vmovdqu64 [{d}+832], zmm13", "vmovdqu64 [{d}+896], zmm14",
            "vmovdqu64 [{d}+960], zmm15", "vmovdqu64 [{d}+1024], zmm16", "vmovdqu64 [{d}+1088], zmm17",
            "vmovdqu64 [{d}+1152], zmm18", "vmovdqu64 [{d}+1216], zmm19", "vmovdqu64 [{d}+1280], zmm20",
            "vmovdqu64 [{d}+1344], zmm21", "vmovdqu64 [{d}+1408], zmm22", "vmovdqu64 [{d}+1472], zmm23",
            "vmovdqu64 [{d}+1536], zmm24", "vmovdqu64 [{d}+1600], zmm25", "vmovdqu64 [{d}+1664], zmm26",
            "vmovdqu64 [{d}+1728], zmm27", "vmovdqu64 [{d}+1792], zmm28", "vmovdqu64 [{d}+1856], zmm29",
            "vmovdqu64 [{d}+1920], zmm30", "vmovdqu64 [{d}+1984], zmm31",
            "kmovq [{d}+2048], k1", "kmovq [{d}+2056], k2", "kmovq [{d}+2064], k3",
            "kmovq [{d}+2072], k4", "kmovq [{d}+2080], k5", "kmovq [{d}+2088], k6",
            "kmovq [{d}+2096], k7",
            s = in(reg) src,
            d = in(reg) dst,
            inout("rax") call.nr => _,
            in("rdi") call.args[0],
            in("rsi") call.args[1],
            in("rdx") call.args[2],
            out("rcx") _, out("r11") _,
            out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
            out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
            out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
            out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _,
            out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
            out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
            out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _,
            out("zmm28") _, out("zmm29") _, out("zmm30") _, out("zmm31") _,
            out("k1") _, out("k2") _, out("k3") _, out("k4") _,
            out("k5") _, out("k6") _, out("k7") _,
            options(nostack),
        );
    }
}

const YMM_BYTES: usize = 16 * 32;
const ZMM_BYTES: usize = 32 * 64 + 7 * 8;

/// A pattern no other process or round shares: xorshift seeded by both.
fn fill(buf: &mut [u8], pid: u32, round: u64) {
    let mut x = (u64::from(pid) << 32) ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5555;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

fn regs(rounds: u64) -> ExitCode {
    let mut pipe = [0i32; 2];
    // SAFETY: `pipe` has room for the two descriptors.
    if unsafe { libc::pipe(pipe.as_mut_ptr()) } != 0 {
        eprintln!("vecstress regs: pipe: {}", std::io::Error::last_os_error());
        return ExitCode::FAILURE;
    }
    let nap = libc::timespec {
        tv_sec: 0,
        tv_nsec: 200_000,
    };
    let mut byte = 0u8;
    let (verdict, line) = check_rounds(rounds, |round| syscall_for(round, &pipe, &mut byte, &nap));
    println!("vecstress regs: {line}");
    verdict
}

/// Signals handled by [`clobber_vector_registers`].
static HANDLED: AtomicU64 = AtomicU64::new(0);
/// Whether the handler overwrites ZMM and mask registers, not only YMM.
static CLOBBER_ZMM: AtomicBool = AtomicBool::new(false);

/// A SIGUSR1 handler that sets every vector register it can reach to all
/// ones (and the mask registers to another value); vector registers are
/// caller-saved, so nothing but the kernel's sigreturn puts them back.
extern "C" fn clobber_vector_registers(_: libc::c_int) {
    HANDLED.fetch_add(1, Ordering::Relaxed);
    // SAFETY: the instructions only write caller-saved registers, which
    // `clobber_abi("C")` declares.
    unsafe {
        if CLOBBER_ZMM.load(Ordering::Relaxed) {
            asm!(
                "vpternlogd zmm0, zmm0, zmm0, 0xff",
                "vpternlogd zmm1, zmm1, zmm1, 0xff",
                "vpternlogd zmm2, zmm2, zmm2, 0xff",
                "vpternlogd zmm3, zmm3, zmm3, 0xff",
                "vpternlogd zmm4, zmm4, zmm4, 0xff",
                "vpternlogd zmm5, zmm5, zmm5, 0xff",
                "vpternlogd zmm6, zmm6, zmm6, 0xff",
                "vpternlogd zmm7, zmm7, zmm7, 0xff",
                "vpternlogd zmm8, zmm8, zmm8, 0xff",
                "vpternlogd zmm9, zmm9, zmm9, 0xff",
                "vpternlogd zmm10, zmm10, zmm10, 0xff",
                "vpternlogd zmm11, zmm11, zmm11, 0xff",
                "vpternlogd zmm12, zmm12, zmm12, 0xff",
                "vpternlogd zmm13, zmm13, zmm13, 0xff",
                "vpternlogd zmm14, zmm14, zmm14, 0xff",
                "vpternlogd zmm15, zmm15, zmm15, 0xff",
                "vpternlogd zmm16, zmm16, zmm16, 0xff",
                "vpternlogd zmm17, zmm17, zmm17, 0xff",
                "vpternlogd zmm18, zmm18, zmm18, 0xff",
                "vpternlogd zmm19, zmm19, zmm19, 0xff",
                "vpternlogd zmm20, zmm20, zmm20, 0xff",
                "vpternlogd zmm21, zmm21, zmm21, 0xff",
                "vpternlogd zmm22, zmm22, zmm22, 0xff",
                "vpternlogd zmm23, zmm23, zmm23, 0xff",
                "vpternlogd zmm24, zmm24, zmm24, 0xff",
                "vpternlogd zmm25, zmm25, zmm25, 0xff",
                "vpternlogd zmm26, zmm26, zmm26, 0xff",
                "vpternlogd zmm27, zmm27, zmm27, 0xff",
                "vpternlogd zmm28, zmm28, zmm28, 0xff",
                "vpternlogd zmm29, zmm29, zmm29, 0xff",
                "vpternlogd zmm30, zmm30, zmm30, 0xff",
                "vpternlogd zmm31, zmm31, zmm31, 0xff",
                "kxnorw k1, k0, k0",
                "kxnorw k2, k0, k0",
                "kxnorw k3, k0, k0",
                "kxnorw k4, k0, k0",
                "kxnorw k5, k0, k0",
                "kxnorw k6, k0, k0",
                "kxnorw k7, k0, k0",
                clobber_abi("C"),
                options(nomem, nostack),
            );
        } else {
            asm!(
                "vcmpps ymm0, ymm0, ymm0, 15",
                "vcmpps ymm1, ymm1, ymm1, 15",
                "vcmpps ymm2, ymm2, ymm2, 15",
                "vcmpps ymm3, ymm3, ymm3, 15",
                "vcmpps ymm4, ymm4, ymm4, 15",
                "vcmpps ymm5, ymm5, ymm5, 15",
                "vcmpps ymm6, ymm6, ymm6, 15",
                "vcmpps ymm7, ymm7, ymm7, 15",
                "vcmpps ymm8, ymm8, ymm8, 15",
                "vcmpps ymm9, ymm9, ymm9, 15",
                "vcmpps ymm10, ymm10, ymm10, 15",
                "vcmpps ymm11, ymm11, ymm11, 15",
                "vcmpps ymm12, ymm12, ymm12, 15",
                "vcmpps ymm13, ymm13, ymm13, 15",
                "vcmpps ymm14, ymm14, ymm14, 15",
                "vcmpps ymm15, ymm15, ymm15, 15",
                clobber_abi("C"),
                options(nomem, nostack),
            );
        }
    }
}

fn signals(rounds: u64) -> ExitCode {
    CLOBBER_ZMM.store(cpu().avx512f, Ordering::Relaxed);
    // SAFETY: a zeroed sigaction with a handler that only touches atomics
    // and registers.
    let installed = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = clobber_vector_registers as extern "C" fn(libc::c_int) as usize;
        libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut())
    };
    if installed != 0 {
        eprintln!(
            "vecstress signals: sigaction: {}",
            std::io::Error::last_os_error()
        );
        return ExitCode::FAILURE;
    }
    let me = usize::try_from(std::process::id()).unwrap_or(0);
    let signal = usize::try_from(libc::SIGUSR1).unwrap_or(0);
    // A signal to oneself is delivered before kill returns: inside the
    // round, with its registers loaded.
    let (verdict, line) = check_rounds(rounds, |_| Syscall {
        nr: libc::SYS_kill,
        args: [me, signal, 0],
    });
    let handled = HANDLED.load(Ordering::Relaxed);
    println!("vecstress signals: {line} handled={handled}");
    if handled != rounds {
        eprintln!("vecstress signals: the handler ran {handled} times in {rounds} rounds");
        return ExitCode::FAILURE;
    }
    verdict
}

/// Runs `rounds` rounds that fill every vector register with a pattern of
/// this process and round, make `call(round)`'s syscall and compare; returns
/// the verdict and the summary line.
fn check_rounds(rounds: u64, mut call: impl FnMut(u64) -> Syscall) -> (ExitCode, String) {
    let cpu = cpu();
    let (width, bytes) = if cpu.avx512f {
        ("zmm", ZMM_BYTES)
    } else {
        ("ymm", YMM_BYTES)
    };
    let pid = std::process::id();
    let mut src = vec![0u8; bytes];
    let mut dst = vec![0u8; bytes];
    let (mut bad_rounds, mut bad_bytes, mut first) = (0u64, 0usize, None);
    for round in 0..rounds {
        fill(&mut src, pid, round);
        let call = call(round);
        // SAFETY: both buffers hold `bytes` bytes, the size this width
        // stores; the syscall's pointers point to live locals.
        unsafe {
            if cpu.avx512f {
                zmm_round(src.as_ptr(), dst.as_mut_ptr(), &call);
            } else {
                ymm_round(src.as_ptr(), dst.as_mut_ptr(), &call);
            }
        }
        let wrong = src.iter().zip(&dst).filter(|(a, b)| a != b).count();
        if wrong > 0 {
            bad_rounds += 1;
            bad_bytes += wrong;
            first.get_or_insert_with(|| {
                let at = src.iter().zip(&dst).position(|(a, b)| a != b).unwrap_or(0);
                format!("round{round}:{}", register_name(width, at))
            });
        }
    }
    let verdict = if bad_rounds == 0 { "ok" } else { "CORRUPTED" };
    let line = format!(
        "{verdict} width={width} rounds={rounds} corrupted_rounds={bad_rounds} \
         corrupted_bytes={bad_bytes}{}",
        first.map(|f| format!(" first={f}")).unwrap_or_default()
    );
    let code = if bad_rounds == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    (code, line)
}

fn register_name(width: &str, byte: usize) -> String {
    match width {
        "zmm" if byte >= 32 * 64 => format!("k{}", (byte - 32 * 64) / 8 + 1),
        "zmm" => format!("zmm{}.byte{}", byte / 64, byte % 64),
        _ => format!("ymm{}.byte{}", byte / 32, byte % 32),
    }
}

fn memchr_checks(rounds: u64) -> ExitCode {
    const LEN: usize = 64 * 1024;
    let mut haystack = vec![0u8; LEN];
    fill(&mut haystack, std::process::id(), 0);
    for b in &mut haystack {
        if *b == b'!' || *b == b'?' {
            *b = b'.';
        }
    }
    let nap = std::time::Duration::from_micros(200);
    let mut wrong = 0u64;
    for round in 0..rounds {
        let at = usize::try_from(round.wrapping_mul(7919)).unwrap_or(0) % (LEN - 4);
        haystack[at] = b'!';
        haystack[at + 1] = b'?';
        let found = memchr::memchr(b'!', &haystack);
        let found_rev = memchr::memrchr(b'?', &haystack);
        let found_pair = memchr::memmem::find(&haystack, b"!?");
        if found != Some(at) || found_rev != Some(at + 1) || found_pair != Some(at) {
            wrong += 1;
        }
        haystack[at] = b'.';
        haystack[at + 1] = b'.';
        if round % 2 == 0 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(nap);
        }
    }
    let verdict = if wrong == 0 { "ok" } else { "WRONG" };
    println!(
        "vecstress memchr: {verdict} rounds={rounds} wrong={wrong} avx2_detected={}",
        u8::from(std::is_x86_feature_detected!("avx2"))
    );
    if wrong == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
