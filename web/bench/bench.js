// The bench page: one model upscales a list of images in this browser, each timed, so that our
// SRResNet (onnxruntime-web, upscale.js, as the page runs it) and UpscalerJS's ESRGAN models
// (TensorFlow.js) run on the same images in the same browser. Driven by bench.py.
//
// bench.html?engine=ort&model=srresnet_x4&threads=1&images=/lr/a.png,/lr/b.png
// bench.html?engine=upscalerjs&model=esrgan-thick&threads=2&images=...
// Sets document.body.dataset.status to 'done' or 'error: ...' and window.results to
// [{image, width, height, ms, png}]: ms is the upscale alone (the model is loaded and run once
// on the first image before any timing), png the output as a data URL.
import {createSession, upscale} from '../upscale.js';

// ---------------------------------------------------------------------------------------------
const NODE_MODULES = '../node_modules/';
const PEER_SCRIPTS = [  // TensorFlow.js with its WASM backend, then UpscalerJS and its two ESRGAN packages
  '@tensorflow/tfjs/dist/tf.min.js', '@tensorflow/tfjs-backend-wasm/dist/tf-backend-wasm.min.js',
  '@upscalerjs/default-model/dist/umd/index.min.js', 'upscaler/dist/browser/umd/upscaler.min.js',
  '@upscalerjs/esrgan-slim/dist/umd/models/esrgan-slim/src/umd.min.js',
  '@upscalerjs/esrgan-thick/dist/umd/models/esrgan-thick/src/umd.min.js',
];
const PEER_MODELS = {  // name: [the package's global, its x4 model.json]
  'esrgan-slim': ['ESRGANSlim', '@upscalerjs/esrgan-slim/models/x4/model.json'],
  'esrgan-thick': ['ESRGANThick', '@upscalerjs/esrgan-thick/models/x4/model.json'],
};
// ---------------------------------------------------------------------------------------------

const params = new URLSearchParams(location.search);

/** Load a classic (UMD) script, for the packages that ship no browser ES module. */
function loadScript(src) {
  return new Promise((resolve, reject) => {
    const script = Object.assign(document.createElement('script'), {src, onload: resolve});
    script.onerror = () => reject(new Error(`${src} did not load: run npm ci in web/`));
    document.head.append(script);
  });
}

/** An image URL -> RGBA ImageData, the bytes as stored. */
async function readPixels(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  const bitmap = await createImageBitmap(await response.blob(), {premultiplyAlpha: 'none', colorSpaceConversion: 'none'});
  const context = new OffscreenCanvas(bitmap.width, bitmap.height).getContext('2d', {willReadFrequently: true});
  context.drawImage(bitmap, 0, 0);
  return context.getImageData(0, 0, bitmap.width, bitmap.height);
}

/** RGBA ImageData -> a PNG data URL. */
function toPNG(pixels) {
  const canvas = Object.assign(document.createElement('canvas'), {width: pixels.width, height: pixels.height});
  canvas.getContext('2d').putImageData(pixels, 0, 0);
  return canvas.toDataURL('image/png');
}

/** Our model: a function ImageData -> Promise<ImageData>, in onnxruntime-web on WASM. */
async function ourModel(name, threads) {
  const session = await createSession(`../models/${name}.onnx`, 'wasm', threads);
  return (lrPixels) => upscale(session, lrPixels);  // tiles of 384 px: one tile at these sizes
}

/** A peer's model: UpscalerJS on TensorFlow.js's WASM backend; ImageData -> Promise<ImageData>. */
async function peerModel(name, threads) {
  for (const script of PEER_SCRIPTS) await loadScript(NODE_MODULES + script);
  const tf = window.tf;
  tf.wasm.setWasmPaths(new URL(NODE_MODULES + '@tensorflow/tfjs-backend-wasm/dist/', location.href).href);
  tf.wasm.setThreadsCount(threads);  // read when the backend starts; threads need cross-origin isolation
  if (!(await tf.setBackend('wasm'))) throw new Error('TensorFlow.js could not start its WASM backend');
  const [global, path] = PEER_MODELS[name];
  const upscaler = new window.Upscaler({model: {...window[global].x4, path: NODE_MODULES + path}});
  await upscaler.getModel();
  return async (lrPixels) => {
    const lrTensor = tf.browser.fromPixels(lrPixels);  // (h, w, 3) int32 in [0, 255]: the models' input range
    const srTensor = await upscaler.upscale(lrTensor, {output: 'tensor'});  // (4h, 4w, 3) float in [0, 255]
    const srBytes = tf.tidy(() => srTensor.round().clipByValue(0, 255).toInt());
    const rgba = await tf.browser.toPixels(srBytes);  // Uint8ClampedArray, RGBA
    tf.dispose([lrTensor, srTensor, srBytes]);
    return new ImageData(rgba, srBytes.shape[1], srBytes.shape[0]);
  };
}

async function main() {
  const engine = params.get('engine'), name = params.get('model'), threads = Number(params.get('threads') ?? 1);
  const images = (params.get('images') ?? '').split(',').filter(Boolean);
  if (!images.length) throw new Error('no images= given');
  const model = engine === 'ort' ? await ourModel(name, threads)
    : engine === 'upscalerjs' && name in PEER_MODELS ? await peerModel(name, threads)
    : null;
  if (model === null) throw new Error(`unknown engine=${engine} model=${name}`);
  const inputs = await Promise.all(images.map(readPixels));
  await model(inputs[0]);  // warm-up, not timed: first-run allocations and kernel setup
  const results = [];
  for (const [i, lrPixels] of inputs.entries()) {
    const started = performance.now();
    const srPixels = await model(lrPixels);
    const ms = performance.now() - started;
    results.push({image: images[i], width: lrPixels.width, height: lrPixels.height, ms, png: toPNG(srPixels)});
    document.getElementById('message').textContent = `${i + 1} / ${inputs.length} images`;
  }
  window.results = results;
  window.timing = {engine, model: name, threads, crossOriginIsolated: self.crossOriginIsolated,
                   hardwareConcurrency: navigator.hardwareConcurrency,
                   // what TensorFlow.js really ran on (it falls back quietly): the peers' backend and threads
                   tfBackend: window.tf?.getBackend() ?? null, tfThreads: window.tf?.wasm.getThreadsCount() ?? null,
                   tfThreadsSupported: await window.tf?.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT') ?? null};
}

main().then(() => { document.body.dataset.status = 'done'; },
            (error) => { document.body.dataset.status = `error: ${error?.message ?? error}`; });
