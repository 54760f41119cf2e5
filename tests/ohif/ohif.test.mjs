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
import { startStaticServer } from './lib/static-server.mjs';
import { testStudies } from './lib/studies.mjs';
import { assertStudyRow, assertViewerOverlays, openAndRender, studyListRows, studyRow } from './lib/viewer.mjs';

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

test('the OHIF study list shows every study stored in Kura', { timeout: 90_000 }, async () => {
  const mark = recorder.problems.length;
  await page.goto(`${web.url}/`, { waitUntil: 'load' });
  for (const study of studies) {
    await studyRow(page, study).first().waitFor({ state: 'visible', timeout: 45_000 });
  }
  await page.screenshot({ path: path.join(CACHE, 'study-list.png') });
  const rows = await studyListRows(page);
  for (const study of studies) assertStudyRow(rows, study);
  assertNoProblems(mark, 'study list');
});

test('a study opens in the OHIF viewer and its pixels render', { timeout: RENDER_TIMEOUT_MS + 90_000 }, async t => {
  const mark = recorder.problems.length;
  const requestsBefore = recorder.kuraRequests.length;
  const study = studies[0];
  if (!page.url().startsWith(web.url)) await page.goto(`${web.url}/`, { waitUntil: 'load' });
  const { analysis, elapsedMs } = await openAndRender({
    page,
    recorder,
    study,
    requestsBefore,
    timeoutMs: RENDER_TIMEOUT_MS,
    viewportPng: path.join(CACHE, 'viewport.png'),
    pagePng: path.join(CACHE, 'viewer.png'),
  });
  const requests = formatKuraRequests(recorder.kuraRequests.slice(requestsBefore), kura.base);
  t.diagnostic(`requests OHIF made to Kura while opening the study:\n${requests}`);
  t.diagnostic(`viewport analysis after ${elapsedMs} ms: ${JSON.stringify(analysis.details)}`);
  const problems = recorder.since(mark);
  assert.ok(
    analysis.ok,
    `the viewport does not show the study's pixels: ${JSON.stringify(analysis.details)}\n` +
      `failed requests / console errors:\n  ${problems.join('\n  ') || '(none)'}\n` +
      `requests to Kura:\n${requests}`,
  );
  await assertViewerOverlays(page, study);
  assertNoProblems(mark, 'viewer');
});
