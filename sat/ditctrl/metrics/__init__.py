"""Judging generated videos: the paper's metrics, the t-SNE of the frames, the similarity curve, the batch comparison.

One job per module:

* `command_line`: the scripts' shared options and one-line argument errors, result-file names;
* `model_files`: where the CLIP and AMT-S weights are (local folders and files only), checked before any model work;
* `video_inputs`: the videos a command scores, each read and checked (at least 3 frames) before any model work;
* `clip_input`: frames -> ADM centre crop -> CLIP-normalised pixels;
* `clip_features`: CLIP vision (pooler output, projected image embeddings) and text embeddings, in batches;
* `cscv`: the original's CSCV score from frame features;
* `text_similarity`: CLIP text-frame similarity of each prompt over its own part of the video;
* `prompt_parts`: which prompt each frame belongs to, from the run's params.yaml (window layout);
* `amt`: the AMT-S frame-interpolation network (VBench's motion-smoothness model);
* `motion_smoothness`: VBench's motion-smoothness score with it;
* `video_scores`: every metric of one video from one read and one CLIP pass;
* `plots`: the t-SNE scatter, the similarity curve and the batch figure;
* `case_runs`: the one place that runs a case file through the generation scripts;
* `batch`: the batch comparison (DiTCtrl against the isolated baseline over a folder of cases);
* `results_tables`: results.csv and results.md.

The scripts that use them are in the repository's `metrics/` folder; docs/metrics.md defines every number.
"""
