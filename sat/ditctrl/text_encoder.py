"""T5 v1.1 text conditioning as CogVideoX's ``FrozenT5Embedder`` does it (docs/model.md, "T5 text encoder").

Everything is read from a local folder, never from the Hugging Face hub. Transformers 5 builds the
``T5Tokenizer`` from ``spiece.model`` by converting it to a ``tokenizers`` Unigram model, which needs
the ``sentencepiece`` and ``protobuf`` packages.
"""
import os
from contextlib import contextmanager

import torch
from transformers import T5EncoderModel, T5Tokenizer
from transformers.utils import logging as transformers_logging

from ditctrl.checkpoints import MissingCheckpointError, check_t5_folder, tokenizer_file
from ditctrl.console import say

T5_MAX_LENGTH = 226


def _as_prompt_list(prompts):
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a string or a non-empty list of strings, got {prompts!r}")
    return list(prompts)


@contextmanager
def no_progress_bars():
    """Without transformers' progress bars (its "Loading weights" bar): a run shows one bar, the sampler's."""
    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


class T5Tokens:
    """The T5 tokenizer alone (no weights): token ids and pieces, e.g. to check token indices cheaply."""

    def __init__(self, folder, max_length=T5_MAX_LENGTH):
        """`folder` holds spiece.model (or tokenizer.json) and the tokenizer's JSON files."""
        if not os.path.isfile(tokenizer_file(folder)):
            raise MissingCheckpointError(tokenizer_file(folder))
        self.max_length = max_length
        self.tokenizer = T5Tokenizer.from_pretrained(folder, local_files_only=True)

    def tokenize(self, prompts):
        """Token ids (B, max_length), int64: pieces, ``</s>`` (1), then pad (0); longer prompts are truncated."""
        return self.tokenizer(
            _as_prompt_list(prompts), truncation=True, max_length=self.max_length,
            padding="max_length", return_tensors="pt",
        ).input_ids

    def announce_cut_prompts(self, prompts) -> list:
        """Print a note for every distinct prompt longer than the T5 context; return their (position, token count).

        A cut prompt keeps its first `max_length - 1` pieces and `</s>`.
        """
        distinct = list(dict.fromkeys(_as_prompt_list(prompts)))
        # untruncated, </s> included; not verbose: transformers would warn of "indexing errors" past the
        # tokenizer's model_max_length, while the note below says how the prompt is cut
        counts = [len(ids) for ids in self.tokenizer(distinct, verbose=False).input_ids]
        cut = [(position, count) for position, count in enumerate(counts) if count > self.max_length]
        for position, count in cut:
            say(f"note: prompt {position} has {count} T5 tokens (with </s>) but the text context holds "
                f"{self.max_length}; its last {count - self.max_length} tokens are cut: "
                f"\"{distinct[position][:40]}...\"")
        return cut

    def tokens(self, prompt):
        """(index, piece) of every non-pad token of one prompt, ``</s>`` included; index = position in the ids."""
        ids = self.tokenize(prompt)[0].tolist()
        pieces = self.tokenizer.convert_ids_to_tokens(ids)
        return [(index, piece) for index, (i, piece) in enumerate(zip(ids, pieces)) if i != self.tokenizer.pad_token_id]


class T5TextEncoder(T5Tokens):
    """Tokenizer + frozen ``T5EncoderModel`` from a local folder; ``encode`` gives (B, 226, d_model)."""

    def __init__(self, folder, device="cpu", dtype=torch.float16, max_length=T5_MAX_LENGTH, tokenizer_folder=None):
        """`tokenizer_folder`: where the tokenizer is when not in `folder` (the diffusers layout's tokenizer/)."""
        check_t5_folder(folder, tokenizer_folder)
        super().__init__(tokenizer_folder or folder, max_length)
        # straight onto the device (accelerate's device map), in `dtype`; in fp16 transformers keeps the feed-forward
        # output projections in fp32 (`_keep_in_fp32_modules`: T5 v1.1 overflows in fp16 there)
        with no_progress_bars():
            self.model = T5EncoderModel.from_pretrained(folder, local_files_only=True, dtype=dtype,
                                                        device_map={"": torch.device(device)})
        self.model.eval().requires_grad_(False)
        self.device = torch.device(device)

    @torch.no_grad()
    def encode(self, prompts):
        """Last hidden state (B, max_length, d_model) in the model dtype; no attention mask, autocast off."""
        if self.model is None:
            raise RuntimeError("the T5 encoder was released; build a new T5TextEncoder to encode again")
        ids = self.tokenize(prompts).to(self.device)
        with torch.autocast(device_type=self.device.type, enabled=False):
            return self.model(input_ids=ids).last_hidden_state

    def release(self):
        """Drop the encoder weights (tokenizing still works), freeing their memory once encoding is done."""
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
