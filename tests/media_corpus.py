"""Tiny media files made on the fly, for the tests and for tests/probe_files.py: one clip per
container that super_resolve.py reads, with and without sound, rotated, at a variable frame rate,
at odd sizes, in 10-bit and 4:4:4, with subtitles, and animated GIF, WebP and PNG images.

Every frame of a clip has a grey level of its own (FRAME_GREYS), so that a test can tell which
input frame an output frame came from, whatever the codec did to the finer detail.

    clip = make_clip(tmp_path / 'clip.mkv', audio='aac', subtitles=True)
    frames, times = decoded_frames(clip)
"""
import fractions

import av
import numpy as np
from PIL import Image

FRAMES, RATE, SIZE = 12, 8, (18, 14)  # frames, frames per second, (width, height)
FRAME_GREYS = [40 + 15 * i for i in range(14)]  # frame i's grey level: apart by more than any codec moves them

# container: (video codec, its pixel format, audio codec that container takes, subtitle codec or '')
CONTAINERS = {
    'mp4': ('libx264', 'yuv420p', 'aac', ''),
    'mov': ('libx264', 'yuv420p', 'aac', ''),
    'mkv': ('libx264', 'yuv420p', 'aac', 'srt'),
    'webm': ('libvpx-vp9', 'yuv420p', 'libopus', 'webvtt'),
    'avi': ('mpeg4', 'yuv420p', 'mp3', ''),
    'ts': ('libx264', 'yuv420p', 'aac', ''),
    'wmv': ('wmv2', 'yuv420p', 'wmav2', ''),
    'flv': ('libx264', 'yuv420p', 'aac', ''),
}
MUXERS = {'mkv': 'matroska', 'ts': 'mpegts', 'wmv': 'asf'}


def grey_frame(i, width, height):
    """Frame i: its own grey level, with a dark square in a corner that shows where "up" is."""
    rgb = np.full((height, width, 3), FRAME_GREYS[i % len(FRAME_GREYS)], np.uint8)
    rgb[:height // 3, :width // 3] = 10  # top left
    return rgb


def make_clip(path, container=None, frames=FRAMES, size=SIZE, rate=RATE, audio='', rotation=0, vfr=False,
              pix_fmt='', subtitles=False, bframes=True):
    """Write a clip and return its path (a str).

    Args:
        container: a key of CONTAINERS ('' or None: the file's extension).
        frames, size, rate: its frame count, (width, height) and frames per second.
        audio: '' for none, 'default' for the container's own codec, else an encoder's name.
        rotation: degrees counter-clockwise in its display matrix (a phone's portrait video).
        vfr: timestamps at a variable rate (on a millisecond clock), not one frame every 1/rate s.
        pix_fmt: the video's pixel format ('' = the container's); 'yuv420p10le' or 'yuv444p' for x264.
        subtitles: add a subtitle stream of the container's codec, one cue per 4 frames.
        bframes: let x264 reorder frames (B-frames), so that decode order differs from display order.
    """
    path = str(path)
    container = container or path.rsplit('.', 1)[1]
    video_codec, default_pix_fmt, audio_codec, subtitle_codec = CONTAINERS[container]
    width, height = size
    with av.open(path, 'w', format=MUXERS.get(container, container)) as out:
        options = {'x264-params': 'bframes=3:b-adapt=0' if bframes else 'bframes=0'} if video_codec == 'libx264' else {}
        video = out.add_stream(video_codec, rate=rate, options=options)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt or default_pix_fmt
        clock = fractions.Fraction(1, 1000) if vfr else fractions.Fraction(1, rate)
        video.codec_context.time_base = clock
        if rotation:
            video.set_display_rotation(rotation)
        sound = None
        if audio:
            codec = audio_codec if audio == 'default' else audio
            sound = out.add_stream(codec, rate=48000 if codec != 'wmav2' else 44100, layout='mono')
            sound.bit_rate = 64000
        times = frame_times(frames, rate, vfr)
        cues = subtitle_cues(path, subtitle_codec, times, rate) if subtitles and subtitle_codec else None
        subtitle = out.add_stream_from_template(cues.streams.subtitles[0]) if cues else None
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(grey_frame(i, width, height), format='rgb24')
            frame.pts, frame.time_base = round(t / clock), clock
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            sample_rate = sound.codec_context.sample_rate
            seconds = times[-1] + 1 / rate
            t = np.arange(int(sample_rate * seconds)) / sample_rate
            tone = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)[None]  # (1, samples)
            frame = av.AudioFrame.from_ndarray(tone, format='s16', layout='mono')
            frame.sample_rate, frame.pts = sample_rate, 0
            out.mux(sound.encode(frame))
            out.mux(sound.encode(None))
        if subtitle is not None:
            with cues:
                for packet in cues.demux():
                    if packet.dts is not None:  # None: the empty packet that ends a stream
                        packet.stream = subtitle
                        out.mux(packet)
    return path


def subtitle_cues(path, codec, times, rate):
    """An open SRT or WebVTT file (codec 'srt' or 'webvtt') beside `path`, of one cue per 4 frames:
    its stream is the template of the clip's subtitle stream (FFmpeg's text encoders need more
    setting up than a test should do)."""
    def stamp(seconds):
        ms = round(seconds * 1000)
        comma = ',' if codec == 'srt' else '.'
        return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}{comma}{ms % 1000:03d}"
    lines = [] if codec == 'srt' else ['WEBVTT', '']
    for n, cue in enumerate(range(0, len(times), 4)):
        lines += ([str(n + 1)] if codec == 'srt' else []) + [f"{stamp(times[cue])} --> {stamp(times[cue] + 4 / rate)}",
                                                              f"cue {n}", '']
    cue_path = f"{path}.{'srt' if codec == 'srt' else 'vtt'}"
    with open(cue_path, 'w') as f:
        f.write('\n'.join(lines))
    return av.open(cue_path)


def frame_times(frames, rate, vfr=False):
    """Each frame's time in seconds: steady at `rate`, or (vfr) alternating short and long gaps."""
    if not vfr:
        return [i / rate for i in range(frames)]
    gaps = [0.5 / rate if i % 2 else 1.5 / rate for i in range(frames)]
    return [round(sum(gaps[:i]), 3) for i in range(frames)]


def make_animation(path, frames=6, size=SIZE, durations=None):
    """An animated GIF, WebP or PNG (by the extension) of `frames` grey frames, each shown for its
    own duration in ms (default 80, 120, 80, ...); returns (path, durations)."""
    durations = durations or [80 if i % 2 == 0 else 120 for i in range(frames)]
    images = [Image.fromarray(grey_frame(i, *size)) for i in range(frames)]
    extra = {'lossless': True} if str(path).endswith('.webp') else {}
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0, **extra)
    return str(path), durations


def decoded_frames(path):
    """A video's frames as a player shows them: (list of (h, w, 3) uint8 RGB arrays, their times in
    seconds, the first frame's rotation in degrees)."""
    frames, times, rotation = [], [], None
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            rotation = frame.rotation if rotation is None else rotation
            frames.append(frame.to_ndarray(format='rgb24'))
            times.append(float(frame.time))
    return frames, times, rotation


def frame_index(rgb):
    """Which frame of grey_frame an RGB frame (any size) shows: the nearest grey level, read in its
    bottom-right quarter, away from the corner mark."""
    h, w = rgb.shape[:2]
    grey = float(rgb[h // 2:, w // 2:].mean())
    return int(np.argmin([abs(grey - level) for level in FRAME_GREYS]))


def streams(path):
    """{'audio': [(codec, seconds)], 'subtitle': [codec]} of a media file."""
    with av.open(str(path)) as container:
        audio = [(s.codec_context.name, float(s.duration * s.time_base) if s.duration else None)
                 for s in container.streams.audio]
        return {'audio': audio, 'subtitle': [s.codec_context.name for s in container.streams.subtitles]}
