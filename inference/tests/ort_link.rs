#![cfg(feature = "ort")]
//! ONNX Runtime opened through a link is opened as the file the link names, so that it finds
//! its execution-provider libraries (CUDA's among them) beside that file, not beside the link.
//! Its own process: the runtime is loaded once per process.

use std::path::PathBuf;

#[test]
fn a_linked_library_is_opened_as_the_file_it_names() {
    let named = inference::ort_library_candidates()
        .into_iter()
        .find(|p| p.exists())
        .expect("libonnxruntime is installed (bash scripts/setup.sh)");
    let real = std::fs::canonicalize(&named).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("libonnxruntime.so");
    std::os::unix::fs::symlink(&named, &link).unwrap();
    std::env::set_var(inference::ORT_DYLIB_ENV, &link);

    let opened: PathBuf = inference::ort_library().unwrap();
    assert_eq!(opened, real, "opened through {}", link.display());
    // The provider bridge every execution provider loads lies beside the real file only.
    assert!(opened.with_file_name("libonnxruntime_providers_shared.so").exists(), "{}", opened.display());
    assert!(!link.with_file_name("libonnxruntime_providers_shared.so").exists());
}
