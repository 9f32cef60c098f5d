"""Tables, figures and the paper audit, built from the evaluation stage's metric JSONs.

- :mod:`pecker.report.results`: load ``results/{dataset}/eval/{method}/seed{seed}/*.json`` into pandas;
- :mod:`pecker.report.tables`: Table 1 (class forgetting) and the ablation table (CSV, Markdown, LaTeX);
- :mod:`pecker.report.figures`: Fig. 2 (sample grids), Fig. 3 (UA / FID curves), the ablation figure;
- :mod:`pecker.report.concept`: Tables 2-3 and Figs 4-6 (concept forgetting) and their audit cells;
- :mod:`pecker.report.paper`: the paper's published numbers (``pecker/report/paper_results.yaml``);
- :mod:`pecker.report.audit`: every table cell against the paper, with the provenance of ours;
- :mod:`pecker.report.cli`: ``pecker report tables|figures|concept-tables|concept-figures`` and ``pecker audit``.
"""
