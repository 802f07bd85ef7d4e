//! Format tests: every state struct round-trips, and each kind of damage
//! gets its own error.

use std::fs::File;
use std::path::PathBuf;

use kvm_bindings::{kvm_cpuid_entry2, kvm_irqchip, kvm_msr_entry};

use super::*;
use crate::devices::legacy::serial::SavedSerial;
use crate::devices::virtio::mmio::{MmioState, SavedQueue};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("unipod-snap-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A snapshot whose every state struct has non-default values, with a
/// 64 KiB memory file.
fn sample(dir: &Path) -> Snapshot {
    let memory: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join(MEMORY_FILE), &memory).expect("memory file");
    let mut vcpu: VcpuState =
        serde_json::from_str(&serde_json::to_string(&blank_vcpu()).unwrap()).unwrap();
    vcpu.regs.rip = 0xffff_ffff_8100_0000;
    vcpu.sregs.cr3 = 0x1000;
    vcpu.xsave.region[7] = 0x1f80;
    vcpu.lapic.regs[0x20] = 1;
    vcpu.msrs.push(kvm_msr_entry {
        index: 0x10,
        data: 12345,
        ..Default::default()
    });
    vcpu.cpuid.push(kvm_cpuid_entry2 {
        function: 0x4000_0001,
        eax: 7,
        ..Default::default()
    });
    let mut ioapic = kvm_irqchip {
        chip_id: 2,
        ..Default::default()
    };
    // SAFETY: `dummy` is the raw byte view of the irqchip union.
    unsafe { ioapic.chip.dummy[3] = 9 };
    let mut serial = SavedSerial(vm_superio::serial::SerialState::default());
    serial.0.scratch = 0x5a;
    let queue = virtio_queue::QueueState {
        max_size: 256,
        size: 128,
        ready: true,
        desc_table: 0x1000,
        ..Default::default()
    };
    Snapshot {
        key: "00112233aabbccdd".into(),
        info: SnapshotInfo {
            kernel: "vmlinux".into(),
            initrd: Some("initramfs.cpio".into()),
            mem_mib: 128,
            vcpus: 1,
            created_unix: 1_800_000_000,
            free_page_reporting: true,
        },
        vm: VmState {
            irqchips: vec![
                kvm_irqchip::default(),
                kvm_irqchip {
                    chip_id: 1,
                    ..Default::default()
                },
                ioapic,
            ],
            pit: Default::default(),
            clock: kvm_bindings::kvm_clock_data {
                clock: 42,
                ..Default::default()
            },
        },
        vcpus: vec![vcpu],
        devices: DevicesState {
            serial,
            vsock: Some(MmioState {
                status: 0xf,
                driver_features: 1 << 32,
                queue_select: 2,
                device_features_select: 1,
                driver_features_select: 1,
                activated: true,
                interrupt_status: 1,
                queues: vec![SavedQueue(queue); 3],
                config_generation: 0,
            }),
            net: None,
            blocks: vec![
                MmioState {
                    status: 0xf,
                    driver_features: 1 << 32 | 1 << 5,
                    queue_select: 0,
                    device_features_select: 0,
                    driver_features_select: 0,
                    activated: true,
                    interrupt_status: 2,
                    queues: vec![SavedQueue(queue)],
                    config_generation: 1,
                },
                MmioState {
                    status: 0,
                    driver_features: 0,
                    queue_select: 0,
                    device_features_select: 0,
                    driver_features_select: 0,
                    activated: false,
                    interrupt_status: 0,
                    queues: vec![SavedQueue(virtio_queue::QueueState::default())],
                    config_generation: 0,
                },
            ],
            balloon: None,
        },
        memory: vec![RegionState {
            guest_addr: 0,
            len: memory.len() as u64,
            file_offset: 0,
        }],
        memory_len: memory.len() as u64,
        memory_hash: xxh3_64(&memory),
    }
}

fn blank_vcpu() -> serde_json::Value {
    serde_json::json!({
        "cpuid": [],
        "mp_state": kvm_bindings::kvm_mp_state::default(),
        "regs": kvm_bindings::kvm_regs::default(),
        "sregs": kvm_bindings::kvm_sregs::default(),
        "xsave": kvm_bindings::kvm_xsave::default(),
        "xcrs": null,
        "debug_regs": kvm_bindings::kvm_debugregs::default(),
        "lapic": kvm_bindings::kvm_lapic_state::default(),
        "msrs": [],
        "events": kvm_bindings::kvm_vcpu_events::default(),
    })
}

fn json(s: &Snapshot) -> String {
    serde_json::to_string(s).expect("serializable")
}

#[test]
fn every_state_struct_round_trips() {
    let dir = TempDir::new("roundtrip");
    let original = sample(&dir.0);
    original.write_state(&dir.0).expect("written");
    let (back, _memory) =
        Snapshot::open(&dir.0, &original.key, &HashMemo::default()).expect("opened");
    assert_eq!(json(&back), json(&original));
    assert_eq!(back.vcpus[0].regs.rip, 0xffff_ffff_8100_0000);
    assert_eq!(back.devices, original.devices);
    assert_eq!(back.devices.blocks[0].config_generation, 1);
}

#[test]
fn a_truncated_state_file_is_refused() {
    let dir = TempDir::new("trunc");
    sample(&dir.0).write_state(&dir.0).unwrap();
    let path = dir.0.join(STATE_FILE);
    let len = std::fs::metadata(&path).unwrap().len();
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let err = Snapshot::read_state(&dir.0).unwrap_err();
    assert!(matches!(err, SnapshotError::Truncated { .. }), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn a_flipped_byte_fails_the_checksum() {
    let dir = TempDir::new("corrupt");
    sample(&dir.0).write_state(&dir.0).unwrap();
    let path = dir.0.join(STATE_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let err = Snapshot::read_state(&dir.0).unwrap_err();
    assert!(matches!(err, SnapshotError::Checksum(_)), "{err}");
}

#[test]
fn another_format_version_is_refused() {
    let dir = TempDir::new("version");
    sample(&dir.0).write_state(&dir.0).unwrap();
    let path = dir.0.join(STATE_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let err = Snapshot::read_state(&dir.0).unwrap_err();
    assert!(
        matches!(err, SnapshotError::Version { found, .. } if found == FORMAT_VERSION + 1),
        "{err}"
    );
}

#[test]
fn a_foreign_file_is_not_a_snapshot() {
    let dir = TempDir::new("foreign");
    std::fs::write(dir.0.join(STATE_FILE), b"{\"json\": true}").unwrap();
    let err = Snapshot::read_state(&dir.0).unwrap_err();
    assert!(matches!(err, SnapshotError::NotASnapshot(_)), "{err}");
}

#[test]
fn other_inputs_do_not_fit() {
    let dir = TempDir::new("key");
    sample(&dir.0).write_state(&dir.0).unwrap();
    let err = Snapshot::open(&dir.0, "ffffffffffffffff", &HashMemo::default()).unwrap_err();
    assert!(matches!(err, SnapshotError::KeyMismatch { .. }), "{err}");
}

#[test]
fn damaged_memory_files_are_refused() {
    let dir = TempDir::new("memory");
    let snap = sample(&dir.0);
    snap.write_state(&dir.0).unwrap();
    let path = dir.0.join(MEMORY_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let err = Snapshot::open(&dir.0, &snap.key, &HashMemo::default()).unwrap_err();
    assert!(matches!(err, SnapshotError::Checksum(_)), "{err}");
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let err = Snapshot::open(&dir.0, &snap.key, &HashMemo::default()).unwrap_err();
    assert!(
        matches!(err, SnapshotError::Truncated { found: 4096, .. }),
        "{err}"
    );
}

#[test]
fn the_key_follows_every_input() {
    let dir = TempDir::new("inputs");
    let kernel = dir.0.join("vmlinux");
    std::fs::write(&kernel, b"kernel v1").unwrap();
    let config = VmConfig {
        kernel: kernel.clone(),
        ..Default::default()
    };
    let base = key(&config, CpuTemplate::NestedPvm, &HashMemo::default()).unwrap();
    assert_eq!(
        base,
        key(&config, CpuTemplate::NestedPvm, &HashMemo::default()).unwrap(),
        "stable"
    );
    let changed = [
        key(
            &VmConfig {
                mem_mib: 256,
                ..config.clone()
            },
            CpuTemplate::NestedPvm,
            &HashMemo::default(),
        ),
        key(
            &VmConfig {
                vcpus: 2,
                ..config.clone()
            },
            CpuTemplate::NestedPvm,
            &HashMemo::default(),
        ),
        key(
            &VmConfig {
                extra_cmdline: "x=1".into(),
                ..config.clone()
            },
            CpuTemplate::NestedPvm,
            &HashMemo::default(),
        ),
        key(&config, CpuTemplate::Host, &HashMemo::default()),
        key(
            &VmConfig {
                free_page_reporting: true,
                ..config.clone()
            },
            CpuTemplate::NestedPvm,
            &HashMemo::default(),
        ),
        key(
            &VmConfig {
                disks: vec![crate::config::BlockConfig::slot()],
                ..config.clone()
            },
            CpuTemplate::NestedPvm,
            &HashMemo::default(),
        ),
    ];
    for k in changed {
        assert_ne!(k.unwrap(), base);
    }
    // A disk's image does not count, only how many disks there are.
    let slot = VmConfig {
        disks: vec![crate::config::BlockConfig::slot()],
        ..config.clone()
    };
    let image = VmConfig {
        disks: vec![crate::config::BlockConfig::image(dir.0.join("no-such.img"))],
        ..config.clone()
    };
    assert_eq!(
        key(&slot, CpuTemplate::NestedPvm, &HashMemo::default()).unwrap(),
        key(&image, CpuTemplate::NestedPvm, &HashMemo::default()).unwrap(),
        "a slot and an image fit the same snapshot"
    );
    std::fs::write(&kernel, b"kernel v2").unwrap();
    assert_ne!(
        key(&config, CpuTemplate::NestedPvm, &HashMemo::default()).unwrap(),
        base,
        "kernel contents"
    );
}
