"""Word-swap editing invariants on a small random DiT (the clip sampler of sample_video_edit.py)."""
import torch

from ditctrl.attention import AttentionController, ControlSchedule, KVSharing
from ditctrl.guided_denoiser import GuidedDenoiser
from ditctrl.sampler import sample_dpmpp_2m_sde, shared_row_noise
from ditctrl.schedule import sampling_schedule
from reference_attention import ExplicitKVSharing
from tiny_models import small_dit

SHARING = ControlSchedule(frozenset({1, 2}), frozenset({2, 3}))


def edit(model, controller, cond, seed=0):
    """Source (row 0) and target (row 1) from one shared initial noise and shared SDE noise."""
    model.set_controller(controller)
    guided = GuidedDenoiser(model, sampler_steps=4, cfg_steps=4)
    noise = torch.randn(1, 3, 16, 4, 6, generator=torch.Generator().manual_seed(seed)).expand(2, -1, -1, -1, -1)
    torch.manual_seed(seed)
    with torch.no_grad():
        return sample_dpmpp_2m_sde(lambda x, i, a, t: guided(x, i, a, t, cond, torch.zeros_like(cond)),
                                   noise.contiguous(), sampling_schedule(4), shared_row_noise)


def test_identical_prompts_reproduce_the_source_exactly():
    model = small_dit()
    prompt = torch.randn(1, 7, 24)
    videos = edit(model, KVSharing(SHARING), prompt.expand(2, -1, -1).contiguous())
    assert torch.equal(videos[0], videos[1])


def test_source_is_the_unedited_generation_and_the_target_follows_explicit_kv_sharing():
    """The edit equals the same sampling with explicit N×N source-K/V attention, which no controller that
    treats both rows alike (plain attention included) reproduces."""
    model = small_dit()
    cond = torch.randn(2, 7, 24)
    plain = edit(model, AttentionController(), cond)
    edited = edit(model, KVSharing(SHARING), cond)
    reference = edit(model, ExplicitKVSharing(SHARING), cond)
    assert torch.equal(plain[0], edited[0])
    assert torch.allclose(edited, reference, atol=1e-4)
    assert not torch.allclose(plain[1], reference[1], atol=1e-2)
