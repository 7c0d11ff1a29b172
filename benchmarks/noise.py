"""How much of its accuracy the speech champion keeps on noisy recordings.

`noise_robustness` scores the store's champion (as the `streaming` section finds or trains it)
on the test split's word clips (the ten keywords and `_unknown_`; `_silence_` is noise
already), clean and with white noise added at fixed levels (RMS as a fraction of full scale;
the shared data's words sit at an RMS of about 0.05, its `_background_noise_` recordings at
0.002-0.006). A microphone in a room adds noise of this kind; training mixes the
`_background_noise_` recordings in at up to `--noise-volume` of their level.
"""

from __future__ import annotations

import numpy as np

from benchmarks.streaming import trained_predictor
from benchmarks.suite import Figure, Options
from features.speech_commands import SplitConfig, load_speech_commands
from features.speech_features import ExampleDecoder

NOISE_RMS = (0.001, 0.003, 0.01, 0.03)  # white noise added, fraction of full scale


def with_white_noise(clips: np.ndarray, rms: float, seed: int = 0) -> np.ndarray:
    """`clips` with seeded white noise of RMS `rms` added, clipped to [-1, 1]."""
    noise = np.random.default_rng(seed).standard_normal(clips.shape).astype(np.float32)
    return np.clip(clips + rms * noise, -1.0, 1.0)


def noise_robustness(options: Options) -> list[Figure]:
    """Test-split word-clip accuracy at each NOISE_RMS level against the clean clips'."""
    speech_dir = options.data_dir / "speech_commands"
    predictor = trained_predictor(options)
    data = load_speech_commands(speech_dir, SplitConfig(), predictor.spec)
    test = [example for example in data.examples["test"] if not example.is_silence]
    decoded = ExampleDecoder(test, speech_dir, predictor.spec).chunk(0, len(test))
    truth = np.array([test[index].label for index in decoded.kept])

    def accuracy(waveforms: np.ndarray) -> float:
        found = np.array(predictor.labels)[predictor.clip_probabilities(waveforms).argmax(1)]
        return 100 * float(np.mean(found == truth))

    clean = accuracy(decoded.waveforms)
    where = f"{len(truth)} test-split word clips"
    return [Figure("noise", f"accuracy, white noise at RMS {rms:g} ({where})",
                   accuracy(with_white_noise(decoded.waveforms, rms)), "%",
                   reference="the clean clips", reference_value=clean)
            for rms in NOISE_RMS]
