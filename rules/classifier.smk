rule train_classifier:
    input:
        data=rules.prepare_data.output.npz,
    output:
        weights=f"{RESULTS}/{{dataset}}/classifier/model.safetensors",
        meta=f"{RESULTS}/{{dataset}}/classifier/model.json",
    log:
        f"{RESULTS}/logs/{{dataset}}/train_classifier.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/train_classifier.tsv"
    conda:
        "../environment.yml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=120,
    params:
        cfg=resolved_config,
        hash=stage_hash("classifier"),
        prefix=lambda w, output: Path(output.meta).with_suffix(""),
        data=lambda w, input: Path(input.data).parent,
    shell:
        "pecker classifier train --config {params.cfg} -d {wildcards.dataset} --data {params.data}"
        " --out {params.prefix} --threads {threads} > {log} 2>&1"
