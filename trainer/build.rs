//! Makes the `trainer` binary and this package's test executables find libtorch by
//! themselves, and keeps `libtorch_cuda` linked.
//!
//! * RPATH: torch-sys only adds a link search path, so without it the binary fails to start
//!   unless LD_LIBRARY_PATH points into libtorch.
//! * `--no-as-needed -ltorch_cuda`: nothing references libtorch_cuda's symbols directly (CUDA
//!   kernels register themselves from static initialisers), so the default `--as-needed`
//!   drops it and `Cuda::is_available()` is silently false on GPU hosts.
//!
//! `cargo:rustc-link-arg` applies to every binary, test, bench and example of this package.
//!
//! * `cfg(cuda_host)`: set when the build host has an NVIDIA driver, so the CUDA tests
//!   (tests/cuda.rs) run there and are listed as ignored, not passed, everywhere else.

use std::path::PathBuf;

fn main() {
    println!("cargo:rustc-check-cfg=cfg(cuda_host)");
    if std::path::Path::new("/proc/driver/nvidia/version").exists() {
        println!("cargo:rustc-cfg=cuda_host");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let lib_dir = match lib_dir() {
        Some(dir) => dir,
        None => {
            println!(
                "cargo:warning=libtorch library folder unknown (neither DEP_TCH_LIBTORCH_LIB nor LIBTORCH set); \
                 the trainer will need LD_LIBRARY_PATH to start"
            );
            return;
        }
    };
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "macos" {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
        return;
    }
    if target_os != "linux" {
        return;
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
}

/// torch-sys (`links = "tch"`) publishes the folder it linked against as `libtorch_lib`.
fn lib_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        if !dir.is_empty() {
            return Some(PathBuf::from(dir));
        }
    }
    let root = PathBuf::from(std::env::var_os("LIBTORCH")?);
    // `.cargo/config.toml` gives LIBTORCH relative to the workspace; make it absolute so the
    // RPATH does not depend on the current directory at run time.
    let root = if root.is_absolute() {
        root
    } else {
        let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
        manifest.parent()?.join(root)
    };
    Some(root.join("lib"))
}
