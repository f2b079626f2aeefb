"""A probe of every script that writes, with hostile inputs and options: each case runs the real
command in a child process, in a sandbox of tiny generated files, and is sorted into one of

    ok            exit 0, and the output checked right (frames, times, sound, animation, names)
    clear error   exit 1 (130 for an interrupt), one line on stderr that names the file or option
    traceback     a Python traceback
    wrong output  exit 0 with an output that fails its check, or an error that names nothing
    data loss     a file that was there before the case is changed or gone (unless replacing
                  it was asked for with --overwrite=True)

It is not part of the test suite (it takes a few minutes); the promises it checks are tested in
tests/test_files_safe.py and tests/test_media_corpus.py.

    python tests/probe_files.py                                  # prints the table
    python tests/probe_files.py --results_file=results/probe_files.json
"""
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.dirname(os.path.abspath(__file__))]
import media_corpus  # noqa: E402  (after the path is set)
from media_corpus import decoded_frames, make_animation, make_clip  # noqa: E402


# Damage that no reader can see, and that the output keeps as the input has it (the README says so).
LIMITS = {
    'cut ts': "an MPEG-TS declares no length anywhere: cut, it is a shorter video, and comes out as one",
    'corrupt avi': "the damage fell in MP3 audio, which carries no checksum: FFmpeg decodes it without a word, "
                   "and the sound is copied as the input has it",
}


def snapshot(root):
    """{path: sha256} of every file under root."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, 'rb') as f:
                    found[path] = hashlib.sha256(f.read()).hexdigest()
    return found


def sigint_as_in_a_terminal():
    """preexec_fn of a child to be interrupted: SIGINT at its default, as under a terminal. A
    child inherits an ignored SIGINT, and a shell that is not interactive ignores SIGINT in what it
    starts in the background (`.ci/run &`: the whole suite, then, and every child of it), where an
    interrupted child ran to its end (exit 0) after the signal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(script, args, interrupt_when=None):
    """Run a script with --key=value args, in the repository (so its shipped checkpoints are found);
    returns (exit status, stdout, stderr). interrupt_when: a function of nothing that says when to
    send SIGINT (polled every 10 ms)."""
    child = subprocess.Popen([sys.executable, os.path.join(REPO, script), *args], cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, 'PYTHONPATH': REPO},
                             preexec_fn=sigint_as_in_a_terminal)
    if interrupt_when is not None:
        deadline = time.monotonic() + 120
        while child.poll() is None and not interrupt_when() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=600)
    return child.returncode, stdout, stderr


def error_lines(stderr):
    """stderr without progress bars (tqdm's lines: 'name: 40%|####  | 4/10 [...]' or '| 4/? [...]')."""
    return [line for line in stderr.replace('\r', '\n').splitlines()
            if line.strip() and not re.search(r'\|\s*\d+/[\d?]+ \[', line)]


def classify(status, stdout, stderr, names, check, lost, limit=''):
    """One of the five outcomes, and why."""
    if lost:
        return 'data loss', f"changed or removed: {', '.join(lost)}"
    if limit:
        return 'known limit', limit
    if 'Traceback' in stderr:
        return 'traceback', error_lines(stderr)[-1]
    if status == 0:
        problem = check() if check else ''
        return ('wrong output', problem) if problem else ('ok', stdout.strip().splitlines()[-1][:160])
    lines = error_lines(stderr)
    failed = [line for line in stdout.splitlines() if line.startswith('Failed: ')]
    if status in (1, 130) and len(lines) == 1 and any(name in ' '.join(lines + failed) for name in names):
        return 'clear error', (failed or lines)[0][:200]
    return 'wrong output', f"exit {status}, unclear: {lines[-3:]}"


def video_check(clip, out):
    """'' if out shows every frame of clip in order at its times and rotation, else what is wrong."""
    def check():
        if not os.path.exists(out):
            return f"no {out}"
        frames_in, times_in, rotation_in = decoded_frames(clip)
        frames_out, times_out, rotation_out = decoded_frames(out)
        if len(frames_out) != len(frames_in):
            return f"{len(frames_out)} frames of {len(frames_in)}"
        if max(abs(a - b) for a, b in zip(times_in, times_out)) > 1e-3:
            return f"times {times_out[:4]} for {times_in[:4]}"
        if rotation_in != rotation_out:
            return f"rotation {rotation_out} for {rotation_in}"
        in_streams, out_streams = media_corpus.streams(clip), media_corpus.streams(out)
        if len(in_streams['audio']) != len(out_streams['audio']):
            return f"audio {out_streams['audio']} for {in_streams['audio']}"
        return ''
    return check


def animation_check(path, out):
    def check():
        with Image.open(path) as a, Image.open(out) as b:
            if getattr(b, 'n_frames', 1) != a.n_frames:
                return f"{getattr(b, 'n_frames', 1)} frames of {a.n_frames}"
        return ''
    return check


def main(argv):
    results_file = next((arg.split('=', 1)[1] for arg in argv if arg.startswith('--results_file=')), '')
    sandbox = tempfile.mkdtemp(prefix='probe_')
    media, out = os.path.join(sandbox, 'media'), os.path.join(sandbox, 'out')
    os.makedirs(media)
    os.makedirs(out)
    sys.path.insert(0, os.path.join(REPO, 'tests'))
    from test_video import save_tiny_checkpoint
    tiny = save_tiny_checkpoint(os.path.join(sandbox, 'tiny.pth'))
    sr = ['super_resolve.py']
    cases = []  # (name, script, args, names an error must mention, check, {files the case may replace})

    def add(name, script, args, names=(), check=None, may_replace=(), interrupt_when=None, limit=''):
        cases.append((name, script, args, list(names), check, set(may_replace), interrupt_when, limit))

    # Videos of every container, with and without sound, and the hard kinds.
    for container in sorted(media_corpus.CONTAINERS):
        for audio in ('', 'default'):
            clip = make_clip(os.path.join(media, f'{container}{"_sound" if audio else ""}.{container}'), audio=audio)
            out_name = os.path.join(out, os.path.basename(clip).rsplit('.', 1)[0] + '_x4'
                                    + ('.' + container if container in ('mp4', 'mov', 'mkv', 'flv') else '.mp4'))
            add(f'{container} video{" with sound" if audio else ""}', sr,
                [f'--input_path={clip}', f'--output_folder={out}', f'--checkpoint={tiny}'],
                check=video_check(clip, out_name))
    for name, container, options in [('rotated 90', 'mp4', {'rotation': 90}), ('rotated -90', 'mov', {'rotation': -90}),
                                     ('variable rate', 'mkv', {'vfr': True, 'audio': 'default'}),
                                     ('odd size 4:4:4', 'mkv', {'pix_fmt': 'yuv444p', 'size': (17, 13)}),
                                     ('10-bit', 'mkv', {'pix_fmt': 'yuv420p10le'}),
                                     ('subtitles', 'mkv', {'subtitles': True, 'audio': 'default'}),
                                     ('subtitles into mp4', 'webm', {'subtitles': True})]:
        clip = make_clip(os.path.join(media, f'{name.replace(" ", "_")}.{container}'), **options)
        out_name = os.path.join(out, os.path.basename(clip).rsplit('.', 1)[0] + '_x4.'
                                + (container if container != 'webm' else 'mp4'))
        add(name, sr, [f'--input_path={clip}', f'--output_folder={out}', f'--checkpoint={tiny}'],
            check=video_check(clip, out_name))
    for extension in ('gif', 'webp', 'png'):
        path, _ = make_animation(os.path.join(media, f'animated_{extension}.{extension}'))
        add(f'animated {extension}', sr, [f'--input_path={path}', f'--output_folder={out}', f'--checkpoint={tiny}'],
            check=animation_check(path, os.path.join(out, f'animated_{extension}_x4.png')))
    # Damaged videos.
    damaged = os.path.join(sandbox, 'damaged')
    os.makedirs(damaged)
    for container in ('mp4', 'mov', 'mkv', 'webm', 'avi', 'wmv', 'flv', 'ts'):
        whole = make_clip(os.path.join(damaged, f'whole.{container}'), frames=40, audio='default')
        data = open(whole, 'rb').read()
        os.remove(whole)
        for kind in ('cut', 'corrupt'):
            damaged_data = bytearray(data[:len(data) // 2] if kind == 'cut' else data)
            if kind == 'corrupt':
                rng = np.random.default_rng(0)
                for i in rng.integers(len(data) // 3, 2 * len(data) // 3, 40):
                    damaged_data[i] = rng.integers(0, 256)
            path = os.path.join(damaged, f'{kind}.{container}')
            with open(path, 'wb') as f:
                f.write(damaged_data)
            add(f'{kind} {container}', sr, [f'--input_path={path}', f'--output_folder={out}', f'--checkpoint={tiny}'],
                names=[path], check=lambda: 'a damaged video passed', limit=LIMITS.get(f'{kind} {container}', ''))
    # Images and names.
    photo = os.path.join(media, 'photo.png')
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 16, 3), np.uint8)).save(photo)
    taken = os.path.join(sandbox, 'taken')
    os.makedirs(taken)
    Image.new('RGB', (4, 4)).save(os.path.join(taken, 'photo_x4.png'))
    with open(os.path.join(taken, '.tmp_12345_mine.txt'), 'w') as f:
        f.write('a user\'s file that looks temporary')
    os.makedirs(os.path.join(taken, '.srtmp-1-abcdefgh'))  # a folder named like a temporary
    add('output name taken', sr, [f'--input_path={photo}', f'--output_folder={taken}', f'--checkpoint={tiny}'],
        check=lambda: '' if os.path.exists(os.path.join(taken, 'photo_x4_1.png')) else 'no photo_x4_1.png')
    add('overwrite asked', sr, [f'--input_path={photo}', f'--output_folder={taken}', f'--checkpoint={tiny}',
                                '--overwrite=True'], may_replace=[os.path.join(taken, 'photo_x4.png')])
    truncated = os.path.join(damaged, 'truncated.png')
    with open(photo, 'rb') as f, open(truncated, 'wb') as g:
        g.write(f.read()[:200])
    add('truncated png', sr, [f'--input_path={truncated}', f'--output_folder={out}', f'--checkpoint={tiny}'],
        names=[truncated])
    text = os.path.join(sandbox, 'notes.txt')
    with open(text, 'w') as f:
        f.write('not a checkpoint')
    empty = os.path.join(sandbox, 'empty')
    os.makedirs(empty)
    for name, args, names in [
        ('missing input', ['--input_path=nothing.png'], ['nothing.png']),
        ('empty folder', [f'--input_path={empty}', f'--checkpoint={tiny}'], [empty]),
        ('output folder is a file', [f'--input_path={photo}', f'--output_folder={photo}'], ['output_folder']),
        ('unwritable output folder', [f'--input_path={photo}', '--output_folder=/proc/sr_out'], ['/proc/sr_out']),
        ('no CUDA', [f'--input_path={photo}', '--device=cuda'], ["device 'cuda'"]),
        ('no MPS', [f'--input_path={photo}', '--device=mps'], ["device 'mps'"]),
        ('not a device', [f'--input_path={photo}', '--device=gpu0'], ["device 'gpu0'"]),
        ('bad precision', [f'--input_path={photo}', '--precision=fp64'], ['precision']),
        ('bad backend', [f'--input_path={photo}', '--backend=tensorrt'], ['backend']),
        ('bad denoise', [f'--input_path={photo}', '--denoise=2'], ['denoise']),
        ('bad texture type', [f'--input_path={photo}', '--texture=lots'], ['texture']),
        ('bad crf', [f'--input_path={photo}', '--video_crf=99'], ['video_crf']),
        ('negative tiles', [f'--input_path={photo}', '--tile_size=-1'], ['tile_size']),
        ('unknown option', [f'--input_path={photo}', '--scale=4'], ['scale']),
        ('not key=value', ['photo.png'], ['photo.png']),
        ('checkpoint is text', [f'--input_path={photo}', f'--checkpoint={text}'], [text]),
    ]:
        add(name, sr, args + ([f'--output_folder={out}'] if not any(a.startswith('--output_folder') for a in args)
                              else []), names=names)
    # Interrupts.
    long_clip = make_clip(os.path.join(sandbox, 'long.mp4'), frames=400, size=(32, 24), audio='default')
    stopped = os.path.join(sandbox, 'stopped')
    os.makedirs(stopped)
    add('Ctrl-C mid video', sr, [f'--input_path={long_clip}', f'--output_folder={stopped}', f'--checkpoint={tiny}'],
        names=['interrupted'], interrupt_when=lambda: len(os.listdir(stopped)) > 0,
        check=lambda: 'exit 0 after Ctrl-C')
    # The other scripts that write.
    existing_onnx = os.path.join(sandbox, 'model.onnx')
    with open(existing_onnx, 'w') as f:
        f.write('a user\'s file')
    add('export over an existing file', ['export_onnx.py'], [f'--checkpoint={tiny}', f'--output={existing_onnx}'],
        names=[existing_onnx])
    add('export over its checkpoint', ['export_onnx.py'], [f'--checkpoint={tiny}', f'--output={tiny}'], names=[tiny])
    add('export over its checkpoint, overwrite', ['export_onnx.py'],
        [f'--checkpoint={tiny}', f'--output={tiny}', '--overwrite=True'], names=[tiny])
    add('export a text file', ['export_onnx.py'], [f'--checkpoint={text}', f'--output={out}/t.onnx'], names=[text])
    add('export a missing checkpoint', ['export_onnx.py'], ['--checkpoint=none.pth'], names=['none.pth'])
    lists = os.path.join(sandbox, 'lists')
    os.makedirs(os.path.join(lists, 'SetA'))
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 44, 3), np.uint8)).save(
        os.path.join(lists, 'SetA', 'a.png'))
    with open(os.path.join(lists, 'SetA_test_images.json'), 'w') as f:
        json.dump([os.path.join(lists, 'SetA', 'a.png')], f)
    results = os.path.join(sandbox, 'eval.json')
    with open(results, 'w') as f:
        f.write('{"a user": "file"}')
    eval_args = [f'--data_folder={lists}', "--test_data_names=['SetA']", "--models=['bicubic']",
                 "--metrics=['psnr']"]
    add('eval over earlier results', ['eval.py'], eval_args + [f'--results_file={results}'],
        check=lambda: '' if os.path.exists(os.path.join(sandbox, 'eval_1.json')) else 'no eval_1.json')
    add('eval into /proc', ['eval.py'], eval_args + ['--results_file=/proc/eval.json'], names=['/proc/eval.json'])
    add('eval without lists', ['eval.py'], [f'--data_folder={empty}'], names=[empty])
    add('data lists exist', ['create_data_lists.py'], ["--train_folders=[]", f"--test_folders=['{lists}/SetA']",
                                                       f'--output_folder={lists}', '--min_size=8'],
        names=['SetA_test_images.json'])
    add('data lists of a missing folder', ['create_data_lists.py'], ["--train_folders=['nowhere']",
                                                                     f'--output_folder={empty}'], names=['nowhere'])
    run_dir = os.path.join(sandbox, 'run')
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, 'log_srresnet.csv'), 'w') as f:
        f.write('an earlier run\'s log')
    add('training over an earlier log', ['train_srresnet.py'], [f'--data_folder={lists}', f'--out_dir={run_dir}',
                                                                 '--iterations=1'], names=['log_srresnet.csv'])
    add('training from a text checkpoint', ['train_srresnet.py'], [f'--data_folder={lists}', f'--checkpoint={text}',
                                                                    f'--out_dir={run_dir}'], names=[text])
    add('fit over an earlier fit', ['fit_denoise.py'], [f'--output={existing_onnx}'], names=[existing_onnx])

    rows = []
    for name, script, args, names, check, may_replace, interrupt_when, limit in cases:
        before = snapshot(sandbox)
        status, stdout, stderr = run(script[0], args, interrupt_when)
        after = snapshot(sandbox)
        lost = [os.path.relpath(path, sandbox) for path, digest in before.items()
                if after.get(path) != digest and path not in may_replace]
        outcome, detail = classify(status, stdout, stderr, names, check, lost, limit if status == 0 else '')
        rows.append({'case': name, 'script': script[0], 'outcome': outcome, 'detail': detail})
        print(f"{outcome:>12}  {script[0]:<20} {name:<40} {detail}", flush=True)
    counts = {outcome: sum(row['outcome'] == outcome for row in rows)
              for outcome in ('ok', 'clear error', 'known limit', 'traceback', 'wrong output', 'data loss')}
    print(f"\n{len(rows)} cases: " + ', '.join(f"{n} {outcome}" for outcome, n in counts.items()))
    shutil.rmtree(sandbox)
    if results_file:
        import utils
        utils.save_json({'cases': len(rows), 'counts': counts, 'rows': rows}, results_file, exists='replace')
    return counts


if __name__ == '__main__':
    main(sys.argv[1:])
