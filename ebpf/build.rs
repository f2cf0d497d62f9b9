//! Compiles the kernel-side programs (C, see docs/design.md for why) with clang and
//! generates Rust bindings for the structures they share with userspace, so
//! each layout is written once, in `include/shared.h`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One object per attach point; the maps inside are pinned by name, so all
/// objects of a node share them.
const PROGRAMS: &[&str] = &["pod", "uplink", "xdp", "xdp_pass", "sock"];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let include = manifest.join("include");
    println!("cargo:rerun-if-changed=include");
    println!("cargo:rerun-if-changed=programs");
    println!("cargo:rerun-if-env-changed=STRAKE_CLANG");

    let clang = find_clang();
    for name in PROGRAMS {
        let src = manifest.join("programs").join(format!("{name}.c"));
        let obj = out.join(format!("{name}.o"));
        compile(&clang, &src, &include, &obj);
    }

    let bindings = bindgen::Builder::default()
        .header(include.join("shared.h").to_string_lossy())
        .clang_arg(format!("-I{}", multiarch_include()))
        .allowlist_type("endpoint_info|counter_value|strake_counter|svc_key|svc_info|backend_info|slot_key|flow_key|ct_key|ct_entry|strake_ct_kind|affinity_key|affinity_entry|lb_stats|lb_config|ipcache_key|policy_key|policy_key_data|policy_verdict|pol_config|strake_direction|trust_config|dsr_target_key|sock_rev_key|sock_rev_entry|sock_fwd_key|sock_lb_stats|lb_source_key|masq_config")
        .allowlist_var("STRAKE_.*")
        .derive_default(true)
        .derive_eq(true)
        .derive_hash(true)
        .prepend_enum_name(false)
        .generate()
        .expect("bindgen could not read ebpf/include/shared.h");
    bindings
        .write_to_file(out.join("shared.rs"))
        .expect("write shared.rs");
}

fn find_clang() -> String {
    if let Ok(c) = env::var("STRAKE_CLANG") {
        return c;
    }
    for c in ["clang-19", "clang"] {
        if Command::new(c).arg("--version").output().is_ok() {
            return c.to_string();
        }
    }
    panic!(
        "no clang found to build the eBPF programs: install clang-19 \
         (scripts/install-deps.sh does) or set STRAKE_CLANG"
    );
}

fn multiarch_include() -> String {
    // asm/types.h lives under the multiarch directory on Debian.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    format!("/usr/include/{arch}-linux-gnu")
}

fn compile(clang: &str, src: &Path, include: &Path, obj: &Path) {
    let status = Command::new(clang)
        .args([
            "-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror",
        ])
        .arg(format!("-I{}", include.display()))
        .arg(format!("-I{}", multiarch_include()))
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(obj)
        .status()
        .unwrap_or_else(|e| panic!("running {clang}: {e}"));
    assert!(status.success(), "clang failed on {}", src.display());
}
