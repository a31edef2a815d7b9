// The browser side of tests/web: `node run.mjs JOB.json` runs each case of JOB in headless Chromium
// (Debian's /usr/bin/chromium, driven by puppeteer-core; no browser is downloaded) and prints one JSON line:
// per case its outputs, the console (GPU validation errors, onnxruntime's verbose node placement) and the
// adapter. Pages and data are served by a server of its own on 127.0.0.1 only.
//
// JOB: {"chromium": path, "data": folder of models and inputs, "page": page under this folder,
//       "timeout_ms": per case (optional),
//       "cases": [{"build": "jsep" | "webgpu" | "wasm", "model": file in data,
//                  "inputs": [{"name", "file", "dims", "type"}], "outputs": [names]}]}
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import {fileURLToPath} from 'node:url';
import puppeteer from 'puppeteer-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
// SwiftShader's WebGPU adapter: no GPU needed; without --enable-unsafe-webgpu, requestAdapter() returns null.
const FLAGS = ['--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--enable-unsafe-webgpu',
  '--enable-features=Vulkan,WebGPU', '--use-angle=swiftshader', '--use-webgpu-adapter=swiftshader',
  '--ignore-gpu-blocklist'];
const TYPES = {'.html': 'text/html', '.mjs': 'text/javascript', '.js': 'text/javascript',
  '.wasm': 'application/wasm', '.json': 'application/json', '.png': 'image/png'};
const CASE_TIMEOUT_MS = 240000;
let caseTimeoutMs = CASE_TIMEOUT_MS;

/** A server of `roots` (URL prefix -> folder) on 127.0.0.1 at a free port. */
function serve(roots) {
  const server = http.createServer((request, response) => {
    const url = decodeURIComponent(new URL(request.url, 'http://127.0.0.1').pathname);
    const prefix = Object.keys(roots).find((p) => url.startsWith(p));
    const file = prefix && path.join(roots[prefix], url.slice(prefix.length));
    if (!file || !file.startsWith(roots[prefix]) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      response.writeHead(404).end();
      return;
    }
    response.writeHead(200, {'Content-Type': TYPES[path.extname(file)] || 'application/octet-stream'});
    fs.createReadStream(file).pipe(response);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

async function main() {
  const job = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const server = await serve({'/harness/': HERE, '/data/': path.resolve(job.data),
    '/examples/': path.resolve(HERE, '..', '..', 'examples')});
  const origin = `http://127.0.0.1:${server.address().port}`;
  // puppeteer rewrites an --enable-features argument in place: give it a copy
  caseTimeoutMs = job.timeout_ms || CASE_TIMEOUT_MS;
  const browser = await puppeteer.launch({executablePath: job.chromium, args: [...FLAGS], headless: true,
    protocolTimeout: caseTimeoutMs + 60000});
  const results = [];
  try {
    for (const c of job.cases) {
      results.push(await runCase(browser, origin, job.page || 'harness/page.html', c, job.screenshot));
    }
  } finally {
    await browser.close();
    server.closeAllConnections();
    server.close();
  }
  process.stdout.write(JSON.stringify(results) + '\n');
}

/** One case in a fresh page: what the page returns, plus the console. */
async function runCase(browser, origin, page_path, c, screenshot) {
  const page = await browser.newPage();
  const console_lines = [];
  page.on('console', (message) => console_lines.push({type: message.type(), text: message.text()}));
  page.on('pageerror', (error) => console_lines.push({type: 'pageerror', text: String(error)}));
  try {
    await page.goto(`${origin}/${page_path}`, {waitUntil: 'load'});
    let timer;
    const result = await Promise.race([
      page.evaluate((config) => window.runCase(config), c),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${caseTimeoutMs} ms`)), caseTimeoutMs);
      }),
    ]).finally(() => clearTimeout(timer));
    if (screenshot) {
      await page.screenshot({path: screenshot});
    }
    return {...result, process_peak_mb: processPeaks(browser.process().pid), console: console_lines};
  } catch (error) {
    const adapter = await page.evaluate(() => window.adapter).catch(() => undefined);
    return {error: String(error), adapter, console: console_lines};
  } finally {
    await page.close();
  }
}

/** Peak resident memory (VmHWM, MB) of Chromium's processes so far, the largest of each kind (browser,
 * renderer, gpu-process, utility, ...), read from Linux's /proc: the page cannot read the memory of wasm
 * and of the GPU process itself. */
function processPeaks(root) {
  const parents = {};
  for (const pid of fs.readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
    try {
      parents[pid] = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ')[1];
    } catch {
      // the process ended meanwhile
    }
  }
  const tree = new Set([String(root)]);
  for (let grown = true; grown;) {
    grown = false;
    for (const [pid, parent] of Object.entries(parents)) {
      if (tree.has(parent) && !tree.has(pid)) {
        tree.add(pid);
        grown = true;
      }
    }
  }
  const peaks = {};
  for (const pid of tree) {
    try {
      const kind = (fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').match(/--type=([\w-]+)/) || [, 'browser'])[1];
      const peak = Number(fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmHWM:\s+(\d+)/)[1]) / 1024;
      peaks[kind] = Math.max(peaks[kind] || 0, peak);
    } catch {
      // the process ended meanwhile
    }
  }
  return peaks;
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
