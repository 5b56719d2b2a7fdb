"""DiTCtrl on CogVideoX-2B: tuning-free multi-prompt long video generation on SwissArmyTransformer.

This package lives in the repository's ``sat/`` folder, which is deliberately *not* a Python
package, so that ``import sat`` keeps resolving to SwissArmyTransformer.
"""
