"""SAT -> diffusers key mapping for the CogVideoX transformer (docs/weights.md, "Name map"), test-only."""
import torch


def sat_to_diffusers(sd: dict, hidden_size: int) -> dict:
    """Map our SAT state dict (no prefix) to `CogVideoXTransformer3DModel` keys."""
    out = {}
    for key, value in sd.items():
        if key == "mixins.pos_embed.pos_embedding":
            continue
        parts = key.split(".")
        if key.startswith("time_embed."):
            out[f"time_embedding.linear_{1 if parts[1] == '0' else 2}.{parts[2]}"] = value
        elif key.startswith("mixins.patch_embed."):
            out["patch_embed." + ".".join(parts[2:])] = value
        elif key.startswith("transformer.final_layernorm."):
            out["norm_final." + parts[-1]] = value
        elif key.startswith("mixins.final_layer.norm_final."):
            out["norm_out.norm." + parts[-1]] = value
        elif key.startswith("mixins.final_layer.adaLN_modulation.1."):
            out["norm_out.linear." + parts[-1]] = value
        elif key.startswith("mixins.final_layer.linear."):
            out["proj_out." + parts[-1]] = value
        elif key.startswith("mixins.adaln_layer.adaLN_modulations."):
            i, kind = parts[3], parts[-1]
            blocks = value.split(hidden_size)
            out[f"transformer_blocks.{i}.norm1.linear.{kind}"] = torch.cat([blocks[j] for j in (0, 1, 2, 6, 7, 8)])
            out[f"transformer_blocks.{i}.norm2.linear.{kind}"] = torch.cat([blocks[j] for j in (3, 4, 5, 9, 10, 11)])
        elif key.startswith("mixins.adaln_layer.query_layernorm_list."):
            out[f"transformer_blocks.{parts[3]}.attn1.norm_q.{parts[-1]}"] = value
        elif key.startswith("mixins.adaln_layer.key_layernorm_list."):
            out[f"transformer_blocks.{parts[3]}.attn1.norm_k.{parts[-1]}"] = value
        elif key.startswith("transformer.layers."):
            i, rest = parts[2], ".".join(parts[3:])
            block = f"transformer_blocks.{i}."
            if rest.startswith("attention.query_key_value."):
                q, k, v = value.chunk(3)
                for name, part in zip(("to_q", "to_k", "to_v"), (q, k, v)):
                    out[f"{block}attn1.{name}.{parts[-1]}"] = part
            else:
                renamed = {
                    "input_layernorm": "norm1.norm",
                    "post_attention_layernorm": "norm2.norm",
                    "attention.dense": "attn1.to_out.0",
                    "mlp.dense_h_to_4h": "ff.net.0.proj",
                    "mlp.dense_4h_to_h": "ff.net.2",
                }[rest.rsplit(".", 1)[0]]
                out[f"{block}{renamed}.{parts[-1]}"] = value
        else:
            raise KeyError(f"no diffusers counterpart for {key}")
    return out
