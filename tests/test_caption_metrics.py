"""Tests for gpt4v_jax.evals.caption_metrics.

BLEU and CIDEr-D are checked against pycocoevalcap (a test-only dependency),
fed the same tokens as our functions: ``" ".join(tokenize(caption))``. Its
PTBTokenizer needs Java and is never used.
"""
import math
import random

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from gpt4v_jax.evals import caption_metrics as cm

# Same arithmetic, same operation order for the sums that matter; the only
# expected differences are last-bit ones (e.g. math.exp vs np.e ** x).
TOL = 1e-9


# ---------------------------------------------------------------------------
# Reference implementation wrappers and fixtures
# ---------------------------------------------------------------------------


def _pretokenize(references, predictions):
    """Converts our inputs to pycocoevalcap's {key: [tokenized str]} format."""
    gts = {k: [" ".join(cm.tokenize(r)) for r in refs]
           for k, refs in references.items()}
    res = {k: [" ".join(cm.tokenize(predictions[k]))] for k in references}
    return gts, res


def _reference_bleu(references, predictions, n=4):
    gts, res = _pretokenize(references, predictions)
    score, _ = Bleu(n).compute_score(gts, res, verbose=0)
    return score


def _reference_cider(references, predictions):
    gts, res = _pretokenize(references, predictions)
    score, scores = Cider().compute_score(gts, res)
    return float(score), dict(zip(gts, (float(s) for s in scores)))


def _hand_made_set():
    """Ten images, five references each; predictions of every quality."""
    references = {
        1: ["A man riding a wave on top of a surfboard.",
            "A surfer rides a large wave in the ocean.",
            "A man on a surfboard riding a wave.",
            "Surfer riding the crest of a big wave.",
            "A person surfing on a wave in the sea."],
        2: ["Two dogs playing with a frisbee in the park.",
            "A pair of dogs chase a frisbee on the grass.",
            "Dogs are running after a red frisbee.",
            "Two brown dogs play in a grassy park.",
            "Two dogs fight over a frisbee outside."],
        3: ["A plate of food with broccoli and rice.",
            "A white plate topped with rice and vegetables.",
            "Rice, broccoli and chicken on a plate.",
            "A healthy meal of chicken, rice and broccoli.",
            "A dinner plate with rice and green broccoli."],
        4: ["A red bus driving down a city street.",
            "A double-decker bus on a busy street.",
            "A large red bus travels down the road.",
            "The bus is driving past tall buildings.",
            "A city bus stopped at the curb."],
        5: ["A cat sleeping on a laptop keyboard.",
            "A cat lying on top of an open laptop.",
            "The cat is napping on the computer.",
            "A gray cat asleep on a keyboard.",
            "A kitten curled up on a laptop."],
        6: ["A man's kite flying high in the blue sky.",
            "A kite soaring over the beach.",
            "Someone is flying a colorful kite.",
            "A kite in the sky on a windy day.",
            "People fly kites at the beach."],
        7: ["A woman holding an umbrella in the rain.",
            "A lady walks with an umbrella down the street.",
            "A person under a black umbrella.",
            "A woman is carrying an open umbrella.",
            "Woman with an umbrella on a rainy day."],
        8: ["A train pulling into a station.",
            "A passenger train stopped at the platform.",
            "The train is arriving at the station.",
            "A long train on the railroad tracks.",
            "A yellow and blue train at a station."],
        9: ["Two giraffes standing next to a tree.",
            "Giraffes eating leaves from a tall tree.",
            "A pair of giraffes in a grassy field.",
            "Two giraffes in the wild near trees.",
            "Giraffes stand together by a tree."],
        10: ["A bowl of fruit on a kitchen table.",
             "Apples and bananas in a bowl.",
             "A fruit bowl with oranges and apples.",
             "A table with a bowl of fresh fruit.",
             "Fruit sitting in a wooden bowl."],
    }
    predictions = {
        1: "A man riding a wave on top of a surfboard.",     # exact
        2: "two dogs playing with a frisbee",                # partial
        3: "a plate of rice and broccoli and broccoli",      # repeated n-grams
        4: "bus",                                            # one word
        5: "",                                               # empty
        6: "a a a a a a a a a a a a",                        # degenerate
        7: "The quick brown fox jumps over the lazy dog.",   # unrelated
        8: "A train at a station!",                          # short, good
        9: "Two giraffes standing next to a tree in a grassy field "
           "with other giraffes eating leaves from a tall tree.",  # long
        10: "a bowl of fruit",                               # short prefix
    }
    return references, predictions


def _random_set(num_items=200, num_refs=5, seed=0):
    """Synthetic captions over a small vocabulary, so n-grams overlap a lot."""
    rng = random.Random(seed)
    vocab = ("a the man woman dog cat sits on runs in park red blue big "
             "small table with near street").split()

    def caption():
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 14)))

    references = {f"img{i}": [caption() for _ in range(num_refs)]
                  for i in range(num_items)}
    predictions = {}
    for key, refs in references.items():
        roll = rng.random()
        if roll < 0.05:
            predictions[key] = ""
        elif roll < 0.3:
            # Perturb a reference so there is real overlap to score.
            words = rng.choice(refs).split()
            words[rng.randrange(len(words))] = rng.choice(vocab)
            predictions[key] = " ".join(words)
        else:
            predictions[key] = caption()
    return references, predictions


def _edge_set():
    """Degenerate captions: empty and one-word references and predictions.

    These are where CIDEr-D's length penalty (counted in bigrams by the
    toolkit) and BLEU's smoothing constants could make a difference.
    """
    references = {
        "a": ["", "dog", "a dog"],
        "b": ["dog", "dog", "dog"],
        "c": ["a cat", "", "a cat on a mat"],
        "d": ["the dog runs", "a dog runs fast", "dog"],
        "e": ["cat", "a cat", "the cat sits"],
    }
    predictions = {"a": "dog", "b": "dog dog", "c": "...", "d": "dog",
                   "e": "a cat sits on the cat"}
    return references, predictions


CORPORA = {"hand_made": _hand_made_set, "random": _random_set,
           "edge": _edge_set}


# ---------------------------------------------------------------------------
# tokenize
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("A man riding a wave.", ["a", "man", "riding", "a", "wave"]),
    ("Dogs, cats; birds: ok? yes!", ["dogs", "cats", "birds", "ok", "yes"]),
    ('He said "hi" (loudly)', ["he", "said", "hi", "loudly"]),
    ("A man's dog", ["a", "man", "'s", "dog"]),
    ("It can't be", ["it", "ca", "n't", "be"]),
    ("they're here", ["they", "'re", "here"]),
    ("a black-and-white photo -- of cats ...", [
        "a", "black-and-white", "photo", "of", "cats"]),
    ("3.5 inches, 1,000 people", ["3.5", "inches", "1,000", "people"]),
    ("dogs' 'bowls'", ["dogs", "bowls"]),
    ("at five o'clock", ["at", "five", "o'clock"]),
    ("  Spaced\tout\n", ["spaced", "out"]),
    ("", []),
    ("?!.", []),
])
def test_tokenize(text, expected):
    assert cm.tokenize(text) == expected


# ---------------------------------------------------------------------------
# BLEU
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("corpus", sorted(CORPORA))
def test_bleu_matches_pycocoevalcap(corpus):
    references, predictions = CORPORA[corpus]()
    ours = cm.bleu(references, predictions)
    theirs = _reference_bleu(references, predictions)
    assert len(ours) == 4
    for a, b in zip(ours, theirs):
        assert abs(a - b) <= TOL, (ours, theirs)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_bleu_other_orders_match_pycocoevalcap(n):
    references, predictions = _hand_made_set()
    ours = cm.bleu(references, predictions, n=n)
    theirs = _reference_bleu(references, predictions, n=n)
    assert len(ours) == n
    for a, b in zip(ours, theirs):
        assert abs(a - b) <= TOL


def test_bleu_single_items_match_pycocoevalcap():
    """Each hand-made item as its own corpus exercises every edge alone."""
    references, predictions = _hand_made_set()
    for key in references:
        refs, pred = {key: references[key]}, {key: predictions[key]}
        ours = cm.bleu(refs, pred)
        theirs = _reference_bleu(refs, pred)
        for a, b in zip(ours, theirs):
            assert abs(a - b) <= TOL, (key, ours, theirs)


def test_bleu_hand_worked():
    # Candidate "the cat sat" vs reference "the cat sat on the mat":
    # all n-grams match, so precisions are ~1 and only the brevity penalty
    # exp(1 - 6/3) applies (up to the 1e-9 smoothing constants).
    scores = cm.bleu({0: ["the cat sat on the mat"]}, {0: "the cat sat"}, n=3)
    for score in scores:
        assert score == pytest.approx(math.exp(-1.0), rel=1e-8)
    # Closest reference length: 3 is closer to 3 than 6 is, so no penalty.
    scores = cm.bleu({0: ["the cat sat on the mat", "a cat sat"]},
                     {0: "the cat sat"}, n=1)
    assert scores[0] == pytest.approx(1.0, rel=1e-8)


# ---------------------------------------------------------------------------
# CIDEr-D
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("corpus", sorted(CORPORA))
def test_cider_d_matches_pycocoevalcap(corpus):
    references, predictions = CORPORA[corpus]()
    score, per_item = cm.cider_d(references, predictions)
    ref_score, ref_per_item = _reference_cider(references, predictions)
    assert abs(score - ref_score) <= TOL
    assert per_item.keys() == ref_per_item.keys()
    for key in per_item:
        assert abs(per_item[key] - ref_per_item[key]) <= TOL, key


def test_cider_d_single_item_is_zero():
    # With one item every reference n-gram has df = num_items, so idf = 0.
    score, per_item = cm.cider_d({"a": ["a dog runs"]}, {"a": "a dog runs"})
    assert score == 0.0 and per_item == {"a": 0.0}



# ---------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("metric", [cm.bleu, cm.cider_d])
def test_corpus_metrics_reject_bad_input(metric):
    with pytest.raises(ValueError):
        metric({}, {})
    with pytest.raises(ValueError):
        metric({1: ["a b"]}, {2: "a b"})
    with pytest.raises(ValueError):
        metric({1: []}, {1: "a b"})
    with pytest.raises(ValueError):
        metric({1: "a b"}, {1: "a b"})
    with pytest.raises(TypeError):
        metric({1: ["a b"]}, {1: ["a b"]})


# ---------------------------------------------------------------------------
# object_prf
# ---------------------------------------------------------------------------


def test_object_prf_hand_worked_with_duplicates():
    predicted = [
        [("cat",), ("cat",), ("cat",), ("dog",)],   # 2 cats match, dog matches
        [("car", "red")],                           # wrong attribute
        [],                                         # predicted nothing
    ]
    ground_truth = [
        [("cat",), ("cat",), ("dog",), ("bird",)],
        [("car", "blue")],
        [("tree",), ("tree",)],
    ]
    result = cm.object_prf(predicted, ground_truth)
    # TP = 3 (2 cats + dog); predicted = 5; ground truth = 7.
    assert result["precision"] == pytest.approx(3 / 5)
    assert result["recall"] == pytest.approx(3 / 7)
    assert result["f1"] == pytest.approx(2 * (3 / 5) * (3 / 7) / (3 / 5 + 3 / 7))


def test_object_prf_perfect_and_order_insensitive():
    result = cm.object_prf([[("b",), ("a",), ("a",)]],
                           [[("a",), ("b",), ("a",)]])
    assert result == {"precision": 1.0, "recall": 1.0, "f1": 1.0}


def test_object_prf_matches_per_example_not_across_examples():
    # "cat" is predicted in example 0 but expected in example 1: no match.
    result = cm.object_prf([[("cat",)], []], [[], [("cat",)]])
    assert result == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


@pytest.mark.parametrize("predicted, ground_truth, expected", [
    # Nothing to find and nothing claimed: perfect.
    ([[], []], [[], []], (1.0, 1.0, 1.0)),
    ([], [], (1.0, 1.0, 1.0)),
    # Silent model on a non-empty task: no credit for precision.
    ([[], []], [[("cat",)], []], (0.0, 0.0, 0.0)),
    # Objects claimed where none exist.
    ([[("cat",)]], [[]], (0.0, 0.0, 0.0)),
])
def test_object_prf_edge_cases(predicted, ground_truth, expected):
    result = cm.object_prf(predicted, ground_truth)
    assert (result["precision"], result["recall"], result["f1"]) == expected


def test_object_prf_rejects_length_mismatch():
    with pytest.raises(ValueError):
        cm.object_prf([[]], [[], []])


# ---------------------------------------------------------------------------
# exact_match
# ---------------------------------------------------------------------------


def test_exact_match_hand_worked():
    predictions = {
        "q1": "Two dogs.",          # matches 2nd reference after tokenizing
        "q2": "yes",                # matches a bare-string reference
        "q3": "a red bus",          # extra word: no match
        "q4": "",                   # empty: no match
    }
    references = {
        "q1": ["three dogs", "two   DOGS"],
        "q2": "Yes!",
        "q3": ["a red", "red bus"],
        "q4": ["something"],
        "unused": ["ignored"],      # unpredicted keys are allowed
    }
    assert cm.exact_match(predictions, references) == pytest.approx(2 / 4)


def test_exact_match_empty_reference_matches_empty_prediction():
    assert cm.exact_match({1: "..."}, {1: [""]}) == 1.0


def test_exact_match_rejects_bad_input():
    with pytest.raises(ValueError):
        cm.exact_match({}, {1: ["a"]})
    with pytest.raises(ValueError):
        cm.exact_match({1: "a"}, {2: ["a"]})
