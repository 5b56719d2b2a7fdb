"""Units of work and (batch row × transformer layer) evaluations of the multi-prompt step (`MultiPromptDenoiser`),
counted from the layout alone: the benchmark's row-layer and FLOP totals and its model of several ranks."""
from ditctrl.distributed import deal
from ditctrl.multi_prompt import window_groups
from ditctrl.segment_layout import SegmentLayout


def row_layer_count(layout: SegmentLayout, num_steps: int, num_layers: int, controlled_steps, first_shared_layer: int,
                    share_work: bool) -> int:
    """(batch row × transformer layer) evaluations of one multi-prompt run of `num_steps` steps.

    `controlled_steps`: the steps where the controller acts; `first_shared_layer`: the first layer that
    needs the pair batch in those steps (0 for controllers other than KV-sharing).
    """
    windows = layout.num_windows
    if windows == 1:
        return num_steps * 2 * num_layers
    pair_step = 4 * (windows - 1) * num_layers
    if not share_work:
        return num_steps * pair_step
    controlled = len(set(controlled_steps) & set(range(num_steps)))
    window_step = 2 * windows * num_layers
    shared_step = 2 * windows * first_shared_layer + 4 * (windows - 1) * (num_layers - first_shared_layer)
    return (num_steps - controlled) * window_step + controlled * shared_step


def rank_work(layout: SegmentLayout, size: int, num_layers: int, first_shared_layer: int,
              max_batch_windows: int = 2) -> dict:
    """Each rank's work in one step of each kind, with the units dealt to `size` ranks (layouts of >= 2 windows).

    Kinds: "pairs" (steps without work sharing, and controlled steps of controllers other than KV-sharing),
    "window_groups" (shared steps where the controller does not act), "window_layers_and_pair_tails"
    (KV-sharing's controlled steps with work sharing: the pair tails are dealt; `groups` counts the window
    groups whose first `first_shared_layer` layers the rank runs for its pairs). Per rank: `units`, `row_layers`
    (batch rows × transformer layers, as `row_layer_count`).
    """
    pairs, groups = layout.num_windows - 1, window_groups(layout.num_windows, max_batch_windows)
    work = {"pairs": [{"units": len(block), "row_layers": 4 * num_layers * len(block)} for block in deal(pairs, size)],
            "window_groups": [{"units": len(block), "row_layers": 2 * num_layers * sum(len(groups[g]) for g in block)}
                              for block in deal(len(groups), size)],
            "window_layers_and_pair_tails": []}
    for block in deal(pairs, size):
        needed = [g for g in groups if block and g[-1] >= block.start and g[0] <= block.stop]
        work["window_layers_and_pair_tails"].append({
            "units": len(block), "groups": len(needed),
            "row_layers": 2 * first_shared_layer * sum(map(len, needed))
            + 4 * (num_layers - first_shared_layer) * len(block)})
    return work
