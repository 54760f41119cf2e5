#!/bin/bash
# Storage compression (issue 19 item 4): a 300-slice CT sent with `kura upload --pixel-codec none`
# to servers with --store-compression none / jpeg-ls / jpeg-xl; ingest time, bytes on disk, and
# the received file given back byte for byte. benches/README.md, "Storage compression".
# Needs /tmp/ct300: python3 benches/make_ct_study.py --out /tmp/ct300 --slices 300 --seed 1
K=${KURA_BIN:-target/release/kura}
for mode in none jpeg-ls jpeg-xl; do
  D=/tmp/storec_bench_$mode; rm -rf $D; mkdir -p $D
  PORT=$((18700 + RANDOM % 200))
  $K serve --listen 127.0.0.1:$PORT --data $D/data --store-compression $mode > $D/log 2>&1 &
  PID=$!
  for i in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:$PORT/dicomweb/studies && break; sleep 0.2; done
  S=$(date +%s.%N)
  $K upload --to http://127.0.0.1:$PORT/dicomweb --pixel-codec none --no-compress /tmp/ct300 > $D/upload.log 2>&1
  RC=$?
  E=$(date +%s.%N)
  echo "$mode upload_rc=$RC seconds=$(echo "$E - $S" | bc)"
  tail -1 $D/upload.log
  echo "$mode blobs_bytes=$(du -sb $D/data/blobs | cut -f1) data_bytes=$(du -sb $D/data | cut -f1)"
  # byte-exact check on 3 slices
  for f in CT0001.dcm CT0150.dcm CT0300.dcm; do
    read ST SE SO < <(python3 -c "import pydicom;d=pydicom.dcmread('/tmp/ct300/$f',stop_before_pixels=True);print(d.StudyInstanceUID,d.SeriesInstanceUID,d.SOPInstanceUID)")
    A=$(curl -s -H 'Accept: application/dicom' http://127.0.0.1:$PORT/dicomweb/studies/$ST/series/$SE/instances/$SO | sha256sum | cut -c1-16)
    B=$( (head -c 128 /dev/zero; tail -c +129 /tmp/ct300/$f) | sha256sum | cut -c1-16)
    T=$(curl -s -o /dev/null -w '%{content_type} %{size_download}' -H 'Accept: application/dicom; transfer-syntax=*' http://127.0.0.1:$PORT/dicomweb/studies/$ST/series/$SE/instances/$SO)
    echo "  $f default=$A file=$B star: $T"
  done
  # retrieval time of the whole study as received (default syntax), 1 client
  S=$(date +%s.%N)
  curl -s -o /dev/null -w 'study default: %{size_download} bytes ' -H 'Accept: multipart/related; type="application/dicom"' http://127.0.0.1:$PORT/dicomweb/studies/$ST
  E=$(date +%s.%N); echo "in $(echo "$E - $S" | bc) s"
  kill $PID; wait $PID 2>/dev/null
done
