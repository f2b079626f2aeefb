"""Tests of the browser page (web/), in a real browser: Debian's Chromium, headless, driven by
web/drive.mjs (Node and puppeteer-core) through the page's test contract, with the page served
by web/serve.py on 127.0.0.1. The reference is Python's onnxruntime running the same model file
on the whole image at once: the page's tiled output must equal it within one grey level. First,
with no browser: the page's models, as export_onnx.py --for_web=True writes them.

    cd web && npm ci && cd ..      # once: onnxruntime-web and puppeteer-core
    python -m pytest -q tests/test_web.py

Without Chromium, Node or web/node_modules the tests are skipped, and the reason names what is
missing. WEB_SCREENSHOT=results/web_page.png keeps the screenshot the tests take of the page.
"""
import base64
import importlib.util
import io
import json
import os
import shutil
import subprocess
import threading

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image

import export_onnx
import runtime
from test_export_onnx import reference, save_checkpoint  # tiny SRResNets, and the plain network's output

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEB = os.path.join(REPO, 'web')
CHROMIUM = os.environ.get('CHROMIUM', '/usr/bin/chromium')
MODEL = 'srresnet_x4'  # the shipped SRResNet, as the page loads it (web/models/, float16 weights)
PHOTO = os.path.join(REPO, 'examples', 'chelsea.png')  # 192 x 128


def test_export_for_web_writes_half_weight_models_and_their_manifest(tmp_path):
    names = ['srresnet_x4', 'srresnet_real_x4', 'srgan_mse_x4', 'srgan_real_x4']  # the shipped files' names
    checkpoints = [save_checkpoint(tmp_path / f'{name}.pth', 'generator' if 'srgan' in name else 'model', seed=i + 1)
                   for i, name in enumerate(names)]
    web = tmp_path / 'models'
    argv = ['--for_web=True', f'--web_folder={web}'] + [f'--{key}={path}' for key, path in
                                                        zip(runtime.CORNER_KEYS, checkpoints)]
    web.mkdir()
    (web / 'srgan_real_x4.onnx').write_bytes(b'a file this project did not write')
    with pytest.raises(FileExistsError, match='srgan_real_x4.onnx exists'):  # never replaced, said before any work
        export_onnx.main(argv)
    assert (web / 'srgan_real_x4.onnx').read_bytes() == b'a file this project did not write'
    (web / 'srgan_real_x4.onnx').unlink()
    for _ in range(2):  # the second run replaces the files the first one wrote (its manifest lists them)
        assert export_onnx.main(argv) == str(web / 'models.json')
    manifest = json.loads((web / 'models.json').read_text())['models']
    assert [entry['name'] for entry in manifest] == names
    rng = np.random.default_rng(4)
    lr_imgs = rng.random((1, 3, 19, 23), dtype=np.float32)  # RGB in [0, 1], odd sizes
    for entry, checkpoint in zip(manifest, checkpoints):
        path = web / entry['file']
        assert entry['bytes'] == path.stat().st_size and entry['scaling_factor'] == 4
        proto = onnx.load(str(path))
        assert {w.data_type for w in proto.graph.initializer} == {onnx.TensorProto.FLOAT16}  # every weight halved
        [sr_imgs] = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider']).run(
            ['sr'], {'lr': lr_imgs})  # (1, 3, 76, 92), in [0, 1]
        expected = reference(checkpoint, torch.from_numpy(lr_imgs))  # the plain float32 network
        assert expected.std() > 0.02
        assert np.abs(np.round(sr_imgs * 255) - np.round(expected * 255)).max() <= 1  # within one grey level
    assert not [name for name in os.listdir(web) if name.startswith('.')]  # no temporary file left


def missing_tools():
    """What the tests need and this machine lacks, in words ('' when nothing is missing)."""
    missing = []
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        missing.append(f"Chromium ({CHROMIUM}; apt-get install chromium, or set CHROMIUM)")
    if shutil.which('node') is None:
        missing.append("Node (node is not on the PATH)")
    for package in ('onnxruntime-web', 'puppeteer-core'):
        if not os.path.isdir(os.path.join(WEB, 'node_modules', package)):
            missing.append(f"web/node_modules/{package} (run npm ci in web/)")
    if not os.path.isfile(os.path.join(WEB, 'models', 'models.json')):
        missing.append("web/models/models.json (python export_onnx.py --for_web=True)")
    return ', '.join(missing)


class Browser:
    """web/drive.mjs running: one headless Chromium, a page visit per call."""

    def __init__(self, webgpu=''):
        """webgpu='swiftshader': give the page a WebGPU adapter, Chromium's software one."""
        self.process = subprocess.Popen(['node', os.path.join(WEB, 'drive.mjs')], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True,
                                        env={**os.environ, 'CHROMIUM': CHROMIUM, 'WEBGPU': webgpu})

    def visit(self, url, **options):
        """Open url, wait until the page sets its status; returns what the contract exposes."""
        self.process.stdin.write(json.dumps({'url': url, **options}) + '\n')
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"web/drive.mjs stopped (exit status {self.process.poll()})"
        return json.loads(line)

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


def start_server(folder):
    """web/ served as /web/ beside the test inputs in folder, by web/serve.py's server on a free
    port of 127.0.0.1; returns (server, base URL)."""
    os.symlink(WEB, folder / 'web')
    spec = importlib.util.spec_from_file_location('serve', os.path.join(WEB, 'serve.py'))
    serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve)
    server = serve.make_server(str(folder), '127.0.0.1', 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f'http://127.0.0.1:{server.server_address[1]}'


def stop_server(server):
    server.shutdown()
    server.server_close()


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    """(base URL, folder): the page and the test inputs, served for this file's tests."""
    missing = missing_tools()
    if missing:
        pytest.skip(f"the browser tests need {missing}")
    folder = tmp_path_factory.mktemp('site')
    server, base = start_server(folder)
    yield base, folder
    stop_server(server)


@pytest.fixture(scope='module')
def browser(site):
    browser = Browser()
    yield browser
    browser.close()


def page_url(base, input_name, **params):
    """The test contract: index.html?input=URL&model=NAME, upscaled on load; WASM, as on any machine,
    unless backend=None (the page's own choice)."""
    params = {'input': f'/{input_name}', 'model': MODEL, 'backend': 'wasm', **params}
    return f'{base}/web/index.html?' + '&'.join(f'{key}={value}' for key, value in params.items() if value is not None)


def decode_png(data_url):
    """A PNG data URL -> (H, W, 3) int array."""
    assert data_url.startswith('data:image/png;base64,')
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(',', 1)[1]))).convert('RGB'), dtype=int)


def onnxruntime_whole(img):
    """Python onnxruntime's output for the whole PIL RGB image, rounded to 8 bits: (4H, 4W, 3) ints."""
    runner = onnxruntime.InferenceSession(os.path.join(WEB, 'models', f'{MODEL}.onnx'),
                                          providers=['CPUExecutionProvider'])
    lr_img = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)[None] / 255.  # (1, 3, h, w), in [0, 1]
    [sr_img] = runner.run(['sr'], {'lr': lr_img})  # (1, 3, 4h, 4w), in [0, 1]
    return np.clip(np.round(sr_img[0].transpose(1, 2, 0) * 255.), 0, 255).astype(int)


@pytest.mark.parametrize('box, tile', [
    ((0, 0, 31, 17), 0),  # odd sizes, one tile (the page's tiles are 384 px)
    ((40, 30, 104, 78), 0),  # 64 x 48
    ((20, 10, 95, 63), 0),  # 75 x 53
    ((56, 24, 136, 72), 48),  # the cat's face, 80 x 48: two tiles of 40 x 48 (test_super_resolve's case)
    ((20, 10, 95, 63), 29),  # 75 x 53 in 3 x 2 tiles of odd sizes
])
def test_page_equals_whole_image_onnxruntime_within_one_grey_level(site, browser, box, tile):
    base, folder = site
    img = Image.open(PHOTO).convert('RGB').crop(box)
    name = f'crop_{"_".join(map(str, box))}.png'
    img.save(folder / name)
    answer = browser.visit(page_url(base, name, **({'tile': tile} if tile else {})))
    assert answer['status'] == 'done', answer
    page = decode_png(answer['upscaled'])
    expected = onnxruntime_whole(img)
    assert page.shape == expected.shape == (4 * img.height, 4 * img.width, 3)
    assert expected.std() > 10  # a real picture, not a flat one on which any two models agree
    assert np.abs(page - expected).max() <= 1
    timing = answer['timing']
    assert (timing['width'], timing['height'], timing['backend']) == (img.width, img.height, 'wasm')
    expected_tiles = (-(-img.width // tile) * -(-img.height // tile)) if tile else 1
    assert timing['tiles'] == expected_tiles
    assert answer['download'] == name[:-len('.png')] + '_x4.png'


def test_tiles_without_overlap_differ_from_the_whole_image(site, browser):
    """The check above can fail: with no overlap, the zero padding at the tile borders shows."""
    base, folder = site
    img = Image.open(PHOTO).convert('RGB').crop((56, 24, 136, 72))
    img.save(folder / 'face.png')
    answer = browser.visit(page_url(base, 'face.png', tile=48, overlap=0))
    assert answer['status'] == 'done', answer
    assert np.abs(decode_png(answer['upscaled']) - onnxruntime_whole(img)).max() > 1


def test_a_file_that_is_not_an_image_gives_the_error_status(site, browser):
    base, folder = site
    (folder / 'notes.png').write_text('these are notes, not a picture\n')
    answer = browser.visit(page_url(base, 'notes.png'))
    assert answer['status'] == 'error: notes.png is not an image this browser can read', answer
    assert answer['upscaled'] is None and answer['timing'] is None


def test_an_input_over_the_size_limit_is_refused_before_any_work(site, browser):
    base, folder = site
    Image.new('RGB', (1921, 1080), (90, 120, 200)).save(folder / 'big.png')  # one column over 1920 x 1080
    answer = browser.visit(page_url(base, 'big.png'))
    assert answer['status'].startswith('error: big.png is 1921x1080 (2.07 MP): the page takes at most'), answer
    assert answer['upscaled'] is None and answer['timing'] is None  # no model was loaded or run


def test_an_unknown_model_gives_the_error_status(site, browser):
    base, folder = site
    Image.open(PHOTO).convert('RGB').crop((0, 0, 16, 16)).save(folder / 'small.png')
    answer = browser.visit(page_url(base, 'small.png', model='no_such_model'))
    assert answer['status'] == 'error: model=no_such_model is not in models/models.json', answer


def test_the_page_shows_the_photo_and_its_upscale(site, browser, tmp_path):
    """The whole photo, upscaled on a cross-origin isolated page (WASM threads), then a screenshot."""
    base, folder = site
    shutil.copy(PHOTO, folder / 'chelsea.png')
    screenshot = tmp_path / 'page.png'
    answer = browser.visit(page_url(base, 'chelsea.png', backend=None), screenshot=str(screenshot))
    assert answer['status'] == 'done', answer
    assert answer['crossOriginIsolated'] and answer['download'] == 'chelsea_x4.png'
    assert answer['timing']['backend'] == 'wasm'  # headless Chromium without a GPU offers no WebGPU adapter
    assert decode_png(answer['upscaled']).shape == (512, 768, 3)
    shown = np.asarray(Image.open(screenshot).convert('RGB'), dtype=int)
    assert shown.shape == (900, 1280, 3) and shown.std() > 10  # the page drew something, not a blank
    if os.environ.get('WEB_SCREENSHOT'):
        shutil.copy(screenshot, os.environ['WEB_SCREENSHOT'])


def test_with_a_webgpu_adapter_the_page_runs_on_webgpu_and_gives_the_same_output(site):
    """Chromium's software WebGPU adapter (SwiftShader) stands in for a GPU: the page picks WebGPU
    by itself, and its output still equals Python onnxruntime's within one grey level."""
    base, folder = site
    img = Image.open(PHOTO).convert('RGB').crop((70, 30, 95, 49))  # 25 x 19: software WebGPU is slow
    img.save(folder / 'gpu.png')
    browser = Browser(webgpu='swiftshader')
    try:
        answer = browser.visit(page_url(base, 'gpu.png', backend=None))  # the page's own choice
    finally:
        browser.close()
    assert answer['status'] == 'done', answer
    assert answer['timing']['backend'] == 'webgpu'
    assert np.abs(decode_png(answer['upscaled']) - onnxruntime_whole(img)).max() <= 1


def test_the_page_works_offline_once_loaded(browser, tmp_path):
    """Its service worker (web/sw.js) keeps what the page fetched: with the server gone, the same
    address still upscales. A server of its own, so that the others are not stopped."""
    folder = tmp_path / 'site'
    folder.mkdir()
    Image.open(PHOTO).convert('RGB').crop((60, 20, 100, 52)).save(folder / 'offline.png')
    server, base = start_server(folder)
    try:
        online = browser.visit(page_url(base, 'offline.png'), serviceWorker=True)  # installs the worker
        assert online['status'] == 'done', online
        assert browser.visit(page_url(base, 'offline.png'))['status'] == 'done'  # the worker caches the model
    finally:
        stop_server(server)
    offline = browser.visit(page_url(base, 'offline.png'))
    assert offline['status'] == 'done', offline
    assert np.array_equal(decode_png(offline['upscaled']), decode_png(online['upscaled']))
