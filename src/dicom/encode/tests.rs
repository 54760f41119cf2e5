//! Round trips through each encoder and back through dicom-pixeldata's decoders (CharLS,
//! jxl-oxide, the openjp2 Rust port: for three of the four codecs a different implementation
//! from the encoder). The Python interop suite repeats them with independent decoders on real
//! images (tests/interop/test_lossless_encoding.py).

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use dicom_pixeldata::PixelDecoder;

use super::*;

/// A native Explicit VR Little Endian object with the given pixels.
fn object(format: &PixelFormat, frames: u32, pixel_data: Vec<u8>) -> Vec<u8> {
    let mut obj = InMemDicomObject::new_empty();
    obj.put(DataElement::new(tags::SOP_CLASS_UID, VR::UI, uids::SECONDARY_CAPTURE_IMAGE_STORAGE));
    obj.put(DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4.5"));
    obj.put(DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(format.rows as u16)));
    obj.put(DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(format.columns as u16)));
    obj.put(DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(format.samples_per_pixel)));
    obj.put(DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(format.bits_allocated)));
    obj.put(DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(format.bits_stored)));
    obj.put(DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(format.high_bit)));
    obj.put(DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(u16::from(format.signed))));
    obj.put(DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, format.photometric.as_str()));
    if format.samples_per_pixel == 3 {
        obj.put(DataElement::new(tags::PLANAR_CONFIGURATION, VR::US, PrimitiveValue::from(u16::from(format.planar))));
    }
    if frames > 1 {
        obj.put(DataElement::new(tags::NUMBER_OF_FRAMES, VR::IS, frames.to_string()));
    }
    let vr = if format.bits_allocated == 8 { VR::OB } else { VR::OW };
    obj.put(DataElement::new(tags::PIXEL_DATA, vr, PrimitiveValue::from(pixel_data)));
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(transcode::EXPLICIT_VR_LITTLE_ENDIAN)
                .media_storage_sop_class_uid(uids::SECONDARY_CAPTURE_IMAGE_STORAGE)
                .media_storage_sop_instance_uid("1.2.3.4.5"),
        )
        .expect("meta");
    let mut out = Vec::new();
    file.write_all(&mut out).expect("write");
    out
}

fn format(rows: u32, columns: u32, spp: u16, allocated: u16, stored: u16, signed: bool, pi: &str) -> PixelFormat {
    PixelFormat {
        rows,
        columns,
        samples_per_pixel: spp,
        bits_allocated: allocated,
        bits_stored: stored,
        high_bit: stored - 1,
        signed,
        planar: false,
        photometric: pi.into(),
    }
}

/// Pseudo-random but smooth-ish samples over the whole stored range, high bits filled with junk
/// (as some modalities leave them) so the reduction to Bits Stored is exercised too.
fn pixels(format: &PixelFormat, frames: u32) -> Vec<u8> {
    let count =
        format.rows as usize * format.columns as usize * usize::from(format.samples_per_pixel) * frames as usize;
    let mut state = 0x2545_f491_u32;
    let mut out = Vec::new();
    for i in 0..count {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let value = if i % 7 == 0 { state } else { (i as u32 * 37) ^ (state & 0xff) };
        match format.bits_allocated {
            8 => out.push(value as u8),
            _ => out.extend_from_slice(&(value as u16).to_le_bytes()),
        }
    }
    out
}

/// The samples as pydicom reads them: reduced to Bits Stored, signed or not.
fn expected(format: &PixelFormat, bytes: &[u8]) -> Vec<i32> {
    format.samples(bytes).expect("samples")
}

fn decoded_samples(encoded: &[u8], frame: u32) -> (PixelFormat, Vec<i32>) {
    let object = OpenFileOptions::new().read_preamble(ReadPreamble::Always).from_reader(encoded).expect("reads back");
    let decoded = object.decode_pixel_data_frame(frame).expect("decodes");
    // Decoded pixels come interleaved whatever the stored Planar Configuration.
    let format = PixelFormat { planar: false, ..decoded_format(&decoded) };
    let data = decoded.frame_data(0).expect("frame").to_vec();
    let samples = format.samples(&data).expect("samples");
    (format, samples)
}

fn round_trip(codec: Codec, format: &PixelFormat, frames: u32) {
    let native = pixels(format, frames);
    let stored = object(format, frames, native.clone());
    let encoded = encode_instance(stored.as_slice(), codec, Vec::new())
        .map(|(o, _)| o)
        .unwrap_or_else(|e| panic!("{codec:?} {format:?}: {e}"));
    let frame_bytes = format.frame_bytes();
    for frame in 0..frames {
        let original = expected(format, &native[frame as usize * frame_bytes..][..frame_bytes]);
        let (decoded_format, decoded) = decoded_samples(&encoded, frame);
        assert_eq!(decoded_format.photometric, format.photometric, "{codec:?}");
        assert!(decoded == original, "{codec:?} is not lossless for {format:?}, frame {frame}");
    }
    // The frame path gives the same codestream as the instance's fragment.
    let single = encode_frames(stored.as_slice(), &[frames - 1], codec).expect("frame");
    assert!(!single[0].is_empty());
}

#[test]
fn every_codec_is_lossless_on_every_supported_format() {
    let formats = [
        format(64, 48, 1, 8, 8, false, "MONOCHROME2"),
        format(40, 33, 1, 16, 12, false, "MONOCHROME2"),
        format(40, 33, 1, 16, 12, true, "MONOCHROME1"),
        format(32, 32, 1, 16, 16, false, "MONOCHROME2"),
        format(32, 32, 1, 16, 16, true, "MONOCHROME2"),
        format(17, 23, 3, 8, 8, false, "RGB"),
        PixelFormat { planar: true, ..format(16, 20, 3, 8, 8, false, "RGB") },
        format(8, 8, 1, 8, 8, false, "PALETTE COLOR"),
    ];
    for codec in Codec::SMALLEST_FIRST {
        for f in &formats {
            round_trip(codec, f, 2);
        }
    }
}

#[test]
fn the_encapsulation_follows_ps3_5() {
    let f = PixelFormat { planar: true, ..format(16, 20, 3, 8, 8, false, "RGB") };
    let stored = object(&f, 3, pixels(&f, 3));
    let encoded = encode_instance(stored.as_slice(), Codec::Jpeg2000, Vec::new()).expect("encodes").0;
    let object = OpenFileOptions::new().read_preamble(ReadPreamble::Always).from_reader(encoded.as_slice()).unwrap();
    assert_eq!(object.meta().transfer_syntax().trim_end_matches('\0'), "1.2.840.10008.1.2.4.90");
    let pixel_data = object.element(tags::PIXEL_DATA).unwrap();
    let Value::PixelSequence(sequence) = pixel_data.value() else { panic!("not encapsulated") };
    assert_eq!(sequence.fragments().len(), 3);
    let offsets = sequence.offset_table().to_vec();
    let lengths: Vec<u32> = sequence.fragments().iter().map(|f| f.len() as u32).collect();
    assert_eq!(offsets, vec![0, 8 + lengths[0], 16 + lengths[0] + lengths[1]]);
    assert!(lengths.iter().all(|l| l % 2 == 0));
    assert_eq!(object.element(tags::PLANAR_CONFIGURATION).unwrap().to_int::<u16>().unwrap(), 0);
    assert_eq!(object.element(tags::LOSSY_IMAGE_COMPRESSION).unwrap().to_str().unwrap().trim(), "00");
    // A J2K codestream starts with SOC and SIZ, and its COD says RPCL.
    let first: &[u8] = &sequence.fragments()[0];
    assert_eq!(&first[..4], &[0xFF, 0x4F, 0xFF, 0x51]);
}

/// The COD marker segment's progression order and decomposition levels.
fn cod(codestream: &[u8]) -> (u8, u8) {
    let at = codestream.windows(2).position(|w| w == [0xFF, 0x52]).expect("COD");
    // COD: marker, Lcod (2), Scod (1), SGcod: progression (1), layers (2), MCT (1); SPcod: levels.
    (codestream[at + 5], codestream[at + 9])
}

#[test]
fn j2k_and_htj2k_are_resolution_progressive() {
    let f = format(512, 512, 1, 16, 12, false, "MONOCHROME2");
    let native = pixels(&f, 1);
    for codec in [Codec::Jpeg2000, Codec::Htj2k] {
        let codestream = encode_frame(codec, &f, &native).expect("encodes");
        assert_eq!(cod(&codestream), (2, 5), "{codec:?}: RPCL (2) with 5 levels");
    }
    // HTJ2K codestreams announce Part 15 in a CAP marker (0xFF50).
    let ht = encode_frame(Codec::Htj2k, &f, &native).unwrap();
    assert!(ht.windows(2).any(|w| w == [0xFF, 0x50]), "no CAP marker");
    assert_eq!(decomposition_levels(8, 300), 3);
    assert_eq!(decomposition_levels(1, 1), 0);
}

#[test]
fn unsupported_formats_are_refused_not_mangled() {
    let ybr = format(8, 8, 3, 8, 8, false, "YBR_FULL_422");
    assert!(ybr.check(Codec::JpegLs).is_err());
    let one_bit = format(8, 8, 1, 1, 1, false, "MONOCHROME2");
    assert!(one_bit.check(Codec::Jpeg2000).is_err());
    let small_in_16 = format(8, 8, 1, 16, 8, false, "MONOCHROME2");
    assert!(small_in_16.check(Codec::JpegLs).is_err());
    assert!(small_in_16.check(Codec::Jpeg2000).is_ok());
    let odd_high_bit = PixelFormat { high_bit: 15, ..format(8, 8, 1, 16, 12, false, "MONOCHROME2") };
    assert!(odd_high_bit.check(Codec::JpegXl).is_err());
    assert!(
        can_encode("1.2.840.10008.1.2.4.50", Some(&format(8, 8, 1, 8, 8, false, "MONOCHROME2")), Codec::JpegLs)
            .unwrap_err()
            .contains("lossy")
    );
    let stored = object(&ybr, 1, pixels(&ybr, 1));
    assert!(matches!(
        encode_instance(stored.as_slice(), Codec::Htj2k, Vec::new()),
        Err(TranscodeError::Unsupported(_))
    ));
}

#[test]
fn media_types_and_syntaxes() {
    for codec in Codec::SMALLEST_FIRST {
        assert_eq!(Codec::from_transfer_syntax(codec.transfer_syntax()), Some(codec));
        assert_eq!(Codec::from_media_type(codec.media_type()), Some(codec));
    }
    assert_eq!(Codec::from_media_type("image/x-jls"), Some(Codec::JpegLs));
    assert!(Codec::Jpeg2000.carried_by("image/jpx"));
    assert!(!Codec::Htj2k.carried_by("image/jp2"));
}
