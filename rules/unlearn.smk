# Unlearning (docs/method.md sections 3-5): one job per dataset, method and seed, by the method's kind.
# Each job resumes from OUT/ckpt (never a Snakemake output, so a failed or killed job keeps it).
#   unlearn            the SFD loop (sfd, pecker, variants, SFD-Two-Stage) -> one-step generator_ema
#   unlearn_baseline   Retrain, SA, SalUn on the multi-step DDPM           -> unet (sampled as the teacher)
rule unlearn:
    input:
        teacher=rules.train_teacher.output.ema,
        teacher_meta=rules.train_teacher.output.ema_meta,
        init=init_run,
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
    shell:
        "pecker unlearn --config {params.cfg} -d {wildcards.dataset} --method {wildcards.method}"
        " --seed {wildcards.seed} --teacher {params.teacher}{params.init} --out {params.out} --threads {threads}"
        " > {log} 2>&1"


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
            )
            if key in input.keys()
        ),
        out=lambda w, output: Path(output.meta).parent,
    shell:
        "pecker unlearn --config {params.cfg} -d {wildcards.dataset} --method {wildcards.method}"
        " --seed {wildcards.seed}{params.inputs} --out {params.out} --threads {threads} > {log} 2>&1"
