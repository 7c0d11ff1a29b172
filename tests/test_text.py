from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import scipy.sparse
import tensorflow as tf

from features.imdb import HTML_TAG_RE, unusable
from features.text import (
    OOV_ID,
    PADDING_ID,
    encode_reviews,
    fit_ngram_vectorizer,
    fit_vectorizer,
    load_vocabulary,
    log_count_ratio,
    make_vectorizer,
    ngram_matrix,
    save_vocabulary,
    standardize_review,
    strip_html_lower,
    token_lengths,
    truncated_share,
)
from models.recurrent import text_to_probabilities
from tests.builders import text_classifier


def standardized(text: str) -> list[str]:
    return standardize_review(tf.constant([text])).numpy()[0].decode().split()


def test_standardisation_lowers_case_drops_html_and_punctuation():
    assert standardized("A GREAT film!<br /><br />Don't miss it... (10/10)") == [
        "a", "great", "film", "dont", "miss", "it", "10", "10"]
    assert standardized("<BR/>line<br>break<i>italic</i>") == ["line", "break", "italic"]
    assert standardized("Émouvant, TRÈS beau") == ["émouvant", "très", "beau"]
    assert strip_html_lower("Great<br />FUN") == "great fun"


def test_vocabulary_has_padding_and_oov_ids_and_the_most_frequent_word_first():
    train = ["good good good film", "bad film", "good plot"]
    vectorizer = fit_vectorizer(train, vocabulary_size=100, sequence_length=6)
    vocabulary = vectorizer.get_vocabulary()
    assert vocabulary[PADDING_ID] == "" and vocabulary[OOV_ID] == "[UNK]"
    assert vocabulary[2] == "good"  # most frequent first
    ids = encode_reviews(vectorizer, ["GOOD validationonly!", "film " * 10])
    assert ids.dtype == np.int32 and ids.shape == (2, 6)
    assert ids[0].tolist() == [2, OOV_ID, PADDING_ID, PADDING_ID, PADDING_ID, PADDING_ID]
    assert ids[1].tolist() == [vocabulary.index("film")] * 6  # truncated to sequence_length
    assert token_lengths(ids).tolist() == [2, 6]


def test_vocabulary_size_caps_the_ids():
    vectorizer = fit_vectorizer(["a b c d e f g h", "a b c"], vocabulary_size=5,
                                sequence_length=8)
    assert len(vectorizer.get_vocabulary()) == 5
    assert encode_reviews(vectorizer, ["a b c d e f g h"]).max() == 4


def test_html_tags_go_and_a_less_than_sign_keeps_the_text_after_it():
    assert standardized('A <i>fine</i> film<br /><br/><a href="x">link</A>') == [
        "a", "fine", "film", "link"]
    # a "<" of the text is no tag: what follows it up to the next ">" is kept
    assert standardized("the plot < the acting, sadly. <br />Yet >AAARGH!< I enjoyed it") == [
        "the", "plot", "the", "acting", "sadly", "yet", "aaargh", "i", "enjoyed", "it"]


@pytest.mark.parametrize("text", ["<br\x0b/>x", "<a\xa0href='u'>x", "<i\x85>x", "<br\t/>x"])
def test_the_reader_and_the_model_take_the_same_text_for_a_tag(text: str):
    """The reader's re and the model's RE2 read one pattern: a review the reader keeps is
    one the model finds words in, and the words outside tags are the same."""
    outside = HTML_TAG_RE.sub(" ", text)
    assert (unusable(text) is None) == bool(standardized(text))
    assert standardized(outside) == standardized(text)


def test_only_reviews_longer_than_their_ids_count_as_truncated():
    vectorizer = fit_vectorizer(["a b c d e f"], vocabulary_size=10, sequence_length=4)
    texts = ["a b c d", "a b c d e f", "a b", "A, b! <br />c d e"]  # exactly 4, 6, 2, 5 tokens
    assert truncated_share(texts, encode_reviews(vectorizer, texts)) == 0.5


def test_a_review_without_tokens_becomes_one_unknown_token():
    vectorizer = fit_vectorizer(["fine film"], vocabulary_size=10, sequence_length=4)
    assert encode_reviews(vectorizer, ["!!! ..."]).tolist() == [[OOV_ID, 0, 0, 0]]


def test_vocabulary_round_trip_gives_the_same_ids(tmp_path: Path):
    train = ["the best movie ever", "the worst movie", "best acting, worst plot"]
    vectorizer = fit_vectorizer(train, vocabulary_size=50, sequence_length=5)
    path = save_vocabulary(vectorizer, tmp_path / "vocabulary.txt")
    restored = make_vectorizer(50, 5, load_vocabulary(path))
    assert restored.get_vocabulary() == vectorizer.get_vocabulary()
    probe = ["The BEST plot<br />unseen words", "worst"]
    assert (encode_reviews(restored, probe) == encode_reviews(vectorizer, probe)).all()


def test_bad_sizes_fail_with_the_value():
    with pytest.raises(ValueError, match="vocabulary_size must be at least 3, got 2"):
        make_vectorizer(2, 10)
    with pytest.raises(ValueError, match="sequence_length must be at least 1, got 0"):
        make_vectorizer(100, 0)


def test_saved_model_loads_whatever_characters_the_reviews_hold(tmp_path: Path):

    # Keras reads a saved vocabulary back with str.splitlines: a token holding \x85, \u2028,
    # \v, \x1c ... would split in two and the model would not load.
    reviews = ["one\x85two three\u2028four", "five\x0bsix\x1cseven\u2029eight",
               "nine\x0cten\rEleven\tTWELVE", "soft\xadhyphen zero\u200bwidth non\xa0break"]
    assert standardized(reviews[0]) == ["one", "two", "three", "four"]
    assert standardized(reviews[3]) == ["softhyphen", "zerowidth", "non", "break"]
    vectorizer = fit_vectorizer(reviews, vocabulary_size=100, sequence_length=8)
    model = text_to_probabilities(vectorizer, text_classifier(100, 2, units=2))
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    assert restored.get_layer("token_ids").get_vocabulary() == vectorizer.get_vocabulary()


def test_ngram_bags_are_binary_over_the_fitted_vocabulary():
    train = ["good good film", "bad film", "good plot"]
    vectorizer = fit_ngram_vectorizer(train, 100, 2)
    vocabulary = vectorizer.get_vocabulary()
    assert "good film" in vocabulary and "good" in vocabulary and "bad" in vocabulary
    bags = ngram_matrix(vectorizer, ["Good GOOD film!", "unseen words"])
    assert bags.shape == (2, len(vocabulary))
    present = {vocabulary[i] for i in bags[0].indices}
    assert {"good", "film", "good good", "good film"} <= present
    assert bags.max() == 1.0  # present or not, however often
    assert {vocabulary[i] for i in bags[1].indices} == {"[UNK]"}  # words it was not fitted on
    assert ngram_matrix(vectorizer, []).shape == (0, len(vocabulary))


def test_ngram_vectorizer_rejects_bad_sizes():
    with pytest.raises(ValueError, match="max_ngram must be at least 1"):
        fit_ngram_vectorizer(["a"], 10, 0)


def test_log_count_ratio_favours_the_class_a_feature_occurs_in():

    bags = scipy.sparse.csr_matrix(np.array([[1, 0, 1], [1, 0, 1], [0, 1, 1], [0, 1, 1]],
                                            np.float32))
    ratio = log_count_ratio(bags, np.array([1, 1, 0, 0]))
    assert ratio[0] > 0 > ratio[1] and ratio[2] == pytest.approx(0.0)
    assert ratio[0] == pytest.approx(np.log(3 / 7) - np.log(1 / 7))
