//! How the `palisade` binary is linked (bench/README.md, "RSS"): the functions a proxy runs
//! first in .text, in the order link/hot-symbols.txt lists them (written by bench/hot-symbols),
//! and relative relocations packed (DT_RELR: glibc 2.36 or later). The kernel maps a binary's
//! code 64 KB around each page fault, so a proxy whose code is spread over the whole binary,
//! between the controller's and the CLI's, maps most of it.
//!
//! Both are options of LLD, the linker Rust uses by default for x86_64-unknown-linux-gnu since
//! 1.90. With another target, an older toolchain or a linker of one's own (`-C linker`,
//! `RUSTC_LINKER`), the binary is linked as before.

use std::path::Path;
use std::process::Command;

/// The target on which rustc links with its own LLD by default.
const LLD_TARGET: &str = "x86_64-unknown-linux-gnu";
/// The first Rust release that does.
const LLD_SINCE_MINOR: u32 = 90;

fn main() {
    let order = Path::new(env!("CARGO_MANIFEST_DIR")).join("link/hot-symbols.txt");
    println!("cargo::rerun-if-changed={}", order.display());
    println!("cargo::rerun-if-env-changed=RUSTC_LINKER");
    if !links_with_rust_lld() {
        return;
    }
    for arg in [
        format!("-Wl,--symbol-ordering-file={}", order.display()),
        // Names the build does not have (another build's hashes) are skipped, not reported.
        "-Wl,--no-warn-symbol-ordering".to_string(),
        "-Wl,-z,pack-relative-relocs".to_string(),
    ] {
        println!("cargo::rustc-link-arg-bin=palisade={arg}");
    }
}

/// Whether rustc will link this build with its own LLD: the target and release that use it by
/// default, LLD present in the toolchain, and no linker chosen in the flags or the config.
fn links_with_rust_lld() -> bool {
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    if env("TARGET") != LLD_TARGET
        || !env("RUSTC_LINKER").is_empty()
        // A linker, its flavour or features, or link arguments of one's own: left alone.
        || env("CARGO_ENCODED_RUSTFLAGS").contains("link")
    {
        return false;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let output = |args: &[&str]| {
        Command::new(&rustc)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let minor = output(&["-vV"])
        .lines()
        .find_map(|l| l.strip_prefix("release: 1."))
        .and_then(|rest| rest.split('.').next()?.parse::<u32>().ok());
    let sysroot = output(&["--print", "sysroot"]);
    minor.is_some_and(|m| m >= LLD_SINCE_MINOR)
        && Path::new(&sysroot)
            .join("lib/rustlib")
            .join(LLD_TARGET)
            .join("bin/gcc-ld/ld.lld")
            .exists()
}
