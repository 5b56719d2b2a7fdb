"""The videos a metric command scores: found (a file, or a folder walked like the original's scripts), then each
read and checked before any model work (readable, at least 3 frames)."""
import os

from tqdm import tqdm

from ..video_io import VideoClip, read_video

VIDEO_EXTENSIONS = (".mp4", ".webm", ".gif", ".mov", ".mkv", ".avi")
MIN_FRAMES = 3  # two adjacent-frame similarities; one interpolated frame for motion smoothness


def seed_folder(seed: int) -> str:
    """The folder name the original's --target_seed selects."""
    return f"seed_{seed}"


def find_videos(path: str, seed: int | None = None) -> list[str]:
    """`path` itself when it is a file; else every video below the folder `path` (sorted), only those inside a
    folder named seed_<seed> when `seed` is given. None found is a ValueError (one line)."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--video_path {path} is neither a video file nor a folder")
    wanted = None if seed is None else seed_folder(seed)
    found = []
    for root, folders, files in os.walk(path):
        folders.sort()
        if wanted is not None and wanted not in os.path.normpath(os.path.abspath(root)).split(os.sep):
            continue
        found += [os.path.join(root, name) for name in sorted(files)
                  if name.lower().endswith(VIDEO_EXTENSIONS) and not name.startswith(".")]
    if not found:
        where = f" inside a folder named {wanted}" if wanted else ""
        raise ValueError(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) in {path}{where}")
    return found


def read_checked(path: str) -> VideoClip:
    """The video's frames; fewer than MIN_FRAMES is a ValueError (one line)."""
    clip = read_video(path)
    if len(clip.frames) < MIN_FRAMES:
        raise ValueError(f"{path} has {len(clip.frames)} frame(s); the metrics need at least {MIN_FRAMES}")
    return clip


def check_videos(paths: list[str]) -> dict[str, int]:
    """Read every video once before any model work; path -> frame count. The first bad one is a one-line error."""
    return {path: len(read_checked(path).frames)
            for path in tqdm(paths, desc="checking videos", unit="video", disable=len(paths) < 2, leave=False)}
