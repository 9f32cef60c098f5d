"""FID, KID, precision/recall and Inception Score from features, by two field libraries.

Every number is computed by a named library function and returned together with a record of the
library, its version and the function that produced it (:func:`source_record`), so results can be
cross-checked (docs/method.md section 6: "the project uses the PyTorch ports (torch-fidelity, clean-fid)
and records which one produced each number").

``implementation="torch-fidelity"`` (0.4.0)
    FID: ``metric_fid.fid_features_to_statistics`` + ``fid_statistics_to_metric`` (eigenvalues of
    sigma1 @ sigma2).  KID: ``metric_kid.kid_features_to_metric`` (cubic polynomial kernel, unbiased
    MMD^2, ``kid_subsets`` random subsets of ``kid_subset_size``; mean and std over subsets).
    Precision / recall: ``metric_prc.prc_features_to_metric`` (k-NN balls, k = ``pr_k``).
``implementation="clean-fid"`` (0.1.35)
    FID: ``cleanfid.fid.frechet_distance`` (``scipy.linalg.sqrtm``) on mean / covariance computed as
    clean-fid does.  KID: ``cleanfid.fid.kernel_distance`` (same kernel and estimator); clean-fid
    returns only the mean and draws subsets from numpy's *global* RNG, so it is called once per
    subset under a seeded, afterwards restored global state, which yields the per-subset values
    (their mean is exactly what one call with ``num_subsets=kid_subsets`` returns) and hence the std.
    clean-fid has no precision / recall: those are computed by torch-fidelity and labelled so.

With the same ``seed`` both libraries draw the *same* KID subsets (numpy's legacy MT19937, same
call order), so their KIDs agree to rounding, not just statistically.

KID when the subset size equals both sample counts (the embedded final evaluations: 450 generated
against 450 reference images): every subset is then both whole sets in another order, and the
unbiased MMD^2 that both libraries compute (sums over all pairs, diagonals of K_XX and K_YY left out)
does not depend on the order, so every subset gives the same value up to float64 rounding. The library
is called for one subset instead of ``kid_subsets`` (std 0); recorded as ``kid_subsets_computed``.

Exact speed-up for small samples: when ``n_gen + n_ref`` is smaller than the feature dimension
(2048), both covariances and the mean difference live in the span of the samples; the features are
rotated onto an orthonormal basis of that span (QR) before the FID call.  FID is invariant under this
(traces, the mean-difference norm and the non-zero spectrum of sigma1 @ sigma2 are unchanged), and
the library then works on an r x r instead of a 2048 x 2048 matrix (seconds instead of minutes on two
CPU cores).  Recorded as ``fid_projection``.  KID (its kernel uses the raw dot products and 1/dim)
and precision / recall are always computed on the original features.
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from pecker import io
from pecker.provenance import package_versions
from pecker.evaluate.features import FeatureExtractor, check_images

log = logging.getLogger(__name__)

TORCH_FIDELITY = "torch-fidelity"
CLEAN_FID = "clean-fid"
IMPLEMENTATIONS = (TORCH_FIDELITY, CLEAN_FID)

DEFAULT_KID_SUBSETS = 100
DEFAULT_KID_SUBSET_SIZE = 1000
DEFAULT_PR_K = 3
DEFAULT_SEED = 2020  # torch-fidelity's default rng_seed

IS_SOURCE_UA_CLASSIFIER = "ua-classifier-logits"
IS_SOURCE_INCEPTION = "inception-v3-compat-logits-unbiased"
IS_SOURCES = (IS_SOURCE_UA_CLASSIFIER, IS_SOURCE_INCEPTION)

# Above this many generated x reference pairs, torch-fidelity's PR runs its batched variant
# (identical result, no full distance matrix in memory).
_PR_FULL_MATRIX_MAX = 50_000_000


def library_versions() -> dict:
    return package_versions(IMPLEMENTATIONS)


def source_record(library: str, function: str, note: str | None = None) -> dict:
    """Which library function produced a number: ``{"library", "version", "function"[, "note"]}``.

    ``function`` is the function's path inside the library (``metric_fid.fid_statistics_to_metric``);
    ``note`` says how it was used where that is not just one call (``"std over per-subset calls"``)
    or why another library stands in.  This record is what every result stores (``*_implementation``
    of the metric functions, ``compute_metrics(...)["implementation"][metric]``, and the entries of
    ``metric_sources`` in the evaluation JSON); nothing parses it back out of a string.
    """
    rec = {"library": library, "version": library_versions()[library], "function": function}
    if note:
        rec["note"] = note
    return rec


def _as_features(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{what} must be a 2-d (N >= 2, D) feature array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contains non-finite values")
    return np.ascontiguousarray(x, dtype=np.float64)


def kid_subset_size_for(n_gen: int, n_ref: int, requested: int = DEFAULT_KID_SUBSET_SIZE) -> int:
    """``min(requested, n_gen, n_ref)``: the KID subset size adapted to small sample counts."""
    size = min(int(requested), int(n_gen), int(n_ref))
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples per set (got {n_gen} generated, {n_ref} reference)")
    return size


def joint_span_projection(gen: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of both feature sets in an orthonormal basis of their joint row span.

    Exact for FID (an isometry on the subspace that holds every sample); only useful when
    ``n_gen + n_ref < D``.
    """
    q, _ = np.linalg.qr(np.concatenate([gen, ref]).T)  # D x (n_gen + n_ref), orthonormal columns
    return gen @ q, ref @ q


# ----------------------------------------------------------------------------- single metrics


def fid(gen: np.ndarray, ref: np.ndarray, implementation: str = TORCH_FIDELITY, projection: str = "auto") -> dict:
    """``{"fid", "fid_implementation", "fid_projection"}`` for float features (N, D); the
    implementation is a :func:`source_record`."""
    gen, ref = _as_features(gen, "gen_feats"), _as_features(ref, "ref_feats")
    _check_dims(gen, ref)
    if projection not in ("auto", "none"):
        raise ValueError(f"projection must be 'auto' or 'none', got {projection!r}")
    proj, notes = "none", []
    if projection == "auto" and gen.shape[0] + ref.shape[0] < gen.shape[1]:
        gen, ref = joint_span_projection(gen, ref)
        proj = f"joint-span(dim={gen.shape[1]})"
    if implementation == TORCH_FIDELITY:
        from torch_fidelity.metric_fid import (
            KEY_METRIC_FID,
            fid_features_to_statistics,
            fid_statistics_to_metric,
        )

        s_gen = fid_features_to_statistics(torch.from_numpy(gen))
        s_ref = fid_features_to_statistics(torch.from_numpy(ref))
        value = fid_statistics_to_metric(s_gen, s_ref, verbose=False)[KEY_METRIC_FID]
        label = source_record(TORCH_FIDELITY, "metric_fid.fid_statistics_to_metric")
    elif implementation == CLEAN_FID:
        from cleanfid.fid import frechet_distance

        # clean-fid's own fid_from_feats: np.mean(axis=0), np.cov(rowvar=False)
        mu_g, sig_g = np.mean(gen, axis=0), np.cov(gen, rowvar=False)
        mu_r, sig_r = np.mean(ref, axis=0), np.cov(ref, rowvar=False)
        # scipy warns (ill-conditioned sqrtm; deprecated `disp`) whenever n < dim, which is the
        # normal case for small samples: keep the messages with the number instead of on stderr.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = frechet_distance(mu_g, sig_g, mu_r, sig_r)
        notes = sorted({f"{w.category.__name__}: {w.message}" for w in caught
                        if not issubclass(w.category, DeprecationWarning)})
        label = source_record(CLEAN_FID, "fid.frechet_distance")
    else:
        raise ValueError(f"unknown implementation {implementation!r}; choose one of {IMPLEMENTATIONS}")
    out = {"fid": float(value), "fid_implementation": label, "fid_projection": proj}
    if notes:
        out["fid_warnings"] = notes
    return out


def kid(
    gen: np.ndarray,
    ref: np.ndarray,
    implementation: str = TORCH_FIDELITY,
    subsets: int = DEFAULT_KID_SUBSETS,
    subset_size: int = DEFAULT_KID_SUBSET_SIZE,
    seed: int = DEFAULT_SEED,
) -> dict:
    """``{"kid_mean", "kid_std", "kid_subsets", "kid_subsets_computed", "kid_subset_size",
    "kid_implementation"}`` (a :func:`source_record`).

    The subset size actually used is ``min(subset_size, n_gen, n_ref)`` and is returned; when it is
    both sample counts, one subset is computed (the module docstring).
    """
    gen, ref = _as_features(gen, "gen_feats"), _as_features(ref, "ref_feats")
    _check_dims(gen, ref)
    size = kid_subset_size_for(gen.shape[0], ref.shape[0], subset_size)
    subsets = int(subsets)
    if subsets < 1:
        raise ValueError("kid_subsets must be >= 1")
    requested = subsets
    if size == gen.shape[0] == ref.shape[0]:  # every subset is both whole sets: one value (module docstring)
        subsets = 1
    if implementation == TORCH_FIDELITY:
        from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

        out = kid_features_to_metric(
            torch.from_numpy(gen), torch.from_numpy(ref),
            kid_subsets=subsets, kid_subset_size=size, rng_seed=int(seed), verbose=False,
        )
        mean, std = out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD]
        label = source_record(TORCH_FIDELITY, "metric_kid.kid_features_to_metric")
    elif implementation == CLEAN_FID:
        from cleanfid.fid import kernel_distance

        # kernel_distance(feats1, feats2) draws from feats2 first, then feats1; torch-fidelity draws
        # from gen first, then ref: pass (ref, gen) so that one seed gives the same subsets.
        saved = np.random.get_state()
        try:
            np.random.seed(int(seed))
            values = np.array(
                [kernel_distance(ref, gen, num_subsets=1, max_subset_size=size) for _ in range(subsets)]
            )
        finally:
            np.random.set_state(saved)
        mean, std = float(values.mean()), float(values.std())
        label = source_record(CLEAN_FID, "fid.kernel_distance", note="std over per-subset calls")
    else:
        raise ValueError(f"unknown implementation {implementation!r}; choose one of {IMPLEMENTATIONS}")
    return {
        "kid_mean": float(mean),
        "kid_std": float(std),
        "kid_subsets": requested,
        "kid_subsets_computed": subsets,
        "kid_subset_size": size,
        "kid_implementation": label,
    }


def precision_recall(gen: np.ndarray, ref: np.ndarray, k: int = DEFAULT_PR_K) -> dict:
    """Improved precision / recall (Kynkaanniemi et al.) by torch-fidelity, k-NN radius ``k``."""
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    gen, ref = _as_features(gen, "gen_feats"), _as_features(ref, "ref_feats")
    _check_dims(gen, ref)
    k = int(k)
    if not 1 <= k < min(gen.shape[0], ref.shape[0]):
        raise ValueError(f"pr_k={k} must be >= 1 and smaller than both sample counts {gen.shape[0]}, {ref.shape[0]}")
    out = prc_features_to_metric(
        torch.from_numpy(gen), torch.from_numpy(ref),  # convention: features_1 generated, features_2 real
        prc_neighborhood=k,
        save_cpu_ram=gen.shape[0] * ref.shape[0] > _PR_FULL_MATRIX_MAX,
        verbose=False,
    )
    return {
        "precision": float(out[KEY_METRIC_PRECISION]),
        "recall": float(out[KEY_METRIC_RECALL]),
        "pr_k": k,
        "pr_implementation": source_record(TORCH_FIDELITY, "metric_prc.prc_features_to_metric"),
    }


def _check_dims(gen: np.ndarray, ref: np.ndarray) -> None:
    if gen.shape[1] != ref.shape[1]:
        raise ValueError(f"feature dimensions differ: generated {gen.shape[1]}, reference {ref.shape[1]}")


# ----------------------------------------------------------------------------- all together


def compute_metrics(
    gen_feats: np.ndarray,
    ref_feats: np.ndarray,
    implementation: str = TORCH_FIDELITY,
    *,
    kid_subsets: int = DEFAULT_KID_SUBSETS,
    kid_subset_size: int = DEFAULT_KID_SUBSET_SIZE,
    pr_k: int = DEFAULT_PR_K,
    seed: int = DEFAULT_SEED,
    fid_projection: str = "auto",
    extractor: FeatureExtractor | dict | str | None = None,
    with_pr: bool = True,
) -> dict:
    """FID, KID (mean, std), precision, recall of generated vs reference features.

    Returns ``{"fid", "kid_mean", "kid_std", "precision", "recall", ..., "implementation": {metric:
    {"library", "version", "function"[, "note"]}}, "extractor": {...}, "n_gen", "n_ref",
    "feature_dim"}`` (records as :func:`source_record` makes them).  With
    ``implementation="clean-fid"`` precision / recall come from torch-fidelity (clean-fid has none),
    as ``implementation["precision"]`` says (its ``library`` and ``note``).
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}; choose one of {IMPLEMENTATIONS}")
    gen, ref = _as_features(gen_feats, "gen_feats"), _as_features(ref_feats, "ref_feats")
    _check_dims(gen, ref)
    t0 = time.perf_counter()
    f = fid(gen, ref, implementation, projection=fid_projection)
    k = kid(gen, ref, implementation, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    out: dict = {
        "fid": f["fid"],
        "kid_mean": k["kid_mean"],
        "kid_std": k["kid_std"],
        "precision": None,
        "recall": None,
        "n_gen": int(gen.shape[0]),
        "n_ref": int(ref.shape[0]),
        "feature_dim": int(gen.shape[1]),
        "kid_subsets": k["kid_subsets"],
        "kid_subsets_computed": k["kid_subsets_computed"],
        "kid_subset_size": k["kid_subset_size"],
        "kid_subset_size_requested": int(kid_subset_size),
        "seed": int(seed),
        "fid_projection": f["fid_projection"],
        "fid_warnings": f.get("fid_warnings", []),
        "implementation_requested": implementation,
        "implementation": {
            "fid": f["fid_implementation"],
            "kid_mean": k["kid_implementation"],
            "kid_std": dict(k["kid_implementation"]),
        },
        "library_versions": library_versions(),
    }
    if with_pr:
        pr = precision_recall(gen, ref, pr_k)
        out.update(precision=pr["precision"], recall=pr["recall"], pr_k=pr["pr_k"])
        label = dict(pr["pr_implementation"])
        if implementation == CLEAN_FID:
            label["note"] = "clean-fid has no precision/recall: computed by torch-fidelity"
        out["implementation"].update(precision=label, recall=dict(label))
    out["extractor"] = _extractor_record(extractor)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def compare_implementations(gen_feats: np.ndarray, ref_feats: np.ndarray, **kwargs) -> dict:
    """:func:`compute_metrics` by both libraries plus their differences (for the cross-check)."""
    res = {name: compute_metrics(gen_feats, ref_feats, name, with_pr=name == TORCH_FIDELITY, **kwargs)
           for name in IMPLEMENTATIONS}
    a, b = res[TORCH_FIDELITY], res[CLEAN_FID]
    scale = max(abs(a["fid"]), abs(b["fid"]), 1e-12)
    res["agreement"] = {
        "fid_abs_diff": abs(a["fid"] - b["fid"]),
        "fid_rel_diff": abs(a["fid"] - b["fid"]) / scale,
        "kid_mean_abs_diff": abs(a["kid_mean"] - b["kid_mean"]),
        "kid_std_abs_diff": abs(a["kid_std"] - b["kid_std"]),
    }
    return res


def _extractor_record(extractor) -> dict | None:
    if extractor is None:
        return None
    if isinstance(extractor, str):
        return {"name": extractor}
    if isinstance(extractor, dict):
        return dict(extractor)
    return {"name": extractor.name, "checksum": extractor.checksum, "feature_dim": extractor.feature_dim}


# ----------------------------------------------------------------------------- Inception Score


def inception_score(
    logits_or_probs: np.ndarray,
    splits: int = 10,
    *,
    is_source: str,
    inputs: str = "logits",
    shuffle: bool = True,
    seed: int = DEFAULT_SEED,
) -> dict:
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))``, mean and std over ``splits`` chunks.

    ``logits_or_probs`` is (N, classes): class logits (``inputs="logits"``) or probabilities
    (``inputs="probs"``, rows summing to 1).  ``is_source`` names where they come from and is
    returned with the number: ``"inception-v3-compat-logits-unbiased"`` (paper scale: torch-fidelity's
    1008-way Inception logits, :meth:`TorchFidelityInception.logits`) or ``"ua-classifier-logits"``
    (offline: the UA classifier's logits, since the offline detector has no classification head;
    such a score is *not* comparable with published Inception Scores).  Computed by
    torch-fidelity's ``isc_features_to_metric`` (softmax in float64; shuffled with ``seed`` before
    splitting when ``shuffle``).
    """
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    if is_source not in IS_SOURCES:
        raise ValueError(f"is_source must be one of {IS_SOURCES}, got {is_source!r}")
    x = np.asarray(logits_or_probs, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"expected (N, classes >= 2) logits or probabilities, got shape {x.shape}")
    splits = int(splits)
    if not 1 <= splits <= x.shape[0]:
        raise ValueError(f"splits={splits} must be between 1 and the number of samples {x.shape[0]}")
    if inputs == "probs":
        if (x < 0).any() or not np.allclose(x.sum(axis=1), 1.0, atol=1e-4):
            raise ValueError("probabilities must be non-negative with rows summing to 1")
        x = np.log(np.clip(x, 1e-300, None))  # softmax(log p) == p; zero entries contribute 0
    elif inputs != "logits":
        raise ValueError(f"inputs must be 'logits' or 'probs', got {inputs!r}")
    if not np.isfinite(x).all():
        raise ValueError("logits contain non-finite values")
    out = isc_features_to_metric(torch.from_numpy(x), splits=splits, shuffle=shuffle, rng_seed=int(seed))
    return {
        "is_mean": float(out[KEY_METRIC_ISC_MEAN]),
        "is_std": float(out[KEY_METRIC_ISC_STD]),
        "is_source": is_source,
        "is_splits": splits,
        "is_inputs": inputs,
        "n_samples": int(x.shape[0]),
        "n_classes": int(x.shape[1]),
        "is_implementation": source_record(TORCH_FIDELITY, "metric_isc.isc_features_to_metric"),
    }


# ----------------------------------------------------------------------------- reference cache


def images_digest(images: np.ndarray) -> str:
    """sha256 over dtype, shape and the raw bytes of an image array."""
    images = np.ascontiguousarray(images)
    h = hashlib.sha256(f"{images.dtype.str}|{images.shape}|".encode())
    h.update(memoryview(images).cast("B"))
    return h.hexdigest()


def reference_features(
    images: np.ndarray,
    extractor: FeatureExtractor,
    cache_path: str | Path,
    *,
    batch_size: int = 50,
    record: dict | None = None,
) -> tuple[np.ndarray, dict]:
    """Features of the reference images, computed once and cached as ``cache_path`` (.npz).

    ``record`` (e.g. ``{"config_hash": ..., "provenance": ...}``) is stored in the sidecar; on a cache
    hit under another ``config_hash`` the sidecar is rewritten with it (the features are kept).

    The JSON sidecar ``cache_path.with_suffix(".json")`` records the extractor's name and checksum,
    the number, shape and sha256 of the images, and the sha256 of the npz.  The cache is reused only
    when all of these match (and the npz still hashes to its recorded value); otherwise the
    features are recomputed and both files rewritten atomically (npz first, sidecar last).
    Returns ``(features float32 (N, D), sidecar dict + {"cache_hit": bool})``.
    """
    cache_path = Path(cache_path)
    if cache_path.suffix != ".npz":
        raise ValueError(f"reference feature cache must be a .npz path, got {cache_path}")
    sidecar = cache_path.with_suffix(".json")
    images = check_images(images)
    want = {
        "extractor": extractor.name,
        "extractor_checksum": extractor.checksum,
        "n_images": int(images.shape[0]),
        "image_shape": [int(s) for s in images.shape[1:]],
        "images_sha256": images_digest(images),
    }
    reason = _cache_mismatch(cache_path, sidecar, want)
    if reason is None:
        meta = io.read_sidecar(sidecar)
        feats = io.load_npz(cache_path)["features"]
        if feats.shape == (want["n_images"], meta.get("feature_dim")):
            log.info("reference features: cache hit %s", cache_path)
            if record and meta.get("config_hash") != record.get("config_hash"):
                meta = {**meta, **record}
                io.write_sidecar(sidecar, meta)
            return feats, {**meta, "cache_hit": True}
        reason = f"cached features have shape {feats.shape}"
    log.info("reference features: recomputing %s (%s)", cache_path, reason)
    t0 = time.perf_counter()
    feats = extractor.features(images, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    io.save_npz(cache_path, features=feats)
    meta = {
        **want,
        "feature_dim": int(feats.shape[1]),
        "features_dtype": str(feats.dtype),
        "file": cache_path.name,
        "sha256": io.sha256_file(cache_path),
        "seconds": round(seconds, 3),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(record or {}),
    }
    io.write_sidecar(sidecar, meta)
    return feats, {**meta, "cache_hit": False, "cache_miss_reason": reason}


def _cache_mismatch(cache_path: Path, sidecar: Path, want: dict) -> str | None:
    """``None`` when the cache may be used, else why not."""
    if not cache_path.is_file() or not sidecar.is_file():
        return "no cache"
    try:
        meta = io.read_sidecar(sidecar)
    except io.IntegrityError as exc:
        return f"sidecar refused ({exc})"
    for key, value in want.items():
        if meta.get(key) != value:
            return f"{key} differs"
    try:
        io.verify_checksum(cache_path, meta.get("sha256", ""))
    except io.ChecksumError:
        return "npz checksum differs"
    return None
