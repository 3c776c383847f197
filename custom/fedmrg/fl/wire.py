"""Bytes on the wire: the size of what FLARE serializes for a message, measured where it arrives.

A round's traffic is what was actually sent, payload and metadata, after every filter the sender
ran (FLARE's quantizers included), not the size of the tensors the job meant to send. The receiver
measures it: :class:`WireMeter`, the first filter of the receiving side, serializes the message as
FLARE does (FOBS) and writes the length into the message's DXO meta under :data:`WIRE_BYTES`. The
server records it for each upload; a site reads it for its download and reports it with its result
(``messages.BYTES_DOWN``).
"""

from __future__ import annotations

from nvflare.apis.dxo import from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.decomposers import common_decomposers
from nvflare.fuel.utils import fobs

WIRE_BYTES = "fedmrg_wire_bytes"


def serialized_size(shareable: Shareable) -> int:
    """Bytes of ``shareable`` as FLARE serializes it for sending (FOBS, numpy arrays included)."""
    common_decomposers.register()  # what FLARE's runtime registers; idempotent
    return len(fobs.dumps(shareable))


class WireMeter(Filter):
    """Notes in a received message's DXO meta how many bytes it took on the wire (see module doc).

    Put it first among the receiver's filters, before any dequantizer, so that it measures what came.
    A message without a DXO (an error reply) passes unchanged.
    """

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        try:
            dxo = from_shareable(shareable)
        except ValueError:
            return shareable
        dxo.set_meta_prop(WIRE_BYTES, serialized_size(shareable))
        return dxo.update_shareable(shareable)
