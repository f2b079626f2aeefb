// The model side of the page: load an exported SRResNet into onnxruntime-web and upscale an
// image 4x tile by tile, by the rule of super_resolve.py (upscale_tensor and tile_boxes), so
// that the tiled output equals whole-image inference within one grey level.
//
// The model file is export_onnx.py's: input 'lr', float32 RGB in [0, 1], NCHW, any size;
// output 'sr', float32 RGB in [0, 1], 4x the height and width.
import * as ort from './node_modules/onnxruntime-web/dist/ort.min.mjs';

// ---------------------------------------------------------------------------------------------
export const TILE_SIZE = 384;  // side of the tiles the model runs on, in LR pixels (super_resolve.py's)
export const TILE_OVERLAP = 16;  // LR pixels of context read around each tile, then cut off (hides seams)
export const TILE_WIDTH_STEP = 8;  // tiles read a multiple of 8 columns where they can (super_resolve.py's rule)
const MAX_THREADS = 4;  // WASM threads at most: onnxruntime-web's own default cap
// ---------------------------------------------------------------------------------------------

/** Where the model runs: 'webgpu' when navigator.gpu gives an adapter, else 'wasm'. */
export async function pickBackend() {
  if (!navigator.gpu) return 'wasm';
  try {
    return (await navigator.gpu.requestAdapter()) ? 'webgpu' : 'wasm';
  } catch {
    return 'wasm';  // a browser can expose navigator.gpu and still refuse an adapter
  }
}

/** WASM threads: more than one only when the page is cross-origin isolated (SharedArrayBuffer). */
export function defaultThreads() {
  if (!self.crossOriginIsolated) return 1;
  return Math.max(1, Math.min(MAX_THREADS, navigator.hardwareConcurrency || 1));
}

/**
 * An onnxruntime-web session for a model file.
 * @param {string} url the .onnx file
 * @param {string} backend 'webgpu' or 'wasm'
 * @param {number} threads WASM threads (1 without cross-origin isolation)
 * @returns {Promise<ort.InferenceSession>}
 */
export async function createSession(url, backend, threads) {
  ort.env.wasm.numThreads = threads;  // read once, when the WASM runtime starts: set before the first session
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  const modelBytes = new Uint8Array(await response.arrayBuffer());
  return ort.InferenceSession.create(modelBytes, {executionProviders: [backend], graphOptimizationLevel: 'all'});
}

/** Cut [0, size) into the fewest near-equal tiles of at most tileSize (0: one tile); returns
 * the edges. Equal tiles waste less than full tiles plus a thin leftover. (super_resolve._tile_edges) */
export function tileEdges(size, tileSize) {
  const nTiles = tileSize > 0 ? Math.ceil(size / tileSize) : 1;
  return Array.from({length: nTiles + 1}, (_, i) => Math.floor(size * i / nTiles));
}

/** The tiles of a width x height image: [{top, bottom, left, right}], row by row. */
export function tilesOf(width, height, tileSize) {
  const rows = tileEdges(height, tileSize), cols = tileEdges(width, tileSize);
  const tiles = [];
  for (let r = 0; r < rows.length - 1; r++) {
    for (let c = 0; c < cols.length - 1; c++) {
      tiles.push({top: rows[r], bottom: rows[r + 1], left: cols[c], right: cols[c + 1]});
    }
  }
  return tiles;
}

/** [left, right), a tile's columns with their margins, grown to a multiple of TILE_WIDTH_STEP
 * columns with more of the image's own context (right, then left) where it has them: the rule of
 * super_resolve._widen, kept here so that the page tiles as the script does. */
export function widen(left, right, width) {
  const extra = (TILE_WIDTH_STEP - (right - left) % TILE_WIDTH_STEP) % TILE_WIDTH_STEP;
  const widerRight = Math.min(right + extra, width);
  return [Math.max(left - (extra - (widerRight - right)), 0), widerRight];
}

/**
 * Super-resolve an image tile by tile.
 * @param {ort.InferenceSession} session from createSession
 * @param {ImageData} lrPixels the input, RGBA bytes (alpha is not read: the network knows colour only)
 * @param {object} options tileSize, tileOverlap (LR pixels), signal (an AbortSignal: cancel between
 *   tiles), onTile(done, total) (called after each tile)
 * @returns {Promise<ImageData>} RGBA, 4x the width and height, opaque
 */
export async function upscale(session, lrPixels, {tileSize = TILE_SIZE, tileOverlap = TILE_OVERLAP,
                                                   signal = null, onTile = () => {}} = {}) {
  const {width, height} = lrPixels;
  const tiles = tilesOf(width, height, tileSize);
  let srPixels = null, s = 0;
  for (const [i, {top, bottom, left, right}] of tiles.entries()) {
    signal?.throwIfAborted();
    // The tile and its margins, clipped to the image (at the image's own edges there is no more context).
    const topIn = Math.max(top - tileOverlap, 0), bottomIn = Math.min(bottom + tileOverlap, height);
    const [leftIn, rightIn] = widen(Math.max(left - tileOverlap, 0), Math.min(right + tileOverlap, width), width);
    const lrTile = toPlanarRGB(lrPixels, topIn, bottomIn, leftIn, rightIn);  // (1, 3, tile h, tile w), in [0, 1]
    const {sr: srTile} = await session.run({lr: lrTile});  // (1, 3, s * tile h, s * tile w), in [0, 1]
    if (srPixels === null) {
      s = srTile.dims[3] / (rightIn - leftIn);
      srPixels = new ImageData(width * s, height * s);  // RGBA bytes, transparent black until written
    }
    // The tile's own pixels, from (y, x) in srTile: its margins are dropped.
    copyTile(srTile, srPixels, (top - topIn) * s, (left - leftIn) * s, top * s, left * s,
             (bottom - top) * s, (right - left) * s);
    srTile.dispose();
    onTile(i + 1, tiles.length);
  }
  return srPixels;
}

/** A crop of RGBA bytes as an ort.Tensor (1, 3, h, w) of float32 RGB in [0, 1]. */
function toPlanarRGB(pixels, top, bottom, left, right) {
  const h = bottom - top, w = right - left, plane = h * w;
  const rgb = new Float32Array(3 * plane);
  for (let y = 0; y < h; y++) {
    let src = ((top + y) * pixels.width + left) * 4, dst = y * w;
    for (let x = 0; x < w; x++, src += 4, dst++) {
      rgb[dst] = pixels.data[src] / 255;
      rgb[plane + dst] = pixels.data[src + 1] / 255;
      rgb[2 * plane + dst] = pixels.data[src + 2] / 255;
    }
  }
  return new ort.Tensor('float32', rgb, [1, 3, h, w]);
}

/** Copy rows x cols of a (1, 3, H, W) [0, 1] tensor from (srcY, srcX) into RGBA bytes at (dstY, dstX),
 * rounded to the nearest grey level and clamped to [0, 255], as utils.convert_image does for 'pil':
 * a Uint8ClampedArray rounds half to even and clamps by itself, as torch's round().clamp(0, 255). */
function copyTile(tensor, pixels, srcY, srcX, dstY, dstX, rows, cols) {
  const [, , tileH, tileW] = tensor.dims, plane = tileH * tileW, values = tensor.data;
  for (let y = 0; y < rows; y++) {
    let src = (srcY + y) * tileW + srcX, dst = ((dstY + y) * pixels.width + dstX) * 4;
    for (let x = 0; x < cols; x++, src++, dst += 4) {
      pixels.data[dst] = values[src] * 255;
      pixels.data[dst + 1] = values[plane + src] * 255;
      pixels.data[dst + 2] = values[2 * plane + src] * 255;
      pixels.data[dst + 3] = 255;
    }
  }
}
