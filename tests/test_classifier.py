import numpy as np
import torch

from pecker.classifier.models import load_classifier, predict_logits
from pecker.classifier.train import augment_batch, stratified_split, train_classifier
from pecker.evaluate.accuracy import label_accuracy, unlearning_accuracy
from tests.helpers import tiny_config, tiny_dataset


def test_stratified_split_holds_out_each_class():
    labels = np.repeat(np.arange(10), 20)
    tr, va = stratified_split(labels, 0.1, seed=0)
    assert len(set(tr) & set(va)) == 0 and len(tr) + len(va) == 200
    assert all((labels[va] == c).sum() == 2 for c in range(10))


def test_augment_batch_crops_each_image_at_its_own_shift():
    x = torch.randn(9, 3, 16, 16)
    for mode in ("shift", "shift_flip"):
        out = augment_batch(x, mode, torch.Generator().manual_seed(3))
        gen = torch.Generator().manual_seed(3)  # the same draws, cropped one image at a time
        xp = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
        dx, dy = torch.randint(0, 5, (9,), generator=gen), torch.randint(0, 5, (9,), generator=gen)
        ref = torch.stack([xp[i, :, dy[i]:dy[i] + 16, dx[i]:dx[i] + 16] for i in range(9)])
        if mode == "shift_flip":
            flip = torch.rand(9, generator=gen) < 0.5
            ref[flip] = ref[flip].flip(-1)
        assert torch.equal(out, ref)
    assert torch.equal(augment_batch(x, "none", torch.Generator()), x)


def test_classifier_learns_and_round_trips(tmp_path):
    data = tiny_dataset(tmp_path, n_per_class=20)
    ds = tiny_config()
    ds["classifier"].update(epochs=6, width=8, lr=3e-3, batch_size=16, val_fraction=0.2)
    meta = train_classifier(ds, data, tmp_path / "clf", torch.device("cpu"))
    assert meta["heldout_accuracy"] > 0.5  # the synthetic classes are easy; chance is 0.1
    assert meta["substitute"] is True and meta["n_heldout"] == 40
    model, meta2 = load_classifier(tmp_path / "clf")
    imgs = np.load(data / "train.npz")["images"]
    a = predict_logits(model, meta2["input_spec"], imgs[:7])
    b = predict_logits(model, meta2["input_spec"], imgs[:7], batch_size=3)
    assert a.shape == (7, 10) and torch.allclose(a, b, atol=1e-5)


def test_unlearning_accuracy_on_a_known_case():
    # 10 forget-class samples: 3 still classified as class 0, 6 as the cover class 1, 1 as class 5
    # plus 5 retained samples that must not enter UA's denominator
    preds = [0, 0, 0, 1, 1, 1, 1, 1, 1, 5] + [2, 2, 0, 0, 0]
    labels = np.array([0] * 10 + [2] * 5)
    logits = torch.full((15, 10), -10.0)
    logits[torch.arange(15), torch.tensor(preds)] = 10.0
    ua = unlearning_accuracy(logits, labels, forget_class=0, cover_class=1)
    assert ua["ua"] == 70.0 and ua["n_forget_samples"] == 10 and ua["cover_share"] == 0.6
    assert ua["forget_pred_histogram"][:2] == [3, 6]
    acc = label_accuracy(np.array(preds), labels)
    assert acc["per_class"] == {0: 0.3, 2: 0.4} and acc["n"] == 15
