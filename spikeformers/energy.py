"""Energy, firing rates and the addition-only audit under a short name; they live in
:mod:`spikeformers.analysis.energy`::

    import spikeformers.energy as energy
    report = energy.measure(model, batches)                 # any model built of spikeformers neurons
    print(report.table(["paper", "strict"]))
    print(energy.audit_verdict(report).verdict)             # PASS, FAIL or INCONCLUSIVE
"""

from .analysis.energy import *  # noqa: F401,F403
from .analysis.energy import __all__  # noqa: F401
