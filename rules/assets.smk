# Paper-scale files from the network (Stable Diffusion, SiD-LSG, I2P, Q16, CLIP): each asset of the
# config's `assets` section is fetched once into {data_dir}/assets/NAME/, every file's sha256 checked
# against its pin, then a manifest written (pecker/assets.py). Offline, the job fails with a message
# naming the missing files and how to provide them; files copied there by hand are verified instead.
rule fetch_asset:
    input:
        # a dataset without training images has no data job: the lock check runs here too
        lambda w: refuse_dry_run_while_locked(),
    output:
        manifest=f"{DATA}/assets/{{asset}}/manifest.json",
    log:
        f"{RESULTS}/logs/assets/{{asset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/assets/{{asset}}.tsv"
    wildcard_constraints:
        asset=_alternatives(ASSETS),
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        cfg=asset_config,
        spec=lambda w: pwf.config_hash(config["assets"][w.asset]),
    shell:
        "pecker assets fetch --config {params.cfg} --asset {wildcards.asset} > {log} 2>&1"
