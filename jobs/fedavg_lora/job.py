"""The baseline: FedAvg of the same shared parameters sent dense in fp32, with one LoRA adapter whose
A and B are averaged separately (FedIT); no contrastive learning, no specialized adapter, no
compression. Diagnosis-driven and instance-specific prompts stay, as in FedMRG. The job's own
settings are in overrides.yaml beside this file.

    python jobs/fedavg_lora/job.py --data data/demo/bench --sites 3 --config demo --base-llm data/demo/base-llm
"""

import sys
from pathlib import Path

from fedmrg.fl.job_cli import (
    execution_env,
    export_job,
    job_arguments,
    job_config,
    report_run,
    results_dir,
    with_user_errors,
)
from fedmrg.fl.recipe import FedMRGRecipe

JOB_DIR = Path(__file__).resolve().parent


@with_user_errors
def main(argv: list[str] | None = None) -> int:
    args = job_arguments("fedavg_lora", __doc__, argv)
    cfg = job_config(args, JOB_DIR)  # --config, then overrides.yaml (dense FedAvg, one adapter), then --rounds

    # fl.update: dense gives the recipe the DenseAggregator at the server.
    recipe = FedMRGRecipe(
        cfg,
        name=args.name,
        sites=args.sites,
        base_llm=args.base_llm,
        results_dir=results_dir(args),
        test_limit=args.test_limit,
        gpus_per_site=args.gpus_per_site,
        gpu_mem_gib=args.gpu_mem_gib,
    )
    if args.export:
        return export_job(recipe, args)

    run = recipe.execute(execution_env(args))  # the FLARE simulator, or a running system with --startup-kit
    return report_run(run, args)


if __name__ == "__main__":
    sys.exit(main())
