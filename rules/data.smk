rule prepare_data:
    input:
        # every job depends on this one, so the check runs whatever the targets
        lambda w: refuse_dry_run_while_locked(),
    output:
        npz=f"{DATA}/{{dataset}}/train.npz",
        meta=f"{DATA}/{{dataset}}/meta.json",
    log:
        f"{RESULTS}/logs/{{dataset}}/prepare_data.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/prepare_data.tsv"
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        cfg=resolved_config,
        hash=stage_hash("data"),
        out=lambda w, output: Path(output.npz).parent,
    shell:
        "pecker data prepare --config {params.cfg} -d {wildcards.dataset} --out {params.out} > {log} 2>&1"
