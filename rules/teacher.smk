rule train_teacher:
    input:
        data=rules.prepare_data.output.npz,
    output:
        ema=f"{RESULTS}/{{dataset}}/teacher/ema.safetensors",
        ema_meta=f"{RESULTS}/{{dataset}}/teacher/ema.json",
        model=f"{RESULTS}/{{dataset}}/teacher/model.safetensors",
        model_meta=f"{RESULTS}/{{dataset}}/teacher/model.json",
    log:
        f"{RESULTS}/logs/{{dataset}}/train_teacher.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/train_teacher.tsv"
    wildcard_constraints:
        dataset=_alternatives(TRAINED),
    # the head of the critical path: picked first among the jobs ready at the same time. Priority
    # reserves no cores, so with 2 threads it still waits for both (the demo runs it on 1: Makefile)
    priority: 10
    conda:
        "../environment.yml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        # minutes: short embedded/CI runs vs days for the paper's 800k / 250k steps (it resumes)
        runtime=lambda w: (
            60
            if config["datasets"][w.dataset]["teacher"]["steps"] <= 5000
            else 72 * 60
        ),
    params:
        cfg=resolved_config,
        hash=stage_hash("teacher"),
        length=run_length("teacher"),
        out=lambda w, output: Path(output.ema).parent,
        data=lambda w, input: Path(input.data).parent,
    shell:
        "pecker teacher train --config {params.cfg} -d {wildcards.dataset} --data {params.data}"
        " --out {params.out} --threads {threads} > {log} 2>&1"


rule fetch_teacher:
    # teacher.source file | published: download (when absent), verify the full sha256, convert
    # (a published pickle is read with weights_only=True, once, here) -> the same files as training;
    # sd_folder: the UNet of the fetched Stable Diffusion folder (text.model), checked against its manifest
    input:
        assets=dataset_assets,
    output:
        ema=f"{RESULTS}/{{dataset}}/teacher/ema.safetensors",
        ema_meta=f"{RESULTS}/{{dataset}}/teacher/ema.json",
        model=f"{RESULTS}/{{dataset}}/teacher/model.safetensors",
        model_meta=f"{RESULTS}/{{dataset}}/teacher/model.json",
    log:
        f"{RESULTS}/logs/{{dataset}}/fetch_teacher.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/fetch_teacher.tsv"
    wildcard_constraints:
        dataset=_alternatives(FETCHED),
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        cfg=resolved_config,
        hash=stage_hash("teacher"),
        out=lambda w, output: Path(output.ema).parent,
    shell:
        "pecker teacher fetch --config {params.cfg} -d {wildcards.dataset} --out {params.out} > {log} 2>&1"


rule fetch_baselines_teacher:
    # teacher.baselines_model: the UNet of a second Stable Diffusion folder (SD v1.4), which the
    # multi-step rows of Tables 2-3 are and start from (teacher row, SLD-Medium, ESD, SA), checked
    # against its asset manifest and installed like the teacher; SFD and PECKER keep the teacher
    input:
        assets=dataset_assets,
    output:
        ema=f"{RESULTS}/{{dataset}}/teacher_baselines/ema.safetensors",
        ema_meta=f"{RESULTS}/{{dataset}}/teacher_baselines/ema.json",
        model=f"{RESULTS}/{{dataset}}/teacher_baselines/model.safetensors",
        model_meta=f"{RESULTS}/{{dataset}}/teacher_baselines/model.json",
    log:
        f"{RESULTS}/logs/{{dataset}}/fetch_baselines_teacher.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/fetch_baselines_teacher.tsv"
    wildcard_constraints:
        dataset=_alternatives(BASELINES_TEACHER),
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        cfg=resolved_config,
        model=lambda w: config["datasets"][w.dataset]["teacher"]["baselines_model"],
        out=lambda w, output: Path(output.ema).parent,
    shell:
        "pecker teacher fetch --config {params.cfg} -d {wildcards.dataset} --baselines --out {params.out} > {log} 2>&1"


rule sample_teacher:
    input:
        ema=rules.train_teacher.output.ema_meta,
    output:
        samples=f"{RESULTS}/{{dataset}}/teacher/samples.npz",
        meta=f"{RESULTS}/{{dataset}}/teacher/samples.json",
        grid=report(
            f"{RESULTS}/{{dataset}}/teacher/samples.png",
            caption="../report/teacher_samples.rst",
            category="Teacher",
            subcategory="{dataset}",
        ),
    log:
        f"{RESULTS}/logs/{{dataset}}/sample_teacher.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/sample_teacher.tsv"
    conda:
        "../environment.yml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    params:
        cfg=resolved_config,
        hash=stage_hash("sample"),
        prefix=lambda w, input: Path(input.ema).with_suffix(""),
    shell:
        "pecker teacher sample --config {params.cfg} -d {wildcards.dataset} --teacher {params.prefix}"
        " --out {output.samples} --grid {output.grid} --threads {threads} > {log} 2>&1"


rule check_teacher:
    input:
        samples=rules.sample_teacher.output.samples,
        classifier=f"{RESULTS}/{{dataset}}/classifier/model.json",
    output:
        f"{RESULTS}/{{dataset}}/teacher/sample_accuracy.json",
    log:
        f"{RESULTS}/logs/{{dataset}}/check_teacher.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/check_teacher.tsv"
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        cfg=resolved_config,
        hash=stage_hash("accuracy"),
        prefix=lambda w, input: Path(input.classifier).with_suffix(""),
    shell:
        "pecker evaluate accuracy --config {params.cfg} -d {wildcards.dataset} --classifier {params.prefix}"
        " --samples {input.samples} --out {output} > {log} 2>&1"
