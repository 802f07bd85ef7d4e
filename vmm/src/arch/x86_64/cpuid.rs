//! CPUID: what the guest is told about its CPU.
//!
//! # Design
//! We start from KVM's supported CPUID and filter it per vCPU:
//! - every template sets the APIC IDs and topology for this vCPU;
//! - [`CpuTemplate::NestedPvm`] also hides every feature whose instructions
//!   KVM's instruction emulator cannot run on nested PVM hosts (`cmpxchg16b`,
//!   `xsave`, `popcnt`, SSE4, SMAP's `clac`, ...). Guest ring 0 runs in that
//!   emulator there; see docs/NESTED-KVM.md for the measurements.
//!
//! # Limitations
//! Guest ring 3 executes `cpuid` natively on some nested PVM hosts and sees
//! the host's CPU, whatever we filter here; its AVX state is kept safe by
//! `arch::xstate` instead (docs/NESTED-KVM.md, "Vector registers").

use std::path::Path;

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

use crate::config::CpuTemplate;

/// Errors while building CPUID.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// KVM refused the supported-CPUID query.
    #[error("cannot read KVM's supported CPUID")]
    Supported(#[source] kvm_ioctls::Error),
}

/// What kind of KVM this host has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind {
    /// Hardware virtualization (VMX or SVM): guest ring 0 runs natively.
    Hardware,
    /// `kvm_pvm` without VMX/SVM: guest ring 0 is emulated.
    NestedPvm,
}

/// Detects the host kind from `/sys/module` (the `kvm_pvm` module is loaded).
pub fn detect_host() -> HostKind {
    detect_host_in(Path::new("/sys/module"))
}

fn detect_host_in(sys_module: &Path) -> HostKind {
    if sys_module.join("kvm_pvm").exists() {
        HostKind::NestedPvm
    } else {
        HostKind::Hardware
    }
}

impl CpuTemplate {
    /// Resolves [`CpuTemplate::Auto`] for a host.
    pub fn resolve(self, host: HostKind) -> CpuTemplate {
        match (self, host) {
            (CpuTemplate::Auto, HostKind::NestedPvm) => CpuTemplate::NestedPvm,
            (CpuTemplate::Auto, HostKind::Hardware) => CpuTemplate::Host,
            (other, _) => other,
        }
    }
}

// Leaf 1 ECX bits the nested-PVM template keeps: SSE3, x2APIC, TSC deadline,
// hypervisor. Everything else (SSSE3, CX16, SSE4.x, MOVBE, POPCNT, AES, XSAVE,
// OSXSAVE, AVX, F16C, RDRAND, ...) is hidden from the guest kernel.
const LEAF1_ECX_SSE3: u32 = 1 << 0;
const LEAF1_ECX_X2APIC: u32 = 1 << 21;
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const NESTED_LEAF1_ECX_KEEP: u32 =
    LEAF1_ECX_SSE3 | LEAF1_ECX_X2APIC | LEAF1_ECX_TSC_DEADLINE | LEAF1_ECX_HYPERVISOR;
// Leaf 0x8000_0001 ECX: only LAHF/SAHF in long mode.
const EXT1_ECX_LAHF_LM: u32 = 1 << 0;
// Leaf 0x8000_0001 EDX: keep SYSCALL, NX, LM; drop 1 GiB pages and RDTSCP.
const EXT1_EDX_PDPE1GB: u32 = 1 << 26;
const EXT1_EDX_RDTSCP: u32 = 1 << 27;
// Leaf 0x8000_0008 EBX: XSAVEERPTR. With it the kernel skips the
// FXSAVE_LEAK workaround, whose `fnclex` the emulator cannot run.
const EXT8_EBX_XSAVEERPTR: u32 = 1 << 2;
// Leaf 0x4000_0001 EAX (KVM paravirtual features): the ones whose guest side
// is a `vmcall` hypercall. Nested PVM hosts never complete a guest
// `vmcall`: the vCPU stays on the instruction forever, spinning in the host
// kernel (docs/NESTED-KVM.md, "SMP"). The guest kernel uses them
// only with more than one CPU: PV_UNHALT (KVM_HC_KICK_CPU, for paravirtual
// spinlocks), PV_SEND_IPI (KVM_HC_SEND_IPI) and PV_SCHED_YIELD
// (KVM_HC_SCHED_YIELD). Without them it kicks, sends IPIs and yields
// through the LAPIC.
const KVM_FEATURE_PV_UNHALT: u32 = 1 << 7;
const KVM_FEATURE_PV_SEND_IPI: u32 = 1 << 11;
const KVM_FEATURE_PV_SCHED_YIELD: u32 = 1 << 13;
const NESTED_KVM_FEATURES_HIDE: u32 =
    KVM_FEATURE_PV_UNHALT | KVM_FEATURE_PV_SEND_IPI | KVM_FEATURE_PV_SCHED_YIELD;
const KVM_CPUID_FEATURES: u32 = 0x4000_0001;

/// Filters KVM's supported CPUID for vCPU `cpu_index` of `cpu_count`.
pub fn filter_cpuid(cpuid: &mut CpuId, template: CpuTemplate, cpu_index: u8, cpu_count: u8) {
    let nested = template == CpuTemplate::NestedPvm;
    for entry in cpuid.as_mut_slice() {
        set_topology(entry, cpu_index, cpu_count);
        if nested {
            hide_unemulated(entry);
        }
    }
}

fn set_topology(entry: &mut kvm_cpuid_entry2, cpu_index: u8, cpu_count: u8) {
    match entry.function {
        1 => {
            // EBX: APIC ID [31:24], logical processor count [23:16].
            entry.ebx = (entry.ebx & 0x0000_ffff)
                | (u32::from(cpu_index) << 24)
                | (u32::from(cpu_count) << 16);
            if cpu_count > 1 {
                entry.edx |= 1 << 28; // HTT: the count above is valid.
            }
        }
        // Extended topology: x2APIC ID in EDX.
        0xb | 0x1f => entry.edx = u32::from(cpu_index),
        _ => {}
    }
}

fn hide_unemulated(entry: &mut kvm_cpuid_entry2) {
    match entry.function {
        1 => entry.ecx &= NESTED_LEAF1_ECX_KEEP,
        // Structured extended features: SMEP, SMAP, FSGSBASE, UMIP, AVX2, ...
        7 => {
            if entry.index == 0 {
                entry.eax = 0;
            }
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        }
        // XSAVE state enumeration. Index 0 (the XCR0 bits) and the
        // component leaves stay as KVM offers them: KVM_GET_XSAVE and
        // KVM_SET_XSAVE carry what they list, and the VMM saves that state
        // for the guest kernel (`arch::xstate`). The kernel, booted
        // `noxsave`, uses none of it; XSAVEOPT/XSAVEC/XSAVES (index 1) go.
        0xd if entry.index == 1 => {
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        }
        0x8000_0001 => {
            entry.ecx &= EXT1_ECX_LAHF_LM;
            entry.edx &= !(EXT1_EDX_PDPE1GB | EXT1_EDX_RDTSCP);
        }
        0x8000_0008 => entry.ebx = EXT8_EBX_XSAVEERPTR,
        KVM_CPUID_FEATURES => entry.eax &= !NESTED_KVM_FEATURES_HIDE,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: u32::MAX,
            ebx: u32::MAX,
            ecx: u32::MAX,
            edx: u32::MAX,
            ..Default::default()
        }
    }

    fn cpuid_of(entries: &[kvm_cpuid_entry2]) -> CpuId {
        CpuId::from_entries(entries).expect("small entry list fits")
    }

    fn find(cpuid: &CpuId, function: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function)
            .expect("leaf present")
    }

    #[test]
    fn nested_template_hides_unemulated_features() {
        let mut cpuid = cpuid_of(&[
            entry(1, 0),
            entry(7, 0),
            entry(0xd, 0),
            entry(0x8000_0001, 0),
        ]);
        filter_cpuid(&mut cpuid, CpuTemplate::NestedPvm, 0, 1);
        let leaf1 = find(&cpuid, 1);
        assert_eq!(leaf1.ecx, NESTED_LEAF1_ECX_KEEP);
        for bit in [9, 13, 19, 20, 23, 26, 27, 28] {
            assert_eq!(
                leaf1.ecx & (1 << bit),
                0,
                "leaf 1 ecx bit {bit} must be hidden"
            );
        }
        let leaf7 = find(&cpuid, 7);
        assert_eq!((leaf7.ebx, leaf7.ecx, leaf7.edx), (0, 0, 0));
        assert_eq!(
            find(&cpuid, 0xd).eax,
            u32::MAX,
            "XCR0 bits stay for KVM_GET_XSAVE"
        );
        let ext1 = find(&cpuid, 0x8000_0001);
        assert_eq!(ext1.ecx, EXT1_ECX_LAHF_LM);
        assert_eq!(ext1.edx & (EXT1_EDX_PDPE1GB | EXT1_EDX_RDTSCP), 0);
        assert_ne!(ext1.edx & (1 << 29), 0, "long mode must stay");
    }

    #[test]
    fn nested_template_hides_xsave_variants_but_keeps_the_state_components() {
        let mut cpuid = cpuid_of(&[entry(0xd, 0), entry(0xd, 1), entry(0xd, 2)]);
        filter_cpuid(&mut cpuid, CpuTemplate::NestedPvm, 0, 1);
        let leaves: Vec<_> = cpuid
            .as_slice()
            .iter()
            .filter(|e| e.function == 0xd)
            .collect();
        assert_eq!(leaves[0].eax, u32::MAX, "XCR0 bits");
        assert_eq!(
            (leaves[1].eax, leaves[1].ecx),
            (0, 0),
            "no XSAVEOPT/XSAVEC/XSAVES"
        );
        assert_eq!(leaves[2].ebx, u32::MAX, "the AVX component's offset");
    }

    #[test]
    fn nested_template_exposes_xsaveerptr() {
        let mut e = entry(0x8000_0008, 0);
        e.ebx = 0;
        let mut cpuid = cpuid_of(&[e]);
        filter_cpuid(&mut cpuid, CpuTemplate::NestedPvm, 0, 1);
        assert_eq!(find(&cpuid, 0x8000_0008).ebx, EXT8_EBX_XSAVEERPTR);
    }

    #[test]
    fn nested_template_hides_hypercall_features() {
        let mut e = entry(KVM_CPUID_FEATURES, 0);
        e.eax = 0x0100_7efb; // what this host's KVM offers
        let mut cpuid = cpuid_of(&[e]);
        filter_cpuid(&mut cpuid, CpuTemplate::NestedPvm, 1, 2);
        let eax = find(&cpuid, KVM_CPUID_FEATURES).eax;
        assert_eq!(eax & NESTED_KVM_FEATURES_HIDE, 0);
        assert_eq!(
            eax,
            0x0100_7efb & !NESTED_KVM_FEATURES_HIDE,
            "the rest stays"
        );
        let mut cpuid = cpuid_of(&[e]);
        filter_cpuid(&mut cpuid, CpuTemplate::Host, 1, 2);
        assert_eq!(find(&cpuid, KVM_CPUID_FEATURES).eax, 0x0100_7efb);
    }

    #[test]
    fn host_template_keeps_features() {
        let mut cpuid = cpuid_of(&[entry(1, 0), entry(7, 0)]);
        filter_cpuid(&mut cpuid, CpuTemplate::Host, 0, 1);
        assert_eq!(find(&cpuid, 1).ecx, u32::MAX);
        assert_eq!(find(&cpuid, 7).ebx, u32::MAX);
    }

    #[test]
    fn topology_is_per_vcpu() {
        let mut cpuid = cpuid_of(&[entry(1, 0), entry(0xb, 0)]);
        filter_cpuid(&mut cpuid, CpuTemplate::Host, 1, 2);
        let leaf1 = find(&cpuid, 1);
        assert_eq!(leaf1.ebx >> 24, 1);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 2);
        assert_eq!(leaf1.ebx & 0xffff, 0xffff, "clflush size and brand stay");
        assert_eq!(find(&cpuid, 0xb).edx, 1);
    }

    #[test]
    fn auto_template_follows_host_kind() {
        assert_eq!(
            CpuTemplate::Auto.resolve(HostKind::NestedPvm),
            CpuTemplate::NestedPvm
        );
        assert_eq!(
            CpuTemplate::Auto.resolve(HostKind::Hardware),
            CpuTemplate::Host
        );
        assert_eq!(
            CpuTemplate::Host.resolve(HostKind::NestedPvm),
            CpuTemplate::Host
        );
    }

    #[test]
    fn host_detection_looks_for_kvm_pvm_module() {
        let dir = std::env::temp_dir().join(format!("unipod-cpuid-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        assert_eq!(detect_host_in(&dir), HostKind::Hardware);
        std::fs::create_dir_all(dir.join("kvm_pvm")).expect("fake module dir");
        assert_eq!(detect_host_in(&dir), HostKind::NestedPvm);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
