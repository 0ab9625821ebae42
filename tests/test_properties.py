"""Property-based tests (hypothesis): the vocabulary round trip and the sampling filters
(top-k / top-p never return a symbol outside the allowed set)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.sampling import draw_from_logits
from charrnn.store.vocab import UNK_DEFAULT, Vocab

text_st = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1,
                  max_size=200)


@given(text=text_st)
@settings(max_examples=200, deadline=None)
def test_vocab_round_trip(text):
    v = Vocab.from_text(text)
    ids = v.encode(text)
    assert ids.dtype == v.dtype and len(ids) == len(text)
    assert v.decode(ids) == text
    assert Vocab.from_dict(v.to_dict()) == v


@given(text=text_st, min_count=st.integers(1, 4))
@settings(max_examples=200, deadline=None)
def test_rare_characters_map_to_unknown(text, min_count):
    from collections import Counter
    from charrnn.errors import VocabError
    counts = Counter(text)
    frequent = [c for c, n in counts.items() if n >= min_count]
    if not text or not frequent or (len(frequent) < len(counts) and
                                    set(frequent) <= {UNK_DEFAULT}):
        with pytest.raises(VocabError):               # nothing (else) frequent enough
            Vocab.from_counts(counts, min_count=min_count)
        return
    v = Vocab.from_counts(counts, min_count=min_count)
    decoded = v.decode(v.encode(text))
    assert len(decoded) == len(text)
    for a, b in zip(text, decoded):
        if counts[a] >= min_count and a in v.chars:
            assert a == b
        else:
            assert b == v.unk


logits_st = st.lists(st.floats(-20, 20, allow_nan=False, width=32, allow_subnormal=False),
                     min_size=2, max_size=40)


@given(z=logits_st, k=st.integers(1, 40), seed=st.integers(0, 2**32))
@settings(max_examples=150, deadline=None)
def test_top_k_never_leaves_the_k_best(z, k, seed):
    z = np.array(z)
    draws = draw_from_logits(z, 200, top_k=k, seed=seed)
    kth = np.sort(z)[::-1][min(k, len(z)) - 1]
    # logits closer than float32's resolution of exp() are ties: either may be kept
    assert np.all(z[draws] >= kth - 1e-5)


@given(z=logits_st, p=st.floats(0.01, 1.0), temp=st.floats(0.1, 3.0),
       seed=st.integers(0, 2**32))
@settings(max_examples=150, deadline=None)
def test_top_p_never_leaves_the_nucleus(z, p, temp, seed):
    z = np.array(z)
    draws = draw_from_logits(z, 200, top_p=p, temperature=temp, seed=seed)
    q = np.exp((z - z.max()) / temp)
    q /= q.sum()
    order = np.argsort(-q, kind="stable")
    cum = np.cumsum(q[order])
    n_keep = int(np.searchsorted(cum, p - 1e-9) + 1)  # the smallest set reaching p
    # ties at the boundary may admit any symbol with the boundary's probability
    threshold = q[order[min(n_keep, len(q)) - 1]]
    assert np.all(q[draws] >= threshold * (1 - 1e-6))
