"""The peft-search service: study config, Ray Tune driver, MLflow logging, reports and the CLI."""
