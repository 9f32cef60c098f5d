"""Paper-scale files that come from the network (Stable Diffusion weights, the SiD-LSG generator, the
I2P prompts, Q16's prompt embeddings, CLIP): fetched once into ``{data_dir}/assets/NAME/`` and checked
against their sha256 before anything reads them (docs/method.md section 8, "Assets").

Config (top-level ``assets``; one entry per asset)::

    assets:
      sd-v1-5:
        hub: {repo: stable-diffusion-v1-5/stable-diffusion-v1-5, type: model, revision: main}
        files: [model_index.json, unet/config.json, unet/diffusion_pytorch_model.safetensors, ...]
        sha256: {unet/diffusion_pytorch_model.safetensors: <64 hex>}
      q16-prompts:
        url: https://.../prompts.p
        files: [prompts.p]

- ``hub``: each file of ``files`` from a Hugging Face repository (``huggingface_hub.hf_hub_download``).
  A branch or tag ``revision`` is first resolved to its commit, and every file comes from that commit,
  which the manifest records.
- ``url``: one file, downloaded atomically.

Files already present under the asset's folder are not downloaded again. A file copied there by hand
(a machine without network) is verified in the same way. Every file's sha256 is computed and
written to ``manifest.json``. A pinned hash (``sha256``) must match, otherwise the asset is refused
and nothing is written. An unpinned one is logged with the config key to pin it under. Consumers
name assets by path (a config value under ``{data_dir}/assets/NAME/``), so Snakemake makes the job
that reads a path depend on that asset's manifest (:func:`pecker.workflow.asset_references`).

Offline, a missing file raises :class:`pecker.weights.Unavailable`. Its message names the asset, the
files and the two ways to provide them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pecker import io
from pecker.config import ConfigError, config_hash
from pecker.weights import Unavailable, download

log = logging.getLogger("pecker.assets")

MANIFEST = "manifest.json"


def assets_root(cfg: dict) -> Path:
    return Path(cfg.get("data_dir", "data")) / "assets"


def asset_dir(cfg: dict, name: str) -> Path:
    return assets_root(cfg) / name


def asset_spec(cfg: dict, name: str) -> dict:
    specs = cfg.get("assets") or {}
    if name not in specs:
        known = ", ".join(sorted(specs)) or "none"
        raise ConfigError(f"config key 'assets.{name}': no such asset is configured (configured: {known})")
    return specs[name]  # checked by the config schema and pecker.config._check_asset_references


def _how_to_provide(cfg: dict, name: str, missing: list[str]) -> str:
    dest = asset_dir(cfg, name)
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return (f"asset '{name}' (config key 'assets.{name}'): {len(missing)} file(s) missing under {dest}/ ({shown}). "
            f"On a machine with network run `pecker assets fetch --config <your config> --asset {name}` (a gated "
            f"repository needs its licence accepted on the hub and `hf auth login` first), or copy the files "
            f"there by hand; either way their sha256 are checked before use")


def _fetch_hub(cfg: dict, name: str, spec: dict, missing: list[str]) -> str:
    """Download ``missing`` from the hub at the commit ``revision`` resolves to; returns that commit."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    hub, dest = spec["hub"], asset_dir(cfg, name)
    repo, repo_type = hub["repo"], hub.get("type", "model")
    try:
        commit = HfApi().repo_info(repo, repo_type=repo_type, revision=hub.get("revision")).sha
        if hub.get("revision") and commit != hub["revision"]:
            log.warning("asset %s: revision %r of %s is commit %s; pin it as config key 'assets.%s.hub.revision' so "
                        "a moved branch cannot change the files", name, hub["revision"], repo, commit, name)
        for rel in missing:
            log.info("asset %s: %s/%s@%s", name, repo, rel, commit[:12])
            hf_hub_download(repo, rel, repo_type=repo_type, revision=commit, local_dir=dest)
    except (OSError, EntryNotFoundError) as err:
        raise Unavailable(f"{_how_to_provide(cfg, name, missing)}. The hub said: {type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}") from None
    return commit


def fetch_asset(cfg: dict, name: str) -> dict:
    """Fetch what is missing of asset ``name``, verify every file, write its manifest; returns it."""
    from pecker.provenance import Recorder

    spec = asset_spec(cfg, name)
    dest = asset_dir(cfg, name)
    rec = Recorder("assets.fetch", config_hash(spec))
    missing = [rel for rel in spec["files"] if not (dest / rel).is_file()]
    origin: dict = {"hub": dict(spec["hub"])} if "hub" in spec else {"url": spec["url"]}
    if not missing:
        origin["fetched"] = "already present (not downloaded by this run)"
    elif "hub" in spec:
        origin["commit"] = _fetch_hub(cfg, name, spec, missing)
    else:
        try:
            download(spec["url"], dest / spec["files"][0], f"asset '{name}' (config key 'assets.{name}.url')")
        except Unavailable:
            raise Unavailable(_how_to_provide(cfg, name, missing)) from None
    pins = {k: v.lower() for k, v in (spec.get("sha256") or {}).items() if v}
    files = {}
    for rel in spec["files"]:
        path = dest / rel
        digest = io.sha256_file(path)
        if rel in pins and digest != pins[rel]:
            raise io.ChecksumError(f"asset '{name}': sha256 of {path} is {digest}, config key "
                                   f"'assets.{name}.sha256.{rel}' pins {pins[rel]}; the file is corrupt or not the "
                                   "published one: delete it to fetch it again, or review it and update the pin")
        if rel not in pins:
            log.warning("asset %s: %s has sha256 %s; pin it as config key 'assets.%s.sha256' entry %r", name, rel,
                        digest, name, rel)
        files[rel] = {"sha256": digest, "bytes": path.stat().st_size, "pinned": rel in pins}
    manifest = {"kind": "asset", "asset": name, "origin": origin, "files": files,
                "unpinned": [rel for rel in spec["files"] if rel not in pins],
                "note": spec.get("note", ""),
                "provenance": rec.finish()}
    io.atomic_write_json(dest / MANIFEST, manifest)
    log.info("asset %s: %d files verified (%d pinned) -> %s", name, len(files), len(pins), dest / MANIFEST)
    return manifest


def recorded_sha256(path: str | Path) -> str | None:
    """The sha256 that the manifest of the asset holding ``path`` recorded for it (verified when the
    asset was fetched), or None when ``path`` is not a file of a fetched asset."""
    path = Path(path)
    for folder in path.parents:
        if folder.name == "assets":
            return None
        manifest = folder / MANIFEST
        if manifest.is_file():
            entry = io.read_json(manifest)["files"].get(path.relative_to(folder).as_posix())
            return entry["sha256"] if entry else None
    return None
