//! The KVM VM: its fd, guest memory, in-kernel irqchip and PIT.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
    KVM_CLOCK_TSC_STABLE, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

/// Errors while creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Opening /dev/kvm failed.
    #[error("cannot open /dev/kvm; is KVM available and are you root (or in the kvm group)?")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// A KVM VM ioctl failed.
    #[error("cannot {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
}

/// The VM-wide state KVM keeps: interrupt controllers, PIT and kvmclock.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmState {
    /// The two 8259 PICs and the IOAPIC, in that order.
    pub irqchips: Vec<kvm_irqchip>,
    /// The 8254 PIT.
    pub pit: kvm_pit_state2,
    /// The kvmclock value when the VM was paused.
    pub clock: kvm_clock_data,
}

const IRQCHIPS: [u32; 3] = [
    KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQCHIP_IOAPIC,
];

/// TSS location for Intel VMX; inside the MMIO gap, below the IOAPIC.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// A VM and the memory it runs on.
pub struct Vm {
    // Declared before `memory` so the VM is destroyed before its memory is
    // unmapped.
    fd: VmFd,
    memory: GuestMemoryMmap,
}

impl Vm {
    /// Creates a VM on `kvm` with `memory`, the irqchip and the PIT.
    pub fn new(kvm: &Kvm, memory: GuestMemoryMmap) -> Result<Vm, VmError> {
        let fd = kvm
            .create_vm()
            .map_err(|e| VmError::Kvm("create a KVM VM", e))?;
        for (slot, region) in memory.iter().enumerate() {
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .expect("offset 0 is inside every region");
            let mem_region = kvm_userspace_memory_region {
                slot: u32::try_from(slot).expect("at most two RAM regions"),
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: `host` maps `region.len()` bytes that `memory` keeps
            // mapped for as long as `fd` lives (see the field order above).
            unsafe { fd.set_user_memory_region(mem_region) }
                .map_err(|e| VmError::Kvm("register guest memory with KVM", e))?;
        }
        // Only VMX needs the TSS area; SVM and PVM may refuse it harmlessly.
        if let Err(e) = fd.set_tss_address(KVM_TSS_ADDRESS) {
            log::debug!("KVM_SET_TSS_ADDR refused ({e}); fine on non-VMX hosts");
        }
        fd.create_irq_chip()
            .map_err(|e| VmError::Kvm("create the in-kernel irqchip", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(|e| VmError::Kvm("create the in-kernel PIT", e))?;
        Ok(Vm { fd, memory })
    }

    /// Reads the VM-wide state; the vCPUs must be paused.
    pub fn save_state(&self) -> Result<VmState, VmError> {
        let irqchips = IRQCHIPS
            .iter()
            .map(|&chip_id| {
                let mut chip = kvm_irqchip {
                    chip_id,
                    ..Default::default()
                };
                self.fd
                    .get_irqchip(&mut chip)
                    .map(|()| chip)
                    .map_err(|e| VmError::Kvm("read the irqchip state", e))
            })
            .collect::<Result<_, _>>()?;
        let mut clock = self
            .fd
            .get_clock()
            .map_err(|e| VmError::Kvm("read the kvmclock", e))?;
        // Only the clock value carries over; the flags describe this host.
        clock.flags &= !KVM_CLOCK_TSC_STABLE;
        Ok(VmState {
            irqchips,
            pit: self
                .fd
                .get_pit2()
                .map_err(|e| VmError::Kvm("read the PIT state", e))?,
            clock,
        })
    }

    /// Gives a new VM a saved state.
    pub fn restore_state(&self, state: &VmState) -> Result<(), VmError> {
        self.fd
            .set_pit2(&state.pit)
            .map_err(|e| VmError::Kvm("restore the PIT state", e))?;
        let clock = kvm_clock_data {
            clock: state.clock.clock,
            ..Default::default()
        };
        self.fd
            .set_clock(&clock)
            .map_err(|e| VmError::Kvm("restore the kvmclock", e))?;
        for chip in &state.irqchips {
            self.fd
                .set_irqchip(chip)
                .map_err(|e| VmError::Kvm("restore the irqchip state", e))?;
        }
        Ok(())
    }

    /// The VM fd.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }
}
