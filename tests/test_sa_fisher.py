"""SA's released Stable Diffusion Fisher (pecker/unlearn/baselines/sa_fisher.py): a pickle in the real
layout (``pickle.dump`` of latent-diffusion names -> tensors), made here for a tiny SD-layout UNet,
converted to the UNet's diffusers names by diffusers' converter and checked name by name; a wrong
checksum, a file naming a function and a Fisher of another layout are refused before anything is
written."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from pecker import io
from pecker.diffusion.unet import save_unet
from pecker.unlearn.baselines.sa_fisher import convert_released_fisher, load_fisher
from tests.helpers import released_fisher_dict


def _unet(layers_per_block=1):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16, 16),
                                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                                layers_per_block=layers_per_block, cross_attention_dim=16, attention_head_dim=4,
                                norm_num_groups=4)


@pytest.fixture(scope="module", params=[1, 2], ids=["1-layer", "2-layer"])
def released(tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("fisher")
    model = _unet(request.param)
    save_unet(tmp / "teacher", model)
    ldm, by_name = released_fisher_dict(model)
    path = tmp / "full_fisher_dict.pkl"
    with open(path, "wb") as f:
        pickle.dump(ldm, f, protocol=pickle.HIGHEST_PROTOCOL)  # as SA's combine_fisher_dict.py writes it
    return {"tmp": tmp, "model": model, "path": path, "sha": io.sha256_file(path), "by_name": by_name}


def test_the_released_layout_maps_to_every_parameter_of_the_teacher(released):
    tmp, model = released["tmp"], released["model"]
    convert_released_fisher(released["path"], released["sha"], tmp / "teacher", tmp / "converted")
    fisher, meta = load_fisher(tmp / "converted", model, "cpu")
    names = [n for n, _ in model.named_parameters()]
    assert len(fisher) == len(names) == meta["n_tensors"]
    for name, f in zip(names, fisher):
        assert torch.equal(f, released["by_name"][name]), name
    assert meta["origin"]["sha256"] == released["sha"] and meta["teacher"]["file"] == "teacher"


def test_a_wrong_checksum_reads_nothing_and_writes_nothing(released):
    tmp = released["tmp"]
    with pytest.raises(io.ChecksumError):
        convert_released_fisher(released["path"], "0" * 64, tmp / "teacher", tmp / "bad")
    assert not list(tmp.glob("bad*"))


def test_a_pickle_naming_a_function_is_refused(tmp_path, released):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"diffusion_model.out.2.weight": Evil()}, f)
    with pytest.raises(pickle.UnpicklingError, match="system"):
        convert_released_fisher(path, io.sha256_file(path), released["tmp"] / "teacher", tmp_path / "out")
    assert not list(tmp_path.glob("out*"))


def test_a_fisher_of_another_layout_names_what_does_not_fit(tmp_path, released):
    ldm, _ = released_fisher_dict(released["model"])
    del ldm["diffusion_model.out.2.weight"]
    path = tmp_path / "short.pkl"
    with open(path, "wb") as f:
        pickle.dump(ldm, f)
    with pytest.raises(ValueError, match="conv_out.weight"):
        convert_released_fisher(path, io.sha256_file(path), released["tmp"] / "teacher", tmp_path / "out")
    assert not list(tmp_path.glob("out*"))
