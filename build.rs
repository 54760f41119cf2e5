//! Builds the small C++ shim over OpenJPEG (JPEG 2000) and OpenJPH (HTJ2K) encoders
//! (`src/dicom/encode/shim.cpp`), the codecs of `dicom::encode` that have no Rust crate.
//! Debian: `libopenjp2-7-dev libopenjph-dev` (tests/run installs them).
//!
//! OpenJPEG comes from the static library with every symbol it defines renamed `kura_opj_…`:
//! the `openjp2` crate (dicom-pixeldata's JPEG 2000 decoder, a Rust port of OpenJPEG) exports
//! the same C names, and the linker would otherwise bind the shim's calls to the port.

use std::path::{Path, PathBuf};
use std::process::Command;

const OPENJPEG_ARCHIVES: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/libopenjp2.a",
    "/usr/lib/aarch64-linux-gnu/libopenjp2.a",
    "/usr/local/lib/libopenjp2.a",
];

fn main() {
    println!("cargo:rerun-if-changed=src/dicom/encode/shim.cpp");
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let archive = OPENJPEG_ARCHIVES
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("libopenjp2.a not found: install libopenjp2-7-dev");
    let nm = Command::new("nm").args(["-g", "--defined-only"]).arg(archive).output().expect("nm (binutils)");
    let mut renames = String::new();
    for line in String::from_utf8_lossy(&nm.stdout).lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [_, kind, name] = fields[..]
            && kind != "U"
            && !renames.contains(&format!("{name} "))
        {
            renames.push_str(&format!("{name} kura_{name}\n"));
        }
    }
    let map = out.join("openjp2.renames");
    std::fs::write(&map, &renames).expect("write renames");
    let renamed = out.join("libkura_openjp2.a");
    let status = Command::new("objcopy")
        .arg(format!("--redefine-syms={}", map.display()))
        .arg(archive)
        .arg(&renamed)
        .status()
        .expect("objcopy (binutils)");
    assert!(status.success(), "objcopy failed");

    let mut build = cc::Build::new();
    build.cpp(true).std("c++14").file("src/dicom/encode/shim.cpp").warnings(true).define("KURA_RENAMED_OPENJPEG", None);
    for dir in [
        "/usr/include/openjpeg-2.5",
        "/usr/include/openjph",
        "/usr/local/include/openjpeg-2.5",
        "/usr/local/include/openjph",
    ] {
        if Path::new(dir).is_dir() {
            build.include(dir);
        }
    }
    build.compile("kura_codec_shim");
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=kura_openjp2");
    println!("cargo:rustc-link-lib=openjph");
    println!("cargo:rustc-link-lib=m");
    println!("cargo:rustc-link-lib=pthread");
}
