"""Conditions (pecker.diffusion.conditioning) and the unlearning loop on a text-conditioned UNet."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from pecker import config as C
from pecker.diffusion.conditioning import ClassCondition, TextCondition, cat
from pecker.diffusion.unet import build_unet
from pecker.unlearn.settings import method_settings
from pecker.unlearn.task import ClassForgetting, PromptForgetting
from pecker.unlearn.trainer import Unlearner

DS = "mnist-tiny"
L, D = 4, 16  # tokens, embedding width


def tiny_text_unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=D, attention_head_dim=2, norm_num_groups=4,
    )


def test_class_guidance_is_diffusers_form_in_one_batched_call():
    torch.manual_seed(0)
    unet = build_unet({"base_channels": 8, "channel_mult": [1, 2], "layers_per_block": 1, "attention_resolutions": [4],
                       "dropout": 0.0, "attention_head_dim": 8, "norm_num_groups": 4},
                      {"resolution": 8, "channels": 1, "num_classes": 10}).eval()
    z, t = torch.randn(3, 1, 8, 8), torch.tensor([10, 500, 900])
    labels = torch.tensor([0, 4, 9])
    calls = []
    unet.register_forward_pre_hook(lambda m, a: calls.append(len(a[0])))
    with torch.no_grad():
        guided = ClassCondition(labels, null=10, guidance=3.0).eps(unet, z, t)
        assert calls == [6]
        c = unet(z, t, class_labels=labels).sample
        u = unet(z, t, class_labels=torch.full((3,), 10)).sample
    torch.testing.assert_close(guided, u + 3.0 * (c - u), rtol=1e-5, atol=1e-5)
    both = cat([ClassCondition(labels[:1], 10), ClassCondition(labels[1:], 10)])
    assert torch.equal(both.labels, labels) and torch.equal(both[1:].labels, labels[1:])
    with pytest.raises(ValueError, match="guidance"):
        cat([ClassCondition(labels, 10, 2.0), ClassCondition(labels, 10)])
    with pytest.raises(ValueError, match="null label"):
        ClassCondition(labels, guidance=2.0).eps(unet, z, t)


def test_text_condition_guides_with_its_own_unconditional_embedding():
    unet = tiny_text_unet().eval()
    z, t = torch.randn(2, 1, 8, 8), torch.tensor([100, 800])
    h, u = torch.randn(2, L, D), torch.randn(2, L, D)
    with torch.no_grad():
        guided = TextCondition(h, u, 4.5).eps(unet, z, t)
        c = unet(z, t, encoder_hidden_states=h).sample
        n = unet(z, t, encoder_hidden_states=u).sample
    torch.testing.assert_close(guided, n + 4.5 * (c - n), rtol=1e-4, atol=1e-5)
    assert TextCondition(h, u)[1:].hidden.shape == (1, L, D)


def prompt_task(guidance=4.5):
    g = torch.Generator().manual_seed(5)
    emb = lambda n: torch.randn(n, L, D, generator=g)  # noqa: E731
    return PromptForgetting(retain=emb(6), forget=emb(3), override=emb(3), uncond=emb(1)[0],
                            negative=emb(1)[0], guidance=guidance)


@pytest.mark.parametrize("method", ["sfd", "pecker"])
def test_one_unlearning_iteration_on_a_text_conditioned_unet(method):
    """The same loop, losses and mask as class forgetting, with text embeddings and guidance 4.5."""
    cfg = C.resolve([C.REPO_ROOT / "config" / "test.yaml"])
    s = method_settings(cfg["datasets"][DS]["unlearn"], method, DS)
    teacher = tiny_text_unet()
    task = prompt_task()
    unl = Unlearner(teacher, {}, s, task, seed=0)
    seen = {}

    def hook(name):
        def f(module, args, kwargs):
            seen.setdefault(name, []).append((len(args[0]), kwargs["encoder_hidden_states"].detach().clone()))
        return f

    teacher.register_forward_pre_hook(hook("phi"), with_kwargs=True)
    unl.psi.register_forward_pre_hook(hook("psi"), with_kwargs=True)
    unl.gen.unet.register_forward_pre_hook(hook("gen"), with_kwargs=True)
    t0 = [p.detach().clone() for p in teacher.parameters()]
    g0 = [p.detach().clone() for p in unl.params]
    p0 = [p.detach().clone() for p in unl.psi.parameters()]
    row = unl.train_step()
    B, Bf = s["batch_size"], s["forget_batch_size"]
    assert all(torch.isfinite(torch.tensor(row[k])) for k in ("loss_psi", "loss_theta"))
    assert all(torch.equal(a, b) for a, b in zip(t0, teacher.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(g0, unl.params))
    assert not all(torch.equal(a, b) for a, b in zip(p0, unl.psi.parameters()))
    # score networks are guided (conditional and unconditional halves in one call), the generator is not
    assert [n for n, _ in seen["gen"]] == ([B + Bf] + ([Bf] if method == "pecker" else []) + [B, Bf])
    assert [n for n, _ in seen["phi"]] == [2 * (B + Bf)]
    assert [n for n, _ in seen["psi"]] == [2 * (B + Bf), 2 * (B + Bf)]
    # theta step, forget branch: teacher at the override prompts, psi at the forget prompts, negative prompt
    phi_h, psi_h = seen["phi"][0][1], seen["psi"][1][1]
    fgt = slice(B, B + Bf)
    over = {tuple(r.flatten().tolist()) for r in task.override}
    forg = {tuple(r.flatten().tolist()) for r in task.forget_emb}
    assert all(tuple(r.flatten().tolist()) in over for r in phi_h[fgt])
    assert all(tuple(r.flatten().tolist()) in forg for r in psi_h[fgt])
    assert torch.equal(phi_h[B + Bf + B], task.negative) and torch.equal(phi_h[B + Bf], task.uncond)
    if method == "pecker":
        assert row["mask_refreshed"] == 1 and 0.45 < row["mask_density"] < 0.55
    tensors, meta = unl.state()
    again = Unlearner(tiny_text_unet(), {}, s, prompt_task(), seed=0)
    again.load_state(tensors, meta)
    assert all(torch.equal(a, b) for a, b in zip(again.params, unl.params))


def test_class_task_validates_and_describes():
    task = ClassForgetting(10, 0, 1, null=10)
    assert task.describe() == {"forget": {"type": "class", "label": 0}, "cover": {"type": "class", "label": 1}}
    with pytest.raises(C.ConfigError, match="cover_class"):
        ClassForgetting(10, 2, 2)
    with pytest.raises(C.ConfigError, match="forget_class"):
        ClassForgetting(10, 12, 1)
