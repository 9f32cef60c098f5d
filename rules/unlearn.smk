# SFD / PECKER unlearning (docs/method.md sections 3-4): one job per dataset, method and seed.
# Each job resumes from OUT/ckpt (never a Snakemake output, so a failed or killed job keeps it).
rule unlearn:
    input:
        teacher=rules.train_teacher.output.ema,
        teacher_meta=rules.train_teacher.output.ema_meta,
    output:
        generator=f"{RESULTS}/{{dataset}}/unlearn/{{method}}/seed{{seed}}/generator_ema.safetensors",
        meta=f"{RESULTS}/{{dataset}}/unlearn/{{method}}/seed{{seed}}/generator_ema.json",
        log_csv=f"{RESULTS}/{{dataset}}/unlearn/{{method}}/seed{{seed}}/log.csv",
    log:
        f"{RESULTS}/logs/{{dataset}}/unlearn_{{method}}_seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/unlearn_{{method}}_seed{{seed}}.tsv"
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
    shell:
        "pecker unlearn --config {params.cfg} -d {wildcards.dataset} --method {wildcards.method}"
        " --seed {wildcards.seed} --teacher {params.teacher} --out {params.out} --threads {threads}"
        " > {log} 2>&1"
