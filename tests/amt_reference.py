"""The AMT-S reference fixture: VBench's own AMT-S network on seeded random weights and inputs.

tests/fixtures/amt_s_reference.pt holds the names and shapes of VBench's AMT-S parameters and its interpolated
frame for `reference_inputs()` with `seeded_weights(model, WEIGHT_SEED)`: `SAMPLES` of its values at seeded random
positions and its per-channel sums and sums of squares (the whole frame would be 192 KB); tests/test_amt.py loads
the same weights into ours (`ditctrl.metrics.amt.AMTS`) and compares. VBench cannot be installed beside this project's torch (it
requires torchvision), so the fixture was made in a throwaway environment holding only VBench's AMT network files:

    pip download vbench==0.1.5 --no-deps -d /tmp/vbench_dl && unzip /tmp/vbench_dl/vbench-*.whl -d /tmp/vbench_dl/w
    mkdir -p /tmp/vbench_ref/vbench/third_party/amt/utils
    cp -r /tmp/vbench_dl/w/vbench/third_party/amt/networks /tmp/vbench_ref/vbench/third_party/amt/
    cp /tmp/vbench_dl/w/vbench/third_party/amt/utils/flow_utils.py /tmp/vbench_ref/vbench/third_party/amt/utils/
    touch /tmp/vbench_ref/vbench/__init__.py /tmp/vbench_ref/vbench/third_party/__init__.py \\
          /tmp/vbench_ref/vbench/third_party/amt/__init__.py /tmp/vbench_ref/vbench/third_party/amt/utils/__init__.py
    python -m venv --system-site-packages /tmp/vbench_venv      # torch, numpy and Pillow only; no sat/ on its path
    /tmp/vbench_venv/bin/python tests/amt_reference.py /tmp/vbench_ref

(the package's own `vbench/__init__.py` imports its metrics, hence torchvision: it is replaced by an empty file;
the network files are VBench's, unchanged). The script imports nothing of this repository.
"""
import importlib.util
import os
import sys

import torch

WEIGHT_SEED, INPUT_SEED, SAMPLE_SEED = 2024, 7, 11
SAMPLES = 1024
SIZE = (128, 128)  # the smallest frame whose 4-level correlation pyramid ends at 2x2 (at 64x64 it ends at 1x1: NaN)
FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "amt_s_reference.pt")


def seeded_weights(model: torch.nn.Module, seed: int) -> dict:
    """A random state dict for `model` that depends only on its parameter names and shapes: in name order, weights
    ~ N(0, 1/(4 fan_in)), PReLU slopes ~ 0.25 + N(0, 0.05²), biases ~ N(0, 0.01²), so activations stay in range."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, tensor in sorted(model.state_dict().items()):
        noise = torch.randn(tensor.shape, generator=generator)
        if tensor.dim() > 1:
            weights[name] = 0.5 * noise / tensor[0].numel() ** 0.5
        elif name.endswith("bias"):
            weights[name] = 0.01 * noise
        else:
            weights[name] = 0.25 + 0.05 * noise
    return weights


def reference_inputs(seed: int = INPUT_SEED) -> tuple:
    """Two smooth random frames (1, 3, 64, 64) in [0, 1], the second the first moved by (3, 2) pixels with a little
    noise, and the time 0.5."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 8, 8, generator=generator)
    img0 = torch.nn.functional.interpolate(coarse, size=SIZE, mode="bicubic", align_corners=False).clamp(0, 1)
    img1 = (torch.roll(img0, shifts=(2, 3), dims=(2, 3)) + 0.02 * torch.randn(img0.shape, generator=generator))
    return img0, img1.clamp(0, 1), torch.full((1, 1, 1, 1), 0.5)


def summary(output: torch.Tensor) -> dict:
    """What the fixture keeps of a (1, 3, H, W) output: values at SAMPLES seeded positions, per-channel moments."""
    positions = torch.randperm(output.numel(), generator=torch.Generator().manual_seed(SAMPLE_SEED))[:SAMPLES]
    wide = output.double()
    return {"samples": output.flatten()[positions].clone(), "channel_sums": wide.sum(dim=(0, 2, 3)),
            "channel_square_sums": (wide ** 2).sum(dim=(0, 2, 3))}


def vbench_amt_s(root: str) -> torch.nn.Module:
    """VBench's AMT-S `Model`, imported from the throwaway tree `root` (its file name has a hyphen)."""
    sys.path.insert(0, root)
    path = os.path.join(root, "vbench", "third_party", "amt", "networks", "AMT-S.py")
    spec = importlib.util.spec_from_file_location("vbench_amt_s", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Model(corr_radius=3, corr_lvls=4, num_flows=3)  # VBench's cfgs/AMT-S.yaml


def main(root: str) -> None:
    model = vbench_amt_s(root).eval()
    model.load_state_dict(seeded_weights(model, WEIGHT_SEED), strict=True)
    img0, img1, embt = reference_inputs()
    with torch.no_grad():
        output = model(img0, img1, embt, scale_factor=1.0, eval=True)["imgt_pred"]
    inside = ((output > 0) & (output < 1)).float().mean().item()
    assert inside > 0.9, f"only {inside:.0%} of the output is unclamped: the comparison would be weak"
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    torch.save({"weight_seed": WEIGHT_SEED, "input_seed": INPUT_SEED, "shapes": shapes, **summary(output)}, FIXTURE)
    print(f"wrote {FIXTURE}: output {tuple(output.shape)}, {inside:.1%} unclamped, {len(shapes)} tensors")


if __name__ == "__main__":
    main(sys.argv[1])
