"""The Flax Linen modules of sst_jax, for reuse in other JAX projects.

Each module is a plain ``flax.linen`` dataclass built from keyword arguments
and run with ``init``/``apply`` (collections ``params`` and
``batch_stats``); configs reach the same modules through ``make_parser`` and
``sst.make_sst``::

    from sst_jax import models
    parser = models.ParsingNetwork(num_classes={'lip': 20},
                                   backbone='resnet50')
    backbone = models.make_resnet('resnet101', output_stride=8)
    schp = models.AugmentCE2P(num_classes={'lip': 20})
    sst = models.SST(domain_names=('lip', 'atr'), num_classes=(20, 18))

Built so, they run the plain forms of the speed paths; ``make_parser(...,
implementations=sst_jax.recipe.speed_paths())`` runs the backend's, with
the same parameters and outputs (``fast_paths``).

``docs/reuse.md`` shows the parser and its backbone inside another Flax
module, trained weights from a workdir or an export, and Flax NNX.
"""

from sst_jax.models import fast_paths
from sst_jax.models.parser import backbone_of
from sst_jax.models.parser import make_parser
from sst_jax.models.parser import ParsingNetwork
from sst_jax.models.resnet import make_resnet
from sst_jax.models.resnet import RESNET_SPECS
from sst_jax.models.resnet import ResNet
from sst_jax.models.schp import AugmentCE2P
from sst_jax.models.sst import SemanticPropagation
from sst_jax.models.sst import SST

__all__ = [
    'AugmentCE2P',
    'backbone_of',
    'fast_paths',
    'make_parser',
    'make_resnet',
    'ParsingNetwork',
    'RESNET_SPECS',
    'ResNet',
    'SemanticPropagation',
    'SST',
]
