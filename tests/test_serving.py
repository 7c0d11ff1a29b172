"""Training and serving compute features with the same code: proven on real clips and reviews."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile

from features.audio import decode_clip
from features.mfcc import MfccConfig, feature_shape
from features.speech_commands import TWELVE_CLASS_LABELS, Example
from features.speech_features import compute_features
from features.text import encode_reviews, fit_vectorizer
from models.recurrent import text_to_probabilities
from pipelines.serving import SpeechPredictor, TextPredictor
from pipelines.speech import waveform_classifier
from tests.builders import frame_classifier, text_classifier

LABELS = TWELVE_CLASS_LABELS


def real_clips(shared_speech_dir: Path, per_word: int = 3) -> list[Example]:
    return [Example(word, path.relative_to(shared_speech_dir).as_posix())
            for word in ("yes", "no", "bed")
            for path in sorted((shared_speech_dir / word).glob("*.wav"))[:per_word]]


@pytest.mark.parametrize("takes", ["waveforms", "frames"])
def test_served_speech_features_and_predictions_equal_training(shared_speech_dir: Path,
                                                                tmp_path: Path, takes: str):
    """The served model takes waveforms, its MFCC stage a Keras layer; training reads frames
    from the feature cache: both give the same frames and probabilities (and so do versions
    logged over frames)."""
    mfcc = MfccConfig()
    examples = real_clips(shared_speech_dir)
    training_frames = compute_features(examples, shared_speech_dir, mfcc).rows
    model = frame_classifier(feature_shape(mfcc), len(LABELS), mean=np.zeros(mfcc.n_mfcc),
                             variance=np.ones(mfcc.n_mfcc), units=4, depth=1)
    logged = waveform_classifier(model, mfcc) if takes == "waveforms" else model
    logged.save(tmp_path / "classifier.keras")
    SpeechPredictor(logged, LABELS, mfcc).save_config(tmp_path / "config.json")
    served = SpeechPredictor.load(tmp_path / "classifier.keras", tmp_path / "config.json")
    assert served.takes_waveforms == (takes == "waveforms")

    rows = [{"audio": (shared_speech_dir / e.path).read_bytes()} for e in examples]
    clips, errors = served.clips(rows)
    assert errors == [None] * len(examples)
    inputs = served.model_inputs(clips)
    served_frames = (served.model.get_layer(index=1)(inputs).numpy() if served.takes_waveforms
                     else inputs)
    # the same maths: equal up to float32 rounding, which the request's batch size can change
    np.testing.assert_allclose(served_frames, training_frames, rtol=1e-5, atol=1e-4)

    expected = model.predict(training_frames, verbose=0)
    answer = served.predict(pd.DataFrame(rows))
    many = served.predict(pd.DataFrame(rows * 8))  # above the direct-call size
    np.testing.assert_allclose(many.filter(like="probability_").to_numpy(),
                               np.tile(expected, (8, 1)), atol=1e-5)
    np.testing.assert_allclose(answer.filter(like="probability_").to_numpy(), expected,
                               atol=1e-5)
    assert answer["label"].tolist() == [LABELS[i] for i in expected.argmax(axis=1)]


def test_waveforms_at_any_rate_and_stereo_files_go_through_training_decoding(
        shared_speech_dir: Path):
    mfcc = MfccConfig()
    predictor = SpeechPredictor(None, LABELS, mfcc)
    path = shared_speech_dir / real_clips(shared_speech_dir, 1)[0].path
    samples, rate = soundfile.read(path, dtype="float32")
    # a 1-D waveform with its rate gives what decoding the file gives
    from_waveform = predictor.waveform({"waveform": samples.tolist(), "sample_rate": rate})
    np.testing.assert_array_equal(from_waveform, decode_clip(path, predictor.spec))
    # a stereo 44.1 kHz file is mixed down and resampled exactly as training decodes it
    stereo = io.BytesIO()
    soundfile.write(stereo, np.stack([samples, samples], 1), 44100, format="WAV",
                    subtype="FLOAT")
    served = predictor.waveform({"audio": stereo.getvalue()})
    assert served.shape == (mfcc.clip_samples,)
    np.testing.assert_array_equal(served, decode_clip(stereo.getvalue(), predictor.spec))


def test_bad_clips_get_their_own_error_and_the_others_an_answer(shared_speech_dir: Path):
    mfcc = MfccConfig()
    model = frame_classifier(feature_shape(mfcc), len(LABELS), mean=np.zeros(mfcc.n_mfcc),
                             variance=np.ones(mfcc.n_mfcc), units=4, depth=1)
    good = (shared_speech_dir / real_clips(shared_speech_dir, 1)[0].path).read_bytes()
    answer = SpeechPredictor(model, LABELS, mfcc).predict(pd.DataFrame({
        "audio": [b"GIF89a not audio", good, None, None],
        "waveform": [None, None, [0.1, 0.2], None],
        "sample_rate": [None, None, None, None]}))
    assert answer.loc[0, "error"].startswith("audio: not decodable audio")
    assert pd.isna(answer.loc[1, "error"]) and answer.loc[1, "label"] in LABELS
    assert answer.loc[2, "error"] == "waveform: needs a positive sample_rate (Hz)"
    assert "expected 'audio' (file bytes) or 'waveform'" in answer.loc[3, "error"]
    assert answer.drop(index=1).filter(like="probability_").isna().all().all()


def real_reviews(shared_imdb_dir: Path, count: int) -> list[str]:
    paths = sorted((shared_imdb_dir / "train" / "pos").glob("*.txt"))[:count]
    paths += sorted((shared_imdb_dir / "train" / "neg").glob("*.txt"))[:count]
    return [path.read_text(encoding="utf-8") for path in paths]


def test_served_text_ids_and_predictions_equal_training(shared_imdb_dir: Path, tmp_path: Path):
    vectorizer = fit_vectorizer(real_reviews(shared_imdb_dir, 200), 2000, 120)
    classifier = text_classifier(2000, 2, units=4, embedding_dim=8)
    reviews = real_reviews(shared_imdb_dir, 205)[-10:]  # not seen by the vocabulary fit
    training_ids = encode_reviews(vectorizer, reviews)
    expected = classifier.predict(training_ids, verbose=0)

    text_to_probabilities(vectorizer, classifier).save(tmp_path / "classifier.keras")
    served = TextPredictor.load(tmp_path / "classifier.keras", ("neg", "pos"))
    served_ids = served.keras_model.get_layer("token_ids")(np.asarray(reviews)).numpy()
    np.testing.assert_array_equal(served_ids, training_ids)
    answer = served.predict(pd.DataFrame({"text": reviews}))
    np.testing.assert_allclose(answer[["probability_neg", "probability_pos"]].to_numpy(),
                               expected, atol=1e-6)
    many = reviews * 8  # above the direct-call size: the Model.predict path
    np.testing.assert_allclose(
        served.predict(pd.DataFrame({"text": many}))[["probability_neg", "probability_pos"]],
        np.tile(expected, (8, 1)), atol=1e-6)
    no_tokens = served.predict(pd.DataFrame({"text": ["!!! ..."]}))  # one OOV token, as trained
    assert no_tokens.loc[0, "label"] in ("neg", "pos") and pd.isna(no_tokens.loc[0, "error"])
    bad = served.predict(pd.DataFrame({"text": ["", reviews[0], None]}))
    assert bad["error"].tolist()[0] == "text: expected a non-empty review string"
    assert pd.isna(bad.loc[1, "error"]) and bad.loc[1, "label"] in ("neg", "pos")
    assert bad.loc[2, "error"] == "text: expected a non-empty review string"
