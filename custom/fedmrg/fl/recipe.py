"""The FedMRG recipe: an NVFlare ``Recipe`` whose job holds

- at the server: :class:`~fedmrg.fl.controller.FedMRGController`, the aggregator (low-rank, or dense
  for the FedAvg baseline) and a TensorBoard receiver for the sites' metrics;
- at every site: :class:`~fedmrg.fl.executor.MRGExecutor` for ``train`` / ``validate`` /
  ``submit_model``, and the writer that streams its metrics to the server;
- on both sides, a :class:`~fedmrg.fl.wire.WireMeter` that measures each train message received,
  and with ``fl.quantization`` (dense baseline) FLARE's quantization filters in both directions.

``recipe.execute(env)`` runs it (``SimEnv``, ``PocEnv``, ``ProdEnv``); ``recipe.export(job_dir=...)``
writes the job folder that ``nvflare job submit`` and the admin console take. The job carries the
config (model, training plan, codec) but no site paths: each site reads its own settings (data
folder, base LLM, device) from its workspace or ``$FEDMRG_SITE_SETTINGS``. By default the job
carries no code: the ``fedmrg`` package is installed at every site and admitted by the site's
``class_allow_list`` (:mod:`fedmrg.fl.packaging`).
"""

from __future__ import annotations

from nvflare.apis.analytix import ANALYTIC_EVENT_TYPE
from nvflare.app_common.widgets.convert_to_fed_event import ConvertToFedEvent
from nvflare.app_opt.tracking.tb.tb_writer import TBWriter
from nvflare.job_config.api import FedJob
from nvflare.recipe.spec import Recipe
from nvflare.recipe.utils import add_experiment_tracking

from fedmrg.config import Config, config_to_dict
from fedmrg.errors import ConfigError
from fedmrg.fl import messages as msg
from fedmrg.fl.aggregator import DenseAggregator, LowRankAggregator
from fedmrg.fl.controller import FedMRGController
from fedmrg.fl.executor import MRGExecutor
from fedmrg.fl.wire import WireMeter
from fedmrg.versions import installed_versions

# The tasks whose messages carry the model: from the server (train, validate), from a site (train).
# FLARE wants one direction's filters on the same task set or on disjoint ones.
DOWNLOAD_TASKS, UPLOAD_TASKS = [msg.TRAIN, msg.VALIDATE], [msg.TRAIN]
ALL_SITES_SPEC = "@default"  # FLARE's portable resource_spec entry that applies to every site


def resource_spec(gpus: int = 0, gpu_mem_gib: float | None = None) -> dict:
    """What each site's resource manager must grant: CPU jobs ask for no GPU (and FLARE's GPU resource
    manager then reserves none); GPU jobs for ``gpus`` devices of at least ``gpu_mem_gib`` each."""
    if gpus < 0 or (gpu_mem_gib is not None and gpu_mem_gib <= 0):
        raise ConfigError(f"resource spec: gpus must be >= 0 and GPU memory > 0 (got {gpus}, {gpu_mem_gib})")
    spec: dict = {"num_of_gpus": gpus}
    if gpus and gpu_mem_gib:
        spec["mem_per_gpu_in_GiB"] = gpu_mem_gib
    return spec


class FedMRGRecipe(Recipe):
    """A federated FedMRG run (or its FedAvg baseline when ``cfg.fl.update`` is ``dense``).

    Args:
        cfg: the validated config (model, training plan, codec, ``fl`` section).
        name: the job's name; the server's checkpoint and each site's local state are kept under it,
            so a job resubmitted with the same name and config resumes.
        sites: how many sites the job needs (``fl.min_sites`` wins when set).
        base_llm: the base-LLM folder the job names (a site's own ``base_llm`` setting wins).
        results_dir: where the server writes results and models (None: the job's run folder).
        test_limit: test studies each site scores at the end (None: all).
        final_validation: have every site score the final model.
        gpus_per_site: GPUs each site's FLARE resource manager must grant before the job is scheduled.
        gpu_mem_gib: the memory each of those GPUs must have (GiB).
    """

    def __init__(
        self,
        cfg: Config,
        *,
        name: str = "fedmrg",
        sites: int = 2,
        base_llm: str | None = None,
        results_dir: str | None = None,
        test_limit: int | None = None,
        final_validation: bool = True,
        gpus_per_site: int = 0,
        gpu_mem_gib: float | None = None,
    ) -> None:
        refuse_unfederated_statistics(cfg)
        config = config_to_dict(cfg)
        fl = cfg.fl
        job = FedJob(name=name, min_clients=fl.min_sites or sites, meta_props=installed_versions())
        job.job.add_resource_spec(ALL_SITES_SPEC, resource_spec(gpus_per_site, gpu_mem_gib))
        job.set_app_packages(["fedmrg"])
        controller = FedMRGController(
            config=config,
            rounds=fl.rounds,
            job_name=name,
            min_sites=fl.min_sites,
            wait_after_min_sites=fl.wait_after_min_sites,
            key_metric=fl.key_metric,
            results_dir=results_dir,
            final_validation=final_validation,
        )
        prototype_dim = cfg.model.contrastive_dim if cfg.model.contrastive else None
        checks = dict(
            max_norm=fl.max_update_norm,
            prototype_dim=prototype_dim,
            seed=cfg.train.seed,
            aggregation=fl.aggregation,
            clip_norm=fl.clip_norm,
            trim=fl.trim,
            min_updates=fl.min_sites or 1,
            equal_weights=fl.equal_weights,
            max_weight_share=fl.max_weight_share,
        )
        if fl.update == "dense":
            aggregator = DenseAggregator(**checks)
        else:
            aggregator = LowRankAggregator(max_rank=fl.rank, server_residual=fl.server_residual, **checks)
        job.to_server(controller, id="controller")
        job.to_server(aggregator, id="aggregator")
        executor = MRGExecutor(
            config=config, run_name=name, base_llm=base_llm, writer_id="log_writer", test_limit=test_limit
        )
        job.to_clients(executor, tasks=[msg.TRAIN, msg.VALIDATE, msg.SUBMIT_MODEL])
        job.to_clients(TBWriter(), id="log_writer")
        job.to_clients(ConvertToFedEvent(events_to_convert=[ANALYTIC_EVENT_TYPE]), id="event_to_fed")
        super().__init__(job)
        add_experiment_tracking(self, "tensorboard")
        # Each side measures what it receives before any other filter of its own (fedmrg.fl.wire).
        self.add_server_input_filter(WireMeter(), tasks=UPLOAD_TASKS)
        self.add_client_input_filter(WireMeter(), tasks=DOWNLOAD_TASKS)
        if fl.quantization:
            add_flare_quantization(self, fl.quantization)


def add_flare_quantization(recipe: Recipe, quantization: str) -> None:
    """FLARE's quantization filters on the model both ways (fedmrg.fl.quantization: also on hosts
    without CUDA): the sender quantizes, the receiver dequantizes after measuring."""
    from fedmrg.fl.quantization import HostDequantizer, HostQuantizer  # imports bitsandbytes

    recipe.add_server_output_filter(HostQuantizer(quantization_type=quantization), tasks=DOWNLOAD_TASKS)
    recipe.add_client_input_filter(HostDequantizer(), tasks=DOWNLOAD_TASKS)
    recipe.add_client_output_filter(HostQuantizer(quantization_type=quantization), tasks=UPLOAD_TASKS)
    recipe.add_server_input_filter(HostDequantizer(), tasks=UPLOAD_TASKS)


def refuse_unfederated_statistics(cfg: Config) -> None:
    """A frozen backbone needs its weights named; a trained DenseNet keeps BatchNorm statistics, which are
    buffers, not parameters: the sites would each keep their own and the global model would have none."""
    encoder = cfg.model.encoder
    encoder.check_frozen_weights()
    if encoder.backbone == "cnn" and not encoder.freeze:
        raise ConfigError(
            "model.encoder.backbone: cnn is federated only with freeze: true (its BatchNorm statistics are "
            "not shared, so a trained one would leave the global model without them); train it at one site "
            "with `fedmrg train`, or use vit or hf"
        )
