//! A safe wrapper over the C ABI of `shim.cpp`: one lossless JPEG 2000 codestream (OpenJPEG) or
//! HTJ2K codestream (OpenJPH) from component-planar 32-bit samples.

use std::ffi::{CStr, c_char, c_int};

unsafe extern "C" {
    fn kura_j2k_encode(
        samples: *const i32,
        width: u32,
        height: u32,
        components: u32,
        bits: u32,
        is_signed: c_int,
        levels: u32,
        high_throughput: c_int,
        out: *mut *mut u8,
        out_len: *mut usize,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn kura_codec_free(data: *mut u8);
}

/// Which library writes the codestream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Part 1 block coder (EBCOT), OpenJPEG.
    Classic,
    /// Part 15 high-throughput block coder, OpenJPH.
    HighThroughput,
}

/// One frame's samples: width × height per component, component after component, each already
/// within `bits` bits, signed or not.
pub struct Planes<'a> {
    pub samples: &'a [i32],
    pub width: u32,
    pub height: u32,
    pub components: u32,
    pub bits: u32,
    pub signed: bool,
}

/// Encodes the planes reversibly, with `levels` wavelet decompositions, in
/// resolution-position-component-layer (RPCL) order.
pub fn encode(flavour: Flavour, planes: &Planes<'_>, levels: u32) -> Result<Vec<u8>, String> {
    let Planes { samples, width, height, components, bits, signed } = *planes;
    let expected = (width as usize).checked_mul(height as usize).and_then(|n| n.checked_mul(components as usize));
    if width == 0 || height == 0 || expected != Some(samples.len()) || !(1..=16).contains(&bits) {
        return Err(format!("{width}×{height}×{components} samples of {bits} bits do not match the buffer"));
    }
    let mut out: *mut u8 = std::ptr::null_mut();
    let mut out_len: usize = 0;
    let mut err = [0 as c_char; 512];
    // SAFETY: `samples` holds width × height × components values (checked above) and outlives
    // the call; the shim writes at most `err.len()` bytes (NUL included) into `err`, and on
    // success hands over a malloc'ed buffer of `out_len` bytes that we copy and free below.
    let status = unsafe {
        kura_j2k_encode(
            samples.as_ptr(),
            width,
            height,
            components,
            bits,
            c_int::from(signed),
            levels,
            c_int::from(flavour == Flavour::HighThroughput),
            &mut out,
            &mut out_len,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if status != 0 || out.is_null() {
        // SAFETY: the shim always NUL-terminates within the buffer (it was zeroed, too).
        let message = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
        return Err(if message.is_empty() { "the encoder failed".into() } else { message });
    }
    // SAFETY: `out` points at `out_len` initialised bytes owned by the shim until freed.
    let bytes = unsafe { std::slice::from_raw_parts(out, out_len) }.to_vec();
    // SAFETY: `out` came from the shim's malloc and is freed exactly once.
    unsafe { kura_codec_free(out) };
    Ok(bytes)
}
