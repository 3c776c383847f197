"""Which parameters are shared with the federation and which stay at their site.

Every trainable tensor of an ``MRGModel`` is in exactly one group:

- shared (federated): the encoder, projector, prompt customizer, diagnosis head, the generic
  contrastive head and the ``generic`` LoRA adapter;
- local (never leave the site): the ``specialized`` LoRA adapter and the client contrastive head.

Plain names only, so that the server and the privacy filter can apply the rule without the model stack.
"""

from __future__ import annotations

from collections.abc import Iterable

GENERIC = "generic"  # the federated LoRA adapter
SPECIALIZED = "specialized"  # the site's own LoRA adapter
SHARED_MODULES = ("encoder.", "projector.", "customizer.", "diagnosis.", "contrastive.generic.")
LOCAL_MODULES = ("contrastive.client.",)


def is_local_parameter(name: str) -> bool:
    """True for a parameter that must stay at its site.

    ``name`` is a model parameter name (``MRGModel`` naming: ``contrastive.client.*``, or an LLM
    LoRA tensor ``llm.<module>.lora_A.specialized.weight``) or a codec entry name, in which a LoRA
    pair appears as its product ``...lora_AB.specialized.weight``.
    """
    return name.startswith(LOCAL_MODULES) or f".{SPECIALIZED}." in name


def local_parameters(names: Iterable[str]) -> list[str]:
    """The site-local names among ``names``, sorted."""
    return sorted(name for name in map(str, names) if is_local_parameter(name))


def model_part(name: str) -> str:
    """The part of the model a parameter (or a codec entry) belongs to, for tables that break a
    measurement down: ``LoRA generic`` / ``LoRA specialized``, ``encoder.<submodule>``,
    ``contrastive.generic`` / ``contrastive.client``, or the top module (``projector``, ...)."""
    if name.startswith("llm."):
        return f"LoRA {SPECIALIZED if f'.{SPECIALIZED}.' in name else GENERIC}"
    head, _, rest = name.partition(".")
    if head in ("encoder", "contrastive"):
        return f"{head}.{rest.partition('.')[0]}"
    return head
