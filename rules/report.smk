# Tables, figures and the paper audit (pecker.report): the last stage, built from the metric JSONs.
#
#   results/tables/table1.{csv,md,tex}      Table 1 over the class datasets (one block per dataset)
#   results/tables/table{2,3}.{csv,md,tex}  Tables 2-3 over the text datasets (concept forgetting)
#   results/tables/ablation.{csv,md,tex}    unlearning variants (says so when none are configured)
#   results/tables/audit.{md,json}          every cell against pecker/report/paper_results.yaml, with provenance
#   results/figures/{fig2,fig3,ablation}_{dataset}.{png,pdf}   class datasets
#   results/figures/{fig4,fig5,fig6}_{dataset}.{png,pdf}        text datasets
#
# Inputs come from eval_jsons(dataset) / eval_grids(dataset) (rules/evaluate.smk, included before). The
# ablation outputs are always written (a note when there are no variants), so the DAG does not
# depend on which methods exist. The audit fails the workflow when a cell lacks provenance.


report: "../report/workflow.rst"


# Every output of this stage, for all_targets().
REPORT_TARGETS = (
    (
        [
            f"{RESULTS}/tables/{name}.{ext}"
            for name in ("table1", "ablation", "efficiency")
            for ext in ("csv", "md", "tex")
        ]
        + [f"{RESULTS}/tables/efficiency.json"]
        if CLASS_DATASETS  # class forgetting (Table 1); the SD configs have none
        else []
    )
    + [
        f"{RESULTS}/tables/audit.md",
        f"{RESULTS}/tables/audit.json",
    ]
    + [
        f"{RESULTS}/figures/{fig}_{ds}.{ext}"
        for ds in CLASS_DATASETS
        for fig in ("fig2", "fig3", "ablation")
        for ext in ("png", "pdf")
    ]
    + (
        [
            f"{RESULTS}/tables/{name}.{ext}"
            for name in ("table2", "table3")
            for ext in ("csv", "md", "tex")
        ]
        + [
            f"{RESULTS}/figures/{fig}_{ds}.{ext}"
            for ds in TEXT_DATASETS
            for fig in ("fig4", "fig5", "fig6")
            for ext in ("png", "pdf")
        ]
        if TEXT_DATASETS
        else []
    )
)


rule tables:
    input:
        jsons=lambda w: [p for ds in CLASS_DATASETS for p in eval_jsons(ds)],
    output:
        table1_csv=report(
            f"{RESULTS}/tables/table1.csv",
            caption="../report/table1.rst",
            category="Tables",
            subcategory="Table 1: class forgetting",
            labels={"table": "Table 1", "format": "CSV (numbers)"},
        ),
        table1_md=report(
            f"{RESULTS}/tables/table1.md",
            caption="../report/table1.rst",
            category="Tables",
            subcategory="Table 1: class forgetting",
            labels={"table": "Table 1", "format": "Markdown"},
        ),
        table1_tex=report(
            f"{RESULTS}/tables/table1.tex",
            caption="../report/table1.rst",
            category="Tables",
            subcategory="Table 1: class forgetting",
            labels={"table": "Table 1", "format": "LaTeX"},
        ),
        ablation_csv=report(
            f"{RESULTS}/tables/ablation.csv",
            caption="../report/ablation_table.rst",
            category="Tables",
            subcategory="Ablation",
            labels={"table": "Ablation", "format": "CSV (numbers)"},
        ),
        ablation_md=report(
            f"{RESULTS}/tables/ablation.md",
            caption="../report/ablation_table.rst",
            category="Tables",
            subcategory="Ablation",
            labels={"table": "Ablation", "format": "Markdown"},
        ),
        ablation_tex=report(
            f"{RESULTS}/tables/ablation.tex",
            caption="../report/ablation_table.rst",
            category="Tables",
            subcategory="Ablation",
            labels={"table": "Ablation", "format": "LaTeX"},
        ),
        efficiency_csv=report(
            f"{RESULTS}/tables/efficiency.csv",
            caption="../report/efficiency.rst",
            category="Tables",
            subcategory="Efficiency: time-to-forget",
            labels={"table": "Efficiency", "format": "CSV (numbers)"},
        ),
        efficiency_md=report(
            f"{RESULTS}/tables/efficiency.md",
            caption="../report/efficiency.rst",
            category="Tables",
            subcategory="Efficiency: time-to-forget",
            labels={"table": "Efficiency", "format": "Markdown (with the verdict)"},
        ),
        efficiency_tex=report(
            f"{RESULTS}/tables/efficiency.tex",
            caption="../report/efficiency.rst",
            category="Tables",
            subcategory="Efficiency: time-to-forget",
            labels={"table": "Efficiency", "format": "LaTeX"},
        ),
        efficiency_json=f"{RESULTS}/tables/efficiency.json",
    log:
        f"{RESULTS}/logs/report/tables.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/tables.tsv"
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        cfgs=lambda w, output: " ".join(
            f"--config {RESOLVED[ds]}" for ds in CLASS_DATASETS
        ),
        report=config["report"],
        out=lambda w, output: Path(output.table1_csv).parent,
    shell:
        "pecker report tables {params.cfgs} --out-dir {params.out} {input.jsons} > {log} 2>&1"


rule figures:
    input:
        jsons=lambda w: eval_jsons(w.dataset),
        grids=lambda w: eval_grids(w.dataset),
    output:
        fig2=report(
            f"{RESULTS}/figures/fig2_{{dataset}}.png",
            caption="../report/fig2.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={
                "figure": "Fig. 2: samples across checkpoints",
                "dataset": "{dataset}",
            },
        ),
        fig2_pdf=f"{RESULTS}/figures/fig2_{{dataset}}.pdf",
        fig3=report(
            f"{RESULTS}/figures/fig3_{{dataset}}.png",
            caption="../report/fig3.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={
                "figure": "Fig. 3: UA and FID during unlearning",
                "dataset": "{dataset}",
            },
        ),
        fig3_pdf=f"{RESULTS}/figures/fig3_{{dataset}}.pdf",
        ablation=report(
            f"{RESULTS}/figures/ablation_{{dataset}}.png",
            caption="../report/ablation_figure.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={"figure": "Ablation over method variants", "dataset": "{dataset}"},
        ),
        ablation_pdf=f"{RESULTS}/figures/ablation_{{dataset}}.pdf",
    log:
        f"{RESULTS}/logs/{{dataset}}/figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/figures.tsv"
    wildcard_constraints:
        dataset=_alternatives(CLASS_DATASETS),
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        cfg=resolved_config,
        out=lambda w, output: Path(output.fig2).parent,
    shell:
        "pecker report figures --config {params.cfg} -d {wildcards.dataset} --out-dir {params.out}"
        " {input.jsons} {input.grids} > {log} 2>&1"


rule concept_tables:
    input:
        jsons=lambda w: [p for ds in TEXT_DATASETS for p in eval_jsons(ds)],
    output:
        table2_csv=report(
            f"{RESULTS}/tables/table2.csv",
            caption="../report/table2.rst",
            category="Tables",
            subcategory="Table 2: celebrity forgetting",
            labels={"table": "Table 2", "format": "CSV (numbers)"},
        ),
        table2_md=report(
            f"{RESULTS}/tables/table2.md",
            caption="../report/table2.rst",
            category="Tables",
            subcategory="Table 2: celebrity forgetting",
            labels={"table": "Table 2", "format": "Markdown"},
        ),
        table2_tex=f"{RESULTS}/tables/table2.tex",
        table3_csv=report(
            f"{RESULTS}/tables/table3.csv",
            caption="../report/table3.rst",
            category="Tables",
            subcategory="Table 3: nudity forgetting",
            labels={"table": "Table 3", "format": "CSV (numbers)"},
        ),
        table3_md=report(
            f"{RESULTS}/tables/table3.md",
            caption="../report/table3.rst",
            category="Tables",
            subcategory="Table 3: nudity forgetting",
            labels={"table": "Table 3", "format": "Markdown"},
        ),
        table3_tex=f"{RESULTS}/tables/table3.tex",
    log:
        f"{RESULTS}/logs/report/concept_tables.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/concept_tables.tsv"
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        cfgs=lambda w, output: " ".join(
            f"--config {RESOLVED[ds]}" for ds in TEXT_DATASETS
        ),
        out=lambda w, output: Path(output.table2_csv).parent,
    shell:
        "pecker report concept-tables {params.cfgs} --out-dir {params.out} {input.jsons} > {log} 2>&1"


rule concept_figures:
    input:
        jsons=lambda w: eval_jsons(w.dataset),
        grids=lambda w: concept_grids(w.dataset),
    output:
        fig4=report(
            f"{RESULTS}/figures/fig4_{{dataset}}.png",
            caption="../report/fig4.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={
                "figure": "Fig. 4: celebrity forgetting across the image budget",
                "dataset": "{dataset}",
            },
        ),
        fig4_pdf=f"{RESULTS}/figures/fig4_{{dataset}}.pdf",
        fig5=report(
            f"{RESULTS}/figures/fig5_{{dataset}}.png",
            caption="../report/fig5.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={
                "figure": "Fig. 5: models on the same nudity prompts",
                "dataset": "{dataset}",
            },
        ),
        fig5_pdf=f"{RESULTS}/figures/fig5_{{dataset}}.pdf",
        fig6=report(
            f"{RESULTS}/figures/fig6_{{dataset}}.png",
            caption="../report/fig6.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={
                "figure": "Fig. 6: nudity forgetting across the image budget",
                "dataset": "{dataset}",
            },
        ),
        fig6_pdf=f"{RESULTS}/figures/fig6_{{dataset}}.pdf",
    log:
        f"{RESULTS}/logs/{{dataset}}/concept_figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/concept_figures.tsv"
    wildcard_constraints:
        dataset=_alternatives(TEXT_DATASETS),
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        cfg=resolved_config,
        out=lambda w, output: Path(output.fig4).parent,
    shell:
        "pecker report concept-figures --config {params.cfg} -d {wildcards.dataset} --out-dir {params.out}"
        " {input.jsons} {input.grids} > {log} 2>&1"


rule audit:
    input:
        unpack(class_table_inputs),
        concept=concept_table_inputs,
        paper=f"{workflow.basedir}/pecker/report/paper_results.yaml",
        jsons=lambda w: [p for ds in DATASETS for p in eval_jsons(ds)],
    output:
        md=report(
            f"{RESULTS}/tables/audit.md",
            caption="../report/audit.rst",
            category="Audit",
            labels={"audit": "against the paper", "format": "Markdown"},
        ),
        json=report(
            f"{RESULTS}/tables/audit.json",
            caption="../report/audit.rst",
            category="Audit",
            labels={"audit": "against the paper", "format": "JSON"},
        ),
    log:
        f"{RESULTS}/logs/report/audit.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/audit.tsv"
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        concept=lambda w, input: " ".join(f"--table {t}" for t in input.concept),
        classes=lambda w, input: (
            f" --table {input.table1} --table {input.ablation} --efficiency {input.efficiency}"
            if "table1" in input.keys()
            else ""
        ),
    shell:
        "pecker audit --paper {input.paper}{params.classes} {params.concept} --out-md {output.md}"
        " --out-json {output.json} {input.jsons} > {log} 2>&1"
