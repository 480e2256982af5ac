"""What-if analysis: plan one model on derived clusters and compare them.

`scenarios` (clusters derived by adding, swapping or relinking devices) -> `replicas`
(data-parallel layouts of a cluster) -> `cache` (plans on disk) -> `analysis` (`whatif`:
one row per scenario).
"""

from planner.whatif.analysis import WhatIfReport, whatif

__all__ = ["WhatIfReport", "whatif"]
