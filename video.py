"""Reading and writing videos, for super_resolve.py: PyAV (whose wheel bundles FFmpeg) in, H.264 out.

    with open_video('clip.mp4') as source:        # the header: size, frame rate, expected frames
        write_upscaled(source, 'clip_x4.mp4', upscale, 4, crf=18, batch_size=1)

A video is streamed: its packets are demuxed and decoded as they come, `batch_size` frames at a
time go to a function that upscales RGB frames (super_resolve.py passes its images' tiled path),
and each upscaled frame is encoded at once, so one batch of frames is in memory whatever the
video's length. Each output frame keeps its input frame's timestamp: the frame count, the frame
rate (constant or variable) and the sync with the sound stay the input's. The pixel aspect ratio
and the colour tags are copied, and colours go to RGB and back with the input's own matrix and
range. The output is H.264 in the input's container where that holds H.264 (VIDEO_CONTAINERS),
else an MP4. Audio streams are copied packet for packet where the output's container takes their
codec, else re-encoded as AAC; subtitle and data streams are left out. The file is written under
a temporary name and renamed when it is complete (utils.atomic_write), and a video that ends
before its header says is refused as truncated.

Importing this module does not import PyAV (the functions that need it do), picks no device and
reads no file.
"""
import contextlib
import dataclasses
import fractions
import os

import numpy as np

import utils

# Video files, by extension, and the FFmpeg muxer of each container that an output keeps (those
# that hold H.264; outputs of the others are MP4s).
VIDEO_CONTAINERS = {'.mp4': 'mp4', '.m4v': 'mp4', '.mov': 'mov', '.mkv': 'matroska', '.avi': 'avi', '.flv': 'flv'}
VIDEO_EXTENSIONS = tuple(VIDEO_CONTAINERS) + ('.webm', '.wmv', '.mpg', '.mpeg', '.ts', '.3gp', '.ogv')
AUDIO_BIT_RATE = 192_000  # bits per second of audio that has to be re-encoded (AAC)


class BadVideo(Exception):
    """A video that cannot be super-resolved (unreadable, corrupt, truncated, without a video stream,
    frames too large, or an output FFmpeg cannot write): the run goes on without it."""


@dataclasses.dataclass
class VideoSource:
    """An input video, open for reading (open_video), and what its header declares."""
    path: str
    container: object  # PyAV's input container
    video: object  # its first moving picture (not a cover image stored as a one-frame video stream)
    audio: list  # its audio streams
    rate: fractions.Fraction  # frames per second: x264's rate control needs one, even for a variable rate
    declared_seconds: float  # the duration its header declares, or None
    expected_frames: int  # the frames it declares or implies, or None (a progress bar's total)


def _unreadable_video(path, error):
    """The BadVideo of a video that FFmpeg cannot read: the file's name and FFmpeg's reason, one line."""
    reason = getattr(error, 'strerror', None) or str(error)
    return BadVideo(f"{path}: not a readable video, corrupt or truncated ({type(error).__name__}: {reason})")


def _read(packets_or_frames, path):
    """Iterate over PyAV's packets or decoded frames, turning a read or decode error into BadVideo."""
    import av
    try:
        yield from packets_or_frames
    except av.FFmpegError as error:
        raise _unreadable_video(path, error) from None


@contextlib.contextmanager
def open_video(path):
    """Open a video file and read its header: `with open_video(path) as source:` gives a VideoSource,
    and closes the file at the end. Raises BadVideo for a file FFmpeg cannot read, or one without a
    video stream; decodes no frame."""
    import av  # here: only videos need PyAV
    try:
        container = av.open(path)
    except av.FFmpegError as error:
        raise _unreadable_video(path, error) from None
    with container:
        video_in = next((stream for stream in container.streams.video
                         if not stream.disposition & av.stream.Disposition.attached_pic), None)
        if video_in is None:
            raise BadVideo(f"{path}: holds no video stream")
        video_in.thread_type = 'AUTO'  # decode on several threads where the codec allows
        rate = video_in.average_rate or video_in.guessed_rate or video_in.base_rate or fractions.Fraction(25)
        declared_seconds = (float(video_in.duration * video_in.time_base) if video_in.duration
                            else container.duration / 1e6 if container.duration else None)
        expected_frames = video_in.frames or (round(declared_seconds * rate) if declared_seconds else None)
        yield VideoSource(path, container, video_in, list(container.streams.audio), rate, declared_seconds,
                          expected_frames)


def first_frames(path, count):
    """A video's first `count` frames (fewer if it is shorter) as (N, h, w, 3) uint8 RGB arrays, read
    on their own before the video is upscaled (super_resolve.py reads its damage from them).
    Raises BadVideo as open_video does, or when no frame can be decoded."""
    frames = []
    with open_video(path) as source:
        for packet in _read(source.container.demux(source.video), path):
            for frame in _read(packet.decode(), path):
                frames.append(frame.to_ndarray(format='rgb24'))  # (h, w, 3), with the frame's own matrix and range
                if len(frames) == count:
                    return np.stack(frames)
    if not frames:
        raise BadVideo(f"{path}: no frame could be decoded")
    return np.stack(frames)  # (N, h, w, 3)


def _add_audio_stream(sink, audio_in):
    """The output stream for an input audio stream, and whether its packets are copied: as they are
    where the output's container takes the codec, else decoded and re-encoded as AAC."""
    if audio_in.codec_context.name in sink.supported_codecs:
        return sink.add_stream_from_template(audio_in), True
    aac_rates = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
    layout = audio_in.layout.name
    if layout.endswith('channels'):  # channels in no named order (WMA's): FFmpeg's usual order for as many
        layout = {1: 'mono', 6: '5.1', 8: '7.1'}.get(audio_in.layout.nb_channels, 'stereo')
    audio_out = sink.add_stream('aac', rate=audio_in.sample_rate if audio_in.sample_rate in aac_rates else 48000,
                                layout=layout)
    audio_out.format, audio_out.bit_rate = 'fltp', AUDIO_BIT_RATE  # fltp: the samples AAC encodes
    return audio_out, False  # PyAV resamples the decoded frames to what the encoder takes


def _add_video_stream(sink, video_in, s, rate, crf):
    """The H.264 output stream for `video_in`, s times larger, on the input's clock, with its pixel
    aspect ratio and colour tags; returns (stream, the input's colour tags)."""
    video_out = sink.add_stream('libx264', rate=rate, options={'crf': str(crf)})
    video_out.width, video_out.height, video_out.pix_fmt = video_in.width * s, video_in.height * s, 'yuv420p'
    # The input's time base: each frame's timestamp is carried over exactly, variable rates included.
    video_out.time_base = video_out.codec_context.time_base = video_in.time_base
    if video_in.sample_aspect_ratio:
        video_out.codec_context.sample_aspect_ratio = video_in.sample_aspect_ratio
    # Set now, from the stream's parameters: the first packet muxed (often audio) opens every encoder.
    colour = {tag: getattr(video_in.codec_context, tag) for tag in ('colorspace', 'color_range', 'color_primaries',
                                                                    'color_trc')}
    for tag, value in colour.items():
        setattr(video_out.codec_context, tag, value)
    return video_out, colour


def write_upscaled(source, out_path, upscale, s, crf, batch_size, on_batch=None):
    """Stream every frame of `source` through `upscale` into an H.264 video s times larger, with its sound.

    Args:
        source: a VideoSource, from open_video.
        out_path: the output file; its extension names its container (VIDEO_CONTAINERS).
        upscale: a function from a batch of RGB frames, (N, h, w, 3) uint8, to the same frames s
            times larger, (N, h * s, w * s, 3) uint8.
        s: how many times larger `upscale` makes a frame.
        crf: x264's constant rate factor (lower: better and larger).
        batch_size: frames per call of `upscale`.
        on_batch: called with the number of frames of each batch once it is encoded (a progress
            bar's update), or None.

    Returns {'frames': frames written, 'audio': what became of each audio stream, e.g. 'aac copied'}.
    Raises BadVideo for a video that FFmpeg cannot decode or write, one with no decodable frame,
    or one that ends before its header says (truncated); nothing is then left under out_path.
    """
    import av
    path, video_in, rate = source.path, source.video, source.rate
    frame_ticks = 1 / (rate * video_in.time_base)  # one frame's duration, in time-base units
    try:
        with utils.atomic_write(out_path) as f, \
                av.open(f, 'w', format=VIDEO_CONTAINERS[os.path.splitext(out_path)[1].lower()]) as sink:
            video_out, colour = _add_video_stream(sink, video_in, s, rate, crf)
            audio_out = {stream.index: _add_audio_stream(sink, stream) for stream in source.audio}
            batch, batch_pts, first_pts, last_pts, written = [], [], None, None, 0

            def encode_batch():
                # PyAV converts each frame to RGB with its own matrix and range.
                rgb_frames = np.stack([frame.to_ndarray(format='rgb24') for frame in batch])  # (N, h, w, 3), uint8
                for array, frame_pts in zip(upscale(rgb_frames), batch_pts):  # each (h * s, w * s, 3), uint8
                    # To YUV with the input's own matrix and range, which the output's tags declare.
                    out_frame = av.VideoFrame.from_ndarray(array, format='rgb24').reformat(
                        format='yuv420p', dst_colorspace=colour['colorspace'], dst_color_range=colour['color_range'])
                    out_frame.pts, out_frame.time_base = frame_pts, video_in.time_base
                    sink.mux(video_out.encode(out_frame))
                if on_batch is not None:
                    on_batch(len(batch))
                batch.clear()
                batch_pts.clear()

            for packet in _read(source.container.demux(video_in, *source.audio), path):
                if packet.stream.index in audio_out:
                    stream, copied = audio_out[packet.stream.index]
                    if copied and packet.dts is not None:  # None: the empty packet that ends a stream
                        packet.stream = stream
                        sink.mux(packet)
                    elif not copied:
                        for frame in _read(packet.decode(), path):
                            sink.mux(stream.encode(frame))
                    continue
                for frame in _read(packet.decode(), path):  # the last, empty packet flushes the decoder
                    frame_pts = frame.pts
                    if frame_pts is None:  # a container without timestamps: a steady rate
                        frame_pts = 0 if last_pts is None else round(last_pts + frame_ticks)
                    if last_pts is not None and frame_pts <= last_pts:  # x264 needs rising timestamps
                        frame_pts = last_pts + 1
                    first_pts = frame_pts if first_pts is None else first_pts
                    last_pts = frame_pts
                    batch.append(frame)
                    batch_pts.append(frame_pts)
                    written += 1
                    if len(batch) == batch_size:
                        encode_batch()
            if batch:
                encode_batch()
            if written == 0:
                raise BadVideo(f"{path}: no frame could be decoded")
            # A file cut short can read to its end without an error (Matroska does): its frames end early.
            seconds = float((last_pts - first_pts + frame_ticks) * video_in.time_base)
            declared_seconds = source.declared_seconds
            if declared_seconds and seconds < declared_seconds - max(1., float(2 / rate)):
                raise BadVideo(f"{path}: truncated or corrupt: its frames cover {seconds:.2f} s of the "
                               f"{declared_seconds:.2f} s its header declares")
            sink.mux(video_out.encode(None))  # the frames the encoder still holds
            for stream, copied in audio_out.values():
                if not copied:
                    sink.mux(stream.encode(None))
    except av.FFmpegError as error:  # reading errors are BadVideo already: this one is the writing's
        raise BadVideo(f"{path}: FFmpeg could not write {out_path} ({type(error).__name__}: "
                       f"{getattr(error, 'strerror', None) or error})") from None
    audio = [f"{stream.codec_context.name} {'copied' if copied else 're-encoded as AAC'}"
             for stream, (_, copied) in zip(source.audio, audio_out.values())]
    return {'frames': written, 'audio': audio}
