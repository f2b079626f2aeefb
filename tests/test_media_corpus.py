"""A corpus of tiny generated media (tests/media_corpus.py) through super_resolve.py: each container
it reads, with and without sound, rotated, at a variable frame rate, at odd sizes, 10-bit and
4:4:4, with subtitles; animated images; truncated and corrupt files; and an interrupt sent to a
real child process halfway through a video.

A stand-in network that repeats each pixel 4x4 (test_video.RepeatPixels) makes every output
frame's grey level say which input frame it came from.

    python -m pytest -q tests/test_media_corpus.py
"""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

import media_corpus
import super_resolve
from media_corpus import FRAMES, RATE, SIZE, decoded_frames, frame_index, make_animation, make_clip, streams
from probe_files import sigint_as_in_a_terminal
from test_video import RepeatPixels, save_tiny_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = torch.device('cpu')


def upscale(clip, out_folder):
    """upscale_video through the stand-in network, into the output name main() would give."""
    os.makedirs(out_folder, exist_ok=True)
    out_path = os.path.join(out_folder, super_resolve.plain_output_name(clip, 'x4'))
    return super_resolve.upscale_video(RepeatPixels(), clip, out_path, CPU, tile_size=0, tile_overlap=0,
                                       progress=False)


def assert_same_film(clip, result):
    """The output shows every input frame, in order, 4x larger, at the input's times and rotation,
    with as many audio streams, each as long within a frame."""
    frames_in, times_in, rotation_in = decoded_frames(clip)
    frames_out, times_out, rotation_out = decoded_frames(result['path'])
    assert [frame_index(frame) for frame in frames_out] == [frame_index(frame) for frame in frames_in] \
        == list(range(len(frames_in)))
    assert frames_out[0].shape[:2] == (4 * frames_in[0].shape[0], 4 * frames_in[0].shape[1])
    assert times_out == pytest.approx(times_in, abs=1e-3) and times_out == sorted(times_out)
    assert rotation_out == rotation_in
    audio_in, audio_out = streams(clip)['audio'], streams(result['path'])['audio']
    assert len(audio_out) == len(audio_in)
    for (_, seconds_in), (_, seconds_out) in zip(audio_in, audio_out):
        if seconds_in and seconds_out:  # some containers declare no stream duration
            assert abs(seconds_out - seconds_in) < 1.5 / RATE


@pytest.mark.parametrize('container', sorted(media_corpus.CONTAINERS))
@pytest.mark.parametrize('audio', ['', 'default'])
def test_every_container_keeps_its_frames_times_and_sound(container, audio, tmp_path):
    clip = make_clip(tmp_path / f'clip.{container}', audio=audio)
    result = upscale(clip, tmp_path / 'out')
    assert result['frames'] == FRAMES
    assert_same_film(clip, result)


@pytest.mark.parametrize('container, options', [
    ('mp4', {'rotation': 90}),  # a phone held upright
    ('mov', {'rotation': -90, 'audio': 'default'}),
    ('mkv', {'vfr': True, 'audio': 'default'}),  # frames 1.5 and 0.5 frame-times apart, in turn
    ('mp4', {'vfr': True}),
    ('mkv', {'pix_fmt': 'yuv444p', 'size': (17, 13)}),  # odd sides: 4:4:4 holds them
    ('mkv', {'pix_fmt': 'yuv420p10le'}),  # 10-bit
    ('mp4', {'bframes': False}),
])
def test_rotation_variable_rates_odd_sizes_and_deep_colour_are_kept(container, options, tmp_path):
    clip = make_clip(tmp_path / f'clip.{container}', **options)
    result = upscale(clip, tmp_path / 'out')
    assert_same_film(clip, result)
    if options.get('rotation'):
        assert f"turned {options['rotation']} degrees for display, as the input" in result['notes']
    if options.get('vfr'):
        assert decoded_frames(result['path'])[1][:4] == pytest.approx([0, 0.1875, 0.25, 0.4375], abs=1e-3)


def test_subtitles_are_copied_where_the_container_holds_them_and_a_note_says_otherwise(tmp_path, capsys):
    mkv = make_clip(tmp_path / 'film.mkv', audio='default', subtitles=True)
    result = upscale(mkv, tmp_path / 'out')
    assert streams(result['path'])['subtitle'] == ['srt'] and result['notes'] == []
    import av
    with av.open(mkv) as a, av.open(result['path']) as b:  # the very cues, at the very times
        cues = [[(bytes(p), p.pts) for p in c.demux(subtitles=0) if p.size] for c in (a, b)]
    assert cues[0] == cues[1] and len(cues[0]) == 3
    webm = make_clip(tmp_path / 'talk.webm', audio='default', subtitles=True)  # its output is an MP4
    checkpoint = save_tiny_checkpoint(tmp_path / 'tiny.pth')
    super_resolve.main([f'--input_path={webm}', f'--output_folder={tmp_path / "out2"}', f'--checkpoint={checkpoint}'])
    assert "subtitle stream 2 (webvtt) left out: .mp4 cannot hold it (an .mkv output can)" in capsys.readouterr().out
    assert streams(tmp_path / 'out2' / 'talk_x4.mp4') == {'audio': [('opus', pytest.approx(1.5, abs=0.02))],
                                                            'subtitle': []}


@pytest.mark.parametrize('extension', ['gif', 'webp', 'png'])
def test_an_animated_image_comes_back_animated_with_every_frame_at_its_duration(extension, tmp_path, capsys):
    path, durations = make_animation(tmp_path / f'anim.{extension}')
    checkpoint = save_tiny_checkpoint(tmp_path / 'tiny.pth')
    [out] = super_resolve.main([f'--input_path={path}', f'--output_folder={tmp_path / "out"}',
                                f'--checkpoint={checkpoint}'])
    assert out == str(tmp_path / 'out' / 'anim_x4.png')
    with Image.open(out) as img:
        assert img.format == 'PNG' and img.n_frames == len(durations) and img.info.get('loop') == 0
        frames = [(frame.size, frame.info['duration']) for frame in ImageSequence.Iterator(img)]
    assert frames == [((4 * SIZE[0], 4 * SIZE[1]), duration) for duration in durations]
    assert f"an animated PNG of {len(durations)} frames of {4 * SIZE[0]}x{4 * SIZE[1]}" in capsys.readouterr().out


def test_an_animation_through_the_stand_in_keeps_each_frames_own_picture(tmp_path):
    path, durations = make_animation(tmp_path / 'anim.gif', frames=5)
    out, _ = super_resolve.upscale_animation(RepeatPixels(), path, str(tmp_path / 'anim_x4.png'), CPU, 0, 0, 64,
                                             'refuse', [path])
    with Image.open(out) as img:
        indices = [frame_index(np.asarray(frame.convert('RGB'))) for frame in ImageSequence.Iterator(img)]
    assert indices == list(range(5))


# ----------------------------------------------------------------------------------------------
# Damaged files: one line naming the file and what is wrong, and nothing written
# ----------------------------------------------------------------------------------------------

def damaged(tmp_path, container, kind):
    """A 40-frame clip with sound, cut in half ('cut') or with 40 bytes of its middle third
    overwritten ('corrupt')."""
    clip = make_clip(tmp_path / f'whole.{container}', frames=40, audio='default')
    data = bytearray(open(clip, 'rb').read())
    if kind == 'cut':
        data = data[:len(data) // 2]
    else:
        rng = np.random.default_rng(0)
        for i in rng.integers(len(data) // 3, 2 * len(data) // 3, 40):
            data[i] = rng.integers(0, 256)
    path = tmp_path / 'damaged' / f'{kind}.{container}'
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(bytes(data))
    return str(path)


@pytest.mark.parametrize('container, kind', [
    ('mp4', 'cut'), ('mov', 'cut'), ('mkv', 'cut'), ('webm', 'cut'), ('avi', 'cut'), ('wmv', 'cut'), ('flv', 'cut'),
    ('mp4', 'corrupt'), ('mov', 'corrupt'), ('mkv', 'corrupt'), ('webm', 'corrupt'), ('wmv', 'corrupt'),
    ('ts', 'corrupt'), ('flv', 'corrupt'),
])
def test_a_truncated_or_corrupt_video_is_one_line_naming_it_and_leaves_nothing(container, kind, tmp_path, capsys):
    """(A cut MPEG-TS is not here: that format has no header to say how long it should be, so a
    cut one is a shorter video, and comes out as one.)"""
    path = damaged(tmp_path, container, kind)
    checkpoint = save_tiny_checkpoint(tmp_path / 'tiny.pth')
    out = tmp_path / 'out'
    with pytest.raises(ValueError, match='1 of 1 input file'):
        super_resolve.main([f'--input_path={path}', f'--output_folder={out}', f'--checkpoint={checkpoint}'])
    [failure] = [line for line in capsys.readouterr().out.splitlines() if line.startswith('Failed: ')]
    assert failure.startswith(f"Failed: {path}: ") and ('corrupt' in failure or 'truncated' in failure)
    assert 'could not write' not in failure  # the input's fault is not called the output's
    assert os.listdir(out) == []


# ----------------------------------------------------------------------------------------------
# Ctrl-C
# ----------------------------------------------------------------------------------------------

def test_an_interrupt_mid_video_ends_in_one_line_with_status_130_and_leaves_nothing(tmp_path):
    clip = make_clip(tmp_path / 'long.mp4', frames=400, size=(32, 24), audio='default')
    checkpoint = save_tiny_checkpoint(tmp_path / 'tiny.pth')
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'long_x4.mp4').write_bytes(b'a file of the user\'s')  # kept, whatever happens
    child = subprocess.Popen([sys.executable, 'super_resolve.py', f'--input_path={clip}', f'--output_folder={out}',
                              f'--checkpoint={checkpoint}'], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_in_a_terminal)
    deadline = time.monotonic() + 120
    while len(os.listdir(out)) < 2 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # until the video is being written under its temporary name
    assert child.poll() is None, child.communicate()
    time.sleep(0.2)  # a few frames in
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == 130, stderr
    assert 'Traceback' not in stderr
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(('long.mp4', '\r'))
             and '%|' not in line]
    assert lines == [f"super_resolve.py: {super_resolve.runtime.INTERRUPTED}"]
    assert os.listdir(out) == ['long_x4.mp4'] and (out / 'long_x4.mp4').read_bytes() == b'a file of the user\'s'
