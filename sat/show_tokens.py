"""Print the T5 tokens of prompts with their indices, to choose a case's token indices.

    python sat/show_tokens.py --prompt "pink teddy bear on a wooden table" ["second prompt" ...]
                              [--base configs/cogvideox_5b.yaml] [--tiny] [--tokenizer PATH]

The indices are what `ref_token_idx`, `cur_token_idx`, `reweight_token_idx` and `attn_map_token_idx` name.
Index 0 is the prompt's first SentencePiece piece (T5 prepends nothing); a word may span several pieces ("▁"
marks a word start); the list ends with `</s>`. Only the tokenizer is read: by default the configured model's, in
either layout (`<args.load>/tokenizer`, e.g. from `hf download THUDM/CogVideoX-2b --include "tokenizer/*"
--local-dir sat/CogVideoX-2b`, or the SAT layout's `t5-v1_1-xxl/`); `--tokenizer` names another.
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
    parser.add_argument("--base", nargs="+", default=[MODEL_CONFIG], metavar="YAML",
                        help="model config (e.g. configs/cogvideox_5b.yaml): whose tokenizer and text length")
    parser.add_argument("--tiny", action="store_true", help="the tiny model's small tokenizer instead of T5's")
    parser.add_argument("--tokenizer", metavar="PATH",
                        help="a tokenizer folder, a diffusers folder holding tokenizer/, or a spiece.model file")
    options = parser.parse_args(argv)
    with user_errors():
        base = [*options.base, *([tiny_config_for(options.base)] if options.tiny else [])]
        cfg = load_config(base, require_prompts=False)
        from ditctrl.weights import find_tokenizer  # after the arguments: --help answers without torch
        if options.tiny and options.tokenizer is None:
            from ditctrl.synthetic_folders import ensure_synthetic_checkpoints
            ensure_synthetic_checkpoints(cfg)  # --tiny writes the tiny model's files on first use, as the run scripts
        folder = find_tokenizer(cfg, options.tokenizer)
        from ditctrl.text_encoder import T5Tokens
        tokens = T5Tokens(folder, cfg.model.conditioner_config.params.max_length)
    for p, prompt in enumerate(options.prompt):
        say(f"prompt {p}: {prompt}")
        for index, piece in tokens.tokens(prompt):
            say(f"  {index:4d}  {piece}")


if __name__ == "__main__":
    guarded(main)
