"""Reading and writing videos, for super_resolve.py: PyAV (whose wheel bundles FFmpeg) in, H.264 out.

    with open_video('clip.mp4') as source:        # the header: size, frame rate, expected frames
        write_upscaled(source, 'clip_x4.mp4', upscale, 4, crf=18, batch_size=1)

A video is streamed through three stages that overlap: a thread demuxes and decodes, the calling
thread runs `upscale` on `batch_size` frames at a time (super_resolve.py passes its images'
tiled path), and a thread encodes and muxes. Bounded queues join them, so a few batches are in
memory whatever the video's length, and decoding and encoding hide behind the model.

What the output keeps of the input:
  - every frame, each with its input timestamp (rising, as a player needs): the frame count, the
    frame rate (constant or variable) and the sync with the sound stay the input's;
  - the pixel aspect ratio, the display matrix (a phone's rotation, so it plays upright) and the
    colour tags; colours go to RGB and back with the input's own matrix and range;
  - audio streams, copied packet for packet where the output's container takes their codec, else
    re-encoded as AAC; subtitle streams, copied where the container can hold them, else left out
    with a note in the result.
The output is H.264 (8-bit 4:2:0, which every player plays; a 10-bit or 4:4:4 input is reduced to
it) in the input's container where that holds H.264 (VIDEO_CONTAINERS), else an MP4. Data streams
(timecodes, chapters' tracks) are left out. The file is written under a temporary name and takes
its own when complete (utils.atomic_write); a video that fails to decode, or ends before its
header says, is refused in one line that names the frame.

Importing this module does not import PyAV (the functions that need it do), picks no device and
reads no file.
"""
import contextlib
import dataclasses
import fractions
import os
import queue
import struct
import threading

import numpy as np

import utils

# Video files, by extension, and the FFmpeg muxer of each container that an output keeps (those
# that hold H.264 with its timestamps; outputs of the others are MP4s). AVI is not one: it stores
# no presentation times, and FFmpeg reads H.264 back from it a frame late.
VIDEO_CONTAINERS = {'.mp4': 'mp4', '.m4v': 'mp4', '.mov': 'mov', '.mkv': 'matroska', '.flv': 'flv'}
VIDEO_EXTENSIONS = tuple(VIDEO_CONTAINERS) + ('.avi', '.webm', '.wmv', '.mpg', '.mpeg', '.ts', '.3gp', '.ogv')
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
    subtitles: list = dataclasses.field(default_factory=list)  # its subtitle streams
    display_matrix: tuple = None  # FFmpeg's 9 integers that turn its frames for display (a phone's rotation), or None
    rotation: float = 0.  # that matrix's counter-clockwise rotation, in degrees


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
        matrix, rotation = _display_matrix(path, video_in.index)
        yield VideoSource(path, container, video_in, list(container.streams.audio), rate, declared_seconds,
                          expected_frames, list(container.streams.subtitles), matrix, rotation)


def _display_matrix(path, index):
    """(display matrix, rotation in degrees) of a video stream, read from its first decoded frame,
    where FFmpeg puts the stream's matrix; (None, 0.) without one, or if no frame decodes."""
    import av
    try:
        with av.open(path) as container:
            for frame in container.decode(container.streams[index]):
                for side_data in frame.side_data:
                    if side_data.type.name == 'DISPLAYMATRIX':
                        return struct.unpack('<9i', bytes(side_data)), frame.rotation
                return None, 0.
    except av.FFmpegError:  # the upscaling itself reports what is wrong, with the frame
        pass
    return None, 0.


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


def _add_subtitle_streams(sink, subtitles, out_path):
    """{input index: output stream} for the subtitle streams the output's container can hold, and
    a note for each it cannot."""
    copied, notes = {}, []
    for stream in subtitles:
        codec = stream.codec_context.name
        if codec in sink.supported_codecs:
            copied[stream.index] = sink.add_stream_from_template(stream)
        else:
            notes.append(f"subtitle stream {stream.index} ({codec}) left out: {os.path.splitext(out_path)[1]} "
                         f"cannot hold it (an .mkv output can)")
    return copied, notes


class _Pipe:
    """A bounded queue between two stages, which any stage can stop: put and get give up, with
    _Stopped, once stop() is called (a failure or an interrupt elsewhere), so no thread is left waiting."""

    def __init__(self, size, stopped):
        self.queue, self.stopped = queue.Queue(size), stopped

    def put(self, item):
        while not self.stopped.is_set():
            try:
                return self.queue.put(item, timeout=0.1)
            except queue.Full:
                continue
        raise _Stopped

    def get(self):
        while not self.stopped.is_set():
            try:
                return self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
        raise _Stopped


class _Stopped(Exception):
    """Another stage failed or was interrupted: this one ends quietly."""


_END = None  # the last item through a pipe


def _stage(work, failures, stopped):
    """Run `work` on a thread: its first error is kept in `failures` for the caller to raise, and
    stops the other stages."""
    def run():
        try:
            work()
        except _Stopped:
            pass
        except BaseException as error:
            failures.append(error)
            stopped.set()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def _ffmpeg_errors():
    """Collect the errors FFmpeg logs meanwhile, as (level, source, message): a demuxer that skips a
    damaged part, or a decoder that conceals one, says so only there."""
    import av.logging
    level = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)  # PyAV keeps FFmpeg's log off by default
    try:
        with av.logging.Capture(local=False) as logs:
            yield logs
    finally:
        av.logging.set_level(level)


def write_upscaled(source, out_path, upscale, s, crf, batch_size, on_batch=None, exists='refuse', inputs=()):
    """Stream every frame of `source` through `upscale` into an H.264 video s times larger, with its
    sound and subtitles.

    Args:
        source: a VideoSource, from open_video.
        out_path: the output file; its extension names its container (VIDEO_CONTAINERS).
        upscale: a function from a batch of RGB frames, (N, h, w, 3) uint8, to the same frames s
            times larger, (N, h * s, w * s, 3) uint8. It runs on the calling thread.
        s: how many times larger `upscale` makes a frame.
        crf: x264's constant rate factor (lower: better and larger).
        batch_size: frames per call of `upscale`.
        on_batch: called with the number of frames of each batch once it is encoded (a progress
            bar's update), or None.
        exists, inputs: as for utils.atomic_write (the source is always an input).

    Returns {'frames': frames written, 'audio': what became of each audio stream, e.g. 'aac
    copied', 'notes': what was left out, 'path': the file written}. Raises BadVideo for a video
    that FFmpeg cannot decode or write, one with no decodable frame, a corrupt frame, or one that
    ends before its header says (truncated); nothing is then left under out_path.
    """
    import av
    path, video_in, rate = source.path, source.video, source.rate
    frame_ticks = 1 / (rate * video_in.time_base)  # one frame's duration, in time-base units
    about = f" of about {source.expected_frames}" if source.expected_frames else ''
    stopped, failures, counts = threading.Event(), [], {'frames': 0, 'first_pts': None, 'last_pts': None}
    decoded, upscaled = _Pipe(max(4, 2 * batch_size), stopped), _Pipe(2, stopped)

    def decode():  # stage 1: demux and decode, in file order
        last_pts = None
        try:
            for packet in source.container.demux(video_in, *source.audio, *source.subtitles):
                if packet.stream.index != video_in.index:
                    decoded.put(('packet', packet))  # audio or subtitles: the last stage's
                    continue
                for frame in packet.decode():  # the last, empty packet flushes the decoder
                    if frame.is_corrupt:
                        raise BadVideo(f"{path}: corrupt: decoding failed at frame {counts['frames'] + 1}{about}")
                    frame_pts = frame.pts
                    if frame_pts is None:  # a container without timestamps: a steady rate
                        frame_pts = 0 if last_pts is None else round(last_pts + frame_ticks)
                    if last_pts is not None and frame_pts <= last_pts:  # a player needs rising timestamps
                        frame_pts = last_pts + 1
                    counts['first_pts'] = frame_pts if counts['first_pts'] is None else counts['first_pts']
                    counts['last_pts'] = last_pts = frame_pts
                    counts['frames'] += 1
                    # PyAV converts each frame to RGB with its own matrix and range.
                    decoded.put(('frame', frame.to_ndarray(format='rgb24'), frame_pts))  # (h, w, 3), uint8
        except av.FFmpegError as error:
            raise BadVideo(f"{path}: corrupt or truncated: decoding failed at frame {counts['frames'] + 1}{about} "
                           f"({type(error).__name__}: {getattr(error, 'strerror', None) or error})") from None
        decoded.put(_END)

    def encode(sink, video_out, colour, streams):  # stage 3: encode and mux, in the order received
        for item in iter(upscaled.get, _END):
            if item[0] == 'packet':
                packet = item[1]
                stream, copied = streams[packet.stream.index]
                try:
                    if copied and packet.dts is not None:  # None: the empty packet that ends a stream
                        if packet.stream.type == 'audio':
                            packet.decode()  # only to check it: damage shows as an error, or in FFmpeg's log
                        packet.stream = stream
                        sink.mux(packet)
                    elif not copied:
                        for frame in packet.decode():
                            sink.mux(stream.encode(frame))
                except av.FFmpegError as error:  # a bad packet or timestamp of the input's
                    near = float((packet.pts or 0) * packet.time_base)  # seconds into the file
                    raise BadVideo(f"{path}: corrupt or truncated: its {packet.stream.type} stream "
                                   f"{packet.stream.index} failed near {near:.2f} s "
                                   f"({type(error).__name__}: {getattr(error, 'strerror', None) or error})") from None
                continue
            for array, frame_pts in zip(item[1], item[2]):  # each (h * s, w * s, 3), uint8
                # To YUV with the input's own matrix and range, which the output's tags declare.
                out_frame = av.VideoFrame.from_ndarray(array, format='rgb24').reformat(
                    format='yuv420p', dst_colorspace=colour['colorspace'], dst_color_range=colour['color_range'])
                out_frame.pts, out_frame.time_base = frame_pts, video_in.time_base
                sink.mux(video_out.encode(out_frame))
            if on_batch is not None:
                on_batch(len(item[1]))

    try:
        with utils.atomic_write(out_path, exists=exists, inputs=(path, *inputs)) as f, \
                av.open(f, 'w', format=VIDEO_CONTAINERS[os.path.splitext(out_path)[1].lower()]) as sink, \
                _ffmpeg_errors() as ffmpeg_errors:
            video_out, colour = _add_video_stream(sink, video_in, s, rate, crf)
            if source.display_matrix is not None:
                video_out.set_display_matrix(source.display_matrix)  # the frames stay as coded, and play turned
            streams = {stream.index: _add_audio_stream(sink, stream) for stream in source.audio}
            subtitles, notes = _add_subtitle_streams(sink, source.subtitles, out_path)
            streams.update({index: (stream, True) for index, stream in subtitles.items()})
            threads = [_stage(decode, failures, stopped),
                       _stage(lambda: encode(sink, video_out, colour, streams), failures, stopped)]
            try:  # stage 2, here: the model, a batch at a time
                batch = []
                for item in iter(decoded.get, _END):
                    if item[0] == 'packet':
                        if item[1].stream.index in streams:
                            upscaled.put(item)
                        continue
                    batch.append(item)
                    if len(batch) == batch_size:
                        upscaled.put(('frames', upscale(np.stack([a for _, a, _ in batch])), [p for *_, p in batch]))
                        batch = []
                if batch:
                    upscaled.put(('frames', upscale(np.stack([a for _, a, _ in batch])), [p for *_, p in batch]))
                upscaled.put(_END)
                threads[1].join()
            except _Stopped:
                pass
            except BaseException:  # an interrupt, or the model's error: the other stages end too
                stopped.set()
                raise
            finally:
                for thread in threads:
                    thread.join()
            if failures:
                raise failures[0]
            if counts['frames'] == 0:
                raise BadVideo(f"{path}: no frame could be decoded")
            if ffmpeg_errors:  # FFmpeg read past damage (a demuxer resyncs, a decoder conceals): say so
                raise BadVideo(f"{path}: corrupt or truncated: FFmpeg's {ffmpeg_errors[0][1]} reports "
                               f"\"{ffmpeg_errors[0][2].strip()}\" ({counts['frames']} frames decoded{about})")
            expected = source.expected_frames
            if expected and counts['frames'] < expected - max(2, expected // 50):  # a few: edit lists, rounding
                raise BadVideo(f"{path}: truncated or corrupt: {counts['frames']} frames decoded of the "
                               f"{source.expected_frames} its header declares")
            # A file cut short can read to its end without an error (Matroska does): its frames end early.
            seconds = float((counts['last_pts'] - counts['first_pts'] + frame_ticks) * video_in.time_base)
            declared_seconds = source.declared_seconds
            if declared_seconds and seconds < declared_seconds - max(1., float(2 / rate)):
                raise BadVideo(f"{path}: truncated or corrupt: decoding stopped at frame {counts['frames']}{about}, "
                               f"{seconds:.2f} s of the {declared_seconds:.2f} s its header declares")
            sink.mux(video_out.encode(None))  # the frames the encoder still holds
            for stream, copied in streams.values():
                if not copied:
                    sink.mux(stream.encode(None))
    except av.FFmpegError as error:  # decoding errors are BadVideo already: this one is the writing's
        raise BadVideo(f"{path}: FFmpeg could not write {out_path} ({type(error).__name__}: "
                       f"{getattr(error, 'strerror', None) or error})") from None
    audio = [f"{stream.codec_context.name} {'copied' if streams[stream.index][1] else 're-encoded as AAC'}"
             for stream in source.audio]
    if source.rotation:
        notes.append(f"turned {source.rotation:g} degrees for display, as the input")
    return {'frames': counts['frames'], 'audio': audio, 'notes': notes, 'path': f.final_path}
