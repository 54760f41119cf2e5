//! Lossless encoding on request (`kura::dicom::encode`, issue 19): frames per second and size
//! relative to native for each codec (JPEG-LS, JPEG XL, JPEG 2000, HTJ2K), on real CT and MR
//! frames from pydicom's test files, one frame each, on one core (the server encodes one frame
//! per codec permit). That the codestreams decode pixel-exact is what the unit tests
//! (`dicom::encode::tests`), tests/it/encode.rs and tests/interop/test_lossless_encoding.py check;
//! this program only measures.
//!
//! `cargo bench --bench lossless_encode`. The files are found in pydicom's data directory
//! (`python3 -c 'import pydicom'` must work), or in `KURA_BENCH_DIR`. `KURA_BENCH_SECS` (default
//! 2) is the time spent per codec and file.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dicom_object::{OpenFileOptions, file::ReadPreamble};
use kura::dicom::encode::{Codec, encode_frame, native_frame};

/// (file, what it is): the 512×512 CT is the one the figures are about.
const FILES: &[(&str, &str)] = &[
    ("J2K_pixelrep_mismatch.dcm", "CT 512×512, 13-bit signed (stored J2K lossless)"),
    ("CT_small.dcm", "CT 128×128, 16-bit signed"),
    ("MR_small.dcm", "MR 64×64, 16-bit signed"),
    ("examples_overlay.dcm", "MR 484×300, 12-bit"),
    ("examples_rgb_color.dcm", "RGB 320×240, 8-bit"),
];

fn data_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("KURA_BENCH_DIR") {
        return Some(PathBuf::from(dir));
    }
    let out = std::process::Command::new("python3")
        .args(["-c", "import os, pydicom.data; print(os.path.dirname(pydicom.data.__file__))"])
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("test_files");
    dir.is_dir().then_some(dir)
}

fn main() {
    let Some(dir) = data_dir() else {
        eprintln!("pydicom's test files not found: pip install pydicom, or set KURA_BENCH_DIR");
        std::process::exit(2);
    };
    let secs: f64 = std::env::var("KURA_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    println!("| image | codec | frames/s | ms/frame | size vs native |");
    println!("|---|---|---|---|---|");
    let mut totals = [(0u64, 0u64); 4];
    for (file, what) in FILES {
        let path = dir.join(file);
        let Ok(object) = OpenFileOptions::new().read_preamble(ReadPreamble::Always).open_file(&path) else {
            eprintln!("skipping {file}: not readable");
            continue;
        };
        let (format, native) = native_frame(&object, 0).expect("decodes");
        for (i, codec) in Codec::SMALLEST_FIRST.into_iter().enumerate() {
            let encoded = encode_frame(codec, &format, &native).expect("encodes");
            assert!(!encoded.is_empty(), "{codec:?}");
            let started = Instant::now();
            let mut n = 0u32;
            while started.elapsed() < Duration::from_secs_f64(secs) || n < 3 {
                std::hint::black_box(encode_frame(codec, &format, &native).expect("encodes"));
                n += 1;
            }
            let per_frame = started.elapsed().as_secs_f64() / f64::from(n);
            let ratio = encoded.len() as f64 / native.len() as f64;
            totals[i].0 += encoded.len() as u64;
            totals[i].1 += native.len() as u64;
            println!(
                "| {what} | {} | {:.1} | {:.2} | {:.1}% |",
                codec.name(),
                1.0 / per_frame,
                per_frame * 1000.0,
                ratio * 100.0
            );
        }
    }
    println!();
    println!("| codec | bytes of all frames vs native |");
    println!("|---|---|");
    for (i, codec) in Codec::SMALLEST_FIRST.into_iter().enumerate() {
        println!("| {} | {:.1}% |", codec.name(), totals[i].0 as f64 / totals[i].1.max(1) as f64 * 100.0);
    }
}
