//! `containerd-shim-unipod-v2`: containerd's shim for the runtime
//! `io.containerd.unipod.v2`. All logic lives in `vmm::shim`.

fn main() {
    vmm::shim::main();
}
