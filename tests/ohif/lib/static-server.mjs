// A tiny static file server for the OHIF build: loopback only, correct MIME types, SPA
// fallback to index.html for unknown paths, and selected paths overridden by in-memory files
// (the app-config.js pointing OHIF at Kura).

import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';

const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.wasm': 'application/wasm',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.ico': 'image/x-icon',
  '.gif': 'image/gif',
  '.webp': 'image/webp',
  '.woff': 'font/woff',
  '.woff2': 'font/woff2',
  '.ttf': 'font/ttf',
  '.txt': 'text/plain; charset=utf-8',
  '.xml': 'application/xml',
  '.webmanifest': 'application/manifest+json',
};

/**
 * Serves `root` on 127.0.0.1 (port 0 = any free one). `overrides` maps URL paths to
 * { body, type }. Resolves to { server, port, url, close() }.
 */
export async function startStaticServer(root, { overrides = {}, port = 0 } = {}) {
  const rootDir = path.resolve(root);
  const index = path.join(rootDir, 'index.html');
  const server = http.createServer((req, res) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    let pathname;
    try {
      pathname = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    } catch {
      res.writeHead(400).end();
      return;
    }
    const send = (status, type, body) => {
      res.writeHead(status, { 'content-type': type, 'content-length': body.length, 'cache-control': 'no-store' });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    if (Object.hasOwn(overrides, pathname)) {
      const { body, type } = overrides[pathname];
      send(200, type, Buffer.from(body));
      return;
    }
    const file = path.join(rootDir, path.normalize(pathname));
    if (file !== rootDir && !file.startsWith(rootDir + path.sep)) {
      send(403, 'text/plain', Buffer.from('forbidden'));
      return;
    }
    fs.stat(file, (err, stat) => {
      if (!err && stat.isFile()) {
        const type = MIME[path.extname(file).toLowerCase()] ?? 'application/octet-stream';
        fs.readFile(file, (readErr, body) => (readErr ? send(500, 'text/plain', Buffer.from(String(readErr))) : send(200, type, body)));
        return;
      }
      // A missing asset (a known file type) is a real 404: a missing chunk must not be answered
      // with HTML. Anything else is a client-side route of the single-page app.
      const ext = path.extname(pathname).toLowerCase();
      if (Object.hasOwn(MIME, ext) && ext !== '.html') {
        send(404, 'text/plain', Buffer.from('not found'));
        return;
      }
      fs.readFile(index, (readErr, body) => (readErr ? send(500, 'text/plain', Buffer.from(String(readErr))) : send(200, MIME['.html'], body)));
    });
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  const actual = server.address().port;
  return {
    server,
    port: actual,
    url: `http://127.0.0.1:${actual}`,
    close: () => new Promise(resolve => { server.closeAllConnections?.(); server.close(() => resolve()); }),
  };
}
