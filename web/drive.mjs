// Drive pages in headless Chromium, for the tests (tests/test_web.py), the screenshot and the
// bench: one browser for the whole run; a command per line on stdin, an answer per line on stdout.
//
//   node web/drive.mjs                     # CHROMIUM=/path/to/chromium to choose the browser
//   WEBGPU=swiftshader node web/drive.mjs  # WebGPU on Chromium's CPU renderer, where no GPU answers
//   {"url": "http://127.0.0.1:8000/index.html?input=cat.png&model=srresnet_x4", "screenshot": "page.png"}
//   (optional: "timeoutMs", "viewport": {"width", "height"}, "serviceWorker": true)
//   -> {"status": "done", "upscaled": "data:image/png;base64,...", "timing": {...}, "download": "cat_x4.png", ...}
//
// A page follows the test contract: it sets document.body.dataset.status to 'done', 'error: ...'
// or 'cancelled' when it is finished, and leaves its results in window globals.
import {createInterface} from 'node:readline';
import puppeteer from 'puppeteer-core';

// ---------------------------------------------------------------------------------------------
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';  // Debian's package
const TIMEOUT_MS = 300_000;  // longest wait for one page to finish (a command can ask for another)
const VIEWPORT = {width: 1280, height: 900};
const SWIFTSHADER_WEBGPU = ['--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-webgpu-adapter=swiftshader',
                            '--use-angle=swiftshader'];  // a WebGPU adapter in software: slow, but it runs the same code
// ---------------------------------------------------------------------------------------------

const browser = await puppeteer.launch({
  executablePath: CHROMIUM,
  headless: true,
  protocolTimeout: 4 * 3600_000,  // a long wait is one protocol call: let timeoutMs, not this, end it
  // Chromium's sandbox needs a user namespace that root (a CI container) does not get.
  args: [...(process.getuid?.() === 0 ? ['--no-sandbox'] : []),
         ...(process.env.WEBGPU === 'swiftshader' ? SWIFTSHADER_WEBGPU : [])],
});
const version = await browser.version();

/** Open a page, wait for its status, return what the contract exposes (and a screenshot if asked). */
async function visit({url, timeoutMs = TIMEOUT_MS, screenshot = '', viewport = VIEWPORT, serviceWorker = false}) {
  const page = await browser.newPage();
  const log = [];  // the page's console errors and failed requests, to explain a failure
  page.on('console', (message) => { if (message.type() === 'error') log.push(message.text()); });
  page.on('pageerror', (error) => log.push(String(error)));
  page.on('requestfailed', (request) => log.push(`failed: ${request.url()}`));
  try {
    await page.setViewport(viewport);
    await page.goto(url);
    await page.waitForFunction(() => /^(done|error|cancelled)/.test(document.body?.dataset.status ?? ''),
                               {timeout: timeoutMs, polling: 100});
    if (screenshot) await page.screenshot({path: screenshot});
    // serviceWorker: also wait until the page's service worker is active (it has cached the page).
    if (serviceWorker) await page.evaluate(() => navigator.serviceWorker.ready.then(() => true));
    const answer = await page.evaluate(() => ({
      status: document.body.dataset.status,
      upscaled: window.upscaled ?? null,
      timing: window.timing ?? null,
      results: window.results ?? null,
      download: document.getElementById('download')?.download ?? null,
      crossOriginIsolated: self.crossOriginIsolated,
    }));
    return {...answer, log};
  } catch (error) {
    return {status: `driver: ${error.message.split('\n')[0]}`, log};
  } finally {
    await page.close();
  }
}

for await (const line of createInterface({input: process.stdin})) {
  if (!line.trim()) continue;
  const answer = await visit(JSON.parse(line));
  process.stdout.write(JSON.stringify({...answer, browser: version}) + '\n');
}
await browser.close();
