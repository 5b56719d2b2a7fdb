"""Small random-weight models shared by the tests."""
import torch

from ditctrl.dit import DiffusionTransformer

SMALL_DIT = dict(num_layers=4, hidden_size=64, num_attention_heads=4, time_embed_dim=32, text_hidden_size=24,
                 text_length=7, latent_height=4, latent_width=6, num_frames=17)


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial weights everywhere: norm scales near 1, everything else (adaLN included) random."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name or "norm_final" in name:
                p.copy_((1 + 0.1 * torch.randn(p.shape, generator=gen)) if name.endswith("weight")
                        else 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)


def small_dit(seed: int = 0, **overrides) -> DiffusionTransformer:
    model = DiffusionTransformer(**{**SMALL_DIT, **overrides})
    randomize(model, seed)
    return model.eval()
