// End-to-end: the OHIF Viewer (the prebuilt @ohif/app dist) in headless Chromium, against Kura.
//
//   node --test tests/ohif/ohif.test.mjs      (after tests/ohif/setup.sh; run.sh does both)
//
// Starts Kura (target/release/kura, or KURA_BIN) on a loopback port (no --cors-origins: the
// viewer's loopback origin is allowed by default), stores two generated CT studies with STOW-RS, serves OHIF with an app-config.js whose
// DICOMweb data source is Kura, then checks the study list and that a study's pixels render.
// Every failed request, HTTP error and console error in the page fails the test that saw it.
// Screenshots, Kura's log and the list of requests OHIF made to Kura go to tests/ohif/.cache/.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { appConfig } from './lib/app-config.mjs';
import { CACHE, HERE, formatKuraRequests, launchBrowser, recordProblems, startKura, stow } from './lib/harness.mjs';
import { decodePng, luminance } from './lib/png.mjs';
import { startStaticServer } from './lib/static-server.mjs';
import { testStudies } from './lib/studies.mjs';
import { SQUARE_BOX, MARKER_BOX, ROWS, COLUMNS } from './lib/dicom.mjs';

const { ohif } = JSON.parse(fs.readFileSync(path.join(HERE, 'package.json'), 'utf8'));
const DIST = path.join(CACHE, `ohif-app-${ohif.version}`, 'dist');
const RENDER_TIMEOUT_MS = Number(process.env.OHIF_RENDER_TIMEOUT_MS || 60_000);

let web;
let kura;
let browser;
let recorder;
let page;
let studies;

before(async () => {
  if (!fs.existsSync(path.join(DIST, 'index.html'))) {
    throw new Error(`OHIF ${ohif.version} is not in ${DIST}: run tests/ohif/setup.sh first`);
  }
  fs.mkdirSync(CACHE, { recursive: true });
  const overrides = {};
  web = await startStaticServer(DIST, { overrides });
  kura = await startKura({ logFile: path.join(CACHE, 'kura.log') });
  const config = appConfig(kura.base);
  overrides['/app-config.js'] = { body: config, type: 'text/javascript; charset=utf-8' };
  fs.writeFileSync(path.join(CACHE, 'app-config.js'), config);

  studies = testStudies();
  for (const study of studies) await stow(kura.base, study);

  browser = await launchBrowser();
  // A returning user: OHIF's onboarding tour (a popup over the viewport) was already shown.
  await browser.context.addInitScript(() => {
    window.localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));
  });
  recorder = await recordProblems(browser.context, kura.base);
  page = browser.context.pages()[0] ?? (await browser.context.newPage());
  console.log(`OHIF ${ohif.version}, Chromium ${browser.version}, Kura ${kura.binary} on ${kura.base}, viewer on ${web.url}`);
}, { timeout: 120_000 });

after(async () => {
  if (recorder) {
    const summary = formatKuraRequests(recorder.kuraRequests, kura.base);
    fs.writeFileSync(path.join(CACHE, 'kura-requests.json'), JSON.stringify(recorder.kuraRequests, null, 2));
    fs.writeFileSync(path.join(CACHE, 'kura-requests.txt'), `${summary}\n`);
    if (recorder.external.length) console.log(`requests to other hosts (blocked):\n${recorder.external.map(u => `  ${u}`).join('\n')}`);
  }
  await page?.close().catch(() => {});
  await browser?.close().catch(() => {});
  await kura?.stop().catch(() => {});
  await web?.close().catch(() => {});
});

function assertNoProblems(mark, what) {
  const problems = recorder.since(mark);
  assert.deepEqual(problems, [], `${what}: ${problems.length} failed request(s) / console error(s):\n  ${problems.join('\n  ')}`);
}

function studyRow(study) {
  return page.locator('tbody tr', { hasText: displayName(study.patientName) });
}

const escapeRegExp = text => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** OHIF shows "Family^Given" as "Family, Given". */
function displayName(name) {
  const [family, given] = name.split('^');
  return given ? `${family}, ${given}` : family;
}

/** OHIF's study list shows dates as DD-Mon-YYYY. */
function displayDate(da) {
  const months = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
  return `${da.slice(6, 8)}-${months[Number(da.slice(4, 6)) - 1]}-${da.slice(0, 4)}`;
}

test('the OHIF study list shows every study stored in Kura', { timeout: 90_000 }, async () => {
  const mark = recorder.problems.length;
  await page.goto(`${web.url}/`, { waitUntil: 'load' });
  for (const study of studies) {
    await studyRow(study).first().waitFor({ state: 'visible', timeout: 45_000 });
  }
  await page.screenshot({ path: path.join(CACHE, 'study-list.png') });
  const rows = await page.$$eval('tbody tr', trs => trs.map(tr => [...tr.querySelectorAll('td')].map(td => td.innerText.trim())));
  for (const study of studies) {
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
  assertNoProblems(mark, 'study list');
});

/**
 * Checks a screenshot of the viewport for the generated pattern: starting at the centre (the
 * bright square), finds the square's edges, derives the display scale from its size, then
 * expects the mid-grey marker at the top left and dark background around it.
 * Returns { ok, details }.
 */
function analyseViewport(image) {
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

test('a study opens in the OHIF viewer and its pixels render', { timeout: RENDER_TIMEOUT_MS + 90_000 }, async t => {
  const mark = recorder.problems.length;
  const requestsBefore = recorder.kuraRequests.length;
  const study = studies[0];
  if (!page.url().startsWith(web.url)) await page.goto(`${web.url}/`, { waitUntil: 'load' });
  await studyRow(study).first().click({ timeout: 45_000 });
  await page.locator('button[title="Basic Viewer"]').first().click({ timeout: 30_000 });
  await page.waitForURL(url => url.pathname.startsWith('/viewer') && url.search.includes(study.studyUid), { timeout: 30_000 });

  const viewport = page.locator('.viewport-element').first();
  let analysis = { ok: false, details: { why: 'no .viewport-element appeared' } };
  const started = Date.now();
  let firstKuraError = null;
  while (Date.now() - started < RENDER_TIMEOUT_MS) {
    if (await viewport.isVisible().catch(() => false)) {
      const shot = await viewport.screenshot({ timeout: 10_000 }).catch(() => null);
      if (shot) {
        analysis = analyseViewport(decodePng(shot));
        if (analysis.ok) {
          // Settle (progressive loading, overlays), then judge the final picture.
          await page.waitForTimeout(1500);
          const final = await viewport.screenshot();
          fs.writeFileSync(path.join(CACHE, 'viewport.png'), final);
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
  await page.screenshot({ path: path.join(CACHE, 'viewer.png') });
  const requests = formatKuraRequests(recorder.kuraRequests.slice(requestsBefore), kura.base);
  t.diagnostic(`requests OHIF made to Kura while opening the study:\n${requests}`);
  t.diagnostic(`viewport analysis after ${Date.now() - started} ms: ${JSON.stringify(analysis.details)}`);
  const problems = recorder.since(mark);
  assert.ok(
    analysis.ok,
    `the viewport does not show the study's pixels: ${JSON.stringify(analysis.details)}\n` +
      `failed requests / console errors:\n  ${problems.join('\n  ') || '(none)'}\n` +
      `requests to Kura:\n${requests}`,
  );
  // The overlays come from the series metadata (WADO-RS metadata): window, image count, series.
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
  assertNoProblems(mark, 'viewer');
});
