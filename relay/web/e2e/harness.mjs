// End-to-end harness: a standalone `tandem-relay` (killable with -9 and
// restartable on the same port and data dir), the desktop agent (`tandem pair`
// and `tandem run` with the jsonl fixture executor of the mobile SDK's tests),
// the QR code read with zbarimg as a phone camera would, and Debian's
// chromium driven headless through playwright-core with a phone's viewport.
//
// Every wait here is bounded and says what it waited for when it gives up.
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { networkInterfaces, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const WEB_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const REPO = resolve(WEB_DIR, '../..');
/** Where screenshots go: docs/screenshots, or $E2E_SCREENSHOTS (`off`: none). */
export const SCREENSHOTS = process.env.E2E_SCREENSHOTS ? resolve(process.env.E2E_SCREENSHOTS) : join(REPO, 'docs/screenshots');
/** The jsonl executor fixture shared with the mobile SDK's suite: `demo`, `count N MS`, `follow`, `sleep`. */
export const FIXTURE = join(REPO, 'mobile-ffi/tests/fixtures/executor.py');
/** The desktop agent's stand-in for Claude Code (print mode, stream-json; `--resume ID` continues ID). */
export const FAKE_CLAUDE = join(REPO, 'desktop-agent/tests/fixtures/fake-claude');
/** Default bound for a wait, in milliseconds. */
export const WAIT = 20_000;

/** Where `cargo build -p tandem-relay -p tandem-agent` put the binaries. */
export function binDir() {
  const target = process.env.CARGO_TARGET_DIR ? resolve(process.env.CARGO_TARGET_DIR) : join(REPO, 'target');
  const dir = join(target, 'debug');
  for (const b of ['tandem-relay', 'tandem']) {
    if (!existsSync(join(dir, b))) {
      throw new Error(`${join(dir, b)} is missing: run \`cargo build -p tandem-relay -p tandem-agent\` first`);
    }
  }
  return dir;
}

/** The chromium to drive: $CHROMIUM, else Debian's. */
export function chromiumPath() {
  const p = process.env.CHROMIUM ?? '/usr/bin/chromium';
  if (!existsSync(p)) throw new Error(`${p} is missing: install chromium (apt-get install chromium) or set CHROMIUM`);
  return p;
}

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** Poll `fn` until it returns a truthy value; throws `what` (plus `detail()`) after `timeout` ms. */
export async function waitUntil(what, fn, { timeout = WAIT, every = 100, detail } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      const extra = detail ? `\n${await detail()}` : '';
      const cause = last ? `\nlast error: ${last.message ?? last}` : '';
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${cause}${extra}`);
    }
    await sleep(every);
  }
}

/** A scratch directory for one run (kept on failure, see `Run.cleanup`). */
export function scratchDir() {
  return mkdtempSync(join(tmpdir(), 'tandem-web-e2e-'));
}

// ---------------------------------------------------------------------------
// processes

/** A child process in its own process group; stdout and stderr lines go to a log and a line buffer. */
export class Proc {
  constructor(name, cmd, args, { logDir, env = {}, stdin = false } = {}) {
    this.name = name;
    this.logPath = join(logDir, `${name}.log`);
    this.log = createWriteStream(this.logPath, { flags: 'a' });
    this.log.write(`$ ${cmd} ${args.join(' ')}\n`);
    this.lines = [];
    this.cursor = 0;
    this.waiters = new Set();
    this.exitCode = undefined;
    this.child = spawn(cmd, args, {
      env: { ...process.env, ...env },
      stdio: [stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
      detached: true, // own process group: kill the agent with its executor
    });
    this.exited = new Promise((res) => {
      this.child.on('exit', (code, signal) => {
        this.exitCode = code ?? signal;
        this.log.write(`[exited: ${this.exitCode}]\n`);
        this.wake();
        res(this.exitCode);
      });
      this.child.on('error', (e) => {
        this.exitCode = `spawn error: ${e.message}`;
        this.wake();
        res(this.exitCode);
      });
    });
    for (const s of [this.child.stdout, this.child.stderr]) {
      createInterface({ input: s }).on('line', (line) => {
        this.log.write(`${line}\n`);
        this.lines.push(line);
        this.wake();
      });
    }
  }

  wake() {
    for (const w of this.waiters) w();
  }

  get running() {
    return this.exitCode === undefined;
  }

  /** The first line from the cursor on matching `rx` (the cursor moves past it), as a match. */
  async waitLine(rx, timeout = WAIT) {
    const deadline = Date.now() + timeout;
    for (;;) {
      while (this.cursor < this.lines.length) {
        const m = rx.exec(this.lines[this.cursor++]);
        if (m) return m;
      }
      if (!this.running) {
        throw new Error(`${this.name} exited (${this.exitCode}) before printing a line matching ${rx}\n${this.tail()}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.name} printed no line matching ${rx} within ${timeout} ms\n${this.tail()}`);
      await new Promise((res) => {
        const t = setTimeout(done, left);
        const self = this;
        function done() {
          clearTimeout(t);
          self.waiters.delete(done);
          res();
        }
        this.waiters.add(done);
      });
    }
  }

  write(text) {
    this.child.stdin.write(text);
  }

  signal(sig) {
    if (!this.running) return;
    try {
      process.kill(-this.child.pid, sig);
    } catch {
      /* already gone */
    }
  }

  /** SIGKILL the process group (a crash) and wait for it. */
  async kill9() {
    this.signal('SIGKILL');
    await this.exited;
  }

  /** SIGTERM, then SIGKILL after `grace` ms. */
  async stop(grace = 5000) {
    if (!this.running) return this.exitCode;
    this.signal('SIGTERM');
    const t = setTimeout(() => this.signal('SIGKILL'), grace);
    await this.exited;
    clearTimeout(t);
    return this.exitCode;
  }

  /** Wait for the process to exit by itself. */
  async wait(timeout = WAIT) {
    let t;
    const r = await Promise.race([this.exited, new Promise((res) => (t = setTimeout(() => res('timeout'), timeout)))]);
    clearTimeout(t);
    if (r === 'timeout') throw new Error(`${this.name} did not exit within ${timeout} ms\n${this.tail()}`);
    return r;
  }

  tail(n = 20) {
    return `--- last lines of ${this.logPath} ---\n${this.lines.slice(-n).join('\n')}`;
  }
}

/** Everything one run starts: processes, directories; stops them all at the end. */
export class Run {
  constructor() {
    this.bin = binDir();
    this.dir = scratchDir();
    this.logs = join(this.dir, 'logs');
    mkdirSync(this.logs);
    this.procs = [];
    this.config = join(this.dir, 'config.toml');
    // Two executors (the same fixture) and two projects, so the pickers show;
    // a third, `claude`, runs the fake Claude Code with its session store in
    // `claudeConfig` and its command lines logged to `claudeArgv`.
    this.projects = { home: join(this.dir, 'project-home'), site: join(this.dir, 'project-site') };
    for (const d of Object.values(this.projects)) mkdirSync(d);
    this.claudeConfig = join(this.dir, 'claude-config');
    this.claudeArgv = join(this.dir, 'claude-argv.jsonl');
    writeFileSync(
      this.config,
      `[[executor]]\nname = "fixture"\ntype = "jsonl"\nprogram = "${FIXTURE}"\n\n` +
        `[[executor]]\nname = "other"\ntype = "jsonl"\nprogram = "${FIXTURE}"\n\n` +
        `[[executor]]\nname = "claude"\ntype = "claude"\nprogram = "${FAKE_CLAUDE}"\n` +
        // (TANDEM_LOG: the fake lets its permission server's log through to the thread.)
        `env = [["CLAUDE_CONFIG_DIR", "${this.claudeConfig}"], ["FAKE_CLAUDE_ARGV_LOG", "${this.claudeArgv}"], ["TANDEM_LOG", "warn"]]\n\n` +
        `[[project]]\nname = "home"\npath = "${this.projects.home}"\n\n` +
        `[[project]]\nname = "site"\npath = "${this.projects.site}"\n`,
    );
  }

  start(name, cmd, args, opts = {}) {
    const p = new Proc(name, cmd, args, { logDir: this.logs, ...opts });
    this.procs.push(p);
    return p;
  }

  /** A standalone relay; `listen` 127.0.0.1:0 picks a free port; `env` sets its options. Resolves once it listens. */
  async relay(name, dataDir, listen = '127.0.0.1:0', env = {}) {
    const p = this.start(name, join(this.bin, 'tandem-relay'), ['--listen', listen, '--data-dir', dataDir, '--tls', 'off'], {
      env: { TANDEM_RELAY_LOG: process.env.TEST_LOG ?? 'info', ...env },
    });
    const m = await p.waitLine(/tandem-relay listening on ws:\/\/(\S+)\/v1\/connect/);
    p.addr = m[1];
    p.dataDir = dataDir;
    return p;
  }

  /** `tandem --data-dir DIR --config CONFIG --name NAME ARGS…` as a process. */
  tandem(name, dataDir, args, { env = {}, stdin = false, desktopName = 'build-box' } = {}) {
    return this.start(
      name,
      join(this.bin, 'tandem'),
      ['--data-dir', dataDir, '--config', this.config, '--name', desktopName, ...args],
      { env: { TANDEM_LOG: process.env.TEST_LOG ?? 'info', ...env }, stdin },
    );
  }

  /**
   * A Claude Code session in the store the `claude` executor lists
   * (`$CLAUDE_CONFIG_DIR/projects/<cwd, every non-alphanumeric as '-'>/<id>.jsonl`):
   * a summary line and its first prompt, as Claude Code writes them.
   */
  claudeSession(cwd, id, summary, prompt) {
    const dir = join(this.claudeConfig, 'projects', cwd.replace(/[^A-Za-z0-9]/g, '-'));
    mkdirSync(dir, { recursive: true });
    const lines = [
      { type: 'summary', summary, leafUuid: randomBytes(16).toString('hex') },
      { type: 'user', isSidechain: false, cwd, sessionId: id, message: { role: 'user', content: prompt }, uuid: randomBytes(16).toString('hex'), timestamp: new Date().toISOString() },
    ];
    writeFileSync(join(dir, `${id}.jsonl`), lines.map((l) => JSON.stringify(l)).join('\n') + '\n');
  }

  async cleanup() {
    await Promise.all(this.procs.map((p) => p.stop()));
  }
}

/** Read a QR code PNG as a phone camera would (zbarimg, Debian package zbar-tools). */
export function zbarimg(png) {
  const r = spawnSync('zbarimg', ['--raw', '-q', png], { encoding: 'utf8' });
  if (r.error) throw new Error(`zbarimg is needed (Debian package zbar-tools; ./scripts/test.sh installs it): ${r.error.message}`);
  if (r.status !== 0) throw new Error(`zbarimg could not read ${png} (exit ${r.status}): ${r.stderr}`);
  return r.stdout.trim();
}

// ---------------------------------------------------------------------------
// pairing links (proto/src/qr.rs): http(s)://host/p#BASE32(version u8 ‖ desktop key[32] ‖ secret[32] ‖ expires_at u32 ‖ [len u8 ‖ relay])

const B32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

export function base32Decode(s) {
  const out = [];
  let bits = 0;
  let acc = 0;
  for (const c of s) {
    const v = B32.indexOf(c);
    if (v < 0) throw new Error(`not base32: ${c}`);
    acc = (acc << 5) | v;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out.push((acc >> bits) & 0xff);
    }
  }
  return Uint8Array.from(out);
}

export function base32Encode(bytes) {
  let out = '';
  let bits = 0;
  let acc = 0;
  for (const b of bytes) {
    acc = (acc << 8) | b;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out += B32[(acc >> bits) & 31];
    }
  }
  if (bits > 0) out += B32[(acc << (5 - bits)) & 31];
  return out;
}

/** The same pairing link with another expiry (Unix seconds) and/or origin (`http://host:port`). */
export function craftLink(link, { expiresAt, origin } = {}) {
  let [base, payload] = link.split('#');
  const raw = base32Decode(payload);
  if (expiresAt !== undefined) new DataView(raw.buffer).setUint32(65, Math.floor(expiresAt), false);
  if (origin !== undefined) base = `${origin}/p`;
  return `${base}#${base32Encode(raw)}`;
}

// ---------------------------------------------------------------------------
// the browser

/** A phone: 390×844 CSS pixels at 3×, touch, a mobile user agent. */
export const PHONE = {
  viewport: { width: 390, height: 844 },
  deviceScaleFactor: 3,
  isMobile: true,
  hasTouch: true,
  userAgent:
    'Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Mobile Safari/537.36',
  locale: 'en-US',
};

/**
 * Which web client the phone loads. Unset: the one the relay serves (embedded
 * from dist/, what the test command checks). `E2E_WEB=src`: a fresh,
 * unminified build of src/app (to try UI changes without rebuilding the relay);
 * `E2E_WEB=<dir>`: the files of a built dist/ directory. Either way the
 * WebSocket still goes to the real relay.
 */
let webFiles; // Map<path, { type, body }> | null
async function webOverride() {
  if (webFiles !== undefined) return webFiles;
  const spec = process.env.E2E_WEB;
  if (!spec) return (webFiles = null);
  const types = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8', '.webmanifest': 'application/manifest+json', '.svg': 'image/svg+xml', '.png': 'image/png' };
  const type = (p) => types[p.slice(p.lastIndexOf('.'))] ?? 'application/octet-stream';
  const files = new Map();
  let root = spec;
  if (spec === 'src') {
    const { build } = await import('esbuild');
    const r = await build({
      absWorkingDir: WEB_DIR,
      entryPoints: { app: 'src/app/main.ts' },
      outdir: 'e2e-web/assets',
      bundle: true,
      format: 'esm',
      target: 'es2020',
      platform: 'browser',
      sourcemap: 'inline',
      write: false,
      publicPath: '/assets',
      assetNames: '[name]-[hash]',
      loader: { '.png': 'file', '.svg': 'file', '.woff2': 'file' },
      logLevel: 'warning',
    });
    for (const f of r.outputFiles) {
      const rel = f.path.slice(f.path.indexOf('e2e-web/') + 'e2e-web/'.length);
      files.set(`/${rel}`, { type: type(rel), body: Buffer.from(f.contents) });
    }
    const sw = await build({ absWorkingDir: WEB_DIR, entryPoints: ['src/sw/sw.ts'], outfile: 'e2e-web/sw.js', bundle: true, format: 'iife', target: 'es2020', platform: 'browser', sourcemap: 'inline', write: false, logLevel: 'warning' });
    files.set('/sw.js', { type: type('sw.js'), body: Buffer.from(sw.outputFiles[0].contents) });
    root = join(WEB_DIR, 'static');
  }
  const { readdirSync } = await import('node:fs');
  for (const name of readdirSync(root, { recursive: true })) {
    const full = join(root, name);
    try {
      let body = readFileSync(full);
      if (name === 'index.html' && spec === 'src') {
        const sri = (path) => `sha384-${createHash('sha384').update(files.get(path).body).digest('base64')}`;
        body = Buffer.from(
          body
            .toString('utf8')
            .replaceAll('{{app.js.sri}}', sri('/assets/app.js'))
            .replaceAll('{{app.css.sri}}', sri('/assets/app.css'))
            .replaceAll('{{app.js}}', '/assets/app.js')
            .replaceAll('{{app.css}}', '/assets/app.css'),
        );
      }
      files.set(`/${name.split('\\').join('/')}`, { type: type(name), body });
    } catch {
      /* a directory */
    }
  }
  if (!files.has('/index.html')) throw new Error(`E2E_WEB=${spec}: no index.html`);
  return (webFiles = files);
}

export async function launchBrowser() {
  const { chromium } = await import('playwright-core');
  // A page fulfilled by E2E_WEB has no address space of its own, so
  // Chromium's Local Network Access checks would block its WebSocket to
  // 127.0.0.1; a page the relay serves is loopback and needs no such flag.
  const args = process.env.E2E_WEB ? ['--disable-features=LocalNetworkAccessChecks,LocalNetworkAccessChecksWebSockets'] : [];
  return chromium.launch({ executablePath: chromiumPath(), headless: true, args });
}

/**
 * A fresh phone (its own storage) with one page. Uncaught page errors are
 * collected in `errors` (tests fail on them), console errors in `consoleErrors`
 * (reported, since a killed relay legitimately logs failed WebSockets).
 */
export async function newPhone(browser, name) {
  const context = await browser.newContext(PHONE);
  context.setDefaultTimeout(WAIT);
  const files = await webOverride();
  if (files) {
    await context.route(
      (url) => url.hostname === '127.0.0.1' && !url.pathname.startsWith('/v1/'),
      (route) => {
        const path = new URL(route.request().url()).pathname;
        const page = path === '/' || path === '/p';
        const f = files.get(page ? '/index.html' : path);
        // As the relay does it: the page's {{load}} slot gets a fresh value per response.
        const body = page ? Buffer.from(f.body.toString('utf8').replaceAll('{{load}}', randomBytes(16).toString('hex'))) : f?.body;
        return f
          ? route.fulfill({ status: 200, contentType: f.type, body, headers: { 'cache-control': 'no-store' } })
          : route.fulfill({ status: 404, body: 'not found' });
      },
    );
  }
  const page = await context.newPage();
  const phone = { name, context, page, errors: [], consoleErrors: [] };
  page.on('pageerror', (e) => phone.errors.push(`${e.name}: ${e.message}\n${e.stack ?? ''}`));
  page.on('console', (m) => {
    if (m.type() === 'error') phone.consoleErrors.push(m.text());
  });
  return phone;
}

/** Throws if the page had an uncaught error. */
export function assertNoPageErrors(phone) {
  if (phone.errors.length) {
    throw new Error(`${phone.name}: uncaught page error(s):\n${phone.errors.join('\n')}`);
  }
}

/** The viewport as SCREENSHOTS/web-NAME.png, in CSS pixels (390×844; device pixels would be 3× that). */
export async function screenshot(page, name, focus) {
  if (process.env.E2E_SCREENSHOTS === 'off') return null;
  mkdirSync(SCREENSHOTS, { recursive: true });
  // The element the picture is about, in view (a long thread scrolls banners away).
  if (focus) await page.locator(focus).first().scrollIntoViewIfNeeded({ timeout: 2000 }).catch(() => undefined);
  const path = join(SCREENSHOTS, `web-${name}.png`);
  await page.screenshot({ path, scale: 'css', animations: 'disabled', caret: 'hide' });
  return path;
}

/** Open `url` on the phone; a clear error when the relay does not serve the web client there. */
export async function open(page, url) {
  let resp;
  try {
    resp = await page.goto(url, { waitUntil: 'load' });
  } catch (e) {
    throw new Error(`GET ${url.split('#')[0]} failed: ${e.message.split('\n')[0]} (does the relay serve the web client at /p?)`);
  }
  if (!resp || resp.status() !== 200) {
    throw new Error(`GET ${url.split('#')[0]}: HTTP ${resp?.status()} (does the relay serve the web client at /p?)`);
  }
  if (url.includes('#')) {
    // A pairing link: the app asks before it pairs (a tap, as a person would).
    const confirm = page.locator('[data-testid=pair-confirm]');
    await confirm.waitFor({ state: 'visible', timeout: 10_000 }).catch(async () => {
      throw new Error(`the pairing link did not ask to pair ([data-testid=pair-confirm])\n${await describePage(page)}`);
    });
    await confirm.tap();
  }
  return resp;
}

/** What the page shows, for failure messages. */
export async function describePage(page) {
  try {
    return await page.evaluate(() => {
      const app = document.getElementById('app');
      const conn = document.querySelector('[data-testid=conn]');
      const text = (document.body?.innerText ?? '').replace(/\s+/g, ' ').slice(0, 600);
      return `page ${location.href}\n  #app data-screen=${app?.dataset.screen} conn=${conn?.getAttribute('data-state')}\n  text: ${text}`;
    });
  } catch (e) {
    return `page unavailable: ${e.message}`;
  }
}

// ---------------------------------------------------------------------------
// waits on the page's DOM contract (every wait bounded; failures name the selector)

export async function expectVisible(page, selector, what, timeout = WAIT) {
  try {
    await page.locator(selector).first().waitFor({ state: 'visible', timeout });
  } catch (e) {
    throw new Error(`${what}: no visible \`${selector}\` within ${timeout} ms\n${await describePage(page)}\n(${e.message.split('\n')[0]})`);
  }
  return page.locator(selector).first();
}

export async function expectHidden(page, selector, what, timeout = WAIT) {
  try {
    await page.locator(selector).first().waitFor({ state: 'hidden', timeout });
  } catch (e) {
    throw new Error(`${what}: \`${selector}\` still visible after ${timeout} ms\n${await describePage(page)}\n(${e.message.split('\n')[0]})`);
  }
}

export async function expectScreen(page, screen, timeout = WAIT) {
  await waitUntil(
    `#app[data-screen=${screen}]`,
    () => page.evaluate((sc) => document.getElementById('app')?.dataset.screen === sc, screen),
    { timeout, detail: () => describePage(page) },
  );
}

/** The attribute of the first match, without waiting (null if absent). */
export function attr(page, selector, name) {
  return page.evaluate(([sel, n]) => document.querySelector(sel)?.getAttribute(n) ?? null, [selector, name]);
}

export async function expectConn(page, states, what, timeout = WAIT) {
  await waitUntil(
    `${what}: [data-testid=conn] data-state in {${states.join(', ')}}`,
    async () => states.includes(await attr(page, '[data-testid=conn]', 'data-state')),
    { timeout, detail: () => describePage(page) },
  );
}

export function progressNumbers(events) {
  return events.filter((e) => e.type === 'progress').map((e) => /n=(\d+)/.exec(e.text)).filter(Boolean).map((m) => Number(m[1]));
}

export async function waitFinished(page, what, timeout = WAIT) {
  const el = await expectVisible(page, '[data-testid=finished]', `${what}: the task finishes`, timeout);
  return el.getAttribute('data-status');
}

/** The task events on the task screen: [{ offset, type, text }]. */
export function taskEvents(page) {
  return page.$$eval('[data-testid=event]', (els) =>
    els.map((e) => ({
      offset: Number(e.getAttribute('data-offset')),
      type: e.getAttribute('data-type'),
      text: (e.textContent ?? '').trim(),
    })),
  );
}

/** Offsets run 0, 1, 2, … each exactly once, in document order. */
export function contiguous(events) {
  const offs = events.map((e) => e.offset);
  return offs.every((o, i) => o === i);
}

export function readJson(path) {
  return JSON.parse(readFileSync(path, 'utf8'));
}

// ---------------------------------------------------------------------------
// the protocol core and the page's state, seen from Node

let proto;
/**
 * The web client's protocol core (src/proto, TypeScript) compiled for Node: the same code the page
 * runs, to decode captured frames and to try stored links against captured records.
 */
export async function protoModule() {
  if (proto) return proto;
  const { build } = await import('esbuild');
  const dir = mkdtempSync(join(tmpdir(), 'tandem-web-proto-'));
  const outfile = join(dir, 'proto.mjs');
  await build({ absWorkingDir: WEB_DIR, entryPoints: ['src/proto/index.ts'], outfile, bundle: true, format: 'esm', platform: 'node', target: 'node20', logLevel: 'warning' });
  try {
    proto = await import(pathToFileURL(outfile).href);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return proto;
}

/** What the page keeps in IndexedDB: its device key (hex) and its desktop rows (each with `link`, `Link.toStored()`). */
export function storedState(page) {
  return page.evaluate(async () => {
    const db = await new Promise((res, rej) => {
      const r = indexedDB.open('tandem');
      r.onsuccess = () => res(r.result);
      r.onerror = () => rej(r.error);
    });
    const all = (store, key) =>
      new Promise((res, rej) => {
        const r = key === undefined ? db.transaction(store).objectStore(store).getAll() : db.transaction(store).objectStore(store).get(key);
        r.onsuccess = () => res(r.result);
        r.onerror = () => rej(r.error);
      });
    const out = { deviceKey: await all('kv', 'device-key'), desktops: await all('desktops') };
    db.close();
    return out;
  });
}

/**
 * Every WebSocket frame the page receives and sends, from now on, as bytes with the time it was
 * seen: `{ received: [{ at, bytes }], sent: [...] }`.
 */
export function captureFrames(page) {
  const frames = { received: [], sent: [] };
  const bytes = (p) => (typeof p === 'string' ? Buffer.from(p, 'utf8') : Buffer.from(p));
  page.on('websocket', (ws) => {
    ws.on('framereceived', (f) => frames.received.push({ at: Date.now(), bytes: bytes(f.payload) }));
    ws.on('framesent', (f) => frames.sent.push({ at: Date.now(), bytes: bytes(f.payload) }));
  });
  return frames;
}

/**
 * An address of this machine on a local network, as a URL host (`192.168.1.5`, `[fd00::2]`): not
 * loopback, and one the pairing link accepts for plain http (private IPv4, 100.64/10, or IPv6
 * unique local; link-local needs a zone and is skipped). Null when the machine has none.
 */
export function lanHost() {
  const all = Object.values(networkInterfaces()).flat().filter((a) => a && !a.internal);
  const v4 = all.find((a) => {
    if (a.family !== 'IPv4') return false;
    const [x, y] = a.address.split('.').map(Number);
    return x === 10 || (x === 172 && y >= 16 && y < 32) || (x === 192 && y === 168) || (x === 100 && y >= 64 && y < 128);
  });
  if (v4) return v4.address;
  const v6 = all.find((a) => a.family === 'IPv6' && /^f[cd][0-9a-f]{2}:/i.test(a.address));
  return v6 ? `[${v6.address}]` : null;
}
