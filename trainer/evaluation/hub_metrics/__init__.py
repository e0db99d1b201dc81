"""The metrics as ``evaluate`` modules: the GeoLLaVA set and the LEVIR-CC set, each staged as a folder to load or push.

``stage_metric_module(name, out_dir, repo_id)`` writes ``out_dir/name``: the module script, copies of the metric code
it imports (one source of truth: ``trainer.evaluation``'s own modules), the metric card and the Space page.
See docs/evaluation.md.
"""

from trainer.evaluation.hub_metrics.staging import MODULES, stage_metric_module


__all__ = ["MODULES", "stage_metric_module"]
