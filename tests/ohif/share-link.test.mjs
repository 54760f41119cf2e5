// End-to-end: the OHIF Viewer in headless Chromium, pointed at a Kura share link's DICOMweb root
// (`http://host/share/{token}/dicomweb`), the only credential it has (issue 18).
//
//   node --test tests/ohif/share-link.test.mjs      (after tests/ohif/setup.sh; run.sh does both)
//
// Kura runs with --require-auth on a loopback port. An uploader key (`kura key create`, server
// stopped) stores two generated CT studies; an administrator key creates a link to one of them
// (POST /admin/shares {"study": …, "link": true}). OHIF's data source is the link's root, with no
// other credentials. Checks that the study list shows exactly the shared study, that it opens and
// its pixels render, and that every request the page made went to the viewer's own origin or under
// the link's root, without an Authorization header, and none failed or got a 4xx/5xx.
// Screenshots, Kura's log and the requests OHIF made go to tests/ohif/.cache/share-link-*.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { appConfig } from './lib/app-config.mjs';
import { CACHE, HERE, formatKuraRequests, launchBrowser, recordProblems, startKura, stow } from './lib/harness.mjs';
import { startStaticServer } from './lib/static-server.mjs';
import { testStudies } from './lib/studies.mjs';
import { assertStudyRow, assertViewerOverlays, displayName, openAndRender, studyListRows, studyRow } from './lib/viewer.mjs';

const { ohif } = JSON.parse(fs.readFileSync(path.join(HERE, 'package.json'), 'utf8'));
const DIST = path.join(CACHE, `ohif-app-${ohif.version}`, 'dist');
const RENDER_TIMEOUT_MS = Number(process.env.OHIF_RENDER_TIMEOUT_MS || 60_000);
const out = name => path.join(CACHE, `share-link-${name}`);

let web;
let kura;
let browser;
let recorder;
let page;
let shared; // the study shared by link
let other; // stored in the same institution, not shared
let link; // the link's DICOMweb root, http://127.0.0.1:PORT/share/kshare_…/dicomweb

/** Whether `url` is the link's root or under it. */
const underLink = url => url === link || url.startsWith(`${link}/`) || url.startsWith(`${link}?`);
/** The URL with the link's secret replaced, for messages and files. */
const redact = url => url.replace(link, '{link}');

before(async () => {
  if (!fs.existsSync(path.join(DIST, 'index.html'))) {
    throw new Error(`OHIF ${ohif.version} is not in ${DIST}: run tests/ohif/setup.sh first`);
  }
  fs.mkdirSync(CACHE, { recursive: true });
  const bearer = key => ({ authorization: `Bearer ${key}` });
  kura = await startKura({
    logFile: out('kura.log'),
    serveArgs: ['--require-auth'],
    // With the server stopped: one key stores, another one searches and shares (README, "Security").
    prepare: ({ kura: run, data }) => {
      const key = (name, ...roles) =>
        run('key', 'create', '--data', data, '--institution', 'st-mary', ...roles.flatMap(r => ['--role', r]), '--name', name)
          .trim().split('\n').pop();
      return { uploader: key('ohif-e2e-scanner', 'uploader'), administrator: key('ohif-e2e-admin', 'administrator', 'reader') };
    },
    headers: ({ administrator }) => bearer(administrator),
  });
  const { uploader, administrator } = kura.prepared;
  for (const key of [uploader, administrator]) assert.match(key, /^kura_[0-9a-f]{16}_/, 'kura key create prints the key');

  // The server requires authentication: without credentials, nothing.
  const anonymous = await fetch(`${kura.base}/studies`, { headers: { accept: 'application/dicom+json' } });
  assert.equal(anonymous.status, 401, `QIDO-RS without credentials under --require-auth: ${anonymous.status}`);

  [shared, other] = testStudies();
  for (const study of [shared, other]) await stow(kura.base, study, bearer(uploader));
  const stored = await fetch(`${kura.base}/studies`, { headers: { accept: 'application/dicom+json', ...bearer(administrator) } });
  assert.equal(stored.status, 200, `QIDO-RS with the administrator's key: ${stored.status}`);
  assert.equal((await stored.json()).length, 2, "both studies are stored and the institution's reader sees them");

  const created = await fetch(`${kura.origin}/admin/shares`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...bearer(administrator) },
    body: JSON.stringify({ study: shared.studyUid, link: true, expires_in_secs: 3600 }),
  });
  const text = await created.text();
  assert.equal(created.status, 201, `POST /admin/shares: ${created.status} ${text}`);
  const share = JSON.parse(text);
  assert.match(share.token ?? '', /^kshare_/, `the new link's token: ${text}`);
  link = share.url;
  assert.equal(link, `${kura.origin}/share/${share.token}/dicomweb`, 'the link Kura minted');

  // The link by itself, outside the browser: the shared study and nothing else.
  const listed = await fetch(`${link}/studies`, { headers: { accept: 'application/dicom+json' } });
  assert.equal(listed.status, 200, `QIDO-RS through the link: ${listed.status}`);
  const uids = (await listed.json()).map(s => s['0020000D']?.Value?.[0]);
  assert.deepEqual(uids, [shared.studyUid], 'the studies QIDO-RS lists through the link');
  // Every URL Kura minted in its answers through the link (RetrieveURL, BulkDataURI) is under it.
  const minted = [];
  const collect = value => {
    if (Array.isArray(value)) value.forEach(collect);
    else if (value && typeof value === 'object') {
      if (typeof value.BulkDataURI === 'string') minted.push(value.BulkDataURI);
      if (value['00081190']?.Value) minted.push(...value['00081190'].Value);
      Object.values(value).forEach(collect);
    }
  };
  for (const resource of [
    '/studies',
    `/studies/${shared.studyUid}/series`,
    `/studies/${shared.studyUid}/series/${shared.seriesUid}/instances`,
    `/studies/${shared.studyUid}/metadata`,
  ]) {
    const response = await fetch(`${link}${resource}`, { headers: { accept: 'application/dicom+json' } });
    assert.equal(response.status, 200, `GET {link}${resource}: ${response.status}`);
    collect(await response.json());
  }
  assert.ok(minted.length > shared.instances.length, `Kura minted URLs through the link: ${minted.length}`);
  const outside = minted.filter(url => !underLink(url));
  assert.deepEqual(outside, [], 'URLs Kura minted through the link outside its root');
  const bulk = minted.find(url => /\/bulkdata\//i.test(url)) ?? minted.find(url => url.includes('/instances/'));
  const fetched = await fetch(bulk);
  assert.equal(fetched.status, 200, `GET ${redact(bulk)} (minted by Kura) without other credentials: ${fetched.status}`);
  await fetched.arrayBuffer();
  console.log(`${minted.length} URLs minted through the link, all under it; fetched ${redact(bulk)}`);
  const hidden = await fetch(`${link}/studies/${other.studyUid}/metadata`, { headers: { accept: 'application/dicom+json' } });
  assert.equal(hidden.status, 404, 'the metadata of the study not shared, through the link');

  const overrides = { '/app-config.js': { body: appConfig(link), type: 'text/javascript; charset=utf-8' } };
  fs.writeFileSync(out('app-config.js'), redact(overrides['/app-config.js'].body));
  web = await startStaticServer(DIST, { overrides });

  browser = await launchBrowser();
  // A returning user: OHIF's onboarding tour (a popup over the viewport) was already shown.
  await browser.context.addInitScript(() => {
    window.localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));
  });
  recorder = await recordProblems(browser.context, link);
  page = browser.context.pages()[0] ?? (await browser.context.newPage());
  console.log(`OHIF ${ohif.version}, Chromium ${browser.version}, Kura ${kura.binary} with --require-auth on ${kura.origin}, ` +
    `OHIF's data source ${redact(link)}, viewer on ${web.url}`);
}, { timeout: 120_000 });

after(async () => {
  if (recorder) {
    const all = recorder.requests.map(r => `  ${r.method} ${redact(r.url)}`).join('\n');
    fs.writeFileSync(out('kura-requests.txt'), `${formatKuraRequests(recorder.kuraRequests, link)}\n`);
    fs.writeFileSync(out('page-requests.txt'), `${all}\n`);
    if (recorder.external.length) console.log(`requests to other hosts (blocked):\n${recorder.external.map(u => `  ${u}`).join('\n')}`);
  }
  await page?.close().catch(() => {});
  await browser?.close().catch(() => {});
  await kura?.stop().catch(() => {});
  await web?.close().catch(() => {});
});

function assertNoProblems(mark, what) {
  const problems = recorder.since(mark).map(redact);
  assert.deepEqual(problems, [], `${what}: ${problems.length} failed request(s) / console error(s):\n  ${problems.join('\n  ')}`);
}

test('through a share link, the OHIF study list shows the shared study and no other', { timeout: 90_000 }, async () => {
  const mark = recorder.problems.length;
  await page.goto(`${web.url}/`, { waitUntil: 'load' });
  await studyRow(page, shared).first().waitFor({ state: 'visible', timeout: 45_000 });
  // The list has answered (the shared study is in it); let any late rows arrive before judging.
  await page.waitForTimeout(1000);
  await page.screenshot({ path: out('study-list.png') });
  // The table's first row holds the search filters; a study's row has a date (DD-Mon-YYYY).
  const rows = (await studyListRows(page)).filter(cells => cells.some(c => /^\d{2}-[A-Z][a-z]{2}-\d{4}/.test(c)));
  assert.equal(rows.length, 1, `one study in the study list; rows: ${JSON.stringify(rows)}`);
  assertStudyRow(rows, shared);
  const text = await page.locator('body').innerText();
  for (const leak of [displayName(other.patientName), other.patientId, other.accession, other.description]) {
    assert.ok(!text.includes(leak), `the study list shows ${leak} of the study that is not shared`);
  }
  assert.ok(recorder.kuraRequests.some(r => /\/studies\?/.test(r.url)), 'OHIF searched for studies through the link');
  assertNoProblems(mark, 'study list');
});

test('through a share link, the shared study opens in the OHIF viewer and its pixels render', { timeout: RENDER_TIMEOUT_MS + 90_000 }, async t => {
  const mark = recorder.problems.length;
  const requestsBefore = recorder.kuraRequests.length;
  if (!page.url().startsWith(web.url)) await page.goto(`${web.url}/`, { waitUntil: 'load' });
  const { analysis, elapsedMs } = await openAndRender({
    page,
    recorder,
    study: shared,
    requestsBefore,
    timeoutMs: RENDER_TIMEOUT_MS,
    viewportPng: out('viewport.png'),
    pagePng: out('viewer.png'),
  });
  const requests = formatKuraRequests(recorder.kuraRequests.slice(requestsBefore), link);
  t.diagnostic(`requests OHIF made through the link while opening the study:\n${requests}`);
  t.diagnostic(`viewport analysis after ${elapsedMs} ms: ${JSON.stringify(analysis.details)}`);
  const problems = recorder.since(mark).map(redact);
  assert.ok(
    analysis.ok,
    `the viewport does not show the study's pixels: ${JSON.stringify(analysis.details)}\n` +
      `failed requests / console errors:\n  ${problems.join('\n  ') || '(none)'}\n` +
      `requests through the link:\n${requests}`,
  );
  await assertViewerOverlays(page, shared);
  const paths = recorder.kuraRequests.slice(requestsBefore).map(r => new URL(r.url).pathname);
  assert.ok(paths.some(p => p.endsWith('/metadata')), 'OHIF read the series metadata through the link');
  assert.ok(paths.some(p => /\/frames\/\d+$/.test(p)), 'OHIF retrieved frames through the link');
  assertNoProblems(mark, 'viewer');
});

test('every request OHIF made went to the viewer or under the link root, with no other credentials', async t => {
  const viewer = new URL(web.url).origin;
  const elsewhere = recorder.requests.filter(r => {
    if (underLink(r.url)) return false;
    if (/^(data|blob):/.test(r.url)) return false;
    return new URL(r.url).origin !== viewer;
  });
  const toLink = recorder.requests.filter(r => underLink(r.url));
  t.diagnostic(`${recorder.requests.length} requests in all, ${toLink.length} under the link root, ${recorder.kuraRequests.length} answered by Kura`);
  assert.ok(toLink.length > 0 && recorder.kuraRequests.length > 0, 'OHIF made requests through the link');
  assert.deepEqual(elsewhere.map(r => `${r.method} ${redact(r.url)}`), [], 'requests neither to the viewer nor under the link root');
  assert.deepEqual(recorder.external, [], 'requests to other hosts');
  const withCredentials = recorder.kuraRequests.filter(r => r.authorization);
  assert.deepEqual(withCredentials.map(r => redact(r.url)), [], 'requests to Kura with an Authorization header');
  const refused = recorder.kuraRequests.filter(r => r.status >= 400);
  assert.deepEqual(refused.map(r => `${r.status} ${r.method} ${redact(r.url)}`), [], 'requests Kura refused');
  assertNoProblems(0, 'the whole session');
});
