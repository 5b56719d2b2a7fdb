"""Small random-weight models shared by the tests."""
from ditctrl.dit import DiffusionTransformer
from ditctrl.synthetic_checkpoint import randomize_module

SMALL_DIT = dict(num_layers=4, hidden_size=64, num_attention_heads=4, time_embed_dim=32, text_hidden_size=24,
                 text_length=7, latent_height=4, latent_width=6, num_frames=17)


def small_dit(seed: int = 0, **overrides) -> DiffusionTransformer:
    model = DiffusionTransformer(**{**SMALL_DIT, **overrides})
    randomize_module(model, seed)
    return model.eval()
