// The page: read a photo (file picker, drop or paste), check its size, upscale it with
// upscale.js while showing progress, then show it beside the input and offer it as a PNG.
//
// Test contract: index.html?input=URL&model=NAME upscales URL on load. The page then sets
// document.body.dataset.status to 'done' or 'error: ...' and exposes window.upscaled (a PNG data
// URL) and window.timing. Optional: tile=, overlap= (LR pixels), backend=wasm|webgpu, threads=N.
import {TILE_OVERLAP, TILE_SIZE, createSession, defaultThreads, pickBackend, tilesOf, upscale} from './upscale.js';

// ---------------------------------------------------------------------------------------------
const MANIFEST_URL = 'models/models.json';  // written by `python export_onnx.py --for_web=True`
const MAX_INPUT_PIXELS = 1920 * 1080;  // larger inputs are refused: the 4x output (33 MP) is held as RGBA bytes
const MAX_INPUT_SIDE = 4096;  // LR pixels: keeps the output under 16384 pixels a side (thin panoramas meet it)
// ---------------------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const sessions = new Map();  // 'model backend threads' -> a loaded session, reused between photos
let photo = null;  // {name, lrPixels}: the photo read last
let running = null;  // the AbortController of the upscale in progress

/** Set the page's status (the test contract's document.body.dataset.status) and its message. */
function setStatus(status, message = '') {
  document.body.dataset.status = status;
  $('message').textContent = message || (status.startsWith('error: ') ? status.slice(7) : '');
}

/** A thrown error's one-line message for the page, without a stack. */
function describe(error) {
  return error?.message ? error.message.split('\n')[0] : String(error);
}

/** The models of the manifest, into the model menu; returns them. */
async function loadManifest() {
  const response = await fetch(MANIFEST_URL);
  if (!response.ok) throw new Error(`${MANIFEST_URL}: HTTP ${response.status}: run python export_onnx.py --for_web=True`);
  const {models} = await response.json();
  for (const model of models) {
    $('model').add(new Option(`${model.label} (${(model.bytes / 1e6).toFixed(1)} MB)`, model.name));
  }
  return models;
}

/** Decode an image file into RGBA bytes; refuses, before any work, what the page cannot take.
 * @param {Blob} blob the file @param {string} name its name, for messages
 * @returns {Promise<ImageData>} */
async function readPhoto(blob, name) {
  let bitmap;
  try {
    // 'none': the bytes as stored, as Pillow reads them for the Python scripts; the EXIF orientation is applied.
    bitmap = await createImageBitmap(blob, {imageOrientation: 'from-image', premultiplyAlpha: 'none',
                                            colorSpaceConversion: 'none'});
  } catch {
    throw new Error(`${name} is not an image this browser can read`);
  }
  const {width, height} = bitmap;
  if (width * height > MAX_INPUT_PIXELS || Math.max(width, height) > MAX_INPUT_SIDE) {
    bitmap.close();
    throw new Error(`${name} is ${width}x${height} (${(width * height / 1e6).toFixed(2)} MP): the page takes at most `
                    + `${(MAX_INPUT_PIXELS / 1e6).toFixed(2)} MP (1920x1080) and ${MAX_INPUT_SIDE} pixels a side`);
  }
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext('2d', {willReadFrequently: true});
  context.drawImage(bitmap, 0, 0);
  bitmap.close();
  return context.getImageData(0, 0, width, height);  // (h, w, 4) bytes
}

/** Take a photo (from the picker, a drop, a paste or the URL): read it and show it. */
async function takePhoto(blob, name) {
  photo = null;
  $('start').disabled = true;
  $('download').hidden = true;
  $('stack').classList.remove('ready');
  const lrPixels = await readPhoto(blob, name);
  photo = {name, lrPixels};
  const before = $('before');
  [before.width, before.height] = [lrPixels.width, lrPixels.height];
  before.getContext('2d').putImageData(lrPixels, 0, 0);
  const after = $('after');
  [after.width, after.height] = [lrPixels.width * 4, lrPixels.height * 4];  // blank until upscaled
  $('stack').style.setProperty('--sr-width', `${after.width}px`);
  $('start').disabled = false;
  setStatus('ready', `${name}: ${lrPixels.width}x${lrPixels.height}, ${tilesOf(lrPixels.width, lrPixels.height,
          tileSize()).length} tile(s)`);
}

const tileSize = () => Number(params.get('tile') ?? TILE_SIZE);
const tileOverlap = () => Number(params.get('overlap') ?? TILE_OVERLAP);

/** Upscale the photo with the chosen model; fills the viewer, the download link and the contract's globals. */
async function run() {
  const {name, lrPixels} = photo;
  const modelName = $('model').value;
  const backend = params.get('backend') ?? await pickBackend();
  const threads = Number(params.get('threads') ?? defaultThreads());
  running = new AbortController();
  $('progress').value = 0;
  $('start').disabled = true;
  $('cancel').disabled = false;
  setStatus('loading', `Loading ${modelName} (${backend})...`);
  const started = performance.now();
  const key = `${modelName} ${backend} ${threads}`;
  if (!sessions.has(key)) sessions.set(key, createSession(`models/${modelName}.onnx`, backend, threads));
  let session;
  try {
    session = await sessions.get(key);
  } catch (error) {
    sessions.delete(key);  // a failed load is not kept: the next try loads again
    throw error;
  }
  const loaded = performance.now();
  $('backend').textContent = `onnxruntime-web, ${backend}${backend === 'wasm' ? `, ${threads} thread(s)` : ''}`
    + `${self.crossOriginIsolated ? ', cross-origin isolated' : ''}`;
  setStatus('running', 'Upscaling...');
  const srPixels = await upscale(session, lrPixels, {
    tileSize: tileSize(), tileOverlap: tileOverlap(), signal: running.signal,
    onTile: (done, total) => {
      const elapsed = (performance.now() - loaded) / 1000;
      $('progress').value = done / total;
      $('message').textContent = `${done} / ${total} tiles, ${elapsed.toFixed(1)} s elapsed`
        + (done < total ? `, about ${(elapsed / done * (total - done)).toFixed(0)} s left` : '');
    },
  });
  const upscaled = performance.now();
  const after = $('after');
  after.getContext('2d').putImageData(srPixels, 0, 0);
  $('stack').classList.add('ready');
  window.upscaled = after.toDataURL('image/png');
  window.timing = {model: modelName, backend, threads, width: lrPixels.width, height: lrPixels.height,
                   tiles: tilesOf(lrPixels.width, lrPixels.height, tileSize()).length,
                   loadMs: loaded - started, upscaleMs: upscaled - loaded, totalMs: performance.now() - started};
  const link = $('download');
  URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(await (await fetch(window.upscaled)).blob());
  link.download = `${name.replace(/\.[^.]*$/, '')}_x4.png`;  // photo.jpg -> photo_x4.png
  link.hidden = false;
  setStatus('done', `${name}: ${srPixels.width}x${srPixels.height} in ${(window.timing.totalMs / 1000).toFixed(1)} s`);
}

/** Run an async step; report a failure in the page (never silently), a cancel as 'cancelled'. */
async function guarded(step) {
  try {
    await step();
  } catch (error) {
    if (error?.name === 'AbortError') setStatus('cancelled', 'Cancelled.');
    else setStatus(`error: ${describe(error)}`);
  } finally {
    running = null;
    $('cancel').disabled = true;
    $('start').disabled = photo === null;
  }
}

/** Wire the inputs, the viewer and the buttons; then follow the test contract if the URL asks. */
async function main() {
  $('file').addEventListener('change', () => {
    const [file] = $('file').files;
    if (file) guarded(() => takePhoto(file, file.name));
  });
  const drop = $('drop');
  drop.addEventListener('dragover', (event) => { event.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (event) => {
    event.preventDefault();
    drop.classList.remove('over');
    const [file] = event.dataTransfer.files;
    if (file) guarded(() => takePhoto(file, file.name));
  });
  document.addEventListener('paste', (event) => {
    const file = [...event.clipboardData.files][0];
    if (file) guarded(() => takePhoto(file, file.name || 'pasted.png'));
  });
  $('start').addEventListener('click', () => guarded(run));
  $('cancel').addEventListener('click', () => running?.abort());
  $('split').addEventListener('input', () => {
    $('stack').style.setProperty('--split', `${$('split').value}%`);
  });
  for (const radio of document.querySelectorAll('input[name="zoom"]')) {
    radio.addEventListener('change', () => { $('viewer').className = radio.value === 'fit' ? 'fit' : ''; });
  }
  // Offline once loaded (sw.js). Without service workers (an old browser, a page on plain http
  // from another machine) the page works the same, online only.
  navigator.serviceWorker?.register('sw.js').catch(() => {});
  await guarded(loadManifest);
  if (params.has('model')) $('model').value = params.get('model');
  if (params.has('input')) {
    await guarded(async () => {
      if ($('model').value !== params.get('model') && params.has('model')) {
        throw new Error(`model=${params.get('model')} is not in ${MANIFEST_URL}`);
      }
      const url = new URL(params.get('input'), location.href);
      const response = await fetch(url);
      if (!response.ok) throw new Error(`${url.pathname}: HTTP ${response.status}`);
      await takePhoto(await response.blob(), decodeURIComponent(url.pathname.split('/').pop()) || 'input');
      await run();
    });
  }
}

main();
