"""Writers of random-weight checkpoints in exactly the on-disk layouts of the real downloads.

They let every loader and the whole pipeline run without the real CogVideoX-2B / 5B weights
(docs/weights.md), in either layout: SAT (a ``transformer`` folder, ``3d-vae.pt`` and a
Hugging Face T5 folder) or diffusers (one folder: ``model_index.json``, ``transformer/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``). The tokenizer is a real SentencePiece model
trained offline on ``assets/tokenizer_corpus.txt``.

The writers only ever write into the folders ``synthetic_claims.py`` lets them claim. Every file goes through
``output_files.write_file`` (temporary name, then renamed), and each part's pointer file (``latest``,
the T5 index, a diffusers folder's ``model_index.json``) is written after its weights, so an interrupted
writer never leaves a part that looks whole.
"""
import dataclasses
import io
import itertools
import json
import os

import sentencepiece
import torch
from safetensors.torch import save_file

from omegaconf import OmegaConf

from ditctrl.checkpoints import DIT_FILE_NAME, DIT_PREFIX, POSITION_TABLE_KEY, T5_INDEX_NAME
from ditctrl.diffusers_layout import (MODEL_INDEX, TRANSFORMER_NAMES, VAE_NAMES, WEIGHTS_NAME, NameMap, model_index,
                                      scheduler_config, transformer_config, vae_config)
from ditctrl.dit import DiffusionTransformer
from ditctrl.output_files import write_bytes, write_file, write_text
from ditctrl.pipeline import allocate_empty, run_dtype
from ditctrl.synthetic_claims import PARTS, claim_part_folders
from ditctrl.weights import weight_paths
from ditctrl.text_encoder import T5_MAX_LENGTH
from ditctrl.vae import CogVideoXVAE

TOKENIZER_CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "tokenizer_corpus.txt")
SENTENCEPIECE_PIECES = 1000  # <pad>=0, </s>=1, <unk>=2, then 997 learned pieces
T5_EXTRA_IDS = 100
T5_SHARD_NAMES = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")


def write_transformer_checkpoint(state_dict, folder, iteration=1000):
    """Write ``<folder>/latest`` and ``<folder>/<iteration>/mp_rank_00_model_states.pt``; return the file path.

    Like the released file: weights under ``'module'``, keys prefixed ``model.diffusion_model.``,
    no fixed position table.
    """
    if iteration != "release" and not (isinstance(iteration, int) and iteration > 0):
        raise ValueError(f"iteration must be an integer > 0 or 'release', got {iteration!r}")
    weights = {DIT_PREFIX + key: value for key, value in state_dict.items() if key != POSITION_TABLE_KEY}
    path = write_file(os.path.join(folder, str(iteration), DIT_FILE_NAME),
                      lambda temporary: torch.save({"module": weights}, temporary))
    write_text(os.path.join(folder, "latest"), str(iteration))
    return path


def write_vae_checkpoint(state_dict, path):
    """Write ``3d-vae.pt``: weights under ``'state_dict'`` plus training-only ``loss.*`` tensors."""
    training_only = {
        "loss.logvar": torch.zeros(()),
        "loss.discriminator.main.0.weight": torch.zeros(64, 3, 4, 4),
    }
    write_file(path, lambda temporary: torch.save({"state_dict": {**state_dict, **training_only}}, temporary))


@dataclasses.dataclass(frozen=True)
class T5Dims:
    """Sizes of a T5 v1.1 encoder; t5-v1_1-xxl is (4096, 10240, 24, 64, 64, 32128)."""

    d_model: int
    d_ff: int
    num_layers: int
    num_heads: int
    d_kv: int
    vocab_size: int = 32128


def _t5_tensor_specs(dims):
    """(name, shape, init std or None for a norm weight of ones), in file order; HF T5's init scales."""
    inner = dims.num_heads * dims.d_kv
    yield "shared.weight", (dims.vocab_size, dims.d_model), 1.0
    for k in range(dims.num_layers):
        attention = f"encoder.block.{k}.layer.0"
        yield f"{attention}.SelfAttention.q.weight", (inner, dims.d_model), (dims.d_model * dims.d_kv) ** -0.5
        yield f"{attention}.SelfAttention.k.weight", (inner, dims.d_model), dims.d_model ** -0.5
        yield f"{attention}.SelfAttention.v.weight", (inner, dims.d_model), dims.d_model ** -0.5
        yield f"{attention}.SelfAttention.o.weight", (dims.d_model, inner), inner ** -0.5
        if k == 0:
            yield f"{attention}.SelfAttention.relative_attention_bias.weight", (32, dims.num_heads), dims.d_model ** -0.5
        yield f"{attention}.layer_norm.weight", (dims.d_model,), None
        feed_forward = f"encoder.block.{k}.layer.1"
        yield f"{feed_forward}.DenseReluDense.wi_0.weight", (dims.d_ff, dims.d_model), dims.d_model ** -0.5
        yield f"{feed_forward}.DenseReluDense.wi_1.weight", (dims.d_ff, dims.d_model), dims.d_model ** -0.5
        yield f"{feed_forward}.DenseReluDense.wo.weight", (dims.d_model, dims.d_ff), dims.d_ff ** -0.5
        yield f"{feed_forward}.layer_norm.weight", (dims.d_model,), None
    yield "encoder.final_layer_norm.weight", (dims.d_model,), None


def random_t5_tensors(dims, seed=0, dtype=torch.float16, device="cpu"):
    """Yield (name, tensor) of a random T5 encoder one tensor at a time; same seed and device, same values."""
    generator = torch.Generator(device).manual_seed(seed)
    for name, shape, std in _t5_tensor_specs(dims):
        if std is None:
            yield name, torch.ones(shape, dtype=dtype, device=device)
        else:
            yield name, (torch.randn(shape, generator=generator, device=device) * std).to(dtype)


def _t5_shard(name, num_layers):
    """0 for the embedding and the first half of the blocks, 1 for the rest."""
    if name.startswith("encoder.block."):
        return int(int(name.split(".")[2]) >= (num_layers + 1) // 2)
    return int(name.startswith("encoder.final_layer_norm"))


def _t5_config(dims, dtype):
    """config.json as the CogVideoX-2B download has it (written by transformers 4.x)."""
    return {
        "architectures": ["T5EncoderModel"],
        "classifier_dropout": 0.0,
        "d_ff": dims.d_ff,
        "d_kv": dims.d_kv,
        "d_model": dims.d_model,
        "decoder_start_token_id": 0,
        "dense_act_fn": "gelu_new",
        "dropout_rate": 0.1,
        "eos_token_id": 1,
        "feed_forward_proj": "gated-gelu",
        "initializer_factor": 1.0,
        "is_encoder_decoder": True,
        "is_gated_act": True,
        "layer_norm_epsilon": 1e-06,
        "model_type": "t5",
        "num_decoder_layers": dims.num_layers,
        "num_heads": dims.num_heads,
        "num_layers": dims.num_layers,
        "output_past": True,
        "pad_token_id": 0,
        "relative_attention_max_distance": 128,
        "relative_attention_num_buckets": 32,
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
        "vocab_size": dims.vocab_size,
    }


def train_sentencepiece():
    """Serialized SentencePiece unigram model trained on the bundled corpus (deterministic, single thread)."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        input=TOKENIZER_CORPUS, model_writer=model, model_type="unigram", vocab_size=SENTENCEPIECE_PIECES,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, num_threads=1, minloglevel=2,
    )
    return model.getvalue()


def _special(content):
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def _t5_tokenizer_files():
    """(file name, JSON content) of the tokenizer files besides spiece.model, as in the real folder."""
    extra_tokens = [f"<extra_id_{i}>" for i in range(T5_EXTRA_IDS)]
    extra_ids = {token: SENTENCEPIECE_PIECES + T5_EXTRA_IDS - 1 - i for i, token in enumerate(extra_tokens)}
    decoder = {str(i): token for i, token in enumerate(("<pad>", "</s>", "<unk>"))}
    decoder.update({str(i): token for token, i in extra_ids.items()})
    tokenizer_config = {
        "added_tokens_decoder": {i: {**_special(token), "special": True} for i, token in decoder.items()},
        "additional_special_tokens": extra_tokens,
        "clean_up_tokenization_spaces": True,
        "eos_token": "</s>",
        "extra_ids": T5_EXTRA_IDS,
        "legacy": True,
        "model_max_length": T5_MAX_LENGTH,
        "pad_token": "<pad>",
        "sp_model_kwargs": {},
        "tokenizer_class": "T5Tokenizer",
        "unk_token": "<unk>",
    }
    special_tokens_map = {
        "additional_special_tokens": extra_tokens,
        "eos_token": _special("</s>"),
        "pad_token": _special("<pad>"),
        "unk_token": _special("<unk>"),
    }
    return {
        "added_tokens.json": extra_ids,
        "special_tokens_map.json": special_tokens_map,
        "tokenizer_config.json": tokenizer_config,
    }


def _write_json(path, content):
    write_text(path, json.dumps(content, indent=2))


def write_t5_folder(folder, d_model, d_ff, num_layers, num_heads, d_kv, vocab_size=32128,
                    dtype=torch.float16, seed=0, device="cpu", tokenizer_folder=None):
    """Write a Hugging Face T5 v1.1 encoder folder with random weights and a trained tokenizer.

    The weights are generated on ``device`` and saved one shard at a time, so at most one shard is
    held in memory (about 5 GB for the t5-v1_1-xxl shape). The tokenizer files go to
    ``tokenizer_folder`` when given (the diffusers layout's ``tokenizer/``), else next to the weights.
    """
    dims = T5Dims(d_model, d_ff, num_layers, num_heads, d_kv, vocab_size)
    tokenizer_size = SENTENCEPIECE_PIECES + T5_EXTRA_IDS
    if vocab_size < tokenizer_size:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer's {tokenizer_size} ids")
    weight_map, total_bytes = {}, 0
    tensors = random_t5_tensors(dims, seed, dtype, device)
    for shard, named in itertools.groupby(tensors, key=lambda item: _t5_shard(item[0], num_layers)):
        shard_tensors = {name: tensor.cpu() for name, tensor in named}
        _write_safetensors(os.path.join(folder, T5_SHARD_NAMES[shard]), shard_tensors)
        weight_map.update(dict.fromkeys(shard_tensors, T5_SHARD_NAMES[shard]))
        total_bytes += sum(t.numel() * t.element_size() for t in shard_tensors.values())
        del shard_tensors  # before the next shard is generated
    _write_json(os.path.join(folder, "config.json"), _t5_config(dims, dtype))
    tokenizer_folder = tokenizer_folder or folder
    write_bytes(os.path.join(tokenizer_folder, "spiece.model"), train_sentencepiece())
    for name, content in _t5_tokenizer_files().items():
        _write_json(os.path.join(tokenizer_folder, name), content)
    # the index names the shards: written last, it marks the folder complete (checkpoints.check_t5_folder)
    _write_json(os.path.join(folder, T5_INDEX_NAME), {"metadata": {"total_size": total_bytes}, "weight_map": weight_map})


@torch.no_grad()
def randomize_module(module: torch.nn.Module, seed: int = 0) -> None:
    """Fill every parameter with random values of a healthy scale, deterministically per seed and device.

    Norm scales ~ 1 ± 0.1 and their shifts ~ 0.1·N(0,1); matrices and kernels N(0, 1/fan_in); other
    vectors 0.1·N(0,1). Nothing is zero, so adaLN gates and final layers take part in every check.
    """
    norms = {id(p) for m in module.modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm))
             for p in m.parameters(recurse=False)}
    generator = None
    for name, p in module.named_parameters():
        if generator is None or generator.device != p.device:
            generator = torch.Generator(p.device).manual_seed(seed)
        noise = torch.randn(p.shape, generator=generator, device=p.device, dtype=torch.float32)
        if id(p) in norms and name.endswith("weight"):
            value = 1 + 0.1 * noise
        elif p.ndim >= 2:
            value = noise / (p[0].numel() ** 0.5)
        else:
            value = 0.1 * noise
        p.copy_(value)


FULL_T5 = dict(d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64)  # t5-v1_1-xxl


def build_random(module_type, params: dict, device: str, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    module = allocate_empty(module_type, params, device, dtype)
    randomize_module(module, seed)
    return module


def write_diffusers_component(tensors: dict, folder, config: dict, max_shard_bytes: int = 5 * 2**30) -> None:
    """``config.json`` and the safetensors of one diffusers component; several shards plus an index when large."""
    _write_json(os.path.join(folder, "config.json"), config)
    shards, size = [{}], 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name], size = tensor, size + nbytes
    if len(shards) == 1:
        _write_safetensors(os.path.join(folder, WEIGHTS_NAME), shards[0])
        return
    stem, weight_map = WEIGHTS_NAME.removesuffix(".safetensors"), {}
    for k, shard in enumerate(shards):
        file_name = f"{stem}-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        _write_safetensors(os.path.join(folder, file_name), shard)
        weight_map.update(dict.fromkeys(shard, file_name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    _write_json(os.path.join(folder, WEIGHTS_NAME + ".index.json"), {"metadata": {"total_size": total},
                                                                      "weight_map": weight_map})


def _write_safetensors(path, tensors: dict) -> None:
    write_file(path, lambda temporary: save_file(tensors, temporary, metadata={"format": "pt"}))


def write_synthetic_checkpoints(cfg, device: str = "cpu", seed: int = 0, parts=PARTS, layout: str = "sat",
                                max_shard_bytes: int = 5 * 2**30) -> dict:
    """Write `parts` (default all) of `cfg`'s transformer, VAE and T5 with random weights; returns their paths.

    `layout` 'sat' writes where the config's three paths point; 'diffusers' writes all parts into one folder,
    the one `args.load` names, with safetensors shards of at most `max_shard_bytes`. Every folder is claimed
    (see `synthetic_folders.claim_part_folders`) before the first file is written.
    """
    paths = weight_paths(cfg, layout)
    network = OmegaConf.to_container(cfg.model.network_config.params)
    vae_params = OmegaConf.to_container(cfg.model.first_stage_config.params)
    t5 = OmegaConf.to_container(cfg.model.tiny_t5) if "tiny_t5" in cfg.model else FULL_T5
    if t5["d_model"] != network["text_hidden_size"]:
        raise ValueError(f"T5 d_model {t5['d_model']} != the DiT's text_hidden_size {network['text_hidden_size']}")
    if layout == "diffusers":
        parts = PARTS
    claim_part_folders(paths, parts)
    dtype = run_dtype(cfg.args)
    if "transformer" in parts:
        dit = build_random(DiffusionTransformer, {**network, "skip_init": True}, device, dtype, seed)
        dit_weights = {k: v.cpu() for k, v in dit.state_dict().items()}
        del dit
        if layout == "diffusers":
            write_diffusers_component(NameMap(TRANSFORMER_NAMES).to_diffusers(dit_weights), paths["transformer"],
                                      transformer_config(network), max_shard_bytes)
        else:
            write_transformer_checkpoint(dit_weights, paths["transformer"])
        del dit_weights
    if "vae" in parts:
        vae = build_random(CogVideoXVAE, vae_params, device, torch.float32, seed + 1)
        vae_weights = {k: v.cpu() for k, v in vae.state_dict().items()}
        del vae
        if layout == "diffusers":
            write_diffusers_component(NameMap(VAE_NAMES, levels=len(vae_params["ch_mult"])).to_diffusers(vae_weights),
                                      paths["vae"], vae_config(vae_params, cfg.model.scale_factor), max_shard_bytes)
        else:
            write_vae_checkpoint(vae_weights, paths["vae"])
    if "t5" in parts:
        write_t5_folder(paths["t5"], **t5, dtype=dtype if dtype != torch.float32 else torch.float16, seed=seed + 2,
                        device=device, tokenizer_folder=paths["tokenizer"])
    if layout == "diffusers":  # model_index.json last: the folder is recognised once it is complete
        _write_json(os.path.join(paths["root"], "scheduler", "scheduler_config.json"),
                    scheduler_config(cfg.model.sampler_config.params.shift_scale))
        _write_json(os.path.join(paths["root"], MODEL_INDEX), model_index())
    return {part: paths[part] for part in parts}
