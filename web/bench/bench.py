"""Side by side in the browser: our SRResNet (onnxruntime-web, as the page runs it) and UpscalerJS's
esrgan-slim and esrgan-thick (TensorFlow.js), on the same images in one headless Chromium:
speed in ms per megapixel of output, on WASM with 1 and 2 threads, and PSNR on Set5 and Set14.

    cd web && npm ci && cd ..                  # once: onnxruntime-web, TensorFlow.js, UpscalerJS, puppeteer-core
    python web/bench/bench.py                  # -> runs/web_bench.json, and the tables
    python web/bench/bench.py --threads="[1]" --test_data_names="['Set5']"
    python web/bench/bench.py --results_file=results/web_bench.json     # publish

The LR images are eval.py's: each test image's largest centred crop whose sides divide by 4 (the
HR image), downscaled by Pillow's bicubic. Every model upscales every one of them in the browser,
whole (at these sizes our page's 384-pixel tiles hold a whole image), after one untimed warm-up
run; a time is the upscale alone, its input and output in memory. The outputs come back as 8-bit
PNGs and are scored here by the project's own utils.compute_psnr_ssim (Y channel, 4 pixels of
border cropped), as eval.py scores its own. All runs are made one after another in one browser,
so their times can be compared as ratios; their absolute values belong to this machine.
"""
import base64
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WEB = os.path.join(REPO, 'web')
sys.path[:0] = [REPO, WEB]  # this script lives in web/bench/: the project's modules, and web/serve.py
import runtime  # noqa: E402
import serve  # noqa: E402  (the page's static server, cross-origin isolated, so WASM gets its threads)
import utils  # noqa: E402
from datasets import SRDataset  # noqa: E402

# ----------------------------------------------------------------------------------------------
# Data
data_folder: str = 'data'  # holds <name>_test_images.json (create_data_lists.py)
test_data_names: list = ['Set5', 'Set14']
# Models
models: list = ['srresnet_x4', 'esrgan-slim', 'esrgan-thick']  # ours (web/models/), then UpscalerJS's x4 models
threads: list = [1, 2]  # WASM threads, one run of every model each
# System
chromium: str = '/usr/bin/chromium'  # Debian's package
results_file: str = 'runs/web_bench.json'  # the times and scores (results/ only when named)
timeout_s: int = 3600  # longest one model may take over all the images
# ----------------------------------------------------------------------------------------------

SCALE = 4
PEERS = ('esrgan-slim', 'esrgan-thick')  # UpscalerJS's, run by TensorFlow.js


def lr_images(config, folder):
    """Write every test set's LR images into folder/lr/<set>/; returns {set: [(name, HR PIL image)]}."""
    sets = {}
    for name in config.test_data_names:
        dataset = SRDataset(config.data_folder, 'test', crop_size=0, scaling_factor=SCALE, lr_img_type='[0, 1]',
                            hr_img_type='[0, 1]', test_data_name=name)
        os.makedirs(os.path.join(folder, 'lr', name))
        sets[name] = []
        for i, path in enumerate(dataset.images):
            lr_img, hr_img = dataset[i]  # (3, h, w) and (3, 4h, 4w), in [0, 1]
            image_name = os.path.splitext(os.path.basename(path))[0] + '.png'
            utils.convert_image(lr_img, source='[0, 1]', target='pil').save(os.path.join(folder, 'lr', name, image_name))
            sets[name].append((image_name, utils.convert_image(hr_img, source='[0, 1]', target='pil')))
    return sets


def run_browser(commands, chromium):
    """Visit each command's page with web/drive.mjs, in one browser; returns the answers."""
    driver = subprocess.Popen(['node', os.path.join(WEB, 'drive.mjs')], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, 'CHROMIUM': chromium})
    answers = []
    for command in commands:
        driver.stdin.write(json.dumps(command) + '\n')
        driver.stdin.flush()
        answers.append(json.loads(driver.stdout.readline() or '{"status": "driver: stopped"}'))
        print(f"  {command['url'].split('?')[1].split('&images=')[0]}: {answers[-1]['status']}", flush=True)
    driver.stdin.close()
    driver.wait(timeout=60)
    return answers


def decode_png(data_url):
    """A PNG data URL -> a PIL RGB image."""
    return Image.open(io.BytesIO(base64.b64decode(data_url.split(',', 1)[1]))).convert('RGB')


def cpu_name():
    """The CPU's model name, as lscpu says it (for the tables: every time belongs to a machine)."""
    try:
        with open('/proc/cpuinfo') as f:
            return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        return platform.processor() or 'unknown CPU'


def main(argv):
    """Run every model at every thread count on every LR image; score; write results_file."""
    config = runtime.parse_config(globals(), argv)
    runtime.require(set(config.models) <= {'srresnet_x4', 'srresnet_real_x4', 'srgan_mse_x4', 'srgan_real_x4', *PEERS},
                    f"models must be from web/models/ or {PEERS}, got {config.models}")
    runtime.require(config.threads and all(isinstance(n, int) and n >= 1 for n in config.threads),
                    f"threads must be a list of thread counts >= 1, got {config.threads}")
    runtime.require(os.path.isfile(config.chromium), f"chromium: {config.chromium} not found (apt-get install chromium)")
    runtime.require(os.path.isdir(os.path.join(WEB, 'node_modules', 'upscaler')),
                    "web/node_modules/ lacks UpscalerJS: run npm ci in web/")
    with tempfile.TemporaryDirectory() as folder:
        sets = lr_images(config, folder)
        os.symlink(WEB, os.path.join(folder, 'web'))
        server = serve.make_server(folder, '127.0.0.1', 0, quiet=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f'http://127.0.0.1:{server.server_address[1]}'
        images = ','.join(f'/lr/{name}/{image}' for name, pairs in sets.items() for image, _ in pairs)
        runs = [(model, n) for n in config.threads for model in config.models]
        commands = [{'url': f'{base}/web/bench/bench.html?engine={"upscalerjs" if model in PEERS else "ort"}'
                            f'&model={model}&threads={n}&images={images}', 'timeoutMs': config.timeout_s * 1000}
                    for model, n in runs]
        print(f"{len(runs)} runs of {images.count(',') + 1} images ({', '.join(sets)}) in {config.chromium}")
        started, load_before = time.time(), os.getloadavg()[0]
        answers = run_browser(commands, config.chromium)
        server.shutdown()
    failed = [f"{model} ({n} threads): {answer['status']}" for (model, n), answer in zip(runs, answers)
              if answer['status'] != 'done']
    if failed:
        raise ValueError('; '.join(failed))

    hr = {f'/lr/{name}/{image}': hr_pil for name, pairs in sets.items() for image, hr_pil in pairs}
    # The load average says whether other work shared the CPU (about 1 per busy core): times then grow.
    results = {'cpu': cpu_name(), 'browser': answers[0]['browser'], 'seconds': round(time.time() - started),
               'load_average_1min': {'before': round(load_before, 2), 'after': round(os.getloadavg()[0], 2)},
               'unit': 'ms per megapixel of output, WASM', 'runs': []}
    for (model, n), answer in zip(runs, answers):
        per_image = answer['results']
        output_mp = sum(r['width'] * r['height'] * SCALE ** 2 for r in per_image) / 1e6
        psnr = {}
        for name in sets:
            scores = [utils.compute_psnr_ssim(decode_png(r['png']), hr[r['image']], crop_border=SCALE)[0]
                      for r in per_image if r['image'].startswith(f'/lr/{name}/')]
            psnr[name] = sum(scores) / len(scores)
        results['runs'].append({'model': model, 'threads': n, 'timing': answer['timing'],
                                'ms_per_megapixel': sum(r['ms'] for r in per_image) / output_mp,
                                'output_megapixels': output_mp, 'psnr': psnr,
                                'per_image_ms': {r['image']: round(r['ms'], 1) for r in per_image}})
    utils.save_json(results, config.results_file, exists='replace')
    print(f"\n{results['cpu']}, {results['browser']} headless, WASM; ms per megapixel of output "
          f"({results['runs'][0]['output_megapixels']:.2f} MP over {', '.join(sets)})\n")
    print('| model | ' + ' | '.join(f'{n} thread{"s" * (n > 1)}' for n in config.threads) + ' | '
          + ' | '.join(f'PSNR {name}' for name in sets) + ' |')
    print('|---' * (1 + len(config.threads) + len(sets)) + '|')
    for model in config.models:
        rows = [r for r in results['runs'] if r['model'] == model]
        print(f"| {model} | " + ' | '.join(f"{r['ms_per_megapixel']:,.0f}" for r in rows) + ' | '
              + ' | '.join(f"{rows[-1]['psnr'][name]:.2f}" for name in sets) + ' |')
    print(f"\nWrote {config.results_file}")
    return results


if __name__ == '__main__':
    runtime.run_script(main, __file__)
