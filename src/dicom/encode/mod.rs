//! Lossless encoding on request (issue 19): one native frame in, one codestream out, for the four
//! lossless syntaxes WADO-RS offers besides the stored one, and a whole instance converted to an
//! encapsulated syntax (PS3.5 §8.2, §A.4). Nothing here knows about HTTP.
//!
//! | Codec | Transfer syntax | Media type (PS3.18 Table 8.7.3-5) | Library |
//! |---|---|---|---|
//! | JPEG-LS lossless | 1.2.840.10008.1.2.4.80 | image/jls | CharLS (C++) |
//! | JPEG XL lossless | 1.2.840.10008.1.2.4.110 | image/jxl | zune-jpegxl (Rust) |
//! | JPEG 2000 lossless | 1.2.840.10008.1.2.4.90 | image/jp2 | OpenJPEG 2.5 (C, `shim.cpp`) |
//! | HTJ2K lossless | 1.2.840.10008.1.2.4.201 | image/jphc | OpenJPH 0.9 (C++, `shim.cpp`) |
//!
//! Every codec takes samples already reduced to Bits Stored (unsigned: the bits above masked off;
//! signed: sign-extended from the high bit), so what a decoder gives back is exactly what pydicom
//! and every viewer read from the native data. JPEG 2000 and HTJ2K codestreams are written
//! resolution-progressive (RPCL) with up to [`MAX_LEVELS`] wavelet decompositions: the first
//! bytes of a frame already decode to a reduced image.

mod j2k;
pub mod stored;

use std::io::Read;

use dicom_core::value::{PixelFragmentSequence, Value};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{DefaultDicomObject, OpenFileOptions, file::ReadPreamble};
use dicom_pixeldata::{PixelDecoder, PixelRepresentation, PlanarConfiguration};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::transcode::{self, MAX_DECODED_BYTES, TranscodeError};

/// The most wavelet decompositions of a JPEG 2000 / HTJ2K frame: a 512×512 frame's lowest
/// resolution is then 16×16, a 1/32 scale preview.
pub const MAX_LEVELS: u32 = 5;

/// A lossless syntax Kura encodes on request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    JpegLs,
    JpegXl,
    Jpeg2000,
    Htj2k,
}

impl Codec {
    /// Smallest output first, as measured on real CT and MR frames (benches/README.md, "Lossless
    /// encoding on request": JPEG 2000 19–25% of native, JPEG-LS 21–29%, HTJ2K 22–27%, JPEG XL
    /// as zune-jpegxl writes it 27–33%): the order that breaks ties between equally weighted
    /// Accept ranges.
    pub const SMALLEST_FIRST: [Codec; 4] = [Codec::Jpeg2000, Codec::JpegLs, Codec::Htj2k, Codec::JpegXl];

    pub fn transfer_syntax(self) -> &'static str {
        match self {
            Codec::JpegLs => "1.2.840.10008.1.2.4.80",
            Codec::JpegXl => "1.2.840.10008.1.2.4.110",
            Codec::Jpeg2000 => "1.2.840.10008.1.2.4.90",
            Codec::Htj2k => "1.2.840.10008.1.2.4.201",
        }
    }

    /// The bulk data media type of its frames (PS3.18 Table 8.7.3-5).
    pub fn media_type(self) -> &'static str {
        match self {
            Codec::JpegLs => "image/jls",
            Codec::JpegXl => "image/jxl",
            Codec::Jpeg2000 => "image/jp2",
            Codec::Htj2k => "image/jphc",
        }
    }

    pub fn from_transfer_syntax(uid: &str) -> Option<Codec> {
        Codec::SMALLEST_FIRST.into_iter().find(|codec| codec.transfer_syntax() == uid)
    }

    /// The codec a bulk data media type names when it comes without a transfer-syntax parameter
    /// (its default syntax, Table 8.7.3-5), accepting the obsolete `image/x-jls` (§8.7.3.3.2
    /// note 8). `image/jpx` defaults to Part 2 (.92), which Kura does not write.
    pub fn from_media_type(media_type: &str) -> Option<Codec> {
        match media_type.to_ascii_lowercase().as_str() {
            "image/jls" | "image/x-jls" => Some(Codec::JpegLs),
            "image/jxl" => Some(Codec::JpegXl),
            "image/jp2" => Some(Codec::Jpeg2000),
            "image/jphc" => Some(Codec::Htj2k),
            _ => None,
        }
    }

    /// Whether `media_type` may carry this codec's syntax: its own type, and for JPEG 2000 also
    /// `image/jpx` with an explicit transfer-syntax (Part 2 readers read Part 1 codestreams).
    pub fn carried_by(self, media_type: &str) -> bool {
        let media_type = media_type.to_ascii_lowercase();
        Codec::from_media_type(&media_type) == Some(self) || (self == Codec::Jpeg2000 && media_type == "image/jpx")
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::JpegLs => "JPEG-LS lossless",
            Codec::JpegXl => "JPEG XL lossless",
            Codec::Jpeg2000 => "JPEG 2000 lossless",
            Codec::Htj2k => "HTJ2K lossless",
        }
    }
}

/// What a codec needs to know about the samples of one frame (PS3.3 C.7.6.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PixelFormat {
    pub rows: u32,
    pub columns: u32,
    pub samples_per_pixel: u16,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub high_bit: u16,
    pub signed: bool,
    /// Planar Configuration 1: colour by plane (RRR…GGG…BBB…).
    pub planar: bool,
    pub photometric: String,
}

/// Why a codec cannot carry a pixel format: the client gets a 406 naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{codec} cannot carry these pixels: {reason}")]
pub struct Unsupported {
    pub codec: &'static str,
    pub reason: String,
}

impl PixelFormat {
    /// Whether `codec` reproduces these samples exactly; the reason when not.
    pub fn check(&self, codec: Codec) -> Result<(), Unsupported> {
        let refuse = |reason: String| Err(Unsupported { codec: codec.name(), reason });
        if !matches!(self.bits_allocated, 8 | 16) {
            return refuse(format!("BitsAllocated {} (8 and 16 are encoded)", self.bits_allocated));
        }
        if self.bits_stored == 0 || self.bits_stored > self.bits_allocated {
            return refuse(format!("BitsStored {} with BitsAllocated {}", self.bits_stored, self.bits_allocated));
        }
        if self.high_bit + 1 != self.bits_stored {
            return refuse(format!("HighBit {} is not BitsStored - 1", self.high_bit));
        }
        match (self.samples_per_pixel, self.photometric.as_str()) {
            (1, "MONOCHROME1" | "MONOCHROME2" | "PALETTE COLOR") | (3, "RGB") => {}
            (spp, pi) => return refuse(format!("{spp} sample(s) per pixel as {pi} (monochrome, palette and RGB are)")),
        }
        if self.rows == 0 || self.columns == 0 {
            return refuse("an empty frame".into());
        }
        match codec {
            // CharLS takes 2 to 16 bits; a sample of 8 bits or fewer is one byte to it, which a
            // 16-bit container cannot hand over as stored.
            Codec::JpegLs if self.bits_stored < 2 => refuse(format!("BitsStored {} (2 to 16 are)", self.bits_stored)),
            Codec::JpegLs if self.bits_allocated == 16 && self.bits_stored <= 8 => {
                refuse(format!("BitsStored {} in 16-bit samples", self.bits_stored))
            }
            _ => Ok(()),
        }
    }

    fn pixels(&self) -> usize {
        self.rows as usize * self.columns as usize
    }

    fn frame_bytes(&self) -> usize {
        self.pixels() * usize::from(self.samples_per_pixel) * usize::from(self.bits_allocated / 8)
    }

    /// The frame's samples, pixel after pixel (colour interleaved), reduced to Bits Stored:
    /// masked when unsigned, sign-extended when signed. Native data is little endian.
    fn samples(&self, native: &[u8]) -> Result<Vec<i32>, TranscodeError> {
        if native.len() < self.frame_bytes() {
            return Err(TranscodeError::Failed(format!(
                "the frame has {} bytes, {} expected",
                native.len(),
                self.frame_bytes()
            )));
        }
        let bits = u32::from(self.bits_stored);
        let reduce = |raw: u32| -> i32 {
            let masked = if bits == 32 { raw } else { raw & ((1u32 << bits) - 1) };
            if self.signed && bits < 32 && masked & (1 << (bits - 1)) != 0 {
                (masked | !((1u32 << bits) - 1)) as i32
            } else {
                masked as i32
            }
        };
        let raw: Vec<i32> = match self.bits_allocated {
            8 => native[..self.frame_bytes()].iter().map(|b| reduce(u32::from(*b))).collect(),
            _ => native[..self.frame_bytes()]
                .chunks_exact(2)
                .map(|b| reduce(u32::from(u16::from_le_bytes([b[0], b[1]]))))
                .collect(),
        };
        if self.samples_per_pixel == 3 && self.planar {
            let plane = self.pixels();
            let mut interleaved = vec![0; raw.len()];
            for (c, component) in raw.chunks_exact(plane).enumerate() {
                for (p, value) in component.iter().enumerate() {
                    interleaved[p * 3 + c] = *value;
                }
            }
            return Ok(interleaved);
        }
        Ok(raw)
    }
}

/// Encodes one native frame (little endian, as Pixel Data holds it) with `codec`.
pub fn encode_frame(codec: Codec, format: &PixelFormat, native: &[u8]) -> Result<Vec<u8>, TranscodeError> {
    format.check(codec).map_err(|e| TranscodeError::Unsupported(e.to_string()))?;
    let samples = format.samples(native)?;
    let components = u32::from(format.samples_per_pixel);
    let failed = |e: String| TranscodeError::Failed(format!("{}: {e}", codec.name()));
    match codec {
        Codec::JpegLs => {
            // Unsigned to CharLS: a signed sample goes as its two's complement in Bits Stored
            // bits, which decoders (and pydicom's sign correction) read back as stored.
            let mask = (1u32 << format.bits_stored) - 1;
            let bytes: Vec<u8> = if format.bits_stored <= 8 {
                samples.iter().map(|s| (*s as u32 & mask) as u8).collect()
            } else {
                samples.iter().flat_map(|s| ((*s as u32 & mask) as u16).to_le_bytes()).collect()
            };
            let mut charls = charls::CharLS::default();
            if components == 3 {
                charls.set_interleave_mode(charls::InterleaveMode::Sample).map_err(|e| failed(e.to_string()))?;
            }
            let info = charls::FrameInfo {
                width: format.columns,
                height: format.rows,
                bits_per_sample: i32::from(format.bits_stored),
                component_count: i32::from(format.samples_per_pixel),
            };
            charls.encode(info, 0, &bytes).map_err(|e| failed(e.to_string()))
        }
        Codec::JpegXl => {
            use zune_core::bit_depth::BitDepth;
            use zune_core::colorspace::ColorSpace;
            use zune_core::options::EncoderOptions;
            // The whole container goes in (8 or 16 bits), a signed sample sign-extended in it:
            // a decoder gives back the Pixel Data bits, whatever it makes of the bit depth.
            let (bytes, depth): (Vec<u8>, BitDepth) = if format.bits_allocated == 8 {
                (samples.iter().map(|s| *s as u8).collect(), BitDepth::Eight)
            } else {
                (samples.iter().flat_map(|s| (*s as u16).to_ne_bytes()).collect(), BitDepth::Sixteen)
            };
            let space = if components == 3 { ColorSpace::RGB } else { ColorSpace::Luma };
            let options = EncoderOptions::new(format.columns as usize, format.rows as usize, space, depth)
                .set_quality(100)
                .set_effort(64);
            let mut out = Vec::new();
            zune_jpegxl::JxlSimpleEncoder::new(&bytes, options)
                .encode(&mut out)
                .map_err(|e| failed(format!("{e:?}")))?;
            Ok(out)
        }
        Codec::Jpeg2000 | Codec::Htj2k => {
            let flavour = if codec == Codec::Htj2k { j2k::Flavour::HighThroughput } else { j2k::Flavour::Classic };
            let plane = format.pixels();
            let mut planar = vec![0i32; samples.len()];
            for (p, pixel) in samples.chunks_exact(components as usize).enumerate() {
                for (c, value) in pixel.iter().enumerate() {
                    planar[c * plane + p] = *value;
                }
            }
            let levels = decomposition_levels(format.rows, format.columns);
            let planes = j2k::Planes {
                samples: &planar,
                width: format.columns,
                height: format.rows,
                components,
                bits: u32::from(format.bits_stored),
                signed: format.signed,
            };
            j2k::encode(flavour, &planes, levels).map_err(failed)
        }
    }
}

/// Wavelet decompositions for a frame: up to [`MAX_LEVELS`], and no more than the smaller side
/// can halve (a level needs at least one sample on each side).
pub fn decomposition_levels(rows: u32, columns: u32) -> u32 {
    let smaller = rows.min(columns).max(1);
    (31 - smaller.leading_zeros()).min(MAX_LEVELS)
}

/// The Image Pixel attributes of a stored object, as an encoder will see the frames once decoded:
/// decoders of compressed colour give interleaved RGB (dicom-pixeldata's frame decode).
pub fn pixel_format(object: &DefaultDicomObject) -> Option<PixelFormat> {
    let int = |tag| object.element_opt(tag).ok().flatten()?.to_int::<u32>().ok();
    let text = |tag| {
        let element = object.element_opt(tag).ok().flatten()?;
        element.to_str().ok().map(|s| s.trim().to_string())
    };
    let encapsulated = object
        .element_opt(tags::PIXEL_DATA)
        .ok()
        .flatten()
        .is_some_and(|e| matches!(e.value(), Value::PixelSequence(_)));
    let samples_per_pixel = u16::try_from(int(tags::SAMPLES_PER_PIXEL).unwrap_or(1)).ok()?;
    let bits_allocated = u16::try_from(int(tags::BITS_ALLOCATED)?).ok()?;
    let bits_stored = u16::try_from(int(tags::BITS_STORED).unwrap_or(u32::from(bits_allocated))).ok()?;
    let mut photometric = text(tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
    let mut planar = int(tags::PLANAR_CONFIGURATION) == Some(1);
    if encapsulated && samples_per_pixel == 3 {
        photometric = "RGB".into();
        planar = false;
    }
    Some(PixelFormat {
        rows: int(tags::ROWS)?,
        columns: int(tags::COLUMNS)?,
        samples_per_pixel,
        bits_allocated,
        bits_stored,
        high_bit: u16::try_from(int(tags::HIGH_BIT).unwrap_or(u32::from(bits_stored).saturating_sub(1))).ok()?,
        signed: int(tags::PIXEL_REPRESENTATION) == Some(1),
        planar,
        photometric,
    })
}

/// Whether a stored object in `stored_ts` can be encoded with `codec` at all: its pixels exist
/// losslessly (never lossy data relabelled lossless) and can be read or decoded, and the codec
/// carries their format. The reason when not.
pub fn can_encode(stored_ts: &str, format: Option<&PixelFormat>, codec: Codec) -> Result<(), String> {
    if transcode::is_lossy(stored_ts) {
        return Err(format!("the pixel data is stored lossy ({stored_ts}); it cannot be made lossless"));
    }
    let readable = super::frames::is_native_little_endian(stored_ts)
        || transcode::is_forbidden_on_the_web(stored_ts)
        || transcode::can_decode(stored_ts);
    if !readable {
        return Err(format!("Kura cannot decode pixel data stored as {stored_ts}"));
    }
    let format = format.ok_or_else(|| "the instance has no usable Image Pixel attributes".to_string())?;
    format.check(codec).map_err(|e| e.to_string())
}

fn open(reader: impl Read) -> Result<DefaultDicomObject, TranscodeError> {
    OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .from_reader(reader)
        .map_err(|e| TranscodeError::Undecodable(format!("the stored object cannot be read whole: {e}")))
}

/// Reads a stored object's header up to Pixel Data (not its value) on the caller's thread.
pub fn read_pixel_format(reader: impl Read) -> Option<(String, PixelFormat)> {
    let object = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .read_until(tags::PIXEL_DATA)
        .from_reader(reader)
        .ok()?;
    let ts = object.meta().transfer_syntax().trim_end_matches('\0').to_string();
    let mut format = pixel_format(&object)?;
    // Pixel Data was not read: whether it is encapsulated follows from the transfer syntax.
    let encapsulated = TransferSyntaxRegistry.get(&ts).is_some_and(|t| t.is_encapsulated_pixel_data());
    if encapsulated && format.samples_per_pixel == 3 {
        format.photometric = "RGB".into();
        format.planar = false;
    }
    Some((ts, format))
}

/// The native bytes of frame `frame` (0-based) of an object, with the format they are in (pub
/// for benches/lossless_encode.rs).
pub fn native_frame(object: &DefaultDicomObject, frame: u32) -> Result<(PixelFormat, Vec<u8>), TranscodeError> {
    let decoded = object.decode_pixel_data_frame(frame).map_err(|e| TranscodeError::Undecodable(e.to_string()))?;
    let format = decoded_format(&decoded);
    let bytes = decoded.frame_data(0).map_err(|e| TranscodeError::Failed(e.to_string()))?.to_vec();
    Ok((format, bytes))
}

/// The format of pixels as a decoder gave them.
fn decoded_format(decoded: &dicom_pixeldata::DecodedPixelData<'_>) -> PixelFormat {
    PixelFormat {
        rows: decoded.rows(),
        columns: decoded.columns(),
        samples_per_pixel: decoded.samples_per_pixel(),
        bits_allocated: decoded.bits_allocated(),
        bits_stored: decoded.bits_stored(),
        high_bit: decoded.high_bit(),
        signed: decoded.pixel_representation() == PixelRepresentation::Signed,
        planar: decoded.planar_configuration() != PlanarConfiguration::Standard,
        photometric: decoded.photometric_interpretation().as_str().to_string(),
    }
}

/// Checks the object's stored syntax and pixels against `codec` and its decoded size against
/// [`MAX_DECODED_BYTES`] for `frames` frames.
fn admit(object: &DefaultDicomObject, codec: Codec, frames: u64) -> Result<PixelFormat, TranscodeError> {
    let stored_ts = object.meta().transfer_syntax().trim_end_matches('\0').to_string();
    let format = pixel_format(object);
    can_encode(&stored_ts, format.as_ref(), codec).map_err(TranscodeError::Unsupported)?;
    let format = format.expect("checked by can_encode");
    let size = (format.frame_bytes() as u64).saturating_mul(frames);
    if size > MAX_DECODED_BYTES {
        return Err(TranscodeError::TooLarge(size));
    }
    Ok(format)
}

fn number_of_frames(object: &DefaultDicomObject) -> u32 {
    let frames = object.element_opt(tags::NUMBER_OF_FRAMES).ok().flatten().and_then(|e| e.to_int::<u32>().ok());
    frames.unwrap_or(1).max(1)
}

/// Encodes `frames` (0-based) of a stored PS3.10 object with `codec`, one codestream each.
pub fn encode_frames(reader: impl Read, frames: &[u32], codec: Codec) -> Result<Vec<Vec<u8>>, TranscodeError> {
    let object = open(reader)?;
    admit(&object, codec, frames.len() as u64)?;
    let count = number_of_frames(&object);
    frames
        .iter()
        .map(|&frame| {
            if frame >= count {
                return Err(TranscodeError::Failed(format!("frame {} of {count}", frame + 1)));
            }
            let (format, native) = native_frame(&object, frame)?;
            encode_frame(codec, &format, &native)
        })
        .collect()
}

/// Frames (0-based) and their codestreams.
pub type EncodedFrames = Vec<(u32, Vec<u8>)>;

/// A whole stored PS3.10 object (preamble included) re-encoded with its pixel data in `codec`:
/// one fragment per frame and a Basic Offset Table (PS3.5 §A.4), Planar Configuration 0 for
/// colour (§8.2.3, §8.2.4 make it irrelevant to the codestream and fix it at 0), Photometric
/// Interpretation unchanged (no colour transform is applied), Lossy Image Compression kept when
/// set ("00" when absent: the pixels are exactly the original's).
///
/// `known[n]`, when present, is frame n's codestream from an earlier encoding (the cache); the
/// frames this call had to encode come back beside the object, for the cache.
pub fn encode_instance(
    reader: impl Read,
    codec: Codec,
    known: Vec<Option<Vec<u8>>>,
) -> Result<(Vec<u8>, EncodedFrames), TranscodeError> {
    let mut object = open(reader)?;
    let count = number_of_frames(&object);
    let missing = (0..count).filter(|n| known.get(*n as usize).is_none_or(Option::is_none)).count();
    let format = admit(&object, codec, missing as u64)?;
    let mut known = known.into_iter();
    let mut fragments = Vec::with_capacity(count as usize);
    let mut offsets = Vec::with_capacity(count as usize);
    let mut encoded = Vec::new();
    let mut position: u64 = 0;
    for frame in 0..count {
        let mut codestream = match known.next().flatten() {
            Some(codestream) => codestream,
            None => {
                let (frame_format, native) = native_frame(&object, frame)?;
                let codestream = encode_frame(codec, &frame_format, &native)?;
                encoded.push((frame, codestream.clone()));
                codestream
            }
        };
        // Fragments have an even length (PS3.5 §A.4): a trailing zero pads an odd one.
        if codestream.len() % 2 == 1 {
            codestream.push(0);
        }
        offsets.push(u32::try_from(position).map_err(|_| TranscodeError::TooLarge(position))?);
        position += 8 + codestream.len() as u64;
        fragments.push(codestream);
    }
    // A Basic Offset Table cannot point past 4 GiB; the Extended one is not written, so refuse.
    u32::try_from(position).map_err(|_| TranscodeError::TooLarge(position))?;
    object.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        Value::PixelSequence(PixelFragmentSequence::new(offsets, fragments)),
    ));
    for tag in [
        tags::EXTENDED_OFFSET_TABLE,
        tags::EXTENDED_OFFSET_TABLE_LENGTHS,
        tags::ENCAPSULATED_PIXEL_DATA_VALUE_TOTAL_LENGTH,
    ] {
        object.remove_element(tag);
    }
    object.put(DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, format.photometric.as_str()));
    if format.samples_per_pixel == 3 {
        object.put(DataElement::new(tags::PLANAR_CONFIGURATION, VR::US, PrimitiveValue::from(0u16)));
    }
    if object.element_opt(tags::LOSSY_IMAGE_COMPRESSION).ok().flatten().is_none() {
        object.put(DataElement::new(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"));
    }
    let target = TransferSyntaxRegistry
        .get(codec.transfer_syntax())
        .ok_or_else(|| TranscodeError::Failed(format!("{} is not registered", codec.transfer_syntax())))?;
    object.meta_mut().set_transfer_syntax(target);
    object.meta_mut().update_information_group_length();
    let mut out = Vec::new();
    object.write_all(&mut out).map_err(|e| TranscodeError::Failed(e.to_string()))?;
    Ok((out, encoded))
}

#[cfg(test)]
mod tests;
