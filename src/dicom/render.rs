//! Rendering a frame to a consumer image (PS3.18 §10.4.1.1.3, §8.3.5): decode, apply the
//! grayscale pipeline (Modality LUT, then the VOI window asked for or the instance's first, or
//! min-max when it has none; MONOCHROME1 inverted), crop and scale to the viewport, encode as
//! JPEG or PNG. Colour images go as RGB (uncompressed YBR_FULL converted; the codecs already
//! give RGB for compressed YBR). Nothing is burnt in: no annotation, so no patient data, which
//! thumbnails must not show.

use std::io::Read;

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions, file::ReadPreamble};
use dicom_pixeldata::{
    ConvertOptions, PhotometricInterpretation, PixelDecoder, PlanarConfiguration, VoiLutFunction, VoiLutOption,
    WindowLevel,
};

use super::transcode::{MAX_DECODED_BYTES, TranscodeError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
}

impl ImageFormat {
    pub fn media_type(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Png => "image/png",
        }
    }
}

/// The region of the frame to show and the box to fit it in (§8.3.5.1.3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Viewport {
    pub width: u32,
    pub height: u32,
    /// Source rectangle: x, y, then width and height (negative flips); `None` = to the edge.
    pub sx: i64,
    pub sy: i64,
    pub sw: Option<i64>,
    pub sh: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    pub format: ImageFormat,
    /// JPEG quality, 1..=100.
    pub quality: u8,
    pub viewport: Option<Viewport>,
    pub window: Option<(f64, f64, VoiLutFunction)>,
}

/// An 8-bit image: 1 (gray) or 3 (RGB) samples per pixel, interleaved.
struct Image {
    width: u32,
    height: u32,
    channels: u32,
    pixels: Vec<u8>,
}

fn undecodable(error: impl std::error::Error) -> TranscodeError {
    TranscodeError::Undecodable(error.to_string())
}

fn open(reader: impl Read) -> Result<DefaultDicomObject, TranscodeError> {
    OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .from_reader(reader)
        .map_err(|e| TranscodeError::Undecodable(format!("the stored object cannot be read whole: {e}")))
}

/// Renders the given frames (0-based) of a PS3.10 file, each to one encoded image.
pub fn render_frames(
    reader: impl Read,
    frames: &[u32],
    options: &RenderOptions,
) -> Result<Vec<Vec<u8>>, TranscodeError> {
    let object = open(reader)?;
    let native = !object.meta().transfer_syntax().trim_end_matches('\0').starts_with("1.2.840.10008.1.2.4")
        && object.meta().transfer_syntax().trim_end_matches('\0') != "1.2.840.10008.1.2.5";
    frames
        .iter()
        .map(|&frame| {
            let image = frame_image(&object, frame, native, options)?;
            let image = fit(image, options.viewport);
            encode(&image, options)
        })
        .collect()
}

fn frame_image(
    object: &DefaultDicomObject,
    frame: u32,
    native: bool,
    options: &RenderOptions,
) -> Result<Image, TranscodeError> {
    let int = |tag| object.element_opt(tag).ok().flatten().and_then(|e| e.to_int::<u64>().ok());
    let frame_bytes = [tags::ROWS, tags::COLUMNS, tags::SAMPLES_PER_PIXEL]
        .into_iter()
        .map(|tag| int(tag).unwrap_or(1))
        .chain([int(tags::BITS_ALLOCATED).unwrap_or(16).div_ceil(8)])
        .try_fold(1u64, u64::checked_mul)
        .unwrap_or(u64::MAX);
    if frame_bytes > MAX_DECODED_BYTES {
        return Err(TranscodeError::TooLarge(frame_bytes));
    }
    let decoded = object.decode_pixel_data_frame(frame).map_err(undecodable)?;
    let (width, height) = (decoded.columns(), decoded.rows());
    let photometric = decoded.photometric_interpretation().clone();
    if decoded.samples_per_pixel() == 1 {
        if photometric == PhotometricInterpretation::PaletteColor {
            return Err(TranscodeError::Undecodable("PALETTE COLOR images are not rendered".into()));
        }
        let has_window = decoded.window().ok().flatten().is_some_and(|w| !w.is_empty());
        let has_lut = decoded.voi_lut_sequence().ok().flatten().is_some_and(|l| !l.is_empty());
        let voi = match options.window {
            Some((center, width, function)) => {
                VoiLutOption::CustomWithFunction(WindowLevel { center, width }, function)
            }
            None if has_window || has_lut => VoiLutOption::First,
            None => VoiLutOption::Identity,
        };
        let mut pixels: Vec<u8> = if voi == VoiLutOption::Identity {
            // No window anywhere: spread the modality values over the grey scale (min-max).
            let values: Vec<f32> = decoded
                .to_vec_frame_with_options(0, &ConvertOptions::new().with_voi_lut(VoiLutOption::Identity))
                .map_err(undecodable)?;
            let (low, high) = values.iter().fold((f32::MAX, f32::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
            let span = (high - low).max(f32::EPSILON);
            values.iter().map(|v| ((v - low) / span * 255.0).round() as u8).collect()
        } else {
            // dicom-pixeldata builds no LUT from 16-bit input to u8: ask for u16, whose output
            // spans the input's bit depth, then narrow.
            let wide: Vec<u16> =
                decoded.to_vec_frame_with_options(0, &ConvertOptions::new().with_voi_lut(voi)).map_err(undecodable)?;
            let shift = if decoded.bits_allocated() > 8 { 8 } else { 0 };
            wide.into_iter().map(|v| (v >> shift).min(255) as u8).collect()
        };
        if photometric == PhotometricInterpretation::Monochrome1 {
            pixels.iter_mut().for_each(|p| *p = 255 - *p);
        }
        return Ok(Image { width, height, channels: 1, pixels });
    }
    let bits = decoded.bits_allocated();
    let data = decoded.frame_data(0).map_err(undecodable)?;
    let samples: Vec<u8> = match bits {
        8 => data.to_vec(),
        16 => {
            let shift = decoded.bits_stored().saturating_sub(8);
            data.chunks_exact(2).map(|s| (u16::from_le_bytes([s[0], s[1]]) >> shift) as u8).collect()
        }
        other => return Err(TranscodeError::Undecodable(format!("{other}-bit colour images are not rendered"))),
    };
    let plane = (width * height) as usize;
    let mut pixels = if decoded.planar_configuration() == PlanarConfiguration::Standard {
        samples
    } else {
        (0..plane * 3).map(|i| samples[(i % 3) * plane + i / 3]).collect()
    };
    if native && matches!(photometric, PhotometricInterpretation::YbrFull | PhotometricInterpretation::YbrFull422) {
        for pixel in pixels.chunks_exact_mut(3) {
            let (y, cb, cr) = (f32::from(pixel[0]), f32::from(pixel[1]) - 128.0, f32::from(pixel[2]) - 128.0);
            pixel[0] = (y + 1.402 * cr).round().clamp(0.0, 255.0) as u8;
            pixel[1] = (y - 0.344_136 * cb - 0.714_136 * cr).round().clamp(0.0, 255.0) as u8;
            pixel[2] = (y + 1.772 * cb).round().clamp(0.0, 255.0) as u8;
        }
    }
    Ok(Image { width, height, channels: 3, pixels })
}

/// Crops to the viewport's source rectangle (flipping for negative extents), then scales to fit
/// inside its box, keeping the aspect ratio (§8.3.5.1.3).
fn fit(image: Image, viewport: Option<Viewport>) -> Image {
    let Some(viewport) = viewport else { return image };
    let (w, h) = (i64::from(image.width), i64::from(image.height));
    let sx = viewport.sx.clamp(0, w);
    let sy = viewport.sy.clamp(0, h);
    let sw = viewport.sw.unwrap_or(w - sx);
    let sh = viewport.sh.unwrap_or(h - sy);
    // A negative extent reaches back from the start and flips.
    let (x0, x1) = if sw >= 0 { (sx, (sx + sw).min(w)) } else { ((sx + sw).max(0), sx) };
    let (y0, y1) = if sh >= 0 { (sy, (sy + sh).min(h)) } else { ((sy + sh).max(0), sy) };
    let (cw, ch) = ((x1 - x0).max(1) as u32, (y1 - y0).max(1) as u32);
    let channels = image.channels as usize;
    let mut cropped = Vec::with_capacity((cw * ch) as usize * channels);
    for row in 0..ch as i64 {
        let y = if sh >= 0 { y0 + row } else { y1 - 1 - row };
        for column in 0..cw as i64 {
            let x = if sw >= 0 { x0 + column } else { x1 - 1 - column };
            let at = ((y.clamp(0, h - 1) * w + x.clamp(0, w - 1)) as usize) * channels;
            cropped.extend_from_slice(&image.pixels[at..at + channels]);
        }
    }
    let scale = (f64::from(viewport.width) / f64::from(cw)).min(f64::from(viewport.height) / f64::from(ch));
    let nw = ((f64::from(cw) * scale).round() as u32).max(1);
    let nh = ((f64::from(ch) * scale).round() as u32).max(1);
    Image {
        width: nw,
        height: nh,
        channels: image.channels,
        pixels: resample(&cropped, cw, ch, image.channels, nw, nh),
    }
}

/// Area-averaging resample: each output pixel is the mean of the source pixels it covers (the
/// nearest one when enlarging), which keeps thin structures visible when shrinking.
fn resample(pixels: &[u8], width: u32, height: u32, channels: u32, new_width: u32, new_height: u32) -> Vec<u8> {
    if (width, height) == (new_width, new_height) {
        return pixels.to_vec();
    }
    let channels = channels as usize;
    let mut out = Vec::with_capacity((new_width * new_height) as usize * channels);
    for oy in 0..new_height {
        let y0 = (u64::from(oy) * u64::from(height) / u64::from(new_height)) as u32;
        let y1 = ((u64::from(oy + 1) * u64::from(height)).div_ceil(u64::from(new_height)) as u32).max(y0 + 1);
        for ox in 0..new_width {
            let x0 = (u64::from(ox) * u64::from(width) / u64::from(new_width)) as u32;
            let x1 = ((u64::from(ox + 1) * u64::from(width)).div_ceil(u64::from(new_width)) as u32).max(x0 + 1);
            for c in 0..channels {
                let mut sum = 0u64;
                for y in y0..y1.min(height) {
                    for x in x0..x1.min(width) {
                        sum += u64::from(pixels[(y * width + x) as usize * channels + c]);
                    }
                }
                let count = u64::from(y1.min(height) - y0) * u64::from(x1.min(width) - x0);
                out.push((sum / count.max(1)) as u8);
            }
        }
    }
    out
}

fn encode(image: &Image, options: &RenderOptions) -> Result<Vec<u8>, TranscodeError> {
    let mut out = Vec::new();
    let failed = |e: &dyn std::fmt::Display| TranscodeError::Failed(format!("encoding the image: {e}"));
    match options.format {
        ImageFormat::Jpeg => {
            let color = if image.channels == 1 { jpeg_encoder::ColorType::Luma } else { jpeg_encoder::ColorType::Rgb };
            let (width, height) = (
                u16::try_from(image.width).map_err(|e| failed(&e))?,
                u16::try_from(image.height).map_err(|e| failed(&e))?,
            );
            jpeg_encoder::Encoder::new(&mut out, options.quality)
                .encode(&image.pixels, width, height, color)
                .map_err(|e| failed(&e))?;
        }
        ImageFormat::Png => {
            let mut encoder = png::Encoder::new(&mut out, image.width, image.height);
            encoder.set_color(if image.channels == 1 { png::ColorType::Grayscale } else { png::ColorType::Rgb });
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header().map_err(|e| failed(&e))?;
            writer.write_image_data(&image.pixels).map_err(|e| failed(&e))?;
            writer.finish().map_err(|e| failed(&e))?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(width: u32, height: u32) -> Image {
        let pixels = (0..width * height).map(|i| (i % width * 255 / (width - 1)) as u8).collect();
        Image { width, height, channels: 1, pixels }
    }

    #[test]
    fn the_viewport_keeps_the_aspect_ratio() {
        let viewport = Viewport { width: 64, height: 64, sx: 0, sy: 0, sw: None, sh: None };
        let image = fit(gradient(200, 100), Some(viewport));
        assert_eq!((image.width, image.height), (64, 32));
        assert_eq!(image.pixels.len(), 64 * 32);
        assert!(image.pixels[0] < 5 && image.pixels[63] > 250, "the gradient survives");
    }

    #[test]
    fn a_negative_extent_crops_backwards_and_flips() {
        let viewport = Viewport { width: 10, height: 1, sx: 10, sy: 0, sw: Some(-10), sh: Some(1) };
        let image = fit(gradient(11, 1), Some(viewport));
        assert_eq!(image.width, 10);
        assert!(image.pixels[0] > image.pixels[9], "flipped: bright first");
    }

    #[test]
    fn shrinking_averages() {
        let pixels = vec![0, 255, 0, 255];
        assert_eq!(resample(&pixels, 2, 2, 1, 1, 1), vec![127]);
        assert_eq!(resample(&[10], 1, 1, 1, 2, 2), vec![10; 4]);
    }
}
