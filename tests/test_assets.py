"""Paper-scale assets (pecker/assets.py): download, sha256 pins, the manifest, the offline message, and
the config check that every path into an asset names a configured one. Offline: a file:// URL stands
in for the network, and the hub is unreachable (HF_HUB_OFFLINE=1, tests/conftest.py)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from pecker import config as cfgmod
from pecker import io
from pecker.assets import asset_dir, fetch_asset
from pecker.weights import Unavailable
from tests.helpers import REPO


def _raw(tmp_path=None, assets: dict | None = None) -> dict:
    """config/test.yaml as written (unvalidated), with a data folder and an assets section."""
    cfg = cfgmod.load_yaml(REPO / "config" / "test.yaml")
    if tmp_path is not None:
        cfg["data_dir"] = str(tmp_path / "data")
    if assets is not None:
        cfg["assets"] = assets
    return cfg


def _cfg(tmp_path, assets: dict) -> dict:
    return cfgmod.validate(_raw(tmp_path, assets))


def _source(tmp_path, text=b"prompt embeddings\n"):
    src = tmp_path / "remote" / "prompts.p"
    src.parent.mkdir(parents=True)
    src.write_bytes(text)
    return src, io.sha256_file(src)


def test_url_asset_is_downloaded_verified_and_recorded(tmp_path):
    src, sha = _source(tmp_path)
    cfg = _cfg(tmp_path, {"q16": {"url": src.as_uri(), "files": ["prompts.p"], "sha256": {"prompts.p": sha}}})
    m = fetch_asset(cfg, "q16")
    dest = asset_dir(cfg, "q16")
    assert (dest / "prompts.p").read_bytes() == src.read_bytes()
    assert m["files"]["prompts.p"] == {"sha256": sha, "bytes": src.stat().st_size, "pinned": True}
    assert m["unpinned"] == [] and m["provenance"]["step"] == "assets.fetch"
    assert io.read_json(dest / "manifest.json")["files"] == m["files"]


def test_a_file_that_does_not_match_its_pin_is_refused_and_no_manifest_is_written(tmp_path):
    src, _ = _source(tmp_path)
    cfg = _cfg(tmp_path, {"q16": {"url": src.as_uri(), "files": ["prompts.p"], "sha256": {"prompts.p": "0" * 64}}})
    with pytest.raises(io.ChecksumError, match=r"assets\.q16\.sha256\.prompts\.p"):
        fetch_asset(cfg, "q16")
    assert not (asset_dir(cfg, "q16") / "manifest.json").exists()


def test_unpinned_files_are_hashed_logged_and_listed(tmp_path, caplog):
    src, sha = _source(tmp_path)
    cfg = _cfg(tmp_path, {"q16": {"url": src.as_uri(), "files": ["prompts.p"]}})
    with caplog.at_level("WARNING", logger="pecker.assets"):
        m = fetch_asset(cfg, "q16")
    assert m["unpinned"] == ["prompts.p"] and m["files"]["prompts.p"]["sha256"] == sha
    assert sha in caplog.text and "assets.q16.sha256" in caplog.text


def test_offline_hub_asset_names_the_files_and_how_to_provide_them_then_a_hand_copy_is_verified(tmp_path):
    files = ["model_index.json", "unet/config.json"]
    cfg = _cfg(tmp_path, {"sd": {"hub": {"repo": "someone/some-model", "revision": "main"}, "files": files,
                                 "sha256": {"unet/config.json": None}}})
    with pytest.raises(Unavailable) as err:
        fetch_asset(cfg, "sd")
    msg = str(err.value)
    assert "asset 'sd'" in msg and "model_index.json" in msg and "pecker assets fetch" in msg and "copy the files" in msg
    assert not (asset_dir(cfg, "sd") / "manifest.json").exists()
    for rel in files:  # what a user does on a machine without network
        (asset_dir(cfg, "sd") / rel).parent.mkdir(parents=True, exist_ok=True)
        (asset_dir(cfg, "sd") / rel).write_text("{}")
    m = fetch_asset(cfg, "sd")
    assert m["origin"]["fetched"].startswith("already present") and sorted(m["files"]) == sorted(files)


def test_config_paths_into_assets_must_name_a_configured_asset(tmp_path):
    src, _ = _source(tmp_path)
    spec = {"q16": {"url": src.as_uri(), "files": ["prompts.p"]}}
    cfg = _cfg(tmp_path, spec)
    path = f"{cfg['data_dir']}/assets/q16/prompts.p"
    cfg["datasets"]["mnist-tiny"]["evaluate"]["note_path"] = path  # any string value counts
    assert cfgmod.asset_references(cfg, "mnist-tiny") == {"q16": ["datasets.mnist-tiny.evaluate.note_path"]}
    cfg["datasets"]["mnist-tiny"]["evaluate"]["note_path"] = f"{cfg['data_dir']}/assets/nosuch/file"
    with pytest.raises(cfgmod.ConfigError, match=r"datasets\.mnist-tiny\.evaluate\.note_path.*'nosuch'"):
        cfgmod._check_asset_references(cfg)


@pytest.mark.parametrize("spec, key", [
    ({"files": ["a"]}, "assets.x"),                                                   # neither hub nor url
    ({"url": "file:///a", "hub": {"repo": "r"}, "files": ["a"]}, "assets.x"),         # both
    ({"url": "file:///a", "files": ["a", "b"]}, "assets.x"),                          # a url is one file
    ({"hub": {"repo": "r"}, "files": ["unet/*"]}, "assets.x.files"),                   # no patterns
    ({"hub": {"repo": "r"}, "files": ["a"], "sha256": {"a": "xyz"}}, "assets.x.sha256"),
])
def test_bad_asset_specs_are_refused_naming_the_key(tmp_path, spec, key):
    cfg = _raw(assets={"x": spec})
    with pytest.raises(cfgmod.ConfigError, match=key.replace(".", r"\.")):
        cfgmod.validate(cfg)


def test_cli_status_and_fetch(tmp_path):
    import yaml

    from pecker.cli import main

    src, _ = _source(tmp_path)
    cfg = _raw(tmp_path, {"q16": {"url": src.as_uri(), "files": ["prompts.p"]}})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = CliRunner().invoke(main, ["assets", "status", "--config", str(path)])
    assert run.exit_code == 0 and "q16: 1 of 1 files missing" in run.output
    run = CliRunner().invoke(main, ["assets", "fetch", "--config", str(path)])
    assert run.exit_code == 0 and "q16: 1 files verified, 1 unpinned" in run.output
    run = CliRunner().invoke(main, ["assets", "status", "--config", str(path)])
    assert "q16: fetched" in run.output
