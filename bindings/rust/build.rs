//! Links libvramguard.so: from VRAMGUARD_LIB_DIR when set, else from the
//! libdir pkg-config gives for `vramguard` (vramguard.pc, installed by
//! `make install`), else from the linker's default paths (with a warning).
//! std only: no build dependencies.
use std::env;
use std::process::Command;

fn pkg_config_libdir() -> Option<String> {
    let tool = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".into());
    let out = Command::new(tool)
        .args(["--variable=libdir", "vramguard"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!dir.is_empty()).then_some(dir)
}

fn main() {
    println!("cargo:rerun-if-env-changed=VRAMGUARD_LIB_DIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    match env::var("VRAMGUARD_LIB_DIR") {
        Ok(dir) if !dir.is_empty() => println!("cargo:rustc-link-search=native={dir}"),
        _ => match pkg_config_libdir() {
            Some(dir) => println!("cargo:rustc-link-search=native={dir}"),
            None => println!(
                "cargo:warning=vramguard: neither VRAMGUARD_LIB_DIR nor pkg-config's vramguard \
                 found; linking -lvramguard from the default library paths"
            ),
        },
    }
    println!("cargo:rustc-link-lib=dylib=vramguard");
}
