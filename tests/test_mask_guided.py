"""Mask-guided KV-sharing against explicit full attention maps and N×N masked softmax references."""
from types import SimpleNamespace

import imageio.v3 as iio
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ditctrl.attention import AttentionController, ControlSchedule, KVSharing
from ditctrl.attention.mask_guided import MaskGuidedKVSharing, TokenAttentionMap, masked_target_attention
from ditctrl.attention.normalise import normalise_per_frame
from test_kv_sharing import pair_batch, run
from tiny_models import small_dit


def softmax_maps(q, k):
    """Explicit softmax(q kᵀ/√d) over the last two axes: (..., N, N)."""
    return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)


def naive_token_map(q, k, row, text_length, tokens):
    """(V,) head-averaged video→text map of one batch row with its own keys, summed over `tokens`."""
    return softmax_maps(q[row], k[row]).mean(0)[text_length:, tokens].sum(-1)


def naive_normalise(maps):
    """Per-frame min-max written frame by frame."""
    return torch.stack([(f - f.min()) / (f.max() - f.min() + 1e-6) for f in maps])


def additive_mask(allowed_video_keys, text_length, dtype=torch.float32):
    """(N, N) bias of the original: video queries lose the video keys that are not allowed."""
    n = text_length + allowed_video_keys.numel()
    bias = torch.zeros(n, n, dtype=dtype)
    bias[text_length:, text_length:][:, ~allowed_video_keys] = torch.finfo(dtype).min
    return bias


def masked_softmax_attention(q, k, v, bias):
    return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + bias, dim=-1) @ v


def reference_layers(qkv_per_layer, controlled_layers, text_length, grid, thres, ref, cur):
    """The original algorithm with explicit maps: accumulate every layer's full maps, N×N masks, blend."""
    outputs, video_text = [], 0
    for layer, (q, k, v) in enumerate(qkv_per_layer):
        video_text = video_text + softmax_maps(q, k).mean(1)[:, text_length:, :text_length]  # (4, V, T)
        out = softmax_maps(q, k) @ v
        if layer in controlled_layers:
            mean = video_text / (layer + 1)
            m_s = naive_normalise(mean[2][:, ref].sum(-1).view(grid)).flatten()
            m_t = naive_normalise(mean[3][:, cur].sum(-1).view(grid)).flatten()
            assert 0 < (m_s >= thres).sum() < m_s.numel() and 0 < (m_t >= thres).sum() < m_t.numel()
            text_rows = torch.zeros(text_length)
            text_rows[cur] = 1
            blend = torch.cat([text_rows, (m_t >= thres).float()])[:, None]  # (N, 1)
            for target, source in ((1, 0), (3, 2)):
                fg = masked_softmax_attention(q[target], k[source], v[source], additive_mask(m_s >= thres, text_length))
                bg = masked_softmax_attention(q[target], k[source], v[source], additive_mask(m_s < thres, text_length))
                out[target] = fg * blend + bg * (1 - blend)
        outputs.append(out)
    return outputs


def random_qkv(seed, heads, n, d, layers):
    gen = torch.Generator().manual_seed(seed)
    return [tuple(torch.randn(4, heads, n, d, generator=gen) for _ in range(3)) for _ in range(layers)]


def drive(controller, qkv_per_layer, text_length, grid, step=0):
    """One forward of the controller alone, layer by layer."""
    controller.begin_forward(step=step, pair=0, token_grid=grid)
    return [controller(q, k, v, layer, text_length) for layer, (q, k, v) in enumerate(qkv_per_layer)]


class Recording(MaskGuidedKVSharing):
    """Keeps the (q, k) of every layer it is handed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def __call__(self, q, k, v, layer, text_length):
        self.seen.append((q.clone(), k.clone()))
        return super().__call__(q, k, v, layer, text_length)


@pytest.fixture(scope="module")
def model():
    return small_dit()


def test_accumulated_maps_equal_full_softmax_maps_of_every_layer(model):
    """Layers 1-2 share K/V, yet the target map must still use c_target's own keys and normaliser."""
    controller = Recording(ControlSchedule(frozenset({3}), frozenset({1, 2})), 0.3, [0, 3], [1])
    run(model, controller, pair_batch(4), step=3)
    recorded = controller.seen[:3]  # layers 0..2; layer 3 comes after the last controlled layer
    assert controller.source_map.layers == controller.target_map.layers == 3
    source = torch.stack([naive_token_map(q, k, 2, 7, [0, 3]) for q, k in recorded]).mean(0)
    target = torch.stack([naive_token_map(q, k, 3, 7, [1]) for q, k in recorded]).mean(0)
    assert torch.allclose(controller.source_map.mean(), source, atol=1e-6, rtol=1e-5)
    assert torch.allclose(controller.target_map.mean(), target, atol=1e-6, rtol=1e-5)
    shared_keys = torch.stack([softmax_maps(q[3], k[2]).mean(0)[7:, 1] for q, k in recorded]).mean(0)
    assert (controller.target_map.mean() - shared_keys).abs().max() > 1e-3


def test_fp16_accumulation_like_the_original_stays_within_4e3_of_fp32():
    """The original sums fp16 maps over heads and layers; on this case its masks differ by < 4e-3."""
    text_length, grid, tokens = 6, (2, 8, 10), [0, 2]
    layers = [(q, k) for q, k, _ in random_qkv(5, heads=4, n=166, d=16, layers=8)]
    fp32 = TokenAttentionMap(tokens)
    total16 = torch.zeros(160, 6, dtype=torch.float16)
    for q, k in layers:
        fp32.add(q[2:3], k[2:3], torch.logsumexp(q[2:3] @ k[2:3].transpose(-1, -2) / 4, dim=-1), text_length)
        head_sum = torch.zeros(166, 166, dtype=torch.float16)
        for head in range(4):
            head_sum += softmax_maps(q[2, head].half(), k[2, head].half())
        total16 += (head_sum / 4)[text_length:, :text_length]
    mask16 = normalise_per_frame((total16[:, tokens].sum(-1) / len(layers)).view(grid)).float()
    mask32 = normalise_per_frame(fp32.mean().view(grid))
    difference = (mask16 - mask32).abs().max()
    assert 1e-5 < difference < 4e-3


def test_per_frame_min_max_and_threshold_hand_case():
    maps = torch.tensor([[[1.0, 2.0, 3.0]], [[5.0, 5.0, 5.0]], [[-2.0, 0.0, 2.0]]])  # (frames 3, rows 1, cols 3)
    expected = torch.tensor([[[0.0, 1 / (2 + 1e-6), 2 / (2 + 1e-6)]], [[0.0, 0.0, 0.0]],
                             [[0.0, 2 / (4 + 1e-6), 4 / (4 + 1e-6)]]])
    normalised = normalise_per_frame(maps)
    assert torch.allclose(normalised, expected, atol=1e-7)
    # The 1e-6 keeps every frame's maximum and midpoint just below 1 and 0.5: thres 0.5 keeps only the top pixels.
    assert (normalised >= 0.5).flatten().tolist() == [False, False, True, False, False, False, False, False, True]
    assert (normalised >= 0).all()


def test_fg_bg_split_matches_explicit_masked_softmax_hand_case():
    """1 head, 2 text + 4 video tokens; the u and c target rows share the masks."""
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, 1, 6, 4, generator=gen) for _ in range(3))
    source_fg = torch.tensor([True, False, True, False])
    target_fg = torch.tensor([True, True, False, False])
    out = masked_target_attention(q, k, v, 2, source_fg, target_fg)
    fg = masked_softmax_attention(q, k, v, additive_mask(source_fg, 2))
    bg = masked_softmax_attention(q, k, v, additive_mask(~source_fg, 2))
    full = softmax_maps(q, k) @ v
    assert torch.allclose(out[:, :, :2], full[:, :, :2], atol=1e-6)  # text queries: unmasked
    assert torch.allclose(out[:, :, 2:4], fg[:, :, 2:4], atol=1e-6)
    assert torch.allclose(out[:, :, 4:], bg[:, :, 4:], atol=1e-6)
    # Row 2 is a foreground query: it sees text keys 0-1 and source-foreground keys 2 and 4, nothing else.
    allowed = [0, 1, 2, 4]
    by_hand = torch.softmax(q[:, :, 2:3] @ k[:, :, allowed].transpose(-1, -2) / 2, dim=-1) @ v[:, :, allowed]
    assert torch.allclose(out[:, :, 2:3], by_hand, atol=1e-6)


def test_no_source_foreground_means_foreground_queries_see_text_only():
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 2, 7, 4, generator=gen) for _ in range(3))
    out = masked_target_attention(q, k, v, 3, torch.zeros(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool))
    text_only = softmax_maps(q[:, :, 3:], k[:, :, :3]) @ v[:, :, :3]
    assert torch.isfinite(out).all()
    assert torch.allclose(out[:, :, 3:], text_only, atol=1e-6)


def test_controller_matches_the_original_algorithm_layer_by_layer():
    text_length, grid, ref, cur = 5, (2, 3, 4), [1, 3], [0]
    qkv = random_qkv(8, heads=2, n=29, d=8, layers=4)
    controller = MaskGuidedKVSharing(ControlSchedule(frozenset({0}), frozenset({1, 3})), 0.3, ref, cur)
    outputs = drive(controller, qkv, text_length, grid)
    expected = reference_layers(qkv, {1, 3}, text_length, grid, 0.3, ref, cur)
    for out, ref_out in zip(outputs, expected):
        assert torch.allclose(out, ref_out, atol=1e-5)


def test_all_foreground_equals_kv_sharing_and_only_targets_change(model):
    schedule = ControlSchedule(frozenset({2, 3}), frozenset({2, 3}))
    batch = pair_batch(9)
    shared = run(model, KVSharing(schedule), batch, step=2)
    assert torch.allclose(run(model, MaskGuidedKVSharing(schedule, 0.0, [0], [1]), batch, step=2), shared, atol=1e-5)
    masked = run(model, MaskGuidedKVSharing(schedule, 0.3, [0], [1]), batch, step=2)
    assert torch.allclose(masked[[0, 2]], shared[[0, 2]], atol=1e-5)
    assert (masked[[1, 3]] - shared[[1, 3]]).abs().max() > 1e-3


def test_outside_controlled_steps_bitwise_plain(model):
    controller = MaskGuidedKVSharing(ControlSchedule(frozenset({2}), frozenset({1, 2})), 0.3, [0], [1])
    batch = pair_batch(10)
    for step in (5, None):
        plain = run(model, AttentionController(), batch, step=step)
        assert torch.equal(plain, run(model, controller, batch, step=step))
    assert controller.source_map.layers == 0


def test_mask_pngs_only_at_controlled_step_and_layer(model, tmp_path):
    controller = MaskGuidedKVSharing(ControlSchedule(frozenset({2}), frozenset({1, 3})), 0.3, [0], [2],
                                     mask_dir=str(tmp_path / "attn_map"))
    run(model, controller, pair_batch(11), step=2)  # pair 0 by default in `run`
    assert not (tmp_path / "attn_map").exists()  # masks stay on the device until the step ends
    controller.end_step()
    grid = (3, 2, 3)  # (frames, rows, cols) of pair_batch's latents
    for kind, token_map in (("s", controller.source_map), ("t", controller.target_map)):
        image = iio.imread(tmp_path / "attn_map" / "segment0" / f"mask_{kind}_step2_layer3_all_frames.png")
        assert image.shape == (2, 9, 3) and image.dtype.name == "uint8"
        side_by_side = torch.cat(list(normalise_per_frame(token_map.mean().view(grid))), dim=1)  # (rows, frames·cols)
        assert torch.equal(torch.from_numpy(image[..., 0]), torch.round(255 * side_by_side).to(torch.uint8))
        assert (image == image[..., :1]).all()
    model.set_controller(controller)
    with torch.no_grad():
        model(*pair_batch(11), step=2, pair=1)
        model(*pair_batch(11), step=3, pair=1)
        model(*pair_batch(11), step=2, pair=None)
    controller.end_step()
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.png"))
    assert written == sorted(f"attn_map/segment{pair}/mask_{kind}_step2_layer{layer}_all_frames.png"
                             for pair in (0, 1) for kind in "st" for layer in (1, 3))


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op returns, and the fused attention calls."""

    def __init__(self):
        super().__init__()
        self.largest, self.attention_calls = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.largest = max([self.largest] + [t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor)])
        self.attention_calls += "scaled_dot_product" in func.__name__
        return out


def test_no_tensor_the_size_of_an_attention_map_and_five_calls_per_controlled_layer():
    """N = 166 > 4·heads·d, so one (row, head) N×N or V×V map alone would outgrow q itself."""
    text_length, grid = 6, (2, 8, 10)
    qkv = random_qkv(12, heads=2, n=166, d=8, layers=3)
    q_size = qkv[0][0].numel()
    with LargestTensor() as checker:
        torch.softmax(qkv[0][0][0, 0] @ qkv[0][1][0, 0].T, dim=-1)
    assert checker.largest > q_size  # the checker sees an explicit map
    controller = MaskGuidedKVSharing(ControlSchedule(frozenset({0}), frozenset({2})), 0.3, [0], [1])
    controller.begin_forward(step=0, pair=0, token_grid=grid)
    for layer, (q, k, v) in enumerate(qkv):
        with LargestTensor() as checker:
            controller(q, k, v, layer, text_length)
        assert checker.largest <= q_size
        assert checker.attention_calls == (5 if layer == 2 else 1)


def test_from_args_and_input_errors(tmp_path):
    args = SimpleNamespace(start_step=2, end_step=25, start_layer=25, end_layer=30, step_idx=None, layer_idx=[3, 7],
                           thres=0.3, ref_token_idx=4, cur_token_idx=[1, 2], mask_save_dir="", save_masks=True)
    controller = MaskGuidedKVSharing.from_args(args, str(tmp_path))
    assert controller.mask_dir == str(tmp_path / "attn_map")
    args.mask_save_dir = str(tmp_path / "masks")
    assert MaskGuidedKVSharing.from_args(args, str(tmp_path)).mask_dir == str(tmp_path / "masks")
    assert MaskGuidedKVSharing.from_args(SimpleNamespace(**{**vars(args), "save_masks": False}), str(tmp_path)).mask_dir \
        is None
    assert controller.source_map.tokens == (4,) and controller.target_map.tokens == (1, 2)
    assert controller.last_recorded_layer == 7 and controller.schedule.steps == frozenset(range(2, 25))
    assert MaskGuidedKVSharing.from_args(args, None).mask_dir is None
    for key, value in (("ref_token_idx", -1), ("cur_token_idx", "a"), ("cur_token_idx", []), ("thres", 1.5)):
        with pytest.raises(ValueError, match=key):
            MaskGuidedKVSharing.from_args(SimpleNamespace(**{**vars(args), key: value}), None)
    q = torch.zeros(4, 1, 10, 4)
    controller.begin_forward(step=2, token_grid=(1, 1, 4))
    with pytest.raises(ValueError, match="ref_token_idx contains 4"):
        controller(q, q, q, 0, 3)
    with pytest.raises(ValueError, match="exactly 4 rows"):
        controller(q[:2], q[:2], q[:2], 0, 6)
    with pytest.raises(ValueError, match="token_grid"):
        controller(q, q, q, 0, 5)
