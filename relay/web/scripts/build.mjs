// The production build of the web client, embedded in the relay binary.
//
//   node scripts/build.mjs            build into dist/ (what `npm run build` runs after tsc)
//   node scripts/build.mjs --check    build into a temporary directory and fail unless it
//                                     equals the committed dist/ (`npm run check-dist`)
//
// dist/ holds:
//   index.html                 static/index.html with the hashed asset names and their
//                              Subresource Integrity hashes (sha384) filled in; `{{load}}` is left
//                              for the relay, which puts a fresh random value there each time it
//                              serves the page (relay/src/web.rs)
//   assets/app-<hash>.js       src/app/main.ts and everything it imports, minified (ES2020, ESM)
//   assets/app-<hash>.css      the CSS it imports, extracted and minified
//   sw.js                      the service worker (src/sw/sw.ts: push notifications), minified,
//                              a classic script under a fixed name at the root (its scope is the
//                              directory it is served from), served like the bundle (no-store)
//   manifest.webmanifest, icon.svg, icon-192.png, icon-512.png   copied from static/
//   assets.rs                  the file table the relay include!()s (relay/src/web.rs)
//
// <hash> is the first 16 hex digits of the file's SHA-256, so a changed file gets a new
// name. The output is byte-for-byte the same for the same
// sources and the same locked esbuild: no timestamps, sorted file lists, no absolute paths.
// Compression is left to the relay (pure-Rust gzip at run time), so the committed bytes
// do not depend on the zlib this Node links.
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const STALE =
  'the embedded web bundle is stale: run `cd relay/web && npm run build` and commit relay/web/dist';

const CONTENT_TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.webmanifest': 'application/manifest+json',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
  '.txt': 'text/plain; charset=utf-8',
};

const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex');
/** A Subresource Integrity value for `bytes`. */
const sri = (bytes) => `sha384-${createHash('sha384').update(bytes).digest('base64')}`;
/** The slot the relay fills with a fresh value per response (never by the build). */
const RELAY_SLOT = '{{load}}';

function contentType(path) {
  const ext = path.slice(path.lastIndexOf('.'));
  const t = CONTENT_TYPES[ext];
  if (!t) throw new Error(`no content type for ${path}: add its extension to CONTENT_TYPES`);
  return t;
}

/**
 * The cache class the relay serves a file with (relay/src/web.rs): "page" (index.html: never
 * stored, `{{load}}` filled per response), "code" (the bundle under assets/: never stored),
 * "short" (manifest and icons, which run no code: an hour).
 */
function cacheClass(path) {
  if (path === 'index.html') return 'page';
  // The service worker runs code too; the browser checks it for updates itself.
  if (path.startsWith('assets/') || path === 'sw.js') return 'code';
  return 'short';
}

/** Every file under `dir`, as sorted `/`-separated relative paths. */
function walk(dir, base = dir) {
  let out = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out = out.concat(walk(p, base));
    else out.push(relative(base, p).split(sep).join('/'));
  }
  return out.sort();
}

/** What the app bundle and the service worker are built with: minified ES2020, in memory. */
const ESBUILD = {
  absWorkingDir: root,
  bundle: true,
  minify: true,
  target: 'es2020',
  platform: 'browser',
  charset: 'ascii',
  legalComments: 'eof',
  sourcemap: false,
  write: false,
  logLevel: 'warning',
};

/** Builds the bundle in memory: a map from dist-relative path to bytes. */
async function bundle() {
  const result = await build({
    ...ESBUILD,
    entryPoints: { app: 'src/app/main.ts' },
    outdir: 'dist/assets',
    format: 'esm',
    publicPath: '/assets',
    assetNames: '[name]-[hash]',
    loader: { '.png': 'file', '.svg': 'file', '.woff2': 'file' },
  });
  const files = new Map();
  const named = {};
  const distDir = join(root, 'dist');
  for (const f of result.outputFiles) {
    let rel = relative(distDir, f.path).split(sep).join('/');
    const m = /^assets\/app\.(js|css)$/.exec(rel);
    if (m) {
      // Content-hashed name: a changed file gets a new address.
      rel = `assets/app-${sha256(f.contents).slice(0, 16)}.${m[1]}`;
      named[`app.${m[1]}`] = `/${rel}`;
      named[`app.${m[1]}.sri`] = sri(f.contents);
    }
    files.set(rel, Buffer.from(f.contents));
  }
  for (const k of ['app.js', 'app.css', 'app.js.sri', 'app.css.sri']) {
    if (!named[k]) throw new Error(`esbuild produced no ${k}`);
  }
  files.set('sw.js', await serviceWorker());

  for (const name of walk(join(root, 'static'))) {
    let bytes = readFileSync(join(root, 'static', name));
    if (name === 'index.html') {
      let html = bytes.toString('utf8');
      for (const [k, url] of Object.entries(named)) {
        const slot = `{{${k}}}`;
        if (!html.includes(slot)) throw new Error(`static/index.html has no ${slot}`);
        html = html.replaceAll(slot, url);
      }
      if (!html.includes(RELAY_SLOT)) throw new Error(`static/index.html has no ${RELAY_SLOT}`);
      if (/\{\{[^}]*\}\}/.test(html.replaceAll(RELAY_SLOT, ''))) throw new Error('static/index.html has an unknown {{slot}}');
      bytes = Buffer.from(html, 'utf8');
    }
    if (files.has(name)) throw new Error(`static/${name} collides with a bundle output`);
    files.set(name, bytes);
  }
  if (!files.has('index.html')) throw new Error('static/index.html is missing');

  const paths = [...files.keys()].sort();
  const rows = paths.map((p) => {
    const bytes = files.get(p);
    const etag = `"${sha256(bytes).slice(0, 32)}"`;
    return (
      `    (${JSON.stringify(`/${p}`)}, ${JSON.stringify(contentType(p))}, ` +
      `${JSON.stringify(cacheClass(p))}, ${JSON.stringify(etag)},\n` +
      `     include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), ${JSON.stringify(`/web/dist/${p}`)}))),`
    );
  });
  const rs =
    '// @generated by relay/web/scripts/build.mjs from relay/web/src and relay/web/static.\n' +
    '// Do not edit: run `cd relay/web && npm run build` and commit relay/web/dist.\n' +
    '// One row per file: (URL path, Content-Type, cache class, strong ETag, bytes).\n' +
    '// Cache classes: "page" (index.html, {{load}} filled per response), "code" (/assets/*), "short" (the rest).\n' +
    '&[\n' +
    rows.join('\n') +
    '\n]\n';
  files.set('assets.rs', Buffer.from(rs, 'utf8'));
  return files;
}

/** The service worker: one classic script (service workers as modules are not everywhere yet). */
async function serviceWorker() {
  const result = await build({ ...ESBUILD, entryPoints: ['src/sw/sw.ts'], outfile: 'dist/sw.js', format: 'iife' });
  if (result.outputFiles.length !== 1) throw new Error('esbuild produced no single sw.js');
  return Buffer.from(result.outputFiles[0].contents);
}

function writeTree(dir, files) {
  rmSync(dir, { recursive: true, force: true });
  for (const [p, bytes] of files) {
    mkdirSync(dirname(join(dir, p)), { recursive: true });
    writeFileSync(join(dir, p), bytes);
  }
}

function listDist(dir) {
  try {
    return walk(dir);
  } catch {
    return [];
  }
}

const args = process.argv.slice(2);
const files = await bundle();
if (args[0] === '--check') {
  const tmp = mkdtempSync(join(tmpdir(), 'tandem-web-'));
  try {
    // Written out and read back, so the comparison is of files as the relay embeds them.
    writeTree(join(tmp, 'dist'), files);
    const fresh = join(tmp, 'dist');
    const committed = join(root, 'dist');
    const a = listDist(fresh);
    const b = listDist(committed);
    const problems = [];
    for (const p of a) {
      if (!b.includes(p)) problems.push(`missing from dist/: ${p}`);
      else if (!readFileSync(join(fresh, p)).equals(readFileSync(join(committed, p))))
        problems.push(`differs: dist/${p}`);
    }
    for (const p of b) if (!a.includes(p)) problems.push(`not produced by the build: dist/${p}`);
    if (problems.length > 0) {
      console.error(`error: ${STALE}`);
      for (const p of problems) console.error(`  ${p}`);
      process.exit(1);
    }
    console.log(`dist/ is up to date (${a.length} files)`);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
} else if (args.length === 0) {
  writeTree(join(root, 'dist'), files);
  for (const [p, bytes] of [...files].sort(([x], [y]) => (x < y ? -1 : 1))) {
    console.log(`${String(bytes.length).padStart(9)}  dist/${p}`);
  }
} else {
  console.error('usage: node scripts/build.mjs [--check]');
  process.exit(2);
}
