// A minimal DICOM PS3.10 writer (Explicit VR Little Endian) and a generator of synthetic CT
// studies whose pixels carry a recognisable pattern, so that a rendered viewport can be checked.

import { randomBytes } from 'node:crypto';

export const CT_IMAGE_STORAGE = '1.2.840.10008.5.1.4.1.1.2';
export const EXPLICIT_VR_LITTLE_ENDIAN = '1.2.840.10008.1.2.1';

/** A UID under the 2.25 root (PS3.5 B.2): a random 128-bit number in decimal. */
export function newUid() {
  return `2.25.${BigInt(`0x${randomBytes(16).toString('hex')}`) & ((1n << 127n) - 1n)}`;
}

const LONG_VRS = new Set(['OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SQ', 'SV', 'UC', 'UN', 'UR', 'UT', 'UV']);

function encodeValue(vr, value) {
  if (Buffer.isBuffer(value)) return value;
  switch (vr) {
    case 'US': {
      const values = [].concat(value);
      const buffer = Buffer.alloc(2 * values.length);
      values.forEach((v, i) => buffer.writeUInt16LE(v, 2 * i));
      return buffer;
    }
    case 'UL': {
      const values = [].concat(value);
      const buffer = Buffer.alloc(4 * values.length);
      values.forEach((v, i) => buffer.writeUInt32LE(v, 4 * i));
      return buffer;
    }
    default: {
      const text = [].concat(value).map(String).join('\\');
      return Buffer.from(text, 'latin1');
    }
  }
}

/** One data element: tag as 0xGGGGEEEE. Values are padded to even length as PS3.5 6.2 says. */
function element(tag, vr, value) {
  let body = encodeValue(vr, value);
  if (body.length % 2) body = Buffer.concat([body, Buffer.from([vr === 'UI' || vr === 'OB' ? 0 : 0x20])]);
  const long = LONG_VRS.has(vr);
  const header = Buffer.alloc(long ? 12 : 8);
  header.writeUInt16LE(tag >>> 16, 0);
  header.writeUInt16LE(tag & 0xffff, 2);
  header.write(vr, 4, 'latin1');
  if (long) header.writeUInt32LE(body.length, 8);
  else header.writeUInt16LE(body.length, 6);
  return Buffer.concat([header, body]);
}

function dataset(elements) {
  const sorted = [...elements].sort((a, b) => a[0] - b[0]);
  return Buffer.concat(sorted.map(([tag, vr, value]) => element(tag, vr, value)));
}

/** A PS3.10 file: preamble, DICM, file meta information, then the data set. */
export function part10(sopClassUid, sopInstanceUid, elements) {
  const meta = dataset([
    [0x00020001, 'OB', Buffer.from([0, 1])],
    [0x00020002, 'UI', sopClassUid],
    [0x00020003, 'UI', sopInstanceUid],
    [0x00020010, 'UI', EXPLICIT_VR_LITTLE_ENDIAN],
    [0x00020012, 'UI', '1.2.826.0.1.3680043.10.1571.1'],
    [0x00020013, 'SH', 'KURA_OHIF_TEST'],
  ]);
  const groupLength = element(0x00020000, 'UL', meta.length);
  return Buffer.concat([Buffer.alloc(128), Buffer.from('DICM', 'latin1'), groupLength, meta, dataset(elements)]);
}

export const ROWS = 256;
export const COLUMNS = 256;
/** Pixel values of the pattern: a dark background, a bright square in the middle, and a
 * mid-grey marker in the top-left quadrant (it shows whether the image is flipped). */
export const BACKGROUND = 0;
export const SQUARE = 1000;
export const MARKER = 500;
export const SQUARE_BOX = { x0: 80, y0: 80, x1: 176, y1: 176 }; // [x0, x1) × [y0, y1)
export const MARKER_BOX = { x0: 24, y0: 24, x1: 56, y1: 56 };

function pixels(sliceIndex) {
  const data = Buffer.alloc(ROWS * COLUMNS * 2);
  for (let y = 0; y < ROWS; y++) {
    for (let x = 0; x < COLUMNS; x++) {
      let value = BACKGROUND + ((x + y + sliceIndex) % 16); // faint texture, still black when windowed
      if (x >= SQUARE_BOX.x0 && x < SQUARE_BOX.x1 && y >= SQUARE_BOX.y0 && y < SQUARE_BOX.y1) value = SQUARE;
      else if (x >= MARKER_BOX.x0 && x < MARKER_BOX.x1 && y >= MARKER_BOX.y0 && y < MARKER_BOX.y1) value = MARKER;
      data.writeUInt16LE(value, 2 * (y * COLUMNS + x));
    }
  }
  return data;
}

/**
 * A CT study: one series of `slices` axial 256×256 16-bit MONOCHROME2 images.
 * Returns { study fields..., instances: [{ sopInstanceUid, bytes }] }.
 */
export function ctStudy({ patientName, patientId, birthDate, sex, studyDate, studyTime, description, accession, seriesDescription, slices }) {
  const studyUid = newUid();
  const seriesUid = newUid();
  const frameOfReferenceUid = newUid();
  const instances = [];
  for (let i = 0; i < slices; i++) {
    const sopInstanceUid = newUid();
    const z = (i * 2.5).toFixed(1);
    const bytes = part10(CT_IMAGE_STORAGE, sopInstanceUid, [
      [0x00080005, 'CS', 'ISO_IR 100'],
      [0x00080008, 'CS', ['ORIGINAL', 'PRIMARY', 'AXIAL']],
      [0x00080016, 'UI', CT_IMAGE_STORAGE],
      [0x00080018, 'UI', sopInstanceUid],
      [0x00080020, 'DA', studyDate],
      [0x00080021, 'DA', studyDate],
      [0x00080023, 'DA', studyDate],
      [0x00080030, 'TM', studyTime],
      [0x00080031, 'TM', studyTime],
      [0x00080033, 'TM', studyTime],
      [0x00080050, 'SH', accession],
      [0x00080060, 'CS', 'CT'],
      [0x00080070, 'LO', 'Kura test suite'],
      [0x00080090, 'PN', ''],
      [0x00081030, 'LO', description],
      [0x0008103e, 'LO', seriesDescription],
      [0x00100010, 'PN', patientName],
      [0x00100020, 'LO', patientId],
      [0x00100030, 'DA', birthDate],
      [0x00100040, 'CS', sex],
      [0x00180050, 'DS', '2.5'],
      [0x00180060, 'DS', '120'],
      [0x0020000d, 'UI', studyUid],
      [0x0020000e, 'UI', seriesUid],
      [0x00200010, 'SH', '1'],
      [0x00200011, 'IS', '1'],
      [0x00200013, 'IS', String(i + 1)],
      [0x00200032, 'DS', ['-127.5', '-127.5', z]],
      [0x00200037, 'DS', ['1', '0', '0', '0', '1', '0']],
      [0x00200052, 'UI', frameOfReferenceUid],
      [0x00201041, 'DS', z],
      [0x00280002, 'US', 1],
      [0x00280004, 'CS', 'MONOCHROME2'],
      [0x00280010, 'US', ROWS],
      [0x00280011, 'US', COLUMNS],
      [0x00280030, 'DS', ['1', '1']],
      [0x00280100, 'US', 16],
      [0x00280101, 'US', 16],
      [0x00280102, 'US', 15],
      [0x00280103, 'US', 0],
      [0x00281050, 'DS', '500'],
      [0x00281051, 'DS', '1000'],
      [0x00281052, 'DS', '0'],
      [0x00281053, 'DS', '1'],
      [0x00281054, 'LO', 'HU'],
      [0x7fe00010, 'OW', pixels(i)],
    ]);
    instances.push({ sopInstanceUid, bytes });
  }
  return { studyUid, seriesUid, patientName, patientId, studyDate, description, accession, seriesDescription, modality: 'CT', instances };
}

/** A STOW-RS request body: multipart/related, one application/dicom part per instance. */
export function stowBody(instances) {
  const boundary = `kura-ohif-${randomBytes(8).toString('hex')}`;
  const parts = [];
  for (const { bytes } of instances) {
    parts.push(Buffer.from(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`, 'latin1'), bytes, Buffer.from('\r\n', 'latin1'));
  }
  parts.push(Buffer.from(`--${boundary}--\r\n`, 'latin1'));
  return { body: Buffer.concat(parts), contentType: `multipart/related; type="application/dicom"; boundary=${boundary}` };
}
