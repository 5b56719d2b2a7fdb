"""DiTCtrl on CogVideoX-2B: tuning-free multi-prompt long video generation on SwissArmyTransformer.

This package lives in the repository's ``sat/`` folder, which is deliberately *not* a Python
package, so that ``import sat`` keeps resolving to SwissArmyTransformer.
"""
import os

# SAT logs INFO lines when imported and set up (e.g. "DeepSpeed/CUDA is not installed, fallback to Pytorch
# checkpointing."); they would stand before a run's one-line error. Its warnings and errors still show; a user's
# SAT_LOGLEVEL wins.
os.environ.setdefault("SAT_LOGLEVEL", "WARNING")
