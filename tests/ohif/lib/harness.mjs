// Processes and bookkeeping for the OHIF end-to-end test: a Kura server on a loopback port,
// STOW-RS of generated studies, headless Chromium, and a recorder of everything that went
// wrong in the page (failed requests, HTTP errors, console errors) plus every request to Kura.

import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { stowBody } from './dicom.mjs';

export const HERE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const REPO = path.resolve(HERE, '..', '..');
export const CACHE = path.join(HERE, '.cache');

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

/**
 * Starts `kura serve` from a private copy of the binary (the original may be rebuilt while the
 * test runs), with no --cors-origins: on loopback Kura allows the loopback origins, the viewer's
 * among them. `prepare({ kura, data })`, when given, runs first with the server not yet started
 * (`kura(...args)` runs the private copy of `kura` with those arguments, synchronously, and returns its
 * standard output); its result is returned as `prepared`. `serveArgs` are added to `kura serve`;
 * `headers` (or `headers(prepared)`) go with the readiness probe, a QIDO-RS search (a reader's
 * Bearer key, when the server requires authentication).
 * Resolves once QIDO-RS answers.
 */
export async function startKura({ logFile, serveArgs = [], prepare, headers = {} }) {
  const source = process.env.KURA_BIN || path.join(REPO, 'target', 'release', 'kura');
  if (!fs.existsSync(source)) throw new Error(`Kura binary not found at ${source} (build it, or set KURA_BIN)`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kura-ohif-'));
  const binary = path.join(dir, 'kura');
  fs.copyFileSync(source, binary);
  fs.chmodSync(binary, 0o755);
  const data = path.join(dir, 'data');
  fs.mkdirSync(data);
  const kura = (...args) => execFileSync(binary, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1' } });
  const prepared = prepare ? await prepare({ kura, data }) : undefined;
  const probeHeaders = typeof headers === 'function' ? headers(prepared) : headers;
  const port = await freePort();
  const log = fs.openSync(logFile, 'w');
  const child = spawn(binary, ['serve', '--listen', `127.0.0.1:${port}`, '--data', data, ...serveArgs], {
    stdio: ['ignore', log, log],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info', NO_COLOR: '1' },
  });
  let exited = null;
  child.on('exit', (code, signal) => { exited = { code, signal }; });
  const base = `http://127.0.0.1:${port}/dicomweb`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (exited) throw new Error(`kura exited early (${JSON.stringify(exited)}); log:\n${fs.readFileSync(logFile, 'utf8')}`);
    try {
      const response = await fetch(`${base}/studies?limit=1`, { headers: { accept: 'application/dicom+json', ...probeHeaders } });
      if (response.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`kura did not answer on ${base} within 30 s`);
    await sleep(100);
  }
  return {
    port,
    base,
    origin: `http://127.0.0.1:${port}`,
    binary: source,
    data,
    prepared,
    async stop() {
      if (!exited) {
        child.kill('SIGTERM');
        for (let i = 0; i < 50 && !exited; i++) await sleep(100);
        if (!exited) child.kill('SIGKILL');
      }
      fs.closeSync(log);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** STOW-RS of one study's instances (with `headers`, say a Bearer key); throws unless every instance was stored. */
export async function stow(base, study, headers = {}) {
  const { body, contentType } = stowBody(study.instances);
  const response = await fetch(`${base}/studies`, {
    method: 'POST',
    headers: { 'content-type': contentType, accept: 'application/dicom+json', ...headers },
    body,
  });
  const text = await response.text();
  if (response.status !== 200) throw new Error(`STOW-RS answered ${response.status}: ${text}`);
  const json = JSON.parse(text);
  const stored = json['00081199']?.Value ?? [];
  if (stored.length !== study.instances.length || json['00081198']) {
    throw new Error(`STOW-RS stored ${stored.length} of ${study.instances.length} instances: ${text}`);
  }
}

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Headless Chromium (Debian's, or CHROMIUM_BIN) in a fresh profile. */
export async function launchBrowser() {
  const { chromium } = await import('playwright-core');
  const executablePath = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'kura-ohif-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1400, height: 900 },
    serviceWorkers: 'block',
  });
  return {
    context,
    version: context.browser()?.version() ?? 'unknown',
    async close() {
      await context.close();
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}

function isLoopback(url) {
  try {
    const { hostname } = new URL(url);
    return hostname === '127.0.0.1' || hostname === 'localhost' || hostname === '[::1]';
  } catch {
    return true; // data:, blob: and the like never leave the machine
  }
}

/**
 * Watches a browser context: every failed request, every HTTP error response, every console
 * error and uncaught page error, and every request to Kura with its Accept header, whether it
 * carried an Authorization header, and its status; also every request the pages made at all
 * (`requests`: method and URL, answered or not). Requests to anything but loopback are aborted
 * (there is no network here) and recorded.
 */
export async function recordProblems(context, kuraBase) {
  const problems = [];
  const kuraRequests = [];
  const external = [];
  const requests = [];
  context.on('request', request => requests.push({ method: request.method(), url: request.url() }));
  await context.route(url => !isLoopback(url.href), route => {
    external.push(route.request().url());
    return route.abort('blockedbyclient');
  });
  const watch = page => {
    page.on('console', message => {
      if (message.type() === 'error') {
        const { url, lineNumber } = message.location();
        problems.push(`console error: ${message.text()}${url ? ` (${url}:${lineNumber})` : ''}`);
      }
    });
    page.on('pageerror', error => problems.push(`uncaught page error: ${error.stack || error}`));
  };
  context.pages().forEach(watch);
  context.on('page', watch);
  context.on('requestfailed', request => {
    const url = request.url();
    if (!isLoopback(url)) return; // recorded in `external`
    problems.push(`request failed: ${request.method()} ${url} (${request.failure()?.errorText})`);
  });
  context.on('response', async response => {
    const request = response.request();
    const url = response.url();
    if (url.startsWith(kuraBase)) {
      const headers = await request.allHeaders().catch(() => request.headers());
      kuraRequests.push({
        method: request.method(),
        url,
        accept: headers.accept ?? null,
        authorization: headers.authorization !== undefined,
        status: response.status(),
        contentType: response.headers()['content-type'] ?? null,
      });
    }
    if (response.status() >= 400) {
      let body = '';
      try {
        body = (await response.text()).slice(0, 300);
      } catch {
        // body not available
      }
      problems.push(`HTTP ${response.status()} for ${request.method()} ${url}${body ? `: ${body}` : ''}`);
    }
  });
  return {
    problems,
    kuraRequests,
    external,
    requests,
    /** Problems recorded since `mark` (an index from `problems.length`). */
    since: mark => problems.slice(mark),
  };
}

/** A readable list of the requests to Kura: method, URL, Accept, status. */
export function formatKuraRequests(requests, base) {
  return requests
    .map(r => `  ${r.status} ${r.method} ${r.url.replace(base, '{kura}')}  [Accept: ${r.accept}] -> ${r.contentType}`)
    .join('\n');
}
