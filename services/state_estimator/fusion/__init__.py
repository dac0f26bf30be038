"""The fusion tracker (pure core of the state estimator), one module per stage:

``state`` (what is remembered), ``config`` (facility facts and tuning), ``visibility`` (what a
camera can show), ``association`` (which detection is which end), ``tracking`` (predict and
update a locomotive), ``births`` (new locomotives from unexplained ends), ``identity``
(plates and models as evidence), ``output`` (the published state), ``core`` (the order of it
all). The same core runs in the Faust app, in replay and in the evaluation suite.
"""

from services.state_estimator.fusion import records
from services.state_estimator.fusion.config import FusionConfig
from services.state_estimator.fusion.core import FusionCore
from services.state_estimator.fusion.output import content_signature, published_changes
from services.state_estimator.fusion.state import FusionState, TrackedLocomotive

__all__ = [
    "FusionConfig",
    "FusionCore",
    "FusionState",
    "TrackedLocomotive",
    "content_signature",
    "published_changes",
    "records",
]
