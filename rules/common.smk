# Shared helpers: config validation (before any job runs), paths, stage hashes. Everything comes
# from pecker.workflow (torch-free): one function computes every stage's config hash, the number the
# CLI's resume guard and result files record (`pecker config hash --stage S` prints it).
from pathlib import Path

from snakemake.exceptions import WorkflowError

from pecker import workflow as pwf

try:
    pwf.validate(config)
except pwf.ConfigError as err:
    raise WorkflowError(str(err))

RESULTS = config["results_dir"]
# One-step methods (the SFD loop: sfd, pecker, variants, SFD-Two-Stage) and multi-step baselines
# (retrain, sa, salun) write different files, so their rules match disjoint method names.
try:
    SFD_METHODS = pwf.methods_of_kinds(config, ("sfd",))
    BASELINE_METHODS = pwf.methods_of_kinds(config, pwf.MULTI_STEP)
except pwf.ConfigError as err:
    raise WorkflowError(str(err))
DATA = config["data_dir"]
DATASETS = sorted(config["datasets"])
# Teachers trained here vs fetched (teacher.source file | published): disjoint rules, same outputs.
FETCHED = [
    ds for ds in DATASETS if config["datasets"][ds]["teacher"]["source"] != "train"
]
TRAINED = [ds for ds in DATASETS if ds not in FETCHED]
# Text datasets whose multi-step rows (the teacher row, SLD-Medium, ESD, SA) are and start from a UNet
# of their own (teacher.baselines_model: SD v1.4 at paper scale), rule fetch_baselines_teacher.
BASELINES_TEACHER = [
    ds for ds in DATASETS if config["datasets"][ds]["teacher"].get("baselines_model")
]


def reference_teacher(dataset):
    """The folder of the UNet the multi-step rows are and start from: teacher_baselines/ or teacher/."""
    sub = "teacher_baselines" if dataset in BASELINES_TEACHER else "teacher"
    return f"{RESULTS}/{dataset}/{sub}"


def reference_teacher_meta(w):
    """The EMA sidecar of :func:`reference_teacher` (rules evaluate_teacher, evaluate_sld)."""
    return f"{reference_teacher(w.dataset)}/ema.json"


# Concept forgetting (a text section: Tables 2-3, Figs 4-6) vs class forgetting (Table 1, Figs 2-3):
# the same teacher, unlearning and evaluation rules, different report rules.
TEXT_DATASETS = [ds for ds in DATASETS if config["datasets"][ds].get("text")]
CLASS_DATASETS = [ds for ds in DATASETS if ds not in TEXT_DATASETS]
# Paper-scale network files (pecker/assets.py): a config value under {data_dir}/assets/NAME/ makes
# the dataset's jobs depend on that asset's manifest (rules/assets.smk).
ASSETS = sorted(config.get("assets") or {})
# Datasets without training images (data.source none: Stable Diffusion) have no data, classifier or
# reference jobs; text datasets scored with the paper's detectors (GCD, Q16, NudeNet) need none.
PROMPT_ONLY = [
    ds for ds in DATASETS if config["datasets"][ds]["data"]["source"] == "none"
]
PAPER_EVAL = [
    ds
    for ds in TEXT_DATASETS
    if (config["datasets"][ds].get("evaluate") or {})
    .get("concept", {})
    .get("detectors")
    == "paper"
]
ASSET_REFS = {ds: sorted(pwf.asset_references(config, ds)) for ds in DATASETS}


wildcard_constraints:
    dataset="|".join(DATASETS),
    method="[A-Za-z0-9][A-Za-z0-9_-]*",
    seed="[0-9]+",


# One resolved config per dataset, passed to every CLI call. It lives at a content-addressed path
# (results/<dataset>/configs/<hash>.yaml), written once, when the workflow starts executing (never
# by a dry run or a run refused by the lock), so an invocation with another config can never change
# what a job of a running workflow reads. The path is a param derived from the output (Snakemake
# does not count derived params as rerun triggers): the stage hash param is the trigger, so editing
# a section reruns exactly the rules that depend on it.
RESOLVED = {
    ds: str(pwf.resolved_path(config, ds, Path(RESULTS) / ds / "configs"))
    for ds in DATASETS
}


onstart:
    for ds in DATASETS:
        pwf.store_resolved(config, ds, Path(RESULTS) / ds / "configs")


def refuse_dry_run_while_locked():
    """A dry run while another instance holds this directory's lock exits non-zero (Snakemake only
    warns): what it would report is being rewritten. Called while the DAG is built (the dry-run flag
    is not known at parse time), from the input function of prepare_data, which every job depends on.
    """
    locks = Path(".snakemake") / "locks"
    if workflow.dryrun and locks.is_dir() and any(locks.iterdir()):
        raise WorkflowError(
            f"another Snakemake instance holds the lock of this directory ({locks.resolve()}): a dry run now "
            "would report against files that are being written. Rerun when it has finished, or run "
            "`snakemake --unlock` if that instance was killed."
        )
    return []


def dataset_assets(wildcards):
    """The manifests of the assets a dataset's config points into (nothing at embedded scale)."""
    return [f"{DATA}/assets/{a}/manifest.json" for a in ASSET_REFS[wildcards.dataset]]


def asset_config(wildcards, output):
    """A resolved config holding the assets section: that of the first dataset using the asset."""
    users = [ds for ds in DATASETS if wildcards.asset in ASSET_REFS[ds]] or DATASETS
    return RESOLVED[users[0]]


def resolved_config(wildcards, output):
    """The dataset's resolved config (a function of ``output``: derived, so not a rerun trigger)."""
    return RESOLVED[wildcards.dataset]


def stage_hash(stage):
    """The stage's config hash, as a param (per method and seed for unlearn)."""
    if stage == "unlearn":
        return lambda w: pwf.stage_hash(
            config, w.dataset, stage, method=w.method, seed=int(w.seed)
        )
    return lambda w: pwf.stage_hash(config, w.dataset, stage)


def run_length(stage):
    """What the stage hash leaves out (run length, checkpoint interval): a param, so it reruns."""
    return lambda w: pwf.run_length(
        config, w.dataset, stage, getattr(w, "method", None)
    )


def all_targets():
    """Everything `snakemake` builds by default (functions from the stage files, called late)."""
    targets = []
    for ds in DATASETS:
        if (
            ds in CLASS_DATASETS
        ):  # a text teacher is checked by its concept evaluation instead
            targets += [
                f"{RESULTS}/{ds}/teacher/samples.png",
                f"{RESULTS}/{ds}/teacher/sample_accuracy.json",
            ]
        if ds not in PROMPT_ONLY:
            targets.append(f"{RESULTS}/{ds}/classifier/model.json")
        targets += eval_jsons(ds)
    return targets + REPORT_TARGETS


def eval_jsons(dataset):
    """Every metric JSON of a dataset: the teacher, each SFD-loop run's checkpoints and final
    generator, each baseline's final model (baselines are not evaluated along the way).
    """
    out = [f"{RESULTS}/{dataset}/eval/teacher/seed0/final.json"]
    if (
        dataset in TEXT_DATASETS
    ):  # the SLD-Medium row: the teacher through the safe pipeline
        out.append(f"{RESULTS}/{dataset}/eval/sld/seed0/final.json")
    out += [
        f"{RESULTS}/{dataset}/eval/{row}/seed0/final.json" for row in INIT_ROWS[dataset]
    ]
    for ds, m, seed in pwf.configured_runs(config):
        if ds == dataset:
            if m in SFD_METHODS:
                out += [
                    f"{RESULTS}/{ds}/eval/{m}/seed{seed}/step{st:07d}.json"
                    for st in pwf.checkpoint_steps(config, ds, m)
                ]
            out.append(f"{RESULTS}/{ds}/eval/{m}/seed{seed}/final.json")
    return out


def eval_grids(dataset):
    """The Fig. 2 sample grids of a dataset, one per saved checkpoint of the SFD-loop runs."""
    return [
        f"{RESULTS}/{ds}/eval/{m}/seed{seed}/step{st:07d}_grid.npz"
        for ds, m, seed in pwf.configured_runs(config, kinds=("sfd",))
        if ds == dataset
        for st in pwf.checkpoint_steps(config, ds, m)
    ]


def celebrity_scored(dataset, method):
    """Whether a model's evaluation has a celebrity task (the teacher and SLD: any of the dataset's)."""
    unl = config["datasets"][dataset].get("unlearn") or {}
    tasks = unl.get("tasks") or {}
    if method in ("teacher", "sld"):
        return any(t["type"] == "celebrity" for t in tasks.values())
    if method in INIT_ROWS[dataset]:
        return tasks[INIT_ROWS[dataset][method][0]]["type"] == "celebrity"
    task = (unl.get("methods") or {}).get(method, {}).get("task")
    return task in tasks and tasks[task]["type"] == "celebrity"


def eval_inputs_for(method=None):
    """An input function of the evaluation rules: what an evaluation reads besides the model. Embedded
    detectors: the classifier, the training images and the reference features. The paper's detectors:
    the dataset's assets and, with a celebrity task, the celebrity detector's output for this model.
    """

    def inputs(w):
        ds = w.dataset
        if ds not in PAPER_EVAL:
            return dict(
                classifier=f"{RESULTS}/{ds}/classifier/model.json",
                data=f"{DATA}/{ds}/train.npz",
                reference=f"{RESULTS}/{ds}/eval/reference.npz",
            )
        m = method or w.method
        seed = getattr(w, "seed", "0") if method is None else "0"
        point = f"step{w.step}" if hasattr(w, "step") else "final"
        out = {"assets": dataset_assets(w)}
        if celebrity_scored(ds, m):
            out["gcd"] = f"{RESULTS}/{ds}/eval/{m}/seed{seed}/{point}_gcd.jsonl"
        return out

    return inputs


def eval_args(w, input):
    """The evaluation CLI's flags for the inputs of :func:`eval_inputs_for`."""
    keys = input.keys()
    if "classifier" in keys:
        return (
            f" --classifier {Path(input.classifier).with_suffix('')}"
            f" --data {Path(input.data).parent} --reference {input.reference}"
        )
    return f" --gcd {input.gcd}" if "gcd" in keys else ""


def gcd_settings(w):
    """evaluate.concept.gcd of the dataset (rule gcd_detect)."""
    return config["datasets"][w.dataset]["evaluate"]["concept"]["gcd"]


def generator_init_settings(w):
    """unlearn.generator_init of the dataset (rule convert_generator_init)."""
    return config["datasets"][w.dataset]["unlearn"]["generator_init"]


def celebrity_model(w):
    """The model file whose celebrity images rule celebrity_images draws."""
    if w.method in ("teacher", "sld"):
        return {"model": reference_teacher_meta(w)}
    run = f"{RESULTS}/{w.dataset}/unlearn/{w.method}/seed{w.seed}"
    if w.method in BASELINE_METHODS:  # ESD: a multi-step UNet
        return {"model": f"{run}/unet.json"}
    return {"model": f"{run}/generator_ema.json"}


def celebrity_prefix(w, input):
    """kind and checkpoint prefix of that model (a checkpoint's generator_ema under ckpt/)."""
    path = Path(input.model)
    if w.method in ("teacher", "sld"):
        return f"--kind {w.method} --checkpoint {path.with_suffix('')}"
    if w.method in BASELINE_METHODS:
        return f"--kind diffusion --checkpoint {path.with_suffix('')}"
    if w.point == "final":
        return f"--kind generator --checkpoint {path.with_suffix('')}"
    return f"--kind generator --checkpoint {path.parent / 'ckpt' / w.point / 'generator_ema'}"


def method_settings(w):
    return pwf.unlearn_settings(config, w.dataset, w.method)


def init_run(w):
    """Stage 1's final generator for a method with init_from (SFD-Two-Stage), else nothing."""
    init = method_settings(w).get("init_from")
    if not init:
        return []
    return f"{RESULTS}/{w.dataset}/unlearn/{init}/seed{w.seed}/generator_ema.json"


def generator_init(w):
    """The converted generator_init network (SiD-LSG for SD) a one-stage SFD-loop run starts from."""
    s = method_settings(w)
    if not s.get("generator_init") or s.get("init_from"):
        return []
    return f"{RESULTS}/{w.dataset}/generator_init/unet.json"


INIT_DATASETS = [
    ds
    for ds in DATASETS
    if (config["datasets"][ds].get("unlearn") or {}).get("generator_init")
]


def _init_rows(ds):
    """The "SiD-LSG" rows of a text dataset with generator_init: row name -> (task, the first
    SFD-loop method of that task, whose settings write the starting generator)."""
    if ds not in INIT_DATASETS or ds not in TEXT_DATASETS:
        return {}
    unl = config["datasets"][ds]["unlearn"]
    rows = {}
    for task in sorted(unl.get("tasks") or {}):
        ms = sorted(
            m
            for m, e in (unl.get("methods") or {}).items()
            if (e or {}).get("task") == task
            and (e or {}).get("kind", "sfd") == "sfd"
            and not (e or {}).get("init_from")
        )
        if ms:
            rows[f"sid_lsg_{task}"] = (task, ms[0])
    return rows


INIT_ROWS = {ds: _init_rows(ds) for ds in DATASETS}


def released_fisher(w):
    """fisher.released of an SA method (SA's released SD Fisher, a file of a fetched asset), or None."""
    return (method_settings(w).get("fisher") or {}).get("released")


# SA methods run with the released Fisher: "dataset/method" (rule convert_sa_fisher)
RELEASED_FISHER = [
    f"{ds}/{m}"
    for ds in DATASETS
    for m, s in (
        (config["datasets"][ds].get("unlearn") or {}).get("methods") or {}
    ).items()
    if ((s or {}).get("fisher") or {}).get("released")
]


def baseline_inputs(w):
    """What a baseline reads: the EMA teacher (SA, ESD), the raw teacher (SA, SalUn), the data (Retrain,
    SalUn), the converted released Fisher (SA with fisher.released). The teacher is the reference one
    (teacher.baselines_model when set)."""
    kind = method_settings(w)["kind"]
    teacher = reference_teacher(w.dataset)
    out = {}
    if kind in ("sa", "esd"):
        out["teacher"] = f"{teacher}/ema.json"
    if kind in ("sa", "salun"):
        out["teacher_raw"] = f"{teacher}/model.json"
    if kind in ("retrain", "salun"):
        out["data"] = f"{DATA}/{w.dataset}/train.npz"
    if kind == "sa" and released_fisher(w):
        out["fisher"] = f"{RESULTS}/{w.dataset}/sa_fisher/{w.method}.json"
    if ASSET_REFS[w.dataset]:
        out["assets"] = dataset_assets(w)
    return out


def _alternatives(names):
    """A wildcard constraint matching exactly ``names`` (nothing when empty)."""
    import re

    return "|".join(re.escape(n) for n in names) or "(?!x)x"


def unlearn_steps(wildcards):
    """Length of one unlearning run (sets its runtime request)."""
    return pwf.unlearn_settings(config, wildcards.dataset, wildcards.method)["steps"]


def concept_grids(dataset):
    """Every grid of a text dataset: each SFD-loop checkpoint's, the teacher's and SLD's."""
    return eval_grids(dataset) + [
        f"{RESULTS}/{dataset}/eval/{m}/seed0/final_grid.npz" for m in ("teacher", "sld")
    ]


def concept_table_inputs(wildcards):
    """Tables 2 and 3 for the audit (nothing without a text dataset)."""
    if not TEXT_DATASETS:
        return []
    return [
        rules.concept_tables.output.table2_csv,
        rules.concept_tables.output.table3_csv,
    ]


def class_table_inputs(wildcards):
    """Table 1, the ablation and the efficiency table for the audit (none without a class dataset)."""
    if not CLASS_DATASETS:
        return {}
    return {
        "table1": rules.tables.output.table1_csv,
        "ablation": rules.tables.output.ablation_csv,
        "efficiency": rules.tables.output.efficiency_json,
    }
