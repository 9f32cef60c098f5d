# Unlearning (docs/method.md sections 3-5): one job per dataset, method and seed, by the method's kind.
# Each job resumes from OUT/ckpt (never a Snakemake output, so a failed or killed job keeps it).
#   unlearn            the SFD loop (sfd, pecker, variants, SFD-Two-Stage) -> one-step generator_ema
#   unlearn_baseline   Retrain, SA, SalUn on the multi-step DDPM           -> unet (sampled as the teacher)
rule unlearn:
    input:
        teacher=rules.train_teacher.output.ema,
        teacher_meta=rules.train_teacher.output.ema_meta,
        init=init_run,
        generator_init=generator_init,
        assets=dataset_assets,
    output:
        generator=f"{RESULTS}/{{dataset}}/unlearn/{{method}}/seed{{seed}}/generator_ema.safetensors",
        meta=f"{RESULTS}/{{dataset}}/unlearn/{{method}}/seed{{seed}}/generator_ema.json",
        log_csv=f"{RESULTS}/{{dataset}}/unlearn/{{method}}/seed{{seed}}/log.csv",
    log:
        f"{RESULTS}/logs/{{dataset}}/unlearn_{{method}}_seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/unlearn_{{method}}_seed{{seed}}.tsv"
    wildcard_constraints:
        method=_alternatives(SFD_METHODS),
    conda:
        "../environment.yml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=lambda w: 60 if unlearn_steps(w) <= 5000 else 48 * 60,
    params:
        cfg=resolved_config,
        hash=stage_hash("unlearn"),
        length=run_length("unlearn"),
        teacher=lambda w, input: Path(input.teacher).with_suffix(""),
        out=lambda w, output: Path(output.meta).parent,
        init=lambda w, input: f" --init {Path(input.init).parent}" if input.init else "",
        generator_init=lambda w, input: (
            f" --generator-init {Path(input.generator_init).with_suffix('')}"
            if input.generator_init
            else ""
        ),
    shell:
        "pecker unlearn --config {params.cfg} -d {wildcards.dataset} --method {wildcards.method}"
        " --seed {wildcards.seed} --teacher {params.teacher}{params.init}{params.generator_init} --out {params.out}"
        " --threads {threads} > {log} 2>&1"


rule convert_generator_init:
    # unlearn.generator_init (SiD-LSG's one-step generator for SD): the pickled network of a fetched
    # asset, checked against the asset manifest's sha256, rebuilt without running code from the file
    # (pecker/diffusion/pickled.py) and written as safetensors once; nothing reads the pickle again.
    input:
        assets=dataset_assets,
    output:
        unet=f"{RESULTS}/{{dataset}}/generator_init/unet.safetensors",
        meta=f"{RESULTS}/{{dataset}}/generator_init/unet.json",
    log:
        f"{RESULTS}/logs/{{dataset}}/convert_generator_init.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/convert_generator_init.tsv"
    wildcard_constraints:
        dataset=_alternatives(INIT_DATASETS),
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=16000,
        runtime=60,
    params:
        pickle=lambda w: generator_init_settings(w)["pickle"],
        key=lambda w: generator_init_settings(w).get("key") or "",
        manifest=lambda w: pwf.asset_manifest(
            config, generator_init_settings(w)["pickle"]
        ),
        out=lambda w, output: Path(output.meta).with_suffix(""),
    shell:
        "pecker teacher convert-pickled {params.pickle} --manifest {params.manifest} --key '{params.key}'"
        " --out {params.out} > {log} 2>&1"


rule convert_sa_fisher:
    # fisher.released of an SA method: SA's released Stable Diffusion Fisher (a pickled dict of tensors
    # in latent-diffusion names), checked against its asset manifest's sha256, read with a tensors-only
    # unpickler, renamed by diffusers' converter and checked against the raw teacher's parameters
    # (pecker/unlearn/baselines/sa_fisher.py); written as safetensors once, nothing reads the pickle again.
    input:
        teacher_raw=lambda w: f"{reference_teacher(w.dataset)}/model.json",
        assets=dataset_assets,
    output:
        fisher=f"{RESULTS}/{{dataset}}/sa_fisher/{{method}}.safetensors",
        meta=f"{RESULTS}/{{dataset}}/sa_fisher/{{method}}.json",
    log:
        f"{RESULTS}/logs/{{dataset}}/convert_sa_fisher_{{method}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/convert_sa_fisher_{{method}}.tsv"
    wildcard_constraints:
        dataset=_alternatives(sorted({r.split("/")[0] for r in RELEASED_FISHER})),
        method=_alternatives(sorted({r.split("/")[1] for r in RELEASED_FISHER})),
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=16000,
        runtime=60,
    params:
        pickle=released_fisher,
        manifest=lambda w: pwf.asset_manifest(config, released_fisher(w)),
        teacher=lambda w, input: Path(input.teacher_raw).with_suffix(""),
        out=lambda w, output: Path(output.meta).with_suffix(""),
    shell:
        "pecker assets convert-fisher {params.pickle} --manifest {params.manifest} --teacher {params.teacher}"
        " --out {params.out} > {log} 2>&1"


rule init_generator:
    # the "SiD-LSG" row (Tables 2-3): the generator_init network as is, as the one-step generator of
    # one task (its first SFD-loop method's settings), evaluated like a final generator
    input:
        teacher=rules.train_teacher.output.ema,
        teacher_meta=rules.train_teacher.output.ema_meta,
        generator_init=f"{RESULTS}/{{dataset}}/generator_init/unet.json",
        assets=dataset_assets,
    output:
        generator=f"{RESULTS}/{{dataset}}/unlearn/{{method}}/seed{{seed}}/generator_ema.safetensors",
        meta=f"{RESULTS}/{{dataset}}/unlearn/{{method}}/seed{{seed}}/generator_ema.json",
    log:
        f"{RESULTS}/logs/{{dataset}}/init_generator_{{method}}_seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/init_generator_{{method}}_seed{{seed}}.tsv"
    wildcard_constraints:
        method=_alternatives(sorted({r for rows in INIT_ROWS.values() for r in rows})),
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=16000,
        runtime=30,
    params:
        cfg=resolved_config,
        method=lambda w: INIT_ROWS[w.dataset][w.method][1],
        teacher=lambda w, input: Path(input.teacher).with_suffix(""),
        init=lambda w, input: Path(input.generator_init).with_suffix(""),
        out=lambda w, output: Path(output.meta).parent,
    shell:
        "pecker unlearn --config {params.cfg} -d {wildcards.dataset} --method {params.method} --seed {wildcards.seed}"
        " --teacher {params.teacher} --generator-init {params.init} --init-only --out {params.out} > {log} 2>&1"


rule unlearn_baseline:
    input:
        unpack(baseline_inputs),
    output:
        unet=f"{RESULTS}/{{dataset}}/unlearn/{{method}}/seed{{seed}}/unet.safetensors",
        meta=f"{RESULTS}/{{dataset}}/unlearn/{{method}}/seed{{seed}}/unet.json",
        log_csv=f"{RESULTS}/{{dataset}}/unlearn/{{method}}/seed{{seed}}/log.csv",
    log:
        f"{RESULTS}/logs/{{dataset}}/unlearn_{{method}}_seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/unlearn_{{method}}_seed{{seed}}.tsv"
    wildcard_constraints:
        method=_alternatives(BASELINE_METHODS),
    conda:
        "../environment.yml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=lambda w: 60 if unlearn_steps(w) <= 5000 else 72 * 60,
    params:
        cfg=resolved_config,
        hash=stage_hash("unlearn"),
        length=run_length("unlearn"),
        inputs=lambda w, input: "".join(
            f" --{flag} {Path(input[key]).with_suffix('') if key != 'data' else Path(input[key]).parent}"
            for key, flag in (
                ("teacher", "teacher"),
                ("teacher_raw", "teacher-raw"),
                ("data", "data"),
                ("fisher", "fisher"),
            )
            if key in input.keys()
        ),
        out=lambda w, output: Path(output.meta).parent,
    shell:
        "pecker unlearn --config {params.cfg} -d {wildcards.dataset} --method {wildcards.method}"
        " --seed {wildcards.seed}{params.inputs} --out {params.out} --threads {threads} > {log} 2>&1"
