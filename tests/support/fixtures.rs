//! DICOM instances generated in code with dicom-rs: deterministic UIDs, realistic sizes.

use dicom_core::{DataElement, PrimitiveValue, VR, dicom_value};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

/// UID root of generated test data.
pub const ROOT: &str = "1.2.826.0.1.3680043.10.543.77";

/// What a generated instance looks like; indices make deterministic UIDs.
#[derive(Debug, Clone)]
pub struct Spec {
    pub study: u32,
    pub series: u32,
    pub instance: u32,
    pub patient_name: String,
    pub patient_id: String,
    pub study_date: String,
    pub study_time: String,
    pub modality: String,
    pub accession: String,
    pub rows: u16,
    pub columns: u16,
    pub frames: u32,
    /// Varies pixel content (and so the bytes) for the same UIDs.
    pub seed: u8,
}

impl Spec {
    pub fn new(study: u32, series: u32, instance: u32) -> Spec {
        Spec {
            study,
            series,
            instance,
            patient_name: format!("Doe^Patient{study}"),
            patient_id: format!("PID{study:05}"),
            study_date: "20240105".into(),
            study_time: "101500".into(),
            modality: "CT".into(),
            accession: format!("ACC{study}"),
            rows: 16,
            columns: 16,
            frames: 1,
            seed: 0,
        }
    }

    pub fn size(mut self, rows: u16, columns: u16, frames: u32) -> Spec {
        self.rows = rows;
        self.columns = columns;
        self.frames = frames;
        self
    }

    pub fn study_uid(&self) -> String {
        format!("{ROOT}.1.{}", self.study)
    }

    pub fn series_uid(&self) -> String {
        format!("{ROOT}.2.{}.{}", self.study, self.series)
    }

    pub fn sop_uid(&self) -> String {
        format!("{ROOT}.3.{}.{}.{}", self.study, self.series, self.instance)
    }

    pub fn study_url(&self, base: &str) -> String {
        format!("{base}/studies/{}", self.study_uid())
    }

    pub fn series_url(&self, base: &str) -> String {
        format!("{base}/studies/{}/series/{}", self.study_uid(), self.series_uid())
    }

    pub fn instance_url(&self, base: &str) -> String {
        format!("{}/instances/{}", self.series_url(base), self.sop_uid())
    }
}

pub fn put(object: &mut InMemDicomObject, tag: dicom_core::Tag, vr: VR, value: impl Into<PrimitiveValue>) {
    object.put(DataElement::new(tag, vr, value.into()));
}

/// The data set of `spec` (UTF-8, 16-bit CT, 16×16 unless sized), without file meta.
pub fn dataset(spec: &Spec) -> InMemDicomObject {
    let mut object = InMemDicomObject::new_empty();
    put(&mut object, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    put(&mut object, tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE);
    put(&mut object, tags::SOP_INSTANCE_UID, VR::UI, spec.sop_uid());
    put(&mut object, tags::STUDY_DATE, VR::DA, spec.study_date.as_str());
    put(&mut object, tags::STUDY_TIME, VR::TM, spec.study_time.as_str());
    put(&mut object, tags::ACCESSION_NUMBER, VR::SH, spec.accession.as_str());
    put(&mut object, tags::MODALITY, VR::CS, spec.modality.as_str());
    put(&mut object, tags::REFERRING_PHYSICIAN_NAME, VR::PN, "Ref^Doctor");
    put(&mut object, tags::STUDY_DESCRIPTION, VR::LO, format!("Study {}", spec.study));
    put(&mut object, tags::SERIES_DESCRIPTION, VR::LO, format!("Series {}", spec.series));
    put(&mut object, tags::PATIENT_NAME, VR::PN, spec.patient_name.as_str());
    put(&mut object, tags::PATIENT_ID, VR::LO, spec.patient_id.as_str());
    put(&mut object, tags::PATIENT_BIRTH_DATE, VR::DA, "19700101");
    put(&mut object, tags::PATIENT_SEX, VR::CS, "O");
    put(&mut object, tags::STUDY_INSTANCE_UID, VR::UI, spec.study_uid());
    put(&mut object, tags::SERIES_INSTANCE_UID, VR::UI, spec.series_uid());
    put(&mut object, tags::STUDY_ID, VR::SH, format!("S{}", spec.study));
    put(&mut object, tags::SERIES_NUMBER, VR::IS, spec.series.to_string());
    put(&mut object, tags::INSTANCE_NUMBER, VR::IS, spec.instance.to_string());
    put(&mut object, tags::SAMPLES_PER_PIXEL, VR::US, dicom_value!(U16, [1]));
    put(&mut object, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    if spec.frames > 1 {
        put(&mut object, tags::NUMBER_OF_FRAMES, VR::IS, spec.frames.to_string());
    }
    put(&mut object, tags::ROWS, VR::US, dicom_value!(U16, [spec.rows]));
    put(&mut object, tags::COLUMNS, VR::US, dicom_value!(U16, [spec.columns]));
    put(&mut object, tags::BITS_ALLOCATED, VR::US, dicom_value!(U16, [16]));
    put(&mut object, tags::BITS_STORED, VR::US, dicom_value!(U16, [12]));
    put(&mut object, tags::HIGH_BIT, VR::US, dicom_value!(U16, [11]));
    put(&mut object, tags::PIXEL_REPRESENTATION, VR::US, dicom_value!(U16, [0]));
    let mut state = u32::from(spec.seed) ^ spec.instance.wrapping_mul(2_654_435_761) ^ spec.study;
    let n_pixels = spec.rows as usize * spec.columns as usize * spec.frames as usize;
    let pixels: Vec<u16> = (0..n_pixels)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((state >> 16) & 0x0FFF) as u16
        })
        .collect();
    put(&mut object, tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(pixels.into()));
    object
}

/// Serialises a data set as a PS3.10 file in the given transfer syntax.
pub fn part10_in(object: InMemDicomObject, transfer_syntax: &str) -> Vec<u8> {
    let file = object.with_meta(FileMetaTableBuilder::new().transfer_syntax(transfer_syntax)).expect("meta");
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).expect("write");
    bytes
}

/// Serialises a data set as a PS3.10 file in Explicit VR Little Endian.
pub fn part10(object: InMemDicomObject) -> Vec<u8> {
    part10_in(object, uids::EXPLICIT_VR_LITTLE_ENDIAN)
}

/// A complete Explicit VR Little Endian instance for `spec`.
pub fn instance(spec: &Spec) -> Vec<u8> {
    part10(dataset(spec))
}

/// A 512×512 16-bit CT slice (about 512 KiB).
pub fn ct_slice(study: u32, series: u32, instance_number: u32) -> Vec<u8> {
    instance(&Spec::new(study, series, instance_number).size(512, 512, 1))
}

/// The bytes Kura stores for `original`: the same, with the 128-byte preamble zeroed.
pub fn as_stored(original: &[u8]) -> Vec<u8> {
    let mut stored = original.to_vec();
    stored[..128].fill(0);
    stored
}

/// Replaces the value of a top-level short-VR element (tag, explicit VR, 16-bit length) in an
/// Explicit VR Little Endian file, e.g. to put bytes in a character set dicom-rs would not
/// write. Top-level elements carry their own lengths only, so the value may change size.
pub fn splice_element(file: &[u8], tag: dicom_core::Tag, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let mut header = Vec::new();
    header.extend_from_slice(&tag.group().to_le_bytes());
    header.extend_from_slice(&tag.element().to_le_bytes());
    header.extend_from_slice(vr);
    let start = 132
        + file[132..]
            .windows(header.len())
            .position(|w| w == header.as_slice())
            .unwrap_or_else(|| panic!("{tag} not found"));
    let length = u16::from_le_bytes([file[start + 6], file[start + 7]]) as usize;
    let mut value = value.to_vec();
    if value.len() % 2 == 1 {
        value.push(if vr == b"UI" { 0 } else { b' ' });
    }
    let mut out = file[..start].to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(&value);
    out.extend_from_slice(&file[start + 8 + length..]);
    out
}

/// The 8-bit pixels of [`rle_instance`]: rows × columns × frames bytes, with runs and noise so
/// that both kinds of RLE packet occur.
pub fn rle_pixels(spec: &Spec) -> Vec<u8> {
    let n = spec.rows as usize * spec.columns as usize * spec.frames as usize;
    (0..n).map(|i| if (i / 7) % 2 == 0 { (i / 7) as u8 } else { (i * 37 % 251) as u8 }).collect()
}

/// PackBits as RLE Lossless uses it (PS3.5 Annex G.3): replicate runs of 3 or more, literal
/// runs otherwise, at most 128 bytes a packet.
fn pack_bits(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let run = data[i..].iter().take(128).take_while(|&&b| b == data[i]).count();
        if run >= 3 {
            out.push((257 - run) as u8);
            out.push(data[i]);
            i += run;
            continue;
        }
        let start = i;
        while i < data.len() && i - start < 128 {
            let ahead = data[i..].iter().take(3).take_while(|&&b| b == data[i]).count();
            if ahead >= 3 {
                break;
            }
            i += 1;
        }
        out.push((i - start - 1) as u8);
        out.extend_from_slice(&data[start..i]);
    }
    out
}

/// An 8-bit MONOCHROME2 instance for `spec` in RLE Lossless, one fragment per frame: Kura must
/// decode it to serve Explicit VR Little Endian.
pub fn rle_instance(spec: &Spec) -> Vec<u8> {
    use dicom_core::Length;
    use dicom_core::value::PixelFragmentSequence;
    let mut object = dataset(spec);
    put(&mut object, tags::BITS_ALLOCATED, VR::US, dicom_value!(U16, [8]));
    put(&mut object, tags::BITS_STORED, VR::US, dicom_value!(U16, [8]));
    put(&mut object, tags::HIGH_BIT, VR::US, dicom_value!(U16, [7]));
    put(&mut object, tags::NUMBER_OF_FRAMES, VR::IS, spec.frames.to_string());
    let pixels = rle_pixels(spec);
    let frame_size = spec.rows as usize * spec.columns as usize;
    let fragments: Vec<Vec<u8>> = pixels
        .chunks(frame_size)
        .map(|frame| {
            // Header: one segment, starting after the 64-byte header (G.5).
            let mut fragment = vec![0u8; 64];
            fragment[..4].copy_from_slice(&1u32.to_le_bytes());
            fragment[4..8].copy_from_slice(&64u32.to_le_bytes());
            fragment.extend(pack_bits(frame));
            if fragment.len() % 2 == 1 {
                fragment.push(0);
            }
            fragment
        })
        .collect();
    object.put(DataElement::new_with_len(
        tags::PIXEL_DATA,
        VR::OB,
        Length::UNDEFINED,
        PixelFragmentSequence::new(Vec::<u32>::new(), fragments),
    ));
    part10_in(object, uids::RLE_LOSSLESS)
}

/// What a rendered frame of [`rle_instance`] must look like: the instance has no window, so its
/// values are spread min-max over 0..=255.
pub fn normalised(frame: &[u8]) -> Vec<u8> {
    let (low, high) = frame.iter().fold((u8::MAX, u8::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let span = f32::from(high - low).max(f32::EPSILON);
    frame.iter().map(|v| (f32::from(v - low) / span * 255.0).round() as u8).collect()
}

/// The size and 8-bit grey pixels of a PNG.
pub fn png_pixels(bytes: &[u8]) -> ((u32, u32), Vec<u8>) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes.to_vec()));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut pixels).expect("a frame");
    pixels.truncate(info.buffer_size());
    ((info.width, info.height), pixels)
}

/// An instance whose frames are each split over several fragments, with an empty Basic Offset
/// Table and an Extended Offset Table (PS3.5 §A.4), in JPEG 2000 Lossless whose fragments start
/// with no marker, so that only the Extended Offset Table tells where frames begin. Returns the
/// file and each frame's bytes.
pub fn extended_offset_table_instance(spec: &Spec, fragments_per_frame: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    use dicom_core::Length;
    use dicom_core::value::PixelFragmentSequence;
    let mut object = dataset(spec);
    put(&mut object, tags::NUMBER_OF_FRAMES, VR::IS, spec.frames.to_string());
    let mut fragments = Vec::new();
    let mut frames = Vec::new();
    let (mut offsets, mut lengths) = (Vec::new(), Vec::new());
    let mut position = 0u64;
    for frame in 0..spec.frames as usize {
        offsets.push(position);
        let mut bytes = Vec::new();
        for part in 0..fragments_per_frame {
            let fragment: Vec<u8> = (0..10 + 2 * part).map(|i| (frame * 31 + part * 7 + i) as u8 | 0x01).collect();
            position += 8 + fragment.len() as u64;
            bytes.extend_from_slice(&fragment);
            fragments.push(fragment);
        }
        lengths.push(bytes.len() as u64);
        frames.push(bytes);
    }
    put(&mut object, tags::EXTENDED_OFFSET_TABLE, VR::OV, PrimitiveValue::U64(offsets.into()));
    put(&mut object, tags::EXTENDED_OFFSET_TABLE_LENGTHS, VR::OV, PrimitiveValue::U64(lengths.into()));
    object.put(DataElement::new_with_len(
        tags::PIXEL_DATA,
        VR::OB,
        Length::UNDEFINED,
        PixelFragmentSequence::new(Vec::<u32>::new(), fragments),
    ));
    (part10_in(object, uids::JPEG2000_LOSSLESS), frames)
}
