"""Print the T5 tokens of a prompt with their indices, to choose `ref_token_idx`, `cur_token_idx`,
`reweight_token_idx` or `attn_map_token_idx`.

    python sat/show_tokens.py --prompt "pink teddy bear on a wooden table" [--tiny]

Index 0 is the prompt's first SentencePiece piece (T5 prepends nothing); a word may span several
pieces ("▁" marks a word start). Only the tokenizer is loaded, not the encoder weights.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ditctrl.config import MODEL_CONFIG, load_config, tiny_config_for  # noqa: E402
from ditctrl.console import say  # noqa: E402
from ditctrl.errors import guarded  # noqa: E402
from ditctrl.runs import user_errors  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompt", required=True, nargs="+", help="one or more prompts")
    parser.add_argument("--base", nargs="+", default=[MODEL_CONFIG], help="model config (e.g. configs/cogvideox_5b.yaml)")
    parser.add_argument("--tiny", action="store_true", help="the tiny synthetic tokenizer instead of the real T5's")
    options = parser.parse_args(argv)
    with user_errors():
        base = [*options.base, *([tiny_config_for(options.base)] if options.tiny else [])]
        cfg = load_config(base, require_prompts=False)
        from ditctrl.weights import weight_paths  # after the arguments: --help answers without torch
        from ditctrl.text_encoder import T5Tokens
        tokens = T5Tokens(weight_paths(cfg)["tokenizer"], cfg.model.conditioner_config.params.max_length)
    for p, prompt in enumerate(options.prompt):
        say(f"prompt {p}: {prompt}")
        for index, piece in tokens.tokens(prompt):
            say(f"  {index:4d}  {piece}")


if __name__ == "__main__":
    guarded(main)
