"""The user's video as the model sees it (source_video.py, video_io.read_video): resampling, scaling and cropping,
frame counts, and one-line refusals of bad input."""
import os
import random
import subprocess
from contextlib import nullcontext

import imageio
import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from ditctrl import source_video
from ditctrl.runs import user_errors
from ditctrl.source_video import (cover_size, crop_note, fit_frame, load_source_video, nearest_in_time,
                                  usable_frame_count)
from ditctrl.video_io import TimedFrame, VideoStream, read_video

SIZE = dict(height=32, width=48)  # the tiny model's frames


def timed(times, durations=None):
    """TimedFrames whose images hold their index."""
    durations = durations or [b - a for a, b in zip(times, times[1:])] + [times[1] - times[0]]
    return [TimedFrame(t, d, np.full((2, 2, 3), i % 256, np.uint8)) for i, (t, d) in enumerate(zip(times, durations))]


def nearest_by_search(times, durations, fps, count):
    """For each time k/fps before the video's end: the index of the frame whose start is nearest, earliest on ties."""
    end = times[-1] + durations[-1]
    chosen, k = [], 0
    while k < count and k / fps < end:
        distances = [abs(t - k / fps) for t in times]
        chosen.append(min(range(len(times)), key=lambda j: (round(distances[j], 9), j)))
        k += 1
    return chosen


@pytest.mark.parametrize("source_fps", [30, 24, 12, 8, 5, 29.97])
def test_nearest_in_time_picks_the_nearest_frame_of_a_constant_rate_video(source_fps):
    times = [j / source_fps for j in range(40)]
    frames = timed(times)
    got = [index for index, _ in nearest_in_time(iter(frames), 8, 49)]
    assert got == nearest_by_search(times, [1 / source_fps] * 40, 8, 49)


def test_nearest_in_time_follows_variable_frame_durations():
    durations = [0.1, 0.2, 0.1, 0.05, 0.1, 0.3, 0.02, 0.5]
    times = list(np.cumsum([0] + durations[:-1]))
    got = [index for index, _ in nearest_in_time(iter(timed(times, durations)), 8, 49)]
    assert got == nearest_by_search(times, durations, 8, 49)
    assert len(got) == 11  # 1.37 s of video: times 0 .. 10/8


def test_nearest_in_time_reads_no_further_than_its_last_frame_needs():
    consumed = []

    def frames():
        for frame in timed([j / 30 for j in range(1000)]):
            consumed.append(frame.time)
            yield frame

    got = [index for index, _ in nearest_in_time(frames(), 8, 9)]
    assert got[-1] == 30  # 8/8 s
    assert len(consumed) == 32  # frame 31 shows that frame 30 is the nearest to 1 s


@pytest.mark.parametrize("available, wanted, usable", [(49, 49, 49), (48, 49, 41), (100, 17, 17), (16, 49, 9),
                                                        (9, 49, 9), (8, 49, 0), (0, 49, 0)])
def test_usable_frame_count_is_8m_plus_1(available, wanted, usable):
    """4k+1 frames (k+1 latent frames) with an odd latent frame count, the VAE decodes in its chunks."""
    assert usable_frame_count(available, wanted) == usable


def test_fit_frame_scales_to_cover_and_keeps_the_centre():
    """A 100×20 horizontal ramp (value = 2·column) to 48×32: scaled ×1.6 to 160×32, 56 px cut on each side, so
    output column c shows source column (56 + c + 0.5)/1.6 - 0.5."""
    ramp = np.repeat(np.repeat((2 * np.arange(100)).astype(np.uint8)[None, :, None], 20, axis=0), 3, axis=2)
    assert cover_size(100, 20, 48, 32) == (160, 32)
    out = fit_frame(ramp, 48, 32)
    expected = 2 * ((56 + np.arange(48) + 0.5) / 1.6 - 0.5)
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8
    assert np.abs(out[16, :, 0].astype(float) - expected).max() <= 1.0


def test_a_frame_of_the_model_aspect_ratio_is_scaled_without_a_crop():
    image = np.random.default_rng(0).integers(0, 256, (48, 72, 3), dtype=np.uint8)
    assert crop_note("v.mp4", 72, 48, 48, 32) is None
    expected = np.asarray(Image.fromarray(image).resize((48, 32), Image.Resampling.BICUBIC))
    assert np.array_equal(fit_frame(image, 48, 32), expected)
    assert crop_note("v.mp4", 1920, 1080, 720, 480) == ("note: v.mp4 is 1920x1080; scaled to 853x480 and "
                                                        "centre-cropped to 720x480 (cuts 133 px of its width)")
    assert "cuts 480 px of its height" in crop_note("v.mp4", 480, 640, 720, 480)  # portrait: 720x960


def write_mp4(path, values, fps, size=(40, 64)):
    """Flat grey frames (one value each), which h264 keeps within a step or two."""
    writer = imageio.get_writer(str(path), fps=fps, quality=10, macro_block_size=1)
    for value in values:
        writer.append_data(np.full((*size, 3), value, np.uint8))
    writer.close()
    return str(path)


def test_an_mp4_is_resampled_to_8_fps_cropped_and_cut(tmp_path, capsys):
    """60 frames at 24 fps (2.5 s) give 20 frames at 8 fps: frame 3k each; cut to 17 (8m+1); 64×40 is cropped."""
    path = write_mp4(tmp_path / "v.mp4", [4 * j for j in range(60)], fps=24)
    frames = load_source_video(path, **SIZE, max_frames=49)
    assert frames.shape == (17, 32, 48, 3) and frames.dtype == torch.uint8
    assert np.abs(frames[:, 16, 24, 0].numpy().astype(int) - 12 * np.arange(17)).max() <= 2
    out = capsys.readouterr().out.splitlines()
    assert out == [f"note: {path} is 64x40; scaled to 51x32 and centre-cropped to 48x32 (cuts 3 px of its width)",
                   f"note: {path} gives 20 frames at 8 fps; using the first 17 (8m+1 frames: an odd number of "
                   "latent frames), not 49"]


def test_a_long_video_is_read_only_as_far_as_the_model_needs(tmp_path, monkeypatch):
    """Frames are decoded one at a time and reading stops after the last needed one (memory: one decoded frame
    plus the kept ones)."""
    read = []

    def stream(path, folder_fps):
        def frames():
            for j in range(100_000):
                read.append(j)
                yield TimedFrame(j / 30, 1 / 30, np.full((40, 64, 3), j % 256, np.uint8))
        return nullcontext(VideoStream(64, 40, 30.0, frames()))

    monkeypatch.setattr(source_video, "_open", stream)
    frames = load_source_video(str(tmp_path), **SIZE, max_frames=9)
    assert frames.shape == (9, 32, 48, 3) and len(read) == 32


def palette_gif(path, values, durations):
    frames = [Image.fromarray(np.full((24, 36, 3), (v, 255 - v, 40), np.uint8)).convert("P", palette=Image.ADAPTIVE)
              for v in values]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return str(path)


def test_a_palette_gif_is_read_in_rgb_with_its_frame_durations(tmp_path):
    """Palette frames become RGB colours (not palette indices); 0 ms frames last 100 ms, as browsers show them."""
    values = [10 * j for j in range(12)]
    durations = [250, 0] + [120] * 10  # 0.25 s, 0.1 s (0 ms), 0.12 s, ...
    path = palette_gif(tmp_path / "p.gif", values, durations)
    clip = read_video(path)
    assert clip.frames.shape == (12, 24, 36, 3)
    assert torch.equal(clip.frames[:, 0, 0], torch.tensor([[v, 255 - v, 40] for v in values], dtype=torch.uint8))
    assert clip.fps == pytest.approx(12 / 1.55)
    frames = load_source_video(path, **SIZE, max_frames=9)
    seconds = [0.25, 0.1] + [0.12] * 10
    chosen = nearest_by_search(list(np.cumsum([0] + seconds[:-1])), seconds, 8, 9)
    assert torch.equal(frames[:, 16, 24, 0], torch.tensor([values[j] for j in chosen], dtype=torch.uint8))


def test_read_video_gives_every_frame_and_the_rate(tmp_path):
    path = write_mp4(tmp_path / "v.mp4", [8 * j for j in range(30)], fps=24)
    clip = read_video(path)
    assert clip.frames.shape == (30, 40, 64, 3) and clip.fps == 24.0
    assert np.abs(clip.frames[:, 20, 32, 0].numpy().astype(int) - 8 * np.arange(30)).max() <= 2


def write_frames(folder, names, size=(48, 72)):
    folder.mkdir()
    for name in names:
        value = int("".join(filter(str.isdigit, name)))
        Image.fromarray(np.full((*size, 3), value, np.uint8)).save(folder / name)
    return str(folder)


def test_a_folder_of_frames_in_natural_order_at_its_rate(tmp_path):
    names = [f"frame_{j}.png" for j in range(20)]
    folder = write_frames(tmp_path / "frames", names)
    (tmp_path / "frames" / "notes.txt").write_text("not a frame")
    frames = load_source_video(folder, **SIZE, max_frames=9, folder_fps=16)  # every second frame at 8 fps
    assert frames[:, 0, 0, 0].tolist() == [2 * k for k in range(9)]
    assert load_source_video(folder, **SIZE, max_frames=17)[:, 0, 0, 0].tolist() == list(range(17))


def one_line_error(call, error_type, match):
    with pytest.raises(error_type, match=match) as raised:
        call()
    assert "\n" not in str(raised.value)
    return raised.value


def test_bad_inputs_are_one_line_each(tmp_path, monkeypatch):
    load = lambda path, **kw: load_source_video(str(path), **SIZE, **{"max_frames": 49, **kw})  # noqa: E731
    one_line_error(lambda: load(tmp_path / "missing.mp4"), FileNotFoundError, "video not found: .*missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    one_line_error(lambda: load(tmp_path / "empty.mp4"), ValueError, r"empty.mp4 is empty \(0 bytes\)")
    (tmp_path / "noise.mp4").write_bytes(os.urandom(2000))
    one_line_error(lambda: load(tmp_path / "noise.mp4"), ValueError, "cannot read .*noise.mp4 as a video")
    for seed in range(20):  # random bytes after the signature: any of Pillow's errors, a decompression bomb too
        (tmp_path / "broken.gif").write_bytes(b"GIF89a" + random.Random(seed).randbytes(50))
        one_line_error(lambda: load(tmp_path / "broken.gif"), ValueError, "cannot read .*broken.gif as a GIF")
    (tmp_path / "bomb.gif").write_bytes(b"GIF89a" + (65535).to_bytes(2, "little") * 2 + bytes(50))
    one_line_error(lambda: load(tmp_path / "bomb.gif"), ValueError, "cannot read .*bomb.gif as a GIF")
    audio = tmp_path / "audio.m4a"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i",
                    "sine=frequency=440:duration=1", str(audio)], check=True)
    one_line_error(lambda: load(audio), ValueError, "audio.m4a holds no video stream")
    short = write_mp4(tmp_path / "short.mp4", range(30), fps=30)  # 1 s: 8 frames at 8 fps
    one_line_error(lambda: load(short), ValueError, r"gives 8 frames at 8 fps \(1.00 s\); editing needs at least 9")
    (tmp_path / "no_frames").mkdir()
    one_line_error(lambda: load(tmp_path / "no_frames"), ValueError, "no_frames holds no frames")
    mixed = write_frames(tmp_path / "mixed", ["a1.png", "a2.png"])
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "mixed" / "a3.png")
    one_line_error(lambda: load(mixed), ValueError, "differ in size: a1.png is 72x48, a3.png is 10x10")
    (tmp_path / "mixed" / "a3.png").write_bytes(b"not a png")
    one_line_error(lambda: load(mixed), ValueError, "cannot read .*a3.png as an image")
    monkeypatch.setattr(source_video, "MAX_FRAME_PIXELS", 64 * 40 - 1)
    one_line_error(lambda: load(short), ValueError, "has 64x40 frames, more than")
    one_line_error(lambda: load(short, max_frames=45), ValueError, "max_frames must be 8m\\+1")


def test_bad_input_ends_the_run_with_one_line_and_status_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        with user_errors():
            load_source_video(str(tmp_path / "missing.mp4"), **SIZE)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"error: video not found: {tmp_path / 'missing.mp4'}\n"
