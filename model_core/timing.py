"""Time in DiffGesture, torch-free: the audio's sample rate, the motion's frame rate, and the 34-frame windows long
audio is cut into at inference (FACTS §8), with the training clip's length named apart from the inference window.
One home, so that the BVH writer, the add-on and training read the same numbers without importing the network."""
from __future__ import annotations

import math

SAMPLE_RATE = 16000  # the audio encoder's input rate
FPS = 15  # the motion's frame rate
WINDOW_FRAMES = 34  # frames the network denoises at once
STRIDE_SECONDS = 2.0  # between window starts at inference (30 frames)
UNIT_SECONDS = WINDOW_FRAMES / FPS  # one window's span
# Both faithful to the official code, and they differ by one sample: the long-audio generator cuts int(34/15 * sr)
# samples per window, the training set's clips hold 36,267.
WINDOW_SAMPLES = int(UNIT_SECONDS * SAMPLE_RATE)  # 36,266: the inference window
TRAIN_CLIP_SAMPLES = 36267  # a training clip for 34 frames


def window_count(n_samples: int, sr: int = SAMPLE_RATE) -> int:
    """Number of windows the official long-audio generator uses for a clip of n_samples."""
    duration = n_samples / sr
    return 1 if duration < UNIT_SECONDS else math.ceil((duration - UNIT_SECONDS) / STRIDE_SECONDS) + 1


def output_frames(n_samples: int, trim: bool = True, sr: int = SAMPLE_RATE) -> int:
    """Frames produced for a clip: whole windows (34 + 30 (K-1)), or cut to the clip's span at 15 fps (the frames at
    the instants k/15 s up to and including the clip's end)."""
    full = WINDOW_FRAMES + 30 * (window_count(n_samples, sr) - 1)
    return min(full, math.floor(n_samples / sr * FPS) + 1) if trim else full


def window_start(n_samples: int, i: int) -> int:
    """First sample of window i, as the official code places it (start time / duration of the clip)."""
    return math.floor(STRIDE_SECONDS * i / (n_samples / SAMPLE_RATE) * n_samples)
