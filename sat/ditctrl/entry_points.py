"""What each entry script can run, the files it will write, and every check derived from that, before torch.

An entry point names its plan ("long": windows denoised as source/target pairs and blended; "clip": all
prompts in one batch from one noise), the controllers it accepts and its prompt count. Together with the
controller registry (controllers.py) this decides whether a run can work, so a combination that cannot
is refused with one line before any model is built.
"""
from dataclasses import dataclass

from .config import check_index_range, has_control_characters, mask_folder
from .controllers import ALL_PROMPTS, CONTROLLERS, SOURCE_PROMPTS, TARGET_PROMPTS, scheduled
from .run_size import window_count
from .segment_layout import SegmentLayout, segment_layout, video_frames


@dataclass(frozen=True)
class EntryPoint:
    script: str
    plan: str                 # "long" or "clip"
    controllers: tuple        # the mixin names it accepts
    prompt_count: int | None  # exactly this many prompts (after single_prompt_length), or any
    stem: str                 # output file stem
    prompt_roles: tuple = ()  # clip: one extra file per prompt, named by its role


PAIR_CONTROLLERS = tuple(name for name, spec in CONTROLLERS.items() if spec.batch == "pair")
ENTRY_POINTS = {
    "sample_video": EntryPoint("sample_video.py", "long", PAIR_CONTROLLERS, None, "MultiPrompt"),
    "sample_video_edit": EntryPoint("sample_video_edit.py", "clip", PAIR_CONTROLLERS, 2, "editing",
                                    ("source", "target")),
    "sample_video_visualize": EntryPoint("sample_video_visualize.py", "clip", ("VisualizeAdaLNMixin",), 1,
                                         "visualization", ("prompt",)),
}
PROMPT_DESCRIPTIONS = {2: "exactly 2 prompts (source, target)", 1: "exactly 1 prompt"}


def prompt_stem(prompt: str, limit: int = 120, byte_limit: int = 200) -> str:
    """The original's file-name form of a prompt: spaces -> '_', '/' removed, first `limit` characters; then at most
    `byte_limit` bytes in UTF-8 (a file name holds 255 bytes; a CJK character takes 3), cut between characters.
    Line breaks and tabs become '_' too, and other control characters are removed: a file name never holds them."""
    stem = "".join("_" if character.isspace() else character for character in prompt.replace("/", "")
                   if character.isspace() or not has_control_characters(character))
    return stem[:limit].encode()[:byte_limit].decode(errors="ignore")


@dataclass(frozen=True)
class VideoFiles:
    """The files one controller's generation writes, relative to output_dir."""
    together: str        # the long video, or all prompts of a clip side by side
    per_prompt: tuple    # clip: one file per prompt role (empty with one prompt)


@dataclass(frozen=True)
class RunPlan:
    entry: EntryPoint
    prompts: list
    layout: SegmentLayout | None  # long plans only
    videos: dict                  # controller name -> VideoFiles
    isolated: tuple               # long plans with is_run_isolated: one file per prompt, then their concatenation
    decoded_frames: int           # frames of each video one decode call produces
    prompt_pieces: tuple = ()     # each prompt's T5 pieces by token index (figure labels), once the tokenizer is read

    @property
    def files(self) -> list:
        return [f for v in self.videos.values() for f in (v.together, *v.per_prompt)] + list(self.isolated)


def plan_run(entry: EntryPoint, args, prompts) -> RunPlan:
    """The run's windows (long plans) and output files; several controllers put their name in the file names."""
    names = list(args.adaln_mixin_names)
    tile_frames = video_frames(args.sampling_num_frames)
    layout, isolated = None, ()
    if entry.plan == "long":
        layout = segment_layout(len(prompts), args.sampling_num_frames, args.overlap_size, args.num_transition_blocks,
                                args.longer_mid_segment)
        frames, roles = layout.video_frames, ()
        if args.is_run_isolated:
            isolated = (*(f"isolated/{p}_{prompt_stem(prompt)}_frames{tile_frames}.mp4" for p, prompt in enumerate(prompts)),
                        f"isolated/all_frames{tile_frames * len(prompts)}.mp4")
    else:
        frames, roles = tile_frames, entry.prompt_roles if len(entry.prompt_roles) > 1 else ()
    videos = {}
    for name in names:
        tag = f"_{name}" if len(names) > 1 else ""
        videos[name] = VideoFiles(f"{entry.stem}{tag}_frames{frames}.mp4",
                                  tuple(f"{entry.stem}{tag}_{role}_frames{frames}.mp4" for role in roles))
    return RunPlan(entry, list(prompts), layout, videos, isolated, frames)


def check_run(entry: EntryPoint, cfg, prompt_count: int) -> None:
    """Everything that needs no weights: controllers this entry can run, prompt count (after single_prompt_length),
    the model's limits."""
    args = cfg.args
    for name in args.adaln_mixin_names:
        if name not in entry.controllers:
            hosts = [e.script for e in ENTRY_POINTS.values() if name in e.controllers]
            raise ValueError(f"{entry.script} cannot run {name} (it accepts {', '.join(entry.controllers)}); "
                             f"{name} runs in {' or '.join(hosts)}")
    if entry.prompt_count is not None and prompt_count != entry.prompt_count:
        raise ValueError(f"{entry.script} needs {PROMPT_DESCRIPTIONS[entry.prompt_count]}, got {prompt_count}")
    check_model_fit(cfg)
    check_is_edit(entry, args, prompt_count)


def check_is_edit(entry: EntryPoint, args, num_prompts: int) -> None:
    """The original's `is_edit` (a key of its configs) set how its KV-sharing and mask-guided controllers counted
    sampler steps: one per DiT forward (True), or one per S - 1 forwards (False; S = P + NB(P-1) + LM(P-2), its
    window count). Every controller here is told the true sampler step, which is what the original did when that
    count matched the forwards of a step: then the key has no effect (a note says so); otherwise it asks for a
    step count this implementation does not reproduce and is refused."""
    if "is_edit" not in args or not any(CONTROLLERS[name].steps_by_is_edit for name in args.adaln_mixin_names):
        return
    windows = window_count(num_prompts, args.num_transition_blocks, args.longer_mid_segment)
    forwards = windows - 1 if entry.plan == "long" else 1  # DiT forwards per sampler step: one per window pair
    original_windows = (num_prompts + args.num_transition_blocks * (num_prompts - 1)
                        + args.longer_mid_segment * (num_prompts - 2))
    counted = {True: 1, False: original_windows - 1}  # forwards per step of the original's counter
    if forwards and counted[args.is_edit] != forwards:
        fitting = [value for value, count in counted.items() if count == forwards]
        instead = f"set is_edit: {fitting[0]} or delete it" if fitting else "delete it"
        every = "every DiT forward" if counted[args.is_edit] == 1 else f"every {counted[args.is_edit]} DiT forwards"
        raise ValueError(f"args.is_edit = {args.is_edit} made the original's step counter advance after {every}, "
                         f"but {entry.script} runs {forwards} per sampler step here, so its controlled steps would "
                         f"not be the sampler's; this implementation always controls the true sampler steps: {instead}")


def check_model_fit(cfg) -> None:
    """The window fits the model (odd, within its position table); every step and layer index the run's
    controllers read exists."""
    args = cfg.args
    network = cfg.model.network_config.params
    latent_frames = (network.num_frames - 1) // network.time_compressed_rate + 1
    tile = args.sampling_num_frames
    if tile % 2 == 0 or tile > latent_frames:
        raise ValueError(f"args.sampling_num_frames = {tile}: must be odd (the VAE decodes 1 + 2k latent frames) "
                         f"and at most {latent_frames}, the latent frames this model was trained with")
    num_layers, num_steps = network.num_layers, cfg.model.sampler_config.params.num_steps
    ranges = [("start_layer", num_layers), ("start_step", num_steps), ("layer_idx", num_layers),
              ("step_idx", num_steps)]
    for name in args.adaln_mixin_names:
        spec = CONTROLLERS[name]
        ranges += [(key, num_steps) for key in spec.step_keys] + [(key, num_layers) for key in spec.layer_keys]
    for key, upper in ranges:
        check_index_range(key, args[key], upper)


def token_checks(args, num_prompts: int) -> list:
    """(args key, indices, prompt positions) of every token index the run's controllers read."""
    positions = {SOURCE_PROMPTS: range(num_prompts - 1), TARGET_PROMPTS: range(1, num_prompts),
                 ALL_PROMPTS: range(num_prompts)}
    return [(key, args[key], positions[role]) for name in args.adaln_mixin_names
            for key, role in CONTROLLERS[name].token_keys]


def check_token_indices(args, counts) -> None:
    """Every token index must name a real token (not padding) of the prompts it indexes; `counts` are the
    prompts' token counts (pieces plus </s>). The error shows the count and how to list the tokens."""
    if any(CONTROLLERS[name].equal_token_counts for name in args.adaln_mixin_names) and len(set(counts)) > 1:
        raise ValueError(f"reweighting needs prompts with the same number of tokens, got {', '.join(map(str, counts))} "
                         f"(the token index must name the same word in each)")
    for key, indices, positions in token_checks(args, len(counts)):
        for p in positions:
            for index in [indices] if isinstance(indices, int) else indices:
                if not 0 <= index < counts[p]:
                    raise ValueError(f"args.{key} = {index} is outside prompt {p} ({counts[p]} tokens including "
                                     f"</s>): list them with python sat/show_tokens.py --prompt \"...\"")


ORIGINAL_DEPTH = 30  # CogVideoX-2B's layers: the original's only model, for which its cases count their layers
MASK_GUIDED = "KVSharingMaskGuidedAdaLNMixin"


def plan_notes(cfg, plan: RunPlan) -> list:
    """What a user should know before the run starts: a layer range written for CogVideoX-2B on a model of
    another depth, and how many mask PNGs mask-guided will write."""
    return [note for note in (layer_range_note(cfg), mask_files_note(cfg, plan)) if note]


def _indices_text(indices) -> str:
    """Sorted ints as `a-b` when consecutive, else listed."""
    if len(indices) > 1 and indices[-1] - indices[0] == len(indices) - 1:
        return f"{indices[0]}-{indices[-1]}"
    return ", ".join(map(str, indices))


def layer_range_note(cfg) -> str | None:
    """On a model whose depth is not CogVideoX-2B's 30 layers, a controlled layer range that lies within 0..29 was
    most likely written for 2B (every case of the original was): it is used as written, not scaled, and the note
    names the part of this model's depth it controls and the keys that would control the same part."""
    args, network = cfg.args, cfg.model.network_config.params
    depth = network.num_layers
    if depth == ORIGINAL_DEPTH or not any("start_layer" in CONTROLLERS[name].keys for name in args.adaln_mixin_names):
        return None
    layers = sorted(layer for layer in scheduled(args)[1] if layer < depth)
    if not layers or layers[-1] >= ORIGINAL_DEPTH:
        return None
    scaled = sorted({round(layer * depth / ORIGINAL_DEPTH) for layer in layers})
    if args.layer_idx is not None:
        written, same_part = f"args.layer_idx {list(args.layer_idx)}", f"args.layer_idx={scaled}"
    else:
        written = f"args.start_layer {args.start_layer}, args.end_layer {args.end_layer}"
        same_part = (f"args.start_layer={round(args.start_layer * depth / ORIGINAL_DEPTH)} "
                     f"args.end_layer={round(args.end_layer * depth / ORIGINAL_DEPTH)}")
    return (f"note: {written} control layers {_indices_text(layers)} of {cfg.model.name}'s {depth}, as written (the "
            f"original's cases count CogVideoX-2B's {ORIGINAL_DEPTH}); the same part of this model's depth is "
            f"{same_part}")


def mask_files_note(cfg, plan: RunPlan) -> str | None:
    """How many mask PNGs mask-guided writes: source and target per controlled step, controlled layer and window
    pair (a window pair per step of a long video; one pair in an edit)."""
    args = cfg.args
    if MASK_GUIDED not in args.adaln_mixin_names or not args.save_masks:
        return None
    steps, layers = scheduled(args)
    num_steps, depth = cfg.model.sampler_config.params.num_steps, cfg.model.network_config.params.num_layers
    steps, layers = len(steps & set(range(num_steps))), len(layers & set(range(depth)))
    pairs = plan.layout.num_windows - 1 if plan.layout is not None else 1
    count = 2 * steps * layers * pairs
    if not count:
        return None
    return (f"note: {MASK_GUIDED} writes {count} mask PNGs (controlled steps {steps} x layers {layers} x window pairs "
            f"{pairs} x source and target) to {mask_folder(args, args.output_dir)}; args.save_masks=False writes none")
