#!/usr/bin/env python3
"""Writes a synthetic CT study for the upload benchmark (benches/README.md, "Uploading over a
slow link"): N slices made from one real 512x512 16-bit CT slice (pydicom-data's 693_UNCR.dcm,
`pip install pydicom-data`), each shifted by a few pixels and given a little noise inside the
field of view, so that no two slices are equal and the pixels keep a real slice's statistics.
New Study/Series/SOP Instance UIDs (derived from --seed), InstanceNumber, slice position.

    python3 benches/make_ct_study.py --out /tmp/ct300 --slices 300 --seed 1
"""
import argparse
import glob
import os
import site

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian


def source_slice():
    for root in site.getsitepackages() + [site.getusersitepackages()]:
        found = glob.glob(os.path.join(root, "data_store", "data", "693_UNCR.dcm"))
        if found:
            return found[0]
    raise SystemExit("693_UNCR.dcm not found: pip install pydicom-data")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    template = pydicom.dcmread(source_slice())
    pixels = template.pixel_array.astype(np.int32)
    outside = pixels <= -2000  # the padding outside the reconstruction circle stays as it is
    root = f"2.25.{args.seed}{10**9 + args.slices}"
    study_uid, series_uid = f"{root}.1", f"{root}.1.1"
    os.makedirs(args.out, exist_ok=True)
    for index in range(args.slices):
        shifted = np.roll(pixels, shift=(index % 11 - 5, index % 7 - 3), axis=(0, 1))
        noisy = shifted + rng.normal(0, 2.0, size=shifted.shape).round().astype(np.int32)
        noisy[outside] = -2000
        ds = template.copy()
        ds.file_meta = template.file_meta.copy()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = f"{root}.1.1.{index + 1}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.InstanceNumber = index + 1
        ds.SliceLocation = float(index)
        ds.ImagePositionPatient = [-250.0, -250.0, float(index)]
        ds.PixelData = np.clip(noisy, -32768, 32767).astype(np.int16).tobytes()
        ds.save_as(os.path.join(args.out, f"CT{index + 1:04d}.dcm"), enforce_file_format=True)


if __name__ == "__main__":
    main()
