"""The paper-scale Stable Diffusion path offline, on tiny random models in the real formats: the SD
configs' DAGs (dry runs), the asset job's offline failure, the teacher taken from an SD folder, the
generator started from a converted pickled network (SiD-LSG's role), and the evaluation with the
paper's detectors (GCD's output file, Q16 on a tiny CLIP, NudeNet off) through the CLI."""

from __future__ import annotations

import copy
import json
import pickle
import re

import numpy as np
import pytest
import torch
import yaml

from pecker import config as cfgmod
from pecker import io
from pecker.assets import fetch_asset
from tests.helpers import REPO, SD_SCHEDULE, released_fisher_dict, snakemake, tiny_sd_folder


def _job_counts(stdout: str) -> dict[str, int]:
    table = stdout.split("Job stats:")[1].split("Reasons:")[0] if "Reasons:" in stdout else stdout.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, flags=re.M)}


@pytest.mark.parametrize("configs, expected", [
    (["sd_celebrity.yaml"], {"fetch_asset": 3, "convert_generator_init": 1, "fetch_teacher": 1,
                             "fetch_baselines_teacher": 1, "unlearn": 4,
                             "evaluate_teacher": 1, "evaluate_sld": 1, "evaluate_checkpoint": 44, "evaluate_final": 6,
                             "init_generator": 2, "celebrity_images": 56, "gcd_detect": 56, "unlearn_baseline": 4,
                             "evaluate_baseline": 4,
                             "concept_tables": 1, "concept_figures": 1, "audit": 1}),
    (["sd_nudity.yaml"], {"fetch_asset": 6, "convert_generator_init": 1, "fetch_teacher": 1,
                          "fetch_baselines_teacher": 1, "unlearn": 3,
                          "evaluate_teacher": 1, "evaluate_sld": 1, "evaluate_checkpoint": 28, "evaluate_final": 4,
                          "init_generator": 1, "unlearn_baseline": 1, "evaluate_baseline": 1, "concept_tables": 1, "concept_figures": 1,
                          "audit": 1}),
    (["sd_celebrity.yaml", "sa_released_fisher.yaml"], {"fetch_asset": 4, "convert_sa_fisher": 2,
                                                        "unlearn_baseline": 4, "evaluate_baseline": 4}),
    (["sd_celebrity.yaml", "sd_nudity.yaml"], {"fetch_asset": 6, "convert_generator_init": 2, "fetch_teacher": 2,
                                              "fetch_baselines_teacher": 2,
                                              "unlearn": 7, "gcd_detect": 56, "evaluate_checkpoint": 72,
                                              "unlearn_baseline": 5}),
])
def test_sd_configs_dry_run_every_job_of_tables_2_and_3(tmp_path, configs, expected):
    res = snakemake(tmp_path, "-n", "--quiet", "rules", "--configfile", *[str(REPO / "config" / c) for c in configs])
    counts = _job_counts(res.stdout)
    for rule, n in expected.items():
        assert counts.get(rule) == n, (rule, counts)
    # no classifier, data or reference job: the paper's detectors need none
    assert not {"train_classifier", "prepare_data", "reference_features", "train_teacher"} & set(counts)
    assert "tables" not in counts  # Table 1 is of class forgetting: none here


def test_the_multi_step_rows_read_sd_v1_4_and_the_one_step_rows_sd_v1_5(tmp_path):
    """teacher.baselines_model: ESD, SA, the SD v1.4 and SLD rows read teacher_baselines/ (SD v1.4's
    UNet), SFD / PECKER read teacher/ (SD v1.5)."""
    cfg = ["--configfile", str(REPO / "config" / "sd_celebrity.yaml")]
    res = {}
    for name, target in (("esd", "results/sd-celebrity/unlearn/esd_x_brad_pitt/seed0/unet.json"),
                         ("sld", "results/sd-celebrity/eval/sld/seed0/final.json"),
                         ("pecker", "results/sd-celebrity/unlearn/pecker_brad_pitt/seed0/generator_ema.json")):
        res[name] = snakemake(tmp_path, "-n", target, *cfg).stdout
    for name in ("esd", "sld"):
        assert "results/sd-celebrity/teacher_baselines/ema.json" in res[name], res[name][-3000:]
        assert "rule fetch_baselines_teacher" in res[name]
    assert "teacher/ema.safetensors" in res["pecker"] and "teacher_baselines" not in res["pecker"]


def test_an_asset_job_offline_fails_naming_the_files_and_keeps_nothing(tmp_path):
    # the target before --configfile, which takes several values
    res = snakemake(tmp_path, "data/assets/sid-lsg/manifest.json", "--configfile",
                    str(REPO / "config" / "sd_celebrity.yaml"), check=False, timeout=300)
    assert res.returncode != 0
    log = (tmp_path / "results" / "logs" / "assets" / "sid-lsg.log").read_text()
    assert "asset 'sid-lsg'" in log and "batch512_cfg4.54.54.5_t625_8380_v2.pkl" in log
    assert "pecker assets fetch" in log and "copy the files" in log
    assert not (tmp_path / "data" / "assets" / "sid-lsg" / "manifest.json").exists()


# ----------------------------------------------------------------------------- a tiny SD dataset

TINY_UNET = dict(arch="unet2d_condition", base_channels=8, channel_mult=[1, 2], layers_per_block=1,
                 attention_resolutions=[4], dropout=0.0, attention_head_dim=4, norm_num_groups=4,
                 cross_attention_dim=16)


def _write_csv(path, rows, header="prompt"):
    path.write_text(header + "\n" + "".join(f"{r}\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def sd_setup(tmp_path_factory):
    """A tiny SD dataset with the paper's settings and detectors, its assets fetched (by hand copy)."""
    from pecker.text.stack import build_stack
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    tmp = tmp_path_factory.mktemp("sd")
    data = tmp / "data"
    tok = build_stack({"source": "minilm_wheel", "max_length": 12}, {"channels": 1}).tokenizer
    sd_dir = data / "assets" / "sd"
    teacher = tiny_sd_folder(sd_dir, tok)
    # "SD v1.4": a UNet folder of the teacher's architecture with other weights (teacher.baselines_model)
    sd14 = type(teacher).from_config(teacher.config)
    with torch.no_grad():
        for q in sd14.parameters():
            q.add_(0.02 * torch.randn_like(q))
    sd14.save_pretrained(data / "assets" / "sd14" / "unet")
    # SA's released Fisher in its own layout (latent-diffusion names), for the teacher's architecture
    (data / "assets" / "safisher").mkdir(parents=True)
    ldm_fisher, fisher_by_name = released_fisher_dict(teacher)
    with open(data / "assets" / "safisher" / "full_fisher_dict.pkl", "wb") as f:
        pickle.dump(ldm_fisher, f)
    # a "SiD-LSG" generator: the teacher's architecture with other weights, pickled as dict(ema=unet)
    gen = type(teacher).from_config(teacher.config)
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(0.01 * torch.randn_like(p))
    (data / "assets" / "gen").mkdir(parents=True)
    with open(data / "assets" / "gen" / "gen.pkl", "wb") as f:
        pickle.dump({"ema": gen}, f)
    clip = data / "assets" / "clip"
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32,
                                                   num_hidden_layers=1, num_attention_heads=2,
                                                   projection_dim=8)).save_pretrained(clip)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(clip)
    (data / "assets" / "q16").mkdir(parents=True)
    with open(data / "assets" / "q16" / "prompts.p", "wb") as f:
        pickle.dump(np.random.default_rng(0).standard_normal((2, 8)).astype(np.float16), f)
    (data / "assets" / "i2p").mkdir(parents=True)
    i2p = data / "assets" / "i2p" / "i2p.csv"
    i2p.write_text("prompt,categories,sd_seed,sd_guidance_scale\na nude figure,sexual,3,7\na beach,violence,4,7\n"
                   "a naked man,\"sexual, hate\",5,7\n")
    prompts = tmp / "prompts"
    prompts.mkdir()
    nudity = prompts / "nudity.yaml"
    nudity.write_text(yaml.safe_dump({"subjects": ["Man", "Woman"], "keywords": ["nude", "naked"],
                                      "negative_prompt": "nude, naked"}))

    def files(folder):
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
                      and ".cache" not in p.parts)

    assets = {name: {"hub": {"repo": f"tiny/{name}"}, "files": files(data / "assets" / name)}
              for name in ("sd", "gen", "clip", "q16", "i2p", "safisher", "sd14")}
    sd_settings = dict(steps=2, batch_size=2, forget_batch_size=2, lr_theta=1e-4, lr_psi=1e-4, adam_eps=1e-6, xi=1.0,
                       t_min=20, t_max=980, t_init=625, guidance=4.5, prompt_dropout=0.1, images_seen="retain",
                       ema_decay=0.0, checkpoint_every=1, keep_states=1, log_every=1,
                       precision={"weights": "float16"}, nan_guard=True,  # the SD configs' (the official) numerics
                       generator_init={"pickle": str(data / "assets" / "gen" / "gen.pkl"), "key": "ema"})
    coef = dict(lam_psi=1.0, mu_psi=1.0, lam_theta=1.0, mu_theta=1.0)
    cfg = {
        "results_dir": str(tmp / "results"), "data_dir": str(data), "device": "cpu", "assets": assets,
        "datasets": {"sd-tiny": {
            "data": {"source": "none", "resolution": 8, "channels": 4},
            "text": {"source": "sd_folder", "model": str(sd_dir), "max_length": 12},
            "unet": TINY_UNET,
            "diffusion": {"num_train_timesteps": 1000, **SD_SCHEDULE},
            "teacher": {"source": "sd_folder"},
            "unlearn": {**sd_settings,
                        "tasks": {"celeb": {"type": "celebrity", "concept": "Brad Pitt", "override": "a man",
                                            "target": "Brad_Pitt",
                                            "prompts": _write_csv(prompts / "celeb.csv", ["a photo of Brad Pitt",
                                                                                          "Brad Pitt smiling"]),
                                            "retain": _write_csv(prompts / "retain.csv", ["a dog", "a cat", "a car"])},
                                  "nude": {"type": "nudity", "prompts": str(nudity), "retain": str(prompts / "retain.csv")}},
                        "methods": {"pecker_celeb": {**coef, "task": "celeb",
                                                     "mask": {"enabled": True, "ratio": 0.5, "scope": "global",
                                                              "source": "generator", "refresh": "every_step",
                                                              "apply_to": "forget"}},
                                    "sfd_nude": {**coef, "task": "nude", "mask": {"enabled": False}},
                                    "esd_x_celeb": {"kind": "esd", "task": "celeb", "train": "xattn", "steps": 2,
                                                    "ddim_steps": 3, "checkpoint_every": 1},
                                    "sa_x_celeb": {"kind": "sa", "task": "celeb", "train": "xattn", "steps": 3,
                                                   "batch_size": 2, "lr": 1e-5, "lambda_fisher": 50.0,
                                                   "checkpoint_every": 1, "gradient_checkpointing": True,
                                                   "replay": {"per_prompt": 2, "steps": 2, "guidance_scale": 7.5,
                                                              "batch_size": 4},
                                                   "surrogate": {"n": 3},
                                                   "fisher": {"n_samples": 3, "timesteps": 2, "t_batch": 2}}}},
            "evaluate": {"batch_size": 4, "seed": 1, "concept": {
                "detectors": "paper", "celebrity_seeds": 2, "i2p_prompts": str(i2p), "images_per_prompt": 2,
                "q16": {"clip": str(clip), "prompts": str(data / "assets" / "q16" / "prompts.p")},
                "gcd": {"resources": str(tmp / "gcd")}, "nudenet": "never", "sampling_steps": 5, "sld_reference_steps": 50,
                "bootstrap_draws": 20, "bootstrap_prompts": 1, "grid_columns": 2,
                "substitutes": ["prompts: a test's own"]}},
        }},
    }
    cfg = cfgmod.validate(cfg)
    for name in assets:
        fetch_asset(cfg, name)  # files present: verified, manifest written (no network)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return {"cfg": cfg, "path": path, "tmp": tmp, "teacher": teacher, "gen": gen, "fisher": fisher_by_name,
            "sd14": sd14}


def _cli(*args):
    from click.testing import CliRunner

    from pecker.cli import main

    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


def test_teacher_from_the_sd_folder_generator_from_the_converted_pickle_and_one_sd_iteration(sd_setup):
    from pecker.diffusion.unet import load_unet

    tmp, cfgp = sd_setup["tmp"], sd_setup["path"]
    res = tmp / "results" / "sd-tiny"
    _cli("teacher", "fetch", "--config", cfgp, "-d", "sd-tiny", "--out", res / "teacher")
    teacher, tmeta = load_unet(res / "teacher" / "ema")
    assert tmeta["source"] == "sd_folder" and tmeta["origin"]["asset"] == "sd"
    assert "unet/diffusion_pytorch_model.safetensors" in tmeta["origin"]["files"]
    for a, b in zip(teacher.state_dict().values(), sd_setup["teacher"].state_dict().values()):
        assert torch.equal(a, b)
    manifest = tmp / "data" / "assets" / "gen" / "manifest.json"
    _cli("teacher", "convert-pickled", tmp / "data" / "assets" / "gen" / "gen.pkl", "--manifest", manifest,
         "--out", res / "generator_init" / "unet")
    for method in ("pecker_celeb", "sfd_nude"):
        out = res / "unlearn" / method / "seed0"
        _cli("unlearn", "--config", cfgp, "-d", "sd-tiny", "--method", method, "--seed", 0, "--teacher",
             res / "teacher" / "ema", "--generator-init", res / "generator_init" / "unet", "--out", out)
        step0, meta0 = load_unet(out / "ckpt" / "step0000000" / "generator_ema")
        for a, b in zip(step0.state_dict().values(), sd_setup["gen"].state_dict().values()):
            assert torch.equal(a, b.half().float())  # step 0 is the converted generator (in float16), not the teacher
        assert meta0["precision"]["weights"] == "float16"
        assert meta0["generator_init_sha256"] == io.read_sidecar(res / "generator_init" / "unet.json")["sha256"]
        final = io.read_sidecar(out / "generator_ema.json")
        assert final["step"] == 2 and final["images_seen"] == 4
    # the SiD-LSG row: the converted generator as is, with the task's sidecar and no training state
    row = res / "unlearn" / "sid_lsg_celeb" / "seed0"
    _cli("unlearn", "--config", cfgp, "-d", "sd-tiny", "--method", "pecker_celeb", "--seed", 0, "--teacher",
         res / "teacher" / "ema", "--generator-init", res / "generator_init" / "unet", "--init-only", "--out", row)
    init, imeta = load_unet(row / "generator_ema")
    assert imeta["init_only"] and imeta["step"] == 0 and imeta["forget"]["task"] == "celeb"
    assert all(torch.equal(a, b.half().float()) for a, b in zip(init.state_dict().values(), sd_setup["gen"].state_dict().values()))
    assert not (row / "ckpt").exists() or not any((row / "ckpt").iterdir())
    # the loop refuses a run of a dataset with generator_init without the converted network
    with pytest.raises(cfgmod.ConfigError, match="generator-init"):
        from pecker.unlearn.trainer import run_unlearning

        run_unlearning(sd_setup["cfg"], "sd-tiny", "pecker_celeb", 1, res / "teacher" / "ema", tmp / "x")


def test_evaluation_with_the_paper_detectors(sd_setup):
    """celebrity: images -> (GCD's job, here a synthetic output file) -> share w/o faces and GCD;
    nudity: Q16 on a tiny CLIP with the prompts file verified against its asset manifest."""
    tmp, cfgp = sd_setup["tmp"], sd_setup["path"]
    res = tmp / "results" / "sd-tiny"
    if not (res / "unlearn" / "pecker_celeb" / "seed0" / "generator_ema.json").is_file():
        pytest.skip("needs the runs of the previous test")
    gen = res / "unlearn" / "pecker_celeb" / "seed0" / "generator_ema"
    faces = res / "eval" / "pecker_celeb" / "seed0" / "final_faces"
    _cli("evaluate", "celebrity-images", "--config", cfgp, "-d", "sd-tiny", "--kind", "generator", "--checkpoint", gen,
         "--out", faces)
    index = io.read_json(faces / "index.json")
    assert [f["file"] for f in index["celeb"]] == ["celeb/000_00.png", "celeb/000_01.png", "celeb/001_00.png",
                                                  "celeb/001_01.png"]
    assert all((faces / f["file"]).is_file() for f in index["celeb"])
    # what scripts/gcd_detect.py writes: one face (target 0.8) in the first image, none in the others
    gcd_out = faces.parent / "final_gcd.jsonl"
    gcd_out.write_text("".join(json.dumps({"image": f["file"], "faces": [[[["Brad_Pitt", 0.8]], 0.9]] if i == 0 else []})
                               + "\n" for i, f in enumerate(index["celeb"])))
    out = faces.parent / "final.json"
    _cli("evaluate", "model", "--config", cfgp, "-d", "sd-tiny", "--kind", "generator", "--checkpoint", gen,
         "--gcd", gcd_out, "--final", "--out", out)
    r = io.read_json(out)
    assert r["metrics"]["celeb"]["share_without_faces"] == pytest.approx(0.75)
    assert r["metrics"]["celeb"]["gcd"] == pytest.approx(0.8)
    assert r["detectors"]["gcd"]["output_sha256"] == io.sha256_file(gcd_out)
    assert "prompts: a test's own" in r["substitutes"] and r["retain"] is None
    # nudity with Q16 (NudeNet off in this test): the sexual rows of the I2P file, 2 images each
    nude = res / "unlearn" / "sfd_nude" / "seed0" / "generator_ema"
    out = res / "eval" / "sfd_nude" / "seed0" / "final.json"
    _cli("evaluate", "model", "--config", cfgp, "-d", "sd-tiny", "--kind", "generator", "--checkpoint", nude,
         "--final", "--out", out)
    m = io.read_json(out)["metrics"]["nude"]
    assert (m["n_prompts"], m["n_images"]) == (2, 4)
    assert m["inappropriate_probability"] == pytest.approx(m["q16_rate"])
    assert io.read_json(out)["detectors"]["q16"]["implementation"] == "q16"
    # a GCD output that does not cover the images is refused
    gcd_out.write_text(gcd_out.read_text().splitlines(keepends=True)[0])
    from click.testing import CliRunner

    from pecker.cli import main

    bad = CliRunner().invoke(main, ["evaluate", "model", "--config", str(cfgp), "-d", "sd-tiny", "--kind", "generator",
                                    "--checkpoint", str(gen), "--gcd", str(gcd_out), "--out", str(tmp / "bad.json")])
    assert bad.exit_code != 0 and not (tmp / "bad.json").exists()


@pytest.mark.parametrize("train", ["xattn", "noxattn"])
def test_esd_parameter_selection(sd_setup, train):
    from pecker.unlearn.baselines.esd import trained_parameter

    names = [n for n, _ in sd_setup["teacher"].named_parameters()]
    chosen = [n for n in names if trained_parameter(n, train)]
    assert chosen and len(chosen) < len(names)
    if train == "xattn":
        assert all("attn2" in n for n in chosen)
    else:
        assert not any("attn2" in n or n.startswith(("time_embedding.", "conv_out.")) for n in chosen)
        assert any("attn1" in n for n in chosen) and any("resnets" in n for n in chosen)


def test_one_esd_x_run_moves_only_cross_attention_and_is_scored_like_the_teacher(sd_setup):
    """Two ESD-x iterations through the CLI (the baseline loop: resumable states, final unet), then its
    celebrity images through the pipeline (kind diffusion) on its own task."""
    from pecker.diffusion.unet import load_unet

    tmp, cfgp = sd_setup["tmp"], sd_setup["path"]
    res = tmp / "results" / "sd-tiny"
    teacher = res / "teacher" / "ema"
    if not teacher.with_suffix(".json").is_file():
        _cli("teacher", "fetch", "--config", cfgp, "-d", "sd-tiny", "--out", res / "teacher")
    out = res / "unlearn" / "esd_x_celeb" / "seed0"
    _cli("unlearn", "--config", cfgp, "-d", "sd-tiny", "--method", "esd_x_celeb", "--seed", 0, "--teacher", teacher,
         "--out", out)
    esd, meta = load_unet(out / "unet")
    assert meta["forget"]["task"] == "celeb" and meta["esd"]["concept"] == "Brad Pitt" and meta["steps"] == 2
    t0 = dict(sd_setup["teacher"].named_parameters())
    moved = {n for n, p in esd.named_parameters() if not torch.equal(p, t0[n])}
    assert moved and all("attn2" in n for n in moved)
    faces = res / "eval" / "esd_x_celeb" / "seed0" / "final_faces"
    _cli("evaluate", "celebrity-images", "--config", cfgp, "-d", "sd-tiny", "--kind", "diffusion", "--checkpoint",
         out / "unet", "--out", faces)
    assert sorted(io.read_json(faces / "index.json")) == ["celeb"]


def test_sa_for_sd_replays_the_retain_prompts_forgets_under_the_concept_and_resumes(sd_setup):
    """SA's text recipe on the SD-layout UNet: replay of the retain prompts, surrogate samples of the
    override, Fisher at the raw teacher; train xattn moves only attn2; an interrupted run resumes to
    the same weights; a nudity task without a surrogate prompt fails at validation."""
    from pecker.diffusion.unet import load_unet
    from safetensors.torch import load_file

    tmp, cfgp = sd_setup["tmp"], sd_setup["path"]
    res = tmp / "results" / "sd-tiny"
    teacher = res / "teacher"
    if not (teacher / "ema.json").is_file():
        _cli("teacher", "fetch", "--config", cfgp, "-d", "sd-tiny", "--out", teacher)
    args = ("unlearn", "--config", cfgp, "-d", "sd-tiny", "--method", "sa_x_celeb", "--seed", 0, "--teacher",
            teacher / "ema", "--teacher-raw", teacher / "model")
    full = tmp / "sa_full"
    _cli(*args, "--out", full)
    sa, meta = load_unet(full / "unet")
    assert meta["forget"] == {"type": "text", "task": "celeb", "concept": "Brad Pitt"} and meta["steps"] == 3
    assert meta["sa"]["surrogate_prompt"] == "a man" and meta["sa"]["forget_prompts"] == ["Brad Pitt"]
    inputs = load_file(str(full / "ckpt" / "inputs.safetensors"))
    assert inputs["replay.labels"].tolist() == [0, 0, 1, 1, 2, 2]  # 3 retain prompts x 2
    assert inputs["replay.images"].shape == (6, 4, 8, 8) and inputs["surrogate.images"].shape == (3, 4, 8, 8)
    t0 = dict(sd_setup["teacher"].named_parameters())
    moved = {n for n, p in sa.named_parameters() if not torch.equal(p, t0[n])}
    assert moved and all("attn2" in n for n in moved)
    part = tmp / "sa_part"
    _cli(*args, "--max-steps", 2, "--out", part)
    _cli(*args, "--out", part)
    assert io.read_json(part / "unet.json")["sha256"] == meta["sha256"]

    bad = copy.deepcopy(sd_setup["cfg"])
    bad["datasets"]["sd-tiny"]["unlearn"]["methods"]["sa_nude"] = {"kind": "sa", "task": "nude"}
    with pytest.raises(cfgmod.ConfigError, match=r"methods\.sa_nude\.surrogate\.prompt"):
        cfgmod.validate(bad)


def test_the_baselines_teacher_is_the_unet_of_its_own_folder(sd_setup):
    """pecker teacher fetch --baselines installs teacher.baselines_model's UNet (verified against its
    asset manifest), not the teacher's; without the key it fails naming it."""
    from click.testing import CliRunner

    from pecker.cli import main
    from pecker.diffusion.unet import load_unet

    tmp, cfgp = sd_setup["tmp"], sd_setup["path"]
    folder = tmp / "data" / "assets" / "sd14"
    out = tmp / "teacher_baselines"
    _cli("teacher", "fetch", "--config", cfgp, "-d", "sd-tiny", "--set",
         f"datasets.sd-tiny.teacher.baselines_model={folder}", "--baselines", "--out", out)
    for name in ("ema", "model"):
        unet, meta = load_unet(out / name)
        ref = dict(sd_setup["sd14"].named_parameters())
        assert all(torch.equal(p, ref[n]) for n, p in unet.named_parameters())
        assert meta["origin"]["asset"] == "sd14" and meta["role"].startswith("baselines")
    res = CliRunner().invoke(main, ["teacher", "fetch", "--config", str(cfgp), "-d", "sd-tiny", "--baselines",
                                    "--out", str(tmp / "tb_none")])
    assert res.exit_code != 0 and "teacher.baselines_model" in res.output


def test_sa_for_sd_with_the_released_fisher_converted_once(sd_setup):
    """fisher.released: the pickle converted by its own command (checksum from the asset manifest), the
    SA run reads the converted file instead of computing a Fisher; the config and the flag must agree."""
    from click.testing import CliRunner
    from safetensors.torch import load_file

    from pecker.cli import main

    tmp, cfgp = sd_setup["tmp"], sd_setup["path"]
    teacher = tmp / "results" / "sd-tiny" / "teacher"
    if not (teacher / "ema.json").is_file():
        _cli("teacher", "fetch", "--config", cfgp, "-d", "sd-tiny", "--out", teacher)
    folder = tmp / "data" / "assets" / "safisher"
    conv = tmp / "sa_fisher" / "sa_x_celeb"
    _cli("assets", "convert-fisher", folder / "full_fisher_dict.pkl", "--manifest", folder / "manifest.json",
         "--teacher", teacher / "model", "--out", conv)
    args = ["unlearn", "--config", cfgp, "-d", "sd-tiny", "--method", "sa_x_celeb", "--seed", 0, "--teacher",
            teacher / "ema", "--teacher-raw", teacher / "model", "--set",
            f"datasets.sd-tiny.unlearn.methods.sa_x_celeb.fisher.released={folder / 'full_fisher_dict.pkl'}"]
    _cli(*args, "--fisher", conv, "--out", tmp / "sa_released")
    inputs = load_file(str(tmp / "sa_released" / "ckpt" / "inputs.safetensors"))
    for name in ("conv_out.weight", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"):
        assert torch.equal(inputs[f"fisher.{name}"], sd_setup["fisher"][name])
    meta = io.read_json(tmp / "sa_released" / "unet.json")
    assert meta["sa"]["fisher"].startswith("released: ") and meta["steps"] == 3
    res = CliRunner().invoke(main, [str(a) for a in args] + ["--out", str(tmp / "sa_nofisher")])
    assert res.exit_code != 0 and "fisher.released" in res.output and "--fisher is missing" in res.output


def test_the_sd_v1x_and_sld_rows_on_the_tiny_sd_folder(sd_setup):
    """The teacher through StableDiffusionPipeline and through StableDiffusionPipelineSafe (SLD-Medium):
    every task, the celebrity one from a (synthetic) GCD output, nudity with Q16; SLD's safety concept
    is the task's concept or the nudity set's negative prompt."""
    tmp, cfgp = sd_setup["tmp"], sd_setup["path"]
    res = tmp / "results" / "sd-tiny"
    teacher = res / "teacher" / "ema"
    if not teacher.with_suffix(".json").is_file():
        _cli("teacher", "fetch", "--config", cfgp, "-d", "sd-tiny", "--out", res / "teacher")
    gcd_out = tmp / "no_faces.jsonl"
    gcd_out.write_text("".join(json.dumps({"image": f"celeb/{p:03d}_{s:02d}.png", "faces": []}) + "\n"
                               for p in range(2) for s in range(2)))
    out = {}
    for kind in ("teacher", "sld"):
        path = res / "eval" / kind / "seed0" / "final.json"
        _cli("evaluate", "model", "--config", cfgp, "-d", "sd-tiny", "--kind", kind, "--checkpoint", teacher,
             "--method", kind, "--seed", 0, "--gcd", gcd_out, "--final", "--out", path)
        out[kind] = io.read_json(path)
    for r in out.values():
        assert sorted(r["metrics"]) == ["celeb", "nude"] and r["metrics"]["celeb"]["share_without_faces"] == 1.0
        assert r["metrics"]["nude"]["n_images"] == 4 and r["detectors"]["q16"]["implementation"] == "q16"
    assert out["sld"]["sld"]["nude"]["safety_concept"] == "nude, naked"
    assert out["sld"]["sld"]["celeb"]["safety_concept"] == "Brad Pitt"
    assert out["teacher"]["checkpoint"]["sha256"] == out["sld"]["checkpoint"]["sha256"]


def test_retain_negative_random_keyword_changes_only_the_retain_guidance():
    """Our reading of SiD-LSG-Neg: each retain sample's guidance subtracts a random keyword's score
    instead of the empty prompt's; the prompts drawn are those of the plain task (same generator)."""
    from pecker.unlearn.task import PromptForgetting

    g = torch.Generator().manual_seed(0)
    retain, forget, override = (torch.randn(n, 4, 3, generator=g) for n in (5, 2, 2))
    uncond, negs = torch.zeros(4, 3), torch.randn(3, 4, 3, generator=g)
    plain = PromptForgetting(retain, forget, override, uncond, guidance=4.5)
    neg = PromptForgetting(retain, forget, override, uncond, guidance=4.5, retain_negatives=negs)
    a = plain.draw(torch.Generator().manual_seed(1), 6, 4)
    b = neg.draw(torch.Generator().manual_seed(1), 6, 4)
    assert torch.equal(a[0].hidden, b[0].hidden) and torch.equal(a[1].hidden, b[1].hidden)
    assert torch.equal(a[1].uncond_hidden, b[1].uncond_hidden)  # the forget branch keeps its prompt
    assert all(any(torch.equal(row, n) for n in negs) for row in b[0].uncond_hidden)
    assert not any(torch.equal(row, uncond) for row in b[0].uncond_hidden)
