//! Rebuild when `bpf-linker` changes: linking the object has an undeclared
//! dependency on that binary. Without it on `PATH` this does nothing, so the
//! host-side library target still builds (`cargo check` on machines without
//! the eBPF toolchain).

fn main() {
    if let Ok(bpf_linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
