"""Building the models from checkpoint files, as the entry scripts do."""
import torch

from ditctrl.checkpoints import read_transformer_state_dict
from ditctrl.pipeline import build_transformer
from ditctrl.synthetic_checkpoint import write_transformer_checkpoint
from tiny_models import SMALL_DIT, small_dit


def test_built_transformer_equals_the_model_it_was_saved_from(tmp_path):
    """Weights come from the file; the fixed position table is recomputed after the empty allocation."""
    reference = small_dit(seed=3)
    write_transformer_checkpoint(reference.state_dict(), str(tmp_path / "transformer"))
    built = build_transformer(SMALL_DIT, read_transformer_state_dict(str(tmp_path / "transformer")), "cpu",
                              torch.float32)
    assert torch.equal(built.get_mixin("pos_embed").pos_embedding, reference.get_mixin("pos_embed").pos_embedding)
    x, t, context = torch.randn(2, 3, 16, 4, 6), torch.tensor([999.0, 19.0]), torch.randn(2, 7, 24)
    with torch.no_grad():
        assert torch.equal(built(x, t, context), reference(x, t, context))


def test_built_transformer_holds_weights_in_the_run_dtype(tmp_path):
    write_transformer_checkpoint(small_dit().state_dict(), str(tmp_path / "transformer"))
    built = build_transformer(SMALL_DIT, read_transformer_state_dict(str(tmp_path / "transformer")), "cpu",
                              torch.bfloat16)
    assert {p.dtype for p in built.parameters()} == {torch.bfloat16}
