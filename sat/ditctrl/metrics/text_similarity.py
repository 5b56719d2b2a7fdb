"""Text-video similarity per prompt: CLIP text-image cosine x 100 between a prompt and the frames of its own part.

For prompt p: the mean over the frames p owns (`prompt_parts`) of 100 · cos(text_p, image_f), with CLIP's
projected text and image embeddings (no clamping at 0). The video's score is the mean over its prompts, each
prompt counting once whatever its part's length. Prompts longer than CLIP's context (77 tokens for OpenAI's CLIP)
are cut to it; the caller says so.
"""
from dataclasses import dataclass

import torch

from .prompt_parts import PromptParts


@dataclass(frozen=True)
class TextSimilarity:
    per_prompt: tuple  # mean 100 · cos over each prompt's frames
    video: float       # mean over the prompts


def frame_text_similarity(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """(F, E) image and (P, E) text embeddings -> (P, F) 100 · cosine similarities, in float64."""
    images = torch.nn.functional.normalize(image_embeds.double(), dim=-1)
    texts = torch.nn.functional.normalize(text_embeds.double(), dim=-1)
    return 100 * texts @ images.T


def text_similarity(image_embeds: torch.Tensor, text_embeds: torch.Tensor, parts: PromptParts) -> TextSimilarity:
    """Each prompt (text_embeds row p) against the frames of part p of the video (image_embeds rows)."""
    similarity = frame_text_similarity(image_embeds, text_embeds)
    per_prompt = tuple(float(similarity[p, list(frames)].mean()) for p, frames in enumerate(parts.members))
    return TextSimilarity(per_prompt, sum(per_prompt) / len(per_prompt))


def video_text_similarity(clip, tokenizer, pooled: torch.Tensor, parts: PromptParts) -> TextSimilarity:
    """The text similarity of a video from its frames' (F, D) vision pooler outputs, with a whole CLIP."""
    from .clip_features import project_images, text_embeddings

    return text_similarity(project_images(clip, pooled), text_embeddings(clip, tokenizer, parts.prompts), parts)


def cut_prompt_notes(prompts, counts, limit: int) -> list[str]:
    """One note per prompt longer than CLIP's `limit` tokens (counted with its start and end tokens)."""
    return [f"note: prompt {p + 1} has {count} CLIP tokens; CLIP reads the first {limit} (\"{prompt[:40]}…\")"
            for p, (prompt, count) in enumerate(zip(prompts, counts)) if count > limit]
