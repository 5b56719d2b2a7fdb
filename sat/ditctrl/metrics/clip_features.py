"""CLIP features of frames and prompts (transformers' CLIP, local weights only), frames in batches on the device.

`frame_features` gives the vision tower's pooler output, the feature the original's CSCV and t-SNE read from
`CLIPVisionModel(...).pooler_output`; `project_images` and `text_embeddings` give the joint image-text space of a
whole `CLIPModel` (its projections), where text-frame similarity is measured.
"""
from contextlib import contextmanager

import torch
from tqdm import tqdm

from ..output_files import first_line
from .clip_input import clip_pixels

FRAME_BATCH = 32


@contextmanager
def _quiet_transformers():
    """No 'weights not used' warnings while loading (a whole CLIP's text weights when only its vision tower is
    built)."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def _load(model_class, folder: str, device: str):
    try:
        with _quiet_transformers():
            model = model_class.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"cannot load CLIP from {folder} ({first_line(error)}); download it again") from None
    return model.to(device).eval()


def load_clip_vision(folder: str, device: str):
    """The CLIP vision tower in `folder` (a whole CLIP or a vision-only checkpoint), as the original loads it."""
    from transformers import CLIPVisionModel

    return _load(CLIPVisionModel, folder, device)


def load_clip(folder: str, device: str):
    """A whole CLIP model and its tokenizer from `folder`."""
    from transformers import AutoTokenizer, CLIPModel

    model = _load(CLIPModel, folder, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load the CLIP tokenizer from {folder} ({first_line(error)})") from None
    return model, tokenizer


@torch.no_grad()
def frame_features(model, frames: torch.Tensor, image_size: int, batch_size: int = FRAME_BATCH,
                   description: str | None = None) -> torch.Tensor:
    """(F, H, W, 3) uint8 frames -> (F, D) float32 pooler outputs of `model`'s vision tower, on the CPU.

    `model` is a CLIPVisionModel or a CLIPModel (whose `vision_model` is the same tower). Frames are cropped and
    normalised on the CPU and go through the tower `batch_size` at a time on the model's device.
    """
    tower = model.vision_model if hasattr(model, "visual_projection") else model
    device = next(tower.parameters()).device
    starts = range(0, len(frames), batch_size)
    features = []
    for start in tqdm(starts, desc=description, unit="batch", disable=description is None, leave=False):
        pixels = clip_pixels(frames[start:start + batch_size], image_size).to(device)
        features.append(tower(pixel_values=pixels).pooler_output.float().cpu())
    return torch.cat(features)


@torch.no_grad()
def project_images(clip, pooled: torch.Tensor) -> torch.Tensor:
    """(F, D) vision pooler outputs -> (F, E) image embeddings of a whole CLIP (its visual projection)."""
    projection = clip.visual_projection
    return projection(pooled.to(projection.weight.device, projection.weight.dtype)).float().cpu()


def context_length(clip) -> int:
    """The tokens CLIP's text tower reads (77 for OpenAI's CLIP); longer prompts are cut to this."""
    return clip.config.text_config.max_position_embeddings


def token_counts(tokenizer, prompts) -> list[int]:
    """Each prompt's CLIP tokens, start and end tokens included, before any cut."""
    return [len(ids) for ids in tokenizer(list(prompts))["input_ids"]]


@torch.no_grad()
def text_embeddings(clip, tokenizer, prompts) -> torch.Tensor:
    """(P, E) text embeddings of `prompts`, each cut to the first `context_length(clip)` tokens."""
    device = clip.text_projection.weight.device
    tokens = tokenizer(list(prompts), padding=True, truncation=True, max_length=context_length(clip),
                       return_tensors="pt").to(device)
    pooled = clip.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output
    return clip.text_projection(pooled).float().cpu()
