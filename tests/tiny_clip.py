"""A tiny random CLIP (vision and text towers, tokenizer) written with transformers' `save_pretrained`, for the
metric tests: real CLIP code at toy width, 224-pixel input as the real model's."""
import json
import os

import torch

TINY_CLIP = dict(projection_dim=16,
                 vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                    image_size=224, patch_size=32),
                 text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  max_position_embeddings=77, vocab_size=514, bos_token_id=512,
                                  eos_token_id=513, pad_token_id=513))


def byte_characters() -> list:
    """CLIP's (GPT-2's) printable stand-in for each of the 256 bytes."""
    visible = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = visible[:], 0
    for byte in range(256):
        if byte not in visible:
            visible.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def write_tokenizer_files(folder: str) -> None:
    """A byte-level BPE vocabulary without merges (every character is a token): CLIP's files, tiny."""
    characters = byte_characters()
    tokens = characters + [c + "</w>" for c in characters] + ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(folder, "vocab.json"), "w") as file:
        json.dump({token: index for index, token in enumerate(tokens)}, file)
    with open(os.path.join(folder, "merges.txt"), "w") as file:
        file.write("#version: 0.2\n")


def save_tiny_clip(folder: str, seed: int = 0) -> str:
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed)
    CLIPModel(CLIPConfig(**TINY_CLIP)).save_pretrained(folder)
    write_tokenizer_files(folder)
    CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")).save_pretrained(folder)
    return folder
