"""The metrics as ``evaluate`` modules: the GeoLLaVA set and the LEVIR-CC set, each staged as a folder to load or push.

``staging.stage_metric_module(name, out_dir, repo_id)`` writes ``out_dir/name``: the module script, copies of the
metric code it imports (one source of truth: ``trainer.evaluation``'s own modules), the metric card and the Space page.
See docs/evaluation.md.
"""
