"""Serve the browser page on this machine, cross-origin isolated, so that WASM runs on threads.

    cd web && npm ci && cd .. && python export_onnx.py --for_web=True   # once: onnxruntime-web and the models
    python web/serve.py                    # then open http://127.0.0.1:8000/
    python web/serve.py --port=8080 --host=0.0.0.0

Any static server can host web/; for threads it must send these two headers with every file:
    Cross-Origin-Opener-Policy: same-origin
    Cross-Origin-Embedder-Policy: require-corp
Without them the page still works, on one thread. The tests start this server on a free port.
"""
import argparse
import functools
import http.server
import os

# ----------------------------------------------------------------------------------------------
HOST = '127.0.0.1'  # this machine only
PORT = 8000
FOLDER = os.path.dirname(os.path.abspath(__file__))  # web/
ISOLATION_HEADERS = {'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp'}
# ----------------------------------------------------------------------------------------------


class IsolatedHandler(http.server.SimpleHTTPRequestHandler):
    """A static file handler that makes the page cross-origin isolated (SharedArrayBuffer, threads)."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      '.mjs': 'text/javascript', '.js': 'text/javascript', '.wasm': 'application/wasm'}

    def end_headers(self):
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        self.send_header('Cache-Control', 'no-cache')  # an edited page or a new model is seen at once
        super().end_headers()

    def __init__(self, *args, quiet=False, **kwargs):
        self.quiet = quiet
        super().__init__(*args, **kwargs)

    def log_message(self, format, *args):
        if not self.quiet:
            super().log_message(format, *args)


def make_server(folder=FOLDER, host=HOST, port=PORT, quiet=False):
    """A threading HTTP server of `folder` (port 0: a free one, then read server.server_address);
    quiet: no line per request."""
    handler = functools.partial(IsolatedHandler, directory=folder, quiet=quiet)
    return http.server.ThreadingHTTPServer((host, port), handler)


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description='Serve the browser page, cross-origin isolated.')
    parser.add_argument('--host', default=HOST)
    parser.add_argument('--port', type=int, default=PORT)
    parser.add_argument('--folder', default=FOLDER, help='the folder to serve (default: web/)')
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.folder, 'index.html')):
        raise SystemExit(f"serve.py: error: {args.folder} has no index.html")
    try:
        server = make_server(args.folder, args.host, args.port)
    except OSError as error:
        raise SystemExit(f"serve.py: error: cannot listen on {args.host}:{args.port}: {error.strerror}")
    print(f"Serving {args.folder} at http://{args.host}:{server.server_address[1]}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
