//! Extended CPU state saved by the VMM for a guest kernel that cannot save
//! it itself (nested PVM hosts).
//!
//! # Why
//! On nested PVM hosts the guest kernel runs in KVM's instruction emulator,
//! which has no XSAVE, so the kernel is booted `noxsave` and saves only the
//! FXSAVE (x87/SSE) state on a task switch. Guest user mode runs on the real
//! CPU, where the host has AVX and AVX-512 enabled, and the hypervisor keeps
//! the host's XCR0 whatever the guest sets (docs/NESTED-KVM.md, "Vector
//! registers"): without help, every user process in the guest would share
//! the upper halves of YMM/ZMM and the mask registers, and corrupt another's.
//!
//! # Design
//! The guest kernel (kernel-config/patches/0005, cmdline `vmm_xstate=ADDR`)
//! writes the guest-physical address of a task's 4 KiB XSAVE-layout area to
//! [`XSTATE_MMIO_START`] to save the vCPU's state there, or to
//! `XSTATE_MMIO_START + 8` to load it. The vCPU thread serves the write with
//! `KVM_GET_XSAVE`/`KVM_SET_XSAVE`, which carry every component the CPUID
//! template offers (leaf 0xD). The legacy area is authoritative for x87 and
//! SSE, as for FXRSTOR, so a load marks both present.
//!
//! # Limitations
//! A guest-chosen address that is not RAM, or an area KVM refuses, fails
//! that request only (rate-limited log). Signal frames use the same two
//! requests: kernel patch 0006 saves the area into the frame at delivery
//! and loads it back at `sigreturn`, after checking it as XRSTOR would.

use kvm_bindings::kvm_xsave;
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::MMIO_GAP_START;

/// Where the guest writes its requests: the first page of the MMIO gap.
pub const XSTATE_MMIO_START: u64 = MMIO_GAP_START;
/// Bytes of the page the requests use.
const XSTATE_MMIO_LEN: u64 = 16;
/// Size of the XSAVE area `KVM_GET_XSAVE` fills.
pub const XSAVE_AREA_BYTES: usize = 4096;
/// Offset of XSTATE_BV in the XSAVE header.
const XSTATE_BV_OFFSET: usize = 512;
/// XSTATE_BV bits of the legacy area: x87 and SSE.
const XSTATE_BV_LEGACY: u32 = 0b11;

/// The kernel switch that turns the guest's side on (part of
/// `config::cmdline::NESTED_PVM_CMDLINE`).
pub const CMDLINE_SWITCH: &str = "vmm_xstate=0xc0000000";

/// A guest request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XstateRequest {
    /// Write the vCPU's state to the area at this address.
    Save(GuestAddress),
    /// Load the vCPU's state from the area at this address.
    Load(GuestAddress),
}

/// Errors of one request; the guest is not told, the VMM logs them.
#[derive(Debug, thiserror::Error)]
pub enum XstateError {
    /// KVM would not read or write the vCPU's state.
    #[error("KVM refused the vCPU's extended state")]
    Kvm(#[source] kvm_ioctls::Error),
    /// The area is not in guest RAM.
    #[error("the XSAVE area at {0:#x} is not guest RAM")]
    Memory(u64),
}

/// Decodes an MMIO write as a request, or `None` when it is not one.
pub fn decode(addr: u64, data: &[u8]) -> Option<XstateRequest> {
    let offset = addr.checked_sub(XSTATE_MMIO_START)?;
    if offset >= XSTATE_MMIO_LEN {
        return None;
    }
    let area = GuestAddress(u64::from_le_bytes(data.try_into().ok()?));
    match offset {
        0 => Some(XstateRequest::Save(area)),
        8 => Some(XstateRequest::Load(area)),
        _ => None,
    }
}

/// Serves `request` for the vCPU `fd` on its own thread.
pub fn serve(
    fd: &VcpuFd,
    mem: &GuestMemoryMmap,
    request: XstateRequest,
) -> Result<(), XstateError> {
    match request {
        XstateRequest::Save(area) => {
            let state = fd.get_xsave().map_err(XstateError::Kvm)?;
            mem.write_slice(&to_bytes(&state), area)
                .map_err(|_| XstateError::Memory(area.0))
        }
        XstateRequest::Load(area) => {
            let mut bytes = [0u8; XSAVE_AREA_BYTES];
            mem.read_slice(&mut bytes, area)
                .map_err(|_| XstateError::Memory(area.0))?;
            let state = from_guest_area(&bytes);
            // SAFETY: `state` is a whole kvm_xsave (its 4 KiB region; no
            // trailing buffer), which is what KVM_SET_XSAVE reads.
            unsafe { fd.set_xsave(&state) }.map_err(XstateError::Kvm)
        }
    }
}

fn to_bytes(state: &kvm_xsave) -> [u8; XSAVE_AREA_BYTES] {
    let mut bytes = [0u8; XSAVE_AREA_BYTES];
    for (chunk, word) in bytes.chunks_exact_mut(4).zip(state.region.iter()) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    bytes
}

/// The guest's area as KVM takes it, with x87 and SSE marked present: the
/// kernel keeps the legacy area valid (FXSAVE's, or ours).
fn from_guest_area(bytes: &[u8; XSAVE_AREA_BYTES]) -> kvm_xsave {
    let mut state = kvm_xsave::default();
    for (word, chunk) in state.region.iter_mut().zip(bytes.chunks_exact(4)) {
        *word = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    state.region[XSTATE_BV_OFFSET / 4] |= XSTATE_BV_LEGACY;
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_switch_names_the_registers() {
        assert_eq!(CMDLINE_SWITCH, format!("vmm_xstate={XSTATE_MMIO_START:#x}"));
    }

    #[test]
    fn writes_to_the_two_registers_are_requests() {
        let area = 0x12_3000u64.to_le_bytes();
        assert_eq!(
            decode(XSTATE_MMIO_START, &area),
            Some(XstateRequest::Save(GuestAddress(0x12_3000)))
        );
        assert_eq!(
            decode(XSTATE_MMIO_START + 8, &area),
            Some(XstateRequest::Load(GuestAddress(0x12_3000)))
        );
    }

    #[test]
    fn other_writes_are_not_requests() {
        let area = 0x1000u64.to_le_bytes();
        assert_eq!(decode(XSTATE_MMIO_START + 4, &area), None, "unaligned");
        assert_eq!(
            decode(XSTATE_MMIO_START + 16, &area),
            None,
            "past the registers"
        );
        assert_eq!(decode(XSTATE_MMIO_START - 8, &area), None, "below");
        assert_eq!(
            decode(XSTATE_MMIO_START, &[1, 2, 3, 4]),
            None,
            "not 8 bytes"
        );
    }

    #[test]
    fn a_loaded_area_keeps_its_bytes_and_marks_the_legacy_state_present() {
        let mut bytes = [0u8; XSAVE_AREA_BYTES];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::try_from(i % 251).expect("below 251");
        }
        bytes[XSTATE_BV_OFFSET..XSTATE_BV_OFFSET + 8].copy_from_slice(&0x4u64.to_le_bytes());
        let state = from_guest_area(&bytes);
        let back = to_bytes(&state);
        assert_eq!(
            u64::from_le_bytes(
                back[XSTATE_BV_OFFSET..XSTATE_BV_OFFSET + 8]
                    .try_into()
                    .unwrap()
            ),
            0x7,
            "AVX kept, x87 and SSE added"
        );
        assert_eq!(back[..XSTATE_BV_OFFSET], bytes[..XSTATE_BV_OFFSET]);
        assert_eq!(back[XSTATE_BV_OFFSET + 8..], bytes[XSTATE_BV_OFFSET + 8..]);
    }
}
