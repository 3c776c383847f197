"""FedMRG on NVIDIA FLARE, every mechanism on: dual adapters with mutual boosting, client-aware
contrastive learning with federated prototypes, diagnosis-driven and instance-specific prompts, and
low-rank (SVD) updates with error feedback, merged exactly by the server.

    python jobs/fedmrg/job.py --data data/demo/bench --sites 3 --config demo --base-llm data/demo/base-llm
    python jobs/fedmrg/job.py --config demo --export --export-dir /tmp/fedmrg_job   # for `nvflare job submit`
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
    args = job_arguments("fedmrg", __doc__, argv)
    cfg = job_config(args, JOB_DIR)  # --config, then --rounds

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
