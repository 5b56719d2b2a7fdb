"""The video metrics against direct transcriptions of their definitions, closed forms and transformers' own CLIP API,
on a tiny random CLIP (transformers' save_pretrained) and AMT-S on seeded random weights; every bad input of the
metric scripts is one line, status 2, before any model work."""
import json
import os

import imageio
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from amt_reference import seeded_weights
from metric_scripts import no_model_work, one_line_error, script, smooth_frames, write_video
from tiny_clip import save_tiny_clip
from ditctrl.config import load_config
from ditctrl.metrics.amt import AMTS
from ditctrl.metrics.clip_features import frame_features, load_clip, load_clip_vision
from ditctrl.metrics.clip_input import CLIP_MEAN, CLIP_STD, center_crop_arr, clip_pixels
from ditctrl.metrics.cscv import cscv_score
from ditctrl.metrics.motion_smoothness import interpolated_odd_frames, motion_smoothness, padding
from ditctrl.metrics.prompt_parts import clip_sequence_parts, long_video_parts, parts_from_params
from ditctrl.metrics.text_similarity import video_text_similarity
from ditctrl.segment_layout import segment_layout
from ditctrl.video_io import read_video
from repo_paths import BASE, REPO

ROSE = os.path.join(REPO, "inference_case_configs", "multi_prompts", "rose.yaml")
BASE_FILES = [os.path.join(REPO, path) for path in BASE[1:]]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return save_tiny_clip(str(tmp_path_factory.mktemp("clip")))


@pytest.fixture(scope="module")
def vision(clip_folder):
    return load_clip_vision(clip_folder, "cpu")


def original_uniformity(features: np.ndarray) -> float:
    """The original's uniformity_score, line by line (numpy, the features' own dtype)."""
    normalized = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarities = np.sum(normalized[:-1] * normalized[1:], axis=1)
    cv = np.std(similarities) / np.mean(similarities) * 10
    return float(1 / (1 + cv))


def adm_crop_reference(image: Image.Image, size: int) -> np.ndarray:
    """guided-diffusion's center_crop_arr as published."""
    while min(*image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.array(image)
    crop_y, crop_x = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[crop_y:crop_y + size, crop_x:crop_x + size]


def original_features(vision, frames) -> np.ndarray:
    """The original's evaluate_single: one frame per forward, torchvision's ToTensor and Normalize written out."""
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    features = []
    with torch.no_grad():
        for frame in frames:
            crop = adm_crop_reference(Image.fromarray(np.asarray(frame)), 224)
            pixels = (torch.from_numpy(crop).permute(2, 0, 1).float().div(255) - mean) / std
            features.append(vision(pixel_values=pixels[None]).pooler_output)
    return torch.cat(features).numpy()


# --- CSCV ------------------------------------------------------------------------------------------------------------

def test_cscv_equals_the_original_formula_on_fixed_features():
    features = np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32) + 2.0
    assert cscv_score(features) == pytest.approx(original_uniformity(features), rel=1e-6)


@pytest.mark.parametrize("size", [(1001, 467), (467, 1001), (48, 32), (7, 5), (224, 224), (450, 899)])
def test_adm_crop_on_odd_and_tiny_sizes(size):
    pixels = np.random.default_rng(1).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    crop = center_crop_arr(Image.fromarray(pixels), 224)
    assert crop.shape == (224, 224, 3)
    np.testing.assert_array_equal(crop, adm_crop_reference(Image.fromarray(pixels), 224))
    normalised = clip_pixels(torch.from_numpy(pixels[None]), 224)[0]
    expected = (torch.from_numpy(crop.copy()).permute(2, 0, 1).float() / 255 - torch.tensor(CLIP_MEAN)[:, None, None]) \
        / torch.tensor(CLIP_STD)[:, None, None]
    torch.testing.assert_close(normalised, expected, rtol=0, atol=0)


def test_adm_crop_halves_with_box_until_the_short_side_is_below_twice_the_size():
    # 1001 x 467: one halving (467 >= 448) to 500 x 233, then bicubic to round(500 * 224 / 233) = 481 x 224
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, size=(467, 1001, 3), dtype=np.uint8))
    by_hand = np.asarray(image.resize((500, 233), Image.BOX).resize((481, 224), Image.BICUBIC))[:, 128:352]
    np.testing.assert_array_equal(center_crop_arr(image, 224), by_hand)


def _cut_and_fade(count=10):
    a, b = smooth_frames(1, seed=3)[0], smooth_frames(1, seed=4)[0]
    cut = np.stack([a] * (count // 2) + [b] * (count // 2))
    weights = np.linspace(0, 1, count)[:, None, None, None]
    fade = np.round((1 - weights) * a + weights * b).astype(np.uint8)
    return a, b, cut, fade


def test_cscv_of_identical_frames_is_one(vision):
    frames = torch.from_numpy(np.stack([smooth_frames(1, seed=5)[0]] * 12))
    assert cscv_score(frame_features(vision, frames, 224, batch_size=5).numpy()) == pytest.approx(1.0, abs=1e-6)


def test_cscv_of_a_hard_cut_has_its_closed_form(vision):
    a, b, cut, _ = _cut_and_fade()
    pair = frame_features(vision, torch.from_numpy(np.stack([a, b])), 224).double()
    c = float(torch.nn.functional.cosine_similarity(pair[:1], pair[1:]))
    n = len(cut) - 1  # n - 1 similarities of 1 and one of c
    mean, std = (n - 1 + c) / n, abs(1 - c) * (n - 1) ** 0.5 / n
    score = cscv_score(frame_features(vision, torch.from_numpy(cut), 224, batch_size=4).numpy())
    assert score == pytest.approx(1 / (1 + 10 * std / mean), rel=1e-5)


@pytest.mark.parametrize("video", ["identical", "cut", "fade"])
def test_batched_cscv_equals_the_original_one_frame_per_forward(vision, video):
    a, _, cut, fade = _cut_and_fade()
    frames = {"identical": np.stack([a] * 10), "cut": cut, "fade": fade}[video]
    ours = cscv_score(frame_features(vision, torch.from_numpy(frames), 224, batch_size=3).numpy())
    assert ours == pytest.approx(original_uniformity(original_features(vision, frames)), abs=1e-5)


def test_a_fade_scores_above_a_cut_between_the_same_pictures(vision):
    _, _, cut, fade = _cut_and_fade()
    cut_score, fade_score = (cscv_score(frame_features(vision, torch.from_numpy(v), 224).numpy()) for v in (cut, fade))
    assert fade_score > cut_score


def test_cscv_metric_script_equals_the_original_on_seed_folders(tmp_path, clip_folder, vision, capsys):
    for seed, folder in ((42, "seed_42/a"), (42, "seed_42"), (4, "seed_4")):
        write_video(tmp_path / "ditctrl" / folder / f"video{seed}.mp4", smooth_frames(9, seed=seed + len(folder)))
    out = tmp_path / "cscv.json"
    average = script("cscv_metric").main(["--video_path", str(tmp_path / "ditctrl"), "--target_seed", "42",
                                          "--extractor_path", clip_folder, "--device", "cpu", "--out", str(out)])
    details = json.loads(out.read_text())["new_metric"]["details"]
    assert [os.path.relpath(d["video_path"], tmp_path / "ditctrl") for d in details] == \
        ["seed_42/video42.mp4", "seed_42/a/video42.mp4"]  # seed_4 is not seed_42's
    for detail in details:
        frames = [frame for frame in imageio.get_reader(detail["video_path"])]  # read as the original reads
        assert detail["video_results"] == pytest.approx(original_uniformity(original_features(vision, frames)),
                                                        abs=1e-5)
    assert json.loads(out.read_text())["new_metric"]["average_score"] == pytest.approx(average)
    assert average == pytest.approx(np.mean([d["video_results"] for d in details]))


# --- reading videos ----------------------------------------------------------------------------------------------------

def test_read_video_returns_the_frames_of_gif_and_webm(tmp_path):
    frames = smooth_frames(5)
    imageio.mimsave(tmp_path / "a.gif", list(frames), duration=100, loop=0)  # GIFs store centiseconds
    gif = read_video(str(tmp_path / "a.gif"))
    assert gif.frames.shape == (5, 32, 48, 3) and gif.frames.dtype == torch.uint8 and gif.fps == pytest.approx(10)
    imageio.mimsave(tmp_path / "a.webm", list(frames), fps=10, codec="libvpx", macro_block_size=1)
    webm = read_video(str(tmp_path / "a.webm"))
    assert webm.frames.shape == (5, 32, 48, 3) and webm.fps == pytest.approx(10)
    assert (webm.frames.float() - torch.from_numpy(frames).float()).abs().mean() < 8  # lossy, but these frames


def test_read_video_errors_are_one_line(tmp_path):
    import imageio_ffmpeg
    import subprocess

    with pytest.raises(FileNotFoundError, match="video not found"):
        read_video(str(tmp_path / "missing.mp4"))
    (tmp_path / "text.mp4").write_text("not a video")
    with pytest.raises(ValueError, match="cannot read .*text.mp4 as a video") as error:
        read_video(str(tmp_path / "text.mp4"))
    assert "\n" not in str(error.value)
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    "anullsrc=r=8000:cl=mono", "-t", "0.5", str(tmp_path / "audio.mp4")], check=True)
    with pytest.raises(ValueError, match="holds no video stream"):
        read_video(str(tmp_path / "audio.mp4"))


# --- prompt parts -------------------------------------------------------------------------------------------------------

def owned_by_hand(layout, prompt_windows):
    """Frames whose latent frame (0 -> 0, f -> (f + 3) // 4) lies in one of the windows: an explicit frame loop."""
    frames = []
    for frame in range(layout.video_frames):
        latent = 0 if frame == 0 else (frame + 3) // 4
        if any(layout.starts[w] <= latent < layout.starts[w] + layout.tile for w in prompt_windows):
            frames.append(frame)
    return tuple(frames)


def test_prompt_parts_of_rose_three_prompts_overlap_9_two_transitions():
    layout = segment_layout(3, 13, 9, 2)
    parts = long_video_parts(layout, ["a", "b", "c"])
    assert [(m[0], m[-1]) for m in parts.members] == [(0, 48), (45, 96), (93, 144)]
    assert parts.members == tuple(owned_by_hand(layout, w) for w in ([0], [3], [6]))
    assert [(t[0], t[-1]) for t in parts.transitions] == [(13, 64), (29, 80), (61, 112), (77, 128)]
    assert [parts.label(f) for f in (0, 44, 45, 48, 49, 96, 97, 144)] == [0, 0, None, None, 1, None, 2, 2]


def test_prompt_parts_of_two_prompts_leave_the_transition_to_no_prompt():
    layout = segment_layout(2, 13, 6, 1)  # bookshop_dolly: windows at 0, 7, 14
    parts = long_video_parts(layout, ["a", "b"])
    assert parts.members == (owned_by_hand(layout, [0]), owned_by_hand(layout, [2]))
    assert [(m[0], m[-1]) for m in parts.members] == [(0, 48), (53, 104)]
    assert [parts.label(f) for f in (48, 49, 52, 53)] == [0, None, None, 1]


def test_prompt_parts_of_a_longer_middle_prompt_hold_its_extra_window():
    layout = segment_layout(3, 13, 9, 2, longer_mid_segment=1)  # maple_seasons: the middle prompt has windows 3, 4
    parts = long_video_parts(layout, ["a", "b", "c"])
    assert parts.members[1] == owned_by_hand(layout, [3, 4]) and (parts.members[1][0], parts.members[1][-1]) == (45, 112)
    assert parts.members[2] == owned_by_hand(layout, [7])


def rose_params(folder, is_run_isolated=True):
    cfg = load_config(BASE_FILES, ROSE, [f"args.is_run_isolated={is_run_isolated}", f"args.output_dir={folder}"])
    os.makedirs(folder, exist_ok=True)
    (folder / "params.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def test_parts_come_from_params_yaml_for_each_planned_video(tmp_path):
    rose_params(tmp_path)
    long = parts_from_params(str(tmp_path / "MultiPrompt_frames145.mp4"), 145)
    assert long == long_video_parts(segment_layout(3, 13, 9, 2), long.prompts)
    together = parts_from_params(str(tmp_path / "isolated" / "all_frames147.mp4"), 147)
    assert together == clip_sequence_parts(long.prompts, 49)
    assert parts_from_params(str(tmp_path / "other.mp4"), 10) is None  # a video params.yaml does not plan
    with pytest.raises(ValueError, match="does not match .* it describes 145 frames, the video has 144"):
        parts_from_params(str(tmp_path / "MultiPrompt_frames145.mp4"), 144)


# --- text similarity -----------------------------------------------------------------------------------------------------

def test_text_similarity_equals_transformers_clip_per_prompt_part(clip_folder):
    clip, tokenizer = load_clip(clip_folder, "cpu")
    frames = torch.from_numpy(smooth_frames(25, seed=9))
    parts = long_video_parts(segment_layout(2, 3, 1, 1), ["a red boat on a lake", "a red boat in a storm " * 20])
    ours = video_text_similarity(clip, tokenizer, frame_features(clip, frames, 224, batch_size=7), parts)
    with torch.no_grad():
        pixels = clip_pixels(frames, 224)
        images = clip.get_image_features(pixel_values=pixels)
        images = getattr(images, "pooler_output", images)
        tokens = tokenizer(list(parts.prompts), padding=True, truncation=True, max_length=77, return_tensors="pt")
        texts = clip.get_text_features(**tokens)
        texts = getattr(texts, "pooler_output", texts)
    cosine = torch.nn.functional.cosine_similarity(texts[:, None].double(), images[None].double(), dim=-1) * 100
    expected = [float(cosine[p, list(frames_of)].mean()) for p, frames_of in enumerate(parts.members)]
    assert ours.per_prompt == pytest.approx(expected, abs=1e-4)
    assert ours.video == pytest.approx(sum(expected) / 2, abs=1e-4)


# --- motion smoothness ---------------------------------------------------------------------------------------------------

class MeanOfNeighbours(torch.nn.Module):
    """A stand-in interpolator whose prediction is the average of the two frames."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, img0, img1, embt):
        return (img0 + img1) / 2


def test_motion_smoothness_known_answers():
    ramp = np.stack([np.full((20, 30, 3), 10 * i, dtype=np.uint8) for i in range(9)])  # a linear fade
    assert motion_smoothness(MeanOfNeighbours(), torch.from_numpy(ramp)) == pytest.approx(1.0, abs=1 / 255)
    flicker = np.stack([np.full((20, 30, 3), 255 * (i % 2), dtype=np.uint8) for i in range(7)])  # black, white, ...
    assert motion_smoothness(MeanOfNeighbours(), torch.from_numpy(flicker)) == 0.0


def test_padding_is_vbench_s_input_padder_at_full_size():
    def input_padder(height, width, divisor=16):  # VBench's InputPadder._pad
        pad_ht = (((height // divisor) + 1) * divisor - height) % divisor
        pad_wd = (((width // divisor) + 1) * divisor - width) % divisor
        return (pad_wd // 2, pad_wd - pad_wd // 2, pad_ht // 2, pad_ht - pad_ht // 2)

    for size in ((480, 720), (481, 719), (130, 250), (128, 128)):
        assert padding(*size) == input_padder(*size)
    assert padding(32, 48) == (40, 40, 48, 48)  # below 128: padded up to 128


def vbench_motion_score(model, frames: np.ndarray) -> float:
    """VBench's MotionSmoothness.motion_score on CPU, one pair per forward (cv2.absdiff written with numpy)."""
    evens = [torch.tensor(frame).permute(2, 0, 1).unsqueeze(0) / 255.0 for frame in frames[0::2]]
    left, right, top, bottom = padding(*frames.shape[1:3])
    padded = [torch.nn.functional.pad(x, (left, right, top, bottom), mode="replicate") for x in evens]
    outputs = [padded[0]]
    with torch.no_grad():
        for in_0, in_1 in zip(padded[:-1], padded[1:]):
            outputs += [model(in_0, in_1, torch.tensor(0.5).view(1, 1, 1, 1)), in_1]
    height, width = frames.shape[1:3]
    images = [(out[..., top:top + height, left:left + width] * 255.).squeeze(0).permute(1, 2, 0).numpy()
              .clip(0, 255).astype(np.uint8) for out in outputs]
    originals, predicted = frames[1::2], images[1::2]
    scores = [np.mean(np.abs(originals[i].astype(int) - predicted[i].astype(int))) for i in range(len(predicted))]
    return (255.0 - np.mean(np.array(scores))) / 255.0


def test_batched_motion_smoothness_equals_vbench_s_procedure():
    model = AMTS().eval()
    model.load_state_dict(seeded_weights(model, 3))
    frames = smooth_frames(6, seed=2)  # 3 even frames, 2 predictions; the 6th frame is never predicted
    assert len(interpolated_odd_frames(model, torch.from_numpy(frames), batch_size=2)) == 2
    assert motion_smoothness(model, torch.from_numpy(frames), batch_size=2) == \
        pytest.approx(vbench_motion_score(model, frames), abs=1e-3 / 255)


# --- scripts: outputs and bad input ---------------------------------------------------------------------------------------

def test_visualize_tsne_uses_sklearn_tsne_of_the_features_and_colours_by_params(tmp_path, clip_folder, vision):
    from sklearn.manifold import TSNE

    frames = smooth_frames(25, seed=11)
    cfg = load_config(BASE_FILES, None, ["args.prompts=[a, b]", "args.sampling_num_frames=3", "args.overlap_size=1",
                                       "args.num_transition_blocks=1"])
    (tmp_path / "params.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    video = write_video(tmp_path / "MultiPrompt_frames25.mp4", frames)
    points = script("visualize_tsne").main(["--video_path", video, "--extractor_path", clip_folder,
                                            "--result_path", str(tmp_path / "tsne.png"), "--device", "cpu"])
    features = frame_features(vision, read_video(video).frames, 224).numpy()
    np.testing.assert_allclose(points, TSNE(n_components=2, random_state=42, perplexity=24).fit_transform(features),
                               atol=1e-3)
    assert (tmp_path / "tsne.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def amt_file(tmp_path):
    path = tmp_path / "amt-s.pth"
    torch.save({"state_dict": seeded_weights(AMTS(), 0)}, path)
    return str(path)


def test_motion_smoothness_script_writes_vbench_s_form(tmp_path, amt_file):
    video = write_video(tmp_path / "v" / "a.mp4", smooth_frames(5, seed=1))
    out = tmp_path / "motion.json"
    average = script("motion_smoothness").main(["--video_path", str(tmp_path / "v"), "--amt_path", amt_file,
                                                "--device", "cpu", "--out", str(out)])
    model = AMTS().eval()
    model.load_state_dict(torch.load(amt_file)["state_dict"])
    assert json.loads(out.read_text())["motion_smoothness"] == {
        "average_score": average, "details": [{"video_path": video, "video_results": average}]}
    assert average == pytest.approx(motion_smoothness(model, read_video(video).frames))


def bad_inputs(tmp_path, clip_folder, amt_file):
    """(script, arguments, what the one line must say) for every refused input."""
    folder = tmp_path / "videos"
    write_video(folder / "seed_1" / "ok.mp4", smooth_frames(5))
    write_video(tmp_path / "short" / "two.mp4", smooth_frames(2))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.mp4").write_text("not a video")
    (tmp_path / "empty").mkdir()
    rose_params(tmp_path / "run")
    write_video(tmp_path / "run" / "MultiPrompt_frames145.mp4", smooth_frames(9))
    clip = ["--extractor_path", clip_folder]
    return [
        ("cscv_metric", ["--video_path", str(folder), "--extractor_path", str(tmp_path / "nowhere")],
         "CLIP weights .* neither a folder nor in the local Hugging Face cache; download them: hf download"),
        ("cscv_metric", ["--video_path", str(tmp_path / "empty"), *clip], "no videos"),
        ("cscv_metric", ["--video_path", str(folder), "--target_seed", "2", *clip], "inside a folder named seed_2"),
        ("cscv_metric", ["--video_path", str(tmp_path / "broken"), *clip], "cannot read .* as a video"),
        ("cscv_metric", ["--video_path", str(tmp_path / "short"), *clip], "has 2 frame.s.; the metrics need at least 3"),
        ("cscv_metric", ["--video_path", str(folder), "--image_size", "336", *clip], "does not fit the CLIP model"),
        ("cscv_metric", ["--video_path", str(folder), "--feature_extractor", "dino", *clip], "only clip"),
        ("visualize_tsne", ["--video_path", str(tmp_path / "run" / "MultiPrompt_frames145.mp4"), *clip],
         "params.yaml does not match"),
        ("text_similarity", ["--video_path", str(folder), *clip], "no params.yaml describes .* --prompt"),
        ("motion_smoothness", ["--video_path", str(folder), "--amt_path", str(tmp_path / "none.pth")],
         "AMT-S weights not found .* hf download lalala125/AMT amt-s.pth"),
        ("motion_smoothness", ["--video_path", str(tmp_path / "short"), "--amt_path", amt_file], "at least 3"),
        ("similarity_curve", ["--video_path", str(folder / "seed_1" / "ok.mp4"), "--labels", "a", "b", *clip],
         "--labels gives 2 label"),
        ("cscv_metric", ["--video_pth", "x"], "the following arguments are required"),
    ]


def test_every_bad_input_is_one_line_before_model_work(tmp_path, clip_folder, amt_file, monkeypatch, capsys):
    import re

    no_model_work(monkeypatch)
    monkeypatch.chdir(tmp_path)
    for name, arguments, expected in bad_inputs(tmp_path, clip_folder, amt_file):
        line = one_line_error(capsys, script(name).main, arguments)
        assert re.search(expected, line), (name, line)
    assert not any(name.startswith("evaluation_results") for name in os.listdir(tmp_path))  # no result written
