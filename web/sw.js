// The page's service worker: it keeps the page working offline once it has been loaded. Every
// file the page fetches from its own site goes to the network first (so an edited page or a new
// model is seen at once) and is kept in the browser's cache, which answers when there is no network.
// The page's own files and onnxruntime-web's are cached at install, the models when first used.

// ---------------------------------------------------------------------------------------------
const CACHE = 'srresnet-web';
const ORT = 'node_modules/onnxruntime-web/dist/';
const SHELL = ['index.html', 'style.css', 'app.js', 'upscale.js', 'models/models.json', `${ORT}ort.min.mjs`,
               `${ORT}ort-wasm-simd-threaded.jsep.mjs`, `${ORT}ort-wasm-simd-threaded.jsep.wasm`];
// ---------------------------------------------------------------------------------------------

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));  // this visit too

self.addEventListener('fetch', (event) => {
  const {request} = event;
  if (request.method !== 'GET' || new URL(request.url).origin !== location.origin) return;
  event.respondWith(fetch(request).then((response) => {
    if (response.ok) {
      const copy = response.clone();
      event.waitUntil(caches.open(CACHE).then((cache) => cache.put(request, copy)));
    }
    return response;
  }, async () => {
    // Offline. A page's address carries its query (?input=...): any cached copy of the page will do.
    const cached = await caches.match(request, {ignoreSearch: request.mode === 'navigate'});
    return cached ?? Response.error();
  }));
});
