"""Our AMT-S network against VBench's own module (tests/amt_reference.py made the fixture in a throwaway
environment holding only VBench's AMT files): the same parameter names and shapes, so `amt-s.pth` loads strictly,
and the same interpolated frame on the same seeded random weights and inputs."""
import pytest
import torch

from amt_reference import FIXTURE, WEIGHT_SEED, reference_inputs, seeded_weights, summary
from ditctrl.metrics.amt import AMTS


@pytest.fixture(scope="module")
def reference():
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(scope="module")
def ours():
    model = AMTS().eval()
    model.load_state_dict(seeded_weights(model, WEIGHT_SEED), strict=True)
    return model


def test_parameter_names_and_shapes_are_vbench_s(ours, reference):
    assert {name: tuple(t.shape) for name, t in ours.state_dict().items()} == reference["shapes"]


def test_interpolated_frame_equals_vbench_s(ours, reference):
    with torch.no_grad():
        output = ours(*reference_inputs())
    found = summary(output)
    torch.testing.assert_close(found["samples"], reference["samples"], rtol=0, atol=1e-5)
    torch.testing.assert_close(found["channel_sums"], reference["channel_sums"], rtol=1e-6, atol=0)
    torch.testing.assert_close(found["channel_square_sums"], reference["channel_square_sums"], rtol=1e-6, atol=0)


def test_a_batch_equals_its_pairs_one_at_a_time(ours):
    img0, img1, _ = reference_inputs()
    second0, second1 = img1.flip(3), img0.flip(2)
    with torch.no_grad():
        batch = ours(torch.cat([img0, second0]), torch.cat([img1, second1]), torch.full((2, 1, 1, 1), 0.5))
        one, two = (ours(a, b, torch.full((1, 1, 1, 1), 0.5)) for a, b in ((img0, img1), (second0, second1)))
    torch.testing.assert_close(batch, torch.cat([one, two]), rtol=0, atol=1e-5)
