// Link arguments for the guest images only: the per-arch linker script lives in boot/<arch>/.
// Host builds (tests, the harness) get nothing from here.
fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    println!("cargo:rerun-if-changed=build.rs");
    let arch = if target.starts_with("x86_64-unknown-none") {
        "x86_64"
    } else if target.starts_with("powerpc64le-") {
        "ppc64"
    } else {
        return;
    };
    println!("cargo:rerun-if-changed=boot/{arch}");
    println!("cargo:rustc-link-arg-bins=-T{dir}/boot/{arch}/linker.ld");
    if arch == "ppc64" {
        // A static position-independent image that relocates itself: QEMU loads it wherever the
        // machine's kernel-addr and the firmware put it.
        println!("cargo:rustc-link-arg-bins=--pie");
        println!("cargo:rustc-link-arg-bins=--no-dynamic-linker");
        println!("cargo:rustc-link-arg-bins=-znotext");
        // One segment, no 64 KiB page alignment padding in the file (real mode has no pages).
        println!("cargo:rustc-link-arg-bins=-zmax-page-size=4096");
    }
}
