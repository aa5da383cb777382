"""Forecasting scans: every forecaster (a registry) on the same held-out scans, scored against the truth."""

from longbrain_jax.forecast.experiment import METHODS, ForecastConfig, ForecastResult, run_forecasting
from longbrain_jax.forecast.forecasters import FORECASTERS, Forecast, MRExtrapModel
from longbrain_jax.forecast.report import results_markdown, write_forecasting

__all__ = ["FORECASTERS", "METHODS", "Forecast", "ForecastConfig", "ForecastResult", "MRExtrapModel", "results_markdown", "run_forecasting",
           "write_forecasting"]
