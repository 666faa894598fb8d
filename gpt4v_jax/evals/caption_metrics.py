"""Caption and object-list metrics: BLEU-1..4, CIDEr-D, object P/R/F1, exact match.

BLEU and CIDEr-D reproduce the numbers of the COCO caption evaluation toolkit
(``pycocoevalcap`` 1.2, ``Bleu(4)`` and ``Cider()``) so that our results are
comparable with published ones, but they are written from the metric
definitions and run without Java or any third-party package. Where the toolkit
departs from the textbook definition (BLEU's smoothing constants and
per-item "closest" reference length) we follow the toolkit, because matching
published numbers is the point, and say so at the place it happens.

All corpus-level functions take ``references`` as ``{key: [str, ...]}`` and
``predictions`` as ``{key: str}`` holding raw text; they tokenize with
:func:`tokenize` themselves.
"""
from __future__ import annotations

import collections
import math
import re
from typing import Hashable, Mapping, Sequence

Ngram = tuple[str, ...]

# ---------------------------------------------------------------------------
# Tokenization
# ---------------------------------------------------------------------------

# English clitics that the PTB tokenizer splits off into their own token
# ("dog's" -> "dog 's", "don't" -> "do n't"). Splitting them keeps n-gram
# counts close to what the toolkit sees.
_NEGATION = re.compile(r"(?<=[a-z])n't\b")
_CLITIC = re.compile(r"(?<=[a-z])'(s|re|ve|ll|m|d)\b")
# Hyphens, dots and commas survive inside a word or number ("black-and-white",
# "3.5", "1,000"), as in the PTB tokenizer; elsewhere they are punctuation.
_INNER_HYPHEN = re.compile(r"(?<=\w)-(?=\w)")
_INNER_DOT_COMMA = re.compile(r"(?<=\d)[.,](?=\d)")
# An apostrophe between letters is part of the word ("o'clock").
_INNER_APOSTROPHE = re.compile(r"(?<=[a-z])'(?=[a-z])")
# Characters the toolkit discards after PTB tokenization: quotes, brackets
# (PTB's -LRB-/-RRB-/-LCB-/-RCB- tokens), and . ? ! , : ; - ` '.
_PUNCTUATION = re.compile(r"""[.,;:?!'"`()\[\]{}\-]""")
# Placeholders (private-use code points) that shield the characters we keep
# while the punctuation pass runs.
_KEEP = {"-": "\ue000", ".": "\ue001", ",": "\ue002", "'": "\ue003"}


def _shield(match: re.Match) -> str:
    """Replaces a kept punctuation character by its placeholder."""
    return _KEEP[match.group(0)]


def tokenize(text: str) -> list[str]:
    """Lower-cases ``text``, drops punctuation and splits it into words.

    This approximates what pycocoevalcap does (Stanford PTBTokenizer with
    ``-lowerCase`` followed by removal of punctuation tokens) for plain ASCII
    captions, without needing Java. Like PTB it splits clitics off as their
    own tokens ("man's" -> ``["man", "'s"]``, "can't" -> ``["ca", "n't"]``)
    and keeps word-internal hyphens, digit-internal ``.``/``,`` and
    letter-internal apostrophes. Known differences from PTB: abbreviation dots
    are dropped ("mr." -> "mr"), square brackets are dropped (PTB keeps them
    as -LSB-/-RSB-), and symbols such as ``$ % & /`` stay attached to the
    neighbouring word.
    """
    text = text.lower()
    # The apostrophe of a split-off clitic is shielded so that the
    # punctuation pass below keeps it.
    apostrophe = _KEEP["'"]
    text = _NEGATION.sub(f" n{apostrophe}t", text)
    text = _CLITIC.sub(rf" {apostrophe}\1", text)
    for pattern in (_INNER_HYPHEN, _INNER_DOT_COMMA, _INNER_APOSTROPHE):
        text = pattern.sub(_shield, text)
    text = _PUNCTUATION.sub(" ", text)
    for char, placeholder in _KEEP.items():
        text = text.replace(placeholder, char)
    return text.split()


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------


def _check_corpus(references: Mapping[Hashable, Sequence[str]],
                  predictions: Mapping[Hashable, str]) -> list[Hashable]:
    """Validates a (references, predictions) pair and returns the keys in order.

    Raises ValueError on an empty corpus, mismatched keys or an item without
    references, and TypeError when a prediction is not a string; these are
    caller bugs that would otherwise give a silently wrong score.
    """
    if not predictions:
        raise ValueError("Cannot score an empty set of predictions.")
    if set(references) != set(predictions):
        missing = set(predictions) ^ set(references)
        raise ValueError(
            f"references and predictions have different keys, e.g. "
            f"{sorted(map(repr, missing))[:5]}")
    keys = list(references)
    for key in keys:
        if not isinstance(predictions[key], str):
            raise TypeError(f"Prediction for {key!r} must be a str, got "
                            f"{type(predictions[key]).__name__}.")
        refs = references[key]
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(
                f"references[{key!r}] must be a non-empty list of strings.")
    return keys


def _ngram_counts(tokens: Sequence[str], max_n: int) -> collections.Counter:
    """Counts every n-gram of ``tokens`` with 1 <= n <= max_n."""
    counts = collections.Counter()
    for n in range(1, max_n + 1):
        for start in range(len(tokens) - n + 1):
            counts[tuple(tokens[start:start + n])] += 1
    return counts


# ---------------------------------------------------------------------------
# BLEU
# ---------------------------------------------------------------------------

# The toolkit adds these to every numerator / denominator so that a zero
# n-gram match or a zero length never divides by zero. They change results in
# about the 9th digit, so we use the same values to agree with it exactly.
_BLEU_NUMERATOR_EPS = 1e-15
_BLEU_DENOMINATOR_EPS = 1e-9


def _closest_length(ref_lengths: Sequence[int], hyp_length: int) -> int:
    """The reference length closest to the hypothesis; ties go to the shorter."""
    return min(ref_lengths, key=lambda length: (abs(length - hyp_length), length))


def bleu(references: Mapping[Hashable, Sequence[str]],
         predictions: Mapping[Hashable, str],
         n: int = 4) -> list[float]:
    """Corpus-level BLEU-1..n, as pycocoevalcap's ``Bleu(n).compute_score``.

    Clipped n-gram matches and candidate n-gram totals are summed over the
    whole corpus before dividing (corpus BLEU, not a mean of sentence BLEUs).
    The brevity penalty compares the total candidate length with the sum, over
    items, of the reference length closest to each candidate.

    Args:
      references: key -> list of raw reference captions.
      predictions: key -> raw predicted caption; same keys as ``references``.
      n: highest n-gram order.

    Returns:
      ``[BLEU-1, ..., BLEU-n]``.
    """
    keys = _check_corpus(references, predictions)
    matches = [0] * n   # clipped matching k-grams, summed over the corpus
    totals = [0] * n    # candidate k-grams, summed over the corpus
    hyp_length_sum = 0
    ref_length_sum = 0
    for key in keys:
        hyp = tokenize(predictions[key])
        refs = [tokenize(ref) for ref in references[key]]
        hyp_counts = _ngram_counts(hyp, n)
        # A candidate n-gram is credited at most as often as it occurs in any
        # single reference.
        max_ref_counts = collections.Counter()
        for ref in refs:
            max_ref_counts |= _ngram_counts(ref, n)
        for ngram, count in hyp_counts.items():
            matches[len(ngram) - 1] += min(count, max_ref_counts[ngram])
        for k in range(1, n + 1):
            totals[k - 1] += max(0, len(hyp) - k + 1)
        hyp_length_sum += len(hyp)
        ref_length_sum += _closest_length([len(ref) for ref in refs], len(hyp))

    # BLEU-k is the geometric mean of the first k precisions; keeping a
    # running product mirrors the toolkit's arithmetic.
    scores = []
    precision_product = 1.0
    for k in range(1, n + 1):
        precision_product *= ((matches[k - 1] + _BLEU_NUMERATOR_EPS) /
                              (totals[k - 1] + _BLEU_DENOMINATOR_EPS))
        scores.append(precision_product ** (1.0 / k))

    length_ratio = ((hyp_length_sum + _BLEU_NUMERATOR_EPS) /
                    (ref_length_sum + _BLEU_DENOMINATOR_EPS))
    if length_ratio < 1.0:
        brevity_penalty = math.exp(1.0 - 1.0 / length_ratio)
        scores = [score * brevity_penalty for score in scores]
    return scores


# ---------------------------------------------------------------------------
# CIDEr-D
# ---------------------------------------------------------------------------


def _document_frequency(ref_counts: Sequence[Sequence[collections.Counter]]
                        ) -> collections.Counter:
    """Number of items whose references (any of them) contain each n-gram."""
    frequency = collections.Counter()
    for item_refs in ref_counts:
        frequency.update(set().union(*item_refs))
    return frequency


def _tfidf(counts: collections.Counter, doc_freq: collections.Counter,
           log_num_items: float, n: int) -> tuple[list[dict], list[float]]:
    """Splits n-gram counts by order into tf-idf vectors and their L2 norms.

    The idf is ``log(num_items) - log(max(1, df))``: an n-gram never seen in
    any reference gets the largest weight, one present for every item gets 0.
    """
    vectors = [{} for _ in range(n)]
    for ngram, count in counts.items():
        idf = log_num_items - math.log(max(1.0, doc_freq[ngram]))
        vectors[len(ngram) - 1][ngram] = count * idf
    norms = [math.sqrt(sum(w * w for w in vec.values())) for vec in vectors]
    return vectors, norms


def _clipped_cosine(hyp_vec: dict, ref_vec: dict,
                    hyp_norm: float, ref_norm: float) -> float:
    """Cosine similarity with the candidate's weights clipped by the reference's.

    Clipping (the "D" in CIDEr-D) stops a candidate from gaining score by
    repeating an n-gram more often than the reference does.
    """
    dot = 0.0
    for ngram, weight in hyp_vec.items():
        ref_weight = ref_vec.get(ngram, 0.0)
        dot += min(weight, ref_weight) * ref_weight
    if hyp_norm != 0.0 and ref_norm != 0.0:
        dot /= hyp_norm * ref_norm
    return dot


def cider_d(references: Mapping[Hashable, Sequence[str]],
            predictions: Mapping[Hashable, str],
            n: int = 4,
            sigma: float = 6.0) -> tuple[float, dict]:
    """CIDEr-D, as pycocoevalcap's ``Cider().compute_score``.

    For each item and each reference: per n-gram order 1..n, the clipped
    cosine similarity of tf-idf vectors, times a gaussian penalty
    ``exp(-delta**2 / (2 sigma**2))`` on the length difference; averaged over
    orders and references and multiplied by 10. Document frequencies come
    from the references of the evaluated set itself, so scores depend on the
    whole set (a single-item set always scores 0).

    Args:
      references: key -> list of raw reference captions.
      predictions: key -> raw predicted caption; same keys as ``references``.
      n: highest n-gram order.
      sigma: width of the length penalty.

    Returns:
      ``(corpus score, {key: item score})``; the corpus score is the mean of
      the item scores.
    """
    keys = _check_corpus(references, predictions)
    hyp_tokens = [tokenize(predictions[key]) for key in keys]
    ref_tokens = [[tokenize(ref) for ref in references[key]] for key in keys]
    hyp_counts = [_ngram_counts(tokens, n) for tokens in hyp_tokens]
    ref_counts = [[_ngram_counts(tokens, n) for tokens in refs]
                  for refs in ref_tokens]
    doc_freq = _document_frequency(ref_counts)
    log_num_items = math.log(len(keys))
    two_sigma_sq = 2.0 * sigma ** 2

    per_item = {}
    for i, key in enumerate(keys):
        hyp_vecs, hyp_norms = _tfidf(hyp_counts[i], doc_freq, log_num_items, n)
        total = 0.0
        for ref, tokens in zip(ref_counts[i], ref_tokens[i]):
            ref_vecs, ref_norms = _tfidf(ref, doc_freq, log_num_items, n)
            # The toolkit measures lengths in bigrams (words - 1, floored at
            # 0). That differs from words only for an empty caption, whose
            # similarity is 0 anyway, so plain word counts give equal scores.
            delta = len(hyp_tokens[i]) - len(tokens)
            penalty = math.exp(-(delta ** 2) / two_sigma_sq)
            for order in range(n):
                total += penalty * _clipped_cosine(
                    hyp_vecs[order], ref_vecs[order],
                    hyp_norms[order], ref_norms[order])
        per_item[key] = 10.0 * total / (n * len(ref_counts[i]))
    return sum(per_item.values()) / len(per_item), per_item


# ---------------------------------------------------------------------------
# Object lists and exact match
# ---------------------------------------------------------------------------


def _safe_ratio(numerator: int, denominator: int, both_empty: bool) -> float:
    """numerator / denominator, with 0/0 defined by whether the task was empty.

    When there was nothing to predict and nothing was predicted the model is
    perfect (1.0). Otherwise a zero denominator means a degenerate output
    (e.g. predicting nothing at all), which must not score well, so 0.0.
    """
    if denominator:
        return numerator / denominator
    return 1.0 if both_empty else 0.0


def object_prf(predicted: Sequence[Sequence[tuple]],
               ground_truth: Sequence[Sequence[tuple]]) -> dict[str, float]:
    """Micro-averaged precision, recall and F1 of predicted object tuples.

    Objects are hashable tuples compared by equality, per example, as
    multisets: if an example has two ``("cat",)`` in the ground truth and
    three predicted, two are true positives and one a false positive. Counts
    are summed over the dataset before dividing (micro average).

    Edge cases, over dataset totals:
      * nothing predicted and nothing in the ground truth (including an empty
        dataset): precision = recall = f1 = 1.0;
      * nothing predicted but ground truth present: precision = 0.0 (so that
        staying silent is not rewarded), recall = 0.0;
      * predictions but no ground truth: precision = 0.0, recall = 0.0;
      * f1 = 0.0 whenever precision + recall = 0.

    Args:
      predicted: per example, the list of predicted object tuples.
      ground_truth: per example, the list of true object tuples.

    Returns:
      ``{"precision": p, "recall": r, "f1": f}``.
    """
    if len(predicted) != len(ground_truth):
        raise ValueError(f"{len(predicted)} predicted examples but "
                         f"{len(ground_truth)} ground-truth examples.")
    true_positives = num_predicted = num_expected = 0
    for pred, gt in zip(predicted, ground_truth):
        pred_counts = collections.Counter(pred)
        gt_counts = collections.Counter(gt)
        true_positives += sum((pred_counts & gt_counts).values())
        num_predicted += len(pred)
        num_expected += len(gt)

    both_empty = num_predicted == 0 and num_expected == 0
    precision = _safe_ratio(true_positives, num_predicted, both_empty)
    recall = _safe_ratio(true_positives, num_expected, both_empty)
    if precision + recall == 0.0:
        f1 = 0.0
    else:
        f1 = 2.0 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1}


def exact_match(predictions: Mapping[Hashable, str],
                references: Mapping[Hashable, Sequence[str] | str]) -> float:
    """Fraction of predictions equal, after :func:`tokenize`, to a reference.

    Comparing token lists makes the match insensitive to case, punctuation
    and spacing. ``references`` may hold a single string or a list per key and
    may contain keys that were not predicted; every prediction key must be in
    it. An empty ``predictions`` raises ValueError (the fraction is undefined).
    """
    if not predictions:
        raise ValueError("Cannot score an empty set of predictions.")
    missing = [key for key in predictions if key not in references]
    if missing:
        raise ValueError(f"No references for keys {missing[:5]!r}.")
    hits = 0
    for key, prediction in predictions.items():
        refs = references[key]
        # A bare string would otherwise be iterated character by character.
        if isinstance(refs, str):
            refs = [refs]
        tokens = tokenize(prediction)
        hits += any(tokens == tokenize(ref) for ref in refs)
    return hits / len(predictions)
