"""DiTCtrl on CogVideoX-2B: tuning-free multi-prompt long video generation on SwissArmyTransformer.

This package lives in the repository's ``sat/`` folder, which is deliberately *not* a Python
package, so that ``import sat`` keeps resolving to SwissArmyTransformer.

Every entry point imports this package before torch, SAT or transformers, so the settings below reach them all
(the run scripts, a direct `python sat/...`, torchrun, the tests). A user's own environment values win.
"""
import logging
import os

# Short OpenMP spin-waits: libgomp reads GOMP_SPINCOUNT once, when torch loads it; its default spinning makes CPU
# runs many times slower when other processes share the cores (a tiny forward: 4.1 s next to a second job, 0.1 s
# with this).
os.environ.setdefault("GOMP_SPINCOUNT", "1000")
# SAT logs INFO lines when imported and set up (e.g. "DeepSpeed/CUDA is not installed, fallback to Pytorch
# checkpointing."); they would stand before a run's one-line error. Its warnings and errors still show.
os.environ.setdefault("SAT_LOGLEVEL", "WARNING")


def _not_deepspeed_accelerator_guess(record: logging.LogRecord) -> bool:
    """DeepSpeed (imported by SAT and transformers) warns on stdout that it falls back to the CPU when it finds no
    GPU, in every process; nothing here runs on DeepSpeed's accelerator (the device is args.device's)."""
    return not record.getMessage().startswith("Setting accelerator to CPU.")


logging.getLogger("DeepSpeed").addFilter(_not_deepspeed_accelerator_guess)  # kept when DeepSpeed sets up its logger
