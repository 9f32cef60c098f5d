# Evaluation (docs/method.md section 6): one job per evaluated model, so a cluster spreads them out.
#   teacher                      -> eval/teacher/seed0/final.json
#   every saved checkpoint       -> eval/{method}/seed{seed}/step{NNNNNNN}.json (+ _grid.npz, Fig. 2)
#   final EMA generator          -> eval/{method}/seed{seed}/final.json (Table 1 sample counts)
#   a baseline's final model     -> eval/{method}/seed{seed}/final.json (multi-step, evaluate.teacher_sampler)
#   text datasets: SLD-Medium    -> eval/sld/seed0/final.json (the teacher through the safe pipeline)
# On a text dataset the same command scores the concept tasks (Tables 2-3) instead of Table 1's metrics.


# the teacher's and SLD's result paths also match the patterns of evaluate_baseline and evaluate_final
ruleorder: evaluate_teacher > evaluate_sld > evaluate_baseline > evaluate_final


rule reference_features:
    input:
        data=f"{DATA}/{{dataset}}/train.npz",
    output:
        npz=f"{RESULTS}/{{dataset}}/eval/reference.npz",
        meta=f"{RESULTS}/{{dataset}}/eval/reference.json",
    log:
        f"{RESULTS}/logs/{{dataset}}/reference_features.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/reference_features.tsv"
    conda:
        "../environment.yml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,
    params:
        cfg=resolved_config,
        hash=stage_hash("reference"),
        data=lambda w, input: Path(input.data).parent,
    shell:
        "pecker evaluate reference --config {params.cfg} -d {wildcards.dataset} --data {params.data}"
        " --out {output.npz} --threads {threads} > {log} 2>&1"


rule evaluate_teacher:
    input:
        unpack(eval_inputs_for("teacher")),
        model=reference_teacher_meta,
    output:
        json=f"{RESULTS}/{{dataset}}/eval/teacher/seed0/final.json",
        grid=f"{RESULTS}/{{dataset}}/eval/teacher/seed0/final_grid.npz",
    log:
        f"{RESULTS}/logs/{{dataset}}/evaluate_teacher.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/evaluate_teacher.tsv"
    conda:
        "../environment.yml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        cfg=resolved_config,
        hash=stage_hash("evaluate"),
        prefix=lambda w, input: Path(input.model).with_suffix(""),
        args=eval_args,
    shell:
        "pecker evaluate model --config {params.cfg} -d {wildcards.dataset} --kind teacher"
        " --checkpoint {params.prefix}{params.args} --method teacher"
        " --seed 0 --final --out {output.json} --grid {output.grid} --threads {threads} > {log} 2>&1"


rule evaluate_sld:
    input:
        unpack(eval_inputs_for("sld")),
        model=reference_teacher_meta,
    output:
        json=f"{RESULTS}/{{dataset}}/eval/sld/seed0/final.json",
        grid=f"{RESULTS}/{{dataset}}/eval/sld/seed0/final_grid.npz",
    log:
        f"{RESULTS}/logs/{{dataset}}/evaluate_sld.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/evaluate_sld.tsv"
    wildcard_constraints:
        dataset=_alternatives(TEXT_DATASETS),
    conda:
        "../environment.yml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        cfg=resolved_config,
        hash=stage_hash("evaluate"),
        prefix=lambda w, input: Path(input.model).with_suffix(""),
        args=eval_args,
    shell:
        "pecker evaluate model --config {params.cfg} -d {wildcards.dataset} --kind sld"
        " --checkpoint {params.prefix}{params.args}"
        " --method sld --seed 0 --final --out {output.json} --grid {output.grid} --threads {threads} > {log} 2>&1"


rule evaluate_baseline:
    input:
        unpack(eval_inputs_for()),
        model=f"{RESULTS}/{{dataset}}/unlearn/{{method}}/seed{{seed}}/unet.json",
    output:
        f"{RESULTS}/{{dataset}}/eval/{{method}}/seed{{seed}}/final.json",
    log:
        f"{RESULTS}/logs/{{dataset}}/evaluate_{{method}}_seed{{seed}}_final.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/evaluate_{{method}}_seed{{seed}}_final.tsv"
    wildcard_constraints:
        method=_alternatives(BASELINE_METHODS),
    conda:
        "../environment.yml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        cfg=resolved_config,
        hash=stage_hash("evaluate"),
        prefix=lambda w, input: Path(input.model).with_suffix(""),
        args=eval_args,
    shell:
        "pecker evaluate model --config {params.cfg} -d {wildcards.dataset} --kind diffusion"
        " --checkpoint {params.prefix}{params.args}"
        " --method {wildcards.method} --seed {wildcards.seed} --final --out {output} --threads {threads}"
        " > {log} 2>&1"


rule evaluate_checkpoint:
    input:
        unpack(eval_inputs_for()),
        run=f"{RESULTS}/{{dataset}}/unlearn/{{method}}/seed{{seed}}/generator_ema.json",
    output:
        json=f"{RESULTS}/{{dataset}}/eval/{{method}}/seed{{seed}}/step{{step}}.json",
        grid=f"{RESULTS}/{{dataset}}/eval/{{method}}/seed{{seed}}/step{{step}}_grid.npz",
    log:
        f"{RESULTS}/logs/{{dataset}}/evaluate_{{method}}_seed{{seed}}_step{{step}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/evaluate_{{method}}_seed{{seed}}_step{{step}}.tsv"
    wildcard_constraints:
        step="[0-9]{7}",
    conda:
        "../environment.yml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        cfg=resolved_config,
        hash=stage_hash("evaluate"),
        prefix=lambda w, input: Path(input.run).parent
        / "ckpt"
        / f"step{w.step}"
        / "generator_ema",
        args=eval_args,
    shell:
        "pecker evaluate model --config {params.cfg} -d {wildcards.dataset} --kind generator"
        " --checkpoint {params.prefix}{params.args}"
        " --method {wildcards.method} --seed {wildcards.seed} --checkpoint-only"
        " --out {output.json} --grid {output.grid} --threads {threads} > {log} 2>&1"


rule evaluate_final:
    input:
        unpack(eval_inputs_for()),
        run=f"{RESULTS}/{{dataset}}/unlearn/{{method}}/seed{{seed}}/generator_ema.json",
    output:
        f"{RESULTS}/{{dataset}}/eval/{{method}}/seed{{seed}}/final.json",
    log:
        f"{RESULTS}/logs/{{dataset}}/evaluate_{{method}}_seed{{seed}}_final.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/evaluate_{{method}}_seed{{seed}}_final.tsv"
    conda:
        "../environment.yml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        cfg=resolved_config,
        hash=stage_hash("evaluate"),
        prefix=lambda w, input: Path(input.run).with_suffix(""),
        args=eval_args,
    shell:
        "pecker evaluate model --config {params.cfg} -d {wildcards.dataset} --kind generator"
        " --checkpoint {params.prefix}{params.args}"
        " --method {wildcards.method} --seed {wildcards.seed} --final --out {output} --threads {threads}"
        " > {log} 2>&1"


# The paper's celebrity detector (evaluate.concept.detectors: paper; Table 2 at paper scale). Its
# environment (Python 3.6, TF 1.15) cannot share the main one, so the images are drawn here, scored
# by GCD in its own conda environment, and the evaluation rules above read its output (--gcd).
rule celebrity_images:
    input:
        unpack(celebrity_model),
        assets=dataset_assets,
    output:
        directory(f"{RESULTS}/{{dataset}}/eval/{{method}}/seed{{seed}}/{{point}}_faces"),
    log:
        f"{RESULTS}/logs/{{dataset}}/celebrity_images_{{method}}_seed{{seed}}_{{point}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/celebrity_images_{{method}}_seed{{seed}}_{{point}}.tsv"
    wildcard_constraints:
        dataset=_alternatives(PAPER_EVAL),
        point="final|step[0-9]{7}",
    conda:
        "../environment.yml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    params:
        cfg=resolved_config,
        hash=stage_hash("evaluate"),
        model=celebrity_prefix,
    shell:
        "pecker evaluate celebrity-images --config {params.cfg} -d {wildcards.dataset} {params.model}"
        " --out {output} --threads {threads} > {log} 2>&1"


rule gcd_detect:
    input:
        images=rules.celebrity_images.output[0],
    output:
        f"{RESULTS}/{{dataset}}/eval/{{method}}/seed{{seed}}/{{point}}_gcd.jsonl",
    log:
        f"{RESULTS}/logs/{{dataset}}/gcd_detect_{{method}}_seed{{seed}}_{{point}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/gcd_detect_{{method}}_seed{{seed}}_{{point}}.tsv"
    wildcard_constraints:
        dataset=_alternatives(PAPER_EVAL),
        point="final|step[0-9]{7}",
    conda:
        "envs/gcd.yaml"
    threads: 1
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,
    params:
        script=f"{workflow.basedir}/scripts/gcd_detect.py",
        resources=lambda w: gcd_settings(w)["resources"],
        cuda=lambda w: " --cuda" if gcd_settings(w).get("cuda", True) else "",
    shell:
        "python {params.script} --images {input.images} --resources {params.resources}"
        " --out {output}{params.cuda} > {log} 2>&1"
