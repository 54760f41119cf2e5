//! The short mode of the fuzz targets, for CI: the bodies of tests/fuzz/bodies.rs (the same ones
//! the cargo-fuzz binaries run) in the normal release test build on the stable toolchain, with no
//! sanitizer and no coverage guidance. For each target it replays every seed (the committed
//! `seeds/<target>/`, the `regressions/<target>/` crashers, seeds generated here from the test
//! fixtures, and pydicom's DICOM test files when pydicom is installed), then
//! `KURA_FUZZ_SMOKE_ITERS` deterministic mutations of them (bit flips, interesting bytes,
//! truncations, length-field edits, insertions, deletions, duplications and splices; a fixed
//! seed, `KURA_FUZZ_SMOKE_SEED` to vary it). The bodies assert their invariants and a heap
//! bound per input; a failing input is written to `$CARGO_TARGET_DIR/fuzz-smoke-failures/`.
//!
//! The long mode is tests/fuzz/run.sh (cargo fuzz, libFuzzer + AddressSanitizer).

#[path = "bodies.rs"]
mod bodies;

#[path = "../support/fixtures.rs"]
#[allow(dead_code)]
mod fixtures;

use std::path::{Path, PathBuf};
use std::time::Instant;

/// Mutations per target when `KURA_FUZZ_SMOKE_ITERS` is not set: all targets together take
/// about 12 s on the idle development machine (part10 3 s, metadata_writers 5.5 s; up to 22 s
/// while other builds run), inside the 60 s the CI budget gives the short mode.
const DEFAULT_ITERS: u64 = 40_000;

/// A small deterministic generator (SplitMix64): the same seed gives the same mutations on
/// every machine and toolchain.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

const INTERESTING_8: [u8; 8] = [0x00, 0x01, 0x7F, 0x80, 0xFF, b'\\', b'=', b'^'];
const INTERESTING_32: [u32; 9] = [0, 1, 2, 0x7F, 0xFF, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFE, 0xFFFF_FFFF];

/// One to four random edits of `input` (some with `other`, another seed, spliced in), at most
/// `max_len` bytes long.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8], max_len: usize) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        match rng.below(10) {
            // A bit flip.
            0 if len > 0 => {
                let at = rng.below(len);
                data[at] ^= 1 << rng.below(8);
            }
            // An interesting byte.
            1 if len > 0 => {
                let at = rng.below(len);
                data[at] = INTERESTING_8[rng.below(INTERESTING_8.len())];
            }
            // A random byte.
            2 if len > 0 => {
                let at = rng.below(len);
                data[at] = rng.next() as u8;
            }
            // Truncation.
            3 if len > 0 => data.truncate(rng.below(len)),
            // A length field: a 32-bit or 16-bit little-endian value set to an edge value, the
            // input's length, or nudged by one (DICOM value lengths, offset tables, counts).
            4 | 5 if len >= 4 => {
                let at = rng.below(len - 3);
                let current = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
                let value = match rng.below(4) {
                    0 => INTERESTING_32[rng.below(INTERESTING_32.len())],
                    1 => len as u32,
                    2 => current.wrapping_add(1),
                    _ => current.wrapping_sub(1),
                };
                if rng.below(2) == 0 {
                    data[at..at + 4].copy_from_slice(&value.to_le_bytes());
                } else {
                    data[at..at + 2].copy_from_slice(&(value as u16).to_le_bytes());
                }
            }
            // Insert a few bytes.
            6 => {
                let at = rng.below(len + 1);
                let count = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..count).map(|_| INTERESTING_8[rng.below(INTERESTING_8.len())]).collect();
                data.splice(at..at, bytes);
            }
            // Delete a run.
            7 if len > 0 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(64)).min(len);
                data.drain(at..end);
            }
            // Duplicate a run (repeated elements, items, parameters).
            8 if len > 0 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(256)).min(len);
                let run = data[at..end].to_vec();
                let to = rng.below(len + 1);
                data.splice(to..to, run);
            }
            // Splice: this input's head, the other seed's tail.
            _ if !other.is_empty() => {
                let keep = rng.below(len + 1);
                let from = rng.below(other.len());
                data.truncate(keep);
                data.extend_from_slice(&other[from..]);
            }
            _ => {}
        }
    }
    data.truncate(max_len);
    data
}

fn read_dir_files(dir: &Path, into: &mut Vec<(String, Vec<u8>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let name = path.file_name().unwrap_or_default().to_string_lossy().to_string();
        if path.is_file() && !name.ends_with(".md") {
            into.push((path.display().to_string(), std::fs::read(&path).expect("seed readable")));
        }
    }
}

/// pydicom's DICOM test files of at most 64 KiB (those seeds.py uses), when pydicom is installed.
fn pydicom_files() -> Vec<(String, Vec<u8>)> {
    let output = std::process::Command::new("python3")
        .args(["-c", "import pathlib, pydicom; print(pathlib.Path(pydicom.__file__).parent / 'data')"])
        .output();
    let Some(output) = output.ok().filter(|o| o.status.success()) else {
        assert!(
            std::env::var_os("KURA_FUZZ_SMOKE_REQUIRE_PYDICOM").is_none(),
            "KURA_FUZZ_SMOKE_REQUIRE_PYDICOM is set but python3 cannot import pydicom"
        );
        eprintln!("fuzz_smoke: pydicom is not installed; the part10 seeds are the generated ones only");
        return Vec::new();
    };
    let data = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let mut files = Vec::new();
    for directory in ["test_files", "charset_files"] {
        let mut found = Vec::new();
        read_dir_files(&data.join(directory), &mut found);
        files.extend(
            found.into_iter().filter(|(_, bytes)| bytes.len() <= 64 * 1024 && bytes.get(128..132) == Some(b"DICM")),
        );
    }
    files
}

/// Valid PS3.10 files from the test fixtures: native (one and several frames, both explicit
/// and implicit VR little endian), RLE with one fragment per frame, an Extended Offset Table.
fn generated_instances() -> Vec<(String, Vec<u8>)> {
    use fixtures::*;
    let mut out = vec![
        ("generated:ct_slice".to_string(), ct_slice(1, 1, 1)),
        ("generated:multiframe".to_string(), instance(&Spec::new(2, 1, 1).size(4, 4, 3))),
        ("generated:rle".to_string(), rle_instance(&Spec::new(3, 1, 1).size(8, 8, 2))),
        ("generated:eot".to_string(), extended_offset_table_instance(&Spec::new(4, 1, 1).size(4, 4, 2), 2).0),
    ];
    out.push((
        "generated:implicit".to_string(),
        part10_in(dataset(&Spec::new(5, 1, 1).size(4, 4, 1)), "1.2.840.10008.1.2"),
    ));
    out
}

/// Seeds of the `frame_map` input format (see `bodies::frame_map`).
fn frame_map_seeds() -> Vec<(String, Vec<u8>)> {
    let header = |mode: u8, rows: u16, columns: u16, samples: u16, bits: u16, frames: u32| {
        let mut out = vec![mode];
        for v in [rows, columns, samples, bits] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&frames.to_le_bytes());
        out
    };
    let mut native = header(0, 4, 4, 1, 16, 3);
    native.extend_from_slice(&96u32.to_le_bytes());
    // Encapsulated, 2 frames over 5 fragments, a Basic Offset Table of 2 entries (0 and the
    // third fragment's header: 3 × (8 + 10) = 54), markers on fragments 1 and 4.
    let mut table = header(3, 4, 4, 1, 8, 2);
    table.extend_from_slice(&2u16.to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes());
    table.extend_from_slice(&54u32.to_le_bytes());
    for flag in [1u8, 0, 0, 1, 0] {
        table.extend_from_slice(&10u16.to_le_bytes());
        table.push(flag);
    }
    let mut scan = table.clone();
    scan[0] = 1;
    let mut one_per_fragment = header(1, 8, 8, 3, 8, 3);
    one_per_fragment.extend_from_slice(&0u16.to_le_bytes());
    for _ in 0..3 {
        one_per_fragment.extend_from_slice(&[20, 0, 1]);
    }
    vec![
        ("generated:native".into(), native),
        ("generated:table".into(), table),
        ("generated:scan".into(), scan),
        ("generated:one-per-fragment".into(), one_per_fragment),
    ]
}

/// A STOW-RS body in the `multipart` target's input format.
fn multipart_seed(boundary: &str, parts: &[&[u8]], chunk: u8) -> Vec<u8> {
    let mut out = format!("multipart/related; type=\"application/dicom\"; boundary={boundary}\n").into_bytes();
    out.push(chunk);
    out.extend_from_slice(b"preamble\r\n");
    for part in parts {
        out.extend_from_slice(format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

fn seeds(target: &str, dicom: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    let mut out = Vec::new();
    let committed = match target {
        "metadata_writers" => "part10",
        other => other,
    };
    read_dir_files(&here.join("seeds").join(committed), &mut out);
    read_dir_files(&here.join("regressions").join(committed), &mut out);
    if target != committed {
        read_dir_files(&here.join("regressions").join(target), &mut out);
    }
    match target {
        "part10" | "metadata_writers" => out.extend(dicom.iter().cloned()),
        "frame_map" => out.extend(frame_map_seeds()),
        "multipart" => {
            let small: Vec<&[u8]> =
                dicom.iter().map(|(_, b)| b.as_slice()).filter(|b| b.len() < 8192).take(3).collect();
            out.push(("generated:one".into(), multipart_seed("kura-b0und", &small[..1.min(small.len())], 7)));
            out.push(("generated:three".into(), multipart_seed("x", &small, 63)));
            out.push(("generated:empty".into(), multipart_seed("abc", &[], 0)));
        }
        "frames_range" => {
            for (number, text) in
                [(10u64, &b"1,2,3"[..]), (1000, b"bytes=0-99"), (5, b"bytes=-3"), (u64::MAX, b"bytes=1-")]
            {
                let mut seed = number.to_le_bytes().to_vec();
                seed.extend_from_slice(text);
                out.push((format!("generated:{number}"), seed));
            }
        }
        _ => {}
    }
    out
}

/// Runs one input through a target; a failure is saved and described with how to replay it.
fn run_one(target: &str, body: fn(&[u8]), what: &str, input: &[u8]) -> Result<(), String> {
    let outcome = std::panic::catch_unwind(|| body(input));
    if let Err(panic) = outcome {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
            .join("fuzz-smoke-failures")
            .join(target);
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join(format!("crash-{:016x}", fnv(input)));
        let _ = std::fs::write(&file, input);
        return Err(format!(
            "fuzz target {target} failed on {what} ({} bytes, saved as {}): {message}\n\
             replay: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz {target} {}",
            input.len(),
            file.display(),
            file.display()
        ));
    }
    Ok(())
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[test]
fn fuzz_targets_hold_their_invariants_on_seeds_and_mutations() {
    let iterations: u64 = std::env::var("KURA_FUZZ_SMOKE_ITERS")
        .ok()
        .map(|v| v.parse().expect("KURA_FUZZ_SMOKE_ITERS is a number"))
        .unwrap_or(DEFAULT_ITERS);
    let seed: u64 = std::env::var("KURA_FUZZ_SMOKE_SEED").ok().map(|v| v.parse().expect("a number")).unwrap_or(17);
    let only = std::env::var("KURA_FUZZ_TARGETS").ok();
    let mut dicom = generated_instances();
    dicom.extend(pydicom_files());
    // Expected panics are caught and reported by run_one; keep their messages out of the log.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut report = Vec::new();
    let mut failure = None;
    let mut failures = 0usize;
    // KURA_FUZZ_SMOKE_KEEP_GOING: report every failing mutation, not only the first.
    let keep_going = std::env::var_os("KURA_FUZZ_SMOKE_KEEP_GOING").is_some();
    for (target, body) in bodies::TARGETS {
        if only.as_deref().is_some_and(|only| !only.split_whitespace().any(|t| t == *target)) {
            continue;
        }
        let started = Instant::now();
        let seeds = seeds(target, &dicom);
        assert!(!seeds.is_empty(), "{target} has seeds");
        for (name, input) in &seeds {
            if let Err(error) = run_one(target, *body, name, input) {
                failures += 1;
                eprintln!("{error}");
                failure = failure.or(Some(error));
            }
        }
        let mut rng = Rng(seed ^ fnv(target.as_bytes()));
        let max_len = bodies::max_len(target);
        for i in 0..iterations {
            let (name, base) = &seeds[rng.below(seeds.len())];
            let (_, other) = &seeds[rng.below(seeds.len())];
            let input = mutate(&mut rng, base, other, max_len);
            if let Err(error) = run_one(target, *body, &format!("mutation {i} of {name}"), &input) {
                failures += 1;
                failure = failure.or(Some(error.clone()));
                if !keep_going {
                    break;
                }
                eprintln!("{error}");
            }
        }
        if failure.is_some() && !keep_going {
            break;
        }
        report.push(format!("{target}: {} seeds + {iterations} mutations in {:.1?}", seeds.len(), started.elapsed()));
    }
    std::panic::set_hook(default_hook);
    for line in &report {
        println!("fuzz_smoke: {line}");
    }
    if let Some(failure) = failure {
        panic!("{failures} failing input(s); the first: {failure}");
    }
}
