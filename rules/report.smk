# Tables, figures and the paper audit (pecker.report): the last stage, built from the metric JSONs.
#
#   results/tables/table1.{csv,md,tex}      Table 1 over all datasets (one block per dataset)
#   results/tables/ablation.{csv,md,tex}    unlearning variants (says so when none are configured)
#   results/tables/audit.{md,json}          every cell against pecker/report/paper_results.yaml, with provenance
#   results/figures/{fig2,fig3,ablation}_{dataset}.{png,pdf}
#
# Inputs come from eval_jsons(dataset) / eval_grids(dataset) (rules/evaluate.smk, included before). The
# ablation outputs are always written (a note when there are no variants), so the DAG does not
# depend on which methods exist. The audit fails the workflow when a cell lacks provenance.


report: "../report/workflow.rst"


# Every output of this stage, for all_targets().
REPORT_TARGETS = (
    [
        f"{RESULTS}/tables/{name}.{ext}"
        for name in ("table1", "ablation", "efficiency")
        for ext in ("csv", "md", "tex")
    ]
    + [f"{RESULTS}/tables/efficiency.json"]
    + [
        f"{RESULTS}/tables/audit.md",
        f"{RESULTS}/tables/audit.json",
    ]
    + [
        f"{RESULTS}/figures/{fig}_{ds}.{ext}"
        for ds in DATASETS
        for fig in ("fig2", "fig3", "ablation")
        for ext in ("png", "pdf")
    ]
)


rule tables:
    input:
        jsons=lambda w: [p for ds in DATASETS for p in eval_jsons(ds)],
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
        cfgs=lambda w, output: " ".join(f"--config {RESOLVED[ds]}" for ds in DATASETS),
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


rule audit:
    input:
        table1=rules.tables.output.table1_csv,
        ablation=rules.tables.output.ablation_csv,
        efficiency=rules.tables.output.efficiency_json,
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
    shell:
        "pecker audit --paper {input.paper} --table {input.table1} --table {input.ablation}"
        " --efficiency {input.efficiency} --out-md {output.md} --out-json {output.json} {input.jsons} > {log} 2>&1"
