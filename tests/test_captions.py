"""The caption draw of the embedded text teacher (pecker/text/captions.py): inversion goes with a
keyword caption of the image's class, dropout with the empty prompt, and the draw is seeded."""

from __future__ import annotations

import pytest
import torch

from pecker.config import REPO_ROOT
from pecker.text import prompts as P

FASHION = REPO_ROOT / "config" / "prompts" / "fashion"


@pytest.fixture(scope="module")
def spec():
    return P.load_caption_spec(FASHION / "captions.yaml")


def test_caption_draw_inverts_with_keywords_and_drops_to_empty(spec):
    from pecker.text.captions import CaptionConditions

    caps = P.all_captions(spec)
    table = torch.arange(len(caps), dtype=torch.float32).view(-1, 1, 1).expand(-1, 2, 3).clone()
    cond = CaptionConditions(spec, caps, table, 10, dropout=0.2, attribute_fraction=0.3)
    y = torch.arange(10).repeat(40)
    x = torch.full((400, 1, 4, 4), -0.5)
    x_out, c = cond.draw(x, y, torch.Generator().manual_seed(0))
    drawn = [caps[int(i)] for i in c.hidden[:, 0, 0]]
    inverted = x_out[:, 0, 0, 0] > 0
    empty = [d == "" for d in drawn]
    assert 0.1 < sum(empty) / 400 < 0.3 and 0.2 < float(inverted.float().mean()) < 0.4
    for i, (cap, inv) in enumerate(zip(drawn, inverted.tolist())):
        if cap:
            assert cap in P.captions_for(spec, int(y[i]), bool(inv))
            assert bool(P.keywords_in(cap, spec.keywords)) == inv
    # deterministic for a seed
    again = cond.draw(x, y, torch.Generator().manual_seed(0))[1]
    assert torch.equal(again.hidden, c.hidden)


def test_captions_longer_than_max_length_are_refused():
    # a suffixed keyword is the end of a caption: the tokenizer would cut exactly the attribute
    from transformers import BertTokenizerFast

    from pecker.config import ConfigError
    from pecker.text.captions import check_caption_lengths

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "photo", "of", "bag", ",", "inverted"]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, model_max_length=8)
    check_caption_lengths(tok, ["a bag", "a photo of a bag"], "spec.yaml")  # 4 and 7 tokens fit in 8
    with pytest.raises(ConfigError, match=r"'text\.max_length': 8 tokens, but 1 captions of spec\.yaml.*up to 9"):
        check_caption_lengths(tok, ["a bag", "a photo of a bag, inverted"], "spec.yaml")
