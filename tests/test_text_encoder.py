"""T5 wrapper and the synthetic T5 folder, checked against raw SentencePiece and the generated weights."""
import json
import logging
import os
import re
import shutil
import sys

import pytest
import sentencepiece
import torch
from safetensors import safe_open
from transformers import T5Config, T5EncoderModel

from ditctrl.checkpoints import MissingCheckpointError, check_t5_folder
from ditctrl.config import MODEL_CONFIG
from ditctrl.synthetic_checkpoint import T5Dims, random_t5_tensors, train_sentencepiece, write_t5_folder
from ditctrl.text_encoder import T5TextEncoder, T5Tokens

DIMS = T5Dims(d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8)
SEED = 3
PROMPTS = [
    "A gentle close shot of a rose petal, where the camera gradually pulls back.",
    "pink teddy bear",
    "Zebras & quokkas at 11:59 -- double  spaces, ünïcödé and 4K!",
    "",
]
PAD, EOS = 0, 1


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t5-v1_1-xxl")
    write_t5_folder(folder, DIMS.d_model, DIMS.d_ff, DIMS.num_layers, DIMS.num_heads, DIMS.d_kv, seed=SEED)
    return folder


@pytest.fixture(scope="module")
def encoder(t5_folder):
    return T5TextEncoder(t5_folder)


@pytest.fixture(scope="module")
def spm(t5_folder):
    return sentencepiece.SentencePieceProcessor(model_file=str(t5_folder / "spiece.model"))


def reference_ids(spm, prompt, length=226):
    ids = spm.encode(prompt)[: length - 1] + [EOS]
    return ids + [PAD] * (length - len(ids))


def test_folder_has_the_files_of_the_real_download(t5_folder):
    assert sorted(os.listdir(t5_folder)) == [
        "added_tokens.json", "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json", "special_tokens_map.json", "spiece.model", "tokenizer_config.json",
    ]
    config = T5Config.from_pretrained(t5_folder)
    assert (config.d_model, config.d_ff, config.num_layers, config.num_heads, config.d_kv) == (32, 64, 2, 4, 8)
    assert config.vocab_size == 32128
    assert config.is_gated_act and config.dense_act_fn == "gelu_new"
    assert config.relative_attention_num_buckets == 32 and config.layer_norm_epsilon == 1e-6


def test_sentencepiece_model_is_deterministic_with_t5_special_ids(spm):
    assert train_sentencepiece() == train_sentencepiece()
    assert spm.get_piece_size() == 1000
    assert [spm.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    assert (spm.pad_id(), spm.eos_id(), spm.unk_id(), spm.bos_id()) == (0, 1, 2, -1)


def test_token_ids_equal_raw_sentencepiece_plus_eos_and_padding(encoder, spm):
    ids = encoder.tokenize(PROMPTS)

    assert ids.dtype == torch.int64 and ids.shape == (len(PROMPTS), 226)
    assert ids.tolist() == [reference_ids(spm, prompt) for prompt in PROMPTS]


def test_long_prompt_is_truncated_to_225_pieces_and_eos(encoder, spm):
    prompt = " ".join(["a slow dolly shot of a fox in the snow"] * 40)
    assert len(spm.encode(prompt)) > 226

    assert encoder.tokenize(prompt)[0].tolist() == reference_ids(spm, prompt)


def test_a_prompt_past_the_tokenizer_s_length_is_announced_once_without_transformers_warning(t5_folder, spm, capsys,
                                                                                              monkeypatch):
    """The cut is announced by our note alone: transformers' "Token indices sequence length is longer than the
    specified maximum sequence length ... will result in indexing errors" would alarm while the cut is on purpose."""
    for handler in logging.getLogger("transformers").handlers:  # made at its import, on the stderr of that time
        monkeypatch.setattr(handler, "stream", sys.stderr)
    prompt = " ".join(["a slow dolly shot of a fox in the snow"] * 40)
    count = len(spm.encode(prompt)) + 1
    assert T5Tokens(t5_folder).announce_cut_prompts([prompt]) == [(0, count)]
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"note: prompt 0 has {count} T5 tokens (with </s>) but the text context holds 226; its "
                                f"last {count - 226} tokens are cut: \"{prompt[:40]}...\""] and err == ""


def test_sentinel_tokens_sit_above_the_pieces_in_reverse_order_like_t5(encoder):
    to_id = encoder.tokenizer.convert_tokens_to_ids
    assert len(encoder.tokenizer) == 1100
    assert [to_id("<extra_id_0>"), to_id("<extra_id_99>")] == [1099, 1000]


def test_tokens_lists_positions_and_pieces_up_to_eos(encoder, spm):
    prompt = "pink teddy bear"
    pieces = encoder.tokens(prompt)
    ids = spm.encode(prompt)

    assert pieces == [(i, spm.id_to_piece(piece)) for i, piece in enumerate(ids)] + [(len(ids), "</s>")]


def test_weights_round_trip_through_the_two_shards(t5_folder):
    generated = dict(random_t5_tensors(DIMS, seed=SEED))
    with open(t5_folder / "model.safetensors.index.json") as f:
        index = json.load(f)

    assert sorted(index["weight_map"]) == sorted(generated)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in generated.values())
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(t5_folder / shard, framework="pt") as f:
            assert sorted(f.keys()) == sorted(k for k, s in index["weight_map"].items() if s == shard)
    loaded = T5EncoderModel.from_pretrained(t5_folder, local_files_only=True, dtype=torch.float16).state_dict()
    assert torch.equal(loaded.pop("encoder.embed_tokens.weight"), generated["shared.weight"])
    assert sorted(loaded) == sorted(generated)
    for name, tensor in generated.items():
        assert tensor.dtype == torch.float16
        assert torch.equal(loaded[name], tensor), name


def test_seed_changes_the_weights():
    first = dict(random_t5_tensors(DIMS, seed=0))
    second = dict(random_t5_tensors(DIMS, seed=1))
    assert not torch.equal(first["shared.weight"], second["shared.weight"])


def test_encode_gives_finite_model_dtype_features_of_all_226_positions(encoder):
    features = encoder.encode(PROMPTS[:2])

    assert features.shape == (2, 226, DIMS.d_model)
    assert features.dtype == torch.float16
    assert torch.isfinite(features).all()
    assert torch.equal(encoder.encode(PROMPTS[:2]), features)


def test_encode_attends_to_padding_like_cogvideox(encoder):
    """No attention mask: the output equals the unmasked model call and differs from a masked one."""
    ids = encoder.tokenize(PROMPTS[1])
    mask = (ids != PAD).long()
    with torch.no_grad():
        unmasked = encoder.model(input_ids=ids).last_hidden_state
        masked = encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state

    features = encoder.encode(PROMPTS[1])
    assert torch.equal(features, unmasked)
    assert not torch.allclose(features[:, :4], masked[:, :4], atol=1e-2)


def test_batched_prompts_are_encoded_independently(encoder):
    batch = encoder.encode(PROMPTS[:2])
    for i, prompt in enumerate(PROMPTS[:2]):
        torch.testing.assert_close(batch[i], encoder.encode(prompt)[0])


def test_encoder_dtype_follows_the_request(t5_folder):
    assert T5TextEncoder(t5_folder, dtype=torch.float32).encode("a cat").dtype == torch.float32


def test_release_frees_the_model_but_keeps_the_tokenizer(t5_folder):
    encoder = T5TextEncoder(t5_folder)
    encoder.release()

    assert encoder.model is None
    assert encoder.tokenize("a cat").shape == (1, 226)
    with pytest.raises(RuntimeError, match="released"):
        encoder.encode("a cat")


@pytest.mark.parametrize("prompts", [[], None, ["ok", 3]])
def test_bad_prompts_are_rejected(encoder, prompts):
    with pytest.raises(ValueError, match="prompts must be a string or a non-empty list of strings"):
        encoder.tokenize(prompts)


def test_vocab_smaller_than_the_tokenizer_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="vocab_size 1000 is smaller than the tokenizer's 1100 ids"):
        write_t5_folder(tmp_path, 32, 64, 1, 4, 8, vocab_size=1000)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("removed", ["spiece.model", "config.json", "model-00002-of-00002.safetensors"])
def test_check_t5_folder_names_the_missing_file(t5_folder, tmp_path, removed):
    broken = tmp_path / "t5"
    shutil.copytree(t5_folder, broken)
    os.remove(broken / removed)

    with pytest.raises(MissingCheckpointError, match=re.escape(str(broken / removed))):
        check_t5_folder(broken)
    with pytest.raises(MissingCheckpointError, match=re.escape(str(broken / removed))):
        T5TextEncoder(broken)


def test_check_t5_folder_accepts_a_complete_folder_and_names_a_missing_one(t5_folder, tmp_path):
    check_t5_folder(t5_folder)
    with pytest.raises(MissingCheckpointError, match=re.escape(str(tmp_path / "absent"))):
        check_t5_folder(tmp_path / "absent")


SHOWN = "a red cat on a sofa"


def shown_tokens(capsys, *argv) -> list[str]:
    """What show_tokens prints for SHOWN (in-process); a user error is its one stderr line."""
    import show_tokens
    try:
        show_tokens.main(["--prompt", SHOWN, *argv])
    except SystemExit as stop:
        assert stop.code == 2
        return capsys.readouterr().err.splitlines()
    return capsys.readouterr().out.splitlines()


def expected_listing(spm) -> list[str]:
    pieces = [spm.id_to_piece(i) for i in spm.encode(SHOWN)] + ["</s>"]
    return [f"prompt 0: {SHOWN}", *(f"  {index:4d}  {piece}" for index, piece in enumerate(pieces))]


def tokenizer_download(t5_folder, root):
    """What `hf download THUDM/CogVideoX-2b --include "tokenizer/*"` leaves: tokenizer/ alone, no model_index.json."""
    (root / "tokenizer").mkdir(parents=True)
    for name in ("spiece.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
        shutil.copy(t5_folder / name, root / "tokenizer" / name)
    return root


def base_with(tmp_path, **args) -> str:
    path = tmp_path / "model.yaml"
    path.write_text(json.dumps({"args": args, "model": {"conditioner_config": {"params": {
        "model_dir": str(tmp_path / "no_sat_t5")}}}}))
    return str(path)


def test_show_tokens_reads_a_tokenizer_only_download_by_default_and_by_path(t5_folder, spm, tmp_path, capsys):
    root = tokenizer_download(t5_folder, tmp_path / "CogVideoX-2b")
    expected = expected_listing(spm)
    assert shown_tokens(capsys, "--base", MODEL_CONFIG, base_with(tmp_path, load=str(root))) == expected
    assert shown_tokens(capsys, "--tokenizer", str(root)) == expected
    assert shown_tokens(capsys, "--tokenizer", str(root / "tokenizer")) == expected


def test_show_tokens_reads_the_sat_layout_s_spiece_model(t5_folder, spm, tmp_path, capsys):
    sat_t5 = tmp_path / "t5-v1_1-xxl"
    sat_t5.mkdir()
    shutil.copy(t5_folder / "spiece.model", sat_t5 / "spiece.model")
    expected = expected_listing(spm)
    assert shown_tokens(capsys, "--tokenizer", str(sat_t5 / "spiece.model")) == expected
    sat_base = tmp_path / "sat.yaml"
    sat_base.write_text(json.dumps({"args": {"load": str(tmp_path / "transformer")},
                                    "model": {"conditioner_config": {"params": {"model_dir": str(sat_t5)}}}}))
    assert shown_tokens(capsys, "--base", MODEL_CONFIG, str(sat_base)) == expected


def test_show_tokens_without_a_tokenizer_is_one_line_naming_the_download(tmp_path, capsys):
    assert shown_tokens(capsys, "--tokenizer", str(tmp_path)) == [
        f"error: no T5 tokenizer (spiece.model) at {tmp_path}; download it alone: "
        'hf download THUDM/CogVideoX-2b --include "tokenizer/*" --local-dir sat/CogVideoX-2b (huggingface_hub before '
        "0.34: huggingface-cli download with the same arguments)"]


def test_show_tokens_help_describes_it_in_a_whole_sentence(capsys):
    import show_tokens
    with pytest.raises(SystemExit):
        show_tokens.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Print the T5 tokens of prompts with their indices, to choose a case's token indices. options:" in text
