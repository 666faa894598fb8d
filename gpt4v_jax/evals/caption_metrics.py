"""Caption and object-list metrics: BLEU-1..4, CIDEr-D, object P/R/F1, exact match.

BLEU and CIDEr-D reproduce the numbers of the COCO caption evaluation toolkit
(``pycocoevalcap`` 1.2, ``Bleu(4)`` and ``Cider()``) so that our results are
comparable with published ones. They are written from the metric definitions;
where the toolkit departs from the textbook definition (BLEU's smoothing
constants and per-item "closest" reference length) we follow the toolkit,
because matching published numbers is the point, and say so at the place it
happens.

Tokenization. The toolkit first runs every caption through the Stanford PTB
tokenizer (a Java program) and drops punctuation tokens; published numbers
include that step. The corpus-level functions take raw text
(``references`` as ``{key: [str, ...]}``, ``predictions`` as ``{key: str}``)
and a ``tokenization`` keyword:

* ``"ptb"``: pycocoevalcap's ``PTBTokenizer`` (needs ``java`` on PATH and the
  pycocoevalcap package), the official tokens;
* ``"builtin"``: :func:`tokenize`, pure Python, written from PTB's observed
  behaviour. Identical tokens on plain captions (lower-case words, commas,
  colons, a final period, e.g. the shapes captions); its docstring lists the
  rare constructs where it still differs;
* ``"auto"`` (default): ``"ptb"`` when available, else ``"builtin"`` with a
  one-time logged warning.

Each PTB run starts a Java process (0.2 to 1 s), so an evaluation that wants
several metrics tokenizes once with :func:`tokenize_corpus` and scores the result with
:func:`bleu_from_tokens` and :func:`cider_d_from_tokens`.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import importlib.util
import logging
import math
import os
import re
import shutil
import unicodedata
from typing import Callable, Hashable, Mapping, Sequence

Ngram = tuple[str, ...]

_log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Built-in tokenizer: a pure-Python approximation of PTB
# ---------------------------------------------------------------------------
#
# PTB (Stanford CoreNLP 3.4.1, as pycocoevalcap runs it with -lowerCase) lexes
# the ORIGINAL-case text, taking the longest token that one of its rules
# matches, then lower-cases each token; pycocoevalcap then removes the tokens
# of a fixed punctuation list. We do the same three steps. The rules below were
# written by observing PTB's output on probe sentences (no code was taken from
# it); tests/test_caption_metrics.py checks them against the real tokenizer.

# Tokens pycocoevalcap removes after PTB. Its list also holds -LRB-, -RRB-,
# -LCB-, -RCB-, but compares them with the LOWER-cased tokens, so PTB's
# bracket tokens ("-lrb-", ...) are never removed and count as words in the
# published numbers; we keep them too.
_REMOVED = frozenset(["''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--",
                      "...", ";"])
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-",
             "{": "-lcb-", "}": "-rcb-"}

# Characters PTB rewrites before tokenizing: typographic quotes become ASCII
# quotes (so "don’t" splits like "don't"), dashes and the ellipsis become
# "--" / "..." (removed as punctuation), euro / pound / cent signs become PTB's
# "$" / "#" / "cents", "½" becomes "1/2", and a soft hyphen vanishes inside
# its word.
_REWRITES = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
    "\u00ab": '"', "\u00bb": '"', "\u2039": '"', "\u203a": '"',
    "\u2013": " -- ", "\u2014": " -- ", "\u2026": " ... ",
    "\u20ac": "$", "\u00a3": "#", "\u00a2": " cents ", "\u00ad": "",
    "\u00bd": " 1/2 ", "\u00bc": " 1/4 ", "\u00be": " 3/4 ",
})

# Abbreviations PTB keeps with their period ("mr." stays one token). Probed
# in lower, title and upper case, mid-sentence and at the end.
_ABBREVIATIONS = (
    "mr mrs ms messrs mme mlle dr prof gen col lt sgt capt cmdr maj adm brig "
    "rev hon sen sens rep reps gov pres st jr sr esq jan feb mar apr jun jul "
    "aug sep sept oct nov dec mon tue tues wed thu thurs fri etc vs cf al co "
    "corp inc ltd bros dept univ assn intl natl mfg est ph mt ft ave rd blvd "
    "sq tel ext calif conn fla ind kan mich minn mo neb nev okla tenn va vt wis "
    "ariz colo ga ky md mont").split()
# ... only when capitalized ("Miss." yes, "miss." no): they are also words.
_CAPITALIZED_ABBREVIATIONS = "mass ill ore pa tex wash ark del la miss".split()
# ... only before a number ("no. 5" yes, "said no." no).
_NUMBER_ABBREVIATIONS = "no nos ca fig op pp".split()
# Whole words PTB splits in two, at the given index ("cannot" -> can not).
_SPLIT_WORDS = {"cannot": 3, "gonna": 3, "gotta": 3, "wanna": 3, "lemme": 3,
                "gimme": 3}


def _char_class(predicate: Callable[[str], bool]) -> str:
    """A regex character-class body (ranges) of the BMP characters where
    ``predicate`` holds; ``re`` has no Unicode-category classes."""
    ranges, start = [], None
    for code in range(0x10001):
        inside = code < 0x10000 and predicate(chr(code))
        if inside and start is None:
            start = code
        elif not inside and start is not None:
            ranges.append(f"\\u{start:04x}-\\u{code - 1:04x}")
            start = None
    return "".join(ranges)


def _is_dropped(char: str) -> bool:
    """Characters PTB 3.4.1 deletes as untokenizable (they still separate
    tokens): controls, format characters such as a zero-width space,
    surrogates, private-use and unassigned code points, emoji variation
    selectors. Characters beyond the BMP (emoji) are dropped separately."""
    return ((unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn")
             and not char.isspace() and char != "\u00ad")
            or "\ufe00" <= char <= "\ufe0f")


@functools.cache
def _lexer() -> tuple[re.Pattern, re.Pattern, tuple[re.Pattern, ...]]:
    """(dropped characters, PTB's n't split, token rules), compiled on
    first use (building the Unicode classes takes ~0.1 s)."""
    # Word characters: letters, combining marks (Devanagari, "e" + accent),
    # decimal digits (A, for alphanumeric) and underscore (W); L: letters.
    A = _char_class(lambda c: (unicodedata.category(c)[0] in "LM"
                               or unicodedata.category(c) == "Nd")
                    and not _is_dropped(c))
    W = A + "_"
    L = _char_class(lambda c: unicodedata.category(c)[0] == "L")
    dropped = re.compile(f"[{_char_class(_is_dropped)}\U00010000-\U0010ffff]")
    # A hyphen / slash separated part: a word or a decimal ("3.5-inch").
    part = rf"(?:[0-9]+(?:[.,][0-9]+)+|[{W}]+)"
    any_abbrev = "|".join(_ABBREVIATIONS)
    cap_abbrev = "|".join(_CAPITALIZED_ABBREVIATIONS)
    num_abbrev = "|".join(_NUMBER_ABBREVIATIONS)
    rules = [
        r"(?i:https?|ftp)://[^\s<>\"]*[^\s<>\".,;:!?'()\[\]{}]",  # URL
        rf"[{W}.+-]+@[{W}-]+(?:\.[{W}-]+)+",                     # e-mail
        rf"[A-Za-z](?:\.[A-Za-z])*\.(?:-{part})*",   # "u.s.", "c.", "u.k.-based"
        rf"(?i:{any_abbrev})\.",                                  # "mr."
        rf"(?=[A-Z])(?i:{cap_abbrev})\.",                         # "Miss."
        rf"(?i:{num_abbrev})\.(?=\s*[0-9])",                      # "no. 5"
        rf"[{L}][{A}]*(?:\.[{L}][{A}]*)+(?:/[{A}]+)*",  # "www.x.com/a", "a.b"
        r"[-+]?(?:[0-9]+(?:[.,:/-][0-9]+)*|\.[0-9]+)",  # "-5", "10:30", "1/2"
        # Words, hyphenated or slashed ("black-and-white", "and/or"), with an
        # optional "#"/"@" ("#tbt") or o'/d'/l' ("o'clock") in front.
        rf"(?:[#@](?=[{L}])|[dlo]'(?=[{L}])|[DLO]'(?=[{L}]))?"
        rf"{part}(?:[-/\u2010\u2011]{part})*",
        r"[A-Z]+&[A-Z]+",                                         # "AT&T"
        r"(?i:c\+\+|[cf]#)",
        r"</?[A-Za-z][^\s<>]*>",                                  # "<tag>"
        rf"(?i:'(?:s|re|ve|ll|m|d)|n't)(?![{W}])",           # clitics
        rf"'(?i:em|cause|til|n'|[0-9]{{2}}s)(?![{W}])",       # "'90s", "'em"
        r"(?i:ma'am)",
        rf"'(?i:t)(?=(?i:is|was)(?![{W}]))",               # "'tis" -> 't is
        rf"[Yy]'(?=[{L}])",                              # "y'all" -> y' all
        r"[`'\"]+",                                               # quotes
        r"[?!]+", r"\.+", r"-+",                                  # punctuation
        r"\S",                                         # any other symbol
    ]
    negation = re.compile(rf"(?i:n't)(?![{W}])")
    return dropped, negation, tuple(re.compile(rule) for rule in rules)


def _normal_form(token: str) -> list[str]:
    """A lexed token as PTB prints it, lower-cased (one or two tokens)."""
    if token in _BRACKETS:
        return [_BRACKETS[token]]
    if token[0] in "`'\"" and token.strip("`'\"") == "":
        return ["''"]
    if len(token) > 1 and token.strip(".-") == "":
        return ["..." if token[0] == "." else "--"]
    token = token.lower()
    if token in _SPLIT_WORDS:
        cut = _SPLIT_WORDS[token]
        return [token[:cut], token[cut:]]
    return [token]


def tokenize(text: str) -> list[str]:
    """The built-in approximation of pycocoevalcap's PTB tokenization.

    Like PTB + pycocoevalcap: splits clitics ("man's" -> ``man 's``, "can't"
    -> ``ca n't``, "cannot" -> ``can not``); keeps word-internal hyphens,
    slashes and dots ("black-and-white", "and/or", "www.x.com"), numbers with
    their ``. , : / -`` ("3.5", "1,000", "10:30", "-5"), acronyms and known
    abbreviations with their period ("u.s.", "a.m.", "mr.", "etc."); keeps
    ``$ % & #`` and other symbols as tokens, brackets as ``-lrb-``/``-rrb-``/
    ``-lsb-``/... and runs of ``?``/``!`` ("!!"); drops emoji and the
    punctuation tokens ``. , ; : ? ! ' " ` - -- ...``; lower-cases.

    Known differences from PTB (rare in captions; measured by
    experiments/caption_tokenizer_agreement.py): emoticons (":)" -> PTB
    ``:-rrb-``, "^_^"), "rock'n'roll" and "rock ‘n’ roll", a quoted letter
    before a hyphen ("'L'-shaped" -> PTB ``l' shaped``), "ol'", "cat+dog",
    "US$5", "’90s" with a typographic apostrophe, characters PTB deletes such
    as "‼" or "Ⅻ", abbreviations outside our list, and other rules of PTB's
    lexer that captions rarely exercise. And one that depends on the next
    caption, which a per-caption tokenizer cannot see: "plan b." ends in
    ``b.`` here, but in ``b`` under PTB when the next caption starts with a
    capital. Plain captions (words, commas, colons, final period, any case)
    always agree.

    Args:
      text: one caption.

    Returns:
      Its tokens, e.g. "A man's (red) hat, at 10:30 a.m.!!" ->
      ``["a", "man", "'s", "-lrb-", "red", "-rrb-", "hat", "at", "10:30",
      "a.m.", "!!"]``.
    """
    dropped, negation, rules = _lexer()
    text = dropped.sub(" ", text.translate(_REWRITES))
    tokens = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            break
        # The longest match wins (which rule gave it does not matter: the
        # token is the matched text).
        matches = [rule.match(text, position) for rule in rules]
        end = max(m.end() for m in matches if m)
        # "don't" -> "do" + "n't": a word never swallows the n of n't.
        if (end - position > 1 and text[end - 1] in "nN"
                and negation.match(text, end - 1)):
            end -= 1
        tokens.extend(_normal_form(text[position:end]))
        position = end
    return [token for token in tokens if token not in _REMOVED]


# ---------------------------------------------------------------------------
# PTB tokenization through pycocoevalcap, and the choice between the two
# ---------------------------------------------------------------------------

TOKENIZATIONS = ("auto", "ptb", "builtin")

# Characters Java ends a line at. pycocoevalcap writes one caption per line
# and pairs output lines with captions by position, so one of these inside a
# caption would silently shift every later caption's tokens.
_LINE_BREAKS = re.compile("[\n\r\v\f\u2028\u2029]")
# Written after each group of captions in a PTB run: a missing or wrong
# sentinel means the output lines did not pair up with the captions (or Java
# failed). It also ends the group as the end of a file would: PTB looks at
# the next line, e.g. "plan b." gives "b" when the next line starts with a
# capital and "b." otherwise, so it starts with a lower-case letter.
_SENTINEL = "ptb alignment check."
_SENTINEL_TOKENS = ["ptb", "alignment", "check"]

_warned_fallback = False


def ptb_unavailable_reason() -> str | None:
    """Why "ptb" tokenization cannot run here, or None when it can."""
    if shutil.which("java") is None:
        return "there is no `java` on PATH"
    if importlib.util.find_spec("pycocoevalcap") is None:
        return "the pycocoevalcap package is not installed"
    return None


def resolve_tokenization(tokenization: str) -> str:
    """"auto" / "ptb" / "builtin" -> the tokenization that will run: "ptb"
    or "builtin".

    Raises ValueError for an unknown name and RuntimeError for "ptb" where it
    cannot run. "auto" falls back to "builtin" with a warning, logged once per
    process.
    """
    global _warned_fallback
    if tokenization not in TOKENIZATIONS:
        raise ValueError(f"tokenization={tokenization!r}: expected one of "
                         f"{TOKENIZATIONS}.")
    if tokenization == "builtin":
        return "builtin"
    reason = ptb_unavailable_reason()
    if reason is None:
        return "ptb"
    if tokenization == "ptb":
        raise RuntimeError(
            f"tokenization='ptb' runs pycocoevalcap's PTBTokenizer, but {reason}."
            " Install a Java runtime (e.g. `apt-get install default-jre-headless`)"
            " and `pip install pycocoevalcap==1.2`, or pass tokenization="
            "'builtin' (or 'auto').")
    if not _warned_fallback:
        _warned_fallback = True
        _log.warning(
            "Caption metrics: tokenizing with the built-in PTB approximation "
            "because %s, so BLEU / CIDEr-D may differ slightly from official "
            "pycocoevalcap numbers on captions with rare punctuation or "
            "symbols (plain captions, e.g. the shapes ones, score the same). "
            "Install Java and pycocoevalcap==1.2 for the official tokenizer, "
            "or pass tokenization='builtin' to choose this one explicitly.",
            reason)
    return "builtin"


def ptb_tokenize(texts: Sequence[str]) -> list[list[str]]:
    """Tokenizes ``texts`` with pycocoevalcap's PTBTokenizer in ONE Java run.

    Returns, per text, the tokens the toolkit's scorers see (PTB's
    lower-cased tokens minus its punctuation list). Line breaks inside a text
    become spaces first (see _LINE_BREAKS). Raises RuntimeError when PTB
    cannot run or its output does not line up with the input.
    """
    return _ptb_tokenize_groups([texts])[0]


def _ptb_tokenize_groups(groups: Sequence[Sequence[str]]
                         ) -> list[list[list[str]]]:
    """:func:`ptb_tokenize` of each group, all in one Java run, each group
    tokenized as if it were a file of its own (see _SENTINEL)."""
    reason = ptb_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"PTB tokenization needs Java and pycocoevalcap, but "
                           f"{reason}; pass tokenization='builtin' instead.")
    # Imported here: pycocoevalcap is optional (a test dependency).
    from pycocoevalcap.tokenizer import ptbtokenizer
    lines = []
    for group in groups:
        lines += [_LINE_BREAKS.sub(" ", text) for text in group] + [_SENTINEL]
    try:
        output = ptbtokenizer.PTBTokenizer().tokenize(
            {i: [{"caption": line}] for i, line in enumerate(lines)})
    except OSError as error:
        # It writes its input to a temporary file next to its jar.
        raise RuntimeError(
            f"pycocoevalcap's PTBTokenizer failed ({error}); it needs a writable "
            f"{os.path.dirname(ptbtokenizer.__file__)} and a working `java`. "
            "Fix that or pass tokenization='builtin'.") from error
    result, start = [], 0
    for group in groups:
        end = start + len(group)  # the index of this group's sentinel
        if end not in output or output[end][0].split() != _SENTINEL_TOKENS:
            raise RuntimeError(
                f"PTBTokenizer returned {len(output)} lines for {len(lines)} "
                "inputs, or misaligned ones (is `java` working? run `java "
                "-version`); pass tokenization='builtin' to score without it.")
        # split(), as the toolkit's scorers do: PTB may join a token's parts
        # with a non-breaking space ("2 1/2"), which the scorers split again.
        result.append([output[i][0].split() for i in range(start, end)])
        start = end + 1
    return result


@dataclasses.dataclass(frozen=True)
class TokenizedCorpus:
    """A (references, predictions) pair tokenized once, for several metrics.

    Attributes:
      references: key -> list (one per reference) of token lists.
      predictions: key -> token list of the prediction; same keys, same order.
      tokenization: the one that produced them, "ptb" or "builtin".
    """
    references: dict
    predictions: dict
    tokenization: str


def tokenize_corpus(references: Mapping[Hashable, Sequence[str]],
                    predictions: Mapping[Hashable, str], *,
                    tokenization: str = "auto") -> TokenizedCorpus:
    """Validates and tokenizes a corpus: every caption in one PTB run.

    With "ptb" the tokens are exactly those of the official evaluation
    (pycocoevalcap's ``COCOEvalCap``), which tokenizes all references, then
    all predictions, each as one file: PTB's tokens for a caption can depend
    on the caption that follows it, so the order is kept.

    Args:
      references: key -> list of raw reference captions.
      predictions: key -> raw predicted caption; same keys as ``references``.
      tokenization: "auto", "ptb" or "builtin" (see the module docstring).

    Returns:
      A :class:`TokenizedCorpus` for :func:`bleu_from_tokens` and
      :func:`cider_d_from_tokens`.
    """
    keys = _check_corpus(references, predictions)
    method = resolve_tokenization(tokenization)
    ref_texts = [text for key in keys for text in references[key]]
    pred_texts = [predictions[key] for key in keys]
    if method == "ptb":
        ref_tokens, pred_tokens = _ptb_tokenize_groups([ref_texts, pred_texts])
    else:
        ref_tokens = [tokenize(text) for text in ref_texts]
        pred_tokens = [tokenize(text) for text in pred_texts]
    ref_iter = iter(ref_tokens)
    refs = {key: [next(ref_iter) for _ in references[key]] for key in keys}
    return TokenizedCorpus(refs, dict(zip(keys, pred_tokens)), method)


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------


def _check_corpus(references: Mapping[Hashable, Sequence[str]],
                  predictions: Mapping[Hashable, str]) -> list[Hashable]:
    """Validates a (references, predictions) pair and returns the keys in order.

    Raises ValueError on an empty corpus, mismatched keys or an item without
    references, and TypeError when a prediction or reference is not a str
    (e.g. undecoded bytes); these are
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
        for ref in refs:
            if not isinstance(ref, str):
                raise TypeError(f"references[{key!r}] holds a "
                                f"{type(ref).__name__}, not a str; decode "
                                "bytes first (pipeline.decode_text).")
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
         n: int = 4, *, tokenization: str = "auto") -> list[float]:
    """Corpus-level BLEU-1..n of raw captions: :func:`tokenize_corpus`, then
    :func:`bleu_from_tokens`.

    Args:
      references: key -> list of raw reference captions.
      predictions: key -> raw predicted caption; same keys as ``references``.
      n: highest n-gram order.
      tokenization: "auto", "ptb" or "builtin" (see the module docstring).

    Returns:
      ``[BLEU-1, ..., BLEU-n]``.
    """
    return bleu_from_tokens(
        tokenize_corpus(references, predictions, tokenization=tokenization), n)


def bleu_from_tokens(corpus: TokenizedCorpus, n: int = 4) -> list[float]:
    """Corpus-level BLEU-1..n, as pycocoevalcap's ``Bleu(n).compute_score``.

    Clipped n-gram matches and candidate n-gram totals are summed over the
    whole corpus before dividing (corpus BLEU, not a mean of sentence BLEUs).
    The brevity penalty compares the total candidate length with the sum, over
    items, of the reference length closest to each candidate.

    Args:
      corpus: the tokenized captions (:func:`tokenize_corpus`).
      n: highest n-gram order.

    Returns:
      ``[BLEU-1, ..., BLEU-n]``.
    """
    matches = [0] * n   # clipped matching k-grams, summed over the corpus
    totals = [0] * n    # candidate k-grams, summed over the corpus
    hyp_length_sum = 0
    ref_length_sum = 0
    for key, hyp in corpus.predictions.items():
        refs = corpus.references[key]
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
            sigma: float = 6.0, *,
            tokenization: str = "auto") -> tuple[float, dict]:
    """CIDEr-D of raw captions: :func:`tokenize_corpus`, then
    :func:`cider_d_from_tokens`.

    Args:
      references: key -> list of raw reference captions.
      predictions: key -> raw predicted caption; same keys as ``references``.
      n: highest n-gram order.
      sigma: width of the length penalty.
      tokenization: "auto", "ptb" or "builtin" (see the module docstring).

    Returns:
      ``(corpus score, {key: item score})``.
    """
    return cider_d_from_tokens(
        tokenize_corpus(references, predictions, tokenization=tokenization),
        n, sigma)


def cider_d_from_tokens(corpus: TokenizedCorpus, n: int = 4,
                        sigma: float = 6.0) -> tuple[float, dict]:
    """CIDEr-D, as pycocoevalcap's ``Cider().compute_score``.

    For each item and each reference: per n-gram order 1..n, the clipped
    cosine similarity of tf-idf vectors, times a gaussian penalty
    ``exp(-delta**2 / (2 sigma**2))`` on the length difference; averaged over
    orders and references and multiplied by 10. Document frequencies come
    from the references of the evaluated set itself, so scores depend on the
    whole set (a single-item set always scores 0).

    Args:
      corpus: the tokenized captions (:func:`tokenize_corpus`).
      n: highest n-gram order.
      sigma: width of the length penalty.

    Returns:
      ``(corpus score, {key: item score})``; the corpus score is the mean of
      the item scores.
    """
    keys = list(corpus.predictions)
    hyp_tokens = [corpus.predictions[key] for key in keys]
    ref_tokens = [corpus.references[key] for key in keys]
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
