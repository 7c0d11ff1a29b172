"""Non-neural reference models, trained on the same splits as the recurrent ones."""

from __future__ import annotations

from dataclasses import dataclass, field

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from features.errors import require_at_least, require_positive
from features.text import strip_html_lower


@dataclass(frozen=True)
class TfidfConfig:
    """TF-IDF baseline (--model tfidf-logreg): word n-grams and logistic regression."""

    max_ngram: int = field(default=2, metadata={"help": "tfidf-logreg: longest word n-gram"})
    min_df: int = field(default=2, metadata={
        "help": "tfidf-logreg: drop n-grams in fewer training reviews"})
    logreg_c: float = field(default=10.0, metadata={
        "help": "tfidf-logreg: inverse L2 regularisation strength"})

    def __post_init__(self):
        require_at_least(self, {"max_ngram": 1, "min_df": 1})
        require_positive(self, ("logreg_c",))


def build_tfidf_logreg(config: TfidfConfig, *, seed: int) -> Pipeline:
    """TF-IDF over word n-grams (sublinear term frequency) + L2 logistic regression.

    Args:
        config: Longest n-gram (1: unigrams only), the fewest training documents an n-gram
            must appear in, and the inverse regularisation strength.
        seed: Solver seed.

    Returns:
        An unfitted scikit-learn pipeline with `fit(texts, y)` and `predict_proba(texts)`.
    """
    return Pipeline([
        ("tfidf", TfidfVectorizer(preprocessor=strip_html_lower,
                                  ngram_range=(1, config.max_ngram), min_df=config.min_df,
                                  sublinear_tf=True)),
        ("logreg", LogisticRegression(C=config.logreg_c, max_iter=1000, random_state=seed)),
    ])
