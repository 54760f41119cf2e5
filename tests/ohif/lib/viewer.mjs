// What the OHIF tests look at in the page: the study list's rows, and whether the viewport
// shows a generated study's pixels (the pattern of dicom.mjs), with the overlays from its metadata.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { SQUARE_BOX, MARKER_BOX, ROWS, COLUMNS } from './dicom.mjs';
import { decodePng, luminance } from './png.mjs';

export const escapeRegExp = text => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** OHIF shows "Family^Given" as "Family, Given". */
export function displayName(name) {
  const [family, given] = name.split('^');
  return given ? `${family}, ${given}` : family;
}

/** OHIF's study list shows dates as DD-Mon-YYYY. */
export function displayDate(da) {
  const months = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
  return `${da.slice(6, 8)}-${months[Number(da.slice(4, 6)) - 1]}-${da.slice(0, 4)}`;
}

/**
 * Checks a screenshot of the viewport for the generated pattern: starting at the centre (the
 * bright square), finds the square's edges, derives the display scale from its size, then
 * expects the mid-grey marker at the top left and dark background around it.
 * Returns { ok, details }.
 */
export function analyseViewport(image) {
  const cx = Math.floor(image.width / 2);
  const cy = Math.floor(image.height / 2);
  const lum = (x, y) => (x < 0 || y < 0 || x >= image.width || y >= image.height ? -1 : luminance(image, x, y));
  const mean = (x, y) => {
    let sum = 0;
    let n = 0;
    for (let dy = -2; dy <= 2; dy++) for (let dx = -2; dx <= 2; dx++) { sum += lum(Math.round(x) + dx, Math.round(y) + dy); n++; }
    return sum / n;
  };
  let bright = 0;
  let dark = 0;
  for (let y = 0; y < image.height; y += 2) {
    for (let x = 0; x < image.width; x += 2) {
      const l = lum(x, y);
      if (l > 200) bright++;
      else if (l < 40) dark++;
    }
  }
  const total = Math.ceil(image.width / 2) * Math.ceil(image.height / 2);
  const details = {
    size: `${image.width}x${image.height}`,
    brightFraction: +(bright / total).toFixed(3),
    darkFraction: +(dark / total).toFixed(3),
    centre: Math.round(lum(cx, cy)),
  };
  if (!(details.centre > 200)) return { ok: false, details: { ...details, why: 'the viewport centre is not bright (no image, or not the bright square)' } };
  const walk = (dx, dy) => {
    let x = cx;
    let y = cy;
    while (lum(x + dx, y + dy) > 128) { x += dx; y += dy; }
    return dx ? x : y;
  };
  const left = walk(-1, 0);
  const right = walk(1, 0);
  const top = walk(0, -1);
  const bottom = walk(0, 1);
  const width = right - left + 1;
  const height = bottom - top + 1;
  const scale = width / (SQUARE_BOX.x1 - SQUARE_BOX.x0);
  const qx = (left + right) / 2;
  const qy = (top + bottom) / 2;
  const squareCentre = (SQUARE_BOX.x0 + SQUARE_BOX.x1) / 2;
  const at = (ix, iy) => mean(qx + (ix - squareCentre) * scale, qy + (iy - squareCentre) * scale);
  const markerCentre = (MARKER_BOX.x0 + MARKER_BOX.x1) / 2;
  Object.assign(details, {
    square: { left, right, top, bottom, width, height },
    scale: +scale.toFixed(3),
    marker: Math.round(at(markerCentre, markerCentre)),
    backgroundRight: Math.round(at(COLUMNS - 40, squareCentre)),
    backgroundBelow: Math.round(at(squareCentre, ROWS - 40)),
    backgroundBottomRight: Math.round(at(COLUMNS - 40, ROWS - 40)),
    backgroundTopRight: Math.round(at(COLUMNS - 40, 40)),
  });
  const checks = [
    [width >= 30, 'the bright square is too small'],
    [Math.abs(width - height) <= Math.max(3, 0.05 * width), 'the bright region is not square'],
    [details.marker >= 70 && details.marker <= 190, 'no mid-grey marker at the top left of the image (flipped or wrong pixels?)'],
    [details.backgroundRight < 40, 'the background right of the square is not dark'],
    [details.backgroundBelow < 40, 'the background below the square is not dark'],
    [details.backgroundBottomRight < 40, 'the bottom-right background is not dark'],
    [details.backgroundTopRight < 40, 'the top-right background is not dark (flipped?)'],
  ];
  const failed = checks.filter(([ok]) => !ok).map(([, why]) => why);
  return { ok: failed.length === 0, details: failed.length ? { ...details, why: failed.join('; ') } : details };
}


/** The study list's row(s) for a study (matched by the patient's name as OHIF shows it). */
export function studyRow(page, study) {
  return page.locator('tbody tr', { hasText: displayName(study.patientName) });
}

/** The study list's rows, each as the text of its cells. */
export function studyListRows(page) {
  return page.$$eval('tbody tr', trs => trs.map(tr => [...tr.querySelectorAll('td')].map(td => td.innerText.trim())));
}

/** Asserts one row of `rows` for `study`, with its date, modality, description, accession and count. */
export function assertStudyRow(rows, study) {
  const matching = rows.filter(cells => cells.includes(displayName(study.patientName)));
  assert.equal(matching.length, 1, `one row for ${study.patientName}; rows: ${JSON.stringify(rows)}`);
  const cells = matching[0];
  const expectCell = (what, predicate) =>
    assert.ok(cells.some(predicate), `${what} missing in the row of ${study.patientName}: ${JSON.stringify(cells)}`);
  expectCell(`study date ${displayDate(study.studyDate)}`, c => c.startsWith(displayDate(study.studyDate)));
  expectCell('modality CT', c => c === study.modality);
  expectCell(`description ${study.description}`, c => c === study.description);
  expectCell(`accession ${study.accession}`, c => c === study.accession);
  expectCell(`instance count ${study.instances.length}`, c => c === String(study.instances.length));
}

/**
 * From the study list (already shown in `page`), opens `study` in OHIF's Basic Viewer and waits
 * until the viewport shows its pixels, at most `timeoutMs` (or 15 s after Kura first refused a
 * request made since `requestsBefore`). Writes the viewport's and the page's screenshots.
 * Returns { analysis, elapsedMs }.
 */
export async function openAndRender({ page, recorder, study, requestsBefore, timeoutMs, viewportPng, pagePng }) {
  await studyRow(page, study).first().click({ timeout: 45_000 });
  await page.locator('button[title="Basic Viewer"]').first().click({ timeout: 30_000 });
  await page.waitForURL(url => url.pathname.startsWith('/viewer') && url.search.includes(study.studyUid), { timeout: 30_000 });

  const viewport = page.locator('.viewport-element').first();
  let analysis = { ok: false, details: { why: 'no .viewport-element appeared' } };
  const started = Date.now();
  let firstKuraError = null;
  while (Date.now() - started < timeoutMs) {
    if (await viewport.isVisible().catch(() => false)) {
      const shot = await viewport.screenshot({ timeout: 10_000 }).catch(() => null);
      if (shot) {
        analysis = analyseViewport(decodePng(shot));
        if (analysis.ok) {
          // Settle (progressive loading, overlays), then judge the final picture.
          await page.waitForTimeout(1500);
          const final = await viewport.screenshot();
          fs.writeFileSync(viewportPng, final);
          analysis = analyseViewport(decodePng(final));
          break;
        }
      }
    }
    // Once Kura has refused a request, give OHIF 15 s to recover before giving up.
    if (!firstKuraError && recorder.kuraRequests.slice(requestsBefore).some(r => r.status >= 400)) firstKuraError = Date.now();
    if (firstKuraError && Date.now() - firstKuraError > 15_000) break;
    await page.waitForTimeout(500);
  }
  await page.screenshot({ path: pagePng });
  return { analysis, elapsedMs: Date.now() - started };
}

/** The overlays come from the series metadata (WADO-RS metadata): window, image count, series. */
export async function assertViewerOverlays(page, study) {
  const viewerText = await page.locator('body').innerText();
  const n = study.instances.length;
  for (const [what, pattern] of [
    ['the window width/level from the metadata', /W:\s*1000\s+L:\s*500/],
    [`the image position (1/${n})`, new RegExp(`\\(1/${n}\\)`)],
    ['the series description', new RegExp(escapeRegExp(study.seriesDescription))],
    ['the study description', new RegExp(escapeRegExp(study.description))],
  ]) {
    assert.match(viewerText, pattern, `the viewer does not show ${what}; its text:\n${viewerText}`);
  }
}
