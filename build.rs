//! `PXESRV_E2E=1` at build time enables the end-to-end tests (QEMU, iSCSI, namespaces); without
//! it they are compiled as `#[ignore]`d with a reason, so `cargo test` reports them as ignored,
//! never as passed.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(pxesrv_e2e)");
    println!("cargo::rerun-if-env-changed=PXESRV_E2E");
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var("PXESRV_E2E").as_deref() == Ok("1") {
        println!("cargo::rustc-cfg=pxesrv_e2e");
    }
}
