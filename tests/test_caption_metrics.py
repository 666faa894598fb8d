"""Tests for gpt4v_jax.evals.caption_metrics.

BLEU and CIDEr-D are checked against pycocoevalcap (a test-only dependency)
under both tokenizations: with "builtin" the toolkit's scorers get our
:func:`tokenize` output; with "ptb" they get the output of the toolkit's own
PTBTokenizer, run directly as the COCO evaluation runs it. Tests that need
PTB skip only when ``java`` is not on PATH. Each Java run starts a JVM, so
the reference PTB tokens come from one run per module (``ptb_reference``).
"""
import logging
import math
import random
import re
import shutil

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer import ptbtokenizer

from gpt4v_jax.data import shapes
from gpt4v_jax.evals import caption_metrics as cm

HAVE_JAVA = shutil.which("java") is not None
requires_java = pytest.mark.skipif(
    not HAVE_JAVA, reason="PTB tokenization needs `java` on PATH")

# Same arithmetic, same operation order for the sums that matter; the only
# expected differences are last-bit ones (e.g. math.exp vs np.e ** x).
TOL = 1e-9


# ---------------------------------------------------------------------------
# Reference implementation wrappers and fixtures
# ---------------------------------------------------------------------------


def _builtin_strings(text):
    return " ".join(cm.tokenize(text))


def _pretokenize(references, predictions, to_string=_builtin_strings):
    """Converts our inputs to pycocoevalcap's {key: [tokenized str]} format;
    ``to_string`` maps a caption to its space-joined tokens."""
    gts = {k: [to_string(r) for r in refs] for k, refs in references.items()}
    res = {k: [to_string(predictions[k])] for k in references}
    return gts, res


def _reference_bleu(references, predictions, n=4, to_string=_builtin_strings):
    gts, res = _pretokenize(references, predictions, to_string)
    score, _ = Bleu(n).compute_score(gts, res, verbose=0)
    return score


def _reference_cider(references, predictions, to_string=_builtin_strings):
    gts, res = _pretokenize(references, predictions, to_string)
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


# Pieces of real-world captions where tokenization matters: case, clitics,
# abbreviations, numbers, brackets, quotes, hyphens, symbols, non-ASCII.
_MESSY_WORDS = (
    "a the A The man Man's dog dogs' can't don't U.S. Mr. 10:30 a.m. (red) "
    "[big] !! ? , . ... 3.5 1,000 black-and-white o'clock caf\u00e9 \"hi\" "
    "it's etc. - -- $5 50% & e-mail w/ #tag \U0001f600 \u732b \u201cnice\u201d "
    "St. Louis's 5 p.m. cannot -5 and/or www.x.com").split()


def _messy_random_set(num_items=60, num_refs=5, seed=1):
    """Random captions made of _MESSY_WORDS: builtin and PTB tokens may
    differ, and the PTB-tokenized scores must still match the toolkit's."""
    rng = random.Random(seed)

    def caption():
        return " ".join(rng.choice(_MESSY_WORDS)
                        for _ in range(rng.randint(1, 12)))

    references = {i: [caption() for _ in range(num_refs)]
                  for i in range(num_items)}
    predictions = {i: rng.choice(refs) if rng.random() < 0.3 else caption()
                   for i, refs in references.items()}
    return references, predictions


CORPORA = {"hand_made": _hand_made_set, "random": _random_set,
           "edge": _edge_set, "messy_random": _messy_random_set}


def _shapes_corpus(num_images=60):
    """Real shapes captions: 5 references per image; the prediction is the
    image's own first caption for even images, another image's for odd."""
    captions = [shapes.make_example(0, "test", i)["captions"]
                for i in range(num_images + 1)]
    references = {i: list(captions[i]) for i in range(num_images)}
    predictions = {i: captions[i if i % 2 == 0 else i + 1][0]
                   for i in range(num_images)}
    return references, predictions


# Captions whose builtin tokens equal PTB's (checked against PTB below).
AGREE_CASES = [
    "A man riding a wave on top of a surfboard.",
    "a large red circle, a small blue square and a green triangle.",
    "there are four objects: large red triangle, small blue diamond.",
    "The U.S. flag at 10:30 a.m. today",
    "St. Louis, Mo. at 5 p.m.",
    "Mr. Smith's dog and Dr. Who, etc.",
    "i.e. and e.g. and a.k.a. and u.s",
    "a sign (with text) reads STOP!!",
    "what?? no... yes!? ok?! ?!?!",
    "a [bracket] {curly} <tag>",
    "A man's dog can't, won't and cannot; they're gonna",
    "dogs' bowls from the '90s and the 80's, 'em and 'tis",
    "it's 3.5 inches, 1,000 people, -5 degrees and .5 cups",
    "a black-and-white photo of a 3-year-old -- or - a well-known e-mail",
    "at five o'clock with O'Neil and l'oreal, y'all",
    "a $5 bill, 50% off & more, 5\u00a2 and \u20ac10",
    "a/b testing, and/or 24/7, 1/2 of a pizza, w/ friends w/o",
    '"quoted" and \'single\' and `back` ``double\'\'',
    "\u201csmart\u201d and \u2018single\u2019 and man\u2019s and don\u2019t",
    "an em\u2014dash and en\u2013dash and \u2026 ellipsis",
    "a caf\u00e9 in Z\u00fcrich, na\u00efve, jalape\u00f1o",
    "\u4e00\u53ea\u732b\u5750\u5728\u684c\u5b50\u4e0a\u3002",
    "a dog \U0001f600 and \u2764\ufe0f and fun\U0001f600times",
    "AT&T and at&t, c++ and C#, #hashtag @user #5",
    "12:00pm, 1.5x zoom, 4k tv, 1990s, 2019-05-01, 5/12/2019",
    "www.google.com, bob@example.com. http://x.com/a?b=c.",
    "No. 5 bus, no.5, said no. Miss. Smith, miss. Fig. 3",
    "I like vitamin C. and plan b.",
    "from a U.K.-based firm with \u00bd cup 'til dawn, yes ma'am",
    "rock 'n' roll",
    "   Spaced\tout  ",
    "",
]

# Known differences: text -> the builtin's tokens (PTB's differ, see test).
DIFFER_CASES = {
    "a happy dog :)": ["a", "happy", "dog", "-rrb-"],          # PTB: ":-rrb-"
    "rock'n'roll": ["rock", "n", "roll"],                       # PTB: 'n'
    "an 'L'-shaped couch": ["an", "l", "shaped", "couch"],      # PTB: l'
    "near Ol' Faithful": ["near", "ol", "faithful"],            # PTB: ol'
    "CAT+DOG": ["cat", "+", "dog"],                   # PTB: cat+dog (any case)
    "mail bob@example.com, now": [                     # PTB: "...com,"
        "mail", "bob@example.com", "now"],
    "wow \u203c": ["wow", "\u203c"],                            # PTB drops it
    "US$5": ["us", "$", "5"],                                   # PTB: us$ 5
}


def _shapes_captions():
    references, predictions = _shapes_corpus()
    return [c for refs in references.values() for c in refs] + list(
        predictions.values())


@pytest.fixture(scope="module")
def ptb_reference():
    """Caption -> pycocoevalcap PTBTokenizer's output string, for every
    caption of this module, from ONE direct run of the toolkit's tokenizer."""
    if not HAVE_JAVA:
        pytest.skip("PTB tokenization needs `java` on PATH")
    texts = set(AGREE_CASES) | set(DIFFER_CASES) | set(_shapes_captions())
    for make in CORPORA.values():
        references, predictions = make()
        texts.update(c for refs in references.values() for c in refs)
        texts.update(predictions.values())
    texts = sorted(texts)
    output = ptbtokenizer.PTBTokenizer().tokenize(
        {i: [{"caption": text}] for i, text in enumerate(texts)})
    return {text: output[i][0] for i, text in enumerate(texts)}


@pytest.fixture(scope="module")
def ptb_corpora():
    """Corpus name -> our tokenize_corpus(..., tokenization="ptb") of it,
    all corpora from one merged Java run."""
    if not HAVE_JAVA:
        pytest.skip("PTB tokenization needs `java` on PATH")
    references, predictions = {}, {}
    for name, make in CORPORA.items():
        refs, preds = make()
        references.update({(name, k): v for k, v in refs.items()})
        predictions.update({(name, k): v for k, v in preds.items()})
    merged = cm.tokenize_corpus(references, predictions, tokenization="ptb")
    assert merged.tokenization == "ptb"
    return {name: cm.TokenizedCorpus(
        {k: v for (n, k), v in merged.references.items() if n == name},
        {k: v for (n, k), v in merged.predictions.items() if n == name},
        "ptb") for name in CORPORA}


# ---------------------------------------------------------------------------
# Built-in tokenizer
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("A man riding a wave.", ["a", "man", "riding", "a", "wave"]),
    ("Dogs, cats; birds: ok? yes!", ["dogs", "cats", "birds", "ok", "yes"]),
    # PTB keeps brackets as tokens; the toolkit's removal list misses them.
    ('He said "hi" (loudly)', ["he", "said", "hi", "-lrb-", "loudly", "-rrb-"]),
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
    ("?!.", ["?!"]),
    ("the U.S. flag at 10:30 a.m.", ["the", "u.s.", "flag", "at", "10:30",
                                     "a.m."]),
    ("Mr. Smith, etc. and no. 5", ["mr.", "smith", "etc.", "and", "no.",
                                   "5"]),
    ("said no. miss. Miss.", ["said", "no", "miss", "miss."]),
    ("stop!! now? $5 & 50%", ["stop", "!!", "now", "$", "5", "&", "50", "%"]),
    ("cannot gonna", ["can", "not", "gon", "na"]),
    ("caf\u00e9 \U0001f600 \u732b", ["caf\u00e9", "\u732b"]),
    ("don\u2019t \u201cgo\u201d \u2014 now\u2026", ["do", "n't", "go", "now"]),
])
def test_tokenize(text, expected):
    assert cm.tokenize(text) == expected


def test_tokenize_shapes_captions_are_their_words():
    """Independent of Java: a shapes caption's tokens are its words, the
    punctuation (``, : .``) dropped, so builtin = PTB = the plain split."""
    for caption in _shapes_captions():
        assert re.fullmatch(r"[a-z ,:]+\.", caption), caption
        assert cm.tokenize(caption) == re.findall(r"[a-z]+", caption)


@pytest.mark.parametrize("text, expected", sorted(DIFFER_CASES.items()))
def test_builtin_output_on_known_differences(text, expected):
    assert cm.tokenize(text) == expected


@requires_java
def test_builtin_agrees_with_ptb(ptb_reference):
    for text in AGREE_CASES:
        assert cm.tokenize(text) == ptb_reference[text].split(), text


@requires_java
def test_builtin_agrees_with_ptb_on_shapes_captions(ptb_reference):
    for text in _shapes_captions():
        assert cm.tokenize(text) == ptb_reference[text].split(), text


@requires_java
def test_builtin_agrees_with_ptb_on_random_messy_captions(ptb_reference):
    """Random combinations of _MESSY_WORDS: the rules hold in context."""
    references, predictions = _messy_random_set()
    texts = [c for refs in references.values() for c in refs]
    for text in texts + list(predictions.values()):
        assert cm.tokenize(text) == ptb_reference[text].split(), text


@requires_java
def test_known_differences_still_differ_from_ptb(ptb_reference):
    """If one starts to agree (a better rule), move it to AGREE_CASES."""
    for text, builtin in DIFFER_CASES.items():
        assert ptb_reference[text].split() != builtin, text


# ---------------------------------------------------------------------------
# Choosing the tokenization; running PTB
# ---------------------------------------------------------------------------


def test_resolve_tokenization(monkeypatch, caplog):
    assert cm.resolve_tokenization("builtin") == "builtin"
    with pytest.raises(ValueError, match="tokenization='ptbx'"):
        cm.resolve_tokenization("ptbx")
    if HAVE_JAVA:
        assert cm.resolve_tokenization("auto") == "ptb"
        assert cm.resolve_tokenization("ptb") == "ptb"

    monkeypatch.setattr(cm.shutil, "which", lambda name: None)
    monkeypatch.setattr(cm, "_warned_fallback", False)
    with pytest.raises(RuntimeError, match="java"):
        cm.resolve_tokenization("ptb")
    with caplog.at_level(logging.WARNING, logger=cm.__name__):
        assert cm.resolve_tokenization("auto") == "builtin"
        assert cm.resolve_tokenization("auto") == "builtin"
    warnings = [r for r in caplog.records if "differ" in r.getMessage()]
    assert len(warnings) == 1 and "java" in warnings[0].getMessage()
    # The fallback gives builtin scores.
    references, predictions = _hand_made_set()
    assert cm.bleu(references, predictions) == cm.bleu(
        references, predictions, tokenization="builtin")


@requires_java
def test_ptb_tokenize_keeps_line_breaks_inside_a_caption():
    """Java ends lines at \\r, \\f, \\u2028...; raw pycocoevalcap would shift
    every later caption by one line."""
    texts = ["a b\rc", "d\u2028e\ff", "", "gh hi.", "i\nj"]
    assert cm.ptb_tokenize(texts) == [
        ["a", "b", "c"], ["d", "e", "f"], [], ["gh", "hi"], ["i", "j"]]


def test_ptb_tokenize_detects_misaligned_output(monkeypatch):
    """Output lines that do not pair up with the captions raise, not shift."""
    def dropping_one_line(self, captions):
        lines = [c[0]["caption"].lower() for c in captions.values()]
        return {k: [line] for k, line in zip(list(captions)[1:], lines)}

    monkeypatch.setattr(cm.shutil, "which", lambda name: "/usr/bin/java")
    monkeypatch.setattr(ptbtokenizer.PTBTokenizer, "tokenize",
                        dropping_one_line)
    with pytest.raises(RuntimeError, match="misaligned"):
        cm.ptb_tokenize(["a b", "c d"])


@requires_java
def test_ptb_tokenize_corpus_equals_the_official_evaluation():
    """COCOEvalCap tokenizes all references, then all predictions, in two
    runs. Order matters: a caption ending in a letter + period ("plan b.")
    loses the period when the NEXT caption starts with a capital."""
    references = {1: ["A dog with plan b.", "The cat in the U.S.", "vitamin c."],
                  2: ["A man", "see vitamin c."]}
    predictions = {1: "The letter a.", 2: "plan b."}
    tokenizer = ptbtokenizer.PTBTokenizer()
    gts = tokenizer.tokenize(
        {k: [{"caption": r} for r in refs] for k, refs in references.items()})
    res = tokenizer.tokenize(
        {k: [{"caption": p}] for k, p in predictions.items()})
    corpus = cm.tokenize_corpus(references, predictions, tokenization="ptb")
    assert corpus.references == {
        k: [r.split() for r in refs] for k, refs in gts.items()}
    assert corpus.predictions == {k: p[0].split() for k, p in res.items()}
    # The quirk itself; the builtin tokenizer cannot see the next caption.
    assert corpus.references[1][0][-1] == "b"
    assert corpus.references[1][2][-1] == "c"
    assert corpus.references[2][1][-1] == "c."
    assert cm.tokenize("A dog with plan b.")[-1] == "b."


def test_tokenize_corpus_keeps_keys_and_counts():
    references = {"x": ["A bc.", "c"], 3: ["d e f"]}
    predictions = {3: "G!", "x": ""}
    corpus = cm.tokenize_corpus(references, predictions,
                                tokenization="builtin")
    assert corpus.tokenization == "builtin"
    assert list(corpus.predictions) == ["x", 3]
    assert corpus.references == {"x": [["a", "bc"], ["c"]],
                                 3: [["d", "e", "f"]]}
    assert corpus.predictions == {"x": [], 3: ["g"]}


@requires_java
@pytest.mark.parametrize("corpus", sorted(CORPORA))
def test_ptb_tokenize_corpus_matches_pycocoevalcap(corpus, ptb_corpora,
                                                   ptb_reference):
    references, predictions = CORPORA[corpus]()
    ours = ptb_corpora[corpus]
    for key, refs in references.items():
        assert ours.references[key] == [ptb_reference[r].split() for r in refs]
        assert ours.predictions[key] == ptb_reference[predictions[key]].split()


# ---------------------------------------------------------------------------
# BLEU
# ---------------------------------------------------------------------------


def _ptb_strings(ptb_reference):
    return lambda text: ptb_reference[text]


@pytest.mark.parametrize("corpus", sorted(CORPORA))
def test_bleu_matches_pycocoevalcap(corpus):
    references, predictions = CORPORA[corpus]()
    ours = cm.bleu(references, predictions, tokenization="builtin")
    theirs = _reference_bleu(references, predictions)
    assert len(ours) == 4
    for a, b in zip(ours, theirs):
        assert abs(a - b) <= TOL, (ours, theirs)


@requires_java
@pytest.mark.parametrize("corpus", sorted(CORPORA))
def test_ptb_bleu_matches_pycocoevalcap(corpus, ptb_corpora, ptb_reference):
    references, predictions = CORPORA[corpus]()
    ours = cm.bleu_from_tokens(ptb_corpora[corpus])
    theirs = _reference_bleu(references, predictions,
                             to_string=_ptb_strings(ptb_reference))
    for a, b in zip(ours, theirs):
        assert abs(a - b) <= TOL, (ours, theirs)


@requires_java
def test_ptb_scores_end_to_end(ptb_reference):
    """bleu / cider_d with tokenization="ptb" (one Java run each) equal the
    toolkit's scorers on the toolkit's PTB tokens."""
    references, predictions = _messy_random_set()
    # Plus an item where builtin and PTB tokens differ.
    references["differ"] = ["rock 'n' roll", "a happy dog :)"]
    predictions["differ"] = "rock'n'roll"
    to_string = _ptb_strings(ptb_reference)
    ours = cm.bleu(references, predictions, tokenization="ptb")
    theirs = _reference_bleu(references, predictions, to_string=to_string)
    for a, b in zip(ours, theirs):
        assert abs(a - b) <= TOL, (ours, theirs)
    score, _ = cm.cider_d(references, predictions, tokenization="ptb")
    ref_score, _ = _reference_cider(references, predictions, to_string)
    assert abs(score - ref_score) <= TOL
    # The tokenization mattered: builtin scores differ.
    assert cm.bleu(references, predictions, tokenization="builtin") != ours


@requires_java
def test_shapes_scores_do_not_depend_on_tokenization():
    references, predictions = _shapes_corpus()
    ptb = cm.tokenize_corpus(references, predictions, tokenization="ptb")
    builtin = cm.tokenize_corpus(references, predictions,
                                 tokenization="builtin")
    assert ptb.references == builtin.references
    assert ptb.predictions == builtin.predictions
    assert cm.bleu_from_tokens(ptb) == cm.bleu_from_tokens(builtin)
    assert cm.cider_d_from_tokens(ptb) == cm.cider_d_from_tokens(builtin)
    assert 0.0 < cm.cider_d_from_tokens(ptb)[0]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_bleu_other_orders_match_pycocoevalcap(n):
    references, predictions = _hand_made_set()
    ours = cm.bleu(references, predictions, n=n, tokenization="builtin")
    theirs = _reference_bleu(references, predictions, n=n)
    assert len(ours) == n
    for a, b in zip(ours, theirs):
        assert abs(a - b) <= TOL


def test_bleu_single_items_match_pycocoevalcap():
    """Each hand-made item as its own corpus exercises every edge alone."""
    references, predictions = _hand_made_set()
    for key in references:
        refs, pred = {key: references[key]}, {key: predictions[key]}
        ours = cm.bleu(refs, pred, tokenization="builtin")
        theirs = _reference_bleu(refs, pred)
        for a, b in zip(ours, theirs):
            assert abs(a - b) <= TOL, (key, ours, theirs)


def test_bleu_hand_worked():
    # Candidate "the cat sat" vs reference "the cat sat on the mat":
    # all n-grams match, so precisions are ~1 and only the brevity penalty
    # exp(1 - 6/3) applies (up to the 1e-9 smoothing constants).
    scores = cm.bleu({0: ["the cat sat on the mat"]}, {0: "the cat sat"}, n=3,
                     tokenization="builtin")
    for score in scores:
        assert score == pytest.approx(math.exp(-1.0), rel=1e-8)
    # Closest reference length: 3 is closer to 3 than 6 is, so no penalty.
    scores = cm.bleu({0: ["the cat sat on the mat", "a cat sat"]},
                     {0: "the cat sat"}, n=1, tokenization="builtin")
    assert scores[0] == pytest.approx(1.0, rel=1e-8)


# ---------------------------------------------------------------------------
# CIDEr-D
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("corpus", sorted(CORPORA))
def test_cider_d_matches_pycocoevalcap(corpus):
    references, predictions = CORPORA[corpus]()
    score, per_item = cm.cider_d(references, predictions,
                                 tokenization="builtin")
    ref_score, ref_per_item = _reference_cider(references, predictions)
    assert abs(score - ref_score) <= TOL
    assert per_item.keys() == ref_per_item.keys()
    for key in per_item:
        assert abs(per_item[key] - ref_per_item[key]) <= TOL, key


@requires_java
@pytest.mark.parametrize("corpus", sorted(CORPORA))
def test_ptb_cider_d_matches_pycocoevalcap(corpus, ptb_corpora, ptb_reference):
    references, predictions = CORPORA[corpus]()
    score, per_item = cm.cider_d_from_tokens(ptb_corpora[corpus])
    ref_score, ref_per_item = _reference_cider(
        references, predictions, to_string=_ptb_strings(ptb_reference))
    assert abs(score - ref_score) <= TOL
    assert per_item.keys() == ref_per_item.keys()
    for key in per_item:
        assert abs(per_item[key] - ref_per_item[key]) <= TOL, key


def test_cider_d_single_item_is_zero():
    # With one item every reference n-gram has df = num_items, so idf = 0.
    score, per_item = cm.cider_d({"a": ["a dog runs"]}, {"a": "a dog runs"},
                                 tokenization="builtin")
    assert score == 0.0 and per_item == {"a": 0.0}


# ---------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("metric", [cm.bleu, cm.cider_d, cm.tokenize_corpus])
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
    with pytest.raises(TypeError, match="decode"):
        metric({1: [b"a b"]}, {1: "a b"})
    with pytest.raises(ValueError, match="tokenization"):
        metric({1: ["a b"]}, {1: "a b"}, tokenization="PTB")


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
