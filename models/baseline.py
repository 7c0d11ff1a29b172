"""Non-neural reference models, trained on the same splits as the recurrent ones."""

from __future__ import annotations

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from features.text import strip_html_lower


def build_tfidf_logreg(*, max_ngram: int = 2, min_df: int = 2, c: float = 10.0,
                       max_features: int | None = None, seed: int = 0) -> Pipeline:
    """TF-IDF over word n-grams (sublinear term frequency) + L2 logistic regression.

    Args:
        max_ngram: Longest word n-gram (1: unigrams only).
        min_df: Drop n-grams seen in fewer training documents.
        c: Inverse regularisation strength of the logistic regression.
        max_features: Keep only the most frequent n-grams (None: all).
        seed: Solver seed.

    Returns:
        An unfitted scikit-learn pipeline with `fit(texts, y)` and `predict_proba(texts)`.
    """
    if max_ngram < 1:
        raise ValueError(f"max_ngram must be at least 1, got {max_ngram}")
    return Pipeline([
        ("tfidf", TfidfVectorizer(preprocessor=strip_html_lower, ngram_range=(1, max_ngram),
                                  min_df=min_df, max_features=max_features, sublinear_tf=True)),
        ("logreg", LogisticRegression(C=c, max_iter=1000, random_state=seed)),
    ])
