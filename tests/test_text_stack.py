"""The text-to-image stack (pecker/text/stack.py): the pass-through VAE, prompt encoding as the diffusers
pipeline does it (cached), the SD-folder loading code on a tiny random model in diffusers' layout, and one
SFD / PECKER iteration through the text path of the unlearning loop."""

from __future__ import annotations

import pytest
import torch

from pecker.diffusion.schedule import make_scheduler
from pecker.diffusion.unet import build_unet, load_unet, null_label, save_unet
from pecker.text.stack import PassThroughVAE, PromptEncoder, build_stack, minilm_path
from tests.helpers import SD_SCHEDULE, tiny_sd_folder

TINY_UNET = dict(arch="unet2d_condition", base_channels=8, channel_mult=[1, 2], layers_per_block=1,
                 attention_resolutions=[4], dropout=0.0, attention_head_dim=4, norm_num_groups=4,
                 cross_attention_dim=384)
DATA = {"resolution": 8, "channels": 1, "num_classes": 10}


@pytest.fixture(scope="module")
def stack():
    return build_stack({"source": "minilm_wheel", "max_length": 12}, DATA)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return build_unet(TINY_UNET, DATA).eval()


def test_pass_through_vae_is_the_identity_and_decodes_to_rgb():
    vae = PassThroughVAE(latent_channels=1, out_channels=3)
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    assert torch.equal(vae.encode(x).latent_dist.sample(), x)
    rgb = vae.decode(x).sample
    assert rgb.shape == (2, 3, 8, 8) and torch.equal(rgb[:, 1:2], x)
    # RGB in: the grey mean
    assert torch.allclose(vae.encode(rgb).latent_dist.mode(), x)
    assert vae.config.scaling_factor == 1.0 and len(vae.config.block_out_channels) == 1


def test_embedded_stack_loads_minilm_offline(stack):
    assert (minilm_path() / "model.safetensors").is_file()
    assert stack.hidden_size == 384 and stack.max_length == 12
    assert len(stack.describe()["text_encoder_sha256"]) == 64
    assert not any(p.requires_grad for p in stack.text_encoder.parameters())


def test_prompt_encoder_matches_the_pipeline_and_caches(stack, unet):
    ddpm = make_scheduler(SD_SCHEDULE)
    enc = PromptEncoder(stack, unet, ddpm)
    prompts = ["a photo of a sneaker", "", "a bag, inverted"]
    got = enc.encode(prompts)
    assert got.shape == (3, 12, 384)
    # what the tokenizer + encoder give directly (the pipeline's encode_prompt path, no attention mask)
    ids = stack.tokenizer(prompts, padding="max_length", max_length=12, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        direct = stack.text_encoder(ids)[0]
    torch.testing.assert_close(got, direct)
    calls = []
    enc.pipe.encode_prompt = lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(AssertionError("re-encoded"))
    again = enc.encode(["", "a photo of a sneaker"])  # cached: no encoder call
    assert not calls and torch.equal(again[1], got[0])
    assert enc.fingerprint(prompts) != enc.fingerprint(prompts[::-1])


def test_text_unet_round_trips_and_has_no_null_label(unet, tmp_path):
    save_unet(tmp_path / "u", unet, {"kind": "test"})
    back, meta = load_unet(tmp_path / "u")
    assert meta["network"] == "unet2d_condition" and null_label(back) is None
    h = torch.randn(2, 12, 384)
    z, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 500])
    with torch.no_grad():
        torch.testing.assert_close(back(z, t, encoder_hidden_states=h).sample, unet(z, t, encoder_hidden_states=h).sample)


def test_pipelines_run_on_the_embedded_stack(stack, unet):
    ddpm = make_scheduler(SD_SCHEDULE)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for safe in (False, True):
        pipe = stack.pipeline(unet, ddpm, safe=safe)
        out = stack.pipeline_images(pipe(["a sneaker", "a bag"], num_inference_steps=2, guidance_scale=3.0,
                                         latents=noise.clone(), output_type="pt").images)
        assert out.shape == (2, 3, 8, 8) and 0 <= float(out.min()) and float(out.max()) <= 1


def test_sld_settings_scale_the_warmup_and_refuse_an_sld_that_never_engages():
    from pecker.config import ConfigError
    from pecker.evaluate.concept_run import sld_settings

    base = {"sld_config": "medium", "sampling_steps": 50, "sld_reference_steps": None}
    assert sld_settings(base)["sld_warmup_steps"] == 10  # SafetyConfig.MEDIUM as published
    assert sld_settings({**base, "sampling_steps": 10, "sld_reference_steps": 50})["sld_warmup_steps"] == 2
    with pytest.raises(ConfigError, match="evaluate.concept.sampling_steps.*sld_reference_steps"):
        sld_settings({**base, "sampling_steps": 10})  # MEDIUM's 10-step warmup covers all 10 steps


def test_sld_with_the_scaled_warmup_changes_the_images(stack, unet):
    """The failure this guards against: at 10 steps SLD-Medium's unscaled warmup left every image
    identical to the plain pipeline's."""
    from pecker.evaluate.concept_run import sld_settings

    ddpm = make_scheduler(SD_SCHEDULE)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sld = sld_settings({"sld_config": "medium", "sampling_steps": 5, "sld_reference_steps": 50})
    outs = []
    for safe, extra in ((False, {}), (True, sld)):
        pipe = stack.pipeline(unet, ddpm, safe=safe)
        if safe:
            pipe.safety_concept = "a sneaker"
        outs.append(stack.pipeline_images(pipe(["a sneaker", "a bag"], num_inference_steps=5, guidance_scale=3.0,
                                               latents=noise.clone(), output_type="pt", **extra).images))
    assert (outs[0] - outs[1]).abs().max() > 1e-4


def test_sd_folder_loading_code_on_a_tiny_random_model(stack, tmp_path):
    from pecker.text.stack import sd_unet

    ref = tiny_sd_folder(tmp_path / "sd", stack.tokenizer)
    sd = build_stack({"source": "sd_folder", "model": str(tmp_path / "sd"), "max_length": 12}, {"channels": 3})
    assert sd.describe()["text_source"] == "sd_folder" and sd.hidden_size == 16
    unet = sd_unet({"model": str(tmp_path / "sd")})
    for a, b in zip(unet.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)
    emb = PromptEncoder(sd, unet, make_scheduler(SD_SCHEDULE)).encode(["a photo of Brad Pitt"])
    assert emb.shape == (1, 12, 16)
    # latents 4 x 8 x 8 decode to 16 x 16 RGB through the real AutoencoderKL
    img = sd.images_from_latents(torch.randn(1, 4, 8, 8))
    assert img.shape == (1, 3, 16, 16)


def test_sd_folder_missing_names_the_key(tmp_path):
    from pecker.config import ConfigError

    with pytest.raises(ConfigError, match="text.model"):
        build_stack({"source": "sd_folder", "model": str(tmp_path / "nowhere")}, {"channels": 3})


def _unlearner(stack, unet, mask: bool):
    from pecker.unlearn.task import PromptForgetting
    from pecker.unlearn.trainer import Unlearner

    enc = PromptEncoder(stack, unet, make_scheduler(SD_SCHEDULE))
    task = PromptForgetting(enc.encode(["a bag", "a coat", "a dress"]), enc.encode(["a photo of a sneaker"] * 2),
                            enc.encode(["a photo of a shoe"] * 2), enc.encode([""])[0],
                            negative=enc.encode(["inverted"])[0], guidance=4.5, prompt_dropout=0.5)
    s = dict(t_min=20, t_max=980, t_init=625, batch_size=2, forget_batch_size=2, adam_betas=[0.0, 0.999],
             adam_eps=1e-6, lr_theta=1e-4, lr_psi=1e-4, lam_psi=1.0, mu_psi=1.0, lam_theta=1.0, mu_theta=1.0, xi=1.0,
             normaliser_clamp=1e-5, grad_clip_value=1.0, ema_decay=0.9, ema_warmup=False, images_seen="retain",
             mask={"enabled": mask, "ratio": 0.5, "scope": "global", "source": "generator", "refresh": "every_step",
                   "apply_to": "forget", "t_min": 20, "t_max": 980, "batch_size": 2, "generator_mode": "train"})
    return Unlearner(unet, SD_SCHEDULE, s, task, seed=0)


@pytest.mark.parametrize("mask", [False, True], ids=["sfd", "pecker"])
def test_one_sfd_and_pecker_iteration_through_the_text_path(stack, unet, mask):
    unl = _unlearner(stack, unet, mask)
    before = [p.detach().clone() for p in unl.params]
    row = unl.train_step()
    assert row["images_seen"] == 2  # the retain batch only (images_seen: retain)
    for key in ("loss_psi", "loss_theta", "grad_norm_theta_forget"):
        assert torch.isfinite(torch.tensor(row[key])), key
    assert row["grad_norm_theta_forget"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, unl.params))
    assert (row["mask_density"] < 1.0) == mask


def test_prompt_dropout_replaces_prompts_by_the_empty_one(stack, unet):
    unl = _unlearner(stack, unet, False)
    c_r, c_f, _ = unl.draw_conditions()
    rng = torch.Generator().manual_seed(3)
    d_r, d_f = unl.task.fake_score_conditions(c_r, c_f, rng)
    empty = unl.task.uncond
    for before, after in ((c_r, d_r), (c_f, d_f)):
        for i in range(len(before)):
            assert torch.equal(after.hidden[i], before.hidden[i]) or torch.equal(after.hidden[i], empty)
        assert torch.equal(after.uncond_hidden, before.uncond_hidden)  # the forget branch keeps its negative prompt
    # probability 0.5 over 200 draws: both outcomes occur
    big = unl.task.draw(torch.Generator().manual_seed(0), 200, 1)[0]
    dropped, _ = unl.task.fake_score_conditions(big, c_f, rng)
    n = sum(torch.equal(dropped.hidden[i], empty) for i in range(200))
    assert 60 < n < 140
