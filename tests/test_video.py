"""Tests of super_resolve.py's videos (video.py does their container work): frames, timestamps,
frame rate, pixel aspect and colours kept; the sound copied (or re-encoded where the container
cannot hold it) with its duration; streaming in batches; the images' naming and no-overwrite
rules; nothing under an output's name until the video is whole; one-line errors for corrupt and
truncated files.

The clips are made here with PyAV: 16x16 px, 8 frames at 8 fps, each frame's two halves in colours
of its own, with a one-second tone. Tiny random SRResNets stand in for trained ones, and a stub
"network" that repeats each pixel 4x4 gives outputs whose every pixel is known in advance.

    python -m pytest -q tests/test_video.py
"""
import fractions
import os
import subprocess
import sys

import av
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import super_resolve
import utils
from models import SRResNet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = torch.device('cpu')
FRAMES, FPS, SIZE = 8, 8, 16


def frame_colours(i):
    """The (left half, right half) RGB colours of frame i: saturated, so a wrong colour matrix shows."""
    return (200, 40, (30 * i) % 256), (30, (25 * i) % 256, 180)


def make_clip(path, video_codec='libx264', audio_codec='aac', sample_rate=48000, audio_bit_rate=0,
              sample_aspect_ratio=None, colorspace=None, frames=FRAMES, width=SIZE, height=SIZE):
    """Write a width x height clip of `frames` frames at FPS fps with a tone as long (audio_codec ''
    for none); colorspace tags it and converts its colours with that matrix (1: BT.709)."""
    with av.open(str(path), 'w') as out:
        video = out.add_stream(video_codec, rate=FPS)
        video.width, video.height, video.pix_fmt = width, height, 'yuv420p'
        if sample_aspect_ratio:
            video.codec_context.sample_aspect_ratio = sample_aspect_ratio
        if colorspace:
            video.codec_context.colorspace = colorspace
        audio = out.add_stream(audio_codec, rate=sample_rate, layout='mono') if audio_codec else None
        if audio_bit_rate:
            audio.bit_rate = audio_bit_rate
        for i in range(frames):
            rgb = np.zeros((height, width, 3), np.uint8)
            rgb[:, :width // 2], rgb[:, width // 2:] = frame_colours(i)
            frame = av.VideoFrame.from_ndarray(rgb, format='rgb24')
            if colorspace:
                frame = frame.reformat(format='yuv420p', dst_colorspace=colorspace)
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if audio is not None:
            t = np.arange(sample_rate * frames // FPS) / sample_rate
            tone = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)[None],
                                              format='s16', layout='mono')
            tone.sample_rate, tone.pts = sample_rate, 0
            out.mux(audio.encode(tone))
            out.mux(audio.encode(None))
    return str(path)


def read_clip(path):
    """What a player gets from a video file: its container, video stream facts, the decoded RGB
    frames and their times, and per audio stream its codec, packets' bytes and decoded seconds."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        info = {'format': container.format.name, 'codec': video.codec_context.name, 'size': (video.width, video.height),
                'rate': video.average_rate, 'sample_aspect_ratio': video.sample_aspect_ratio,
                'colorspace': video.codec_context.colorspace, 'frames': [], 'times': [],
                'audio': {stream.index: {'codec': stream.codec_context.name, 'packets': [], 'samples': 0,
                                         'sample_rate': stream.sample_rate} for stream in container.streams.audio}}
        for packet in container.demux():
            if packet.stream.type == 'audio' and packet.size:
                info['audio'][packet.stream.index]['packets'].append(bytes(packet))
            for frame in packet.decode():
                if packet.stream.type == 'video':
                    info['frames'].append(frame.to_ndarray(format='rgb24'))
                    info['times'].append(frame.time)
                else:
                    info['audio'][packet.stream.index]['samples'] += frame.samples
    for audio in info['audio'].values():
        audio['seconds'] = audio['samples'] / audio['sample_rate']
    return info


def save_tiny_checkpoint(path, key='model'):
    """A tiny random SRResNet saved as an SRResNet ('model') or SRGAN ('generator') checkpoint."""
    torch.manual_seed(0)
    model_args = {'n_blocks': 1, 'n_channels': 8, 'scaling_factor': 4}
    torch.save({key: SRResNet(**model_args).state_dict(), 'model_args': model_args, 'iteration': 0, 'config': {}}, path)
    return str(path)


@pytest.fixture
def checkpoint(tmp_path):
    return save_tiny_checkpoint(tmp_path / 'tiny.pth')


class RepeatPixels(nn.Module):
    """A stand-in for an SRResNet x4 whose output is known: every LR pixel repeated 4x4.
    (N, 3, h, w) ImageNet-normed -> (N, 3, 4h, 4w) in [-1, 1], like the real network."""

    def __init__(self):
        super().__init__()
        self.subpixel_convolutional_blocks = nn.Sequential(nn.Identity(), nn.Identity())  # two x2 blocks: x4
        self.unit = nn.Parameter(torch.ones(()))  # gives upscale_tensor a dtype to cast to

    def forward(self, lr_imgs):
        rgb = utils.convert_image(lr_imgs * torch.tensor(utils.IMAGENET_STD).view(1, 3, 1, 1)
                                  + torch.tensor(utils.IMAGENET_MEAN).view(1, 3, 1, 1), '[0, 1]', '[-1, 1]')
        return torch.repeat_interleave(torch.repeat_interleave(rgb, 4, dim=2), 4, dim=3) * self.unit


def run_main(argv):
    return super_resolve.main(argv)


# ----------------------------------------------------------------------------------------------
# What the output keeps
# ----------------------------------------------------------------------------------------------

def test_a_clip_keeps_its_frames_rate_aspect_and_copied_sound(checkpoint, tmp_path, capsys):
    clip = make_clip(tmp_path / 'clip.mp4', sample_aspect_ratio=fractions.Fraction(4, 3))
    out = tmp_path / 'outputs'
    assert run_main([f'--input_path={clip}', f'--output_folder={out}', f'--checkpoint={checkpoint}']) == \
        [str(out / 'clip_x4.mp4')]
    assert os.listdir(out) == ['clip_x4.mp4']  # no temporary file left beside it
    source, result = read_clip(clip), read_clip(out / 'clip_x4.mp4')
    assert result['codec'] == 'h264' and 'mp4' in result['format']
    assert len(result['frames']) == len(source['frames']) == FRAMES
    assert result['size'] == (4 * SIZE, 4 * SIZE) and result['frames'][0].shape == (4 * SIZE, 4 * SIZE, 3)
    assert result['rate'] == source['rate'] == FPS
    assert result['times'] == source['times'] == [i / FPS for i in range(FRAMES)]  # every timestamp, exactly
    assert result['sample_aspect_ratio'] == source['sample_aspect_ratio'] == fractions.Fraction(4, 3)
    [audio_in], [audio_out] = source['audio'].values(), result['audio'].values()
    assert audio_out['codec'] == 'aac' and audio_out['packets'] == audio_in['packets']  # copied, not re-encoded
    assert abs(audio_out['seconds'] - audio_in['seconds']) < 1 / FPS and abs(audio_out['seconds'] - 1) < 1 / FPS
    assert 'clip_x4.mp4 (8 frames of 64x64, from 16x16, 8 fps; audio: aac copied)' in capsys.readouterr().out


def test_sound_the_container_cannot_hold_is_re_encoded_and_keeps_its_duration(checkpoint, tmp_path):
    """WMA cannot go into an MP4, the container a .wmv's output gets (ASF holds no H.264)."""
    clip = make_clip(tmp_path / 'clip.wmv', video_codec='wmv2', audio_codec='wmav2', sample_rate=44100,
                     audio_bit_rate=64000)
    out = tmp_path / 'outputs'
    assert run_main([f'--input_path={clip}', f'--output_folder={out}', f'--checkpoint={checkpoint}']) == \
        [str(out / 'clip_x4.mp4')]
    source, result = read_clip(clip), read_clip(out / 'clip_x4.mp4')
    assert len(result['frames']) == FRAMES and result['rate'] == FPS and result['times'] == source['times']
    [audio_in], [audio_out] = source['audio'].values(), result['audio'].values()
    assert audio_in['codec'] == 'wmav2' and audio_out['codec'] == 'aac'
    assert abs(audio_out['seconds'] - audio_in['seconds']) < 1 / FPS


def test_frames_are_upscaled_in_order_with_their_own_colours(tmp_path):
    """Through a network whose output is known (each pixel repeated 4x4), every output frame is its
    own input frame upscaled, within the rounding of a lossless H.264 (crf 0) in YUV 4:2:0. The
    input is tagged BT.709: decoding or encoding with BT.601's matrix instead moves these colours
    by 15 grey levels. Batches of 3 (the last one short) give the frames of batches of 1."""
    clip = make_clip(tmp_path / 'clip709.mp4', colorspace=1)
    source = read_clip(clip)
    assert source['colorspace'] == 1
    with av.open(clip) as container:  # the check below can fail: BT.601's matrix gives other colours
        frame = next(container.decode(video=0))
        wrong = frame.reformat(format='rgb24', src_colorspace='ITU601').to_ndarray().astype(int)
        assert np.abs(wrong - source['frames'][0]).max() >= 10
    outputs = {}
    for batch_size in (1, 3):
        out_path = tmp_path / f'batch{batch_size}.mkv'
        video = super_resolve.upscale_video(RepeatPixels(), clip, str(out_path), CPU, tile_size=6, tile_overlap=2,
                                            crf=0, batch_size=batch_size, progress=False)
        assert video['frames'] == FRAMES and video['size'] == (SIZE, SIZE)
        outputs[batch_size] = read_clip(out_path)
    result = outputs[1]
    assert result['colorspace'] == 1 and result['format'].startswith('matroska')
    for i, (lr_frame, sr_frame) in enumerate(zip(source['frames'], result['frames'])):
        expected = np.repeat(np.repeat(lr_frame, 4, axis=0), 4, axis=1).astype(int)
        assert np.abs(sr_frame.astype(int) - expected).max() <= 3, f'frame {i}'
        left, right = frame_colours(i)  # and the input holds the colours it was made of (H.264 at crf 23)
        assert np.abs(lr_frame[SIZE // 2, 2].astype(int) - left).max() <= 8
        assert np.abs(lr_frame[SIZE // 2, -3].astype(int) - right).max() <= 8
    for a, b in zip(outputs[1]['frames'], outputs[3]['frames']):
        np.testing.assert_array_equal(a, b)


def test_frames_go_through_the_images_tiled_path(checkpoint, tmp_path, monkeypatch):
    """Each batch goes to upscale_tensor with the CLI's tiles, as an (N, 3, h, w) ImageNet-normed batch."""
    calls = []
    upscale_tensor = super_resolve.upscale_tensor

    def recording(model, lr_img, tile_size, tile_overlap, progress=False):
        calls.append((tuple(lr_img.shape), tile_size, tile_overlap))
        return upscale_tensor(model, lr_img, tile_size, tile_overlap, progress)
    monkeypatch.setattr(super_resolve, 'upscale_tensor', recording)
    clip = make_clip(tmp_path / 'clip.mp4', audio_codec='')
    run_main([f'--input_path={clip}', f'--output_folder={tmp_path / "out"}', f'--checkpoint={checkpoint}',
              '--video_batch=3', '--tile_size=8', '--tile_overlap=4'])
    assert calls == [((3, 3, SIZE, SIZE), 8, 4)] * 2 + [((2, 3, SIZE, SIZE), 8, 4)]
    assert read_clip(tmp_path / 'out' / 'clip_x4.mp4')['audio'] == {}  # a silent clip stays silent


# ----------------------------------------------------------------------------------------------
# Names, and nothing half-written
# ----------------------------------------------------------------------------------------------

def test_videos_follow_the_images_naming_and_no_overwrite_rules(checkpoint, tmp_path, capsys):
    folder = tmp_path / 'media'  # the output folder is the input folder
    folder.mkdir()
    make_clip(folder / 'clip.mp4')
    make_clip(folder / 'clip.mkv', audio_codec='')  # its container is kept: the names do not clash
    make_clip(folder / 'talk.webm', video_codec='libvpx-vp9', audio_codec='libopus')  # WebM holds no H.264
    make_clip(folder / 'talk.mp4', audio_codec='')  # so both want talk_x4.mp4
    args = [f'--input_path={folder}', f'--output_folder={folder}', f'--checkpoint={checkpoint}']
    first = run_main(args)
    assert sorted(os.path.basename(path) for path in first) == \
        ['clip_x4.mkv', 'clip_x4.mp4', 'talk_mp4_x4.mp4', 'talk_webm_x4.mp4']
    assert "talk.webm -> talk_webm_x4.mp4: another input is also named 'talk'" in capsys.readouterr().out
    assert read_clip(folder / 'clip_x4.mkv')['format'].startswith('matroska')
    assert read_clip(folder / 'talk_webm_x4.mp4')['audio'][1]['codec'] == 'opus'  # MP4 takes Opus: copied
    second = run_main(args)  # the outputs are not read back, and not overwritten
    assert sorted(os.path.basename(path) for path in second) == \
        ['clip_x4_1.mkv', 'clip_x4_1.mp4', 'talk_mp4_x4_1.mp4', 'talk_webm_x4_1.mp4']
    assert "Not reading 4 file(s) named like this script's outputs as inputs" in capsys.readouterr().out
    # Extensions in capitals, and containers that hold no H.264.
    assert super_resolve.output_names(['a/CLIP.MP4', 'a/x.MOV', 'a/y.ts'], 'x4') == \
        {'a/CLIP.MP4': 'CLIP_x4.mp4', 'a/x.MOV': 'x_x4.mov', 'a/y.ts': 'y_x4.mp4'}


def test_compare_mode_skips_videos(checkpoint, tmp_path, capsys):
    folder = tmp_path / 'media'
    folder.mkdir()
    make_clip(folder / 'clip.mp4', audio_codec='')
    Image.fromarray(np.full((20, 16, 3), 120, np.uint8)).save(folder / 'photo.png')
    written = run_main([f'--input_path={folder}', f'--output_folder={tmp_path / "grids"}',
                        f'--checkpoint={checkpoint}', '--mode=compare'])
    assert [os.path.basename(path) for path in written] == ['photo_compare.png']
    assert f"Skipping {folder / 'clip.mp4'}: a video (mode 'compare' takes images)" in capsys.readouterr().out


def test_nothing_is_under_the_outputs_name_until_the_video_is_whole(checkpoint, tmp_path, monkeypatch):
    clip = make_clip(tmp_path / 'clip.mp4')
    out = tmp_path / 'outputs'
    upscale_tensor, seen = super_resolve.upscale_tensor, []

    def interrupted_after_four_frames(*args, **kwargs):
        seen.append(sorted(os.listdir(out)))
        if len(seen) == 5:
            raise KeyboardInterrupt  # Ctrl-C halfway through
        return upscale_tensor(*args, **kwargs)
    monkeypatch.setattr(super_resolve, 'upscale_tensor', interrupted_after_four_frames)
    with pytest.raises(KeyboardInterrupt):
        run_main([f'--input_path={clip}', f'--output_folder={out}', f'--checkpoint={checkpoint}'])
    # While it was written, the video had a temporary name of atomic_write's, and never its own.
    assert all(len(names) == 1 and names[0].startswith(utils.TMP_PREFIX) and names[0].endswith('.mp4')
               for names in seen)
    assert os.listdir(out) == []  # and the interrupted one is removed


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------

def test_corrupt_and_truncated_videos_fail_in_one_line_naming_the_file(checkpoint, tmp_path):
    folder = tmp_path / 'media'
    folder.mkdir()
    good = make_clip(folder / 'good.mp4', frames=40)
    data = open(good, 'rb').read()
    (folder / 'cut.mp4').write_bytes(data[:len(data) // 2])  # its index (at the end) is lost
    long_mkv = make_clip(tmp_path / 'long.mkv', frames=40)
    data = open(long_mkv, 'rb').read()
    (folder / 'cut.mkv').write_bytes(data[:len(data) // 2])  # reads to its end without an error, 2.6 s of 5 s
    (folder / 'noise.mp4').write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with av.open(str(folder / 'sound.mp4'), 'w') as out:  # sound alone
        stream = out.add_stream('aac', rate=48000, layout='mono')
        tone = av.AudioFrame.from_ndarray(np.zeros((1, 4800), np.int16), format='s16', layout='mono')
        tone.sample_rate, tone.pts = 48000, 0
        out.mux(stream.encode(tone))
        out.mux(stream.encode(None))

    def run(*args):
        return subprocess.run([sys.executable, 'super_resolve.py', f'--checkpoint={checkpoint}', *args], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
    single = run(f'--input_path={folder / "cut.mp4"}', f'--output_folder={tmp_path / "one"}')
    assert single.returncode == 1 and 'Traceback' not in single.stderr
    assert single.stderr.splitlines() == [f"super_resolve.py: error: 1 of 1 input file(s) failed (reported above), "
                                          f"0 written: {folder / 'cut.mp4'}"]
    assert (f"Failed: {folder / 'cut.mp4'}: not a readable video, corrupt or truncated (InvalidDataError"
            in single.stdout)
    assert os.listdir(tmp_path / 'one') == []
    several = run(f'--input_path={folder}', f'--output_folder={tmp_path / "all"}')
    assert several.returncode == 1 and 'Traceback' not in several.stderr
    assert several.stderr.splitlines()[-1].startswith('super_resolve.py: error: 4 of 5 input file(s) failed')
    assert os.listdir(tmp_path / 'all') == ['good_x4.mp4']  # the others go on; the failed leave nothing
    failures = sorted(line for line in several.stdout.splitlines() if line.startswith('Failed: '))
    assert failures[0] == (f"Failed: {folder / 'cut.mkv'}: corrupt or truncated: FFmpeg's matroska,webm reports "
                           f"\"File ended prematurely\" (22 frames decoded of about 40)")
    assert failures[1].startswith(f"Failed: {folder / 'cut.mp4'}: not a readable video")
    assert failures[2].startswith(f"Failed: {folder / 'noise.mp4'}: not a readable video")
    assert failures[3] == f"Failed: {folder / 'sound.mp4'}: holds no video stream"


def test_video_settings_are_checked(checkpoint, tmp_path):
    clip = make_clip(tmp_path / 'clip.mp4', audio_codec='')
    out = tmp_path / 'never'
    with pytest.raises(ValueError, match=r'video_crf must be in 0\.\.51'):
        run_main([f'--input_path={clip}', f'--output_folder={out}', '--video_crf=60'])
    with pytest.raises(ValueError, match='video_batch must be >= 0'):
        run_main([f'--input_path={clip}', f'--output_folder={out}', '--video_batch=-1'])
    assert not out.exists()  # refused before anything was written

def test_videos_whose_frames_are_too_large_are_refused_from_the_header(checkpoint, tmp_path, capsys, monkeypatch):
    clip = make_clip(tmp_path / 'wide.mp4', width=260, height=250, frames=1, audio_codec='')
    monkeypatch.setattr(super_resolve, 'upscale_frames', None)  # no frame may be upscaled
    with pytest.raises(ValueError, match=r'1 of 1 input file\(s\) failed'):
        run_main([f'--input_path={clip}', f'--output_folder={tmp_path / "out"}', f'--checkpoint={checkpoint}',
                  '--max_output_megapixels=1'])
    assert (f"Failed: {clip}: its frames of 260x250 px would make a 1040x1000 upscale output"
            in capsys.readouterr().out)
    assert os.listdir(tmp_path / 'out') == []
