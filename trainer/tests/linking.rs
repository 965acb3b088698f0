//! The binary must start without LD_LIBRARY_PATH (RPATH to libtorch) and keep libtorch_cuda
//! linked (otherwise CUDA is silently unavailable on GPU hosts); see build.rs.

mod common;

use std::process::Command;

fn dynamic_section() -> String {
    let bin = env!("CARGO_BIN_EXE_trainer");
    let out = Command::new("readelf").args(["-d", bin]).output().expect("readelf runs (binutils installed)");
    assert!(out.status.success(), "readelf -d {bin} failed: {}", common::text(&out.stderr));
    common::text(&out.stdout)
}

/// The libtorch the build linked: `.cargo/config.toml` sets LIBTORCH for every compilation.
fn libtorch_lib_dir() -> std::path::PathBuf {
    match option_env!("LIBTORCH") {
        Some(dir) => std::path::Path::new(dir).join("lib"),
        None => common::workspace_root().join(".venv/libtorch/lib"),
    }
}

#[test]
fn binary_has_runpath_to_libtorch() {
    let dynamic = dynamic_section();
    let line = dynamic
        .lines()
        .find(|l| l.contains("(RUNPATH)") || l.contains("(RPATH)"))
        .unwrap_or_else(|| panic!("no RUNPATH/RPATH in the trainer binary:\n{dynamic}"));
    // The path must be the folder holding libtorch.so (compare canonically: .venv/libtorch is a symlink).
    let start = line.find('[').expect("readelf prints [path]") + 1;
    let end = line.rfind(']').expect("readelf prints [path]");
    let want = libtorch_lib_dir().canonicalize().expect("venv libtorch lib folder exists");
    let found =
        line[start..end].split(':').any(|p| std::path::Path::new(p).canonicalize().map(|c| c == want).unwrap_or(false));
    assert!(found, "RUNPATH {line:?} does not include {}", want.display());
}

#[test]
fn binary_needs_libtorch_and_libtorch_cuda() {
    let dynamic = dynamic_section();
    let needed: Vec<&str> = dynamic.lines().filter(|l| l.contains("(NEEDED)")).collect();
    assert!(needed.iter().any(|l| l.contains("[libtorch.so]")), "libtorch.so not NEEDED:\n{}", needed.join("\n"));
    if libtorch_lib_dir().join("libtorch_cuda.so").exists() {
        assert!(
            needed.iter().any(|l| l.contains("[libtorch_cuda.so]")),
            "this libtorch has libtorch_cuda.so but the binary does not NEED it (dropped by --as-needed):\n{}",
            needed.join("\n")
        );
    }
}

#[test]
fn binary_starts_without_ld_library_path() {
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .arg("--help")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("trainer binary starts");
    let stdout = common::text(&out.stdout);
    assert!(out.status.success(), "trainer --help failed: {}{}", stdout, common::text(&out.stderr));
    // --help lists every architecture (clap ValueEnum from models::Arch).
    for arch in models::Arch::ALL {
        assert!(stdout.contains(arch.name()), "--help does not list {arch}:\n{stdout}");
    }
}
